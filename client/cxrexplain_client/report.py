"""``cxrexplain explain --report``: one self-contained HTML page per study (per image for PNG/JPEG).

The page shows what a reader needs first: the findings with their operating points, the overlays of every
method side by side per target, the latent-shift animation with λ and the probability of each frame, and a
warning where the reconstruction gap says the counterfactual cannot be trusted. Overlays are the files
:meth:`~cxrexplain_client.results.Explanation.save` wrote next to the page (so the page is the SDK's own
pictures); the small latent-shift frames are inlined as data URIs. No patient data: pages and images are
named by Study / SOP Instance UID or file stem, and nothing from the DICOM header but those UIDs is shown.
"""

from __future__ import annotations

import base64
import html
import os
import string
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

import cxrexplain_render as render

from .batch import Outcome
from .display import to_display_image
from .results import MAX_RECONSTRUCTION_GAP, Explanation, LatentShiftResult, TargetResult, safe_name

_TEMPLATE = string.Template((Path(__file__).with_name("report_template.html")).read_text(encoding="utf-8"))
_SOURCE_SIDE = 1024  # the page's source picture is downscaled to this longest side (overlays stay full size)
_METHOD_NAMES = {
    "cam": "CAM", "gradcam": "Grad-CAM", "lrp": "LRP", "rap": "RAP", "saliency": "Saliency",
    "guided_backprop": "Guided backprop", "integrated_gradients": "Integrated gradients",
    "latent_shift": "Latent shift map",
}
_METHOD_NOTES = {
    "cam": "class activation map", "gradcam": "gradient-weighted CAM", "lrp": "relevance propagation",
    "rap": "relative attributing propagation", "latent_shift": "largest change along the shift",
}

e = html.escape


def _version() -> str:
    from . import __version__

    return __version__


def _ramp() -> str:
    """The colormap as a CSS gradient, for the legend under the overlays."""
    stops = [render.COLORMAP_LUT[i] for i in np.linspace(0, 255, 9).astype(int)]
    return "linear-gradient(90deg, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in stops) + ")"


def _data_uri_png(frame: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(render.encode_png(frame)).decode("ascii")


def _src(path: Path, page_dir: Path) -> str:
    return quote(os.path.relpath(path, page_dir).replace(os.sep, "/"))


def _figure(src: str, caption: str, size: tuple[int, int], alt: str) -> str:
    width, height = size
    return (f'<figure><div class="frame" style="aspect-ratio: {width} / {height}">'
            f'<img src="{src}" alt="{e(alt)}"></div><figcaption>{caption}</figcaption></figure>')


def _findings_table(ex: Explanation) -> str:
    rows = []
    for f in sorted(ex.findings, key=lambda f: -f.probability):
        pct, op = 100 * f.probability, 100 * f.operating_point
        status = '<span class="badge">positive</span>' if f.positive else '<span class="neg">below</span>'
        rows.append(
            f'<tr class="{"pos" if f.positive else ""}"><td>{e(f.label)}</td>'
            f'<td><div class="prob"><div class="bar"><div class="fill" style="width:{pct:.1f}%"></div>'
            f'<div class="op" style="left:{op:.1f}%"></div></div>{f.probability:.2f}</div></td>'
            f"<td>{f.operating_point:.2f}</td><td>{status}</td></tr>"
        )
    return ('<table class="findings"><thead><tr><th>Finding</th><th>Probability</th>'
            "<th>Operating point</th><th>At operating point</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _chart(ls: LatentShiftResult, operating_point: float | None) -> str:
    """The target's probability over the frames, the operating point dashed: where the finding goes away."""
    p = np.asarray(ls.frame_probabilities, dtype=float)
    if len(p) < 2:
        return ""
    w, h, pad = 320.0, 110.0, 14.0
    xs = pad + np.arange(len(p)) * (w - 2 * pad) / (len(p) - 1)
    ys = pad + (1.0 - np.clip(p, 0, 1)) * (h - 2 * pad)
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="#1f2328"/>'
                   for x, y in zip(xs, ys, strict=True))
    op = ""
    if operating_point is not None:
        y = pad + (1.0 - operating_point) * (h - 2 * pad)
        op = (f'<line x1="0" x2="{w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#8a919c" stroke-dasharray="4 3"/>'
              f'<text x="{w - 2}" y="{y - 3:.1f}" text-anchor="end" font-size="9" fill="#5d6470">'
              "operating point</text>")
    lam = np.asarray(ls.lambdas, dtype=float)
    axis = (f'<text x="3" y="10" font-size="8" fill="#5d6470">p = 1</text>'
            f'<text x="3" y="{h - 3}" font-size="8" fill="#5d6470">λ {lam[0]:+.1f}</text>'
            f'<text x="{w - 3}" y="{h - 3}" text-anchor="end" font-size="8" fill="#5d6470">'
            f"λ {lam[-1]:+.1f}</text>")
    return (f'<svg class="chart" viewBox="0 0 {w:.0f} {h:.0f}" width="100%" role="img" '
            f'aria-label="probability of the target on each frame">'
            f'<rect x="0" y="0" width="{w}" height="{h}" fill="#f1f2f4"/>{axis}{op}'
            f'<polyline points="{points}" fill="none" stroke="#1f2328" stroke-width="1.6"/>{dots}</svg>')


def _latent_shift(res: TargetResult, folder: Path, page_dir: Path, ex: Explanation, max_gap: float) -> str:
    ls = res.latent_shift
    if ls is None or not len(ls.frames):
        return ""
    gif = folder / f"{safe_name(res.target)}_latent_shift.gif"
    height, width = ls.frames.shape[1:]
    animation = _figure(_src(gif, page_dir), '<span class="m">Latent shift</span> <span class="d">animation'
                        "</span>", (width, height), f"latent-shift animation for {res.target}")
    strip = "".join(
        f'<figure><img src="{_data_uri_png(frame)}" alt="frame {k}"><figcaption>λ <b>{lam:+.1f}</b><br>'
        f"p <b>{prob:.2f}</b>{'<br>reconstruction' if lam == 0 else ''}</figcaption></figure>"
        for k, (frame, lam, prob) in enumerate(
            zip(ls.frames, ls.lambdas, ls.frame_probabilities, strict=True)
        )
    )
    finding = next((f for f in ex.findings if f.label == res.target), None)
    gap = float(ls.reconstruction_gap)
    p_x = finding.probability if finding is not None else None
    gap_text = (f"Reconstruction gap f(x) − f(D(E(x))) = <b>{gap:+.2f}</b> (trusted up to ±{max_gap:.2f})")
    warning = ""
    if not ls.trusted(max_gap):
        moved = f" from {p_x:.2f} to {p_x - gap:.2f}" if p_x is not None else f" by {gap:+.2f}"
        warning = ('<div class="warn"><b>Do not trust this counterfactual.</b>The autoencoder\'s '
                   f"reconstruction alone moves the probability of {e(res.target)}{moved}, before any "
                   "shift: the frames show what the autoencoder loses as much as what the classifier "
                   "sees.</div>")
    op = finding.operating_point if finding is not None else None
    return (f'<div class="shift"><div>{animation}</div><div>{warning}<div class="strip">{strip}</div>'
            f'{_chart(ls, op)}<div class="gap">{gap_text}</div></div></div>')


def _target(
    res: TargetResult, outcome: Outcome, page_dir: Path, size: tuple[int, int], max_gap: float
) -> str:
    ex = outcome.explanation
    assert ex is not None
    finding = next((f for f in ex.findings if f.label == res.target), None)
    head = e(res.target)
    if finding is not None:
        positive = " · positive" if finding.positive else ""
        head += f' <span class="p">p = {finding.probability:.2f}{positive}</span>'
    order = list(_METHOD_NAMES)
    methods = sorted(res.heatmaps, key=lambda m: (order.index(m) if m in order else len(order), m))
    tiles = "".join(
        _figure(
            _src(outcome.folder / f"{safe_name(res.target)}_{safe_name(m)}.png", page_dir),
            f'<span class="m">{e(_METHOD_NAMES.get(m, m))}</span> '
            f'<span class="d">{e(_METHOD_NOTES.get(m, ""))}</span>',
            size,
            f"{m} overlay for {res.target}",
        )
        for m in methods
    )
    legend = ('<div class="legend">no evidence <span class="ramp"></span> strongest evidence '
              "(each map scaled to its own maximum)</div>") if methods else ""
    return (f"<h3>{head}</h3><div class=\"tiles\">{tiles}</div>{legend}"
            f"{_latent_shift(res, outcome.folder, page_dir, ex, max_gap)}")


def _section(outcome: Outcome, page_dir: Path, max_gap: float) -> str:
    ex = outcome.explanation
    assert ex is not None
    picture = to_display_image(outcome.item.path)
    size = picture.size
    picture.thumbnail((_SOURCE_SIDE, _SOURCE_SIDE))
    source = outcome.folder / "source.png"
    picture.save(source)
    kind = "SOP Instance UID" if outcome.item.dicom else "Image"
    total = ex.timings_ms.get("total", 0.0)
    ids = f"request {e(ex.request_id)}" + (f" · {total:.0f} ms on the server" if total else "")
    source_fig = _figure(_src(source, page_dir), '<span class="m">Source</span>', size, "source image")
    targets = "".join(_target(res, outcome, page_dir, size, max_gap) for res in ex.results.values())
    if not ex.results:
        targets = '<p class="neg">No target explained (no finding above its operating point).</p>'
    return (f'<section class="image"><h2>{kind} <span class="ids">{e(outcome.item.name)}</span></h2>'
            f'<div class="ids">{ids}</div><div class="top"><div>{source_fig}</div>'
            f"<div>{_findings_table(ex)}</div></div>{targets}</section>")


def write_reports(
    outcomes: Sequence[Outcome], out: str | os.PathLike[str], max_gap: float = MAX_RECONSTRUCTION_GAP
) -> list[Path]:
    """Write one page per study into ``out``: ``<Study Instance UID>.html``, or ``<file stem>.html``.

    Parameters
    ----------
    outcomes
        The run's outcomes; failed ones are left out (the CLI's table names them).
    out
        The ``--out`` folder; each outcome's files are in ``outcome.folder`` under it.
    max_gap
        Largest trusted reconstruction gap (:data:`~cxrexplain_client.results.MAX_RECONSTRUCTION_GAP`).

    Returns
    -------
    list[Path]
        The pages written, one per study, in the order of their first image.
    """
    page_dir = Path(out)
    studies: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.ok:
            studies.setdefault(outcome.item.study, []).append(outcome)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pages = []
    for study, members in studies.items():
        first = members[0]
        ex = first.explanation
        assert ex is not None
        dicom = first.item.dicom
        page = _TEMPLATE.substitute(
            title="Chest X-ray explanation",
            subtitle=("Study " if dicom else "Image ") + e(study),
            model=e(f"{ex.model_name} {ex.model_version}".strip()),
            generated=generated,
            ramp=_ramp(),
            max_gap=f"{max_gap:.2f}",
            version=e(_version()),
            sections="".join(_section(o, page_dir, max_gap) for o in members),
        )
        path = page_dir / f"{study}.html"
        path.write_text(page, encoding="utf-8")
        pages.append(path)
    return pages
