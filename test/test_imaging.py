"""sensor_msgs/Image <-> numpy: encodings, row padding, byte order, zero-copy, bad frames.

Inputs are built in code; rosbags-image (a public cv_bridge port) is the reference for
unpadded images, hand-built padded buffers for the rest (rosbags-image ignores ``step``).
"""

from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest

from semseg_ros.imaging import (
    ENCODINGS,
    RGB_ENCODINGS,
    ImageFields,
    ImageFormatError,
    WarnOncePerKind,
    array_to_image_fields,
    frame_to_rgb,
    from_rgb,
    image_to_array,
    to_rgb,
)

PAD_BYTE = 0xEE  # padding filler: a leak into the pixels would show


def _pixels(encoding: str, height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    """Random pixels for ``encoding``: (H, W) or (H, W, C), uint8 or uint16 (native)."""
    spec = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    high = 256 if spec.itemsize == 1 else 65536  # 16-bit values above 255 expose byte order
    dtype = np.uint8 if spec.itemsize == 1 else np.uint16
    return rng.integers(0, high, size=shape).astype(dtype)


def _padded_message(pixels: np.ndarray, encoding: str, step: int, *, bigendian: bool = False):
    """A hand-built Image-like message: rows ``step`` bytes apart, gaps filled with PAD_BYTE."""
    height, width = pixels.shape[:2]
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype('>u2' if bigendian else '<u2')
    rows = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)  # (H, row_bytes)
    buffer = np.full((height, step), PAD_BYTE, np.uint8)
    buffer[:, : rows.shape[1]] = rows
    return SimpleNamespace(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=step,
        data=array.array('B', buffer.tobytes()),  # what rclpy hands a callback
    )


def _fields(**overrides) -> ImageFields:
    """A CARLA-sized bgra8 frame (800x600, step 3200) with some fields overridden."""
    values = {'height': 600, 'width': 800, 'encoding': 'bgra8', 'is_bigendian': False}
    values.update(step=3200, data=bytes(3200 * 600))
    values.update(overrides)
    return ImageFields(**values)


# --- round trips and containers --------------------------------------------------------------


@pytest.mark.parametrize('encoding', list(ENCODINGS))
def test_every_encoding_round_trips(encoding: str) -> None:
    pixels = _pixels(encoding)
    fields = array_to_image_fields(pixels, encoding)
    assert (fields.height, fields.width, fields.encoding) == (5, 7, encoding)
    assert fields.step == 7 * ENCODINGS[encoding].channels * ENCODINGS[encoding].itemsize
    back = image_to_array(fields, native=True)
    assert back.shape == pixels.shape
    assert back.dtype == pixels.dtype
    np.testing.assert_array_equal(back, pixels)


@pytest.mark.parametrize('data_type', ['ndarray', 'array', 'bytes'])
@pytest.mark.parametrize('encoding', ['bgra8', 'mono16'])
def test_message_kwargs_round_trip_through_each_data_type(encoding: str, data_type: str) -> None:
    pixels = _pixels(encoding)
    kwargs = array_to_image_fields(pixels, encoding).msg_kwargs(data_type=data_type)
    expected = {'ndarray': np.ndarray, 'array': array.array, 'bytes': bytes}[data_type]
    assert isinstance(kwargs['data'], expected)
    if data_type == 'array':
        assert kwargs['data'].typecode == 'B'  # rclpy's setter takes this without a byte loop
    assert isinstance(kwargs['is_bigendian'], int)
    np.testing.assert_array_equal(image_to_array(SimpleNamespace(**kwargs), native=True), pixels)


@pytest.mark.parametrize(
    'wrap',
    [bytes, bytearray, memoryview, lambda b: array.array('B', b), lambda b: list(b)],
    ids=['bytes', 'bytearray', 'memoryview', 'array.array', 'list'],
)
def test_every_data_container_is_read(wrap) -> None:
    pixels = _pixels('bgr8')
    raw = pixels.tobytes()
    fields = ImageFields(5, 7, 'bgr8', False, 21, wrap(raw))
    np.testing.assert_array_equal(image_to_array(fields), pixels)


def test_from_msg_reads_any_image_like_object() -> None:
    msg = SimpleNamespace(
        height=1, width=2, encoding='mono8', is_bigendian=0, step=2, data=b'\x01\x02', extra=3
    )
    fields = ImageFields.from_msg(msg)
    assert fields.is_bigendian is False
    assert ImageFields.from_msg(fields) is fields
    assert 'data' not in repr(fields)  # a 1.9 MB frame must not flood a log line
    with pytest.raises(TypeError, match="no field 'is_bigendian'"):
        ImageFields.from_msg(SimpleNamespace(height=1, width=2, encoding='mono8'))


# --- zero-copy and row padding ---------------------------------------------------------------


@pytest.mark.parametrize(
    'wrap',
    [bytes, bytearray, lambda b: array.array('B', b), lambda b: np.frombuffer(b, np.uint8)],
    ids=['bytes', 'bytearray', 'array.array', 'ndarray'],
)
def test_unpadded_image_is_a_view_of_the_buffer(wrap) -> None:
    pixels = _pixels('bgra8', 60, 80)
    data = wrap(pixels.tobytes())
    result = image_to_array(ImageFields(60, 80, 'bgra8', False, 320, data))
    assert np.shares_memory(result, np.frombuffer(data, np.uint8))
    assert result.flags.c_contiguous
    np.testing.assert_array_equal(result, pixels)


@pytest.mark.parametrize('encoding', list(ENCODINGS))
def test_padded_rows_are_skipped_by_a_strided_view(encoding: str) -> None:
    pixels = _pixels(encoding, 6, 13)
    row_bytes = 13 * ENCODINGS[encoding].channels * ENCODINGS[encoding].itemsize
    step = -(-row_bytes // 64) * 64  # rounded up to 64 bytes, as aligned drivers do
    assert step > row_bytes
    msg = _padded_message(pixels, encoding, step)
    result = image_to_array(msg)
    np.testing.assert_array_equal(result, pixels)
    assert result.strides[0] == step
    assert np.shares_memory(result, np.frombuffer(msg.data, np.uint8))  # a view, not a copy


def test_data_longer_than_step_times_height_is_accepted_tail_ignored() -> None:
    pixels = _pixels('rgb8')
    data = pixels.tobytes() + b'\xff' * 50
    np.testing.assert_array_equal(image_to_array(ImageFields(5, 7, 'rgb8', 0, 21, data)), pixels)


def test_padded_bgra8_frame_converts_to_rgb() -> None:
    pixels = _pixels('bgra8', 8, 10)
    msg = _padded_message(pixels, 'bgra8', 64)
    np.testing.assert_array_equal(frame_to_rgb(msg), pixels[..., 2::-1])


# --- byte order ------------------------------------------------------------------------------


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('step', [14, 32])  # unpadded, padded
def test_16_bit_honours_the_big_endian_flag(encoding: str, bigendian: bool, step: int) -> None:
    pixels = _pixels(encoding, 4, 7)
    msg = _padded_message(pixels, encoding, step, bigendian=bigendian)
    view = image_to_array(msg)
    assert view.dtype.byteorder in ('>' if bigendian else '<', '=')  # '<' is '=' on x86
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(view, pixels)
    native = image_to_array(msg, native=True)
    assert native.dtype.isnative
    np.testing.assert_array_equal(native, pixels)


def test_8_bit_ignores_the_big_endian_flag() -> None:
    pixels = _pixels('bgr8')
    fields = ImageFields(5, 7, 'bgr8', True, 21, pixels.tobytes())
    np.testing.assert_array_equal(image_to_array(fields), pixels)


def test_publishing_a_big_endian_array_keeps_its_bytes_and_says_so() -> None:
    pixels = _pixels('mono16').astype('>u2')
    fields = array_to_image_fields(pixels, 'mono16')
    assert fields.is_bigendian is True
    assert np.shares_memory(fields.data, pixels)
    np.testing.assert_array_equal(image_to_array(fields), pixels)


# --- RGB model input and colour output -------------------------------------------------------


def test_bgra8_pixel_becomes_rgb() -> None:
    bgra = np.array([[[10, 20, 30, 40]]], np.uint8)  # B, G, R, A all distinct
    fields = array_to_image_fields(bgra, 'bgra8')
    rgb = frame_to_rgb(fields)
    assert rgb.shape == (1, 1, 3)
    assert rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [30, 20, 10]


@pytest.mark.parametrize('encoding', RGB_ENCODINGS)
def test_from_rgb_and_to_rgb_are_inverse(encoding: str) -> None:
    rgb = _pixels('rgb8', 4, 6)
    if encoding == 'mono8':
        rgb[...] = rgb[..., :1]  # gray survives the trip only if R == G == B
    out = from_rgb(rgb, encoding)
    np.testing.assert_array_equal(to_rgb(out, encoding), rgb)
    if encoding in ('bgra8', 'rgba8'):
        assert (out[..., 3] == 255).all()


def test_rgb8_input_is_passed_through_without_a_copy() -> None:
    pixels = _pixels('rgb8')
    assert to_rgb(pixels, 'rgb8') is pixels


def test_mono8_becomes_three_equal_channels() -> None:
    gray = _pixels('mono8')
    rgb = frame_to_rgb(array_to_image_fields(gray, 'mono8'))
    assert rgb.shape == (5, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_publish_buffer_padding_is_zero() -> None:
    pixels = _pixels('rgb8', 3, 5)
    fields = array_to_image_fields(pixels, 'rgb8', step=32)
    rows = np.asarray(fields.data).reshape(3, 32)
    assert (rows[:, 15:] == 0).all()
    np.testing.assert_array_equal(image_to_array(fields), pixels)


def test_publish_buffer_is_zero_copy_when_contiguous_and_copied_when_strided() -> None:
    pixels = _pixels('rgb8', 6, 8)
    assert np.shares_memory(array_to_image_fields(pixels, 'rgb8').data, pixels)
    strided = pixels[::2, ::2]
    fields = array_to_image_fields(strided, 'rgb8')
    assert fields.step == 4 * 3
    np.testing.assert_array_equal(image_to_array(fields), strided)


# --- bad frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('fields', 'kind', 'text'),
    [
        (
            _fields(encoding='yuv422'),
            'encoding',
            "encoding 'yuv422' is not supported as model input; publish one of bgra8, bgr8, "
            'rgba8, rgb8 or mono8, or add a conversion',
        ),
        (_fields(width=0), 'size', 'width is 0: an image needs at least one row and one column'),
        (_fields(height=0), 'size', 'height is 0'),
        (_fields(height=2.5), 'size', 'height must be an int, got 2.5'),
        (
            _fields(step=2400),
            'step',
            'step 2400 is less than width * bytes per pixel = 3200 (width 800, bgra8 has 4 '
            'bytes per pixel)',
        ),
        (
            _fields(data=bytes(1000)),
            'short_data',
            'data has 1000 bytes but step*height = 1920000 (step 3200, height 600): '
            'the message is truncated',
        ),
        (_fields(data=[0, 1, 300] * 4), 'data', 'values in 0..300; byte values must be in 0..255'),
        (_fields(data=[0.5] * 4), 'data', 'data holds float64 values'),
    ],
    ids=['encoding', 'width', 'height', 'height-type', 'step', 'short', 'range', 'float'],
)
def test_bad_frames_raise_one_error_kind_with_a_clear_message(
    fields: ImageFields, kind: str, text: str
) -> None:
    with pytest.raises(ImageFormatError) as info:
        frame_to_rgb(fields)
    assert info.value.kind == kind
    assert text in str(info.value)
    assert isinstance(info.value, ValueError)


def test_16_bit_step_must_hold_whole_values() -> None:
    fields = ImageFields(2, 3, 'mono16', False, 7, bytes(14))
    with pytest.raises(ImageFormatError, match='step 7 is not a multiple of 2') as info:
        image_to_array(fields)
    assert info.value.kind == 'step'


def test_16_bit_is_not_model_input() -> None:
    fields = array_to_image_fields(_pixels('mono16'), 'mono16')
    with pytest.raises(ImageFormatError, match="'mono16' is not supported as model input"):
        frame_to_rgb(fields)
    with pytest.raises(ImageFormatError, match="'yuv422' is not supported here; publish one of"):
        image_to_array(_fields(encoding='yuv422'))


@pytest.mark.parametrize(
    ('pixels', 'encoding', 'step', 'text'),
    [
        (np.zeros((4, 4), np.int64), 'mono8', None, 'mono8 needs a uint8 array, got int64'),
        (np.zeros((4, 4, 3), np.uint8), 'bgra8', None, 'needs an array of shape (H, W, 4)'),
        (np.zeros((4, 4, 3), np.uint8), 'rgb8', 10, 'step 10 must be at least'),
        (np.zeros((4, 4), np.uint16), 'mono16', 9, 'multiple of 2'),
        (np.zeros((0, 4), np.uint8), 'mono8', None, 'empty image'),
        (np.zeros((4, 4), np.uint8), 'jpeg', None, "'jpeg' is not supported for publishing"),
    ],
)
def test_bad_arrays_are_refused_for_publishing(pixels, encoding, step, text) -> None:
    with pytest.raises(ImageFormatError) as info:
        array_to_image_fields(pixels, encoding, step=step)
    assert info.value.kind == ('encoding' if encoding == 'jpeg' else 'step' if step else 'array')
    assert text in str(info.value)


def test_warn_once_per_kind_logs_first_of_each_kind_and_counts_all() -> None:
    logged: list[str] = []
    warn = WarnOncePerKind(logged.append, prefix='/carla/ego_vehicle/rgb_front/image: ')
    bad = [_fields(encoding='yuv422'), _fields(width=0), _fields(encoding='yuv422')]
    results = []
    for fields in bad * 2:
        try:
            frame_to_rgb(fields)
        except ImageFormatError as err:
            results.append(warn(err))
    assert results == [True, True, False, False, False, False]
    assert len(logged) == 2
    assert logged[0].startswith("/carla/ego_vehicle/rgb_front/image: encoding 'yuv422'")
    assert "further 'encoding' errors are counted, not logged" in logged[0]
    assert warn.counts == {'encoding': 4, 'size': 2}
    assert warn.total == 6


# --- agreement with rosbags (CDR) and rosbags-image (cv_bridge port) -------------------------


def _rosbags_typestore():
    pytest.importorskip('rosbags.typesys', reason='rosbags not installed (test extra)')
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _rosbags_image(typestore, fields: ImageFields):
    types = typestore.types
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=1, nanosec=2), frame_id='cam'
    )
    return types['sensor_msgs/msg/Image'](header=header, **fields.msg_kwargs())


@pytest.mark.parametrize('step', [None, 64], ids=['unpadded', 'padded'])
def test_rosbags_cdr_round_trip_is_read_in_place(step: int | None) -> None:
    typestore = _rosbags_typestore()
    pixels = _pixels('bgra8', 6, 9)
    msg = _rosbags_image(typestore, array_to_image_fields(pixels, 'bgra8', step=step))
    raw = typestore.serialize_cdr(msg, msg.__msgtype__)
    decoded = typestore.deserialize_cdr(raw, msg.__msgtype__)
    result = image_to_array(decoded)
    np.testing.assert_array_equal(result, pixels)
    assert np.shares_memory(result, decoded.data)


@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('encoding', list(ENCODINGS))
def test_agrees_with_rosbags_image_on_unpadded_images(encoding: str, bigendian: bool) -> None:
    typestore = _rosbags_typestore()
    pytest.importorskip('rosbags.image', reason='rosbags-image not installed (test extra)')
    from rosbags.image import message_to_cvimage

    pixels = _pixels(encoding, 6, 9)
    if bigendian and ENCODINGS[encoding].itemsize > 1:
        pixels = pixels.astype('>u2')
    fields = array_to_image_fields(pixels, encoding)
    assert fields.is_bigendian == (bigendian and ENCODINGS[encoding].itemsize > 1)
    fields = ImageFields(
        fields.height, fields.width, encoding, bigendian, fields.step, fields.data
    )  # 8-bit with the flag set: both must ignore it
    msg = _rosbags_image(typestore, fields)
    reference = message_to_cvimage(msg)
    ours = image_to_array(msg, native=True)
    assert ours.dtype == reference.dtype
    np.testing.assert_array_equal(ours, reference)
    if encoding in RGB_ENCODINGS:
        np.testing.assert_array_equal(frame_to_rgb(msg), message_to_cvimage(msg, 'rgb8'))
