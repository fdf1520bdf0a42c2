"""Inference backends behind one interface (:class:`Engine`), and the choice among them.

=============  ===============================================  ==========================
backend        runs                                             needs
=============  ===============================================  ==========================
onnxruntime    ``.onnx`` on CPU, or CUDA / TensorRT providers   onnxruntime (-gpu)
openvino       FP32 ``.onnx`` (+ its INT8 IR) on CPU            openvino (``[openvino]``)
tensorrt       ``.engine`` (built from ``.onnx`` and cached)    tensorrt, pycuda, a GPU
torch          ``.pt`` checkpoint (or the ONNX's recorded one)  torch + the training package
=============  ===============================================  ==========================

``backend='auto'`` picks the fastest one available for the file and the machine: on a GPU
TensorRT, else onnxruntime's GPU providers, else PyTorch on CUDA; on CPU OpenVINO when
installed (the FP32 ONNX itself; ``precision='int8'`` runs its NNCF INT8 IR, not faster
here: see ``make bench``), else onnxruntime (its own INT8 QDQ file if
that is what was given). A file OpenVINO cannot compile falls back to onnxruntime with one
warning. The engine's ``selection`` says what was chosen and why.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from semseg_ros.devices import DEVICE_CHOICES, cuda_index, parse_device
from semseg_ros.engines.base import BackendUnavailableError, Engine, EngineError
from semseg_ros.model_file import ENGINE_SUFFIX, ModelInfo, read_model_info

BACKENDS = ('auto', 'onnxruntime', 'openvino', 'tensorrt', 'torch')
DEVICES = DEVICE_CHOICES

__all__ = [
    'BACKENDS',
    'DEVICES',
    'BackendUnavailableError',
    'Engine',
    'EngineError',
    'available_backends',
    'create_engine',
]


def available_backends() -> dict[str, str]:
    """``{backend: ''}`` when usable here, else ``{backend: why not}``."""
    from semseg_ros.engines.onnxruntime_engine import available_providers
    from semseg_ros.engines.openvino_engine import openvino_available
    from semseg_ros.engines.tensorrt_engine import tensorrt_available

    status: dict[str, str] = {}
    try:
        status['onnxruntime'] = '' if available_providers() else 'no execution provider'
    except ImportError:
        status['onnxruntime'] = 'onnxruntime is not installed'
    status['openvino'] = openvino_available()[1]
    ok, why = tensorrt_available()
    status['tensorrt'] = '' if ok else why
    try:
        import torch  # noqa: F401

        status['torch'] = ''
    except ImportError:
        status['torch'] = 'torch is not installed'
    return status


def _load_info(path: Path) -> ModelInfo:
    from semseg_ros.engines.torch_engine import CHECKPOINT_SUFFIXES, load_checkpoint_model

    if path.suffix in CHECKPOINT_SUFFIXES and path.is_file():
        return load_checkpoint_model(path)[1]
    return read_model_info(path)


def create_engine(
    model_path: str | Path | ModelInfo,
    backend: str = 'auto',
    device: str = 'auto',
    **options: Any,
) -> Engine:
    """An :class:`Engine` for ``model_path`` (``.onnx``, ``.engine`` or ``.pt``).

    ``options`` go to the backend: ``threads`` (onnxruntime, openvino, torch),
    ``precision`` (openvino: 'fp32' | 'int8'), ``cache_dir`` (openvino), ``fp16`` /
    ``channels_last`` (torch), ``workspace_gb`` / ``max_batch`` / ``max_size`` (TensorRT
    builds). Raises :class:`~semseg_ros.model_file.ModelFileError` for a bad file and
    :class:`BackendUnavailableError` when the requested backend cannot run here.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    device = parse_device(device)
    info = model_path if isinstance(model_path, ModelInfo) else _load_info(Path(model_path))
    if backend == 'auto':
        backend, why = _choose(info, device)
        backend, options = split_backend_choice(backend, options)
    else:
        why = 'requested'
    engine: Engine | None = None
    try:
        engine = _build(backend, info, device, options)
    except EngineError as err:
        # auto never fails where another backend works: a TensorRT build or load that fails
        # (no FP16 model on TensorRT 11, a parser error, a busy GPU) falls back, saying why;
        # a model OpenVINO cannot compile runs on onnxruntime, with one warning.
        if why == 'requested' or info.path.suffix == ENGINE_SUFFIX:
            raise
        if backend == 'tensorrt':
            backend, why = _choose(info, device, tensorrt_failed=f'TensorRT failed: {err}')
            backend, options = split_backend_choice(backend, options)
        elif backend == 'openvino' and options.get('precision') == 'int8':
            why = f'OpenVINO cannot run the INT8 IR of {info.path.name} ({err}): FP32 instead'
            warnings.warn(why, RuntimeWarning, stacklevel=2)
            options = {**options, 'precision': 'fp32'}
            try:
                engine = _build(backend, info, device, options)
            except EngineError as err2:
                why = f'OpenVINO cannot run {info.path.name} ({err2}): onnxruntime instead'
                warnings.warn(why, RuntimeWarning, stacklevel=2)
                backend = 'onnxruntime'
        elif backend == 'openvino':
            why = f'OpenVINO cannot run {info.path.name} ({err}): onnxruntime instead'
            warnings.warn(why, RuntimeWarning, stacklevel=2)
            backend = 'onnxruntime'
        else:
            raise
        if engine is None:
            engine = _build(backend, info, device, options)
    fallback = getattr(engine, 'fallback', '')  # a GPU provider onnxruntime could not load
    engine.selection = f'{engine.name}: {why}' + (f'; {fallback}' if fallback else '')
    return engine


def split_backend_choice(
    choice: str, options: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """``'openvino:int8'`` -> ``('openvino', {'precision': 'int8', **options})``; the
    caller's own ``precision`` option wins. Plain names pass through: ``'onnxruntime'``."""
    options = options or {}
    backend, _, precision = choice.partition(':')
    return backend, ({'precision': precision, **options} if precision else options)


def _cpu_choice(info: ModelInfo, where: str) -> tuple[str, str]:
    """The CPU backend for an ONNX file: OpenVINO when installed and the file is FP32 (on
    its INT8 IR when one made from this file lies beside it), else onnxruntime.

    Returns ``(backend, why)``; the backend may carry a precision, ``'openvino:int8'``."""
    from semseg_ros.engines.openvino_engine import (
        int8_ir_for,
        openvino_available,
        openvino_int8_path,
    )

    if info.precision != 'fp32':
        return 'onnxruntime', f'{where}: a {info.precision} ONNX file runs best in onnxruntime'
    ok, why = openvino_available()
    if not ok:
        return 'onnxruntime', f'{where}: onnxruntime ({why}; OpenVINO is ~2x faster on CPU)'
    # Measured (make bench, the shipped model, 800x600, p50 on 2 threads): OpenVINO's INT8 IR
    # 25 ms, OpenVINO on the FP32 ONNX (bf16 math on AMX CPUs) 27, onnxruntime INT8 47,
    # FP32 79; the IR's mIoU drop vs FP32 was 0.02 points.
    xml, no_ir = int8_ir_for(info)
    if xml is None and openvino_int8_path(info.path).is_file():  # there, but stale or broken
        warnings.warn(f'{no_ir}; running the FP32 ONNX', RuntimeWarning, stacklevel=3)
    if xml is not None:
        return 'openvino:int8', (
            f'{where}: OpenVINO on {xml.name}, the INT8 IR made from this file: the fastest '
            'CPU path measured (backend openvino for FP32)'
        )
    return 'openvino', f'{where}: OpenVINO on the FP32 ONNX ({no_ir}; INT8 is faster)'


def _choose(info: ModelInfo, device: str, *, tensorrt_failed: str = '') -> tuple[str, str]:
    from semseg_ros.engines.onnxruntime_engine import GPU_PROVIDERS, available_providers
    from semseg_ros.engines.tensorrt_engine import tensorrt_available
    from semseg_ros.engines.torch_engine import CHECKPOINT_SUFFIXES, cuda_available

    suffix = info.path.suffix
    if suffix == ENGINE_SUFFIX:
        return 'tensorrt', 'a TensorRT engine file'
    if suffix in CHECKPOINT_SUFFIXES:
        return 'torch', 'a PyTorch checkpoint (export it to ONNX for the faster backends)'
    if device == 'cpu':
        return _cpu_choice(info, 'device=cpu')
    trt_ok, trt_why = (False, tensorrt_failed) if tensorrt_failed else tensorrt_available()
    if trt_ok and info.precision != 'int8':
        return 'tensorrt', 'GPU with TensorRT: fastest'
    gpu_providers = [p for p in available_providers() if p in GPU_PROVIDERS]
    if gpu_providers:
        return 'onnxruntime', f'GPU via onnxruntime {gpu_providers[0]} ({trt_why})'
    checkpoint = Path(info.provenance.get('checkpoint') or '')
    # Cheapest test first: importing torch to ask costs ~2 s of start-up on a CPU machine.
    if nvidia_driver_loaded() and checkpoint.is_file() and cuda_available():
        return 'torch', f'GPU via PyTorch CUDA ({trt_why}; no onnxruntime GPU provider)'
    if device.startswith('cuda'):
        msg = (
            f'device=cuda but no GPU backend can run {info.path}: {trt_why}; onnxruntime has no '
            "CUDA provider (pip install onnxruntime-gpu). Use device='cpu'"
        )
        raise BackendUnavailableError(msg)
    return _cpu_choice(info, f'no GPU backend here ({trt_why})')


def nvidia_driver_loaded() -> bool:
    """Whether an NVIDIA kernel driver runs here (Linux), without importing any CUDA library."""
    return Path('/proc/driver/nvidia/version').exists()


def _build(backend: str, info: ModelInfo, device: str, options: dict[str, Any]) -> Engine:
    if backend == 'onnxruntime':
        from semseg_ros.engines.onnxruntime_engine import OnnxRuntimeEngine

        if info.path.suffix != '.onnx' and info.path.suffix not in ('', '.ort'):
            raise BackendUnavailableError(f'backend onnxruntime runs .onnx files, not {info.path}')
        return OnnxRuntimeEngine(info, device=device, threads=options.get('threads'))
    if backend == 'openvino':
        from semseg_ros.engines.openvino_engine import OpenVINOEngine

        if device.startswith('cuda'):
            raise ValueError("backend openvino runs on the CPU here; use device='cpu' or 'auto'")
        if info.path.suffix != '.onnx':
            raise BackendUnavailableError(f'backend openvino runs .onnx files, not {info.path}')
        return OpenVINOEngine(
            info, precision=options.get('precision', 'fp32'), threads=options.get('threads'),
            cache_dir=options.get('cache_dir'),
        )  # fmt: skip
    if backend == 'tensorrt':
        from semseg_ros.engines.tensorrt_engine import TensorRTEngine, engine_for

        if device == 'cpu':
            raise ValueError("backend tensorrt runs on a GPU; use device='cuda' or 'auto'")
        build = {k: options[k] for k in ('workspace_gb', 'max_batch', 'max_size') if k in options}
        index = cuda_index(device)
        return TensorRTEngine(
            engine_for(info.path, device_index=index, **build), device_index=index
        )
    from semseg_ros.engines.torch_engine import TorchEngine

    names = ('fp16', 'channels_last', 'threads', 'frames_on_device', 'cuda_graphs')
    names += ('torch_compile',)
    torch_options = {k: options[k] for k in names if k in options}
    return TorchEngine.from_model_info(info, device=device, **torch_options)
