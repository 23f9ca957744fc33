"""The metrics module against hand-computed values, scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxrexplain_lab import metrics
from cxrexplain_render import normalize_for_display


def test_normalize_for_display():
    maps = np.array([[[-2.0, 1.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[-1.0, -3.0], [-0.5, -2.0]]])
    out = normalize_for_display(torch.from_numpy(maps))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[0.0, 0.25], [0.5, 1.0]])
    assert (out[1] == 0).all() and (out[2] == 0).all()  # all-zero and all-negative maps stay zero


def test_iou_at_threshold_known_box():
    # Normalized map: a 4x4 block of 1.0 at rows 2..5, cols 2..5, a 2x2 block of 0.3 at rows 0..1, cols 0..1.
    heat = np.zeros((8, 8))
    heat[2:6, 2:6] = 10.0
    heat[0:2, 0:2] = 3.0
    heat[7, 7] = -5.0  # negatives never count
    box = (2, 2, 6, 6)  # x0, y0, x1, y1 (exclusive): exactly the bright block
    assert metrics.iou_at_threshold(heat, box, 0.5) == pytest.approx(1.0)
    # At T = 0.2 the dim block joins: intersection 16, union 16 + 4.
    assert metrics.iou_at_threshold(heat, box, 0.2) == pytest.approx(16 / 20)
    # A box half over the bright block: rows 2..5, cols 4..7 -> intersection 8, union 16 + 16 - 8.
    assert metrics.iou_at_threshold(heat, (4, 2, 8, 6), 0.5) == pytest.approx(8 / 24)
    # An all-zero map selects nothing.
    assert metrics.iou_at_threshold(np.zeros((8, 8)), box, 0.1) == 0.0


def test_iou_table_matches_single_calls():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 16, 16))
    boxes = [(0, 0, 8, 8), (4, 4, 12, 16), (10, 2, 16, 9)]
    table = metrics.iou_table(torch.from_numpy(maps), boxes)
    assert table.shape == (3, 5)
    for i in range(3):
        for j, t in enumerate(metrics.IOU_THRESHOLDS):
            assert table[i, j] == pytest.approx(metrics.iou_at_threshold(maps[i], boxes[i], t))
    summary = metrics.iou_summary(table)
    assert list(summary) == list(metrics.IOU_THRESHOLDS)
    # A mask works where a box does.
    mask = np.zeros((16, 16), bool)
    mask[0:8, 0:8] = True
    assert metrics.iou_at_threshold(maps[0], mask, 0.3) == pytest.approx(table[0, 2])


def test_best_case_iou():
    heat = np.arange(16, dtype=float).reshape(4, 4)  # the top-4 pixels are the last row
    mask = np.zeros((4, 4), bool)
    mask[3, :] = True
    assert metrics.best_case_iou(heat, mask) == pytest.approx(1.0)
    mask2 = np.zeros((4, 4), bool)
    mask2[2:4, 2:4] = True  # 4 pixels; top-4 = row 3 -> intersection 2, union 6
    assert metrics.best_case_iou(heat, mask2) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="empty"):
        metrics.best_case_iou(heat, np.zeros((4, 4), bool))


def test_spearman_against_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=200).astype(float)  # many ties
    b = a + rng.normal(scale=2.0, size=200)
    b[:50] = np.round(b[:50])
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)
    maps_a, maps_b = rng.normal(size=(4, 8, 8)), rng.normal(size=(4, 8, 8))
    batched = metrics.spearman(torch.from_numpy(maps_a), maps_b)
    expected = [stats.spearmanr(maps_a[i].ravel(), maps_b[i].ravel()).statistic for i in range(4)]
    np.testing.assert_allclose(batched, expected, rtol=1e-12)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)


def test_auroc_against_sklearn_with_ties():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=(300, 3))
    scores = np.round(y * 0.4 + rng.uniform(size=(300, 3)), 1)  # rounded: ties across classes
    ours = metrics.auroc(torch.from_numpy(scores), y)
    for k in range(3):
        assert ours[k] == pytest.approx(roc_auc_score(y[:, k], scores[:, k]), rel=1e-12)
    assert metrics.auroc(scores[:, 0], y[:, 0]) == pytest.approx(ours[0])
    assert metrics.auroc([0.1, 0.2, 0.3], [1, 1, 1]) != metrics.auroc([0.1, 0.2, 0.3], [1, 1, 1])  # NaN


def test_youden_threshold_separates():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    t = metrics.youden_threshold(scores, labels)
    assert 0.4 < t < 0.6
    assert ((scores >= t) == labels.astype(bool)).all()
