"""The evaluation tests' data in users' formats: a folder of PNGs and an NIH ``BBox_List_2017.csv`` made from
phantoms, shared by tests/lab/test_evaluation_cli.py and tests/e2e/test_eval_served.py (``tests/`` is on the path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from served import png_bytes

from cxrexplain_lab.phantom import make_phantom

NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,,,,\n"
# The phantom model's labels with Effusion's output renamed as NIH's label map would name it, so the CSV's
# "Infiltrate" must reach it through the default alias.
LABELS = ["Cardiomegaly", "Nodule", "Mass", "Infiltration", "Pneumothorax"]


def nih_line(name: str, label: str, box: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = box
    return f"{name},{label},{x0},{y0},{x1 - x0},{y1 - y0},,,\n"


def write_folder(root: Path, size: int) -> tuple[Path, Path, int]:
    """PNGs and an NIH-format CSV; returns (images, csv, the number of findings that should be evaluated).

    ``wide.png`` is ``a.png`` padded 16 px left and right: the centre crop gives back ``a.png``, so its box,
    written in the wide image's pixels, maps back onto the same lesion.
    """
    images = root / "images"
    images.mkdir(parents=True)
    cardio = make_phantom(900_100, size=size, findings=["Cardiomegaly"])
    effusion = make_phantom(900_101, size=size, findings=["Effusion"])
    (images / "a.png").write_bytes(png_bytes(cardio.image, bits=16))
    (images / "b.png").write_bytes(png_bytes(effusion.image, bits=16))
    (images / "wide.png").write_bytes(png_bytes(np.pad(cardio.image, ((0, 0), (16, 16))), bits=16))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    x0, y0, x1, y1 = cardio.boxes["Cardiomegaly"]
    lines = [NIH_HEADER, nih_line("a.png", "Cardiomegaly", cardio.boxes["Cardiomegaly"]),
             nih_line("wide.png", "Cardiomegaly", (x0 + 16, y0, x1 + 16, y1)),
             nih_line("b.png", "Infiltrate", effusion.boxes["Effusion"]),
             nih_line("b.png", "Effusion", effusion.boxes["Effusion"]),  # not a label of this model
             nih_line("missing.png", "Mass", (1, 1, 9, 9)),
             nih_line("broken.png", "Nodule", (1, 1, 9, 9))]
    table = root / "BBox_List_2017.csv"
    table.write_text("".join(lines))
    return images, table, 3
