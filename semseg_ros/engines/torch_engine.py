"""PyTorch backend (CPU / CUDA, FP16 on CUDA, channels_last), run from a training checkpoint.

torch is imported only when this engine is built: the runtime package never imports it at
import time (docs/architecture.md). An ONNX file holds no PyTorch module, so this backend
runs the checkpoint the ONNX was exported from (``provenance.checkpoint`` in its metadata)
or a ``.pt`` checkpoint given directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.devices import parse_device, torch_device
from semseg_ros.engines.base import BackendUnavailableError, Engine, EngineError
from semseg_ros.model_file import ModelInfo

CHECKPOINT_SUFFIXES = ('.pt', '.pth', '.ckpt')


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
    (``training.checkpoint``: the checkpoint format and the UNet it rebuilds).
    """
    _import_torch()
    try:
        from training.checkpoint import CheckpointError, load_checkpoint
    except ImportError as err:
        msg = 'backend torch needs the training package: pip install -e .[train]'
        raise BackendUnavailableError(msg) from err
    try:
        checkpoint = load_checkpoint(path)
        info = checkpoint.model_info(path)
        return checkpoint.build_model('cpu'), info
    except CheckpointError as err:
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
        with self._torch.inference_mode():
            ids = self._forward(batch).argmax(1)  # (N, h, w) int64
            return ids.to(self._torch.uint8).cpu().numpy()

    def close(self) -> None:
        self.model = None
        if self._device.type == 'cuda':
            self._torch.cuda.empty_cache()
