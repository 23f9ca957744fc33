"""Network Dissection ([Khakzar2021] eq. 5): exact streamed thresholds, hand-computed IoUs (the sums over the
images that contain the concept, upsampling to the annotation size), labels and counts, and a planted detector
unit found while a random unit is not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrexplain_lab.dissection import DissectionResult, dissect, dissection_threshold_rank
from cxrexplain_lab.units import AnnotatedImage, box_masks, from_phantoms, kth_largest_per_unit


class Units(nn.Module):
    """The input's channels are the units of layer ``units``."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.Identity()
        self.scale = nn.Parameter(torch.ones(1))  # a parameter, so the data goes to the model's device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x * self.scale).mean(dim=(2, 3))


def test_streamed_threshold_is_the_exact_order_statistic() -> None:
    torch.manual_seed(0)
    images = torch.randn(7, 3, 5, 4)
    data = [AnnotatedImage(image=im) for im in images]
    n = 7 * 5 * 4
    rank = dissection_threshold_rank(n, 0.05)
    assert rank == math.floor(0.05 * n) + 1 == 8
    expected = images.transpose(0, 1).reshape(3, -1).sort(dim=1, descending=True).values[:, rank - 1]
    for batch_size in (1, 3, 7):
        got = kth_largest_per_unit(Units(), "units", data, lambda m: dissection_threshold_rank(m, 0.05), batch_size)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # P(a_k > T_k) = floor(q n) / n: exactly 7 of the 140 values lie above
    assert (images.transpose(0, 1).reshape(3, -1) > expected[:, None]).sum(dim=1).tolist() == [7, 7, 7]


def test_hand_computed_iou() -> None:
    # One unit, two 2x2 images; n = 8, q = 0.25: T = the 3rd largest value = 2.
    im0 = torch.tensor([[[4.0, 3.0], [0.0, 0.0]]])  # M = top row
    im1 = torch.tensor([[[2.0, 1.0], [0.0, 0.0]]])  # M = top-left cell
    a = np.array([[1, 0], [0, 0]], bool)
    b = np.array([[0, 1], [0, 0]], bool)
    c = np.zeros((4, 4), bool)
    c[:2, :2] = True
    data = [
        AnnotatedImage(im0, {"a": a, "b": np.zeros((2, 2), bool), "c": c}),  # an all-false mask: b is absent
        AnnotatedImage(im1, {"b": b}),
    ]
    result = dissect(Units(), "units", data, quantile=0.25)
    assert result.thresholds.tolist() == [2.0]
    assert result.images_with.tolist() == [1, 1, 1]
    # a: only image 0 contains it, so image 1's mask pixel does not enter the union: 1 / 2 (not 1 / 3)
    # b: only image 1: M = {(0, 0)}, L = {(0, 1)}: 0 / 2
    # c: the map upsampled to 4x4 (half-pixel centres) is >= 2 on its top two rows (row 1: 3, 2.81, 2.44, 2.25;
    #    row 2: 1, ...), 8 pixels, of which the 2x2 concept is 4: 4 / 8
    assert result.intersection.tolist() == [[1, 0, 4]] and result.union.tolist() == [[2, 2, 8]]
    torch.testing.assert_close(result.iou, torch.tensor([[0.5, 0.0, 0.5]], dtype=torch.float64))
    assert result.rows()[0] == {"layer": "units", "unit": 0, "concept": "a", "iou": 0.5, "detector": True}


def test_labels_counts_and_best_units() -> None:
    result = DissectionResult(
        layer="l", concepts=("lung", "nodule", "unseen"),
        thresholds=torch.zeros(3),
        intersection=torch.tensor([[1, 1, 0], [1, 5, 0], [0, 3, 0]]),
        union=torch.tensor([[10, 10, 0], [100, 100, 0], [100, 100, 0]]),
        images_with=torch.tensor([4, 2, 0]),
    )
    labels = result.unit_labels()
    # unit 0 ties (0.1, 0.1): the first concept; unit 2: 0.03 < 0.04, labelled but no detector
    assert [(u.concept, u.detector) for u in labels] == [("lung", True), ("nodule", True), ("nodule", False)]
    assert result.detector_counts() == {"lung": 1, "nodule": 1, "unseen": 0}
    assert result.best_units() == {"lung": (0, pytest.approx(0.1)), "nodule": (0, pytest.approx(0.1))}
    assert math.isnan(result.iou[0, 2].item())


def test_box_masks_union_of_boxes() -> None:
    masks = box_masks({"mass": [(0, 0, 2, 1), (1, 0, 3, 2)], "none": []}, (3, 4))
    assert masks["mass"].astype(int).tolist() == [[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert not masks["none"].any()


class PlantedNet(nn.Module):
    """``features``: conv 3x3 -> ReLU -> 2x2 average pool (so the maps are upsampled). Unit 0 is a box filter
    (fires on bright flat regions: the ``spot`` concept); unit 1 has random zero-sum weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            conv.weight[0] = 1.0 / 9
            conv.weight[1] -= conv.weight[1].mean()
            conv.bias.zero_()
        self.features = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _planted_data(n: int = 24, size: int = 32) -> list[AnnotatedImage]:
    rng = np.random.default_rng(0)
    data = []
    for _ in range(n):
        image = rng.normal(0.0, 0.3, (size, size)).astype(np.float32)
        y, x = rng.integers(0, size - 4, 2)
        spot = np.zeros((size, size), bool)
        spot[y : y + 4, x : x + 4] = True
        image[spot] += 2.0
        dy, dx = rng.integers(0, size - 6, 2)
        image[dy : dy + 6, dx : dx + 6] -= 2.0  # a dark square, given as a box
        masks = {"spot": spot, **box_masks({"dark": [(int(dx), int(dy), int(dx) + 6, int(dy) + 6)]}, (size, size))}
        data.append(AnnotatedImage(torch.from_numpy(image)[None], masks))
    return data


def test_planted_detector_found_and_random_unit_not() -> None:
    result = dissect(PlantedNet().eval(), "features", _planted_data(), batch_size=5)
    labels = result.unit_labels()
    assert labels[0].concept == "spot" and labels[0].detector, result.iou
    assert result.iou[0, result.concepts.index("spot")] > 2 * 0.04  # measured 0.12
    assert not labels[1].detector and result.iou[1].max() < 0.04, result.iou
    assert result.detector_counts() == {"spot": 1, "dark": 0}
    assert result.best_units()["spot"][0] == 0


def test_from_phantoms_carries_anatomy_and_findings() -> None:
    from cxrexplain_lab.phantom import make_phantom

    sample = make_phantom(5, size=32, findings=["Nodule"])
    (item,) = from_phantoms([sample])
    assert item.image.shape == (1, 32, 32)
    assert set(item.masks) == {"left_lung", "right_lung", "heart", "Nodule"}
    assert np.array_equal(item.masks["Nodule"], sample.masks["Nodule"])
