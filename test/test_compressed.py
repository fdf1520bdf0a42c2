"""sensor_msgs/CompressedImage decoding: image_transport's formats, corrupt data, bad formats."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from semseg_ros.compressed import CompressedFields, CompressedImageError, parse_format
from semseg_ros.imaging import ImageFormatError


def rgb_frame(seed: int = 0, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """(H, W, 3) uint8 RGB with smooth content (JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return cv2.resize(small, size[::-1], interpolation=cv2.INTER_LINEAR)


def encode(rgb: np.ndarray, ext: str, *, order: str = 'bgr') -> bytes:
    """What image_transport's compressed plugin sends: cv::imencode of bgr8 (or rgb8) pixels."""
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if order == 'bgr' else rgb
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize(
    ('text', 'codec', 'pixels'),
    [
        ('bgr8; jpeg compressed bgr8', 'jpeg', 'bgr8'),
        ('rgb8; jpeg compressed bgr8', 'jpeg', 'bgr8'),
        ('rgb8; png compressed bgr8', 'png', 'bgr8'),
        ('mono8; png compressed mono8', 'png', 'mono8'),
        ('rgb8; png compressed rgb8', 'png', 'rgb8'),
        ('jpeg', 'jpeg', 'bgr8'),
        ('PNG', 'png', 'bgr8'),
        ('bgra8; jpg', 'jpeg', 'bgr8'),
    ],
)
def test_image_transport_formats_parse(text, codec, pixels):
    assert parse_format(text) == (codec, pixels)


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        ('16UC1; compressedDepth png', "'16UC1; compressedDepth png' is not supported"),
        ('mono16; png compressed mono16', '8-bit bgr8/rgb8/mono8/bgra8/rgba8 pixels'),
        ('h264', "'h264' is not supported: the node decodes JPEG or PNG"),
        ('', "'' is not supported"),
        (None, 'None is not a string'),
    ],
)
def test_unknown_formats_name_the_value_and_the_fix(text, expected):
    with pytest.raises(CompressedImageError, match=r"e\.g\. 'bgr8; jpeg compressed bgr8'") as info:
        parse_format(text)
    assert expected in str(info.value) and info.value.kind == 'compressed_format'
    assert isinstance(info.value, ImageFormatError)  # adapters count it as bad input


@pytest.mark.parametrize(
    ('fmt', 'ext', 'order'),
    [
        ('bgr8; png compressed bgr8', '.png', 'bgr'),
        ('rgb8; png compressed bgr8', '.png', 'bgr'),
        ('png', '.png', 'bgr'),
        ('rgb8; png compressed rgb8', '.png', 'rgb'),
    ],
)
def test_png_decodes_to_the_exact_rgb_frame(fmt, ext, order):
    rgb = rgb_frame()
    data = array.array('B', encode(rgb, ext, order=order))  # what rclpy hands the callback
    np.testing.assert_array_equal(CompressedFields(fmt, data).to_rgb(), rgb)


def test_jpeg_and_mono_decode_close_to_the_frame():
    rgb = rgb_frame(1)
    decoded = CompressedFields('bgr8; jpeg compressed bgr8', encode(rgb, '.jpg')).to_rgb()
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - rgb).mean() < 4
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    _, data = cv2.imencode('.png', gray)
    mono = CompressedFields('mono8; png compressed mono8', data.reshape(-1)).to_rgb()
    np.testing.assert_array_equal(mono, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'empty'])
def test_corrupt_data_is_an_error_naming_the_size_and_format(damage):
    data = encode(rgb_frame(), '.jpg')
    data = {'truncated': data[: len(data) // 2], 'garbage': b'\x01' * 300, 'empty': b''}[damage]
    with pytest.raises(CompressedImageError) as info:
        CompressedFields('bgr8; jpeg compressed bgr8', data).to_rgb()
    assert info.value.kind == 'compressed_data'
    assert f'cannot decode {len(data)} bytes as jpeg' in str(info.value)
    assert "'bgr8; jpeg compressed bgr8'" in str(info.value)
    png = encode(rgb_frame(), '.png')
    with pytest.raises(CompressedImageError, match='as png'):
        CompressedFields('png', png[:40]).to_rgb()
