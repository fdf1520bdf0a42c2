"""sensor_msgs/Image <-> numpy: the one conversion used by every adapter.

The rclpy node, ``semseg replay`` and the bag tool all hand the message's fields to this
module; nothing here imports a message class (numpy + OpenCV only)::

    msg (any object with height, width, encoding, is_bigendian, step, data)
      -> ImageFields.from_msg  -> image_to_array  (H, W[, C]) view of msg.data, rows `step` apart
      -> to_rgb                -> (H, W, 3) uint8 RGB model input          (frame_to_rgb: both)

    (H, W[, C]) array -> array_to_image_fields -> ImageFields -> .msg_kwargs() -> Image(**kw)

Rules, as ROS defines them (sensor_msgs/msg/Image.msg and cv_bridge):

* ``step`` is the row length in bytes and may exceed ``width * bytes_per_pixel`` (row
  padding); the padding is skipped by a strided view, never copied.
* ``data`` must hold at least ``step * height`` bytes. A longer buffer is accepted and its
  tail ignored (cv_bridge does the same: it wraps the buffer with height/width/step and never
  looks past the last row); a shorter one is an error.
* ``is_bigendian`` matters only for multi-byte encodings (mono16, 16UC1); 8-bit images ignore
  it, as cv_bridge and rosbags-image do.

A malformed frame raises :class:`ImageFormatError` whose ``kind`` groups it ('encoding',
'size', 'step', 'short_data', 'data', 'array'), so an adapter logs one warning per kind with
:class:`WarnOncePerKind` and drops the frame.
"""

from __future__ import annotations

import array as pyarray
import operator
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np

# What adapters may put in ``data``: rclpy gives array.array('B'), rosbags a uint8 ndarray,
# others bytes or a list of ints.
ImageData = bytes | bytearray | memoryview | np.ndarray | pyarray.array | Sequence[int]


class _Encoding(NamedTuple):
    channels: int
    itemsize: int  # bytes per channel value


ENCODINGS: dict[str, _Encoding] = {
    'bgra8': _Encoding(4, 1),
    'bgr8': _Encoding(3, 1),
    'rgba8': _Encoding(4, 1),
    'rgb8': _Encoding(3, 1),
    'mono8': _Encoding(1, 1),
    'mono16': _Encoding(1, 2),
    '16UC1': _Encoding(1, 2),
}
"""Every encoding :func:`image_to_array` and :func:`array_to_image_fields` handle."""

RGB_ENCODINGS = ('bgra8', 'bgr8', 'rgba8', 'rgb8', 'mono8')
"""The camera encodings the node accepts: those :func:`to_rgb` turns into model input."""

# cv2 conversions to / from RGB; rgb8 needs none.
_TO_RGB = {
    'bgra8': cv2.COLOR_BGRA2RGB,
    'bgr8': cv2.COLOR_BGR2RGB,
    'rgba8': cv2.COLOR_RGBA2RGB,
    'mono8': cv2.COLOR_GRAY2RGB,
}
_FROM_RGB = {
    'bgra8': cv2.COLOR_RGB2BGRA,
    'bgr8': cv2.COLOR_RGB2BGR,
    'rgba8': cv2.COLOR_RGB2RGBA,
    'mono8': cv2.COLOR_RGB2GRAY,
}

_FLAG_TYPES = (bool, int, np.bool_, np.integer)  # what a uint8 / bool message field may hold

ErrorKind = Literal[
    'encoding', 'size', 'step', 'short_data', 'data', 'is_bigendian', 'header', 'array'
]


class ImageFormatError(ValueError):
    """A frame (or an array to publish) that cannot be converted.

    ``kind`` is one of 'encoding' (unsupported encoding), 'size' (height or width not a
    positive int), 'step' (row stride too small or not a whole number of values),
    'short_data' (fewer than step*height bytes), 'data' (``data`` is not a byte buffer),
    'is_bigendian' (not 0 / 1 / a bool), 'header' (a stamp that is not two ints; the node
    checks it) and 'array' (an array whose shape or dtype does not fit the encoding). The
    message names the field, its value and the fix.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True, eq=False)
class ImageFields:
    """The fields of a sensor_msgs/msg/Image, free of any message class.

    Holds what a message holds, unvalidated (a received frame may be malformed; building one
    never raises on a field's value): :func:`image_to_array` checks it. ``data`` is whatever
    the adapter has (see :data:`ImageData`). ``eq=False``: ``data`` may be an ndarray, which
    has no plain ``==``.
    """

    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: ImageData = field(repr=False)

    @classmethod
    def from_msg(cls, msg: Any) -> ImageFields:
        """Read the six fields off any Image-like object (rclpy, rosbags, our DDS type)."""
        if isinstance(msg, ImageFields):
            return msg
        values = {}
        for name in ('height', 'width', 'encoding', 'is_bigendian', 'step', 'data'):
            try:
                values[name] = getattr(msg, name)
            except AttributeError as err:
                msg_text = (
                    f'{type(msg).__name__} has no field {name!r}: pass a sensor_msgs/msg/Image '
                    '(rclpy, rosbags or the DDS type) or an ImageFields'
                )
                raise TypeError(msg_text) from err
        flag = values['is_bigendian']
        if isinstance(flag, _FLAG_TYPES):
            values['is_bigendian'] = bool(flag)  # anything else: image_to_array rejects it
        return cls(**values)

    def msg_kwargs(
        self, *, data_type: Literal['ndarray', 'array', 'bytes'] = 'ndarray'
    ) -> dict[str, Any]:
        """Keyword arguments for an Image message constructor (add ``header`` yourself).

        ``data_type`` picks what ``data`` becomes: 'ndarray' a 1-D uint8 array, zero-copy
        where possible (what rosbags messages hold); 'array' an ``array.array('B')``, one copy
        (what rclpy's Image.data setter accepts without a per-byte check); 'bytes', one copy.
        """
        flat = _as_uint8(self.data)  # (N,) uint8
        data: Any
        if data_type == 'ndarray':
            data = flat
        elif data_type == 'array':
            data = pyarray.array('B')
            data.frombytes(flat)  # one memcpy; array.array('B', ndarray) would go per item
        elif data_type == 'bytes':
            data = flat.tobytes()
        else:
            raise ValueError(f"data_type must be 'ndarray', 'array' or 'bytes', got {data_type!r}")
        return {
            'height': self.height,
            'width': self.width,
            'encoding': self.encoding,
            'is_bigendian': int(self.is_bigendian),  # uint8 field in the message
            'step': self.step,
            'data': data,
        }


def _short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a fuzzed field may be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else f'{text[: limit - 3]}...'


def _unsupported(encoding: object, allowed: Sequence[str], what: str) -> ImageFormatError:
    message = (
        f'encoding {_short_repr(encoding)} is not supported {what}; publish one of '
        f'{", ".join(allowed[:-1])} or {allowed[-1]}, or add a conversion'
    )
    return ImageFormatError('encoding', message)


def _values_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integer values (a list of ints, an int array) -> (N,) uint8, range-checked."""
    flat = values.reshape(-1)
    if flat.size == 0:
        return np.empty(0, np.uint8)
    if flat.dtype.kind not in 'iu':
        message = (
            f'data holds {flat.dtype} values; it must be bytes or a sequence of ints in 0..255'
        )
        raise ImageFormatError('data', message)
    low, high = int(flat.min()), int(flat.max())
    if low < 0 or high > 255:
        message = f'data holds values in {low}..{high}; byte values must be in 0..255'
        raise ImageFormatError('data', message)
    return flat.astype(np.uint8)


def _as_uint8(data: ImageData) -> np.ndarray:
    """Any ``data`` -> (N,) uint8 array, sharing memory with ``data`` when it is a buffer."""
    if isinstance(data, (bytes, bytearray)):
        return np.frombuffer(data, np.uint8)
    if isinstance(data, (memoryview, pyarray.array)):
        data = np.asarray(data)  # buffer protocol: a view, typed by the buffer's format
    elif not isinstance(data, np.ndarray):
        try:
            values = np.asarray(data)
        except (TypeError, ValueError, OverflowError) as err:
            message = (
                f'data is a {type(data).__name__} numpy cannot read; pass bytes, an '
                'array.array, a uint8 ndarray or a sequence of ints in 0..255'
            )
            raise ImageFormatError('data', message) from err
        return _values_to_uint8(values)
    if data.dtype.itemsize == 1 and data.dtype.kind in 'uiSV':
        # Raw bytes already (uint8, or int8 from a signed-char binding): reinterpret, no copy.
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return _values_to_uint8(data)


def _dimension(name: str, value: object) -> int:
    try:
        number = operator.index(value)  # rejects floats and None; accepts numpy ints
    except TypeError as err:
        message = f'{name} must be an int, got {_short_repr(value)}'
        raise ImageFormatError('size' if name != 'step' else 'step', message) from err
    if number <= 0 and name != 'step':
        message = f'{name} is {number}: an image needs at least one row and one column'
        raise ImageFormatError('size', message)
    return number


def image_to_array(image: ImageFields | Any, *, native: bool = False) -> np.ndarray:
    """The message's pixels as an array, a view of ``data`` whenever the layout allows.

    Shape: (H, W) for mono8 / mono16 / 16UC1, (H, W, C) otherwise. dtype uint8 for 8-bit
    encodings; for 16-bit ones '<u2' or '>u2' as ``is_bigendian`` says (still a view), or
    native-order uint16 (a copy if the orders differ) with ``native=True``, which OpenCV needs.

    Zero-copy: rows ``step`` bytes apart are a strided view, so padded rows are skipped, not
    copied. The result shares ``data``'s memory (read-only when ``data`` is bytes) except when
    ``data`` is a list of ints; copy it before writing to it. Raises :class:`ImageFormatError`.
    """
    fields = ImageFields.from_msg(image)
    spec = ENCODINGS.get(fields.encoding) if isinstance(fields.encoding, str) else None
    if spec is None:
        raise _unsupported(fields.encoding, tuple(ENCODINGS), 'here')
    if not isinstance(fields.is_bigendian, _FLAG_TYPES):
        message = (
            f'is_bigendian must be 0 or 1, got {_short_repr(fields.is_bigendian)}: set it to 0 '
            '(little-endian) or 1'
        )
        raise ImageFormatError('is_bigendian', message)
    height = _dimension('height', fields.height)
    width = _dimension('width', fields.width)
    step = _dimension('step', fields.step)
    row_bytes = width * spec.channels * spec.itemsize
    if step < row_bytes:
        message = (
            f'step {step} is less than width * bytes per pixel = {row_bytes} (width {width}, '
            f'{fields.encoding} has {spec.channels * spec.itemsize} bytes per pixel): '
            'the step, the width or the encoding is wrong'
        )
        raise ImageFormatError('step', message)
    if step % spec.itemsize:
        message = (
            f'step {step} is not a multiple of {spec.itemsize}, the size of one '
            f'{fields.encoding} value: rows would start mid-value'
        )
        raise ImageFormatError('step', message)

    flat = _as_uint8(fields.data)  # (N,) uint8
    needed = step * height
    if flat.size < needed:
        message = (
            f'data has {flat.size} bytes but step*height = {needed} (step {step}, height '
            f'{height}): the message is truncated'
        )
        raise ImageFormatError('short_data', message)

    rows = flat[:needed].reshape(height, step)[:, :row_bytes]  # (H, row_bytes) strided view
    if spec.itemsize > 1:
        order = '>' if fields.is_bigendian else '<'
        rows = rows.view(np.dtype(f'{order}u{spec.itemsize}'))  # (H, W * C), still a view
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    pixels = rows.reshape(shape)  # splits the contiguous last axis: a view, never a copy
    if native and not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder('='))
    return pixels


def mislabelled_padding(image: ImageFields | Any) -> str | None:
    """Why a frame's row padding looks like another encoding's pixels, or None.

    Legal by the step rules, but a row of exactly ``width x n`` bytes where the encoding has
    fewer than ``n`` bytes per pixel is nearly always an encoding label that is wrong (bgra8
    data labelled bgr8: step 3200 for width 800), and decoding it gives garbage. Call it on a
    frame :func:`image_to_array` accepted.
    """
    fields = ImageFields.from_msg(image)
    spec = ENCODINGS.get(fields.encoding)
    if spec is None:
        return None
    bpp = spec.channels * spec.itemsize
    width, step = int(fields.width), int(fields.step)
    if step <= width * bpp or step % width:
        return None
    others = sorted(
        name for name, s in ENCODINGS.items() if s.channels * s.itemsize == step // width
    )
    if not others:
        return None
    return (
        f'step {step} is width {width} x {step // width} bytes, the row of '
        f'{" / ".join(others)}, but encoding says {fields.encoding} ({bpp} bytes per pixel): '
        f'the rows are decoded as {fields.encoding} with {step - width * bpp} bytes of '
        'padding, which gives garbage if the data is really one of those; fix the encoding '
        'label at the camera (or pad rows to another length if this padding is real)'
    )


def _check_array(array: np.ndarray, encoding: str, spec: _Encoding) -> None:
    dtype = np.dtype(np.uint8 if spec.itemsize == 1 else np.uint16)
    if spec.channels == 1:
        shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1)
        wanted = '(H, W) or (H, W, 1)'
    else:
        shape_ok = array.ndim == 3 and array.shape[2] == spec.channels
        wanted = f'(H, W, {spec.channels})'
    if not shape_ok:
        message = f'{encoding} needs an array of shape {wanted}, got {array.shape}'
        raise ImageFormatError('array', message)
    # Byte order may differ (a '>u2' view is a valid mono16 image); kind and size may not.
    if array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
        message = (
            f'{encoding} needs a {dtype} array, got {array.dtype}: convert with '
            f'.astype(np.{dtype}) after checking the values fit'
        )
        raise ImageFormatError('array', message)
    if array.shape[0] == 0 or array.shape[1] == 0:
        message = f'cannot publish an empty image of shape {array.shape}'
        raise ImageFormatError('array', message)


def to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Decoded pixels (from :func:`image_to_array`) -> (H, W, 3) uint8 RGB model input.

    rgb8 comes back as ``pixels`` itself (no copy; maybe a read-only strided view of the
    message); every other encoding is converted by OpenCV into a new contiguous array.
    """
    if not isinstance(encoding, str) or encoding not in RGB_ENCODINGS:
        raise _unsupported(encoding, RGB_ENCODINGS, 'as model input')
    _check_array(pixels, encoding, ENCODINGS[encoding])
    if encoding == 'rgb8':
        return pixels
    return cv2.cvtColor(pixels, _TO_RGB[encoding])  # (H, W, 3) uint8


def frame_to_rgb(image: ImageFields | Any) -> np.ndarray:
    """A camera message -> (H, W, 3) uint8 RGB: :func:`image_to_array` then :func:`to_rgb`."""
    fields = ImageFields.from_msg(image)
    if not isinstance(fields.encoding, str) or fields.encoding not in RGB_ENCODINGS:
        # name the node's list, not image_to_array's
        raise _unsupported(fields.encoding, RGB_ENCODINGS, 'as model input')
    return to_rgb(image_to_array(fields), fields.encoding)


def from_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> pixels in ``encoding`` (alpha 255; mono8 is luma).

    The inverse of :func:`to_rgb`, for publishing a colour image in the user's encoding;
    rgb8 returns ``rgb`` itself.
    """
    if encoding not in RGB_ENCODINGS:
        raise _unsupported(encoding, RGB_ENCODINGS, 'for a colour image')
    _check_array(rgb, 'rgb8', ENCODINGS['rgb8'])
    if encoding == 'rgb8':
        return rgb
    return cv2.cvtColor(rgb, _FROM_RGB[encoding])


def array_to_image_fields(
    pixels: np.ndarray, encoding: str, *, step: int | None = None
) -> ImageFields:
    """(H, W[, C]) array -> ImageFields to publish; ``data`` is a 1-D uint8 array.

    ``step`` defaults to ``width * bytes_per_pixel``; a larger one pads each row with zeros
    (for consumers that want aligned rows). ``data`` shares memory with ``pixels`` when that
    is C-contiguous and unpadded, so serialize (publish, write) before reusing ``pixels``.
    16-bit arrays keep their byte order and say so in ``is_bigendian``; 8-bit ones say False.
    """
    spec = ENCODINGS.get(encoding)
    if spec is None:
        raise _unsupported(encoding, tuple(ENCODINGS), 'for publishing')
    _check_array(pixels, encoding, spec)
    height, width = pixels.shape[:2]
    row_bytes = width * spec.channels * spec.itemsize
    step = row_bytes if step is None else _dimension('step', step)
    if step < row_bytes or step % spec.itemsize:
        message = (
            f'step {step} must be at least width * bytes per pixel = {row_bytes} and a '
            f'multiple of {spec.itemsize} for {encoding}'
        )
        raise ImageFormatError('step', message)

    if spec.itemsize == 1:
        bigendian = False
    else:
        order = pixels.dtype.byteorder
        bigendian = order == '>' or (order in '=|' and sys.byteorder == 'big')
    contiguous = np.ascontiguousarray(pixels)  # copies only a strided input
    rows = contiguous.reshape(height, -1).view(np.uint8)  # (H, row_bytes)
    if step == row_bytes:
        data = rows.reshape(-1)
    else:
        padded = np.zeros((height, step), np.uint8)
        padded[:, :row_bytes] = rows
        data = padded.reshape(-1)
    return ImageFields(height, width, encoding, bigendian, step, data)


class WarnOncePerKind:
    """Log the first :class:`ImageFormatError` of each kind; count every one.

    An adapter drops a bad frame and calls this, so a camera publishing yuv422 at 20 Hz
    gives one warning, not twenty a second, while ``counts`` (for /diagnostics) still shows
    every drop. ``log`` is any ``str -> None`` callable, e.g. ``node.get_logger().warning``;
    ``prefix`` typically names the topic. Thread-safe (multi-threaded executors).
    """

    def __init__(self, log: Callable[[str], object], *, prefix: str = '') -> None:
        self._log = log
        self._prefix = prefix
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, err: ImageFormatError) -> bool:
        """Count ``err``; log it when it is the first of its kind. True when it logged."""
        with self._lock:
            first = err.kind not in self._counts
            self._counts[err.kind] = self._counts.get(err.kind, 0) + 1
        if first:
            self._log(
                f'{self._prefix}{err}; dropping such frames (further {err.kind!r} errors '
                'are counted, not logged)'
            )
        return first

    @property
    def counts(self) -> dict[str, int]:
        """Frames dropped so far, per kind (a copy)."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        """Frames dropped so far, all kinds."""
        with self._lock:
            return sum(self._counts.values())
