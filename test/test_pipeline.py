"""The per-frame pipeline: prepare (crop, resize, normalize), argmax and restore_ids."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from semseg_ros.pipeline import (
    InputSpec,
    Normalization,
    logits_to_ids,
    prepare,
    resize_image,
    restore_ids,
)

NORM = Normalization(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ('frame_hw', 'input_size', 'crops'),
    [
        ((48, 64), (32, 24), (0, 0)),
        ((37, 53), (17, 11), (3, 5)),  # odd everything
        ((5, 7), (9, 13), (1, 1)),  # upscaling
        ((600, 800), (400, 216), (88, 80)),  # the Lyft frame without sky and hood
    ],
)
def test_prepare_shapes(frame_hw, input_size, crops):
    spec = InputSpec(input_size, *crops, normalization=NORM)
    out = prepare(frame(*frame_hw), spec)
    assert out.shape == (3, input_size[1], input_size[0])
    assert out.dtype == np.float32


def test_prepare_equals_crop_resize_normalize():
    rgb = frame(41, 60, seed=1)
    spec = InputSpec((30, 17), crop_top=4, crop_bottom=3, normalization=NORM)
    expected = NORM.apply(resize_image(rgb[4:-3], (30, 17)))
    np.testing.assert_array_equal(prepare(rgb, spec), expected)


def test_prepare_without_crop_or_resize_is_normalization_apply():
    rgb = frame(12, 16, seed=2)
    spec = InputSpec((16, 12), normalization=NORM)
    np.testing.assert_array_equal(prepare(rgb, spec), NORM.apply(rgb))


def test_prepare_fills_a_batch_row_in_place():
    spec = InputSpec((8, 6), normalization=NORM)
    batch = np.zeros((2, 3, 6, 8), np.float32)
    row = batch[1]  # a view: filling it fills the batch
    assert prepare(frame(12, 16), spec, out=row) is row
    np.testing.assert_array_equal(batch[1], prepare(frame(12, 16), spec))
    assert not batch[0].any()
    with pytest.raises(ValueError, match=r'\(3, 6, 8\) float32'):
        prepare(frame(12, 16), spec, out=np.zeros((3, 8, 6), np.float32))


@pytest.mark.parametrize(
    'bad', [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3))]
)
def test_prepare_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError, match='uint8 RGB'):
        prepare(bad, InputSpec((4, 4)))


def test_crop_that_removes_every_row_is_named():
    spec = InputSpec((4, 4), crop_top=6, crop_bottom=4)
    with pytest.raises(ValueError, match='removes all 10 rows'):
        prepare(frame(10, 8), spec)
    with pytest.raises(ValueError, match='removes all 10 rows'):
        restore_ids(np.zeros((4, 4), np.uint8), spec, (10, 8))


@pytest.mark.parametrize('crops', [(0, 0), (3, 0), (0, 5), (4, 7)])
def test_crop_round_trip_restores_rows_and_fills_the_rest(crops):
    top, bottom = crops
    height, width = 31, 23
    spec = InputSpec((width, height - top - bottom), top, bottom)
    ids = np.random.default_rng(3).integers(0, 13, (height - top - bottom, width), np.uint8)
    restored = restore_ids(ids, spec, (height, width, 3), fill_id=9)
    assert restored.shape == (height, width) and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored[top : height - bottom], ids)  # same size: no resize
    assert (restored[:top] == 9).all() and (restored[height - bottom :] == 9).all()


@pytest.mark.parametrize(
    ('small_hw', 'frame_hw'), [((11, 17), (37, 53)), ((24, 32), (48, 64)), ((50, 70), (13, 9))]
)
def test_restore_is_nearest_only(small_hw, frame_hw):
    # Ids 0, 5 and 200 side by side: linear or area filters would invent ids between them.
    rng = np.random.default_rng(4)
    ids = rng.choice(np.array([0, 5, 200], np.uint8), size=small_hw)
    spec = InputSpec((small_hw[1], small_hw[0]), crop_top=2, crop_bottom=1)
    restored = restore_ids(ids, spec, frame_hw, fill_id=0)
    assert restored.shape == frame_hw
    assert set(np.unique(restored).tolist()) <= {0, 5, 200}


def test_restore_of_an_upscaled_block_pattern_is_exact():
    # A 2x nearest upscale of a (2, 2) pattern is four solid quadrants.
    ids = np.array([[1, 2], [3, 4]], np.uint8)
    restored = restore_ids(ids, InputSpec((2, 2)), (4, 4))
    np.testing.assert_array_equal(restored, np.kron(ids, np.ones((2, 2), np.uint8)))


def test_restore_rejects_non_integer_ids_and_bad_fill():
    spec = InputSpec((4, 4))
    with pytest.raises(ValueError, match='integer ids'):
        restore_ids(np.zeros((4, 4), np.float32), spec, (8, 8))
    with pytest.raises(ValueError, match='fill_id'):
        restore_ids(np.zeros((4, 4), np.uint8), spec, (8, 8), fill_id=300)
    restored = restore_ids(np.full((4, 4), 7, np.int64), spec, (8, 8))
    assert restored.dtype == np.uint8 and (restored == 7).all()


def test_logits_to_ids_is_argmax_over_classes():
    logits = np.random.default_rng(5).normal(size=(2, 13, 5, 7)).astype(np.float32)
    ids = logits_to_ids(logits)
    assert ids.shape == (2, 5, 7) and ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, logits.argmax(axis=1))
    np.testing.assert_array_equal(logits_to_ids(logits[0]), ids[0])
    with pytest.raises(ValueError, match=r'\(N, C, h, w\)'):
        logits_to_ids(np.zeros((13, 5)))
    with pytest.raises(ValueError, match=r'1\.\.256'):
        logits_to_ids(np.zeros((1, 300, 2, 2)))


def test_input_spec_from_checkpoint_fields_and_dict_round_trip():
    spec = InputSpec.from_checkpoint_fields(
        [400, 216],
        {'merge_roadlines': True, 'hood_row': 496, 'crop_top': 88, 'crop_bottom': 80},
        NORM.to_dict(),
    )
    assert spec == InputSpec((400, 216), 88, 80, NORM)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert InputSpec.from_checkpoint_fields((8, 6), {}, NORM).crop_top == 0


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'input_size': (0, 4)}, 'input_size'),
        ({'input_size': (4,)}, 'input_size'),
        ({'input_size': (4, 4), 'crop_top': -1}, 'crop_top'),
        ({'input_size': (4, 4), 'crop_bottom': 1.5}, 'crop_bottom'),
        ({'input_size': (4, 4), 'normalization': {'mean': [0, 0, 0]}}, 'Normalization'),
    ],
)
def test_invalid_input_spec_is_rejected(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        InputSpec(**kwargs)


def test_pipeline_does_not_import_torch():
    code = 'import sys, semseg_ros.pipeline; assert "torch" not in sys.modules'
    subprocess.run([sys.executable, '-c', code], check=True)


# --- Normalization and image resize (formerly semseg_ros/preprocess.py) ---------------------


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
