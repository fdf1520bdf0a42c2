"""Tests for semseg_ros.metrics: confusion matrix, IoU, F-beta and the Lyft score."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from semseg_ros.labels import CARLA23, CITYSCAPES29, LYFT13
from semseg_ros.metrics import (
    ConfusionMatrix,
    LyftCounts,
    MetricsError,
    lyft_binary_counts,
    lyft_class_ids,
    lyft_counts_from_confusion,
    lyft_score,
    remove_hood,
)

NAN = float('nan')


def small_cm() -> ConfusionMatrix:
    # gt:   0 0 1 1 2 2      pred: 0 1 1 1 0 2
    gt = np.array([[0, 0, 1], [1, 2, 2]], np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2]], np.uint8)
    return ConfusionMatrix(3).update(pred, gt)


def test_matrix_rows_are_ground_truth():
    cm = small_cm()
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.matrix.dtype == np.int64
    assert cm.total == 6


def test_hand_computed_scores():
    cm = small_cm()
    # class 0: tp 1, fp 1 (gt 2 -> pred 0), fn 1 -> 1/3; class 1: tp 2, fp 1, fn 0 -> 2/3;
    # class 2: tp 1, fp 0, fn 1 -> 1/2.
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    np.testing.assert_allclose(cm.precision(), [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(cm.recall(), [1 / 2, 1, 1 / 2])


def test_ignore_index_and_out_of_range_targets_are_skipped():
    gt = np.array([0, 255, 1, 7, 1])
    pred = np.array([0, 2, 1, 0, 0])
    cm = ConfusionMatrix(3).update(pred, gt)
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    # A prediction outside the range at an ignored pixel is fine; at a counted one it is not.
    cm.update(np.array([9]), np.array([255]))
    with pytest.raises(MetricsError, match=r'\[9\]'):
        cm.update(np.array([9, 0]), np.array([1, 0]))


def test_ignore_index_inside_the_range_drops_that_class():
    cm = ConfusionMatrix(3, ignore_index=0).update(np.array([0, 1, 2]), np.array([0, 1, 1]))
    np.testing.assert_array_equal(cm.matrix.sum(axis=1), [0, 2, 0])


def test_rejects_float_and_mismatched_inputs():
    with pytest.raises(MetricsError, match='argmax'):
        ConfusionMatrix(3).update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(MetricsError, match='shapes differ'):
        ConfusionMatrix(3).update(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_uint8_ids_do_not_overflow():
    # t * n + p with uint8 inputs must not wrap around at 256.
    cm = ConfusionMatrix(29).update(np.array([28], np.uint8), np.array([28], np.uint8))
    assert cm.matrix[28, 28] == 1


def test_merge_add_reset():
    a, b = small_cm(), small_cm()
    total = a + b
    np.testing.assert_array_equal(total.matrix, 2 * a.matrix)
    np.testing.assert_array_equal(a.matrix, b.matrix)  # + does not mutate
    a += b
    np.testing.assert_array_equal(a.matrix, total.matrix)
    a.merge(b)
    assert a.total == 18
    a.reset()
    assert a.total == 0
    with pytest.raises(MetricsError, match='4-class'):
        small_cm().merge(ConfusionMatrix(4))
    with pytest.raises(ValueError):
        small_cm().matrix[0, 0] = 5  # read-only view


def test_batched_update_equals_per_image_updates():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, (3, 8, 9))
    gt = rng.integers(0, 5, (3, 8, 9))
    batched = ConfusionMatrix(5).update(pred, gt)
    single = ConfusionMatrix(5)
    for p, g in zip(pred, gt, strict=True):
        single.update(p, g)
    np.testing.assert_array_equal(batched.matrix, single.matrix)


def test_nan_for_absent_classes():
    cm = ConfusionMatrix(4).update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    iou = cm.iou()
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 2) / 2)  # classes 2 and 3 not averaged
    assert np.isnan(cm.recall()[2]) and np.isnan(cm.precision()[3])
    empty = ConfusionMatrix(4)
    assert np.isnan(empty.miou()) and np.isnan(empty.pixel_accuracy())


def test_class_predicted_but_absent_from_gt_scores_zero():
    cm = ConfusionMatrix(3).update(np.array([0, 2]), np.array([0, 0]))
    assert cm.iou()[2] == 0.0
    assert np.isnan(cm.iou()[1])


@pytest.mark.parametrize('beta', [0.5, 1.0, 2.0])
def test_f_beta_matches_precision_recall_formula(beta):
    rng = np.random.default_rng(1)
    cm = ConfusionMatrix(4).update(rng.integers(0, 4, 500), rng.integers(0, 4, 500))
    p, r = cm.precision(), cm.recall()
    direct = (1 + beta**2) * p * r / (beta**2 * p + r)
    np.testing.assert_allclose(cm.f_beta(None, beta), direct)
    assert cm.f_beta(2, beta) == pytest.approx(direct[2])
    if beta == 1.0:
        m = cm.matrix
        tp, fp, fn = m[1, 1], m[:, 1].sum() - m[1, 1], m[1, :].sum() - m[1, 1]
        assert cm.f_beta(1, 1.0) == pytest.approx(2 * tp / (2 * tp + fp + fn))  # Dice


def test_normalized():
    cm = ConfusionMatrix(3).update(np.array([0, 1, 1]), np.array([0, 0, 1]))
    np.testing.assert_allclose(cm.normalized('true'), [[0.5, 0.5, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(cm.normalized('pred'), [[1, 0.5, 0], [0, 0.5, 0], [0, 0, 0]])
    assert cm.normalized('all').sum() == pytest.approx(1.0)
    with pytest.raises(MetricsError, match="'true'"):
        cm.normalized('rows')


def test_to_dict_is_json_with_null_for_nan():
    cm = ConfusionMatrix(13).update(np.array([7, 7, 10]), np.array([7, 6, 10]))
    data = json.loads(json.dumps(cm.to_dict(LYFT13), allow_nan=False))
    assert data['iou']['Roads'] == 0.5
    assert data['iou']['Vehicles'] == 1.0
    assert data['iou']['Sidewalks'] is None
    assert data['class_names'][7] == 'Roads'
    restored = ConfusionMatrix.from_matrix(np.array(data['matrix']))
    np.testing.assert_array_equal(restored.matrix, cm.matrix)
    with pytest.raises(MetricsError, match='2 class names'):
        cm.to_dict(['a', 'b'])


def test_metrics_module_does_not_import_torch():
    code = 'import sys, semseg_ros.metrics; print("torch" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


# --- Lyft score -----------------------------------------------------------------------------


def test_lyft_class_ids_per_class_set():
    assert lyft_class_ids(LYFT13) == ([7, 6], [10])
    assert lyft_class_ids('carla23') == ([7, 6], [10])
    roads, vehicles = lyft_class_ids(CITYSCAPES29)
    assert roads == [1, 24]
    assert [CITYSCAPES29.names[i] for i in vehicles] == [
        'Car', 'Truck', 'Bus', 'Train', 'Motorcycle', 'Bicycle',
    ]  # fmt: skip


def lyft_example():
    """A 600x8 frame: rows 0-99 road, rows 100-199 road lines, a car in rows 300-399, the
    hood in rows 496+. The prediction gets the lines right as road (id 7), misses half the
    car, adds 50 rows of false car and labels the hood as a car too."""
    gt = np.zeros((600, 8), np.uint8)
    gt[0:100] = 7
    gt[100:200] = 6
    gt[300:400] = 10
    gt[496:] = 10  # hood
    pred = np.zeros_like(gt)
    pred[0:200] = 7  # lines predicted as road: merged, so correct
    pred[200:250] = 7  # 50 rows of false road
    pred[300:350] = 10  # half the car
    pred[400:450] = 10  # 50 rows of false car
    pred[496:] = 10  # hood predicted as vehicle: removed, so neither right nor wrong
    return pred, gt


def test_lyft_score_on_constructed_example():
    pred, gt = lyft_example()
    counts = lyft_binary_counts(pred, gt, LYFT13)
    assert counts == LyftCounts(1600, 400, 0, 400, 400, 400)
    result = lyft_score(pred, gt, LYFT13, fps=7.5)
    # Road: P = 1600/2000 = 0.8, R = 1. F_0.5 = 1.25 * 0.8 / (0.25 * 0.8 + 1) = 5/6
    # Vehicle: P = R = 0.5, so F_2 = 0.5
    assert result['f_road'] == pytest.approx(5 / 6)
    assert result['f_vehicle'] == pytest.approx(0.5)
    assert result['fps_penalty'] == pytest.approx(2.5)
    assert result['score'] == pytest.approx(100 * (5 / 6 + 0.5) / 2 - 2.5)
    assert lyft_score(pred, gt)['score'] == pytest.approx(100 * (5 / 6 + 0.5) / 2)
    assert lyft_score(pred, gt, fps=30)['fps_penalty'] == 0.0


def test_lyft_hood_is_removed_from_both_sides():
    pred, gt = lyft_example()
    with_hood = lyft_binary_counts(pred, gt, LYFT13, hood_row=None)
    assert with_hood.vehicle_tp == 400 + 104 * 8  # the hood counted as a detected vehicle
    pred_no_hood = pred.copy()
    pred_no_hood[496:] = 0
    # Whether the model paints the hood or not makes no difference to the score.
    assert lyft_score(pred_no_hood, gt) == lyft_score(pred, gt)


def test_lyft_score_from_confusion_matrix_of_hood_removed_labels():
    pred, gt = lyft_example()
    cm = ConfusionMatrix(13).update(remove_hood(pred), remove_hood(gt))
    assert lyft_counts_from_confusion(cm) == lyft_binary_counts(pred, gt)
    assert lyft_score(cm) == lyft_score(pred, gt)


def test_lyft_counts_pool_over_frames_and_batches():
    pred, gt = lyft_example()
    pooled = lyft_binary_counts(pred, gt) + lyft_binary_counts(pred[::-1], gt[::-1])
    batched = lyft_binary_counts(np.stack([pred, pred]), np.stack([gt, gt]))
    assert batched == lyft_binary_counts(pred, gt) + lyft_binary_counts(pred, gt)
    assert lyft_score(pooled)['f_road'] is not None


def test_lyft_score_cityscapes_vehicles_and_ignore():
    gt = np.full((10, 4), CITYSCAPES29.id_of('Car'), np.uint8)
    gt[5:] = 255  # unknown colour: not counted
    pred = np.full_like(gt, CITYSCAPES29.id_of('Truck'))  # a truck is still a vehicle
    counts = lyft_binary_counts(pred, gt, 'cityscapes29', hood_row=None)
    assert counts == LyftCounts(vehicle_tp=20)
    result = lyft_score(counts, class_set=CITYSCAPES29)
    assert result['f_vehicle'] == 1.0
    assert result['f_road'] is None  # no road anywhere: undefined, not 0
    assert lyft_binary_counts(pred, gt, CARLA23, hood_row=None) == LyftCounts()


def test_lyft_score_needs_target_for_arrays():
    with pytest.raises(MetricsError, match='ground truth'):
        lyft_score(np.zeros((4, 4), np.uint8))


# --- Agreement with torchmetrics ------------------------------------------------------------


def test_agrees_with_torchmetrics_jaccard():
    torch = pytest.importorskip('torch', reason='torch is needed for the torchmetrics check')
    tm = pytest.importorskip(
        'torchmetrics.classification',
        reason='torchmetrics not installed: cannot cross-check IoU against it',
    )
    num_classes = 6
    rng = np.random.default_rng(2)
    # Classes 4 and 5 never occur in gt or pred, class 3 only in pred; some pixels ignored.
    gt = rng.integers(0, 3, (2, 17, 23))
    pred = rng.integers(0, 4, (2, 17, 23))
    gt[:, :3] = 255
    ours = ConfusionMatrix(num_classes).update(pred, gt)

    kwargs = {'num_classes': num_classes, 'ignore_index': 255}
    per_class = tm.MulticlassJaccardIndex(average=None, **kwargs)
    macro = tm.MulticlassJaccardIndex(average='macro', **kwargs)
    per_class.update(torch.from_numpy(pred), torch.from_numpy(gt))
    macro.update(torch.from_numpy(pred), torch.from_numpy(gt))
    theirs = per_class.compute().double().numpy()

    # torchmetrics writes its zero_division value (0) for classes absent from both gt and
    # pred, where we write NaN; its 'macro' average then drops those classes (weight 0), so
    # it equals our nanmean. Compare where defined, and check that the NaNs sit exactly where
    # torchmetrics had nothing to divide.
    iou = ours.iou()
    absent = np.isnan(iou)
    np.testing.assert_array_equal(np.flatnonzero(absent), [4, 5])
    np.testing.assert_allclose(iou[~absent], theirs[~absent], rtol=1e-6)
    np.testing.assert_array_equal(theirs[absent], 0.0)
    assert iou[3] == 0.0  # predicted but never true: a real 0 in both
    assert ours.miou() == pytest.approx(float(macro.compute()), rel=1e-6)
