"""The one colormap of every picture: sequential, its lightness L* rising linearly (perceptually uniform).

Jet-like maps change lightness non-monotonically and so invent edges that are not in the data; this map's
only cue for "more evidence" is "brighter", at a constant perceptual rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .maps import require_finite

# sRGB primaries and the D65 white point (IEC 61966-2-1), the conversions both directions share.
_XYZ_FROM_LINEAR = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
)
_LINEAR_FROM_XYZ = np.array(
    [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0  # CIELAB's switch between the cube root and its linear toe


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in [0, 1], unclipped (values outside [0, 1] are out of gamut)."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _WHITE_D65
    lin = xyz @ _LINEAR_FROM_XYZ.T
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.abs(lin) ** (1 / 2.4) - 0.055)


def srgb_to_lab(rgb: Any) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65).

    Parameters
    ----------
    rgb
        (..., 3) sRGB values in [0, 1].

    Returns
    -------
    np.ndarray
        (..., 3) float64 L*, a*, b*; used to check the colormap's lightness ramp.
    """
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _XYZ_FROM_LINEAR.T / _WHITE_D65
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    lightness = 116 * f[..., 1] - 16
    return np.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _build_lut(n: int = 256) -> np.ndarray:
    """A sequential colormap whose lightness L* rises linearly (perceptually uniform in L*).

    Built in CIELCh: L* from 8 to 94, hue turning from violet (300 deg) through red to yellow (95 deg),
    chroma as high as the sRGB gamut allows at each step (found by bisection) under a cap that rises from
    near-neutral black. Dark = no evidence, pale yellow = strongest evidence.
    """
    t = np.linspace(0.0, 1.0, n)
    lightness = 8.0 + 86.0 * t
    hue = np.deg2rad(300.0 + 155.0 * t)
    cap = 10.0 + 80.0 * np.sin(0.5 * np.pi * np.clip(2.5 * t, 0, 1))
    lo, hi = np.zeros(n), cap.copy()
    for _ in range(30):  # largest in-gamut chroma per entry
        mid = (lo + hi) / 2
        rgb = _lab_to_srgb(np.stack([lightness, mid * np.cos(hue), mid * np.sin(hue)], axis=-1))
        ok = ((rgb >= 0) & (rgb <= 1)).all(axis=-1)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    rgb = _lab_to_srgb(np.stack([lightness, lo * np.cos(hue), lo * np.sin(hue)], axis=-1))
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


COLORMAP_LUT: np.ndarray = _build_lut()
"""(256, 3) uint8: entry i is the colour of the normalized value i / 255."""


def colorize(map01: Any) -> np.ndarray:
    """Colour a display-space map through :data:`COLORMAP_LUT`.

    Parameters
    ----------
    map01
        (H, W) values in [0, 1]; values outside are clipped.

    Returns
    -------
    np.ndarray
        (H, W, 3) uint8 RGB.

    Raises
    ------
    RenderInputError
        The map holds NaN or Inf.
    """
    m = np.asarray(map01, dtype=np.float32)
    require_finite(m, "map")
    idx = np.rint(np.clip(m, 0.0, 1.0) * 255.0).astype(np.intp)
    return COLORMAP_LUT[idx]
