"""``cxrexplain-eval dissect`` and ``concepts`` on users' formats: phantoms written as wide PNGs (padded left and
right, so only the resize policy's centre crop gives the phantom back) with ``DIR/<concept>/<image>.png`` masks at
the wide size agree with ``--phantom`` on the same images; ``report`` runs every subcommand and counts a broken
image once; the exporter's recipe names the same folder for the served ``semantic`` method and writes the same
dissection. The procedures themselves are checked by hand in test_dissection.py and test_concepts.py.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from eval_data import LABELS
from PIL import Image
from served import png_bytes

from cxrexplain.models import save_classifier
from cxrexplain_lab.evaluation import cli
from cxrexplain_lab.evaluation.data import load_phantoms
from export import cli as export_cli

N = 8
PAD = 16


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def weights(tmp_path_factory, phantom_classifier) -> Path:
    return save_classifier(dataclasses.replace(phantom_classifier, labels=LABELS),
                           tmp_path_factory.mktemp("weights") / "clf.pt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folder")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    for item in load_phantoms(N, 64, LABELS).images:
        (images / f"{item.name}.png").write_bytes(png_bytes(np.pad(item.pixels, ((0, 0), (PAD, PAD))), bits=16))
        for concept, mask in item.masks.items():
            (masks / concept).mkdir(parents=True, exist_ok=True)
            wide = np.pad(mask, ((0, 0), (PAD, PAD))).astype(np.uint8) * 255
            Image.fromarray(wide).save(masks / concept / f"{item.name}.png")
    return images, masks


def test_dissection_of_a_masks_folder_equals_the_phantom_sets(tmp_path, weights, folder):
    images, masks = folder
    common = ["--weights", str(weights), "--layer", "features.denseblock2", "--quiet"]
    assert cli.main(["dissect", *common, "--images", str(images), "--masks", str(masks),
                     "--out", str(tmp_path / "folder")]) == 0
    assert cli.main(["dissect", *common, "--phantom", str(N), "--out", str(tmp_path / "phantom")]) == 0
    got, want = read_rows(tmp_path / "folder" / "dissection.csv"), read_rows(tmp_path / "phantom" / "dissection.csv")
    by_key = {(r["unit"], r["concept"]): r for r in want}
    assert {(r["unit"], r["concept"]) for r in got} == set(by_key)
    concepts = {r["concept"] for r in got}
    assert {"left_lung", "right_lung", "heart"} <= concepts and concepts & set(LABELS)  # anatomy and findings
    assert len(got) == len({r["unit"] for r in got}) * len(concepts)  # one row per unit and concept
    assert {r["layer"] for r in got} == {"features.denseblock2"}
    # 16-bit PNG rounding may move a pixel across T_k: IoUs agree closely, not bit for bit.
    diffs = [abs(float(r["iou"]) - float(by_key[(r["unit"], r["concept"])]["iou"])) for r in got]
    assert max(diffs) < 0.02 and any(float(r["iou"]) > 0 for r in got)
    for r in got:
        assert r["detector"] == str(int(float(r["iou"]) >= 0.04))
    summary = (tmp_path / "folder" / "summary.md").read_text()
    assert "Network Dissection" in summary and "| heart |" in summary
    for name in ("dissection_detectors.png", "dissection_units.png"):
        assert Image.open(tmp_path / "folder" / name).size[0] > 100


def test_concept_counts_of_a_masks_folder_equal_the_phantom_sets(tmp_path, weights, folder):
    images, masks = folder
    common = ["--weights", str(weights), "--quiet", "--concept-q", "0.02"]
    assert cli.main(["concepts", *common, "--images", str(images), "--masks", str(masks),
                     "--out", str(tmp_path / "folder")]) == 0
    assert cli.main(["concepts", *common, "--phantom", str(N), "--out", str(tmp_path / "phantom")]) == 0
    (got,), (want,) = read_rows(tmp_path / "folder" / "concepts.csv"), read_rows(tmp_path / "phantom" / "concepts.csv")
    assert got["layer"] == "features.norm5"  # the default: the module whose output CAM reads
    with_box = sum(bool(item.findings) for item in load_phantoms(N, 64, LABELS).images)
    assert int(got["images"]) == int(want["images"]) == with_box > 0
    assert float(got["disjoint"]) >= float(got["unique"]) > 0  # a channel counts once per image in unique
    assert float(got["disjoint"]) == pytest.approx(float(want["disjoint"]), rel=0.1)
    assert float(got["unique"]) == pytest.approx(float(want["unique"]), rel=0.1)


def test_report_runs_every_subcommand_and_counts_a_broken_image_once(tmp_path, weights, folder):
    images, masks = folder
    mixed = tmp_path / "images"
    mixed.mkdir()
    for path in sorted(images.iterdir())[:4]:
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    out = tmp_path / "out"
    assert cli.main(["report", "--weights", str(weights), "--images", str(mixed), "--masks", str(masks),
                     "--methods", "saliency", "--randomize-n", "2", "--out", str(out), "--quiet"]) == 0
    summary = (out / "summary.md").read_text()
    for title in ("Localization", "Cascading randomization", "Network Dissection", "Concept counts"):
        assert f"## {title}" in summary
    # the broken PNG once, though four subcommands read it (the masks of the four phantoms left out are listed too)
    assert " missing image, 1 unreadable image." in summary and summary.count("- unreadable image: ") == 1
    for name in ("localization.csv", "randomization.csv", "dissection.csv", "concepts.csv"):
        assert (out / name).stat().st_size > 0


def test_the_exporter_dissects_a_users_folder_as_cxrexplain_eval_does(tmp_path, weights, folder):
    images, masks = folder
    assert cli.main(["dissect", "--weights", str(weights), "--layer", "features.denseblock2", "--images", str(images),
                     "--masks", str(masks), "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    rows = read_rows(tmp_path / "eval" / "dissection.csv")
    recipe = tmp_path / "recipe" / "recipe.yaml"  # paths relative to the recipe, as a user writes them
    recipe.parent.mkdir()
    rel = {k: os.path.relpath(v, recipe.parent) for k, v in (("weights", weights), ("images", images),
                                                              ("masks", masks))}
    recipe.write_text(yaml.safe_dump({"models": [{
        "name": "m", "kind": "classifier", "architecture": "densenet_small", "weights": rel["weights"],
        "onnx": False, "warm_up": False,
        "semantic": {"layer": "features.denseblock2", "concepts": {"images": rel["images"], "masks": rel["masks"]}},
    }]}))
    assert export_cli.main([str(recipe), "--store", str(tmp_path / "store")]) == 0
    with zipfile.ZipFile(tmp_path / "store" / "m.mar") as mar:
        table = json.loads(mar.read("dissection.json"))
    assert table["layer"] == "features.denseblock2" and f"{N} images" in table["data"]
    for unit in table["units"]:  # each unit's label: its best concept in cxrexplain-eval's table
        mine = [r for r in rows if int(r["unit"]) == unit["unit"]]
        best = max(float(r["iou"]) for r in mine)
        assert unit["iou"] == pytest.approx(best, abs=1e-6)
        assert float(next(r["iou"] for r in mine if r["concept"] == unit["concept"])) == pytest.approx(best, abs=1e-6)
