"""onnxruntime backend: CPU, and the CUDA / TensorRT execution providers where installed.

On CPU the output is bound (IOBinding) to a reusable numpy buffer per input shape, so a frame
costs no output allocation and no copy out of onnxruntime. ``infer_ids`` asks for the graph's
``ids`` output (the argmax inside the graph, see :mod:`training.export`) when the file has
one: onnxruntime's ArgMax is about four times faster than numpy's over C float maps, and one
byte per pixel comes back. (onnxruntime runs the whole graph whichever outputs are asked for,
so ``infer`` pays for that ArgMax too: ~4 ms of 75 at 800x600 on one core.) Older files fall
back to the argmax in numpy.

The ``confidence`` head is another matter (~20 ms at 800x600 on 2 threads): the session that
serves ``infer`` / ``infer_ids`` runs the graph without it
(:func:`~semseg_ros.model_file.onnx_without_outputs`), and a second session with it is made
the first time ``infer_ids_and_confidence`` is called (the node: when someone subscribes
``~/confidence``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.devices import cuda_index, parse_device
from semseg_ros.engines.base import BackendUnavailableError, Engine, EngineError
from semseg_ros.model_file import ModelInfo, onnx_without_outputs

CPU = 'CPUExecutionProvider'
CUDA = 'CUDAExecutionProvider'
TENSORRT = 'TensorrtExecutionProvider'
GPU_PROVIDERS = (TENSORRT, CUDA)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(device: str, info: ModelInfo) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for ``device`` ('auto', 'cpu', 'cuda[:N]'), best first, CPU last."""
    device = parse_device(device)
    if device == 'cpu':
        return [CPU]
    present = available_providers()
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    if TENSORRT in present and info.precision != 'int8':
        cache = str(Path(info.path).resolve().parent)
        options = {
            'trt_fp16_enable': True,  # FP16 kernels where TensorRT finds them faster
            'trt_engine_cache_enable': True,
            'trt_engine_cache_path': cache,  # engines cached next to the ONNX
        }
        if ':' in device:
            options['device_id'] = cuda_index(device)
        chosen.append((TENSORRT, options))
    if CUDA in present:
        chosen.append((CUDA, {'device_id': cuda_index(device)}) if ':' in device else CUDA)
    if device.startswith('cuda') and not chosen:
        msg = (
            f'device=cuda but this onnxruntime has only {present}; install onnxruntime-gpu '
            "or use device='cpu'"
        )
        raise BackendUnavailableError(msg)
    return [*chosen, CPU]


class OnnxRuntimeEngine(Engine):
    """An ``onnxruntime.InferenceSession`` over the model file."""

    backend = 'onnxruntime'

    def __init__(self, info: ModelInfo, *, device: str = 'auto', threads: int | None = None):
        super().__init__(info)
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailableError(
                'onnxruntime is not installed: pip install onnxruntime'
            ) from err
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no per-session provider chatter
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        device = parse_device(device)
        providers = choose_providers(device, info)
        self._options, self._providers = options, providers
        self._session = self._open(without_confidence=info.confidence_output is not None)
        self._full_session: Any = None  # with the confidence head, made on first use
        self._provider = self._session.get_providers()[0]
        #: Why a GPU provider that was asked for is not the one running ('' when none failed).
        self.fallback = ''
        wanted = [p if isinstance(p, str) else p[0] for p in providers]
        if wanted[0] != CPU and self._provider == CPU:
            # onnxruntime drops a provider that fails to load (missing CUDA / cuDNN libraries,
            # onnxruntime and onnxruntime-gpu both installed) with only a warning.
            msg = (
                f'onnxruntime could not load {wanted[:-1]} for {info.path} and fell back to '
                f'the CPU (providers running: {self._session.get_providers()}). Check the CUDA '
                'and cuDNN libraries onnxruntime-gpu needs, and that only one of onnxruntime / '
                'onnxruntime-gpu is installed (pip uninstall -y onnxruntime onnxruntime-gpu && '
                "pip install onnxruntime-gpu); or use device='cpu'"
            )
            if device.startswith('cuda'):
                raise BackendUnavailableError(msg)
            self.fallback = msg  # create_engine adds it to the selection
        self._on_cpu = self._provider == CPU
        self._binding = self._session.io_binding() if self._on_cpu else None
        self._logits: np.ndarray | None = None  # (N, C, h, w) output buffer on CPU
        self._ids_output = info.ids_output  # None for files exported before it existed

    def _open(self, *, without_confidence: bool) -> Any:
        import onnxruntime as ort

        source: str | bytes = str(self.info.path)
        if without_confidence:
            data = Path(self.info.path).read_bytes()
            source = onnx_without_outputs(data, {self.info.confidence_output or ''})
        try:
            return ort.InferenceSession(source, self._options, providers=self._providers)
        except (RuntimeError, ValueError) as err:  # onnxruntime's Fail / InvalidGraph
            msg = f'onnxruntime cannot load {self.info.path}: {err}'
            raise EngineError(msg) from err

    @property
    def device(self) -> str:
        name = self._provider.replace('ExecutionProvider', '')
        return f'{name}, GPU provider failed to load' if self.fallback else name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        n, _, h, w = batch.shape
        shape = (n, self.info.num_classes, h, w)
        with self._lock:
            if self._logits is None or self._logits.shape != shape:
                self._logits = np.empty(shape, np.float32)  # reused while the shape holds
            return self._run(batch, self.info.output_name, self._logits)

    def infer_ids(self, batch: np.ndarray) -> np.ndarray:
        if self._ids_output is None:
            return super().infer_ids(batch)
        batch = self.check_batch(batch)
        n, _, h, w = batch.shape
        # A fresh array per call, as the interface promises for ids (callers keep them).
        return self._run(batch, self._ids_output, np.empty((n, h, w), np.uint8))

    def infer_ids_and_confidence(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        confidence = self.info.confidence_output
        if confidence is None or self._ids_output is None:
            return self.infer_ids(batch), None
        batch = self.check_batch(batch)
        with self._lock:  # one run of the whole graph for both outputs
            if self._full_session is None:
                self._full_session = self._open(without_confidence=False)
            ids, conf = self._full_session.run(
                [self._ids_output, confidence], {self.info.input_name: batch}
            )
        return ids, conf

    def _run(self, batch: np.ndarray, output: str, out: np.ndarray) -> np.ndarray:
        """One output of one batch; on CPU onnxruntime writes straight into ``out``."""
        if self._binding is None:
            return self._session.run([output], {self.info.input_name: batch})[0]
        with self._lock:
            binding = self._binding
            binding.clear_binding_outputs()
            binding.bind_cpu_input(self.info.input_name, batch)
            binding.bind_output(output, 'cpu', 0, out.dtype, list(out.shape), out.ctypes.data)
            self._session.run_with_iobinding(binding)
            return out

    def close(self) -> None:
        self._binding = None
        self._logits = None
        self._full_session = None
