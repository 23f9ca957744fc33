"""``cxrexplain-eval`` against a real TorchServe through the SDK: ``localize`` on a folder with an NIH CSV gives the
figures the same bundle gives in-process, and ``report`` skips what needs the model's insides, saying why.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
from eval_data import LABELS, write_folder
from served import build_store

from cxrexplain_lab.evaluation import cli
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve

@pytest.fixture(scope="module")
def served(tmp_path_factory, phantom_classifier):
    root = tmp_path_factory.mktemp("export")
    renamed = dataclasses.replace(phantom_classifier, labels=LABELS)
    store = build_store(root, [{"name": "cxr", "kind": "classifier", "architecture": "densenet_small",
                                "weights": "weights/clf.pt", "onnx": False, "batch_size": 1}], renamed)
    with TorchServe(store, tmp_path_factory.mktemp("run"), ports=Ports.free()) as ts:
        yield ts, root / "weights" / "clf.pt"


def rows(path: Path) -> dict[tuple[str, str, str, str], tuple[float, int]]:
    with path.open() as handle:
        return {(r["method"], r["finding"], r["metric"], r["T"]): (float(r["mean"]), int(r["n"]))
                for r in csv.DictReader(handle)}


def test_localize_through_the_sdk_matches_in_process(served, tmp_path):
    ts, weights = served
    images, table, expected = write_folder(tmp_path, 64)
    data = ["--images", str(images), "--boxes", str(table), "--methods", "cam,gradcam,saliency", "--quiet"]
    server = ["--model", "cxr", "--url", ts.url, "--token-file", str(ts.run_dir / "key_file.json")]
    assert cli.main(["localize", *server, *data, "--out", str(tmp_path / "served")]) == 0
    assert cli.main(["localize", "--weights", str(weights), *data, "--out", str(tmp_path / "local")]) == 0
    remote, local = rows(tmp_path / "served" / "localization.csv"), rows(tmp_path / "local" / "localization.csv")
    assert remote.keys() == local.keys()
    assert remote[("random", "all", "best_case_iou", "")][1] == expected
    for key, (value, n) in local.items():
        assert remote[key][1] == n and remote[key][0] == pytest.approx(value, abs=2e-3), key
    summary = (tmp_path / "served" / "summary.md").read_text()
    assert "broken.png" in summary and "missing.png" in summary


def test_report_against_a_server_skips_what_needs_the_insides(served, tmp_path, capsys):
    ts, _ = served
    images, table, _ = write_folder(tmp_path, 64)
    args = ["--model", "cxr", "--url", ts.url, "--token-file", str(ts.run_dir / "key_file.json"),
            "--images", str(images), "--boxes", str(table), "--methods", "cam", "--quiet", "--out", str(tmp_path)]
    assert cli.main(["randomize", *args]) == 2
    assert "needs the model's insides" in capsys.readouterr().err
    assert cli.main(["report", *args]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "## Localization" in summary and "Skipped: `randomize` needs the model's insides" in summary
