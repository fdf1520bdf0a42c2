"""Tests for training.losses: focal loss against its formula, CE equivalence, stability."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='the training half needs torch')
F = torch.nn.functional

from training.losses import (  # noqa: E402
    LOSS_NAMES,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    build_loss,
    class_weights_from_frequencies,
    cross_entropy,
    dice_loss_with_logits,
    focal_loss_with_logits,
)

IGNORE = 255
REDUCTIONS = ['mean', 'sum', 'none']


def make_batch(n=2, c=4, h=5, w=6, seed=0, scale=3.0, dtype=torch.float64, ignored=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, c, h, w, generator=g)).to(dtype)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignored] = IGNORE
    return logits, target


def reference_focal(logits, target, gamma, alpha, reduction):
    """The formula written out in float64 numpy: explicit softmax, one-hot p_t."""
    z = logits.detach().double().numpy()
    t = target.numpy()
    c = z.shape[1]
    valid = t != IGNORE
    t_safe = np.where(valid, t, 0)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)  # (N, C, H, W)
    onehot = np.moveaxis(np.eye(c)[t_safe], -1, 1)  # (N, C, H, W)
    p_t = (p * onehot).sum(axis=1)  # (N, H, W)
    a_t = np.ones_like(p_t) if alpha is None else np.asarray(alpha, np.float64)[t_safe]
    loss = -a_t * (1.0 - p_t) ** gamma * np.log(p_t)
    loss = np.where(valid, loss, 0.0)
    if reduction == 'none':
        return loss
    if reduction == 'sum':
        return loss.sum()
    return loss.sum() / (a_t * valid).sum()


@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize('with_alpha', [False, True])
def test_focal_matches_formula(reduction, gamma, with_alpha):
    logits, target = make_batch()
    alpha = [0.5, 1.0, 2.0, 0.25] if with_alpha else None
    ours = focal_loss_with_logits(logits, target, gamma, alpha, IGNORE, reduction)
    expected = reference_focal(logits, target, gamma, alpha, reduction)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('with_alpha', [False, True])
def test_focal_with_gamma_zero_is_cross_entropy(reduction, with_alpha):
    logits, target = make_batch(dtype=torch.float32)
    alpha = torch.tensor([0.5, 1.0, 2.0, 0.25]) if with_alpha else None
    focal = focal_loss_with_logits(logits, target, 0.0, alpha, IGNORE, reduction)
    ce = F.cross_entropy(logits, target, weight=alpha, ignore_index=IGNORE, reduction=reduction)
    torch.testing.assert_close(focal, ce)
    ours = cross_entropy(logits, target, alpha, IGNORE, reduction)
    torch.testing.assert_close(ours, ce)


def test_focal_down_weights_easy_pixels():
    # The whole point: a confident correct pixel contributes far less than under CE.
    logits = torch.tensor([[4.0, 0.0]]).reshape(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    ce = focal_loss_with_logits(logits, target, gamma=0.0)
    focal = focal_loss_with_logits(logits, target, gamma=2.0)
    p = torch.sigmoid(torch.tensor(4.0))
    torch.testing.assert_close(focal, (1 - p) ** 2 * ce)
    assert focal < ce / 50


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_give_finite_loss_and_gradient(gamma, dtype):
    # +-1e4: every pixel saturated, half right (p_t = 1 exactly) and half wrong (log p_t huge).
    logits = torch.full((2, 3, 4, 4), -1e4)
    logits[:, 0] = 1e4
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, :2] = 1  # confidently wrong rows
    logits = logits.to(dtype).requires_grad_(True)
    for fn in (
        lambda: focal_loss_with_logits(logits, target, gamma),
        lambda: cross_entropy(logits, target),
        lambda: dice_loss_with_logits(logits, target),
    ):
        logits.grad = None
        loss = fn()
        loss.backward()
        assert loss.dtype == (torch.float32 if dtype != torch.float32 else dtype)
        assert torch.isfinite(loss), loss
        assert torch.isfinite(logits.grad.float()).all()
    assert focal_loss_with_logits(logits, target, gamma) > 1e3  # wrong pixels still count


@pytest.mark.parametrize('loss_name', LOSS_NAMES)
def test_ignored_pixels_contribute_nothing_and_get_zero_gradient(loss_name):
    loss_fn = build_loss(loss_name, class_weights=[1.0, 2.0, 0.5, 1.0])
    logits, target = make_batch(dtype=torch.float32, ignored=0.3)
    logits.requires_grad_(True)
    loss_fn(logits, target).backward()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    assert (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored] != 0).any()
    # Changing the logits of ignored pixels does not change the loss.
    moved = logits.detach().clone()
    moved[ignored] = 100.0 * torch.randn(int(ignored.sum()))
    torch.testing.assert_close(loss_fn(moved, target), loss_fn(logits.detach(), target))


@pytest.mark.parametrize('loss_name', LOSS_NAMES)
def test_all_ignored_batch_gives_zero_not_nan(loss_name):
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), IGNORE)
    loss = build_loss(loss_name, class_weights=[1.0, 2.0, 0.5, 1.0])(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert (logits.grad == 0).all()


def test_reductions_are_consistent():
    logits, target = make_batch()
    per_pixel = focal_loss_with_logits(logits, target, reduction='none')
    assert per_pixel.shape == target.shape
    assert (per_pixel[target == IGNORE] == 0).all()
    total = focal_loss_with_logits(logits, target, reduction='sum')
    mean = focal_loss_with_logits(logits, target, reduction='mean')
    torch.testing.assert_close(per_pixel.sum(), total)
    torch.testing.assert_close(mean, total / (target != IGNORE).sum())


def test_mean_is_invariant_to_alpha_scale():
    logits, target = make_batch()
    alpha = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64)
    a = focal_loss_with_logits(logits, target, alpha=alpha)
    b = focal_loss_with_logits(logits, target, alpha=10 * alpha)
    torch.testing.assert_close(a, b)


def test_works_without_spatial_dims_and_in_3d():
    logits = torch.randn(8, 5)
    target = torch.randint(0, 5, (8,))
    torch.testing.assert_close(
        focal_loss_with_logits(logits, target, gamma=0.0), F.cross_entropy(logits, target)
    )
    logits3d, target3d = torch.randn(1, 3, 2, 3, 4), torch.randint(0, 3, (1, 2, 3, 4))
    assert focal_loss_with_logits(logits3d, target3d, reduction='none').shape == (1, 2, 3, 4)


def test_input_validation_messages():
    logits = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r'target \(N, H, W\)'):
        focal_loss_with_logits(logits, torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match='int64'):
        focal_loss_with_logits(logits, torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'\[7\]'):
        focal_loss_with_logits(logits, torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match='one weight per class'):
        focal_loss_with_logits(logits, torch.zeros(1, 4, 4, dtype=torch.long), alpha=[1.0])
    with pytest.raises(ValueError, match="'mean', 'sum' or 'none'"):
        FocalLoss(reduction='avg')
    with pytest.raises(ValueError, match='gamma'):
        focal_loss_with_logits(logits, torch.zeros(1, 4, 4, dtype=torch.long), gamma=-1.0)


# --- Dice ----------------------------------------------------------------------------------


def test_dice_matches_formula_and_perfect_prediction():
    logits, target = make_batch(c=3, ignored=0.0)
    p = torch.softmax(logits, 1)
    g = F.one_hot(target, 3).permute(0, 3, 1, 2).double()
    inter, card = (p * g).sum((0, 2, 3)), (p + g).sum((0, 2, 3))
    expected = (1 - (2 * inter + 1) / (card + 1)).mean()
    torch.testing.assert_close(dice_loss_with_logits(logits, target, smooth=1.0), expected)
    perfect = 1e4 * g
    assert dice_loss_with_logits(perfect, target, smooth=0.0) < 1e-6


def test_dice_present_classes_only():
    logits = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    target = torch.zeros(1, 2, 2, dtype=torch.long)  # only class 0 present
    only = dice_loss_with_logits(logits, target, smooth=0.0)
    # p = 1/3 everywhere: dice_0 = 2 * (4/3) / (4/3 + 4) = 0.5
    assert only.item() == pytest.approx(0.5)
    every = dice_loss_with_logits(logits, target, smooth=0.0, present_classes_only=False)
    assert every.item() == pytest.approx((0.5 + 1 + 1) / 3)


# --- Class weights -------------------------------------------------------------------------


@pytest.mark.parametrize('method', ['inverse_log', 'inverse_sqrt', 'median_freq'])
def test_class_weights(method):
    counts = [1_000_000, 10_000, 100, 0]
    w = class_weights_from_frequencies(counts, method)
    assert w.dtype == torch.float32 and w.shape == (4,)
    assert torch.isfinite(w).all()
    assert w.mean().item() == pytest.approx(1.0)
    assert w[0] < w[1] < w[2]  # rarer class, larger weight
    assert w[3] == w[2]  # an empty class gets the largest present weight


def test_class_weight_formulas():
    f = np.array([0.5, 0.3, 0.2])
    w = class_weights_from_frequencies(f * 1000, 'inverse_log').double().numpy()
    expected = 1 / np.log(1.02 + f)
    np.testing.assert_allclose(w, expected / expected.mean(), rtol=1e-6)
    w = class_weights_from_frequencies(f * 1000, 'median_freq').double().numpy()
    expected = 0.3 / f
    np.testing.assert_allclose(w, expected / expected.mean(), rtol=1e-6)


def test_class_weight_errors():
    with pytest.raises(ValueError, match='all zero'):
        class_weights_from_frequencies([0, 0])
    with pytest.raises(ValueError, match='non-negative'):
        class_weights_from_frequencies([1, -1])
    with pytest.raises(ValueError, match="'median_freq'"):
        class_weights_from_frequencies([1, 1], 'inverse')


# --- Modules and the factory ----------------------------------------------------------------


def test_modules_match_functions_and_move_buffers():
    logits, target = make_batch(dtype=torch.float32)
    alpha = [0.5, 1.0, 2.0, 0.25]
    torch.testing.assert_close(
        FocalLoss(1.5, alpha)(logits, target), focal_loss_with_logits(logits, target, 1.5, alpha)
    )
    torch.testing.assert_close(
        CrossEntropyLoss(alpha)(logits, target), cross_entropy(logits, target, alpha)
    )
    torch.testing.assert_close(DiceLoss()(logits, target), dice_loss_with_logits(logits, target))
    focal = FocalLoss(alpha=alpha).double()
    assert focal.alpha.dtype == torch.float64
    assert 'alpha' not in focal.state_dict()  # derived from data, not a learned state


def test_combined_loss_and_build_loss():
    logits, target = make_batch(dtype=torch.float32)
    combined = build_loss('focal+dice', gamma=2.0, dice_weight=0.5)
    assert isinstance(combined, CombinedLoss)
    terms = combined.terms(logits, target)
    assert set(terms) == {'focal', 'dice'}
    torch.testing.assert_close(combined(logits, target), terms['focal'] + 0.5 * terms['dice'])
    assert isinstance(build_loss('ce'), CrossEntropyLoss)
    assert isinstance(build_loss('focal'), FocalLoss)
    with pytest.raises(ValueError, match=r"'focal', 'ce', 'dice', 'focal\+dice', 'ce\+dice'"):
        build_loss('lovasz')
    with pytest.raises(ValueError, match='unknown losses'):
        CombinedLoss({'ce': CrossEntropyLoss()}, {'dice': 1.0})


def test_focal_trains_a_tiny_problem():
    # Behavioural check: gradient descent on the focal loss fits a separable problem.
    torch.manual_seed(0)
    target = torch.randint(0, 3, (1, 6, 6))
    logits = torch.zeros(1, 3, 6, 6, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=5.0)
    for _ in range(50):
        opt.zero_grad()
        focal_loss_with_logits(logits, target).backward()
        opt.step()
    assert (logits.argmax(1) == target).all()
