"""TensorRT backend (TensorRT 10 / 11 Python API, pycuda buffers and stream).

Build (:func:`build_engine`): parse the ONNX, one optimization profile over the batch sizes
(and the model's input size), a workspace limit, FP16 where the version allows it:

* TensorRT 10: the FP32 ONNX with ``BuilderFlag.FP16`` (weak typing; deprecated but the
  way 10.x picks FP16 kernels on its own);
* TensorRT 11: weak typing is gone, networks are strongly typed and take their precision
  from the ONNX itself, so the FP16 variant ``MODEL.fp16.onnx`` (``semseg export --fp16``)
  is parsed instead.

The serialized engine is cached next to the ONNX under a name holding the GPU, its compute
capability, the TensorRT version, the precision and the ONNX hash
(:func:`semseg_ros.model_file.engine_cache_path`), with a ``.json`` sidecar of the model
metadata; any change picks a new name, so the engine is rebuilt. Loading an engine file
made for another GPU or TensorRT version fails with a message saying how to rebuild.

Run (:class:`TensorRTEngine`): I/O tensors by name (``get_tensor_name`` /
``get_tensor_mode``), ``set_input_shape`` + ``set_tensor_address`` and
``execute_async_v3`` on a pycuda stream, page-locked host buffers reused per shape. The
CUDA context is the device's primary context, pushed around every call under the engine's
lock, so callbacks arriving on other threads (ROS executors) can run it.

``tensorrt`` and ``pycuda`` are imported lazily; without them :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.engines.base import BackendUnavailableError, Engine, EngineError
from semseg_ros.model_file import (
    ENGINE_SUFFIX,
    IDS_OUTPUT_NAME,
    EngineTarget,
    ModelInfo,
    engine_cache_path,
    read_engine_sidecar,
    read_model_info,
    write_engine_sidecar,
)

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


def _onnx_for_precision(trt: Any, onnx_path: Path, info: ModelInfo, fp16: bool) -> Path:
    """The ONNX to parse: TensorRT 11 (strongly typed) needs the FP16 model for FP16."""
    if not fp16 or _major(trt) < 11 or info.precision == 'fp16':
        return onnx_path
    fp16_path = onnx_path.with_name(f'{onnx_path.stem}.fp16{onnx_path.suffix}')
    if not fp16_path.is_file():
        msg = (
            f'TensorRT {trt.__version__} takes precision from the ONNX model (strong typing) and '
            f'{fp16_path} is missing; write it with `semseg export --checkpoint CKPT --out '
            f'{onnx_path} --fp16`, or build an FP32 engine (--fp32-engine)'
        )
        raise EngineError(msg)
    return fp16_path


def build_engine(
    onnx_path: str | Path,
    *,
    fp16: bool = True,
    workspace_gb: float = 2.0,
    max_batch: int = 1,
    max_size: tuple[int, int] | None = None,
    rebuild: bool = False,
    device_index: int = 0,
    log: Any = print,
) -> Path:
    """Build the engine for ``onnx_path`` on this GPU, or reuse the cached one; its path.

    The optimization profile spans batch 1..``max_batch`` at the model's input size, up to
    ``max_size`` (width, height) when given (e.g. (800, 600) to also run full frames).
    """
    trt, cuda = import_tensorrt()
    onnx_path = Path(onnx_path)
    info = read_model_info(onnx_path)
    precision = 'fp16' if fp16 else 'fp32'
    target = current_target(trt, cuda, precision, device_index)
    engine_path = engine_cache_path(onnx_path, target, info.sha256)
    if engine_path.is_file() and not rebuild:
        log(f'TensorRT engine cache hit: {engine_path}')
        return engine_path
    parse_path = _onnx_for_precision(trt, onnx_path, info, fp16)
    log(f'building a TensorRT {trt.__version__} {precision} engine for {target.gpu_name}')
    log(f'  from {parse_path} (minutes; cached for the next run)')

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
    # uint8 ids output is for onnxruntime, so it is dropped here with its ArgMax and Cast.
    for index in reversed(range(network.num_outputs)):
        tensor = network.get_output(index)
        if tensor.name == IDS_OUTPUT_NAME:
            network.unmark_output(tensor)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if weakly_typed_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    width, height = info.input_spec.input_size
    max_w, max_h = max_size or (width, height)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        info.input_name,
        (1, 3, height, width),  # min
        (1, 3, height, width),  # opt: the real-time path is batch 1
        (max(1, max_batch), 3, max(height, max_h), max(width, max_w)),  # max
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f'TensorRT failed to build an engine from {parse_path} (see the log above)'
        raise EngineError(msg)
    tmp = engine_path.with_name(engine_path.name + f'.{os.getpid()}.tmp')
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)  # atomic: two nodes building at once never read half a file
    write_engine_sidecar(engine_path, info, target)
    log(f'wrote {engine_path}')
    return engine_path


def _onnx_hint(engine_path: Path) -> str:
    """``model.<tag>.engine`` -> ``model.onnx`` (the file to rebuild from)."""
    return str(engine_path.with_name(engine_path.name.split('.')[0] + '.onnx'))


def _check_target(trt: Any, cuda: Any, engine_path: Path, built_for: EngineTarget) -> None:
    here = current_target(trt, cuda, built_for.precision)
    if (here.gpu_name, here.compute_capability, here.tensorrt_version) != (
        built_for.gpu_name,
        built_for.compute_capability,
        built_for.tensorrt_version,
    ):
        onnx = _onnx_hint(engine_path)
        msg = (
            f'TensorRT engine {engine_path} was built for {built_for.gpu_name} (sm '
            f'{built_for.compute_capability[0]}.{built_for.compute_capability[1]}) with TensorRT '
            f'{built_for.tensorrt_version}; this machine has {here.gpu_name} (sm '
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
        self._context_cuda = cuda.Device(device_index).retain_primary_context()
        _check_target(trt, cuda, engine_path, built_for)
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
        finally:
            self._context_cuda.pop()
        self._shape: tuple[int, ...] | None = None
        self._dev_in = self._dev_out = None

    @property
    def device(self) -> str:
        return f'cuda, {self._target.gpu_name}, TensorRT {self._target.tensorrt_version}'

    @property
    def precision(self) -> str:
        return self._target.precision

    def _allocate(self, shape: tuple[int, ...]) -> None:
        """Page-locked host + device buffers for input ``shape``, reused while it holds."""
        cuda, info = self._cuda, self.info
        if not self._context.set_input_shape(info.input_name, shape):
            msg = (
                f'input {shape} is outside the engine profile of {info.path}; rebuild with a '
                'larger max_batch / max_size'
            )
            raise ValueError(msg)
        out_shape = tuple(self._context.get_tensor_shape(info.output_name))
        self._free()  # the old shape's device memory, while our context is current
        self._host_in = cuda.pagelocked_empty(shape, np.float32)
        self._host_out = cuda.pagelocked_empty(out_shape, self._out_dtype)
        self._dev_in = cuda.mem_alloc(self._host_in.nbytes)
        self._dev_out = cuda.mem_alloc(self._host_out.nbytes)
        self._context.set_tensor_address(info.input_name, int(self._dev_in))
        self._context.set_tensor_address(info.output_name, int(self._dev_out))
        self._shape = shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
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
        for name in ('_dev_in', '_dev_out'):
            buffer = getattr(self, name, None)
            if buffer is not None:
                buffer.free()
                setattr(self, name, None)
        self._shape = None

    def close(self) -> None:
        with self._lock:
            self._context_cuda.push()
            try:
                self._free()
                self._context = None
                self._engine = None
            finally:
                self._context_cuda.pop()


def engine_for(onnx_or_engine: str | Path, **build_options: Any) -> Path:
    """The engine file to run: the given ``.engine``, or the cached build of an ONNX."""
    path = Path(onnx_or_engine)
    if path.suffix == ENGINE_SUFFIX:
        return path
    return build_engine(path, **build_options)
