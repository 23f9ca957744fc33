"""``cxrexplain-eval`` on users' formats: a folder of PNGs with an NIH box CSV made here (alias, missing image,
unknown label and unreadable image listed, skipped and counted), a masks folder against the phantom set it was
written from, ``--phantom``, cascading randomization curves, and the box mapping through the resize policy.
The run through a real TorchServe is in tests/e2e/test_eval_served.py.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from eval_data import LABELS, NIH_HEADER, nih_line, write_folder
from PIL import Image
from served import png_bytes

from cxrexplain.models import save_classifier
from cxrexplain.preprocess import Geometry
from cxrexplain_lab.evaluation import cli
from cxrexplain_lab.evaluation.data import DataError, load_phantoms, mask_to_model_space, read_box_csv, to_model_space


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def mean_of(rows: list[dict[str, str]], method: str, finding: str, metric: str, t: str = "") -> tuple[float, int]:
    row = next(r for r in rows if (r["method"], r["finding"], r["metric"], r["T"]) == (method, finding, metric, t))
    return float(row["mean"]), int(row["n"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory, phantom_classifier) -> Path:
    """The phantom classifier saved with NIH's label for Effusion's output (its sidecar carries the labels)."""
    renamed = dataclasses.replace(phantom_classifier, labels=LABELS)
    return save_classifier(renamed, tmp_path_factory.mktemp("weights") / "clf.pt")


def test_nih_csv_is_read_as_distributed(tmp_path):
    images, table, _ = write_folder(tmp_path, 64)
    rows = read_box_csv(table)
    assert [r[:2] for r in rows] == [("a.png", "Cardiomegaly"), ("wide.png", "Cardiomegaly"), ("b.png", "Infiltrate"),
                                     ("b.png", "Effusion"), ("missing.png", "Mass"), ("broken.png", "Nodule")]
    x, y, w, h = (float(v) for v in table.read_text().splitlines()[1].split(",")[2:6])
    assert rows[0][2] == (x, y, x + w, y + h)
    (tmp_path / "other.csv").write_text("name,label\n")
    with pytest.raises(DataError, match="unknown header .* expected NIH"):
        read_box_csv(tmp_path / "other.csv")


def test_boxes_and_masks_follow_the_resize_policy():
    crop = Geometry(original_height=100, original_width=140, crop_top=0, crop_left=20, crop_size=100, model_size=50)
    assert to_model_space((30.0, 10.0, 50.0, 31.0), crop) == (5, 5, 15, 16)  # (x - 20) / 2, y / 2, ends rounded up
    assert to_model_space((0.0, 0.0, 15.0, 100.0), crop) is None  # entirely left of the crop
    stretch = Geometry(original_height=100, original_width=200, crop_top=0, crop_left=0, crop_size=0, model_size=50)
    assert to_model_space((40.0, 20.0, 80.0, 60.0), stretch) == (10, 10, 20, 30)
    mask = np.zeros((100, 140), dtype=bool)
    mask[10:30, 40:80] = True
    assert np.array_equal(mask_to_model_space(mask, crop), np.pad(np.ones((10, 20), bool), ((5, 35), (10, 20))))


def test_folder_of_pngs_with_an_nih_csv(tmp_path, weights):
    images, table, expected = write_folder(tmp_path, 64)
    out = tmp_path / "out"
    assert cli.main(["localize", "--weights", str(weights), "--images", str(images), "--boxes", str(table),
                     "--methods", "cam,saliency", "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out / "localization.csv")
    assert {r["method"] for r in rows} == {"cam", "saliency", "random"}
    assert {r["finding"] for r in rows} == {"Cardiomegaly", "Infiltration", "all"}  # Infiltrate came through
    assert mean_of(rows, "random", "all", "best_case_iou")[1] == expected
    assert mean_of(rows, "cam", "Cardiomegaly", "iou", "0.5")[1] == 2
    assert all(0.0 <= float(r["mean"]) <= 1.0 for r in rows)
    summary = (out / "summary.md").read_text()
    skipped = summary.split("\n\n")[2]
    assert all(f"1 {kind}" in skipped for kind in ("missing image", "unknown label", "unreadable image")), skipped
    assert "missing.png" in summary and "'Effusion'" in summary and "broken.png" in summary
    assert "--alias Effusion=" in summary  # the message says how to fix it
    assert (out / "localization_iou.png").stat().st_size > 0
    # The padded copy's box, mapped through the centre crop, scores as the original's: the two Cardiomegaly
    # entries are the same image, so each metric's mean equals a's own (one-image runs would repeat the model).
    single = tmp_path / "single"
    single.mkdir()
    (single / "a.png").write_bytes((images / "a.png").read_bytes())
    assert cli.main(["localize", "--weights", str(weights), "--images", str(single), "--boxes", str(table),
                     "--methods", "cam,saliency", "--out", str(tmp_path / "out1"), "--quiet"]) == 0
    alone = read_rows(tmp_path / "out1" / "localization.csv")
    for method in ("cam", "saliency"):
        both, n = mean_of(rows, method, "Cardiomegaly", "iou", "0.3")
        assert n == 2 and both == pytest.approx(mean_of(alone, method, "Cardiomegaly", "iou", "0.3")[0], abs=1e-6)


def test_nothing_to_localize_is_an_error(tmp_path, weights, capsys):
    images, _, _ = write_folder(tmp_path, 64)
    table = tmp_path / "only_unknown.csv"
    table.write_text(NIH_HEADER + nih_line("a.png", "Atelectasis", (1, 1, 9, 9)))
    assert cli.main(["localize", "--weights", str(weights), "--images", str(images), "--boxes", str(table),
                     "--methods", "cam", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nothing to localize" in err and "Atelectasis" in err


def test_masks_folder_agrees_with_the_phantom_set(tmp_path, phantom_classifier, weights):
    """The same phantoms as PNGs with DIR/<concept>/<name>.png masks, and through --phantom: best-case IoU (which
    reads the lesion masks in both) agrees; anatomy masks (lungs, heart) are concepts, not findings."""
    n = 6
    data = load_phantoms(n, 64, LABELS)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    for item in data.images:
        (images / f"{item.name}.png").write_bytes(png_bytes(item.pixels, bits=16))
        for concept, mask in item.masks.items():
            (masks / concept).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / concept / f"{item.name}.png")
    common = ["--weights", str(weights), "--methods", "saliency", "--quiet"]
    assert cli.main(["localize", *common, "--images", str(images), "--masks", str(masks),
                     "--out", str(tmp_path / "folder")]) == 0
    assert cli.main(["localize", *common, "--phantom", str(n), "--out", str(tmp_path / "phantom")]) == 0
    folder, phantom = read_rows(tmp_path / "folder" / "localization.csv"), read_rows(tmp_path / "phantom" /
                                                                                   "localization.csv")
    n_findings = sum(len(item.findings) for item in data.images)
    assert mean_of(folder, "saliency", "all", "best_case_iou")[1] == n_findings > 0
    assert mean_of(folder, "saliency", "all", "best_case_iou")[0] == pytest.approx(
        mean_of(phantom, "saliency", "all", "best_case_iou")[0], abs=0.02)
    assert not any(r["finding"] in ("left_lung", "right_lung", "heart") for r in folder)
    assert "AUROC" in (tmp_path / "phantom" / "summary.md").read_text()  # phantoms know every label


def test_randomize_decorrelates_saliency(tmp_path, weights):
    out = tmp_path / "out"
    assert cli.main(["randomize", "--weights", str(weights), "--phantom", "6", "--randomize-n", "4",
                     "--methods", "saliency", "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out / "randomization.csv")
    curve = [float(r["spearman_mean"]) for r in rows if r["method"] == "saliency"]
    assert len(curve) == 9 and rows[0]["randomized_up_to"] == "classifier" and rows[8]["randomized_up_to"] == \
        "features.conv0"
    # Saliency reads the model: once every block is random its map keeps little of the original's ranking.
    assert curve[-1] < curve[0] and curve[-1] < 0.5, curve
    assert all(int(r["n"]) == 4 for r in rows)
    assert (out / "randomization.png").stat().st_size > 0


def test_unknown_layer_says_what_to_give(tmp_path, weights, capsys):
    assert cli.main(["localize", "--weights", str(weights), "--phantom", "2", "--layer", "features.nope",
                     "--out", str(tmp_path), "--quiet"]) == 2
    assert "features.denseblock4" in capsys.readouterr().err


def test_heldout_split_differs_from_training(phantom_config):
    from cxrexplain_lab.evaluation.data import HELD_OUT_SEED
    from cxrexplain_lab.phantom import PhantomDataset

    train = PhantomDataset(8, size=32, seed=phantom_config.seed)
    held_out = PhantomDataset(8, size=32, seed=HELD_OUT_SEED)
    assert not any(np.array_equal(train[i][0], held_out[i][0]) for i in range(8))
