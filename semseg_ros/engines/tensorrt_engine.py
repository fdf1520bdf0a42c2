"""TensorRT backend (TensorRT 10 / 11 Python API, pycuda buffers and stream).

Build (:func:`build_engine`): parse the ONNX, one optimization profile over batch
1..``max_batch`` (8 by default: ``semseg evaluate --batch-size`` and the tests send batches;
a larger batch runs in chunks) and the model's input size, a workspace limit, on the GPU
asked for (its primary context current during the build), FP16 where the version allows it:

* TensorRT 10: the FP32 ONNX with ``BuilderFlag.FP16`` (weak typing; deprecated but the
  way 10.x picks FP16 kernels on its own);
* TensorRT 11: weak typing is gone, networks are strongly typed and take their precision
  from the ONNX itself, so the FP16 variant ``MODEL.fp16.onnx`` is parsed; when it is
  missing (the shipped models are FP32 + INT8) it is written on the fly next to the ONNX
  (``onnx`` + onnxruntime's converter), and where that cannot be done an FP32 engine is
  built and the log says why.

The serialized engine is cached next to the ONNX under a name holding the GPU, its compute
capability, the TensorRT version, the precision, the profile and the hash of the file parsed
(:func:`semseg_ros.model_file.engine_cache_path`), with a ``.json`` sidecar of the model
metadata written first (atomically), the engine last; a cache hit needs both. Loading an
engine file made for another GPU or TensorRT version fails with a message saying how to
rebuild.

Run (:class:`TensorRTEngine`): I/O tensors by name (``get_tensor_name`` /
``get_tensor_mode``), ``set_input_shape`` + ``set_tensor_address`` and
``execute_async_v3`` on a pycuda stream, page-locked host buffers reused per shape. The
CUDA context is the chosen device's primary context, pushed around every call under the
engine's lock, so callbacks arriving on other threads (ROS executors) can run it.
``close()`` frees the device and host buffers, drops the stream and releases the context.

``tensorrt`` and ``pycuda`` are imported lazily; without them :class:`BackendUnavailableError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.engines.base import BackendUnavailableError, Engine, EngineError
from semseg_ros.model_file import (
    CONFIDENCE_OUTPUT_NAME,
    ENGINE_SUFFIX,
    IDS_OUTPUT_NAME,
    WEIGHTS_DIGEST_KEY,
    EngineTarget,
    ModelInfo,
    engine_cache_complete,
    engine_cache_path,
    graph_digest,
    profile_tag,
    read_engine_sidecar,
    read_model_info,
    sort_nodes_topologically,
    write_engine_sidecar,
)
from semseg_ros.staged_output import atomic_write_bytes

#: Default top of the batch range an engine is built for (opt stays 1: the real-time path).
DEFAULT_MAX_BATCH = 8
_REBUILD = 'semseg export --tensorrt --onnx {onnx} --rebuild'


def import_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver) or :class:`BackendUnavailableError` saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as err:
        msg = 'TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)'
        raise BackendUnavailableError(msg) from err
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        msg = 'the TensorRT backend needs pycuda for device buffers: pip install pycuda'
        raise BackendUnavailableError(msg) from err
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise BackendUnavailableError('TensorRT is installed but CUDA sees no GPU')
    except cuda.Error as err:
        msg = f'CUDA is not usable here ({err}); no GPU or driver'
        raise BackendUnavailableError(msg) from err
    return trt, cuda


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason) without raising: for ``backend=auto`` and test skips."""
    try:
        import_tensorrt()
    except BackendUnavailableError as err:
        return False, str(err)
    return True, ''


def _major(trt: Any) -> int:
    return int(trt.__version__.split('.')[0])


def current_target(trt: Any, cuda: Any, precision: str, device_index: int = 0) -> EngineTarget:
    device = cuda.Device(device_index)
    return EngineTarget(
        device.name(), tuple(device.compute_capability()), trt.__version__, precision
    )


def fp16_variant_path(onnx_path: Path) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` (what ``semseg export --fp16`` writes)."""
    return onnx_path.with_name(f'{onnx_path.stem}.fp16{onnx_path.suffix}')


def write_fp16_copy(onnx_path: Path, out: Path) -> Path:
    """FP16 weights and arithmetic, FP32 I/O, the metadata kept with precision ``fp16``.

    The runtime's own copy of ``training.export.convert_fp16`` (without torch or its checks):
    ``onnx`` and onnxruntime's converter. ImportError when ``onnx`` is absent.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    try:
        sort_nodes_topologically(proto.graph)
    except ValueError as err:
        raise EngineError(str(err)) from err
    for prop in proto.metadata_props:
        if prop.key == 'precision':
            prop.value = 'fp16'
        elif prop.key == WEIGHTS_DIGEST_KEY:  # the copy's own weights
            prop.value = graph_digest(proto)
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def _onnx_for_precision(
    trt: Any, onnx_path: Path, info: ModelInfo, fp16: bool, log: Any
) -> tuple[Path, str]:
    """(the ONNX to parse, the engine precision) for this TensorRT version.

    TensorRT 11 is strongly typed: FP16 needs an FP16 ONNX, made here when missing; when it
    cannot be made the engine is FP32 (slower, never a failure) and ``log`` says why.
    """
    if info.precision == 'fp16':
        return onnx_path, 'fp16'
    if not fp16:
        return onnx_path, 'fp32'
    if _major(trt) < 11:
        return onnx_path, 'fp16'  # weak typing: BuilderFlag.FP16 on the FP32 graph
    fp16_path = fp16_variant_path(onnx_path)
    if fp16_path.is_file():
        return fp16_path, 'fp16'
    try:
        write_fp16_copy(onnx_path, fp16_path)
    except (ImportError, OSError, ValueError, RuntimeError) as err:
        log(
            f'TensorRT {trt.__version__} takes precision from the ONNX (strong typing) and '
            f'{fp16_path} is missing and could not be written ({err}); building an FP32 '
            f'engine. For FP16: `semseg export --checkpoint CKPT --out {onnx_path} --fp16`'
        )
        return onnx_path, 'fp32'
    log(f'TensorRT {trt.__version__} is strongly typed: wrote the FP16 copy {fp16_path}')
    return fp16_path, 'fp16'


def build_engine(
    onnx_path: str | Path,
    *,
    fp16: bool = True,
    workspace_gb: float = 2.0,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_size: tuple[int, int] | None = None,
    rebuild: bool = False,
    device_index: int = 0,
    log: Any = print,
) -> Path:
    """Build the engine for ``onnx_path`` on GPU ``device_index``, or reuse the cached one.

    The optimization profile spans batch 1..``max_batch`` at the model's input size, up to
    ``max_size`` (width, height) when given (e.g. (800, 600) to also run full frames).
    Returns the engine's path.
    """
    trt, cuda = import_tensorrt()
    onnx_path = Path(onnx_path)
    info = read_model_info(onnx_path)
    if max_batch < 1:
        raise ValueError(f'max_batch must be >= 1, got {max_batch}')
    parse_path, precision = _onnx_for_precision(trt, onnx_path, info, fp16, log)
    parsed_sha256 = info.sha256 if parse_path == onnx_path else read_model_info(parse_path).sha256
    target = current_target(trt, cuda, precision, device_index)
    width, height = info.input_spec.input_size
    max_w, max_h = max_size or (width, height)
    max_w, max_h = max(width, max_w), max(height, max_h)
    profile = profile_tag(max_batch, (width, height), (max_w, max_h))
    engine_path = engine_cache_path(onnx_path, target, parsed_sha256, profile)
    if engine_cache_complete(engine_path) and not rebuild:
        log(f'TensorRT engine cache hit: {engine_path}')
        return engine_path
    log(f'building a TensorRT {trt.__version__} {precision} engine for {target.gpu_name}')
    log(f'  from {parse_path}, profile {profile} (minutes; cached for the next run)')

    context = cuda.Device(device_index).retain_primary_context()
    context.push()  # build (and time tactics) on the GPU asked for, not GPU 0
    try:
        serialized = _build_serialized(trt, parse_path, info, fp16, workspace_gb, profile_shapes=(
            (1, 3, height, width),  # min
            (1, 3, height, width),  # opt: the real-time path is batch 1
            (max_batch, 3, max_h, max_w),  # max
        ))  # fmt: skip
    finally:
        context.pop()
        context.detach()
    # Sidecar first, engine last, both atomic: a reader that finds the engine finds both.
    write_engine_sidecar(
        engine_path,
        info,
        target,
        parsed=parse_path,
        parsed_sha256=parsed_sha256,
        profile=profile,
    )
    atomic_write_bytes(engine_path, bytes(serialized))
    log(f'wrote {engine_path}')
    return engine_path


def _build_serialized(
    trt: Any,
    parse_path: Path,
    info: ModelInfo,
    fp16: bool,
    workspace_gb: float,
    profile_shapes: tuple[tuple[int, ...], ...],
) -> Any:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0  # explicit batch is the only mode since TensorRT 10
    weakly_typed_fp16 = fp16 and hasattr(trt.BuilderFlag, 'FP16')  # TensorRT 10.x
    if not weakly_typed_fp16 and hasattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED'):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(parse_path.read_bytes()):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f'TensorRT cannot parse {parse_path}: {errors}')
    # The engine's one output is the logits (the run path binds exactly one); the graph's
    # uint8 ids and confidence outputs are for onnxruntime, so they are dropped here with the
    # layers that only feed them.
    for index in reversed(range(network.num_outputs)):
        tensor = network.get_output(index)
        if tensor.name in (IDS_OUTPUT_NAME, CONFIDENCE_OUTPUT_NAME):
            network.unmark_output(tensor)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if weakly_typed_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(info.input_name, *profile_shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f'TensorRT failed to build an engine from {parse_path} (see the log above)'
        raise EngineError(msg)
    return serialized


def _onnx_hint(engine_path: Path) -> str:
    """``model.<tag>.engine`` -> ``model.onnx`` (the file to rebuild from)."""
    return str(engine_path.with_name(engine_path.name.split('.')[0] + '.onnx'))


def _check_target(
    trt: Any, cuda: Any, engine_path: Path, built_for: EngineTarget, device_index: int = 0
) -> None:
    """Raise unless GPU ``device_index`` and this TensorRT are what the engine was built for."""
    here = current_target(trt, cuda, built_for.precision, device_index)
    if (here.gpu_name, here.compute_capability, here.tensorrt_version) != (
        built_for.gpu_name,
        built_for.compute_capability,
        built_for.tensorrt_version,
    ):
        onnx = _onnx_hint(engine_path)
        msg = (
            f'TensorRT engine {engine_path} was built for {built_for.gpu_name} (sm '
            f'{built_for.compute_capability[0]}.{built_for.compute_capability[1]}) with TensorRT '
            f'{built_for.tensorrt_version}; GPU {device_index} here is {here.gpu_name} (sm '
            f'{here.compute_capability[0]}.{here.compute_capability[1]}) and TensorRT '
            f'{here.tensorrt_version}. Engines are not portable: pass the ONNX as model_path '
            f'(the engine is built and cached on first run) or run `'
            + _REBUILD.format(onnx=onnx)
            + '`'
        )
        raise EngineError(msg)


class TensorRTEngine(Engine):
    """A deserialized TensorRT engine with one execution context and a pycuda stream."""

    backend = 'tensorrt'

    def __init__(self, engine_path: str | Path, *, device_index: int = 0) -> None:
        trt, cuda = import_tensorrt()
        engine_path = Path(engine_path)
        info, built_for = read_engine_sidecar(engine_path)
        super().__init__(info)
        self._trt, self._cuda = trt, cuda
        self._target = built_for
        self._device_index = device_index
        self._shape: tuple[int, ...] | None = None
        self._dev_in = self._dev_out = self._host_in = self._host_out = None
        self._stream = self._context = self._engine = None
        if not 0 <= device_index < cuda.Device.count():
            msg = f'GPU {device_index} asked for, CUDA sees {cuda.Device.count()} GPU(s)'
            raise BackendUnavailableError(msg)
        _check_target(trt, cuda, engine_path, built_for, device_index)
        self._context_cuda = cuda.Device(device_index).retain_primary_context()
        self._context_cuda.push()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self._engine is None:
                msg = (
                    f'TensorRT could not deserialize {engine_path} (built for another GPU or '
                    'TensorRT version, or corrupt); rebuild it with `'
                    + _REBUILD.format(onnx=_onnx_hint(engine_path))
                    + '`'
                )
                raise EngineError(msg)
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            mode = {n: self._engine.get_tensor_mode(n) for n in names}
            inputs = [n for n in names if mode[n] == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if mode[n] == trt.TensorIOMode.OUTPUT]
            if inputs != [info.input_name] or info.output_name not in outputs:
                msg = (
                    f'{engine_path}: engine tensors {inputs} -> {outputs} do not match the '
                    f'metadata ({info.input_name} -> {info.output_name}); rebuild the engine'
                )
                raise EngineError(msg)
            self._out_dtype = trt.nptype(self._engine.get_tensor_dtype(info.output_name))
            # (min, opt, max) shapes of profile 0: larger batches run in chunks of max.
            self.max_batch = int(self._engine.get_tensor_profile_shape(info.input_name, 0)[2][0])
        except BaseException:
            self._context_cuda.pop()
            self._release()
            raise
        self._context_cuda.pop()

    @property
    def device(self) -> str:
        return (
            f'cuda:{self._device_index}, {self._target.gpu_name}, '
            f'TensorRT {self._target.tensorrt_version}'
        )

    @property
    def precision(self) -> str:
        return self._target.precision

    def _allocate(self, shape: tuple[int, ...]) -> None:
        """Page-locked host + device buffers for input ``shape``, reused while it holds."""
        cuda, info = self._cuda, self.info
        if not self._context.set_input_shape(info.input_name, shape):
            msg = (
                f'input {shape} is outside the engine profile of {info.path}; rebuild with a '
                'larger max_size'
            )
            raise ValueError(msg)
        out_shape = tuple(self._context.get_tensor_shape(info.output_name))
        self._free()  # the old shape's memory, while our context is current
        self._host_in = cuda.pagelocked_empty(shape, np.float32)
        self._host_out = cuda.pagelocked_empty(out_shape, self._out_dtype)
        self._dev_in = cuda.mem_alloc(self._host_in.nbytes)
        self._dev_out = cuda.mem_alloc(self._host_out.nbytes)
        self._context.set_tensor_address(info.input_name, int(self._dev_in))
        self._context.set_tensor_address(info.output_name, int(self._dev_out))
        self._shape = shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        if self._engine is None:
            raise EngineError(f'TensorRT engine for {self.info.path} is closed')
        if batch.shape[0] > self.max_batch:  # beyond the profile: chunks of max_batch
            with self._lock:
                chunks = [
                    self.infer(batch[i : i + self.max_batch]).copy()
                    for i in range(0, batch.shape[0], self.max_batch)
                ]
            return np.concatenate(chunks)
        cuda = self._cuda
        with self._lock:
            self._context_cuda.push()  # this thread may not be the one that built us
            try:
                if self._shape != batch.shape:
                    self._allocate(tuple(batch.shape))
                np.copyto(self._host_in, batch)
                cuda.memcpy_htod_async(self._dev_in, self._host_in, self._stream)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise EngineError(f'TensorRT execution failed for {self.info.path}')
                cuda.memcpy_dtoh_async(self._host_out, self._dev_out, self._stream)
                self._stream.synchronize()
            finally:
                self._context_cuda.pop()
            return self._host_out.astype(np.float32, copy=False)

    def _free(self) -> None:
        """Device and page-locked host buffers (call with the context current)."""
        for name in ('_dev_in', '_dev_out', '_host_in', '_host_out'):
            buffer = getattr(self, name, None)
            if buffer is None:
                continue
            # pycuda: DeviceAllocation.free(); a page-locked array's base HostAllocation.free()
            owner = buffer if name.startswith('_dev') else getattr(buffer, 'base', None)
            if owner is not None and hasattr(owner, 'free'):
                owner.free()
            setattr(self, name, None)
        self._shape = None

    def _release(self) -> None:
        """Everything the engine holds on the GPU, then our hold on the primary context."""
        self._free()
        self._stream = None  # pycuda destroys the stream when its last reference goes
        self._context = None
        self._engine = None
        self._runtime = None
        context, self._context_cuda = getattr(self, '_context_cuda', None), None
        if context is not None:
            context.detach()  # balances retain_primary_context

    def close(self) -> None:
        with self._lock:
            if getattr(self, '_context_cuda', None) is None:
                return  # closed already
            self._context_cuda.push()
            try:
                self._free()
                self._stream = None
                self._context = None
                self._engine = None
            finally:
                self._context_cuda.pop()
            self._release()


def engine_for(onnx_or_engine: str | Path, **build_options: Any) -> Path:
    """The engine file to run: the given ``.engine``, or the cached build of an ONNX."""
    path = Path(onnx_or_engine)
    if path.suffix == ENGINE_SUFFIX:
        return path
    return build_engine(path, **build_options)
