"""Every backend behind one interface gives PyTorch's class ids; choice and errors are clear.

Tolerance: logits within 1e-4 of PyTorch's, and the same class id on >= 99.9 % of pixels
(a pixel whose two best logits are closer than float rounding may flip).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_export import export_tiny

from semseg_ros.engines import (
    BackendUnavailableError,
    EngineError,
    available_backends,
    create_engine,
)
from semseg_ros.engines.onnxruntime_engine import CPU, CUDA, TENSORRT
from semseg_ros.engines.tensorrt_engine import tensorrt_available
from semseg_ros.labels import LYFT13
from semseg_ros.model_file import read_model_info

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


def test_auto_on_cpu_picks_openvino_else_onnxruntime_and_says_why(model, tmp_path):
    from semseg_ros.engines.openvino_engine import openvino_available

    engine = create_engine(model, device='cpu', cache_dir=tmp_path)
    expected = 'openvino' if openvino_available()[0] else 'onnxruntime'
    assert engine.backend == expected  # test/test_openvino.py: the OpenVINO choices
    assert 'device=cpu' in engine.selection and expected in engine.selection.lower()


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
            """What the parser makes of an exported model: logits, ids and confidence."""

            def __init__(self):
                self.outputs = [
                    SimpleNamespace(name=name) for name in ('logits', 'ids', 'confidence')
                ]

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
    """Just enough of pycuda.driver: GPUs by index, primary contexts, buffers, a stream.

    Device memory is numpy bytes keyed by the address TensorRT is given; every context push,
    pop and release and every free is recorded in ``calls``.
    """

    def __init__(self, names=('NVIDIA Test GPU', 'NVIDIA Other GPU')):
        fake = self
        self.calls: list[tuple] = []
        self.memory: dict[int, np.ndarray] = {}

        class Context:
            def __init__(self, index):
                self.index = index

            def push(self):
                fake.calls.append(('push', self.index))

            def pop(self):
                fake.calls.append(('pop', self.index))

            def detach(self):
                fake.calls.append(('detach', self.index))

        class Device:
            def __init__(self, index):
                self.index = index

            @staticmethod
            def count():
                return len(names)

            def name(self):
                return names[self.index]

            def compute_capability(self):
                return (8, 9)

            def retain_primary_context(self):
                fake.calls.append(('retain', self.index))
                return Context(self.index)

        class Allocation:
            def __init__(self, nbytes):
                self.data = np.zeros(nbytes, np.uint8)
                fake.memory[id(self)] = self.data

            def __int__(self):
                return id(self)

            def free(self):
                fake.calls.append(('free device', self.data.nbytes))
                del fake.memory[id(self)]

        class HostAllocation:
            def free(self):
                fake.calls.append(('free host',))

        class Stream:
            handle = 7

            def synchronize(self):
                pass

        def pagelocked_empty(shape, dtype):
            array = np.empty(shape, dtype).view(_HostArray)
            array.base_allocation = HostAllocation()
            return array

        self.Device, self.Stream, self.pagelocked_empty = Device, Stream, pagelocked_empty
        self.mem_alloc = Allocation

    def memcpy_htod_async(self, dev, host, stream):
        self.memory[int(dev)][:] = np.frombuffer(host.tobytes(), np.uint8)

    def memcpy_dtoh_async(self, host, dev, stream):
        host[...] = np.frombuffer(self.memory[int(dev)].tobytes(), host.dtype).reshape(host.shape)


class _HostArray(np.ndarray):
    """A page-locked array stand-in: pycuda's array ``base`` is its HostAllocation."""

    @property
    def base(self):
        return getattr(self, 'base_allocation', None)


def fake_logits(x: np.ndarray, classes: int) -> np.ndarray:
    """What the fake engine computes. Shape: (N, 3, h, w) -> (N, classes, h, w)."""
    return np.stack([x[:, c % 3] * (c + 1) - c for c in range(classes)], axis=1)


def _add_runtime(trt: _FakeTensorRT, cuda: _FakeCuda, *, classes: int, max_batch: int) -> None:
    """The run half of the fake tensorrt: a runtime whose engine computes fake_logits."""
    from types import SimpleNamespace

    trt.TensorIOMode = SimpleNamespace(INPUT='in', OUTPUT='out')
    trt.nptype = lambda dtype: np.float32

    class Context:
        def __init__(self):
            self.shape = None
            self.address = {}

        def set_input_shape(self, name, shape):
            trt.calls.append(('set_input_shape', tuple(shape)))
            if shape[0] > max_batch:
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n, _, h, w = self.shape
            return (n, classes, h, w)

        def set_tensor_address(self, name, address):
            self.address[name] = address

        def execute_async_v3(self, stream_handle):
            x = np.frombuffer(cuda.memory[self.address['image']].tobytes(), np.float32)
            out = fake_logits(x.reshape(self.shape), classes).astype(np.float32)
            cuda.memory[self.address['logits']][:] = np.frombuffer(out.tobytes(), np.uint8)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, index):
            return ('image', 'logits')[index]

        def get_tensor_mode(self, name):
            return 'in' if name == 'image' else 'out'

        def get_tensor_dtype(self, name):
            return 'float'

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, 32, 64), (1, 3, 32, 64), (max_batch, 3, 32, 64)]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b'engine-bytes' else None

    trt.Runtime = Runtime


def _fake_tensorrt(monkeypatch, version='10.13.0', *, max_batch=8):
    from semseg_ros.engines import tensorrt_engine

    trt, cuda = _FakeTensorRT(version), _FakeCuda()
    _add_runtime(trt, cuda, classes=LYFT13.num_classes, max_batch=max_batch)
    monkeypatch.setattr(tensorrt_engine, 'import_tensorrt', lambda: (trt, cuda))
    return trt, cuda


def _remove_engines(folder) -> None:
    for path in folder.glob('*.engine*'):
        path.unlink()


@pytest.mark.parametrize('version', ['10.13.0', '11.0.0'])
def test_build_engine_api_use_and_cache(model, monkeypatch, version):
    from semseg_ros.engines import tensorrt_engine
    from semseg_ros.model_file import file_sha256, read_engine_sidecar

    trt, cuda = _fake_tensorrt(monkeypatch, version)
    fp16_copy = model.with_name('tiny.fp16.onnx')
    fp16_copy.unlink(missing_ok=True)
    logs: list[str] = []
    path = tensorrt_engine.build_engine(model, workspace_gb=1, max_batch=4, log=logs.append)
    try:
        # The cache name holds the profile and the hash of the file parsed.
        parsed = fp16_copy if version.startswith('11') else model
        tag = f'tiny.NVIDIA_Test_GPU-sm89-trt{version}-fp16-b4-64x32-{file_sha256(parsed)[:12]}'
        assert path.name == tag + '.engine'
        assert path.read_bytes() == b'engine-bytes'
        info, target = read_engine_sidecar(path)
        assert target.compute_capability == (8, 9) and info.input_spec.input_size == (64, 32)
        assert target.precision == 'fp16' and info.precision == 'fp16'
        calls = {c[0]: c[1:] for c in trt.calls}
        assert calls['workspace'] == ('workspace', 1 << 30)
        # The engine keeps the logits only (its run path binds one output).
        unmarked = sorted(c[1] for c in trt.calls if c[0] == 'unmark_output')
        assert unmarked == ['confidence', 'ids']
        assert [t.name for t in trt.network.outputs] == ['logits']
        assert calls['profile'] == (('image', (1, 3, 32, 64), (1, 3, 32, 64), (4, 3, 32, 64)),)
        if version.startswith('10'):  # weak typing with the (deprecated) FP16 flag
            assert calls['create_network'] == (0,) and calls['set_flag'] == ('fp16-flag',)
            assert not fp16_copy.exists()
        else:  # strongly typed, no FP16 flag: the FP16 copy was made on the fly and parsed
            assert calls['create_network'] == (2,) and 'set_flag' not in calls
            assert read_model_info(fp16_copy).precision == 'fp16'
            assert any('wrote the FP16 copy' in line for line in logs)
        # Built with GPU 0's primary context current, released after.
        assert cuda.calls == [('retain', 0), ('push', 0), ('pop', 0), ('detach', 0)]
        trt.calls.clear()
        assert tensorrt_engine.build_engine(model, max_batch=4, log=lambda _: None) == path
        assert not trt.calls  # cache hit
        # Another profile is another engine.
        other = tensorrt_engine.build_engine(model, max_batch=2, log=lambda _: None)
        assert other != path and '-b2-64x32-' in other.name
    finally:
        _remove_engines(model.parent)
        fp16_copy.unlink(missing_ok=True)


def test_tensorrt11_without_an_fp16_copy_builds_fp32_and_says_so(model, monkeypatch):
    from semseg_ros.engines import tensorrt_engine
    from semseg_ros.model_file import read_engine_sidecar

    trt, _ = _fake_tensorrt(monkeypatch, '11.4.0')

    def no_onnx(onnx_path, out):
        raise ImportError("No module named 'onnx'")

    monkeypatch.setattr(tensorrt_engine, 'write_fp16_copy', no_onnx)
    logs: list[str] = []
    path = tensorrt_engine.build_engine(model, log=logs.append)
    try:
        assert '-fp32-b8-64x32-' in path.name
        assert read_engine_sidecar(path)[1].precision == 'fp32'
        assert any('building an FP32 engine' in line and 'No module' in line for line in logs)
        assert ('create_network', 2) in trt.calls  # strongly typed, from the FP32 ONNX
    finally:
        _remove_engines(model.parent)


def test_cache_hit_needs_the_sidecar_and_the_sidecar_comes_first(model, monkeypatch):
    from semseg_ros.engines import tensorrt_engine
    from semseg_ros.model_file import sidecar_path

    trt, _ = _fake_tensorrt(monkeypatch)
    order: list[str] = []
    real_write = tensorrt_engine.atomic_write_bytes
    monkeypatch.setattr(
        tensorrt_engine, 'atomic_write_bytes',
        lambda p, d: (order.append(p.suffix), real_write(p, d)),
    )  # fmt: skip
    real_sidecar = tensorrt_engine.write_engine_sidecar

    def sidecar(*args, **kwargs):
        order.append('sidecar')
        return real_sidecar(*args, **kwargs)

    monkeypatch.setattr(tensorrt_engine, 'write_engine_sidecar', sidecar)
    path = tensorrt_engine.build_engine(model, log=lambda _: None)
    try:
        assert order == ['sidecar', '.engine']
        assert not list(model.parent.glob('*.tmp'))
        sidecar_path(path).unlink()  # e.g. a build killed between the two files (old order)
        trt.calls.clear()
        assert tensorrt_engine.build_engine(model, log=lambda _: None) == path
        assert trt.calls and sidecar_path(path).is_file()  # rebuilt, not a half cache hit
    finally:
        _remove_engines(model.parent)


def test_tensorrt_run_path_batches_beyond_the_profile_and_device_n(model, batch, monkeypatch):
    from semseg_ros.engines import tensorrt_engine

    trt, cuda = _fake_tensorrt(monkeypatch, max_batch=2)
    try:
        path = tensorrt_engine.build_engine(model, max_batch=2, log=lambda _: None)
        cuda.calls.clear()
        engine = create_engine(path, backend='tensorrt', device='cuda:0')
        five = np.concatenate([batch, batch, batch[:1]])  # (5, 3, 32, 64): chunks 2, 2, 1
        logits = engine.infer(five)
        np.testing.assert_allclose(logits, fake_logits(five, LYFT13.num_classes), rtol=1e-6)
        np.testing.assert_array_equal(engine.infer_ids(five), logits.argmax(1))
        shapes = [c[1][0] for c in trt.calls if c[0] == 'set_input_shape']
        assert max(shapes) == 2 and engine.max_batch == 2
        # Every call ran with GPU 0's context current, pushed and popped in pairs.
        pushes = [c for c in cuda.calls if c[0] in ('push', 'pop')]
        assert pushes and all(c[1] == 0 for c in pushes)
        assert len(pushes) % 2 == 0
        cuda.calls.clear()
        engine.close()
        # close() frees the device and the page-locked host buffers and releases the context.
        kinds = [c[0] for c in cuda.calls]
        assert kinds.count('free device') == 2 and kinds.count('free host') == 2
        assert kinds[-1] == 'detach' and not cuda.memory
        engine.close()  # twice is harmless
        with pytest.raises(EngineError, match='closed'):
            engine.infer(batch)
        # GPU 1 is another model here: the engine built on GPU 0 is refused for it, by name.
        with pytest.raises(EngineError, match=r'built for NVIDIA Test GPU.*GPU 1 here is NVI'):
            create_engine(path, backend='tensorrt', device='cuda:1')
        with pytest.raises(BackendUnavailableError, match='GPU 5 asked for, CUDA sees 2'):
            create_engine(path, backend='tensorrt', device='cuda:5')
    finally:
        _remove_engines(model.parent)


def test_tensorrt_build_makes_device_n_current(model, monkeypatch):
    from semseg_ros.engines import tensorrt_engine

    _, cuda = _fake_tensorrt(monkeypatch)
    try:
        path = tensorrt_engine.build_engine(model, device_index=1, log=lambda _: None)
        assert 'NVIDIA_Other_GPU' in path.name
        assert cuda.calls == [('retain', 1), ('push', 1), ('pop', 1), ('detach', 1)]
    finally:
        _remove_engines(model.parent)


def test_auto_falls_back_when_tensorrt_fails(model, monkeypatch):
    from semseg_ros.engines import tensorrt_engine

    def failing_build(*args, **kwargs):
        raise EngineError('TensorRT cannot parse tiny.onnx: Pad with dynamic pads')

    monkeypatch.setattr(tensorrt_engine, 'tensorrt_available', lambda: (True, ''))
    monkeypatch.setattr(tensorrt_engine, 'engine_for', failing_build)
    engine = create_engine(model)  # auto: TensorRT chosen first, fails, the CPU choice runs
    assert engine.backend in ('openvino', 'onnxruntime')
    assert 'TensorRT failed' in engine.selection and 'dynamic pads' in engine.selection
    with pytest.raises(EngineError, match='dynamic pads'):  # asked for by name: no fallback
        create_engine(model, backend='tensorrt', device='cuda')


@pytest.mark.filterwarnings('ignore:Specified provider:UserWarning')
def test_onnxruntime_cpu_fallback_of_a_gpu_provider_is_not_silent(model, batch, monkeypatch):
    from semseg_ros.engines import onnxruntime_engine

    # This onnxruntime has no CUDA provider: asking for it is what a GPU provider that
    # fails to load looks like (onnxruntime warns and runs the CPU provider).
    monkeypatch.setattr(onnxruntime_engine, 'available_providers', lambda: [CUDA, CPU])
    with pytest.raises(BackendUnavailableError, match=r'fell back to the CPU.*onnxruntime-gpu'):
        create_engine(model, backend='onnxruntime', device='cuda:1')
    engine = create_engine(model, backend='onnxruntime', device='auto')
    assert 'fell back to the CPU' in engine.selection and 'failed' in engine.device
    assert engine.infer_ids(batch).shape == (2, 32, 64)  # auto still runs


def test_onnxruntime_gets_the_device_index():
    from semseg_ros.engines import onnxruntime_engine

    info = SimpleNamespace(precision='fp32', path=Path('m.onnx'))
    real = onnxruntime_engine.available_providers
    try:
        onnxruntime_engine.available_providers = lambda: [TENSORRT, CUDA, CPU]
        providers = onnxruntime_engine.choose_providers('cuda:3', info)
    finally:
        onnxruntime_engine.available_providers = real
    assert providers[0][1]['device_id'] == 3 and providers[1] == (CUDA, {'device_id': 3})
    assert providers[-1] == CPU


def test_gpu_extra_does_not_install_onnxruntime_gpu_over_onnxruntime():
    import ast

    setup = Path(__file__).resolve().parents[1] / 'setup.py'
    tree = ast.parse(setup.read_text())
    lists = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        if node.targets[0].id in ('RUNTIME', 'GPU')
    }
    names = {re.split(r'[<>=\[]', spec)[0] for spec in lists['RUNTIME'] + lists['GPU']}
    assert 'onnxruntime' in names and 'onnxruntime-gpu' not in names


def test_engine_for_another_gpu_or_tensorrt_is_a_clear_error(tmp_path):
    from semseg_ros.engines.tensorrt_engine import _check_target
    from semseg_ros.model_file import EngineTarget

    trt, cuda = _FakeTensorRT('10.13.0'), _FakeCuda()
    built_for = EngineTarget('NVIDIA A100', (8, 0), '10.3.0')
    engine = tmp_path / 'model.NVIDIA_A100-sm80-trt10.3.0-fp16-abcdef012345.engine'
    with pytest.raises(EngineError) as info:
        _check_target(trt, cuda, engine, built_for)
    message = str(info.value)
    assert 'built for NVIDIA A100 (sm 8.0) with TensorRT 10.3.0' in message
    assert 'GPU 0 here is NVIDIA Test GPU (sm 8.9) and TensorRT 10.13.0' in message
    assert f'semseg export --tensorrt --onnx {tmp_path / "model.onnx"} --rebuild' in message
    _check_target(trt, cuda, engine, EngineTarget('NVIDIA Test GPU', (8, 9), '10.13.0'))
    with pytest.raises(EngineError, match='GPU 1 here is NVIDIA Other GPU'):
        _check_target(trt, cuda, engine, EngineTarget('NVIDIA Test GPU', (8, 9), '10.13.0'), 1)
