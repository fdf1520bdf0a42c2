"""The one inference interface: a preprocessed batch in, logits or class ids out.

Every backend (onnxruntime, TensorRT, PyTorch) implements :class:`Engine`; the
:class:`~semseg_ros.segmenter.Segmenter` owns the per-frame geometry around it and never
knows which backend it drives.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np

from semseg_ros.model_file import ModelInfo
from semseg_ros.pipeline import logits_to_ids


class EngineError(RuntimeError):
    """A backend cannot load or run a model here; the message says why and what to do."""


class BackendUnavailableError(EngineError):
    """The backend's library, device or model variant is absent on this machine."""


class Engine(ABC):
    """Runs one model. Shape: ``infer`` (N, 3, h, w) float32 -> (N, C, h, w) float32 logits.

    ``infer_ids`` returns (N, h, w) uint8 class ids (first maximum on ties); a backend may
    take the argmax on its device so only ids cross back. Arrays returned by ``infer`` may be
    reused buffers: valid until the next call. Calls from several threads are serialized.
    """

    #: Short backend name: 'onnxruntime', 'tensorrt', 'torch'.
    backend: str = ''
    #: What ``create_engine`` chose and why ('requested' when the caller named the backend).
    selection: str = ''

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        # Backends reuse buffers per call: one call at a time (re-entrant for infer_ids).
        self._lock = threading.RLock()

    @property
    def name(self) -> str:
        """What runs, for logs: backend, device / provider and precision."""
        return f'{self.backend} ({self.device}, {self.precision})'

    @property
    def device(self) -> str:
        return 'cpu'

    @property
    def precision(self) -> str:
        return self.info.precision

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """(N, C_in, h, w) float32, C-contiguous; raises ValueError naming the model file."""
        channels = self.info.in_channels
        if batch.ndim != 4 or batch.shape[1] != channels:
            msg = (
                f'model {self.info.path} takes (N, {channels}, H, W) batches, got shape '
                f'{batch.shape}; convert frames with Segmenter.segment (or '
                'semseg_ros.pipeline.prepare) first'
            )
            raise ValueError(msg)
        if batch.dtype != np.float32:
            msg = f'model {self.info.path} takes float32 input, got {batch.dtype}'
            raise ValueError(msg)
        return np.ascontiguousarray(batch)

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits. Shape: (N, 3, h, w) float32 -> (N, C, h, w) float32."""

    def infer_ids(self, batch: np.ndarray) -> np.ndarray:
        """Class ids. Shape: (N, 3, h, w) float32 -> (N, h, w) uint8."""
        with self._lock:  # the logits buffer stays ours until the argmax has read it
            return logits_to_ids(self.infer(batch))

    def infer_ids_and_confidence(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class ids and the model's confidence output, from one run.

        Shape: (N, 3, h, w) float32 -> ((N, h, w) uint8 ids, (N, h, w) uint8 or None), the
        confidence being 255 x the largest softmax probability. None when the backend or
        the model file has no confidence output (models exported before it existed).
        """
        return self.infer_ids(batch), None

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing
        """Release the backend's resources (sessions, device memory)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name} {self.info.path}>'
