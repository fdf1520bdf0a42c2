"""Tests for training.augment: label ids preserved, geometry shared, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('torch', reason='the training half needs torch')

from semseg_ros.labels import LYFT13
from training.augment import augment_pair, sample_rng, scale_crop
from training.config import AugmentConfig


def scene(h: int = 48, w: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A label of blocks and thin lines in a few classes, and its palette image."""
    rng = np.random.default_rng(seed)
    label = np.full((h, w), 1, np.uint8)
    label[h // 2 :] = 7
    label[h // 2 :, w // 2 : w // 2 + 1] = 6  # a one-pixel road line
    y, x = rng.integers(0, h // 2), rng.integers(0, w - 10)
    label[y : y + 8, x : x + 10] = 10
    label[:, 3] = 5  # a pole
    return LYFT13.id_to_color(label), label


GEOMETRY_ONLY = AugmentConfig(
    brightness=0, contrast=0, saturation=0, hue=0, blur=0, noise=0, hflip=0.5
)


@pytest.mark.parametrize('scale', [(0.5, 0.9), (1.0, 1.0), (1.1, 2.0), (0.6, 1.6)])
@pytest.mark.parametrize('out_size', [(64, 48), (40, 30), (96, 72)])
def test_label_ids_are_a_subset_of_the_input(scale, out_size):
    rgb, label = scene()
    config = AugmentConfig(scale=list(scale))
    for index in range(20):
        out_rgb, out_label = augment_pair(rgb, label, sample_rng(0, 1, index), config, out_size)
        assert out_rgb.shape == (out_size[1], out_size[0], 3) and out_rgb.dtype == np.uint8
        assert out_label.shape == (out_size[1], out_size[0]) and out_label.dtype == np.uint8
        assert set(np.unique(out_label)) <= set(np.unique(label))


def test_image_and_label_move_together():
    # With photometric changes off and the palette image, the image must stay the
    # colourized label wherever nearest and linear resampling agree (away from edges).
    rgb, label = scene(96, 128)
    config = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, 'scale': [1.0, 1.0], 'hflip': 1.0})
    out_rgb, out_label = augment_pair(rgb, label, sample_rng(0, 0, 0), config)
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    np.testing.assert_array_equal(out_rgb, LYFT13.id_to_color(out_label))
    config.scale = [0.7, 1.6]
    for index in range(10):
        out_rgb, out_label = augment_pair(rgb, label, sample_rng(0, 0, index), config)
        agree = np.all(out_rgb == LYFT13.id_to_color(out_label), axis=-1).mean()
        assert agree > 0.85


def test_zoom_out_pads_by_reflection_not_with_new_ids():
    rgb, label = scene()
    out_rgb, out_label = scale_crop(rgb, label, sample_rng(3, 0, 0), (0.5, 0.5), (64, 48))
    assert out_label.shape == (48, 64) and out_rgb.shape == (48, 64, 3)
    assert set(np.unique(out_label)) <= set(np.unique(label))


def test_deterministic_per_seed_epoch_index():
    rgb, label = scene()
    config = AugmentConfig(blur=0.5, noise=0.5)
    a = augment_pair(rgb, label, sample_rng(7, 2, 5), config)
    b = augment_pair(rgb, label, sample_rng(7, 2, 5), config)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [augment_pair(rgb, label, sample_rng(*k), config) for k in [(8, 2, 5), (7, 3, 5)]]
    assert all(not np.array_equal(a[0], o[0]) for o in others)


def test_inputs_are_not_modified():
    rgb, label = scene()
    rgb_copy, label_copy = rgb.copy(), label.copy()
    augment_pair(rgb, label, sample_rng(0, 0, 0), AugmentConfig(hflip=1.0, noise=1.0, blur=1.0))
    np.testing.assert_array_equal(rgb, rgb_copy)
    np.testing.assert_array_equal(label, label_copy)


def test_photometric_changes_leave_the_label_alone():
    rgb, label = scene()
    config = AugmentConfig(scale=[1.0, 1.0], hflip=0.0, hue=0.2, brightness=0.5, noise=1.0)
    out_rgb, out_label = augment_pair(rgb, label, sample_rng(1, 0, 0), config)
    np.testing.assert_array_equal(out_label, label)
    assert not np.array_equal(out_rgb, rgb)


def test_disabled_only_crops_at_full_resolution():
    rgb, label = scene()
    config = AugmentConfig(enabled=False)
    same = augment_pair(rgb, label, sample_rng(0, 0, 0), config)
    np.testing.assert_array_equal(same[0], rgb)
    np.testing.assert_array_equal(same[1], label)
    out_rgb, out_label = augment_pair(rgb, label, sample_rng(0, 0, 0), config, (32, 24))
    windows = [
        (y, x)
        for y in range(48 - 24 + 1)
        for x in range(64 - 32 + 1)
        if np.array_equal(label[y : y + 24, x : x + 32], out_label)
        and np.array_equal(rgb[y : y + 24, x : x + 32], out_rgb)
    ]
    assert windows  # a window of the input, not a resized copy


def test_training_crop_keeps_pixel_scale():
    # scale 1 with a smaller output is a plain crop: a 1-pixel line stays 1 pixel wide.
    rgb, label = scene(96, 128)
    config = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, 'scale': [1.0, 1.0], 'hflip': 0.0})
    for index in range(5):
        _, out_label = augment_pair(rgb, label, sample_rng(0, 0, index), config, (64, 48))
        widths = (out_label == 6).sum(axis=1)
        assert set(widths[widths > 0].tolist()) <= {1}


def test_mismatched_pair_is_rejected():
    rgb, label = scene()
    with pytest.raises(ValueError, match='differ'):
        augment_pair(rgb, label[:-1], sample_rng(0, 0, 0), AugmentConfig())
