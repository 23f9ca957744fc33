"""The ``cxrexplain`` command line over a local server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from servers import (
    EVERY_METHOD,
    EVERY_OPTION,
    EVERY_OPTION_ON_THE_WIRE,
    JSON,
    HttpState,
    header_options,
    png_bytes,
    ts_error,
)

from cxrexplain_client.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_explain_writes_files(http_server: tuple[str, HttpState], tmp_path: Path, capsys: Any) -> None:
    url, state = http_server
    image = tmp_path / "cxr.png"
    image.write_bytes(png_bytes())
    out = tmp_path / "out"
    code = cli_main(
        [
            "explain",
            str(image),
            "--model",
            "m",
            "--methods",
            "cam,rap",
            "--targets",
            "A",
            "--out",
            str(out),
            "--url",
            url,
            "--token",
            "tok",
        ]
    )
    assert code == 0
    fields = header_options(state.requests[-1])
    assert fields["methods"] == "cam,rap" and fields["targets"] == "A"
    assert state.requests[-1].headers["Authorization"] == "Bearer tok"
    for name in ("A_cam.png", "A_rap.png", "B_cam.png", "A_cam.npy", "A_latent_shift.gif",
                 "A_latent_shift_frames.npy", "summary.json"):
        assert (out / name).exists(), name
    with Image.open(out / "A_cam.png") as over:
        assert over.size == (30, 20)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["not_for_diagnostic_use"] is True and summary["targets"]["A"]["methods"] == ["cam", "rap"]
    printed = json.loads(capsys.readouterr().out)
    assert printed["request_id"] == "req-1"
    assert sorted(printed["files"]) == sorted(str(p) for p in out.iterdir())  # every file written, each listed


def test_cli_sends_every_option_from_its_flags(http_server: tuple[str, HttpState], tmp_path: Path) -> None:
    url, state = http_server
    image = tmp_path / "cxr.png"
    image.write_bytes(png_bytes())
    flags = ["--top-k", "2", "--heatmap-format", "png", "--heatmap-dtype", "float32", "--frames", "6",
             "--latent-shift-map", "minmax", "--direction", "sigmoid", "--gif", "--steps", "8",
             "--accept", "application/json", "--request-id", "study-7.a", "--value-range", "0.0,4095.0"]
    for method, options in EVERY_OPTION["method_options"].items():
        flags += [arg for name, value in options.items() for arg in ("--option", f"{method}.{name}={value}")]
    code = cli_main(["explain", str(image), "--model", "m", "--methods", ",".join(EVERY_METHOD), "--targets", "A",
                     "--out", str(tmp_path / "out"), "--url", url, *flags])
    assert code == 0
    sent = header_options(state.requests[-1])
    # The CLI hands method option values over as typed text ("2", not 2.0): the server reads both alike.
    assert sent == {**EVERY_OPTION_ON_THE_WIRE, "lrp.alpha": "2", "lrp.beta": "1"}


def test_cli_refuses_a_bad_method_option_before_sending(
    http_server: tuple[str, HttpState], tmp_path: Path, capsys: Any
) -> None:
    url, state = http_server
    for option in ("gradcam.layr=x", "gradcam-layer"):
        code = cli_main(["explain", "any.png", "--model", "m", "--url", url, "--option", option])
        assert code == 2
        assert "gradcam" in capsys.readouterr().err
    assert state.requests == []


def test_cli_error_exit_codes(http_server: tuple[str, HttpState], tmp_path: Path, capsys: Any) -> None:
    url, state = http_server
    state.script.append((404, JSON, ts_error(404, "ModelNotFoundException", "Model not found: nope")))
    code = cli_main(["describe", "nope", "--url", url, "--retries", "0"])
    assert code == 4 and "ModelNotFound" in capsys.readouterr().err


def test_cli_module_runs_as_subprocess(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    env_path = str(ROOT / "client")
    proc = subprocess.run(
        [sys.executable, "-m", "cxrexplain_client.cli", "health", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": env_path, "CXREXPLAIN_TOKEN": "env-token", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": "Healthy"}
    assert state.requests[-1].headers["Authorization"] == "Bearer env-token"
