"""ROS 2 messages as Cyclone DDS types, with a fast ROS 2 CDR codec.

Each class is a ``cyclonedds`` :class:`IdlStruct` declared exactly as ``rosidl`` declares the
message in IDL (``sensor_msgs/msg/Image`` -> struct ``sensor_msgs::msg::dds_::Image_`` with
``sequence<uint8> data``), so a DDS topic made from it carries the type name rmw_cyclonedds
uses. The field annotations give cyclonedds the type name and XTypes type information; the
bytes on the wire come from this module's codec, not from cyclonedds' generic Python machinery:

* cyclonedds turns ``sequence<uint8>`` into a Python list of ints, ~60 ms per 800x600 bgra8
  frame each way. Here ``data`` is written with one memcpy and read back as a zero-copy
  read-only ``uint8`` ndarray over the received sample.
* The encoding is what ROS 2 uses: XCDR1 ("plain CDR"), little-endian, encapsulation header
  ``00 01 00 00``, 8-byte alignment for float64 counted from the end of that header. The
  bytes equal ``rosbags``' ``serialize_cdr`` of the same message (``test/test_transport.py``).

Why not declare ``data: bytes`` (cyclonedds' fast ``BytesMachine``)? Same bytes on the wire,
but cyclonedds cannot build XTypes type information for a ``bytes`` member, so creating the
topic fails; and the type would no longer be the ROS type. rmw_cyclonedds itself sends no
type information and matches by type name + XCDR1 data representation (ddsi_qosmatch.c
falls back to type names when either side lacks type info), so what keeps compatibility with
real ROS 2 nodes is: the type name, XCDR1, and these bytes.
"""

# No ``from __future__ import annotations`` here: cyclonedds reads the IDL members from the
# evaluated class annotations (it cannot resolve 'str' or 'sequence[uint8]' given as strings).
import array as pyarray
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.annotations import final
from cyclonedds.idl.types import array, byte, float64, int32, sequence, uint8, uint32

_CDR_LE = b'\x00\x01\x00\x00'  # encapsulation: CDR (XCDR1), little-endian, no options
_CDR_BE = b'\x00\x00\x00\x00'


class CdrError(ValueError):
    """Bytes that are not a ROS 2 CDR message of the expected type (the message says why)."""


class _Writer:
    """Appends XCDR1 little-endian values; alignment counts from the end of the 4-byte header."""

    __slots__ = ('buf',)

    def __init__(self) -> None:
        self.buf = bytearray(_CDR_LE)

    def align(self, n: int) -> None:
        pad = -(len(self.buf) - 4) % n
        if pad:
            self.buf += bytes(pad)

    def u8(self, value: int) -> None:
        self.buf.append(value)

    def u32(self, value: int) -> None:
        self.align(4)
        self.buf += struct.pack('<I', value)

    def i32(self, value: int) -> None:
        self.align(4)
        self.buf += struct.pack('<i', value)

    def string(self, value: str) -> None:
        raw = value.encode()
        self.u32(len(raw) + 1)
        self.buf += raw
        self.buf.append(0)

    def octets(self, value: Any) -> None:
        """A ``sequence<uint8>``: length, then the bytes, one memcpy for any byte buffer."""
        raw = _byte_view(value)
        self.u32(raw.nbytes)
        self.buf += raw

    def f64s(self, values: Sequence[float], count: int | None = None) -> None:
        """``double[count]`` when ``count`` is given, else ``sequence<double>``."""
        flat = np.asarray(values, dtype='<f8').reshape(-1)
        if count is None:
            self.u32(flat.size)
        elif flat.size != count:
            raise CdrError(f'a float64[{count}] field needs {count} values, got {flat.size}')
        if flat.size:
            self.align(8)
            self.buf += flat.tobytes()


def _byte_view(value: Any) -> memoryview:
    """Any byte-like ``data`` -> a flat byte memoryview, without copying buffers."""
    if isinstance(value, (bytes, bytearray)):
        return memoryview(value)
    if isinstance(value, np.ndarray):
        if value.dtype.itemsize != 1:
            raise CdrError(f'uint8[] data must be a uint8 array, got dtype {value.dtype}')
        return memoryview(np.ascontiguousarray(value).reshape(-1)).cast('B')
    if isinstance(value, (memoryview, pyarray.array)):
        view = memoryview(value)
        return view.cast('B') if view.contiguous else memoryview(view.tobytes())
    try:  # a list of ints (what cyclonedds' own machinery would hand over)
        return memoryview(np.asarray(value, dtype=np.uint8).reshape(-1))
    except (TypeError, ValueError, OverflowError) as err:
        msg = f'uint8[] data must be bytes, a uint8 ndarray or ints 0..255, got {type(value)}'
        raise CdrError(msg) from err


class _Reader:
    __slots__ = ('data', 'end', 'order', 'pos')

    def __init__(self, data: bytes | bytearray | memoryview, typename: str) -> None:
        self.data = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        head = bytes(self.data[:4])
        if head[:2] == _CDR_LE[:2]:
            self.order = '<'
        elif head[:2] == _CDR_BE[:2]:
            self.order = '>'
        else:
            msg = (
                f'{typename}: encapsulation header {head.hex()} is not plain CDR (XCDR1) '
                '00 00/00 01; ROS 2 (rmw_cyclonedds) publishes XCDR1 - an XCDR2 writer must '
                'offer XCDR1 (DataRepresentation QoS)'
            )
            raise CdrError(msg)
        self.pos = 4
        self.end = len(self.data)

    def _take(self, n: int, typename: str = '') -> int:
        start = self.pos
        if start + n > self.end:
            msg = f'truncated CDR: need {n} bytes at offset {start}, have {self.end - start}'
            raise CdrError(msg)
        self.pos = start + n
        return start

    def align(self, n: int) -> None:
        self.pos += -(self.pos - 4) % n

    def u8(self) -> int:
        return self.data[self._take(1)]

    def u32(self) -> int:
        self.align(4)
        return struct.unpack_from(self.order + 'I', self.data, self._take(4))[0]

    def i32(self) -> int:
        self.align(4)
        return struct.unpack_from(self.order + 'i', self.data, self._take(4))[0]

    def string(self) -> str:
        size = self.u32()
        start = self._take(size)
        if size == 0:  # some writers send an empty string as length 0
            return ''
        return bytes(self.data[start : start + size - 1]).decode()

    def octets(self) -> np.ndarray:
        size = self.u32()
        start = self._take(size)
        view = np.frombuffer(self.data, np.uint8, size, start)  # zero-copy
        view.flags.writeable = False
        return view

    def f64s(self, count: int | None = None) -> list[float]:
        n = self.u32() if count is None else count
        if not n:
            return []
        self.align(8)
        start = self._take(8 * n)
        return np.frombuffer(self.data, self.order + 'f8', n, start).tolist()


def _serialize(
    self: Any, buffer: Any = None, endianness: Any = None, use_version_2: bool | None = None
) -> bytes:
    """ROS 2 CDR bytes (XCDR1 little-endian, with the 4-byte encapsulation header)."""
    if use_version_2:
        msg = (
            f'{self.__idl_typename__} is sent as XCDR1 like every ROS 2 message; create the '
            'writer with semseg_ros.transport.dds.ros_qos() (DataRepresentation XCDR1)'
        )
        raise CdrError(msg)
    w = _Writer()
    self._encode(w)
    return bytes(w.buf)


def _deserialize(cls: Any, data: Any, has_header: bool = True, use_version_2: Any = None) -> Any:
    """A message from ROS 2 CDR bytes; ``uint8[]`` fields are read-only views of ``data``."""
    return cls._decode(_Reader(data, cls.__idl_typename__))


def _ros_message(cls: type) -> type:
    """Route cyclonedds' ``serialize``/``deserialize`` through this module's codec.

    cyclonedds' DataWriter calls ``sample.serialize(use_version_2=...)`` and its DataReader
    ``type.deserialize(data)``. Installed by a decorator, not a mixin base class: cyclonedds
    reads a struct's first base class as an IDL base struct.
    """
    cls.serialize = _serialize
    cls.deserialize = classmethod(_deserialize)
    return cls


# --- builtin_interfaces, std_msgs, rosgraph_msgs --------------------------------------------


@_ros_message
@final
@dataclass
class Time(IdlStruct, typename='builtin_interfaces::msg::dds_::Time_'):
    sec: int32 = 0
    nanosec: uint32 = 0

    def _encode(self, w: _Writer) -> None:
        w.i32(self.sec)
        w.u32(self.nanosec)

    @classmethod
    def _decode(cls, r: _Reader) -> 'Time':
        return cls(r.i32(), r.u32())

    @classmethod
    def from_ns(cls, nanoseconds: int) -> 'Time':
        sec, nanosec = divmod(int(nanoseconds), 1_000_000_000)
        return cls(sec, nanosec)

    def to_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nanosec


@_ros_message
@final
@dataclass
class Header(IdlStruct, typename='std_msgs::msg::dds_::Header_'):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ''

    def _encode(self, w: _Writer) -> None:
        self.stamp._encode(w)
        w.string(self.frame_id)

    @classmethod
    def _decode(cls, r: _Reader) -> 'Header':
        return cls(Time._decode(r), r.string())


@_ros_message
@final
@dataclass
class Clock(IdlStruct, typename='rosgraph_msgs::msg::dds_::Clock_'):
    """``/clock``: the sim time ``use_sim_time`` nodes follow (the CARLA bridge sends it)."""

    clock: Time = field(default_factory=Time)

    def _encode(self, w: _Writer) -> None:
        self.clock._encode(w)

    @classmethod
    def _decode(cls, r: _Reader) -> 'Clock':
        return cls(Time._decode(r))


# --- sensor_msgs -------------------------------------------------------------------------------


@_ros_message
@final
@dataclass
class Image(IdlStruct, typename='sensor_msgs::msg::dds_::Image_'):
    """``sensor_msgs/msg/Image``. ``data`` may be bytes, a uint8 ndarray, array.array or ints;
    a received one is a read-only uint8 ndarray (feed it to :mod:`semseg_ros.imaging`)."""

    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    encoding: str = ''
    is_bigendian: uint8 = 0
    step: uint32 = 0
    data: sequence[uint8] = field(default_factory=bytes, repr=False)

    def _encode(self, w: _Writer) -> None:
        self.header._encode(w)
        w.u32(self.height)
        w.u32(self.width)
        w.string(self.encoding)
        w.u8(int(self.is_bigendian))
        w.u32(self.step)
        w.octets(self.data)

    @classmethod
    def _decode(cls, r: _Reader) -> 'Image':
        return cls(Header._decode(r), r.u32(), r.u32(), r.string(), r.u8(), r.u32(), r.octets())


@final
@dataclass
class ListImage(IdlStruct, typename='sensor_msgs::msg::dds_::Image_'):
    """:class:`Image` serialized by cyclonedds' own generic machinery: ``data`` is a list of
    ints (~60 ms per 800x600 bgra8 frame). Same IDL, same type name, same bytes; kept as the
    reference the fast codec is tested and benchmarked against. Use :class:`Image`."""

    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    encoding: str = ''
    is_bigendian: uint8 = 0
    step: uint32 = 0
    data: sequence[uint8] = field(default_factory=list, repr=False)


@_ros_message
@final
@dataclass
class RegionOfInterest(IdlStruct, typename='sensor_msgs::msg::dds_::RegionOfInterest_'):
    x_offset: uint32 = 0
    y_offset: uint32 = 0
    height: uint32 = 0
    width: uint32 = 0
    do_rectify: bool = False

    def _encode(self, w: _Writer) -> None:
        for value in (self.x_offset, self.y_offset, self.height, self.width):
            w.u32(value)
        w.u8(1 if self.do_rectify else 0)

    @classmethod
    def _decode(cls, r: _Reader) -> 'RegionOfInterest':
        return cls(r.u32(), r.u32(), r.u32(), r.u32(), bool(r.u8()))


def _zeros9() -> list[float]:
    return [0.0] * 9


def _zeros12() -> list[float]:
    return [0.0] * 12


@_ros_message
@final
@dataclass
class CameraInfo(IdlStruct, typename='sensor_msgs::msg::dds_::CameraInfo_'):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    distortion_model: str = ''
    d: sequence[float64] = field(default_factory=list)
    k: array[float64, 9] = field(default_factory=_zeros9)
    r: array[float64, 9] = field(default_factory=_zeros9)
    p: array[float64, 12] = field(default_factory=_zeros12)
    binning_x: uint32 = 0
    binning_y: uint32 = 0
    roi: RegionOfInterest = field(default_factory=RegionOfInterest)

    def _encode(self, w: _Writer) -> None:
        self.header._encode(w)
        w.u32(self.height)
        w.u32(self.width)
        w.string(self.distortion_model)
        w.f64s(self.d)
        w.f64s(self.k, 9)
        w.f64s(self.r, 9)
        w.f64s(self.p, 12)
        w.u32(self.binning_x)
        w.u32(self.binning_y)
        self.roi._encode(w)

    @classmethod
    def _decode(cls, r: _Reader) -> 'CameraInfo':
        header, height, width, model = Header._decode(r), r.u32(), r.u32(), r.string()
        d, k, rr, p = r.f64s(), r.f64s(9), r.f64s(9), r.f64s(12)
        return cls(header, height, width, model, d, k, rr, p, r.u32(), r.u32(),
                   RegionOfInterest._decode(r))  # fmt: skip


# --- diagnostic_msgs ---------------------------------------------------------------------------


@_ros_message
@final
@dataclass
class KeyValue(IdlStruct, typename='diagnostic_msgs::msg::dds_::KeyValue_'):
    key: str = ''
    value: str = ''

    def _encode(self, w: _Writer) -> None:
        w.string(self.key)
        w.string(self.value)

    @classmethod
    def _decode(cls, r: _Reader) -> 'KeyValue':
        return cls(r.string(), r.string())


@_ros_message
@final
@dataclass
class DiagnosticStatus(IdlStruct, typename='diagnostic_msgs::msg::dds_::DiagnosticStatus_'):
    """``level`` is one of :data:`OK`, :data:`WARN`, :data:`ERROR`, :data:`STALE` (IDL octet)."""

    level: byte = 0
    name: str = ''
    message: str = ''
    hardware_id: str = ''
    values: sequence[KeyValue] = field(default_factory=list)

    def _encode(self, w: _Writer) -> None:
        w.u8(int(self.level))
        w.string(self.name)
        w.string(self.message)
        w.string(self.hardware_id)
        w.u32(len(self.values))
        for item in self.values:
            item._encode(w)

    @classmethod
    def _decode(cls, r: _Reader) -> 'DiagnosticStatus':
        level, name, message, hardware_id = r.u8(), r.string(), r.string(), r.string()
        values = [KeyValue._decode(r) for _ in range(r.u32())]
        return cls(level, name, message, hardware_id, values)


# DiagnosticStatus level constants (module level: cyclonedds would take class attributes
# for IDL members).
OK, WARN, ERROR, STALE = 0, 1, 2, 3


@_ros_message
@final
@dataclass
class DiagnosticArray(IdlStruct, typename='diagnostic_msgs::msg::dds_::DiagnosticArray_'):
    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)

    def _encode(self, w: _Writer) -> None:
        self.header._encode(w)
        w.u32(len(self.status))
        for item in self.status:
            item._encode(w)

    @classmethod
    def _decode(cls, r: _Reader) -> 'DiagnosticArray':
        header = Header._decode(r)
        return cls(header, [DiagnosticStatus._decode(r) for _ in range(r.u32())])


MESSAGE_TYPES: dict[str, type[IdlStruct]] = {
    'builtin_interfaces/msg/Time': Time,
    'std_msgs/msg/Header': Header,
    'rosgraph_msgs/msg/Clock': Clock,
    'sensor_msgs/msg/Image': Image,
    'sensor_msgs/msg/RegionOfInterest': RegionOfInterest,
    'sensor_msgs/msg/CameraInfo': CameraInfo,
    'diagnostic_msgs/msg/KeyValue': KeyValue,
    'diagnostic_msgs/msg/DiagnosticStatus': DiagnosticStatus,
    'diagnostic_msgs/msg/DiagnosticArray': DiagnosticArray,
}
"""ROS type name (``pkg/msg/Name``, as rosbags and ``ros2 topic`` write it) -> DDS type."""


def ros_type_name(msg_type: type[IdlStruct]) -> str:
    """``sensor_msgs::msg::dds_::Image_`` -> ``sensor_msgs/msg/Image``."""
    package, kind, _, name = msg_type.__idl_typename__.split('::')
    return f'{package}/{kind}/{name.removesuffix("_")}'


def message_type(ros_type: str) -> type[IdlStruct]:
    """The DDS type for a ROS type name (``sensor_msgs/msg/Image``); raises KeyError naming
    the supported ones."""
    try:
        return MESSAGE_TYPES[ros_type]
    except KeyError:
        msg = f'message type {ros_type!r} is not supported; use one of {", ".join(MESSAGE_TYPES)}'
        raise KeyError(msg) from None
