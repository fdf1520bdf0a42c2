"""The GPU path: the torch device frame path (same code on CPU and CUDA) and the gpu-check.

On the CPU the device frame path is compared with onnxruntime's ids (the CPU frame path);
tests marked ``gpu`` need CUDA and skip without it (``semseg gpu-check`` runs them).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from test_export import export_tiny

from semseg_ros import gpu_check
from semseg_ros.cli import COMMANDS
from semseg_ros.segmenter import Segmenter

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU (torch sees none here)')
ID_AGREEMENT = 0.999


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp('gpu_path'))


@pytest.fixture(scope='module')
def frames():
    rng = np.random.default_rng(0)
    # Smooth frames (a tiny random model flips ids on pixel noise, not on scenes).
    small = rng.integers(0, 256, (3, 12, 16, 4), np.uint8)
    return [np.kron(f, np.ones((5, 5, 1), np.uint8)) for f in small]  # (60, 80, 4) bgra8


def _agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)]))


def test_device_frame_path_on_cpu_matches_onnxruntime(model, frames):
    reference = Segmenter.from_model(model, backend='onnxruntime', device='cpu')
    expected = [reference.segment(f, encoding='bgra8').ids for f in frames]
    segmenter = Segmenter.from_model(
        model.with_suffix('.pt'), backend='torch', device='cpu', frames_on_device=True
    )
    assert segmenter.engine.frames_on_device
    got = [segmenter.segment(f, encoding='bgra8').ids for f in frames]
    assert all(g.shape == (60, 80) and g.dtype == np.uint8 for g in got)
    spec = segmenter.input_spec  # the cropped rows are background, as on the CPU path
    assert all((g[: spec.crop_top] == 0).all() for g in got)
    assert _agreement(got, expected) >= ID_AGREEMENT
    batch = segmenter.segment_batch(frames, encoding='bgra8')
    np.testing.assert_array_equal(np.stack([r.ids for r in batch]), np.stack(got))


def test_device_frame_path_is_off_by_default_on_cpu(model):
    segmenter = Segmenter.from_model(model.with_suffix('.pt'), backend='torch', device='cpu')
    assert not segmenter.engine.frames_on_device  # the CPU keeps the numpy/OpenCV path
    with pytest.raises(ValueError, match='cuda_graphs is for CUDA'):
        Segmenter.from_model(model.with_suffix('.pt'), backend='torch', cuda_graphs=True,
                             device='cpu')  # fmt: skip


def test_gpu_check_steps_run_on_cpu(model):
    checkpoint = model.with_suffix('.pt')
    result = gpu_check.agreement(checkpoint, model, 'cpu')
    assert result['reference'] == 'onnxruntime cpu'
    assert set(result['variants']) == {'fp32', 'channels_last'}
    assert gpu_check.threaded_call(checkpoint, 'cpu') == {'same_ids': True}


def test_gpu_check_without_a_gpu_says_so_and_exits_at_once(tmp_path, monkeypatch):
    if CUDA:
        pytest.skip('a GPU is here: the no-GPU exit cannot happen')
    assert COMMANDS['gpu-check'].target == 'semseg_ros.gpu_check:main'
    start = time.perf_counter()
    assert gpu_check.main(['--out', str(tmp_path)]) == gpu_check.NO_GPU_EXIT
    assert time.perf_counter() - start < 30
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert report['result'] == 'no-gpu'
    assert list(report['steps']) == ['inventory']
    inventory = report['steps']['inventory']
    assert inventory['cuda']['available'] is False and inventory['packages']['numpy']
    assert 'missing' in inventory['packages']['tensorrt']
    assert 'no CUDA GPU here' in (tmp_path / 'gpu_check.log').read_text()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    'options',
    [{}, {'fp16': True}, {'channels_last': True}, {'fp16': True, 'cuda_graphs': True}],
    ids=['fp32', 'fp16', 'channels_last', 'fp16-graphs'],
)
def test_cuda_frame_path_matches_onnxruntime(model, frames, options):
    reference = Segmenter.from_model(model, backend='onnxruntime', device='cpu')
    expected = [reference.segment(f, encoding='bgra8').ids for f in frames]
    segmenter = Segmenter.from_model(
        model.with_suffix('.pt'), backend='torch', device='cuda', **options
    )
    assert segmenter.engine.frames_on_device  # the default on CUDA
    got = [segmenter.segment(f, encoding='bgra8').ids for f in frames]
    assert _agreement(got, expected) >= (ID_AGREEMENT if not options.get('fp16') else 0.99)
