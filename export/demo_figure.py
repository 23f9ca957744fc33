"""The README's picture: a real response of the running demo service (``make serve`` first).

    python -m export.demo_figure [--run-dir .run] [--model cxr-densenet] [--out docs]

Writes ``docs/example.png`` (a held-out phantom with a planted finding: the image the README's curl examples
send), ``docs/demo_response.png`` (input with the finding's box, CAM / LRP / RAP / latent-shift overlays, and the
counterfactual frames with the classifier's probability on each) and ``docs/demo_latent_shift.gif``. These
three files are committed so the README can show them; rerun this command to refresh them.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrexplain_client import ExplainClient
from cxrexplain_lab.phantom import PhantomDataset

METHODS = ("cam", "lrp", "rap", "latent_shift")
FINDING = "Cardiomegaly"
TILE = 256


def example_image(size: int, seed: int = 4242) -> tuple[bytes, tuple[int, int, int, int]]:
    """A held-out phantom that shows ``FINDING``, as PNG bytes, and the finding's box."""
    data = PhantomDataset(64, size=size, seed=seed)
    for i in range(len(data)):
        sample = data.sample(i)
        if FINDING in sample.boxes and sample.labels.sum() == 1:
            buf = io.BytesIO()
            Image.fromarray((sample.image * 255).astype(np.uint8)).save(buf, format="PNG")
            return buf.getvalue(), sample.boxes[FINDING]
    raise RuntimeError(f"no phantom with {FINDING} alone among the first {len(data)}")


def _tile(image: Image.Image, caption: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + 22), "white")
    tile.paste(image.convert("RGB").resize((TILE, TILE)), (0, 22))
    ImageDraw.Draw(tile).text((6, 5), caption, fill="black")
    return tile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.demo_figure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path(".run"))
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="cxr-densenet")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    with ExplainClient(args.url, token_file=args.run_dir / "key_file.json") as client:
        size = client.describe(args.model).input_spec["size"]
        png, box = example_image(int(size))
        explanation = client.explain(png, args.model, methods=list(METHODS), targets=[FINDING], frames=8,
                                     heatmap_dtype="float32")
    result = explanation.result(FINDING)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "example.png").write_bytes(png)
    source = Image.open(io.BytesIO(png)).convert("RGB")
    boxed = source.copy()
    ImageDraw.Draw(boxed).rectangle(box, outline=(255, 210, 0), width=2)
    probability = explanation.probabilities[FINDING]
    tiles = [_tile(boxed, f"input: {FINDING} p={probability:.2f}")]
    tiles += [_tile(result.overlay(m, png), m) for m in METHODS]
    shift = result.latent_shift
    assert shift is not None
    frames = [_tile(Image.fromarray((f * 255).astype(np.uint8)), f"lambda={lam:+.3g} p={p:.2f}")
              for f, lam, p in zip(shift.frames, shift.lambdas, shift.frame_probabilities, strict=True)]
    # Five frames evenly over the whole λ range, both ends included (the first five would show one end only).
    frames = [frames[int(i)] for i in np.unique(np.linspace(0, len(frames) - 1, 5).round())]
    width = TILE * max(len(tiles), len(frames))
    figure = Image.new("RGB", (width, 2 * (TILE + 22)), "white")
    for i, tile in enumerate(tiles):
        figure.paste(tile, (i * TILE, 0))
    for i, tile in enumerate(frames):
        figure.paste(tile, (i * TILE, TILE + 22))
    figure.save(args.out / "demo_response.png", optimize=True)
    shift.save_gif(args.out / "demo_latent_shift.gif")
    print(f"wrote {args.out}/example.png, demo_response.png, demo_latent_shift.gif "
          f"(request {explanation.request_id}, reconstruction gap {shift.reconstruction_gap:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
