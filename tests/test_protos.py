"""The wire stubs: committed files equal a fresh generation, and server and client agree on the schema."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT_DIR = ROOT / "client"
if importlib.util.find_spec("cxrexplain_client") is None:  # not installed: use the source tree
    sys.path.insert(0, str(CLIENT_DIR))

sys.path.insert(0, str(ROOT / "protos"))
import generate  # noqa: E402  (protos/generate.py)


def test_regenerating_gives_byte_identical_stubs(tmp_path: Path) -> None:
    written = generate.generate(tmp_path / "handler", tmp_path / "client")
    names = sorted(p.name for p in written if p.parent.name == "client")
    assert names == [
        "explain_pb2.py",
        "explain_pb2.pyi",
        "inference_pb2.py",
        "inference_pb2.pyi",
        "inference_pb2_grpc.py",
        "management_pb2.py",
        "management_pb2.pyi",
        "management_pb2_grpc.py",
    ]
    for path in written:
        committed = (generate.HANDLER_WIRE if path.parent.name == "handler" else generate.CLIENT_PROTO) / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run python protos/generate.py"


def test_check_mode_exits_zero_when_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sibling_imports_are_package_relative() -> None:
    text = (generate.CLIENT_PROTO / "inference_pb2_grpc.py").read_text()
    assert "from . import inference_pb2 as inference__pb2" in text
    assert "\nimport inference_pb2" not in text


def test_torchserve_wire_facts() -> None:
    from cxrexplain_client._proto import inference_pb2, management_pb2

    req = inference_pb2.PredictionsRequest.DESCRIPTOR
    assert req.full_name == "org.pytorch.serve.grpc.inference.PredictionsRequest"
    assert {f.name: f.number for f in req.fields} == {
        "model_name": 1,
        "model_version": 2,
        "input": 3,
        "sequence_id": 4,
    }
    resp = inference_pb2.PredictionResponse.DESCRIPTOR
    assert {f.name: f.number for f in resp.fields} == {"prediction": 1, "sequence_id": 2, "status": 3}
    assert resp.fields_by_name["status"].message_type.full_name == "google.rpc.Status"
    service = inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "Ping": (False, False),
        "Predictions": (False, False),
        "StreamPredictions": (False, True),
        "StreamPredictions2": (True, True),
    }
    lm = management_pb2.ListModelsRequest.DESCRIPTOR
    assert {f.name: f.number for f in lm.fields} == {"limit": 1, "next_page_token": 2}
    mgmt = management_pb2.DESCRIPTOR.services_by_name["ManagementAPIsService"]
    assert {m.name for m in mgmt.methods} >= {"ListModels", "DescribeModel"}


def test_server_and_client_stubs_share_the_explain_schema() -> None:
    from cxrexplain_client._proto import explain_pb2 as client_pb2

    server = importlib.util.spec_from_file_location(
        "server_explain_pb2", ROOT / "handlers" / "cxrexplain_serving" / "wire" / "explain_pb2.py"
    )
    assert server is not None and server.loader is not None
    server_pb2 = importlib.util.module_from_spec(server)
    server.loader.exec_module(server_pb2)
    msg = server_pb2.ExplainResponse(request_id="r1", model_name="m", not_for_diagnostic_use=True, last=True)
    msg.findings.add(label="Effusion", probability=0.75, operating_point=0.5, positive=True)
    msg.error.code = 422
    parsed = client_pb2.ExplainResponse.FromString(msg.SerializeToString())
    assert parsed.request_id == "r1" and parsed.findings[0].label == "Effusion" and parsed.last
    assert parsed.error.code == 422
    assert (
        server_pb2.ExplainResponse.DESCRIPTOR.full_name
        == client_pb2.ExplainResponse.DESCRIPTOR.full_name
        == "cxrexplain.v1.ExplainResponse"
    )
