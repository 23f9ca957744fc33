"""The wire stubs: committed files equal a fresh generation, and server and client agree on the schema."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "client"
if importlib.util.find_spec("cxrexplain_client") is None:  # not installed: use the source tree
    sys.path.insert(0, str(CLIENT_DIR))

sys.path.insert(0, str(ROOT / "protos"))
import generate  # noqa: E402  (protos/generate.py)


def test_regenerating_gives_byte_identical_stubs(tmp_path: Path) -> None:
    written = generate.generate(tmp_path / "handler", tmp_path / "client", tmp_path / "engine")
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
        "options_schema.py",
    ]
    assert sorted(p.name for p in written if p.parent.name == "engine") == ["options_schema.py"]
    assert sorted(p.name for p in written if p.parent.name == "handler") == ["explain_pb2.py", "explain_pb2.pyi"]
    committed_in = {"handler": generate.HANDLER_WIRE, "client": generate.CLIENT_PROTO, "engine": generate.ENGINE}
    for path in written:
        committed = committed_in[path.parent.name] / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run python protos/generate.py"


def test_readme_option_table_is_rendered_from_the_schema() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = generate.options_table(generate.load_options())
    assert table in readme, "README.md's option table is stale: run python protos/generate.py"
    for key in ("gif", "steps", "request_id", "value_range", "gradcam.layer", "lrp.alpha"):
        assert f"| `{key}` |" in table


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


# ------------------------------------------------------------------------------------- the option schema
# These tests import both sides on purpose: the server (and its engine) and the client must read one schema.
def _engine() -> Any:
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "handlers"))
    from cxrexplain.methods import base, gradients, latent_shift

    return base, gradients, latent_shift


_ENGINE_TYPES = {"int": int, "float": float, "bool": bool, "text": str, "choice": str}


def test_schema_method_options_are_what_the_engine_declares() -> None:
    base, gradients, latent_shift = _engine()
    from cxrexplain.propagation import BATCHNORM_RULES
    from cxrexplain_client._proto import options_schema as schema

    assert sorted(schema.METHODS) == sorted(base.REGISTRY)
    for name, cls in base.REGISTRY.items():
        declared = schema.METHOD_OPTIONS[name]
        assert {o: _ENGINE_TYPES[spec.type] for o, spec in declared.items()} == cls.options, name
        for option, spec in declared.items():
            if spec.default is not None:  # the documented default is the method's own
                assert spec.parse(spec.default) == getattr(cls, option), spec.key
    choices = {
        "latent_shift.direction": latent_shift.DIRECTIONS,
        "latent_shift.map": latent_shift.MAPS,
        "latent_shift.search": latent_shift.SEARCHES,
        "latent_shift.stop": latent_shift.STOPS,
        "integrated_gradients.integration": gradients.INTEGRATION_RULES,
        "lrp.batchnorm": tuple(BATCHNORM_RULES),
        "rap.batchnorm": tuple(BATCHNORM_RULES),
    }
    for key, engine_choices in choices.items():
        assert schema.method_option(key).choices == engine_choices, key
    assert {s.key: s.type for m in schema.METHOD_OPTIONS.values() for s in m.values() if s.type == "choice"} == {
        k: "choice" for k in choices
    }


def test_every_sdk_option_means_the_same_to_the_server() -> None:
    _engine()
    from cxrexplain_client import codec
    from cxrexplain_client._proto import options_schema as schema
    from cxrexplain_serving.options import parse_options

    fields = codec.build_options(
        methods=["gradcam", "integrated_gradients", "latent_shift"],
        targets=["Mass", 2, "positive"],
        top_k=3,
        heatmap_format="png",
        heatmap_dtype="float32",
        frames=4,
        latent_shift_map="mean",
        direction="sigmoid",
        gif=True,
        steps=16,
        accept="protobuf",
        request_id="r-1",
        value_range=(-1.0, 1.0),
        method_options={
            "gradcam": {"layer": "features.28"},
            "integrated_gradients": {"internal_batch_size": 2},
            "latent_shift": {"search": "app_c", "fall": 0.2},
        },
    )
    assert set(schema.SDK_KEYWORDS) <= set(fields)
    got = parse_options(fields)
    assert got.methods == ("gradcam", "integrated_gradients", "latent_shift")
    assert got.targets == ("Mass", "2") and got.positive and got.top_k == 3
    assert (got.heatmap_format, got.heatmap_dtype, got.gif) == ("png", "float32", True)
    assert (got.frames, got.latent_shift_map, got.direction, got.steps) == (4, "mean", "sigmoid", 16)
    assert (got.accept, got.request_id, got.value_range) == ("application/x-protobuf", "r-1", (-1.0, 1.0))
    assert got.method_options == {
        "gradcam": {"layer": "features.28"},
        "integrated_gradients": {"internal_batch_size": 2, "steps": 16},
        "latent_shift": {"search": "app_c", "fall": 0.2, "frames": 4, "map": "mean", "direction": "sigmoid"},
    }


@pytest.mark.parametrize("word", ["true", "1", "yes", "on", "TRUE", "false", "0", "no", "off", "Off", "maybe", "2"])
def test_one_boolean_reading_for_server_engine_and_client(word: str) -> None:
    base, _, _ = _engine()
    from cxrexplain.errors import InvalidOption
    from cxrexplain_client import InvalidInput, codec
    from cxrexplain_serving.options import parse_options

    expected = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False,
                "off": False}.get(word.lower())
    if expected is None:
        with pytest.raises(InvalidOption, match="gif must be true or false"):
            parse_options({"gif": word})
        with pytest.raises(ValueError, match="must be true or false"):
            base._coerce(bool, word)
        with pytest.raises(InvalidInput, match="gif must be true or false"):
            codec.build_options(gif=word)
        return
    assert parse_options({"gif": word}).gif is expected
    assert base._coerce(bool, word) is expected
    assert parse_options(codec.build_options(gif=word)).gif is expected
