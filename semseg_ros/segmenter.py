"""The per-frame path, owned by one object: the node, the bag tool, predict, evaluate,
export's INT8 check and the benchmarks all call it.

::

    frame (H, W, 3) uint8 RGB ── prepare: crop rows, resize, normalize ──▶
    engine (any backend) ── argmax (uint8) ── restore_ids: nearest resize back ──▶ ids (H, W)

A caller that already holds an RGB frame (the node decodes each message once with
:func:`semseg_ros.imaging.frame_to_rgb`) passes it as is; ``encoding=`` converts a raw
camera array (bgra8, bgr8, rgba8, mono8) first. The geometry is :mod:`semseg_ros.pipeline`'s;
this module adds the reusable buffers and the timings. Pictures of the ids (colour mask,
overlay) are :mod:`semseg_ros.visualize`'s and ``ClassSet.id_to_color``'s, never a result's.
numpy + OpenCV only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.engines import Engine, create_engine
from semseg_ros.imaging import to_rgb
from semseg_ros.labels import ClassSet
from semseg_ros.model_file import ModelInfo
from semseg_ros.pipeline import InputSpec, prepare, restore_ids


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage of one frame (a batch's stages are split evenly)."""

    pre: float = 0.0  # (decode of a non-RGB frame +) crop + resize + normalize
    infer: float = 0.0  # the engine
    post: float = 0.0  # argmax + resize back

    @property
    def total(self) -> float:
        return self.pre + self.infer + self.post


@dataclass(frozen=True)
class SegmentResult:
    """One frame's class ids and where the time went. Shape: ids (H, W) uint8, full frame."""

    ids: np.ndarray
    timings: Timings


class Segmenter:
    """Frames in, full-frame class ids out, through any :class:`Engine`.

    Thread-safe (one frame at a time: the input buffer is reused). Every returned array is
    new; only internal buffers are reused.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        input_spec: InputSpec | None = None,
        fill_id: int = 0,
    ) -> None:
        self.engine = engine
        #: The model's input spec; pass one to run a fully convolutional model at another
        #: size (benchmarks), at the cost of accuracy it was not trained for.
        self.input_spec = input_spec or engine.info.input_spec
        self.fill_id = int(fill_id)
        width, height = self.input_spec.input_size
        self._batch = np.empty((1, 3, height, width), np.float32)  # (1, 3, h, w), reused
        self._lock = threading.Lock()

    @classmethod
    def from_model(
        cls,
        model_path: str | Path,
        backend: str = 'auto',
        device: str = 'auto',
        **options: Any,
    ) -> Segmenter:
        """Load from the model file alone (ONNX metadata, engine sidecar or checkpoint).

        ``options`` go to :func:`~semseg_ros.engines.create_engine` (``threads``, ``fp16``,
        ...), except ``input_spec`` (an :class:`InputSpec` overriding the model's own).
        """
        input_spec = options.pop('input_spec', None)
        engine = create_engine(model_path, backend=backend, device=device, **options)
        return cls(engine, input_spec=input_spec)

    # --- what the model is -----------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        return self.engine.info

    @property
    def class_set(self) -> ClassSet:
        return self.engine.info.class_set

    @property
    def backend_name(self) -> str:
        return self.engine.name

    @property
    def selection(self) -> str:
        """Which backend ``auto`` chose and why (or 'requested')."""
        return self.engine.selection or self.engine.name

    # --- the per-frame path ----------------------------------------------------------------

    def _to_rgb(self, frame: np.ndarray, encoding: str) -> np.ndarray:
        """The frame as (H, W, 3) uint8 RGB: an rgb8 frame as is (checked, not converted)."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.dtype != np.uint8:
            if encoding == 'mono8' and frame.ndim == 2:
                return to_rgb(frame, encoding)
            msg = (
                f'Segmenter expects an (H, W, 3) uint8 {encoding} frame, got {frame.dtype} '
                f'{frame.shape}; pass encoding= for bgra8/bgr8/rgba8/mono8 camera images'
            )
            raise ValueError(msg)
        channels = 4 if encoding in ('bgra8', 'rgba8') else 3
        if frame.shape[2] != channels:
            msg = (
                f'a {encoding} frame has {channels} channels, this one has {frame.shape[2]} '
                f'(shape {frame.shape}); set encoding to what the camera sends (e.g. '
                "encoding='bgra8' for the CARLA bridge)"
            )
            raise ValueError(msg)
        return frame if encoding == 'rgb8' else to_rgb(frame, encoding)

    def segment(self, frame: np.ndarray, *, encoding: str = 'rgb8') -> SegmentResult:
        """One frame -> :class:`SegmentResult`. Shape: (H, W, 3|4) uint8 -> ids (H, W) uint8.

        An RGB frame (the default ``encoding='rgb8'``) is used as given, without a copy or a
        conversion; other encodings are converted to RGB here.
        """
        if self._on_device(frame, encoding):
            return self.segment_batch([frame], encoding=encoding)[0]
        return self._segment(frame, encoding, confidence=False)[0]

    def segment_with_confidence(
        self, frame: np.ndarray, *, encoding: str = 'rgb8'
    ) -> tuple[SegmentResult, np.ndarray | None]:
        """Like :meth:`segment`, plus the model's confidence restored to the frame (the same
        nearest restore as the ids; cropped rows 0: the model never saw them), or None when
        the model has no confidence output. Shape: -> ids (H, W), confidence (H, W) uint8.
        """
        return self._segment(frame, encoding, confidence=True)

    def _segment(
        self, frame: np.ndarray, encoding: str, *, confidence: bool
    ) -> tuple[SegmentResult, np.ndarray | None]:
        with self._lock:
            t0 = time.perf_counter()
            rgb = self._to_rgb(frame, encoding)
            prepare(rgb, self.input_spec, out=self._batch[0])
            t1 = time.perf_counter()
            if confidence:
                small, small_conf = self.engine.infer_ids_and_confidence(self._batch)
            else:
                small, small_conf = self.engine.infer_ids(self._batch), None  # (1, h, w) uint8
            t2 = time.perf_counter()
            ids = restore_ids(small[0], self.input_spec, rgb.shape, self.fill_id)  # (H, W)
            conf = None
            if small_conf is not None:
                conf = restore_ids(small_conf[0], self.input_spec, rgb.shape, 0)  # (H, W)
            t3 = time.perf_counter()
        return SegmentResult(ids, Timings(t1 - t0, t2 - t1, t3 - t2)), conf

    def segment_batch(
        self, frames: Sequence[np.ndarray], *, encoding: str = 'rgb8'
    ) -> list[SegmentResult]:
        """Several frames through the engine in one batch (offline tools; not the node)."""
        if not frames:
            return []
        if self._on_device(frames[0], encoding) and len({f.shape for f in frames}) == 1:
            return self._segment_on_device(frames, encoding)
        width, height = self.input_spec.input_size
        t0 = time.perf_counter()
        rgbs = [self._to_rgb(f, encoding) for f in frames]
        batch = np.empty((len(rgbs), 3, height, width), np.float32)  # (N, 3, h, w)
        for i, rgb in enumerate(rgbs):
            prepare(rgb, self.input_spec, out=batch[i])
        t1 = time.perf_counter()
        with self._lock:
            small = self.engine.infer_ids(batch)  # (N, h, w) uint8
        t2 = time.perf_counter()
        ids = [
            restore_ids(s, self.input_spec, r.shape, self.fill_id)
            for s, r in zip(small, rgbs, strict=True)
        ]
        t3 = time.perf_counter()
        n = len(rgbs)
        timings = Timings((t1 - t0) / n, (t2 - t1) / n, (t3 - t2) / n)
        return [SegmentResult(i, timings) for i in ids]

    def _on_device(self, frame: np.ndarray, encoding: str) -> bool:
        """Whether the engine takes whole frames (the torch engine's device frame path)."""
        from semseg_ros.engines.torch_engine import FRAME_ENCODINGS

        return (
            getattr(self.engine, 'frames_on_device', False)
            and encoding in FRAME_ENCODINGS
            and isinstance(frame, np.ndarray)
            and frame.dtype == np.uint8
            and frame.ndim == 3
        )

    def _segment_on_device(
        self, frames: Sequence[np.ndarray], encoding: str
    ) -> list[SegmentResult]:
        """Frames -> ids with every step on the engine's device; one upload, one download."""
        for frame in frames:
            self._to_rgb_checked_shape(frame, encoding)
        t0 = time.perf_counter()
        stacked = frames[0][None] if len(frames) == 1 else np.stack(frames)  # (N, H, W, C)
        with self._lock:
            ids = self.engine.segment_frames(stacked, encoding, self.input_spec, self.fill_id)
        t1 = time.perf_counter()
        timings = Timings(0.0, (t1 - t0) / len(frames), 0.0)  # one device pass: all 'infer'
        return [SegmentResult(i, timings) for i in ids]

    def _to_rgb_checked_shape(self, frame: np.ndarray, encoding: str) -> None:
        channels = 4 if encoding in ('bgra8', 'rgba8') else 3
        if frame.shape[2] != channels:
            msg = (
                f'a {encoding} frame has {channels} channels, this one has {frame.shape[2]} '
                f'(shape {frame.shape}); set encoding to what the camera sends'
            )
            raise ValueError(msg)

    def warm_up(self, batch_size: int = 1, passes: int = 2) -> None:
        """Untimed passes at ``batch_size``, so lazy initialisation (kernel selection,
        allocator growth) stays out of the timings that follow."""
        width, height = self.input_spec.input_size
        frame = np.zeros((height, width, 3), np.uint8)
        for _ in range(passes):
            self.segment_batch([frame] * batch_size)

    def close(self) -> None:
        self.engine.close()

    def __repr__(self) -> str:
        w, h = self.input_spec.input_size
        return f'<Segmenter {self.backend_name} {self.class_set.name} {w}x{h}>'
