"""Ground truth for a running node: pair predictions with segmentation-camera frames by stamp,
and score them with the one metric (:class:`~semseg_ros.metrics.ConfusionMatrix`)."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

import numpy as np

from semseg_ros.imaging import ImageFormatError
from semseg_ros.labels import ClassSet, get_class_set, mapping_lut
from semseg_ros.metrics import ConfusionMatrix

T = TypeVar('T')
Stamp = tuple[int, int]  # (sec, nanosec) of a builtin_interfaces/Time


class GroundTruthMatcher(Generic[T]):
    """Pairs predictions with ground-truth frames of the same stamp, in bounded memory.

    CARLA stamps every sensor of a tick with the same time, so an exact ``(sec, nanosec)``
    match is right. Either side may come first (rosbag play reorders topics), so each side
    waits in its own bounded buffer; when a buffer is full its oldest entry is evicted and
    counted as unmatched. Items are opaque (keep the raw message: decode only matched GT).
    """

    def __init__(self, capacity: int = 30) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be at least 1, got {capacity}')
        self.capacity = capacity
        self._gt: OrderedDict[Stamp, Any] = OrderedDict()
        self._pred: OrderedDict[Stamp, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.matched = 0
        self.unmatched_ground_truth = 0
        self.unmatched_predictions = 0

    def add_ground_truth(self, stamp: Stamp, gt: T) -> tuple[Any, T] | None:
        """Keep ``gt``; ``(prediction, gt)`` if a prediction of this stamp was waiting."""
        with self._lock:
            pred = self._pred.pop(stamp, None)
            if pred is not None:
                self.matched += 1
                return pred, gt
            self.unmatched_ground_truth += self._store(self._gt, stamp, gt)
        return None

    def add_prediction(self, stamp: Stamp, pred: Any) -> tuple[Any, T] | None:
        """Keep ``pred``; ``(pred, ground truth)`` if ground truth of this stamp was waiting."""
        with self._lock:
            gt = self._gt.pop(stamp, None)
            if gt is not None:
                self.matched += 1
                return pred, gt
            self.unmatched_predictions += self._store(self._pred, stamp, pred)
        return None

    def _store(self, buffer: OrderedDict[Stamp, Any], stamp: Stamp, item: Any) -> int:
        replaced = stamp in buffer  # a repeated stamp: the newer copy wins
        buffer[stamp] = item
        buffer.move_to_end(stamp)
        evicted = int(replaced)
        while len(buffer) > self.capacity:
            buffer.popitem(last=False)
            evicted += 1
        return evicted

    @property
    def pending(self) -> tuple[int, int]:
        """``(ground truth, predictions)`` waiting for their partner."""
        with self._lock:
            return len(self._gt), len(self._pred)


class OnlineIoU:
    """Running per-class IoU of a model's ids against palette ground truth (thread-safe).

    Ground-truth colours -> ids of ``gt_class_set`` (unknown colours ignored) -> ids of the
    model's set through :func:`~semseg_ros.labels.mapping_lut` -> one
    :class:`~semseg_ros.metrics.ConfusionMatrix` over the model's classes.
    """

    def __init__(self, gt_class_set: ClassSet | str, model_class_set: ClassSet | str) -> None:
        self.gt_class_set = get_class_set(gt_class_set)
        self.model_class_set = get_class_set(model_class_set)
        self.lut = mapping_lut(self.gt_class_set, self.model_class_set)  # (256,) uint8
        self._cm = ConfusionMatrix(self.model_class_set.num_classes)
        self._lock = threading.Lock()
        self.frames = 0

    def gt_ids(self, gt_rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 palette RGB -> (H, W) uint8 model ids (255 = not counted)."""
        return self.lut[self.gt_class_set.color_to_id(gt_rgb)]

    def update(self, pred_ids: np.ndarray, gt_rgb: np.ndarray) -> None:
        """Add one frame: ``pred_ids`` (H, W) uint8 model ids, ``gt_rgb`` (H, W, 3) palette."""
        if pred_ids.shape != gt_rgb.shape[:2]:
            msg = (
                f'ground truth is {gt_rgb.shape[1]}x{gt_rgb.shape[0]} but the camera '
                f'{pred_ids.shape[1]}x{pred_ids.shape[0]}: give the segmentation camera the '
                'same image_size_x/y, fov and spawn_point as the RGB camera'
            )
            raise ImageFormatError('size', msg)
        target = self.gt_ids(gt_rgb)
        with self._lock:
            self._cm.update(pred_ids, target)
            self.frames += 1

    def iou(self) -> np.ndarray:
        with self._lock:
            return self._cm.iou()

    def miou(self) -> float:
        with self._lock:
            return self._cm.miou()

    def per_class(self) -> dict[str, float]:
        """``{class name: IoU}`` for the classes seen so far (NaN ones left out)."""
        return {
            name: float(value)
            for name, value in zip(self.model_class_set.names, self.iou(), strict=True)
            if not math.isnan(value)
        }
