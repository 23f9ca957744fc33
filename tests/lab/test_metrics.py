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


def test_iou_min_max_normalization():
    # [[-2, 2], [0, 6]]: positive part / max = [[0, 1/3], [0, 1]]; min-max (A + 2) / 8 = [[0, 0.5], [0.25, 1]].
    heat = np.array([[-2.0, 2.0], [0.0, 6.0]])
    np.testing.assert_allclose(metrics.normalize(heat, "minmax"), [[0.0, 0.5], [0.25, 1.0]])
    bottom = (0, 1, 2, 2)  # the bottom row
    # T = 0.2: positive keeps (0, 1), (1, 1) -> intersection 1, union 3; min-max also keeps (1, 0) -> 2 of 3.
    assert metrics.iou_at_threshold(heat, bottom, 0.2) == pytest.approx(1 / 3)
    assert metrics.iou_at_threshold(heat, bottom, 0.2, normalization="minmax") == pytest.approx(2 / 3)
    assert metrics.iou_at_threshold(heat, bottom, 0.3, normalization="minmax") == pytest.approx(1 / 3)
    assert metrics.iou_at_threshold(heat, bottom, 0.6, normalization="minmax") == pytest.approx(1 / 2)
    table = metrics.iou_table(heat[None], [bottom], thresholds=(0.2, 0.3, 0.6), normalization="minmax")
    np.testing.assert_allclose(table, [[2 / 3, 1 / 3, 1 / 2]])
    # A constant map points nowhere: zero after min-max, so it selects nothing.
    assert metrics.iou_at_threshold(np.full((2, 2), 3.0), bottom, 0.1, normalization="minmax") == 0.0
    with pytest.raises(ValueError, match="normalization is one of"):
        metrics.normalize(heat, "max")


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


def test_best_case_iou_never_selects_zeros():
    # One positive pixel, far from an 8-pixel mask in the top rows. Filling the top-8 with zeros in raster order
    # (the old behaviour) took (0, 0) .. (0, 6), four of them inside the mask: 4 / (8 + 8 - 4) = 0.33.
    heat = np.zeros((8, 8))
    heat[7, 7] = 1.0
    mask = np.zeros((8, 8), bool)
    mask[0:2, 2:6] = True
    assert metrics.best_case_iou(heat, mask) == 0.0
    # Fewer positive pixels than p, both inside the 4-pixel mask: they alone are kept, 2 / 4.
    heat2 = np.zeros((4, 4))
    heat2[1, 1] = heat2[1, 2] = 0.5
    mask2 = np.zeros((4, 4), bool)
    mask2[1:3, 1:3] = True
    assert metrics.best_case_iou(heat2, mask2) == pytest.approx(0.5)
    assert metrics.best_case_iou(np.zeros((4, 4)), mask2) == 0.0  # an all-zero map selects nothing


def test_best_case_iou_keeps_ties():
    # p = 2; the 2nd largest value is 3, shared by three pixels: the cut keeps 5 and every 3 (4 pixels).
    heat = np.array([[5.0, 3.0, 0.0], [3.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    mask = np.zeros((3, 3), bool)
    mask[0, 0:2] = True  # the 5 and one of the 3s -> intersection 2, union 4
    assert metrics.best_case_iou(heat, mask) == pytest.approx(2 / 4)
    # The tie order does not matter: the mask on another of the 3s scores the same.
    mask_other = np.zeros((3, 3), bool)
    mask_other[0, 0] = mask_other[2, 0] = True
    assert metrics.best_case_iou(heat, mask_other) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.best_case_iou(heat - 2.0, mask)


def test_soft_iobb_ior_same_size():
    # Min-max of [[1, 1, 1, 1], [1, 3, 5, 1], [1, 5, 5, 1], [1, 1, 1, 1]] is (A - 1) / 4: zero outside, the centre
    # 2x2 block 0.5, 1, 1, 1 (sum 3.5, all of the map's mass).
    heat = np.ones((4, 4))
    heat[1:3, 1:3] = [[3.0, 5.0], [5.0, 5.0]]
    assert metrics.soft_iobb_ior(heat, [(1, 1, 3, 3)], (4, 4)) == pytest.approx((3.5 / 4, 1.0))
    # A second box of the same finding adds one empty pixel to the union: IoBB 3.5 / 5, IoR unchanged.
    assert metrics.soft_iobb_ior(heat, [(1, 1, 3, 3), (0, 0, 1, 1)], (4, 4)) == pytest.approx((3.5 / 5, 1.0))
    # Overlapping boxes count their pixels once (a union, not a sum).
    assert metrics.soft_iobb_ior(heat, [(1, 1, 3, 3), (1, 1, 2, 3)], (4, 4)) == pytest.approx((3.5 / 4, 1.0))
    # Negative values: [[-2, 0], [2, 6]] -> (A + 2) / 8 = [[0, 0.25], [0.5, 1]]; the left column holds 0 + 0.5 of
    # 1.75 over 2 pixels.
    signed = np.array([[-2.0, 0.0], [2.0, 6.0]])
    assert metrics.soft_iobb_ior(signed, [(0, 0, 1, 2)], (2, 2)) == pytest.approx((0.25, 0.5 / 1.75))
    assert metrics.soft_iobb_ior(np.full((4, 4), 2.0), [(1, 1, 3, 3)], (4, 4)) == (0.0, 0.0)  # constant map


def test_soft_iobb_ior_resizes_to_the_image():
    # [[0, 1], [0, 1]] resized bilinearly (align_corners=False) to 4x4: every row is 0, 0.25, 0.75, 1 (the source
    # columns sampled at -0.25 -> clamped 0, 0.25, 0.75, 1.25 -> clamped 1). The right half holds 1.75 per row
    # of 2 per row over 2 pixels per row.
    cam = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    iobb, ior = metrics.soft_iobb_ior(cam, [(2, 0, 4, 4)], (4, 4))
    assert (iobb, ior) == pytest.approx((7 / 8, 7 / 8))
    with pytest.raises(ValueError, match="at least one box"):
        metrics.soft_iobb_ior(cam, [], (4, 4))


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
