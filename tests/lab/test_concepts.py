"""Concept counts ([Khakzar2022] §4): 8-connected labelling against scipy, and disjoint / unique counts on
hand-made maps and boxes (ties at the threshold, a diagonal pair, a component touching a box by one cell)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from cxrexplain_lab.concepts import components_in_region, concept_counts, concept_threshold_rank, label_components
from cxrexplain_lab.units import AnnotatedImage, box_masks


def _same_partition(ours: np.ndarray, reference: np.ndarray) -> bool:
    """Both labellings put the same cells together (label values differ)."""
    pairs = {(int(a), int(b)) for a, b in zip(ours.ravel(), reference.ravel(), strict=True)}
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.mark.parametrize("density", [0.2, 0.45, 0.7])
def test_label_components_matches_scipy_8_connectivity(density: float) -> None:
    rng = np.random.default_rng(7)
    maps = rng.random((6, 23, 17)) < density
    labels = label_components(torch.from_numpy(maps)).numpy()
    for m, ours in zip(maps, labels, strict=True):
        reference, count = ndimage.label(m, structure=np.ones((3, 3)))
        assert _same_partition(ours, reference)
        assert len(np.unique(ours[m])) == count and (ours[~m] == 0).all()


def test_label_components_diagonal_and_spiral() -> None:
    diagonal = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.unique(label_components(diagonal)[diagonal]).numel() == 1  # 4-connectivity would give 3
    spiral = np.zeros((9, 9), bool)  # one long path: many propagation steps without pointer jumping
    spiral[0, :] = spiral[:, 8] = spiral[8, :] = spiral[2:, 0] = spiral[2, :7] = spiral[2:7, 6] = True
    spiral[6, 2:7] = spiral[4:7, 2] = True
    got = label_components(torch.from_numpy(spiral)).numpy()
    reference, _ = ndimage.label(spiral, structure=np.ones((3, 3)))
    assert _same_partition(got, reference)


def test_components_in_region() -> None:
    labels = torch.tensor([[[1, 0, 3], [0, 0, 3]], [[0, 0, 0], [0, 0, 0]]])
    region = torch.tensor([[True, False, False], [False, False, True]])
    assert components_in_region(labels, region).tolist() == [2, 0]


class Units(nn.Module):
    """The input's channels are the units of layer ``units``, optionally average-pooled."""

    def __init__(self, pool: int = 1) -> None:
        super().__init__()
        self.units = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x * self.scale).mean(dim=(2, 3))


def _cells(*cells: tuple[int, int], value: float = 1.0, into: torch.Tensor) -> None:
    for y, x in cells:
        into[y, x] = value


def test_hand_made_counts() -> None:
    # Two 6x6 images, two channels; n = 72 values per channel, q = 0.1: tau = the ceil(7.2) = 8th largest.
    maps = torch.zeros(2, 2, 6, 6)
    # channel 0, exactly 8 cells at 1 (tau = 1). Image 0's box is rows 0-2, cols 0-2:
    _cells((2, 2), (2, 3), (2, 4), into=maps[0, 0])  # touches the box by one cell, (2, 2): counts
    _cells((5, 5), into=maps[0, 0])  # outside: does not count
    _cells((0, 1), (1, 0), into=maps[0, 0])  # a diagonal pair inside the box: one component
    _cells((5, 0), (5, 1), into=maps[1, 0])  # image 1: outside its box (rows 0-1, cols 3-5)
    # channel 1: five cells at 2 and six at 1, so the 8th largest is 1 and every tied cell is on (11, not 8)
    _cells((4, 0), (4, 1), (4, 2), (4, 3), (4, 4), value=2.0, into=maps[0, 1])  # outside image 0's box
    _cells((0, 3), (1, 4), into=maps[1, 1])  # tied cells, diagonal pair in image 1's box: one component
    _cells((0, 0), (1, 0), (3, 3), (5, 5), into=maps[1, 1])
    data = [
        AnnotatedImage(maps[0], box_masks({"mass": [(0, 0, 3, 3)]}, (6, 6))),
        AnnotatedImage(maps[1], box_masks({"nodule": [(3, 0, 6, 2)]}, (6, 6))),
        AnnotatedImage(torch.zeros(2, 6, 6), {}),  # no box: not counted (its zeros still enter tau's data)
    ]
    assert concept_threshold_rank(72, 0.1) == 8 and concept_threshold_rank(108, 0.1) == 11
    counts = concept_counts(Units(), "units", data[:2], q=0.1, batch_size=1)
    assert counts.thresholds.tolist() == [1.0, 1.0]
    assert counts.components.tolist() == [2, 1] and counts.images_with.tolist() == [1, 1]
    assert counts.images == 2
    assert counts.disjoint == pytest.approx(3 / 2)  # (2 + 0) + (0 + 1) over 2 images
    assert counts.unique == pytest.approx(2 / 2)  # one channel in each image
    # restricting the boxes to one concept drops image 1
    only_mass = concept_counts(Units(), "units", data[:2], q=0.1, concepts=["mass"])
    assert only_mass.images == 1 and only_mass.disjoint == pytest.approx(2.0)
    # the box-less image enters tau's data but not the counts: n = 108, tau = the 11th largest, 0 on channel 0
    # (8 ones), so all of channel 0 is on: one component per image, each in its box
    with_empty = concept_counts(Units(), "units", data, q=0.1)
    assert with_empty.thresholds.tolist() == [0.0, 1.0] and with_empty.images == 2
    assert with_empty.components.tolist() == [2, 1] and with_empty.images_with.tolist() == [2, 1]


def test_maps_upsampled_to_the_box_size() -> None:
    # The layer halves the 4x4 input: its map [[4, 0], [0, 0]]; n = 4, q = 0.25: tau = the largest, 4.
    # Upsampled to 4x4 (half-pixel centres) only the top-left pixel reaches 4 (its neighbours: 3, 2.25).
    image = torch.zeros(1, 4, 4)
    image[0, :2, :2] = 4.0
    inside = concept_counts(Units(pool=2), "units", [AnnotatedImage(image, box_masks({"c": [(0, 0, 1, 1)]}, (4, 4)))],
                            q=0.25)
    beside = concept_counts(Units(pool=2), "units", [AnnotatedImage(image, box_masks({"c": [(1, 0, 4, 4)]}, (4, 4)))],
                            q=0.25)
    assert inside.thresholds.tolist() == [4.0]
    assert inside.components.tolist() == [1] and beside.components.tolist() == [0]
