"""The GPU path: the torch device frame path (same code on CPU and CUDA) and the gpu-check.

On the CPU the device frame path is compared with onnxruntime's ids (the CPU frame path);
tests marked ``gpu`` need CUDA and skip without it (``semseg gpu-check`` runs them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

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


def test_torch_compile_is_refused_on_cpu_and_with_cuda_graphs(model):
    checkpoint = model.with_suffix('.pt')
    with pytest.raises(ValueError, match=r"torch_compile \(mode='reduce-overhead'\) is for CUDA"):
        gpu_check.torch_segmenter(checkpoint, 'cpu', torch_compile=True)
    with pytest.raises(ValueError, match='choose one of torch_compile=True and cuda_graphs=True'):
        gpu_check.torch_segmenter(checkpoint, 'cpu', torch_compile=True, cuda_graphs=True)


def test_gpu_check_steps_run_on_cpu(model):
    checkpoint = model.with_suffix('.pt')
    result = gpu_check.agreement(checkpoint, model, 'cpu')
    assert result['reference'] == 'onnxruntime cpu'
    assert set(result['variants']) == {'fp32', 'channels_last'}
    assert gpu_check.threaded_call(checkpoint, 'cpu') == {'same_ids': True}


def test_benchmark_step_runs_on_cpu_and_reports_a_failing_variant(model, monkeypatch):
    """The benchmark's code, small and on the CPU: a bug here must not cost GPU time."""
    monkeypatch.setattr(gpu_check, 'BENCH_BATCHES', (1, 2))
    variants = {'fp32': {}, 'fp16': {'fp16': True}}  # FP16 is refused on the CPU
    checkpoint = model.with_suffix('.pt')
    result = gpu_check.benchmark(checkpoint, 'cpu', 0.01, variants, size=(80, 60))
    for batch in (1, 2):
        row = result['rows'][f'fp32 batch {batch}']
        for part in ('engine', 'segmenter'):
            assert row[part]['runs'] >= 10 and row[part]['p99_ms'] >= row[part]['p50_ms'] > 0
            assert row[part]['fps'] > 0
    assert 'fp16 is for CUDA' in result['rows']['fp16']['error']
    floor = result['memory_floor']
    assert floor['frame_traffic_mb'] > floor['weights_mb'] > 0 and floor['floor_fps'] > 0
    assert result.get('status') != 'failed'


def test_tensorrt_parse_step_skips_without_tensorrt(model):
    pytest.importorskip('onnx')
    try:
        import tensorrt  # noqa: F401

        pytest.skip('TensorRT is installed here: gpu-check parses with it')
    except ImportError:
        pass
    with pytest.raises(gpu_check.Skip, match='tensorrt does not import'):
        gpu_check.tensorrt_parse({'exported': model})


class _FakeParserError:
    """A ``trt.ParserError`` of TensorRT 10 (per-node fields) for the ids tail's Cast."""

    def desc(self) -> str:
        return 'Cast to UINT8 is not supported'

    def code(self) -> str:
        return 'ErrorCode.UNSUPPORTED_NODE'

    def node(self) -> int:
        return 41

    def node_name(self) -> str:
        return 'ids_cast'

    def node_operator(self) -> str:
        return 'Cast'


def _fake_tensorrt(parses: bool) -> SimpleNamespace:
    """Just enough of the tensorrt module for :func:`gpu_check.parse_onnx` (no GPU here)."""
    layer = SimpleNamespace(
        name='/Pad', type='LayerType.SLICE', get_output=lambda i: SimpleNamespace(dtype='FLOAT')
    )
    output = SimpleNamespace(name='logits', dtype='DataType.FLOAT', shape=(-1, 13, -1, -1))
    network = SimpleNamespace(
        num_outputs=1, get_output=lambda i: output, num_layers=1, get_layer=lambda i: layer
    )
    parser = SimpleNamespace(
        parse=lambda data: parses, num_errors=0 if parses else 1,
        get_error=lambda i: _FakeParserError(),
    )  # fmt: skip
    flags = SimpleNamespace(STRONGLY_TYPED=0)

    def logger(severity: int) -> None:
        return None

    logger.WARNING = 0
    return SimpleNamespace(
        __version__='10.9.0', Logger=logger,
        NetworkDefinitionCreationFlag=flags,
        Builder=lambda logger: SimpleNamespace(create_network=lambda flags: network),
        OnnxParser=lambda network, logger: parser,
    )  # fmt: skip


@pytest.mark.parametrize('parses', [True, False], ids=['parses', 'parser-errors'])
def test_tensorrt_parse_reports_errors_per_node_and_the_tail(model, parses):
    result = gpu_check.parse_onnx(_fake_tensorrt(parses), Path(model))
    (pad,) = result['onnx_pads']
    assert pad['pads_shape'] == [8] and 'ConstantOfShape' not in pad['computed_from']
    for mode in ('weakly_typed', 'strongly_typed'):
        assert result[mode]['parsed'] is parses
        if parses:
            assert result[mode]['errors'] == []
            assert result[mode]['outputs'][0]['name'] == 'logits'
            assert result[mode]['layers'][0]['name'] == '/Pad'
        else:
            (error,) = result[mode]['errors']
            assert error['node'] == 41 and error['node_name'] == 'ids_cast'
            assert error['operator'] == 'Cast' and 'UINT8' in error['desc']


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


@pytest.mark.gpu
@needs_cuda
def test_cuda_frame_path_with_torch_compile_matches_onnxruntime(model, frames):
    reference = Segmenter.from_model(model, backend='onnxruntime', device='cpu')
    expected = [reference.segment(f, encoding='bgra8').ids for f in frames]
    segmenter = gpu_check.torch_segmenter(
        model.with_suffix('.pt'), 'cuda', fp16=True, torch_compile=True
    )
    got = [segmenter.segment(f, encoding='bgra8').ids for f in frames]
    again = [segmenter.segment(f, encoding='bgra8').ids for f in frames]  # replays
    assert all(np.array_equal(a, b) for a, b in zip(got, again, strict=True))
    assert _agreement(got, expected) >= 0.99
