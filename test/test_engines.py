"""Every backend behind one interface gives PyTorch's class ids; choice and errors are clear.

Tolerance: logits within 1e-4 of PyTorch's, and the same class id on >= 99.9 % of pixels
(a pixel whose two best logits are closer than float rounding may flip).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_export import export_tiny

from semseg_ros.engines import BackendUnavailableError, available_backends, create_engine
from semseg_ros.engines.tensorrt_engine import tensorrt_available
from semseg_ros.labels import LYFT13

TRT_OK, TRT_WHY = tensorrt_available()
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=f'TensorRT backend absent: {TRT_WHY}')
ID_AGREEMENT = 0.999


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp('engines'))


@pytest.fixture(scope='module')
def batch():
    return np.random.default_rng(3).standard_normal((2, 3, 32, 64)).astype(np.float32)


@pytest.fixture(scope='module')
def reference(model, batch):
    engine = create_engine(model.with_suffix('.pt'), backend='torch', device='cpu')
    return engine.infer(batch).copy(), engine.infer_ids(batch)


def _backends() -> list[pytest.param]:
    return [
        pytest.param('onnxruntime', 'cpu', {}, id='onnxruntime-cpu'),
        pytest.param('torch', 'cpu', {'channels_last': True}, id='torch-cpu-channels_last'),
        pytest.param('tensorrt', 'cuda', {}, id='tensorrt', marks=needs_tensorrt),
    ]


@pytest.mark.parametrize(('backend', 'device', 'options'), _backends())
def test_backend_matches_pytorch(model, batch, reference, backend, device, options):
    logits_ref, ids_ref = reference
    with create_engine(model, backend=backend, device=device, **options) as engine:
        logits = engine.infer(batch)
        ids = engine.infer_ids(batch)
    assert logits.shape == (2, LYFT13.num_classes, 32, 64) and logits.dtype == np.float32
    assert ids.shape == (2, 32, 64) and ids.dtype == np.uint8
    tolerance = 5e-2 if backend == 'tensorrt' else 1e-4  # TensorRT builds FP16 kernels
    np.testing.assert_allclose(logits, logits_ref, atol=tolerance, rtol=tolerance)
    assert np.mean(ids == ids_ref) >= (0.99 if backend == 'tensorrt' else ID_AGREEMENT)


def test_onnxruntime_reuses_output_buffer_but_ids_are_fresh(model, batch):
    engine = create_engine(model, backend='onnxruntime', device='cpu')
    first = engine.infer_ids(batch)
    second = engine.infer_ids(batch[::-1].copy())
    assert first is not second and not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, second[::-1])


def test_onnxruntime_ids_from_the_graph_or_numpy_for_older_files(model, batch, tmp_path):
    import onnx

    engine = create_engine(model, backend='onnxruntime', device='cpu')
    assert engine.info.ids_output == 'ids'
    from_graph = engine.infer_ids(batch).copy()
    np.testing.assert_array_equal(from_graph, engine.infer(batch).argmax(1))
    # A file exported before the ids output existed: same ids, from numpy's argmax.
    proto = onnx.load(str(model))
    graph = proto.graph
    kept = [n for n in graph.node if n.name not in ('ids_argmax', 'ids_cast')]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[1:]
    kept_meta = [p for p in proto.metadata_props if p.key != 'weights_sha256']  # older too
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept_meta)
    older = tmp_path / 'older.onnx'
    onnx.save(proto, str(older))
    older_engine = create_engine(older, backend='onnxruntime', device='cpu')
    assert older_engine.info.ids_output is None
    np.testing.assert_array_equal(older_engine.infer_ids(batch), from_graph)


def test_auto_on_cpu_picks_onnxruntime_and_says_why(model):
    engine = create_engine(model, device='cpu')
    assert engine.backend == 'onnxruntime'
    assert 'onnxruntime' in engine.selection and 'fastest' in engine.selection


def test_auto_for_a_checkpoint_is_torch(model):
    engine = create_engine(model.with_suffix('.pt'))
    assert engine.backend == 'torch'
    assert engine.info.input_spec.input_size == (64, 32)


def test_wrong_channel_count_names_the_model(model):
    engine = create_engine(model, backend='onnxruntime', device='cpu')
    with pytest.raises(ValueError, match=r'tiny\.onnx takes \(N, 3, H, W\).*got shape \(1, 4'):
        engine.infer(np.zeros((1, 4, 32, 64), np.float32))
    with pytest.raises(ValueError, match='float32'):
        engine.infer(np.zeros((1, 3, 32, 64), np.float64))


def test_torch_fp16_on_cpu_is_rejected_with_fix(model):
    with pytest.raises(ValueError, match='fp16 is for CUDA'):
        create_engine(model, backend='torch', device='cpu', fp16=True)


def test_unknown_backend_and_device(model):
    with pytest.raises(ValueError, match='backend must be one of'):
        create_engine(model, backend='tflite')
    with pytest.raises(ValueError, match='device must be one of'):
        create_engine(model, device='tpu')


@pytest.mark.skipif(TRT_OK, reason='TensorRT is present: the unavailable path cannot happen')
def test_tensorrt_absent_is_a_clear_error(model):
    assert available_backends()['tensorrt']
    with pytest.raises(BackendUnavailableError, match='TensorRT is not installed'):
        create_engine(model, backend='tensorrt', device='cuda')


@needs_tensorrt
def test_tensorrt_engine_is_cached_and_reused(model):
    from semseg_ros.engines.tensorrt_engine import build_engine

    first = build_engine(model, log=lambda _: None)
    mtime = first.stat().st_mtime_ns
    assert build_engine(model, log=lambda _: None) == first
    assert first.stat().st_mtime_ns == mtime
    assert first.name.startswith('tiny.') and first.suffix == '.engine'


@needs_tensorrt
def test_engine_for_another_gpu_names_the_fix(model, tmp_path):
    import json

    from semseg_ros.engines.tensorrt_engine import TensorRTEngine, build_engine
    from semseg_ros.model_file import sidecar_path

    engine = build_engine(model, log=lambda _: None)
    side = json.loads(sidecar_path(engine).read_text())
    side['target']['gpu_name'] = 'Some Other GPU'
    sidecar_path(engine).write_text(json.dumps(side))
    try:
        with pytest.raises(Exception, match=r'was built for Some Other GPU.*--rebuild'):
            TensorRTEngine(engine)
    finally:
        engine.unlink()
        sidecar_path(engine).unlink()


# --- TensorRT logic without TensorRT: a stand-in for the library records what is called ----


class _FakeTensorRT:
    """Just enough of the tensorrt module for build_engine (records the calls it gets)."""

    def __init__(self, version: str) -> None:
        from types import SimpleNamespace

        self.__version__ = version
        self.calls: list[tuple] = []
        major = int(version.split('.')[0])
        flags = {'STRONGLY_TYPED': 1}
        self.NetworkDefinitionCreationFlag = SimpleNamespace(**flags)
        self.BuilderFlag = SimpleNamespace(**({'FP16': 'fp16-flag'} if major < 11 else {}))
        self.MemoryPoolType = SimpleNamespace(WORKSPACE='workspace')
        self.Logger = type('Logger', (), {'WARNING': 2, '__init__': lambda s, level: None})
        fake = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(('create_network', flags))
                return fake.network

            def create_builder_config(self):
                class Config:
                    def set_memory_pool_limit(self, pool, size):
                        fake.calls.append(('workspace', pool, size))

                    def set_flag(self, flag):
                        fake.calls.append(('set_flag', flag))

                    def add_optimization_profile(self, profile):
                        fake.calls.append(('profile', profile.shapes))

                return Config()

            def create_optimization_profile(self):
                class Profile:
                    def set_shape(self, name, *shapes):
                        self.shapes = (name, *shapes)

                return Profile()

            def build_serialized_network(self, network, config):
                return b'engine-bytes'

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse(self, data):
                fake.calls.append(('parse', len(data)))
                return True

        class Network:
            """What the parser makes of an exported model: the logits and ids outputs."""

            def __init__(self):
                self.outputs = [SimpleNamespace(name='logits'), SimpleNamespace(name='ids')]

            @property
            def num_outputs(self):
                return len(self.outputs)

            def get_output(self, index):
                return self.outputs[index]

            def unmark_output(self, tensor):
                fake.calls.append(('unmark_output', tensor.name))
                self.outputs.remove(tensor)

        self.network = Network()
        self.Builder, self.OnnxParser = Builder, OnnxParser


class _FakeCuda:
    class Device:
        def __init__(self, index):
            pass

        def name(self):
            return 'NVIDIA Test GPU'

        def compute_capability(self):
            return (8, 9)


@pytest.mark.parametrize('version', ['10.13.0', '11.0.0'])
def test_build_engine_api_use_and_cache(model, monkeypatch, version):
    from semseg_ros.engines import tensorrt_engine
    from semseg_ros.model_file import read_engine_sidecar

    trt = _FakeTensorRT(version)
    monkeypatch.setattr(tensorrt_engine, 'import_tensorrt', lambda: (trt, _FakeCuda))
    if version.startswith('11'):  # strongly typed: precision comes from the FP16 ONNX
        with pytest.raises(tensorrt_engine.EngineError, match=r'tiny\.fp16\.onnx is missing'):
            tensorrt_engine.build_engine(model, log=lambda _: None)
        from training.export import convert_fp16

        convert_fp16(model)
    path = tensorrt_engine.build_engine(model, workspace_gb=1, max_batch=4, log=lambda _: None)
    try:
        assert path.name.startswith(f'tiny.NVIDIA_Test_GPU-sm89-trt{version}-fp16-')
        assert path.read_bytes() == b'engine-bytes'
        info, target = read_engine_sidecar(path)
        assert target.compute_capability == (8, 9) and info.input_spec.input_size == (64, 32)
        calls = {c[0]: c[1:] for c in trt.calls}
        assert calls['workspace'] == ('workspace', 1 << 30)
        # The engine keeps the logits only (its run path binds one output).
        assert calls['unmark_output'] == ('ids',)
        assert [t.name for t in trt.network.outputs] == ['logits']
        assert calls['profile'] == (('image', (1, 3, 32, 64), (1, 3, 32, 64), (4, 3, 32, 64)),)
        if version.startswith('10'):  # weak typing with the (deprecated) FP16 flag
            assert calls['create_network'] == (0,) and calls['set_flag'] == ('fp16-flag',)
        else:  # strongly typed, no FP16 flag
            assert calls['create_network'] == (2,) and 'set_flag' not in calls
        trt.calls.clear()
        assert tensorrt_engine.build_engine(model, log=lambda _: None) == path  # cache hit
        assert not trt.calls
    finally:
        path.unlink()
        path.with_name(path.name + '.json').unlink()


def test_engine_for_another_gpu_or_tensorrt_is_a_clear_error(tmp_path):
    from semseg_ros.engines.tensorrt_engine import EngineError, _check_target
    from semseg_ros.model_file import EngineTarget

    trt = _FakeTensorRT('10.13.0')
    built_for = EngineTarget('NVIDIA A100', (8, 0), '10.3.0')
    engine = tmp_path / 'model.NVIDIA_A100-sm80-trt10.3.0-fp16-abcdef012345.engine'
    with pytest.raises(EngineError) as info:
        _check_target(trt, _FakeCuda, engine, built_for)
    message = str(info.value)
    assert 'built for NVIDIA A100 (sm 8.0) with TensorRT 10.3.0' in message
    assert 'NVIDIA Test GPU (sm 8.9) and TensorRT 10.13.0' in message
    assert f'semseg export --tensorrt --onnx {tmp_path / "model.onnx"} --rebuild' in message
    _check_target(trt, _FakeCuda, engine, EngineTarget('NVIDIA Test GPU', (8, 9), '10.13.0'))
