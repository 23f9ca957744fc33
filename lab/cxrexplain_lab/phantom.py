"""Procedural phantom chest X-rays with findings, boxes and masks (the demo and test data set).

No chest X-ray data can be fetched on these machines, so the project trains its demo models on images drawn
here: a PA-view thorax (body outline, lungs with vessel markings, mediastinum, heart, spine, ribs, clavicles,
diaphragm) whose findings come with exact masks and boxes, so localization can be measured.

Conventions
-----------
* Images are float32 (H, W) in [0, 1]; bright means dense (bone, heart), dark means air (lungs).
* PA view in radiological convention: the patient's *left* is the image's *right*, so ``"left_lung"`` is the
  lung on the right half of the image and the heart bulges to the image's right.
* Boxes are ``(x0, y0, x1, y1)`` in pixels with ``x1``/``y1`` exclusive, i.e. ``mask[y0:y1, x0:x1]``.

Everything is drawn in normalized coordinates (x, y in [-1, 1], y down) after a random global similarity
transform, then passed through a random acquisition (window, gamma, blur, noise) so that no global statistic
such as the mean brightness gives a label away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Nodule", "Mass", "Effusion", "Pneumothorax")
ANATOMY: tuple[str, ...] = ("left_lung", "right_lung", "heart")

# Stream ids for np.random.default_rng([seed, stream]): labels are drawn from their own stream so a data set's
# label matrix is known without rendering any image.
_LABEL_STREAM, _RENDER_STREAM = 0, 1


@dataclass
class PhantomSample:
    """One phantom: image, labels in :data:`FINDINGS` order, and per-finding boxes and masks."""

    image: np.ndarray
    labels: np.ndarray
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def present(self) -> list[str]:
        """Names of the findings present, in :data:`FINDINGS` order."""
        return [name for name, y in zip(FINDINGS, self.labels, strict=True) if y > 0.5]


def _check_seed(seed: int) -> None:
    if int(seed) < 0:
        raise ValueError(f"phantom seeds are non-negative integers, got {seed}")


def draw_labels(seed: int, prevalence: float = 0.3) -> np.ndarray:
    """The label vector :func:`make_phantom` uses for ``seed`` when ``findings`` is None (no rendering)."""
    _check_seed(seed)
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence is a probability in [0, 1], got {prevalence}")
    rng = np.random.default_rng([int(seed), _LABEL_STREAM])
    return (rng.random(len(FINDINGS)) < prevalence).astype(np.float32)


# ----------------------------------------------------------------------------------------------- primitives


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return xx, yy


@lru_cache(maxsize=8)
def _freq2(size: int) -> np.ndarray:
    fy = np.fft.fftfreq(size).astype(np.float32)
    fx = np.fft.rfftfreq(size).astype(np.float32)
    return fy[:, None] ** 2 + fx[None, :] ** 2


def _smooth(field_: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur through the FFT (periodic borders; the image borders are body-free air, so harmless)."""
    if sigma_px <= 0:
        return field_
    kernel = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * _freq2(field_.shape[0]))
    return np.fft.irfft2(np.fft.rfft2(field_) * kernel, s=field_.shape).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Unit-variance low-pass noise with correlation length ``sigma_px``."""
    n = _smooth(rng.standard_normal((size, size)).astype(np.float32), sigma_px)
    return n / (n.std() + 1e-8)


def _soft_inside(f: np.ndarray, softness: float) -> np.ndarray:
    """1 inside (f < 1), 0 outside, with a smooth edge of width ``softness`` (f is an implicit shape function)."""
    return np.clip(0.5 + (1.0 - f) / (2.0 * softness), 0.0, 1.0)


def _below(v: np.ndarray, edge: np.ndarray | float, softness: float) -> np.ndarray:
    """1 where ``v < edge``, 0 where ``v > edge``, with a smooth step of width ``softness`` (same units)."""
    return np.clip(0.5 + (edge - v) / (2.0 * softness), 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ----------------------------------------------------------------------------------------------- the phantom


@dataclass
class _Anatomy:
    """Random anatomy parameters in normalized coordinates (before the global transform)."""

    lung_cx: float      # lateral offset of each lung centre
    lung_a: float       # lung half width
    lung_b: float       # lung half height
    lung_cy: float
    dome_y: tuple[float, float]  # diaphragm dome height (image-left, image-right)
    heart_cx: float
    heart_cy: float
    heart_a: float      # heart half width: cardiothoracic ratio = 2 * heart_a / thorax width
    heart_b: float
    rib_y0: float
    rib_step: float


def _draw_anatomy(rng: np.random.Generator, cardiomegaly: bool) -> _Anatomy:
    lung_cx = rng.uniform(0.34, 0.40)
    lung_a = rng.uniform(0.25, 0.30)
    thorax = 2.0 * (lung_cx + lung_a)
    # Cardiothoracic ratio: normal 0.36-0.46, enlarged 0.55-0.66 (> 0.5 is the radiological criterion).
    ctr = rng.uniform(0.55, 0.66) if cardiomegaly else rng.uniform(0.36, 0.46)
    heart_a = ctr * thorax / 2.0
    dome = rng.uniform(0.36, 0.50)
    heart_b = rng.uniform(0.21, 0.27) * (1.0 + 0.5 * (heart_a - 0.26))
    return _Anatomy(
        lung_cx=lung_cx, lung_a=lung_a, lung_b=rng.uniform(0.56, 0.64), lung_cy=rng.uniform(-0.12, -0.04),
        dome_y=(dome - rng.uniform(0.02, 0.06), dome),
        heart_cx=0.1 * heart_a / 0.3 + rng.uniform(0.0, 0.05), heart_cy=dome - heart_b * rng.uniform(0.6, 0.75),
        heart_a=heart_a, heart_b=heart_b,
        rib_y0=rng.uniform(-0.80, -0.72), rib_step=rng.uniform(0.115, 0.135),
    )


def _transform(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixel grid mapped back through a random similarity transform (patient position and scale)."""
    xx, yy = _pixel_grid(size)
    angle = np.deg2rad(rng.uniform(-6.0, 6.0))
    scale = rng.uniform(0.88, 1.08)
    tx, ty = rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06)
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = (xx - tx) / scale, (yy - ty) / scale
    return (cos * x + sin * y).astype(np.float32), (-sin * x + cos * y).astype(np.float32)


def make_phantom(
    seed: int, size: int = 224, findings: Sequence[str] | None = None, prevalence: float = 0.3
) -> PhantomSample:
    """Draw one phantom chest X-ray, deterministically from ``seed``.

    Parameters
    ----------
    seed
        Non-negative integer; the same seed (and arguments) gives the same sample.
    size
        Side of the square image in pixels.
    findings
        ``None``: each finding of :data:`FINDINGS` is present independently with probability ``prevalence``;
        a sequence forces exactly those findings (names from :data:`FINDINGS`, case-sensitive).
    prevalence
        Probability of each finding when ``findings`` is None.

    Returns
    -------
    PhantomSample
        The image, its labels, and a box and a mask for every present finding.
    """
    if findings is None:
        labels = draw_labels(seed, prevalence)
    else:
        _check_seed(seed)
        unknown = [f for f in findings if f not in FINDINGS]
        if unknown:
            raise ValueError(f"unknown findings {unknown}; choose from {', '.join(FINDINGS)}")
        labels = np.array([name in findings for name in FINDINGS], dtype=np.float32)
    if size < 16:
        raise ValueError(f"phantoms need at least 16 px, got size={size}")
    on = {name: bool(v) for name, v in zip(FINDINGS, labels, strict=True)}
    rng = np.random.default_rng([int(seed), _RENDER_STREAM])
    px = 2.0 / size  # one pixel in normalized units
    soft = 1.5 * px

    an = _draw_anatomy(rng, on["Cardiomegaly"])
    x, y = _transform(rng, size)
    ax = np.abs(x)

    # Body: trunk with rounded shoulders narrowing to the neck; the abdomen runs off the bottom edge.
    trunk = rng.uniform(0.84, 0.94)
    rise = np.sqrt(np.clip((y + 0.98) / 0.42, 0.0, 1.0))  # 0 at the neck's top, 1 below the shoulders
    half_width = 0.17 + (trunk - 0.17) * rise
    body = _below(ax, half_width, soft) * _below(-y, 1.05, soft)

    # Lungs: rounded apices, straight-ish lateral walls down to the diaphragm domes (sharp costophrenic
    # angles), cut medially by the mediastinum and by the heart.
    lung_soft = np.zeros((2, size, size), np.float32)
    lung_ell = np.zeros((2, size, size), np.float32)
    for k, side in enumerate((-1.0, 1.0)):
        cx = side * an.lung_cx
        dy = np.maximum(y - an.lung_cy, 0.0) * 0.35 + np.minimum(y - an.lung_cy, 0.0)
        f = np.sqrt(((x - cx) / an.lung_a) ** 2 + (dy / an.lung_b) ** 2)
        dome = an.dome_y[k] + 0.16 * ((x - cx) / an.lung_a) ** 2  # convex up, lower laterally
        lung_ell[k] = f
        lung_soft[k] = _soft_inside(f, soft / an.lung_a) * _below(y, dome, soft) * _below(-side * x, -0.07, soft)
    heart_f = _ellipse(x, y, an.heart_cx, an.heart_cy, an.heart_a, an.heart_b)
    heart = _soft_inside(heart_f, soft / an.heart_a)
    lung_soft *= 1.0 - heart[None]
    lungs = lung_soft.sum(axis=0)
    below_domes = 1.0 - _below(y, np.where(x < 0, np.float32(an.dome_y[0]), np.float32(an.dome_y[1])) + 0.16 * (
        (ax - an.lung_cx) / an.lung_a) ** 2, 3 * soft)

    # Mediastinum (a column from the neck down into the heart) with the air-filled trachea; the spine.
    med_half = 0.10 + 0.08 * np.clip((y + 0.3) / 0.5, 0.0, 1.0)
    mediastinum = _below(ax, med_half, soft) * _below(y, an.heart_cy, soft)
    trachea = _below(ax, 0.035, soft) * _below(y, an.lung_cy - 0.25, 2 * soft)
    spine = _below(ax, 0.065, soft)
    vertebrae = 0.5 + 0.5 * np.cos(np.pi * (y - an.rib_y0) / an.rib_step) ** 8

    # Ribs are equally spaced, so one periodic profile of (y - arc(x)) draws them all: posterior ribs rise
    # from the spine and curve down laterally, fainter anterior ribs slope down towards the midline.
    cage = _soft_inside(_ellipse(x, y, 0.0, an.lung_cy - 0.02, an.lung_cx + an.lung_a + 0.07, an.lung_b + 0.1),
                        0.08) * (1.0 - below_domes * 0.7)
    t = ax - 0.06
    phase = (y - an.rib_y0 + 0.12 * t - 0.85 * t**2) / an.rib_step
    d = (phase - np.round(phase)) * an.rib_step
    posterior = np.exp(-((d / (0.02 + 0.012 * t)) ** 2)) * (t > 0) * (phase > -0.5) * (phase < 9.5)
    phase_a = (y - an.rib_y0 - 0.55 + 0.45 * (0.75 - ax)) / (an.rib_step * 1.4)
    d_a = (phase_a - np.round(phase_a)) * an.rib_step * 1.4
    anterior = np.exp(-((d_a / 0.03) ** 2)) * (ax > 0.2) * (phase_a > -0.5) * (phase_a < 4.5)
    ribs = (posterior + 0.35 * anterior) * cage
    clav_t = np.clip((ax - 0.07) / 0.5, 0.0, 1.0)
    clav_y = rng.uniform(-0.76, -0.68) - 0.08 * clav_t + 0.15 * clav_t**2 * (1 - clav_t)
    clavicle = np.exp(-(((y - clav_y) / 0.028) ** 2)) * (ax > 0.05) * (ax < 0.62)

    # Lung markings: ridges of band-limited noise look like vessels; they fade towards the periphery.
    n = _smooth_noise(rng, size, 2.2 * size / 224)
    vessels = np.exp(-((n / 0.35) ** 2))
    hilum_d = np.sqrt((ax - 0.16) ** 2 + ((y - an.lung_cy) / 1.3) ** 2)
    markings = vessels * np.clip(1.0 - hilum_d / 0.7, 0.15, 1.0)
    tissue = _smooth_noise(rng, size, 10.0 * size / 224)

    # Density ("attenuation") before the acquisition: soft tissue, minus lung air, plus bone and organs.
    dens = body * (0.50 + 0.04 * tissue + 0.07 * below_domes)
    dens = dens - lungs * (0.38 - 0.12 * markings)
    dens += 0.11 * np.maximum(mediastinum * (1 - lungs), heart) - 0.10 * trachea
    dens += 0.08 * spine * (0.6 + 0.4 * vertebrae) + 0.09 * ribs * body + 0.15 * clavicle * body

    masks: dict[str, np.ndarray] = {}
    lung_masks = lung_soft > 0.5

    def pick_point_in_lung(margin: float) -> tuple[float, float, int]:
        """A random point of a random lung, at least ``margin`` (normalized) inside its edge."""
        k = int(rng.integers(2))
        inner = lung_masks[k] & (lung_ell[k] < 1.0 - margin / an.lung_a)
        if not inner.any():
            inner = lung_masks[k]
        flat = np.flatnonzero(inner)
        idx = int(flat[rng.integers(len(flat))])
        xx, yy = _pixel_grid(size)
        return float(xx.flat[idx]), float(yy.flat[idx]), k

    if on["Cardiomegaly"]:
        masks["Cardiomegaly"] = heart > 0.5

    if on["Nodule"]:
        cx, cy, _ = pick_point_in_lung(0.08)
        xx, yy = _pixel_grid(size)
        r = rng.uniform(0.05, 0.075)
        f = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
        nod = _soft_inside(f, 0.25)
        dens += rng.uniform(0.26, 0.36) * nod * np.sqrt(np.clip(1 - f**2, 0, 1) + 0.3)
        masks["Nodule"] = nod > 0.5

    if on["Mass"]:
        cx, cy, _ = pick_point_in_lung(0.12)
        xx, yy = _pixel_grid(size)
        r0 = rng.uniform(0.13, 0.19)
        theta = np.arctan2(yy - cy, xx - cx)
        ph = rng.uniform(0, 2 * np.pi, 3)
        lobes = 1 + 0.18 * np.sin(3 * theta + ph[0]) + 0.10 * np.sin(5 * theta + ph[1]) + 0.06 * np.sin(
            7 * theta + ph[2])
        f = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / (r0 * lobes)
        mass = _soft_inside(f, 0.12)
        dens += rng.uniform(0.28, 0.36) * mass * (0.8 + 0.2 * np.clip(1 - f, 0, 1)) * (0.9 + 0.1 * tissue)
        masks["Mass"] = mass > 0.5

    if on["Effusion"]:
        # Fluid fills the lung base under a meniscus that climbs laterally: the costophrenic angle blunts.
        sides = [int(rng.integers(2))] if rng.random() < 0.7 else [0, 1]
        fluid = np.zeros_like(x)
        for k in sides:
            side = -1.0 if k == 0 else 1.0
            lateral = np.clip(side * x / (an.lung_cx + an.lung_a), 0.0, 1.2)
            level = an.dome_y[k] - rng.uniform(0.10, 0.20) - 0.25 * lateral**2
            fluid = np.maximum(fluid, lung_soft[k] * _below(-y, -level, soft))
        dens += 0.34 * fluid
        masks["Effusion"] = fluid > 0.5

    if on["Pneumothorax"]:
        # The lung collapses away from the chest wall: a lucent apical/lateral rim without markings, bounded
        # by a thin bright visceral pleural line.
        k = int(rng.integers(2))
        side = -1.0 if k == 0 else 1.0
        shrink = rng.uniform(0.70, 0.82)
        cx = side * (an.lung_cx - an.lung_a * (1 - shrink) * 0.7)
        cy = an.lung_cy + an.lung_b * (1 - shrink) * 0.8
        collapsed_f = _ellipse(x, y, cx, cy, an.lung_a * shrink, an.lung_b * shrink)
        rim = lung_soft[k] * (1.0 - _soft_inside(collapsed_f, soft / an.lung_a))
        pleura = np.exp(-(((collapsed_f - 1.0) * an.lung_a * shrink / (0.9 * px)) ** 2)) * lung_soft[k]
        dens -= rim * (0.12 * markings + 0.13)
        dens += 0.10 * pleura * (1 - rim)
        masks["Pneumothorax"] = rim > 0.5

    # Acquisition: exposure/window, gamma, detector blur and noise vary per image.
    lo = rng.uniform(-0.08, 0.12)
    hi = rng.uniform(0.72, 1.0)
    img = np.clip((dens - lo) / (hi - lo), 0.0, 1.0)
    img = img ** rng.uniform(0.7, 1.4)
    img = _smooth(img, rng.uniform(0.3, 1.0) * size / 224)
    # Quantum noise per pixel shrinks as pixels grow (a downsampled detector averages more photons).
    noise = rng.uniform(0.005, 0.03) * min(1.0, np.sqrt(size / 224))
    img = img + noise * rng.standard_normal(img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)

    masks = {name: m for name, m in masks.items() if m.any()}
    boxes = {name: _box(m) for name, m in masks.items()}
    anatomy = {"right_lung": lung_masks[0], "left_lung": lung_masks[1], "heart": heart > 0.5}
    return PhantomSample(image=img, labels=labels, boxes=boxes, masks=masks, anatomy=anatomy)


class PhantomDataset(Dataset):
    """``n`` phantoms; item ``i`` is ``(image (1, H, W) float32 in [0, 1], labels (L,) float32)``.

    Item ``i`` is drawn from a seed derived from ``(seed, i)``, so two data sets with different ``seed``
    do not share images and each item is the same on every call.
    """

    labels: tuple[str, ...] = FINDINGS

    def __init__(self, n: int, size: int = 224, seed: int = 0, prevalence: float = 0.3):
        if n < 0:
            raise ValueError(f"a data set has n >= 0 items, got {n}")
        _check_seed(seed)
        self.n, self.size, self.seed, self.prevalence = int(n), int(size), int(seed), float(prevalence)

    def __len__(self) -> int:
        return self.n

    def item_seed(self, i: int) -> int:
        """The :func:`make_phantom` seed of item ``i``."""
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} phantoms")
        return int(np.random.SeedSequence([self.seed, int(i)]).generate_state(1)[0])

    def sample(self, i: int) -> PhantomSample:
        """Item ``i`` with its boxes, masks and anatomy."""
        return make_phantom(self.item_seed(i), size=self.size, prevalence=self.prevalence)

    def label_matrix(self) -> np.ndarray:
        """(n, L) labels of every item, without rendering images (for label frequencies and class weights)."""
        if self.n == 0:
            return np.zeros((0, len(FINDINGS)), np.float32)
        return np.stack([draw_labels(self.item_seed(i), self.prevalence) for i in range(self.n)])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample(int(i))
        return torch.from_numpy(s.image)[None], torch.from_numpy(s.labels)
