"""Segmentation losses: pure tensor functions plus thin ``nn.Module`` wrappers.

All functions take raw **logits** and work in log space. The original TensorFlow project's
focal loss treated the network's logits as probabilities: it clipped them to
``[eps, 1 - eps]`` and re-applied a logit, so the loss saw a squashed, mostly saturated
copy of the scores and its gradient vanished wherever a logit left that interval. Here the
focal term comes from ``log_softmax`` directly: no log of a probability, no clipping.

Conventions: logits (N, C, H, W), target (N, H, W) int64 class ids, ``ignore_index`` (255,
the id :mod:`semseg_ros.labels` writes for unknown colours) marks pixels that contribute
nothing to the loss and receive zero gradient. A batch with every pixel ignored gives a loss
of 0 (not NaN), so one empty crop cannot poison a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal['mean', 'sum', 'none']
LOSS_NAMES = ('focal', 'ce', 'dice', 'focal+dice', 'ce+dice')


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    if logits.dim() < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        msg = (
            f'logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match: '
            'expected logits (N, C, H, W) and target (N, H, W)'
        )
        raise ValueError(msg)
    if target.dtype != torch.long:
        msg = f'target must be int64 class ids, got {target.dtype}; use target.long()'
        raise ValueError(msg)
    C = logits.shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= C))
    if bad.any():  # one host sync; a clear message beats a CUDA device-side assert
        values = torch.unique(target[bad])[:5].tolist()
        msg = (
            f'target holds class id(s) {values} outside [0, {C}) that are not ignore_index '
            f'({ignore_index}); check the class set of the labels against the model'
        )
        raise ValueError(msg)


def _check_reduction(reduction: str) -> None:
    if reduction not in ('mean', 'sum', 'none'):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _class_weight(
    weight: torch.Tensor | Sequence[float] | None, logits: torch.Tensor, name: str
) -> torch.Tensor | None:
    if weight is None:
        return None
    weight = torch.as_tensor(weight, dtype=logits.dtype, device=logits.device)
    if weight.shape != (logits.shape[1],):
        msg = (
            f'{name} must have one weight per class, shape ({logits.shape[1]},), '
            f'got {tuple(weight.shape)}'
        )
        raise ValueError(msg)
    return weight


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    # Half-precision log_softmax and pow lose the small (1 - p_t) values the focal term is
    # about; compute in float32 (float64 stays float64).
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _reduce(loss: torch.Tensor, weight_sum: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == 'none':
        return loss
    total = loss.sum()
    if reduction == 'sum':
        return total
    # Safe denominator: 0 / 1 = 0 for an all-ignored batch, with a zero (not NaN) gradient.
    return total / torch.where(weight_sum > 0, weight_sum, torch.ones_like(weight_sum))


def focal_loss_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int = 255,
    reduction: Reduction = 'mean',
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al., 2017): ``-alpha_t (1 - p_t)^gamma log p_t``.

    ``alpha`` is an optional per-class weight (C,) (see :func:`class_weights_from_frequencies`).
    ``reduction='mean'`` divides the summed loss by the sum of ``alpha_t`` over non-ignored
    pixels (by their count when ``alpha`` is None): the convention of ``F.cross_entropy`` with
    ``weight``, so ``gamma=0`` is exactly cross-entropy and the loss scale does not move when
    the class weights are rescaled. ``'none'`` returns the per-pixel loss with 0 at ignored
    pixels. Half-precision logits are computed in float32.

    Shape:
        logits: (N, C, *) float; target: (N, *) int64; output: scalar or (N, *) for 'none'.
    """
    if gamma < 0:
        raise ValueError(f'gamma must be >= 0, got {gamma}')
    _check_reduction(reduction)
    _check_inputs(logits, target, ignore_index)
    logits = _upcast(logits)
    alpha = _class_weight(alpha, logits, 'alpha')

    valid = target != ignore_index  # (N, *)
    safe_target = torch.where(valid, target, torch.zeros_like(target))  # gather-able index
    log_p = F.log_softmax(logits, dim=1)  # (N, C, *)
    log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (N, *)
    loss = -log_pt
    if gamma != 0:
        one_minus_pt = -torch.expm1(log_pt)  # (N, *) 1 - p_t, accurate when p_t is near 1
        # d/dx x^gamma is infinite at x = 0 for gamma < 1 and autograd turns inf * 0 into
        # NaN; the true gradient there is 0. Keep x = 0 out of pow (double-where trick).
        positive = one_minus_pt > 0
        base = torch.where(positive, one_minus_pt, torch.ones_like(one_minus_pt))
        modulating = torch.where(positive, base.pow(gamma), torch.zeros_like(base))
        loss = modulating * loss
    if alpha is not None:
        alpha_t = alpha[safe_target]  # (N, *)
        loss = alpha_t * loss
        weight_sum = (alpha_t * valid).sum()
    else:
        weight_sum = valid.sum().to(loss.dtype)
    loss = torch.where(valid, loss, torch.zeros_like(loss))  # (N, *) 0 at ignored pixels
    return _reduce(loss, weight_sum, reduction)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int = 255,
    reduction: Reduction = 'mean',
) -> torch.Tensor:
    """``F.cross_entropy`` with the project's conventions (all-ignored batch -> 0, not NaN).

    Shape: logits (N, C, *), target (N, *) int64.
    """
    _check_reduction(reduction)
    _check_inputs(logits, target, ignore_index)
    logits = _upcast(logits)
    weight = _class_weight(weight, logits, 'weight')
    loss = F.cross_entropy(
        logits, target, weight=weight, ignore_index=ignore_index, reduction='none'
    )
    valid = target != ignore_index
    if weight is None:
        weight_sum = valid.sum().to(loss.dtype)
    else:
        weight_sum = (weight[torch.where(valid, target, torch.zeros_like(target))] * valid).sum()
    return _reduce(loss, weight_sum, reduction)


def dice_loss_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    smooth: float = 1.0,
    present_classes_only: bool = True,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Soft multi-class Dice loss, ``1 - mean_c (2 |P_c G_c| + s) / (|P_c| + |G_c| + s)``.

    Sums run over the whole batch per class (a "batch Dice", stabler than per image).
    With ``present_classes_only`` the mean is over classes that occur in the batch's target:
    an absent class would otherwise only reward predicting nothing of it. Ignored pixels are
    removed from both P and G. A batch with no valid pixel gives 0.

    Shape: logits (N, C, *), target (N, *) int64; returns a scalar.
    """
    _check_inputs(logits, target, ignore_index)
    logits = _upcast(logits)
    C = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)  # (N, 1, *)
    safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    probs = F.softmax(logits, dim=1) * valid  # (N, C, *)
    truth = F.one_hot(safe_target, C).movedim(-1, 1).to(probs.dtype) * valid  # (N, C, *)
    dims = [0, *range(2, logits.dim())]
    intersection = (probs * truth).sum(dims)  # (C,)
    truth_sum = truth.sum(dims)  # (C,)
    cardinality = probs.sum(dims) + truth_sum  # (C,)
    dice = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)  # (C,)
    loss = 1.0 - dice  # (C,)
    if present_classes_only:
        present = (truth_sum > 0).to(loss.dtype)
    else:
        present = torch.full_like(loss, float(valid.any()))
    return (loss * present).sum() / present.sum().clamp_min(1.0)


def class_weights_from_frequencies(
    pixel_counts: Sequence[float] | np.ndarray | torch.Tensor,
    method: Literal['inverse_log', 'inverse_sqrt', 'median_freq'] = 'inverse_log',
    *,
    c: float = 1.02,
) -> torch.Tensor:
    """Per-class weights (the focal ``alpha``, the CE ``weight``) from training-split counts.

    * ``inverse_log``: ``1 / ln(c + f)`` (ENet, Paszke et al. 2016); bounded by ``1 / ln c``.
    * ``inverse_sqrt``: ``1 / sqrt(f)``.
    * ``median_freq``: ``median(f) / f`` (Eigen & Fergus 2015), with ``f`` the pixel frequency
      over the whole split (the common simplification of their per-image frequency).

    ``f`` is a class's share of all pixels. A class with no pixels gets the largest weight of
    the classes that have pixels (finite, and it never occurs in training anyway). The result
    is scaled so the mean weight is 1. Shape: (C,) counts -> (C,) float32.
    """
    counts = torch.as_tensor(np.asarray(pixel_counts, dtype=np.float64))
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f'pixel_counts must be a 1-D sequence, got shape {tuple(counts.shape)}')
    if (counts < 0).any() or not torch.isfinite(counts).all():
        raise ValueError('pixel_counts must be finite and non-negative')
    if counts.sum() == 0:
        raise ValueError('pixel_counts are all zero; count the training split first')
    freq = counts / counts.sum()
    present = freq > 0
    f = freq[present]
    if method == 'inverse_log':
        w = 1.0 / torch.log(c + f)
    elif method == 'inverse_sqrt':
        w = 1.0 / torch.sqrt(f)
    elif method == 'median_freq':
        w = torch.median(f) / f
    else:
        msg = f"unknown method {method!r}; use 'inverse_log', 'inverse_sqrt' or 'median_freq'"
        raise ValueError(msg)
    weights = torch.full_like(freq, float(w.max()))
    weights[present] = w
    return (weights / weights.mean()).float()


# --- nn.Module wrappers ------------------------------------------------------------------


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss_with_logits`; ``alpha`` follows the module's device."""

    alpha: torch.Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int = 255,
        reduction: Reduction = 'mean',
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f'gamma must be >= 0, got {gamma}')
        _check_reduction(reduction)
        self.gamma, self.ignore_index, self.reduction = gamma, ignore_index, reduction
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.register_buffer('alpha', alpha_t, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss_with_logits(
            logits, target, self.gamma, self.alpha, self.ignore_index, self.reduction
        )


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`."""

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int = 255,
        reduction: Reduction = 'mean',
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.ignore_index, self.reduction = ignore_index, reduction
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.register_buffer('weight', w, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight, self.ignore_index, self.reduction)


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss_with_logits`."""

    def __init__(
        self, ignore_index: int = 255, smooth: float = 1.0, present_classes_only: bool = True
    ) -> None:
        super().__init__()
        self.ignore_index, self.smooth = ignore_index, smooth
        self.present_classes_only = present_classes_only

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss_with_logits(
            logits, target, self.ignore_index, self.smooth, self.present_classes_only
        )


class CombinedLoss(nn.Module):
    """Weighted sum of named losses, e.g. ``{'focal': FocalLoss(), 'dice': DiceLoss()}``.

    :meth:`terms` returns each unweighted term (for logging); ``forward`` their weighted sum.
    """

    def __init__(
        self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        if not losses:
            raise ValueError('CombinedLoss needs at least one loss')
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(losses))
        if unknown:
            raise ValueError(f'weights for unknown losses {unknown}; losses are {list(losses)}')
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: loss(logits, target) for name, loss in self.losses.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = self.terms(logits, target)
        return sum(self.weights[name] * value for name, value in terms.items())  # type: ignore[return-value]


def build_loss(
    name: str,
    *,
    class_weights: torch.Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    ignore_index: int = 255,
    dice_smooth: float = 1.0,
    dice_weight: float = 1.0,
) -> nn.Module:
    """The training loss by name: one of ``focal``, ``ce``, ``dice``, ``focal+dice``, ``ce+dice``.

    ``class_weights`` is the focal ``alpha`` / CE ``weight`` (Dice is unweighted);
    ``dice_weight`` scales the Dice term of a combination.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f'unknown loss {name!r}; choose one of {list(LOSS_NAMES)}')
    parts: dict[str, nn.Module] = {}
    for part in name.split('+'):
        if part == 'focal':
            parts[part] = FocalLoss(gamma, class_weights, ignore_index)
        elif part == 'ce':
            parts[part] = CrossEntropyLoss(class_weights, ignore_index)
        else:
            parts[part] = DiceLoss(ignore_index, dice_smooth)
    if len(parts) == 1:
        return next(iter(parts.values()))
    return CombinedLoss(parts, {'dice': dice_weight})
