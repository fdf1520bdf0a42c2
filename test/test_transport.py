"""The standalone DDS transport: ROS 2 CDR wire compatibility, names, QoS, pub/sub."""

from __future__ import annotations

import os
import random
import string
import time

import numpy as np
import pytest

pytest.importorskip('cyclonedds', reason='the DDS transport needs cyclonedds (pip install .[dds])')

from rosbags.typesys import Stores, get_typestore

from semseg_ros.imaging import frame_to_rgb
from semseg_ros.transport import dds, msgs

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
T = TYPESTORE.types


def _text(rng: random.Random, max_len: int = 12) -> str:
    alphabet = string.ascii_letters + string.digits + '/_ äé'  # multi-byte UTF-8 too
    return ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))


def _stamp(rng: random.Random) -> tuple[msgs.Header, object]:
    sec, nanosec, frame = rng.randint(-(2**31), 2**31 - 1), rng.randint(0, 999_999_999), _text(rng)
    ours = msgs.Header(msgs.Time(sec, nanosec), frame)
    ref = T['std_msgs/msg/Header'](
        stamp=T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame
    )
    return ours, ref


def random_image(rng: random.Random) -> tuple[msgs.Image, object]:
    header, ref_header = _stamp(rng)
    encoding = rng.choice(['bgra8', 'rgb8', 'mono8', 'mono16', '', 'x' * rng.randint(1, 7)])
    height, width = rng.randint(0, 7), rng.randint(0, 9)
    step = width * 4 + rng.randint(0, 3)
    data = np.frombuffer(rng.randbytes(rng.randint(0, 200)), np.uint8)
    big = rng.randint(0, 1)
    ours = msgs.Image(header, height, width, encoding, big, step, data)
    ref = T['sensor_msgs/msg/Image'](
        header=ref_header, height=height, width=width, encoding=encoding, is_bigendian=big,
        step=step, data=data,
    )  # fmt: skip
    return ours, ref


def random_camera_info(rng: random.Random) -> tuple[msgs.CameraInfo, object]:
    header, ref_header = _stamp(rng)
    d = [rng.uniform(-1, 1) for _ in range(rng.choice([0, 1, 5, 8]))]
    k, r, p = ([rng.uniform(-1e3, 1e3) for _ in range(n)] for n in (9, 9, 12))
    roi = [rng.randint(0, 2**32 - 1) for _ in range(4)] + [rng.random() < 0.5]
    binning = rng.randint(0, 4), rng.randint(0, 4)
    model = rng.choice(['plumb_bob', 'rational_polynomial', '', _text(rng)])
    height, width = rng.randint(0, 4000), rng.randint(0, 4000)
    ours = msgs.CameraInfo(
        header, height, width, model, d, k, r, p, *binning, msgs.RegionOfInterest(*roi)
    )
    ref = T['sensor_msgs/msg/CameraInfo'](
        header=ref_header, height=height, width=width, distortion_model=model,
        d=np.array(d, np.float64), k=np.array(k), r=np.array(r), p=np.array(p),
        binning_x=binning[0], binning_y=binning[1],
        roi=T['sensor_msgs/msg/RegionOfInterest'](
            x_offset=roi[0], y_offset=roi[1], height=roi[2], width=roi[3], do_rectify=roi[4]
        ),
    )  # fmt: skip
    return ours, ref


def random_diagnostics(rng: random.Random) -> tuple[msgs.DiagnosticArray, object]:
    header, ref_header = _stamp(rng)
    ours_status, ref_status = [], []
    for _ in range(rng.randint(0, 3)):
        level = rng.randint(0, 3)
        name, message, hw = _text(rng), _text(rng, 30), _text(rng)
        pairs = [(_text(rng), _text(rng)) for _ in range(rng.randint(0, 4))]
        ours_status.append(
            msgs.DiagnosticStatus(
                level, name, message, hw, [msgs.KeyValue(k, v) for k, v in pairs]
            )
        )
        ref_status.append(
            T['diagnostic_msgs/msg/DiagnosticStatus'](
                level=level, name=name, message=message, hardware_id=hw,
                values=[T['diagnostic_msgs/msg/KeyValue'](key=k, value=v) for k, v in pairs],
            )
        )  # fmt: skip
    ours = msgs.DiagnosticArray(header, ours_status)
    ref = T['diagnostic_msgs/msg/DiagnosticArray'](header=ref_header, status=ref_status)
    return ours, ref


MAKERS = {
    'sensor_msgs/msg/Image': random_image,
    'sensor_msgs/msg/CameraInfo': random_camera_info,
    'diagnostic_msgs/msg/DiagnosticArray': random_diagnostics,
}


# --- Wire compatibility -------------------------------------------------------------------


@pytest.mark.parametrize('typename', list(MAKERS))
def test_serialized_bytes_equal_rosbags_ros2_cdr(typename: str) -> None:
    rng = random.Random(typename)
    for _ in range(200):
        ours, ref = MAKERS[typename](rng)
        expected = bytes(TYPESTORE.serialize_cdr(ref, typename))
        assert ours.serialize() == expected
        back = type(ours).deserialize(expected)
        assert back.serialize() == expected  # decode -> encode is lossless


@pytest.mark.parametrize('typename', list(MAKERS))
def test_fast_codec_equals_cyclonedds_own_machinery(typename: str) -> None:
    # The IDL declaration (field order and types) is what cyclonedds' generic serializer
    # reads; equal bytes mean the declared type is the ROS type the codec writes.
    rng = random.Random(1)
    for _ in range(20):
        ours, _ = MAKERS[typename](rng)
        if isinstance(ours, msgs.Image):
            plain = msgs.ListImage(
                ours.header, ours.height, ours.width, ours.encoding, ours.is_bigendian,
                ours.step, ours.data.tolist(),
            )  # fmt: skip
            reference = plain.serialize()
        else:
            reference = type(ours).__idl__.serialize(ours)
        assert ours.serialize() == reference


def test_big_endian_cdr_is_read() -> None:
    ours, ref = random_camera_info(random.Random(3))
    big = bytes(TYPESTORE.serialize_cdr(ref, 'sensor_msgs/msg/CameraInfo', little_endian=False))
    back = msgs.CameraInfo.deserialize(big)
    assert back.serialize() == ours.serialize()  # re-encoded little-endian


def test_received_data_is_a_read_only_view_and_padding_is_ignored() -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    msg = msgs.Image(msgs.Header(msgs.Time(1, 2), 'cam'), 2, 3, 'bgra8', 0, 12, pixels)
    wire = msg.serialize() + b'\0\0\0'  # Cyclone pads samples to a multiple of 4
    back = msgs.Image.deserialize(wire)
    assert isinstance(back.data, np.ndarray) and not back.data.flags.writeable
    np.testing.assert_array_equal(frame_to_rgb(back), pixels[..., 2::-1])


def test_data_accepts_every_byte_container() -> None:
    raw = bytes(range(12))
    expected = msgs.Image(step=12, data=raw).serialize()
    import array

    for data in (bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8),
                 array.array('B', raw), list(raw)):  # fmt: skip
        assert msgs.Image(step=12, data=data).serialize() == expected


@pytest.mark.parametrize(
    ('wire', 'match'),
    [
        (b'\x00\x07\x00\x00' + bytes(40), 'XCDR1'),  # an XCDR2 sample
        (b'\x00\x01\x00\x00\x01\x00', 'truncated'),
    ],
)
def test_bad_bytes_raise_cdr_error(wire: bytes, match: str) -> None:
    with pytest.raises(msgs.CdrError, match=match):
        msgs.Image.deserialize(wire)


def test_xcdr2_serialization_is_refused_with_the_fix() -> None:
    with pytest.raises(msgs.CdrError, match='ros_qos'):
        msgs.Image().serialize(use_version_2=True)


def test_type_names_follow_rmw_cyclonedds() -> None:
    assert msgs.Image.__idl_typename__ == 'sensor_msgs::msg::dds_::Image_'
    assert msgs.CameraInfo.__idl_typename__ == 'sensor_msgs::msg::dds_::CameraInfo_'
    assert msgs.DiagnosticArray.__idl_typename__ == 'diagnostic_msgs::msg::dds_::DiagnosticArray_'
    assert msgs.Header.__idl_typename__ == 'std_msgs::msg::dds_::Header_'
    for ros_name, cls in msgs.MESSAGE_TYPES.items():
        assert msgs.ros_type_name(cls) == ros_name
        assert ros_name in TYPESTORE.types  # a real ROS 2 type
        cls.__idl__.fill_type_data()  # cyclonedds can build its XTypes type information
    with pytest.raises(KeyError, match='sensor_msgs/msg/Image'):
        msgs.message_type('sensor_msgs/msg/PointCloud2')


# --- Names, domain, QoS --------------------------------------------------------------------


@pytest.mark.parametrize(
    ('name', 'expected'),
    [
        ('/carla/ego_vehicle/rgb_front/image', '/carla/ego_vehicle/rgb_front/image'),
        ('image', '/ns/image'),
        ('~/mask', '/ns/semseg_node/mask'),
    ],
)
def test_resolve_topic(name: str, expected: str) -> None:
    assert dds.resolve_topic(name, node_name='semseg_node', namespace='/ns') == expected
    assert dds.dds_topic_name(expected) == 'rt' + expected


@pytest.mark.parametrize('bad', ['', '/a//b', '/1abc', '~mask', '/a-b'])
def test_bad_topic_names_are_refused(bad: str) -> None:
    with pytest.raises(dds.TransportError, match='topic name'):
        dds.resolve_topic(bad)


def test_domain_id_from_env() -> None:
    assert dds.domain_id_from_env({}) == 0
    assert dds.domain_id_from_env({'ROS_DOMAIN_ID': ' 42 '}) == 42
    for bad in ('abc', '-1', '233'):
        with pytest.raises(dds.TransportError, match='ROS_DOMAIN_ID'):
            dds.domain_id_from_env({'ROS_DOMAIN_ID': bad})


def test_qos_is_xcdr1_and_ros_like() -> None:
    text = repr(dds.ros_qos())
    assert 'use_cdrv0_representation=True, use_xcdrv2_representation=False' in text
    assert 'KeepLast(depth=10)' in text and 'Reliable' in text and 'Volatile' in text
    assert 'BestEffort' in repr(dds.sensor_qos())


# --- Real DDS, one process ------------------------------------------------------------------


@pytest.fixture
def participant():
    domain = 150 + (os.getpid() + random.randrange(50)) % 80  # apart from other test runs
    with dds.Participant(domain, config=dds.loopback_config()) as p:
        yield p


def _receive(participant: dds.Participant, sub: dds.Subscription, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = sub.take()
        if got:
            return got
        participant.wait(0.2)
    raise AssertionError(f'nothing received on {sub.topic} in {timeout} s')


def test_publish_and_receive_a_full_frame(participant: dds.Participant) -> None:
    pub = participant.create_publisher(msgs.Image, '/carla/ego_vehicle/rgb_front/image')
    sub = participant.create_subscription(msgs.Image, '/carla/ego_vehicle/rgb_front/image')
    assert pub.wait_for_subscribers(1, timeout=5.0)
    pixels = np.random.default_rng(0).integers(0, 256, (600, 800, 4), dtype=np.uint8)
    header = msgs.Header(msgs.Time(12, 50_000_000), 'ego_vehicle/rgb_front')
    pub.publish(msgs.Image(header, 600, 800, 'bgra8', 0, 3200, pixels))
    (got,) = _receive(participant, sub)
    assert got.header == header
    assert (got.height, got.width, got.encoding, got.step) == (600, 800, 'bgra8', 3200)
    np.testing.assert_array_equal(got.data.reshape(600, 800, 4), pixels)


def test_best_effort_reader_matches_reliable_writer(participant: dds.Participant) -> None:
    pub = participant.create_publisher(msgs.DiagnosticArray, '/diagnostics', dds.ros_qos())
    sub = participant.create_subscription(msgs.DiagnosticArray, '/diagnostics', dds.sensor_qos())
    assert pub.wait_for_subscribers(1, timeout=5.0)
    sent, _ = random_diagnostics(random.Random(0))
    pub.publish(sent)
    (got,) = _receive(participant, sub)
    assert got.serialize() == sent.serialize()


def test_one_type_per_topic(participant: dds.Participant) -> None:
    participant.create_publisher(msgs.Image, '/x')
    with pytest.raises(dds.TransportError, match='already has type sensor_msgs/msg/Image'):
        participant.create_subscription(msgs.CameraInfo, '/x')
