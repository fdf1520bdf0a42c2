"""Preprocessing: the normalization formula, channel order and buffers."""

from __future__ import annotations

import numpy as np
import pytest

from semseg_ros.preprocess import Normalization, resize_image


def test_normalization_matches_the_formula():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    norm = Normalization(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    expected = (rgb.astype(np.float64) / 255 - norm.mean) / norm.std  # (H, W, 3)
    out = norm.apply(rgb)
    assert out.shape == (3, 5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


def test_bgr_order_swaps_channels_before_normalizing():
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    out = Normalization(mean=(0, 0, 0), std=(1, 1, 1), channel_order='BGR').apply(rgb)
    np.testing.assert_allclose(out[:, 0, 0], [0, 0, 1])


def test_output_buffer_is_reused():
    rgb = np.full((4, 4, 3), 255, np.uint8)
    buffer = np.empty((3, 4, 4), np.float32)
    assert Normalization().apply(rgb, out=buffer) is buffer


def test_round_trip_through_dict():
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channel_order='BGR')
    assert Normalization.from_dict(norm.to_dict()) == norm


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'channel_order': 'RGBA'}, 'channel_order'),
        ({'std': (1.0, 0.0, 1.0)}, 'positive'),
        ({'mean': (0.5, 0.5)}, '3 values'),
    ],
)
def test_invalid_normalization_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Normalization(**kwargs)


def test_wrong_channel_count_names_the_shape():
    with pytest.raises(ValueError, match=r'\(4, 4, 4\)'):
        Normalization().apply(np.zeros((4, 4, 4), np.uint8))


def test_resize_image_returns_requested_size_and_skips_no_op():
    rgb = np.zeros((60, 80, 3), np.uint8)
    assert resize_image(rgb, (80, 60)) is rgb
    assert resize_image(rgb, (40, 30)).shape == (30, 40, 3)
    assert resize_image(rgb, (160, 120)).shape == (120, 160, 3)
