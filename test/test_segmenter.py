"""The Segmenter: decode -> prepare -> engine -> argmax -> restore, end to end on a tiny model."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from test_export import CROP, INPUT_SIZE, export_tiny

from semseg_ros import segmenter as segmenter_module
from semseg_ros.labels import LYFT13
from semseg_ros.node.statistics import LatencyStats
from semseg_ros.pipeline import prepare, restore_ids
from semseg_ros.segmenter import Segmenter
from semseg_ros.visualize import overlay
from training.checkpoint import load_checkpoint

FRAME = (60, 100)  # (H, W) camera frames of the tests


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp('segmenter'))


@pytest.fixture(scope='module')
def segmenter(model):
    return Segmenter.from_model(model)  # the model path is all it needs


@pytest.fixture(scope='module')
def frames():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(3)]


def _reference_ids(model, rgb: np.ndarray) -> np.ndarray:
    """The same frame through the shared geometry and the PyTorch model."""
    checkpoint = load_checkpoint(model.with_suffix('.pt'))
    spec = Segmenter.from_model(model).input_spec
    x = torch.from_numpy(prepare(rgb, spec)[None])
    with torch.inference_mode():
        small = checkpoint.build_model()(x).argmax(1)[0].numpy().astype(np.uint8)
    return restore_ids(small, spec, rgb.shape)


def test_loads_everything_from_the_file(segmenter):
    assert segmenter.class_set is LYFT13
    assert segmenter.input_spec.input_size == INPUT_SIZE
    assert (segmenter.input_spec.crop_top, segmenter.input_spec.crop_bottom) == CROP
    assert segmenter.backend_name.split()[0] in ('openvino', 'onnxruntime')  # auto on a CPU
    assert segmenter.model_info.precision == 'fp32'


def test_end_to_end_matches_pytorch(segmenter, model, frames):
    for rgb in frames:
        result = segmenter.segment(rgb)
        assert result.ids.shape == FRAME and result.ids.dtype == np.uint8
        assert np.mean(result.ids == _reference_ids(model, rgb)) >= 0.999
        # Rows the model never sees are the background class.
        assert not result.ids[: CROP[0]].any() and not result.ids[FRAME[0] - CROP[1] :].any()
        assert min(result.timings.pre, result.timings.infer, result.timings.post) >= 0
        assert result.timings.total > 0


def test_camera_encodings(segmenter, frames):
    rgb = frames[0]
    expected = segmenter.segment(rgb).ids
    bgra = np.dstack([rgb[..., ::-1], np.full(FRAME, 255, np.uint8)])
    np.testing.assert_array_equal(segmenter.segment(bgra, encoding='bgra8').ids, expected)
    np.testing.assert_array_equal(
        segmenter.segment(np.ascontiguousarray(rgb[..., ::-1]), encoding='bgr8').ids, expected
    )


def test_wrong_channel_count_says_which_encoding(segmenter, frames):
    bgra = np.dstack([frames[0], frames[0][..., :1]])
    with pytest.raises(ValueError, match=r"this one has 4.*encoding='bgra8'"):
        segmenter.segment(bgra)
    with pytest.raises(ValueError, match='uint8'):
        segmenter.segment(frames[0].astype(np.float32))


def test_result_holds_ids_and_timings_and_pictures_come_from_one_colourer(segmenter, frames):
    result = segmenter.segment(frames[0])
    # No colour computed, no frame kept, no pointer back to the segmenter.
    assert [f.name for f in dataclasses.fields(result)] == ['ids', 'timings']
    color = segmenter.class_set.id_to_color(result.ids)  # the palette LUT
    np.testing.assert_array_equal(color, LYFT13.id_to_color(result.ids))
    blended = overlay(frames[0], color, 0.5)
    assert blended.shape == (*FRAME, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(frames[0], color, 0.0), frames[0])
    np.testing.assert_array_equal(overlay(frames[0], color, 1.0), color)


def test_rgb_frames_are_not_decoded_again(segmenter, frames, monkeypatch):
    expected = segmenter.segment(frames[0]).ids

    def no_second_decode(*_args, **_kwargs):
        raise AssertionError('an RGB frame was converted again')

    monkeypatch.setattr(segmenter_module, 'to_rgb', no_second_decode)
    np.testing.assert_array_equal(segmenter.segment(frames[0]).ids, expected)
    np.testing.assert_array_equal(segmenter.segment_batch(frames[:1])[0].ids, expected)


def test_batch_equals_single_frames(segmenter, frames):
    batched = segmenter.segment_batch(frames)
    for rgb, result in zip(frames, batched, strict=True):
        np.testing.assert_array_equal(result.ids, segmenter.segment(rgb).ids)


def test_threads_share_one_segmenter(segmenter, frames):
    expected = [segmenter.segment(f).ids for f in frames]
    errors: list[str] = []

    def worker() -> None:
        for _ in range(5):
            for rgb, ids in zip(frames, expected, strict=True):
                if not np.array_equal(segmenter.segment(rgb).ids, ids):
                    errors.append('mismatch')

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_torch_backend_through_the_segmenter(model, frames, segmenter):
    torch_segmenter = Segmenter.from_model(model, backend='torch', device='cpu')
    assert torch_segmenter.backend_name.startswith('torch')
    for rgb in frames:
        agree = np.mean(torch_segmenter.segment(rgb).ids == segmenter.segment(rgb).ids)
        assert agree >= 0.999


def test_missing_model_names_file_and_fix(tmp_path):
    from semseg_ros.model_file import ModelFileError

    with pytest.raises(ModelFileError, match=r'nope\.onnx does not exist.*semseg export'):
        Segmenter.from_model(tmp_path / 'nope.onnx')


def test_latency_stats():
    stats = LatencyStats(window=100)
    assert np.isnan(stats.percentile(50)) and np.isnan(stats.max)
    for i in range(200):
        stats.add(i / 1000)
    assert len(stats) == 100 and stats.count == 200
    assert stats.percentile(50) == pytest.approx(0.1495)
    assert stats.p99 == pytest.approx(0.19801) and stats.max == pytest.approx(0.199)
