"""What the SDK and the CLI write, against a real TorchServe: ``save(dir)``, ``cxrexplain explain FOLDER`` over
nested PNG, JPEG and DICOM (one of them broken), outputs named without patient data, and the ``--report``
pages rendered in headless Chromium.

One server and one CLI run for the module (starting TorchServe costs ~20 s).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from dicom_samples import dicom_bytes, make_dicom
from PIL import Image
from pydicom.uid import generate_uid
from screenshots import colormap_regions, screenshot
from served import build_store, png_bytes

from cxrexplain_client import ExplainClient, Explanation, OutputNotWritable
from cxrexplain_client.cli import main as cli_main
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve

METHODS = ["cam", "rap", "latent_shift"]
PATIENT = ("Doe^Jane", "Doe_Jane", "PID-0001", "19700101")  # what make_dicom writes about the patient


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_classifier, phantom_autoencoder):
    store = build_store(tmp_path_factory.mktemp("export"), [
        {"name": "cxr", "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "autoencoder": "cxr-ae", "batch_size": 4, "max_batch_delay_ms": 50, "version": "1.0", "onnx": False},
        {"name": "cxr-ae", "kind": "autoencoder", "architecture": "resnet_ae_small", "weights": "weights/ae.pt"},
    ], phantom_classifier, phantom_autoencoder)
    with TorchServe(store, tmp_path_factory.mktemp("run"), ports=Ports.free()) as ts:
        yield ts


@pytest.fixture(scope="module")
def phantom(phantom_batch) -> np.ndarray:
    return phantom_batch[0].image  # the enlarged heart (conftest picks)


@pytest.fixture(scope="module")
def png_path(tmp_path_factory, phantom) -> Path:
    path = tmp_path_factory.mktemp("in") / "cxr.png"
    path.write_bytes(png_bytes(phantom))
    return path


@pytest.fixture(scope="module")
def explanation(server, png_path) -> Explanation:
    with ExplainClient(server.url, token_file=server.run_dir / "key_file.json") as client:
        return client.explain(png_path, "cxr", METHODS, "Cardiomegaly", frames=5)


# --- save(dir) ------------------------------------------------------------------------------------------------
def test_save_writes_overlays_arrays_gif_and_summary(explanation: Explanation, png_path: Path, tmp_path: Path):
    paths = explanation.save(tmp_path / "out", png_path)
    assert sorted(p.name for p in paths) == sorted(
        [f"Cardiomegaly_{m}.{ext}" for m in METHODS for ext in ("png", "npy")]
        + ["Cardiomegaly_latent_shift.gif", "Cardiomegaly_latent_shift_frames.npy", "summary.json"]
    )
    assert paths[-1].name == "summary.json" and all(p.parent == tmp_path / "out" for p in paths)
    res = explanation.result("Cardiomegaly")
    for method in METHODS:
        with Image.open(tmp_path / "out" / f"Cardiomegaly_{method}.png") as saved:
            # the very picture the SDK draws (cxrexplain_render), at the image's size
            assert np.array_equal(np.asarray(saved), np.asarray(res.overlay(method, png_path)))
        raw = np.load(tmp_path / "out" / f"Cardiomegaly_{method}.npy")
        assert raw.dtype == np.float32 and np.array_equal(raw, res.heatmaps[method])
    assert res.latent_shift is not None
    assert np.array_equal(np.load(tmp_path / "out" / "Cardiomegaly_latent_shift_frames.npy"), res.latent_shift.frames)
    with Image.open(tmp_path / "out" / "Cardiomegaly_latent_shift.gif") as gif:
        assert gif.n_frames == 5 + 3  # forward, then back without repeating the ends
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["request_id"] == explanation.request_id and summary["model_name"] == "cxr"
    assert summary["model_version"] == "1.0" and summary["not_for_diagnostic_use"] is True
    assert [(f["label"], f["probability"], f["positive"]) for f in summary["findings"]] == [
        (f.label, f.probability, f.positive) for f in explanation.findings]
    assert summary["timings_ms"] == explanation.timings_ms and "total" in summary["timings_ms"]
    shift = summary["targets"]["Cardiomegaly"]["latent_shift"]
    assert shift["reconstruction_gap"] == pytest.approx(res.latent_shift.reconstruction_gap)
    assert shift["trusted"] == (abs(res.latent_shift.reconstruction_gap) <= 0.1)


def test_target_result_saves_its_own_files(explanation: Explanation, png_path: Path, tmp_path: Path):
    paths = explanation.result("Cardiomegaly").save(tmp_path, png_path)
    assert len(paths) == 2 * len(METHODS) + 2 and "summary.json" not in {p.name for p in paths}


def test_save_into_an_unwritable_place_is_a_typed_error(explanation: Explanation, png_path: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputNotWritable, match="pass an output folder you can write to") as err:
        explanation.save(blocker / "out", png_path)
    assert err.value.path == str(blocker / "out")


# --- the CLI over a folder ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, phantom) -> dict[str, Path]:
    """A folder as a hospital export has it: nested, mixed types, a DICOM named after its patient, a DICOM
    without extension, a PNG and a JPEG with the same stem, a broken PNG and files to ignore."""
    root = tmp_path_factory.mktemp("inputs")
    study = generate_uid()
    stored = np.round(phantom * 4095).astype(np.uint16)
    pa = make_dicom(stored, extra={"StudyInstanceUID": study})
    lateral = make_dicom(4095 - stored, photometric="MONOCHROME1", modality="CR",
                         extra={"StudyInstanceUID": study})
    (root / "Doe_Jane" / "chest").mkdir(parents=True)
    (root / "Doe_Jane" / "chest" / "Doe_Jane_PA.dcm").write_bytes(dicom_bytes(pa))
    (root / "Doe_Jane" / "IM0001").write_bytes(dicom_bytes(lateral))  # DICOM by its preamble only
    (root / "a").mkdir()
    (root / "a" / "chest.png").write_bytes(png_bytes(phantom))
    (root / "b").mkdir()
    Image.fromarray((phantom * 255).astype(np.uint8)).save(root / "b" / "chest.jpg", quality=95)
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    (root / "b" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.png").write_bytes(png_bytes(phantom))
    return {"root": root, "pa": Path(pa.SOPInstanceUID), "lateral": Path(lateral.SOPInstanceUID),
            "study": Path(study)}


@pytest.fixture(scope="module")
def cli_run(server, inputs, tmp_path_factory) -> tuple[int, str, str, Path]:
    out = tmp_path_factory.mktemp("cli") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli_main(["explain", str(inputs["root"]), "--model", "cxr", "--methods", ",".join(METHODS),
                         "--targets", "Cardiomegaly", "--frames", "5", "--out", str(out), "--report",
                         "--concurrency", "3", "--url", server.url,
                         "--token-file", str(server.run_dir / "key_file.json")])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_cli_folder_run_fails_naming_the_broken_file(cli_run, inputs):
    code, stdout, stderr, out = cli_run
    assert code == 2  # the one failure is the server's InvalidInput for the broken PNG
    assert "1 of 5 inputs failed" in stderr and "corrupt.png: InvalidInput" in stderr
    assert "%|" not in stderr  # no progress bar when stderr is not a terminal
    rows = {line.split()[0]: line for line in stdout.splitlines()[1:6]}
    assert set(rows) == {str(p) for p in (inputs["root"] / "Doe_Jane" / "chest" / "Doe_Jane_PA.dcm",
                                          inputs["root"] / "Doe_Jane" / "IM0001",
                                          inputs["root"] / "a" / "chest.png", inputs["root"] / "b" / "chest.jpg",
                                          inputs["root"] / "b" / "corrupt.png")}
    assert rows[str(inputs["root"] / "b" / "corrupt.png")].endswith("FAILED")
    assert sum(line.endswith("  ok") for line in rows.values()) == 4
    assert "4 of 5 images explained" in stdout


def test_cli_names_outputs_by_sop_uid_and_stem_and_writes_no_patient_data(cli_run, inputs):
    code, stdout, stderr, out = cli_run
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders == {str(inputs["pa"]), str(inputs["lateral"]), "chest", "chest-2"}  # corrupt.png failed
    pages = {p.name for p in out.glob("*.html")}
    assert pages == {f"{inputs['study']}.html", "chest.html", "chest-2.html"}  # one page per study
    for folder in folders:
        assert {"summary.json", "source.png", "Cardiomegaly_cam.png", "Cardiomegaly_latent_shift.gif"} <= {
            p.name for p in (out / folder).iterdir()}
    for path in out.rglob("*"):
        assert not any(mark.lower() in str(path.relative_to(out)).lower() for mark in PATIENT), path
        if path.is_file():
            data = path.read_bytes()
            assert not any(mark.encode() in data for mark in PATIENT), path


def test_report_page_holds_findings_overlays_and_latent_shift(cli_run, inputs):
    code, stdout, stderr, out = cli_run
    page = (out / f"{inputs['study']}.html").read_text()
    assert "NOT FOR DIAGNOSTIC USE" in page and page.count('<section class="image">') == 2
    for uid in (inputs["pa"], inputs["lateral"]):
        for method in METHODS:
            assert f'src="{uid}/Cardiomegaly_{method}.png"' in page
        assert f'src="{uid}/Cardiomegaly_latent_shift.gif"' in page
        summary = json.loads((out / str(uid) / "summary.json").read_text())
        shift = summary["targets"]["Cardiomegaly"]["latent_shift"]
        for lam, prob in zip(shift["lambdas"], shift["frame_probabilities"], strict=True):
            assert f"λ <b>{lam:+.1f}</b><br>p <b>{prob:.2f}</b>" in page
    warnings = page.count("Do not trust this counterfactual")
    untrusted = sum(not json.loads((out / str(uid) / "summary.json").read_text())["targets"]["Cardiomegaly"]
                    ["latent_shift"]["trusted"] for uid in (inputs["pa"], inputs["lateral"]))
    assert warnings == untrusted
    for src in re.findall(r'src="([^":]+)"', page):  # every file the page links exists next to it
        assert (out / src).is_file(), src


def test_report_renders_in_chromium_with_its_overlays(cli_run, inputs, tmp_path):
    code, stdout, stderr, out = cli_run
    shot = screenshot(out / f"{inputs['study']}.html", tmp_path / "report.png", size=(1280, 2400))
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 30  # not a blank page
    # Two images x three overlays, each a region in the colormap's own hues, plus one legend per target.
    regions = colormap_regions(pixels)
    assert len(regions) >= 2 * len(METHODS) + 2, regions
    # Side by side: coloured regions reach across more than two tile widths (a tile is at least 230 px).
    lefts = sorted(left for _top, left in regions)
    assert lefts[-1] - lefts[0] > 2 * 230, regions
