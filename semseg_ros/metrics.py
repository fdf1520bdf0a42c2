"""Segmentation metrics: the project's one confusion matrix, IoU and the Lyft challenge score.

numpy only: the ROS node imports this for online IoU against the simulator's ground truth,
and the runtime half must not import torch (docs/architecture.md, Two halves). The trainer
and evaluator use the same code, so a number in a model card and a number on
``/diagnostics`` mean the same.

Conventions (the same as torchmetrics and scikit-learn):

* the matrix has rows = ground truth, columns = prediction;
* a class absent from both ground truth and prediction has an undefined IoU: NaN here (not 0),
  and :meth:`ConfusionMatrix.miou` averages over the classes that are present.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from semseg_ros.dataset_layout import HOOD_ROW
from semseg_ros.labels import UNKNOWN_ID, ClassSet, ClassSetError, get_class_set

#: First row of the ego car's hood in a 600-row frame (:mod:`semseg_ros.dataset_layout`).
LYFT_HOOD_ROW = HOOD_ROW

# Vehicle classes per naming scheme: lyft13 / carla23 have one class, Cityscapes splits it.
_VEHICLE_NAMES = ('Vehicles', 'Car', 'Truck', 'Bus', 'Train', 'Motorcycle', 'Bicycle')
_ROAD_NAMES = ('Roads', 'RoadLines')


class MetricsError(ValueError):
    """Bad input to a metric (shape, dtype, class id); the message names the value."""


def _as_int_array(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in 'uib':
        msg = (
            f'{name} must hold integer class ids, got dtype {arr.dtype}; take the argmax of '
            'the scores first'
        )
        raise MetricsError(msg)
    return arr


class ConfusionMatrix:
    """An accumulating ``(num_classes, num_classes)`` confusion matrix.

    Rows are ground truth, columns are prediction. Target pixels equal to ``ignore_index`` or
    outside ``[0, num_classes)`` (e.g. the 255 that :meth:`ClassSet.color_to_id` writes for
    unknown colours) are skipped; a *prediction* outside the range at a counted pixel is an
    error, because it means the model and the class set disagree.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = UNKNOWN_ID) -> None:
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise MetricsError(f'num_classes must be a positive int, got {num_classes!r}')
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    @classmethod
    def from_matrix(
        cls, matrix: np.ndarray, ignore_index: int | None = UNKNOWN_ID
    ) -> ConfusionMatrix:
        """Wrap an existing count matrix (rows = ground truth), e.g. one loaded from JSON."""
        m = np.asarray(matrix)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise MetricsError(f'a confusion matrix must be square, got shape {m.shape}')
        if m.dtype.kind not in 'ui' or np.any(m < 0):
            raise MetricsError('a confusion matrix holds non-negative integer counts')
        cm = cls(m.shape[0], ignore_index)
        cm._matrix[...] = m
        return cm

    # --- accumulation ---------------------------------------------------------------------

    def update(self, pred: np.ndarray, target: np.ndarray) -> ConfusionMatrix:
        """Add one prediction / ground-truth pair (any equal shapes, e.g. (H, W) or (N, H, W)).

        Returns ``self`` so calls chain. Costs one masked copy and one ``np.bincount``.
        """
        pred = _as_int_array('pred', pred)
        target = _as_int_array('target', target)
        if pred.shape != target.shape:
            msg = f'pred and target shapes differ: {pred.shape} vs {target.shape}'
            raise MetricsError(msg)
        n = self.num_classes
        p = pred.reshape(-1)
        t = target.reshape(-1)
        if p.dtype == t.dtype == np.uint8 and n < UNKNOWN_ID and (not p.size or p.max() < n):
            return self._update_uint8(p, t)
        valid = t < n
        if t.dtype.kind == 'i':
            valid &= t >= 0
        if self.ignore_index is not None and 0 <= self.ignore_index < n:
            valid &= t != self.ignore_index
        # int64 before the multiply: uint8 * n would wrap around.
        p = p[valid].astype(np.int64)
        t = t[valid].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= n):
            bad = np.unique(p[(p < 0) | (p >= n)])[:5].tolist()
            msg = (
                f'prediction holds class id(s) {bad} outside [0, {n}); the model does not '
                f'match this {n}-class confusion matrix'
            )
            raise MetricsError(msg)
        self._matrix += np.bincount(t * n + p, minlength=n * n).reshape(n, n)
        return self

    def _update_uint8(self, p: np.ndarray, t: np.ndarray) -> ConfusionMatrix:
        """``update`` for uint8 ids with every prediction in range (the node's per-frame case):
        no masked copies; targets >= n (unknown, 255) land past the n x n block and drop out."""
        n = self.num_classes
        counts = np.bincount(t.astype(np.int32) * n + p, minlength=UNKNOWN_ID * n + n)
        block = counts[: n * n].reshape(n, n)
        if self.ignore_index is not None and 0 <= self.ignore_index < n:
            block[self.ignore_index] = 0
        self._matrix += block
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (e.g. from another worker); returns self."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f'can only merge a ConfusionMatrix, got {type(other).__name__}')
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            msg = (
                f'cannot merge a {other.num_classes}-class matrix (ignore_index '
                f'{other.ignore_index}) into a {self.num_classes}-class one (ignore_index '
                f'{self.ignore_index})'
            )
            raise MetricsError(msg)
        self._matrix += other._matrix
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return self.merge(other)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return self.copy().merge(other)

    def copy(self) -> ConfusionMatrix:
        return ConfusionMatrix.from_matrix(self._matrix, self.ignore_index)

    def reset(self) -> None:
        self._matrix[...] = 0

    def __repr__(self) -> str:
        return (
            f'ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, '
            f'pixels={self.total})'
        )

    # --- read-out ------------------------------------------------------------------------

    @property
    def matrix(self) -> np.ndarray:
        """(C, C) int64 counts, rows = ground truth, columns = prediction (read-only view)."""
        view = self._matrix.view()
        view.flags.writeable = False
        return view

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self._matrix.sum())

    def _tp_fp_fn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tp = np.diag(self._matrix).astype(np.float64)
        fp = self._matrix.sum(axis=0) - tp  # predicted as c, truly something else
        fn = self._matrix.sum(axis=1) - tp  # truly c, predicted as something else
        return tp, fp, fn

    def iou(self) -> np.ndarray:
        """(C,) float64 intersection over union; NaN for classes absent from gt and pred."""
        tp, fp, fn = self._tp_fp_fn()
        return _safe_ratio(tp, tp + fp + fn)

    def miou(self) -> float:
        """Mean IoU over the classes present in ground truth or prediction (NaN if none)."""
        return _nanmean(self.iou())

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels (NaN before any pixel was counted)."""
        total = self.total
        return float(np.trace(self._matrix) / total) if total else float('nan')

    def precision(self) -> np.ndarray:
        """(C,) tp / (tp + fp); NaN for classes never predicted."""
        tp, fp, _ = self._tp_fp_fn()
        return _safe_ratio(tp, tp + fp)

    def recall(self) -> np.ndarray:
        """(C,) tp / (tp + fn); NaN for classes absent from the ground truth."""
        tp, _, fn = self._tp_fp_fn()
        return _safe_ratio(tp, tp + fn)

    def f_beta(self, class_id: int | None = None, beta: float = 1.0) -> float | np.ndarray:
        """F-beta of one class (a float) or of every class (``class_id=None``, a (C,) array).

        ``(1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)``: beta < 1 weighs precision more,
        beta > 1 recall. NaN where the class is absent from both gt and prediction.
        """
        if beta < 0:
            raise MetricsError(f'beta must be >= 0, got {beta}')
        tp, fp, fn = self._tp_fp_fn()
        scores = _f_beta(tp, fp, fn, beta)
        if class_id is None:
            return scores
        if not 0 <= class_id < self.num_classes:
            raise MetricsError(f'class_id {class_id} is outside [0, {self.num_classes})')
        return float(scores[class_id])

    def normalized(self, by: Literal['true', 'pred', 'all'] = 'true') -> np.ndarray:
        """(C, C) float64 matrix normalized over rows ('true'), columns ('pred') or all.

        Empty rows / columns become 0 (as in scikit-learn's ``confusion_matrix``).
        """
        m = self._matrix.astype(np.float64)
        if by == 'true':
            denom = m.sum(axis=1, keepdims=True)
        elif by == 'pred':
            denom = m.sum(axis=0, keepdims=True)
        elif by == 'all':
            denom = np.full((1, 1), m.sum())
        else:
            raise MetricsError(f"normalized(by={by!r}): use 'true', 'pred' or 'all'")
        return np.divide(m, denom, out=np.zeros_like(m), where=denom > 0)

    def to_dict(self, class_names: Sequence[str] | ClassSet | None = None) -> dict:
        """A JSON-ready summary; NaN becomes ``None`` (JSON has no NaN)."""
        if isinstance(class_names, ClassSet):
            class_names = class_names.names
        names = list(class_names) if class_names is not None else None
        if names is not None and len(names) != self.num_classes:
            msg = f'{len(names)} class names for a {self.num_classes}-class confusion matrix'
            raise MetricsError(msg)
        keys = names if names is not None else [str(i) for i in range(self.num_classes)]

        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return {k: _json_float(v) for k, v in zip(keys, values, strict=True)}

        return {
            'num_classes': self.num_classes,
            'ignore_index': self.ignore_index,
            'class_names': names,
            'pixels': self.total,
            'miou': _json_float(self.miou()),
            'pixel_accuracy': _json_float(self.pixel_accuracy()),
            'iou': per_class(self.iou()),
            'precision': per_class(self.precision()),
            'recall': per_class(self.recall()),
            'matrix': self._matrix.tolist(),
        }


def _safe_ratio(num: np.ndarray, denom: np.ndarray) -> np.ndarray:
    return np.divide(num, denom, out=np.full(np.shape(num), np.nan), where=denom > 0)


def _f_beta(tp, fp, fn, beta: float):
    b2 = beta * beta
    num = (1.0 + b2) * np.asarray(tp, np.float64)
    return _safe_ratio(num, num + b2 * np.asarray(fn, np.float64) + fp)


def _nanmean(values: np.ndarray) -> float:
    if np.all(np.isnan(values)):
        return float('nan')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        return float(np.nanmean(values))


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


# --- The Lyft-Udacity challenge score ---------------------------------------------------------


@dataclass(frozen=True)
class LyftCounts:
    """Pixel counts of the two binary problems the Lyft score is computed from.

    Counts add up over frames (``a + b``); the F scores are computed once from the pooled
    counts, so a frame without vehicles does not produce an undefined per-frame score.
    """

    road_tp: int = 0
    road_fp: int = 0
    road_fn: int = 0
    vehicle_tp: int = 0
    vehicle_fp: int = 0
    vehicle_fn: int = 0

    def __add__(self, other: LyftCounts) -> LyftCounts:
        if not isinstance(other, LyftCounts):
            return NotImplemented
        return LyftCounts(
            self.road_tp + other.road_tp,
            self.road_fp + other.road_fp,
            self.road_fn + other.road_fn,
            self.vehicle_tp + other.vehicle_tp,
            self.vehicle_fp + other.vehicle_fp,
            self.vehicle_fn + other.vehicle_fn,
        )


def lyft_class_ids(class_set: str | ClassSet = 'lyft13') -> tuple[list[int], list[int]]:
    """``(road ids, vehicle ids)`` of a class set, resolved by class name.

    Roads include RoadLines (the challenge merges them). In lyft13 / carla23 vehicles are the
    one ``Vehicles`` class; in cityscapes29 they are Car, Truck, Bus, Train, Motorcycle and
    Bicycle.
    """
    cs = get_class_set(class_set)
    roads = [cs.id_of(n) for n in _ROAD_NAMES if n in cs.names]
    vehicles = [cs.id_of(n) for n in _VEHICLE_NAMES if n in cs.names]
    if 'Roads' not in cs.names or not vehicles:
        msg = (
            f'class set {cs.name!r} has no {"Roads" if "Roads" not in cs.names else "vehicle"} '
            f'class; the Lyft score needs "Roads" and one of {list(_VEHICLE_NAMES)}'
        )
        raise ClassSetError(msg)
    return roads, vehicles


def remove_hood(
    ids: np.ndarray,
    class_set: str | ClassSet = 'lyft13',
    *,
    hood_row: int = LYFT_HOOD_ROW,
    fill: int = 0,
) -> np.ndarray:
    """A copy of ``ids`` whose vehicle pixels at rows >= ``hood_row`` become ``fill``.

    This is the challenge's label preprocessing: the ego car's hood is labelled Vehicles but
    is not a vehicle to detect. ``hood_row`` is for the 800x600 camera; scale it for other
    heights. Shape: (..., H, W) integer ids -> same shape and dtype.
    """
    out = np.array(ids, copy=True)
    _, vehicles = lyft_class_ids(class_set)
    rows = out[..., hood_row:, :]
    rows[np.isin(rows, vehicles)] = fill
    return out


def lyft_binary_counts(
    pred: np.ndarray,
    target: np.ndarray,
    class_set: str | ClassSet = 'lyft13',
    *,
    hood_row: int | None = LYFT_HOOD_ROW,
    ignore_index: int | None = UNKNOWN_ID,
) -> LyftCounts:
    """Road / vehicle true- and false-positive counts from raw class-id arrays.

    Does the whole preprocessing: RoadLines count as Roads, and vehicle pixels at rows >=
    ``hood_row`` (the ego hood) are removed from both prediction and ground truth
    (``hood_row=None`` skips that). Target pixels equal to ``ignore_index`` are not counted.
    Shape: pred, target (H, W) or (N, H, W) integer ids, equal shapes.
    """
    pred = _as_int_array('pred', pred)
    target = _as_int_array('target', target)
    if pred.shape != target.shape or pred.ndim < 2:
        msg = f'pred and target must be equal (..., H, W) shapes, got {pred.shape}, {target.shape}'
        raise MetricsError(msg)
    roads, vehicles = lyft_class_ids(class_set)
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    pred_road, gt_road = np.isin(pred, roads), np.isin(target, roads)
    pred_veh, gt_veh = np.isin(pred, vehicles), np.isin(target, vehicles)
    if hood_row is not None:
        pred_veh[..., hood_row:, :] = False
        gt_veh[..., hood_row:, :] = False

    def counts(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
        p, g = p & valid, g & valid
        return (
            int(np.count_nonzero(p & g)),
            int(np.count_nonzero(p & ~g)),
            int(np.count_nonzero(~p & g)),
        )

    return LyftCounts(*counts(pred_road, gt_road), *counts(pred_veh, gt_veh))


def lyft_counts_from_confusion(
    cm: ConfusionMatrix, class_set: str | ClassSet = 'lyft13'
) -> LyftCounts:
    """Collapse a multi-class confusion matrix into the road / vehicle binary counts.

    The matrix must have been accumulated from **hood-removed** labels and predictions
    (:func:`remove_hood` on both), since a confusion matrix no longer knows pixel rows.
    """
    cs = get_class_set(class_set)
    if cm.num_classes != cs.num_classes:
        msg = f'a {cm.num_classes}-class confusion matrix does not fit class set {cs!r}'
        raise MetricsError(msg)
    roads, vehicles = lyft_class_ids(cs)
    m = cm.matrix

    def counts(ids: list[int]) -> tuple[int, int, int]:
        inside = np.zeros(cm.num_classes, bool)
        inside[ids] = True
        tp = int(m[np.ix_(inside, inside)].sum())
        return tp, int(m[:, inside].sum()) - tp, int(m[inside, :].sum()) - tp

    return LyftCounts(*counts(roads), *counts(vehicles))


def lyft_score(
    source: ConfusionMatrix | LyftCounts | np.ndarray,
    target: np.ndarray | None = None,
    class_set: str | ClassSet = 'lyft13',
    *,
    fps: float | None = None,
    hood_row: int | None = LYFT_HOOD_ROW,
) -> dict[str, float | None]:
    """The Lyft-Udacity challenge score (docs/architecture.md, The dataset).

    ``F_road`` is F-beta with beta=0.5 for Roads + RoadLines, ``F_vehicle`` F-beta with
    beta=2 for vehicles without the ego hood; ``score = 100 * mean(F_road, F_vehicle)
    - max(0, 10 - fps)`` (no penalty when ``fps`` is None).

    ``source`` is one of:

    * a prediction array, with ``target`` the ground truth: preprocessing (RoadLines merge,
      hood removal at ``hood_row``) is done here via :func:`lyft_binary_counts`;
    * :class:`LyftCounts` pooled over a data set;
    * a :class:`ConfusionMatrix` built from **hood-removed** labels and predictions
      (see :func:`remove_hood`); ``hood_row`` is not used then.
    """
    if isinstance(source, ConfusionMatrix):
        counts = lyft_counts_from_confusion(source, class_set)
    elif isinstance(source, LyftCounts):
        counts = source
    else:
        if target is None:
            raise MetricsError('lyft_score(pred, target, ...): pass the ground truth too')
        counts = lyft_binary_counts(source, target, class_set, hood_row=hood_row)
    c = counts
    f_road = float(_f_beta(c.road_tp, c.road_fp, c.road_fn, 0.5))
    f_vehicle = float(_f_beta(c.vehicle_tp, c.vehicle_fp, c.vehicle_fn, 2.0))
    mean_f = (f_road + f_vehicle) / 2.0
    penalty = 0.0 if fps is None else max(0.0, 10.0 - float(fps))
    return {
        'f_road': _json_float(f_road),
        'f_vehicle': _json_float(f_vehicle),
        'precision_road': _json_float(_safe_ratio(c.road_tp, c.road_tp + c.road_fp)),
        'recall_road': _json_float(_safe_ratio(c.road_tp, c.road_tp + c.road_fn)),
        'precision_vehicle': _json_float(_safe_ratio(c.vehicle_tp, c.vehicle_tp + c.vehicle_fp)),
        'recall_vehicle': _json_float(_safe_ratio(c.vehicle_tp, c.vehicle_tp + c.vehicle_fn)),
        'mean_f': _json_float(mean_f),
        'fps': None if fps is None else float(fps),
        'fps_penalty': penalty,
        'score': _json_float(100.0 * mean_f - penalty),
    }
