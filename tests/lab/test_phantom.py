"""The phantom chest X-ray set: determinism, geometry of boxes and masks, prevalence, no trivial cue."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cxrexplain_lab.phantom import FINDINGS, PhantomDataset, draw_labels, make_phantom


def test_deterministic_per_seed():
    a, b, c = make_phantom(7, size=64), make_phantom(7, size=64), make_phantom(8, size=64)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.boxes == b.boxes
    assert not np.array_equal(a.image, c.image)
    ds = PhantomDataset(5, size=32, seed=3)
    x1, y1 = ds[4]
    x2, y2 = PhantomDataset(5, size=32, seed=3)[4]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(PhantomDataset(5, size=32, seed=4)[4][0], x1)


def test_types_and_ranges():
    s = make_phantom(1, size=48, findings=list(FINDINGS))
    assert s.image.dtype == np.float32 and s.image.shape == (48, 48)
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0
    assert s.labels.dtype == np.float32 and s.labels.tolist() == [1.0] * len(FINDINGS)
    assert set(s.boxes) == set(s.masks) == set(FINDINGS)
    assert set(s.anatomy) == {"left_lung", "right_lung", "heart"}
    x, y = PhantomDataset(3, size=48)[0]
    assert x.shape == (1, 48, 48) and x.dtype == torch.float32 and y.shape == (len(FINDINGS),)


@pytest.mark.parametrize("seed", range(12))
def test_masks_inside_boxes_and_anatomy(seed):
    size = 96
    s = make_phantom(seed, size=size, findings=list(FINDINGS))
    for name, mask in s.masks.items():
        assert mask.dtype == bool and mask.shape == (size, size) and mask.any()
        x0, y0, x1, y1 = s.boxes[name]
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any(), f"{name} mask leaks out of its box"
        # The box is tight: every edge row/column touches the mask.
        assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()
    left, right, heart = s.anatomy["left_lung"], s.anatomy["right_lung"], s.anatomy["heart"]
    cols = np.arange(size)
    # Radiological convention: the patient's left lung is on the image's right; lungs do not overlap.
    assert cols[left.any(axis=0)].mean() > size / 2 > cols[right.any(axis=0)].mean()
    assert not (left & right).any() and not (left & heart).any()
    assert 0.05 < left.mean() < 0.3 and 0.05 < right.mean() < 0.3
    # Lungs are dark: darker than the heart on the same image.
    assert s.image[left | right].mean() < s.image[heart].mean()
    # Findings sit where they belong.
    lungs = left | right
    assert (s.masks["Nodule"] & lungs).sum() >= 0.5 * s.masks["Nodule"].sum()
    assert not (s.masks["Effusion"] & ~lungs).any() and not (s.masks["Pneumothorax"] & ~lungs).any()
    np.testing.assert_array_equal(s.masks["Cardiomegaly"], heart)
    assert s.masks["Nodule"].sum() < s.masks["Mass"].sum()


def test_cardiothoracic_ratio():
    def ctr(sample):
        cols = lambda m: np.flatnonzero(m.any(axis=0))  # noqa: E731
        heart = cols(sample.anatomy["heart"])
        lungs = cols(sample.anatomy["left_lung"] | sample.anatomy["right_lung"])
        return (heart[-1] - heart[0] + 1) / (lungs[-1] - lungs[0] + 1)

    big = [ctr(make_phantom(s, size=128, findings=["Cardiomegaly"])) for s in range(10)]
    normal = [ctr(make_phantom(s, size=128, findings=[])) for s in range(10)]
    assert min(big) > 0.5 > max(normal)


def test_forced_findings_and_prevalence():
    s = make_phantom(3, size=32, findings=["Mass"])
    assert s.present == ["Mass"] and list(s.boxes) == ["Mass"]
    assert make_phantom(3, size=32, findings=[]).boxes == {}
    ds = PhantomDataset(2000, size=32, seed=11, prevalence=0.2)
    labels = ds.label_matrix()
    assert labels.shape == (2000, len(FINDINGS))
    np.testing.assert_allclose(labels.mean(axis=0), 0.2, atol=0.03)
    # label_matrix agrees with the rendered items, without rendering.
    for i in (0, 17, 1999):
        np.testing.assert_array_equal(ds[i][1].numpy(), labels[i])
        np.testing.assert_array_equal(draw_labels(ds.item_seed(i), 0.2), labels[i])
    assert PhantomDataset(500, size=32, seed=1, prevalence=0.6).label_matrix().mean() == pytest.approx(0.6, abs=0.03)


def test_mean_brightness_is_no_shortcut():
    """The acquisition randomness drowns the density a finding adds: mean intensity barely predicts labels."""
    ds = PhantomDataset(600, size=48, seed=5, prevalence=0.5)
    images = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    labels = ds.label_matrix()
    means, stds = images.mean(axis=(1, 2, 3)), images.std(axis=(1, 2, 3))
    for k, name in enumerate(FINDINGS):
        for stat in (means, stds):
            r = np.corrcoef(stat, labels[:, k])[0, 1]
            assert abs(r) < 0.25, f"{name}: a global statistic correlates {r:.2f} with the label"


def test_errors():
    with pytest.raises(ValueError, match="unknown findings"):
        make_phantom(0, findings=["Hernia"])
    with pytest.raises(ValueError, match="non-negative"):
        make_phantom(-1)
    with pytest.raises(IndexError):
        PhantomDataset(3).sample(3)


def test_generation_is_fast():
    make_phantom(0, size=64)  # warm the grid caches
    start = time.perf_counter()
    for seed in range(50):
        make_phantom(seed, size=64)
    per_image = (time.perf_counter() - start) / 50
    # ~3 ms on an idle core; generous for a loaded CI machine.
    assert per_image < 0.05
