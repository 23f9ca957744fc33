"""Pages rendered by headless Chromium (Debian ``chromium``) and read back: a plain module beside the client
tests, ``from screenshots import screenshot, colormap_regions``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from scipy import ndimage

import cxrexplain_render as render

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1280, 2000)) -> Path:
    """Render ``page`` (a local HTML file) with headless Chromium into ``png`` at ``size`` (width, height)."""
    proc = subprocess.run(
        # --no-sandbox: Chromium refuses to run as root with its sandbox (the tests run as root in CI);
        # the page is our own local file.
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0 and png.is_file(), f"chromium failed: {proc.stderr[-2000:]}"
    return png


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value of uint8 RGB pixels."""
    c = rgb.astype(np.float64) / 255.0
    mx, mn = c.max(axis=-1), c.min(axis=-1)
    span = np.where(mx > mn, mx - mn, 1.0)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    hue = np.select([mx == r, mx == g], [((g - b) / span) % 6, (b - r) / span + 2], (r - g) / span + 4) * 60.0
    return hue, np.where(mx > 0, (mx - mn) / np.where(mx > 0, mx, 1.0), 0.0), mx


def colormap_regions(rgb: np.ndarray, min_area: int = 150, tolerance_deg: float = 10.0) -> list[tuple[int, int]]:
    """Where the one colormap shows on a screenshot: (top, left) of each coloured region.

    An overlay is ``(1 - w) * gray + w * colormap``; adding gray and scaling leaves the HSV hue unchanged, so
    every strongly coloured overlay pixel has the hue of a colormap entry. A region is a connected set of
    saturated pixels at least ``min_area`` pixels and 8 x 8 large (glyphs and thin rules are not) whose median
    hue is within ``tolerance_deg`` of a colormap hue.
    """
    hue, sat, val = _hsv(rgb)
    lut_hue, lut_sat, _ = _hsv(render.COLORMAP_LUT[None])
    hues = lut_hue[0][lut_sat[0] > 0.3]
    labels, _count = ndimage.label((sat > 0.4) & (val > 0.3))
    regions = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        height, width = mask.shape
        if mask.sum() < min_area or height < 8 or width < 8:
            continue
        median = float(np.median(hue[box][mask]))
        distance = np.abs((hues - median + 180.0) % 360.0 - 180.0).min()
        if distance <= tolerance_deg:
            regions.append((box[0].start, box[1].start))
    return regions
