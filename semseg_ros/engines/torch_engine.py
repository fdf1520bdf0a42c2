"""PyTorch backend (CPU / CUDA, FP16 on CUDA, channels_last), run from a training checkpoint.

torch is imported only when this engine is built: the runtime package never imports it at
import time (docs/architecture.md). An ONNX file holds no PyTorch module, so this backend
runs the checkpoint the ONNX was exported from (``provenance.checkpoint`` in its metadata)
or a ``.pt`` checkpoint given directly.

With ``frames_on_device`` (the default on CUDA) the :class:`~semseg_ros.segmenter.Segmenter`
hands this engine whole camera frames (:meth:`TorchEngine.segment_frames`): the uint8 frame
is uploaded once, and channel order, crop, resize, normalization, inference, argmax, the
nearest restore and the background rows all run on the device; only the (H, W) uint8 ids
come back. The same code runs on the CPU (the tests compare it there with onnxruntime's
ids). ``cuda_graphs`` captures model + argmax per input shape in a ``torch.cuda.CUDAGraph``
and replays it (CUDA only). ``torch_compile`` is the alternative to it:
``torch.compile(mode='reduce-overhead')`` of model + argmax (inductor's fused kernels,
recorded in CUDA graphs by torch itself), compiled on the first call of each input shape
(tens of seconds; CUDA only). ``semseg gpu-check`` measures the two side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.devices import parse_device, torch_device
from semseg_ros.engines.base import BackendUnavailableError, Engine, EngineError
from semseg_ros.model_file import ModelInfo

CHECKPOINT_SUFFIXES = ('.pt', '.pth', '.ckpt')
#: Where R, G, B sit in a camera frame of each encoding (segment_frames).
_CHANNELS = {'rgb8': (0, 1, 2), 'rgba8': (0, 1, 2), 'bgr8': (2, 1, 0), 'bgra8': (2, 1, 0)}
FRAME_ENCODINGS = tuple(_CHANNELS)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as err:
        msg = 'backend torch needs PyTorch: pip install -e .[train] (or use onnxruntime)'
        raise BackendUnavailableError(msg) from err
    return torch


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def checkpoint_for(info: ModelInfo) -> Path:
    """The checkpoint behind a model: the file itself, or the ONNX's recorded source."""
    if info.path.suffix in CHECKPOINT_SUFFIXES:
        return info.path
    recorded = info.provenance.get('checkpoint')
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    msg = (
        f'backend torch runs PyTorch checkpoints; {info.path} records checkpoint {recorded!r}, '
        'which is not here. Pass the .pt checkpoint as the model, or use backend onnxruntime'
    )
    raise BackendUnavailableError(msg)


def load_checkpoint_model(path: str | Path) -> tuple[Any, ModelInfo]:
    """(UNet in eval mode on CPU, ModelInfo) from a training checkpoint.

    The one import of the training half by the runtime core, lazy and of one small module
    (its ``checkpoint``: the checkpoint format and the UNet it rebuilds), through
    :func:`semseg_ros.training_half.training_module`.
    """
    from semseg_ros.training_half import INSTALL_HINT, training_module

    _import_torch()
    try:
        checkpoints = training_module('checkpoint')
    except ImportError as err:
        msg = f'backend torch needs the training half of semseg_ros: {INSTALL_HINT} ({err})'
        raise BackendUnavailableError(msg) from err
    try:
        checkpoint = checkpoints.load_checkpoint(path)
        info = checkpoint.model_info(path)
        return checkpoint.build_model('cpu'), info
    except checkpoints.CheckpointError as err:
        raise EngineError(f'{path}: {err}' if str(path) not in str(err) else str(err)) from err


class TorchEngine(Engine):
    """A ``torch.nn.Module`` returning logits (N, C, H, W), run under ``inference_mode``."""

    backend = 'torch'

    def __init__(
        self,
        model: Any,
        info: ModelInfo,
        *,
        device: str = 'auto',
        fp16: bool = False,
        channels_last: bool = False,
        threads: int | None = None,
        frames_on_device: bool | None = None,
        cuda_graphs: bool = False,
        torch_compile: bool = False,
    ) -> None:
        super().__init__(info)
        torch = _import_torch()
        device = parse_device(device)  # ValueError for a device that does not exist anywhere
        try:
            self._device = torch_device(device)
        except ValueError as err:  # a GPU asked for that this machine does not have
            raise BackendUnavailableError(str(err)) from err
        if fp16 and self._device.type == 'cpu':
            msg = 'fp16 is for CUDA; on CPU use fp16=False (or the INT8 ONNX with onnxruntime)'
            raise ValueError(msg)
        if threads is not None:
            torch.set_num_threads(int(threads))
        self._torch = torch
        self._dtype = torch.float16 if fp16 else torch.float32
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._channels_last = channels_last
        self.model = model.to(self._device, self._dtype, memory_format=self._memory_format).eval()
        on_cuda = self._device.type == 'cuda'
        if torch_compile and cuda_graphs:
            msg = (
                "torch_compile (mode='reduce-overhead') records its own CUDA graphs: choose "
                'one of torch_compile=True and cuda_graphs=True'
            )
            raise ValueError(msg)
        if cuda_graphs and not on_cuda:
            raise ValueError('cuda_graphs is for CUDA devices; on CPU use cuda_graphs=False')
        if torch_compile and not on_cuda:
            msg = (
                "torch_compile (mode='reduce-overhead') is for CUDA devices, where it records "
                'CUDA graphs; on CPU use torch_compile=False (or backend openvino / onnxruntime)'
            )
            raise ValueError(msg)
        if torch_compile and not hasattr(torch, 'compile'):
            msg = f'torch_compile needs torch >= 2.0 (this is {torch.__version__})'
            raise BackendUnavailableError(msg)
        #: Whether the Segmenter gives this engine whole frames (segment_frames).
        self.frames_on_device = on_cuda if frames_on_device is None else bool(frames_on_device)
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        self._use_graphs = cuda_graphs
        self._compiled = None
        if torch_compile:
            self._compiled = torch.compile(self._model_ids, mode='reduce-overhead', dynamic=False)

    @classmethod
    def from_model_info(cls, info: ModelInfo, **options: Any) -> TorchEngine:
        model, ckpt_info = load_checkpoint_model(checkpoint_for(info))
        return cls(model, ckpt_info, **options)

    @property
    def device(self) -> str:
        return str(self._device) + (', channels_last' if self._channels_last else '')

    @property
    def precision(self) -> str:
        return 'fp16' if self._dtype == self._torch.float16 else 'fp32'

    def _forward(self, batch: np.ndarray) -> Any:
        x = self._torch.from_numpy(self.check_batch(batch))  # (N, 3, h, w), shares memory
        x = x.to(self._device, self._dtype, non_blocking=True)
        x = x.contiguous(memory_format=self._memory_format)
        return self.model(x)  # (N, C, h, w)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._forward(batch).float().cpu().numpy()

    def infer_ids(self, batch: np.ndarray) -> np.ndarray:
        # Argmax on the device: only (N, h, w) uint8 crosses back, not C float maps.
        with self._lock, self._torch.inference_mode():
            x = self._torch.from_numpy(self.check_batch(batch)).to(self._device)
            return self._ids(x).cpu().numpy()

    def _model_ids(self, x: Any) -> Any:
        """Model + argmax. Shape: (N, 3, h, w) -> (N, h, w) uint8."""
        return self.model(x).argmax(1).to(self._torch.uint8)

    def _ids(self, x: Any) -> Any:
        """Model + argmax. Shape: (N, 3, h, w) float32 on the device -> (N, h, w) uint8."""
        x = x.to(self._dtype).contiguous(memory_format=self._memory_format)
        if self._compiled is not None:
            # The output lives in the CUDA graph's memory pool, overwritten by the next replay.
            return self._compiled(x).clone()
        if not self._use_graphs:
            return self._model_ids(x)
        graph = self._graphs.get(tuple(x.shape))
        if graph is None:
            graph = self._graphs[tuple(x.shape)] = self._capture(x)
        static_in, static_out, cuda_graph = graph
        static_in.copy_(x)
        cuda_graph.replay()
        return static_out.clone()

    def _capture(self, x: Any) -> tuple[Any, Any, Any]:
        """A CUDA graph of model + argmax for ``x``'s shape (warmed up on a side stream)."""
        torch = self._torch
        static_in = x.clone()
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # cudnn picks its kernels outside the capture
                self.model(static_in)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_out = self._model_ids(static_in)
        return static_in, static_out, cuda_graph

    def segment_frames(
        self, frames: np.ndarray, encoding: str, spec: Any, fill_id: int = 0
    ) -> np.ndarray:
        """Whole frames to full-frame ids, every step on the device.

        Shape: (N, H, W, 3|4) uint8 camera frames -> (N, H, W) uint8 ids. The geometry is
        :mod:`semseg_ros.pipeline`'s (crop rows, shrink with an area-like filter, normalize,
        nearest restore, background rows), in torch ops.
        """
        torch = self._torch
        F = torch.nn.functional
        order = _CHANNELS[encoding]  # RGB channel indices in the camera's layout
        if spec.normalization.channel_order == 'BGR':
            order = order[::-1]
        n, height, width = frames.shape[:3]
        rows = spec.cropped_height(height)
        w, h = spec.input_size
        mean = torch.tensor(spec.normalization.mean, device=self._device).view(1, 3, 1, 1)
        std = torch.tensor(spec.normalization.std, device=self._device).view(1, 3, 1, 1)
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self._device)  # one upload
            x = x[:, spec.crop_top : spec.crop_top + rows, :, list(order)]  # (N, rows, W, 3)
            x = x.permute(0, 3, 1, 2).float()  # (N, 3, rows, W)
            if (rows, width) != (h, w):
                shrinking = h < rows and w < width
                x = F.interpolate(
                    x, size=(h, w), mode='bilinear', align_corners=False, antialias=shrinking
                )
            x = (x / 255.0 - mean) / std  # (N, 3, h, w)
            ids = self._ids(x)  # (N, h, w) uint8
            band = F.interpolate(ids[:, None].float(), size=(rows, width), mode='nearest-exact')
            out = torch.full((n, height, width), fill_id, dtype=torch.uint8, device=self._device)
            out[:, spec.crop_top : spec.crop_top + rows] = band[:, 0].to(torch.uint8)
            return out.cpu().numpy()  # the one download: (N, H, W) uint8

    def close(self) -> None:
        self._graphs.clear()
        self._compiled = None
        self.model = None
        if self._device.type == 'cuda':
            self._torch.cuda.empty_cache()
