"""The SDK over REST and gRPC, sync and async: what it sends, how it parses answers and maps errors."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from servers import (
    FAST,
    JSON,
    HttpState,
    Inference,
    Management,
    arrays,
    handler_error,
    header_options,
    make_description,
    make_response,
    png_bytes,
    stream_parts,
    ts_error,
)

import cxrexplain_client as cx
from cxrexplain_client import codec
from cxrexplain_client._proto import (
    explain_pb2,
    inference_pb2,
)


# --------------------------------------------------------------------------------------------------- REST
def test_rest_explain_sends_raw_body_with_options_header_and_parses_binary(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    img = png_bytes()
    with cx.ExplainClient(url, token="tok", retry_policy=FAST) as client:
        ex = client.explain(img, "m", methods=["cam", "rap"], targets=["A", 1], heatmap_dtype="float32", frames=5)
    assert set(ex.results) == {"A", "B"}
    rec = state.requests[-1]
    assert rec.method == "POST" and rec.path == "/predictions/m"
    assert rec.headers["Authorization"] == "Bearer tok"
    assert rec.headers["Accept"] == codec.PROTOBUF_MEDIA_TYPE
    assert rec.headers["Content-Type"] == "image/png" and rec.body == img
    assert header_options(rec) == {"methods": "cam,rap", "targets": "A,1", "heatmap_dtype": "float32",
                                    "frames": "5"}


def test_rest_predict_sends_raw_body_and_array_as_npy(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        client.predict(png_bytes(), "m", version="2.0")
        arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
        client.predict(arr, "m")
    first, second = state.requests[-2:]
    assert first.path == "/predictions/m/2.0" and first.headers["Content-Type"] == "image/png"
    assert first.body == png_bytes() and "Authorization" not in first.headers
    assert second.headers["Content-Type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(second.body)), arr)


def test_pydicom_dataset_is_sent_as_part10(http_server: tuple[str, HttpState]) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    url, state = http_server
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        client.predict(src, "m")
    rec = state.requests[-1]
    assert rec.headers["Content-Type"] == "application/dicom" and rec.body[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(rec.body))
    assert back.SOPInstanceUID == src.SOPInstanceUID
    np.testing.assert_array_equal(back.pixel_array, src.pixel_array)


def test_rest_parses_json_answers(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    body = json_format.MessageToJson(make_response("float16"), preserving_proto_field_name=True).encode()
    state.script.append((200, {"Content-Type": "application/json"}, body))
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        ex = client.explain(png_bytes(), "m", methods="cam")
    expected = arrays()["cam"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ex.results["A"].heatmaps["cam"], expected)



@pytest.mark.parametrize(
    ("status", "body", "expected", "text"),
    [
        (400, handler_error(400, "invalid_input", "cannot decode the image"), cx.InvalidInput, "cannot decode"),
        (415, handler_error(415, "unsupported_media_type", "GIF is not supported"), cx.InvalidInput, "GIF"),
        (422, handler_error(422, "unknown_label", "unknown label 'Foo'"), cx.InvalidInput, "Foo"),
        (400, ts_error(400, "InvalidKeyException", "Token Authorization failed."), cx.Unauthorized, "Token"),
        (401, b"", cx.Unauthorized, "401"),
        (404, ts_error(404, "ModelNotFoundException", "Model not found: m"), cx.ModelNotFound, "Model not found"),
        (404, b"", cx.ModelNotFound, "404"),
        (413, b"", cx.InvalidInput, "413"),
        (503, ts_error(503, "ServiceUnavailableException", "no worker"), cx.ServerUnavailable, "no worker"),
        (503, b"", cx.ServerUnavailable, "503"),
    ],
)
def test_rest_error_mapping(
    http_server: tuple[str, HttpState], status: int, body: bytes, expected: type[cx.CxrExplainClientError], text: str
) -> None:
    import httpx

    url, state = http_server
    state.script.append((status, JSON if body else {}, body))
    with cx.ExplainClient(url, retries=0) as client, pytest.raises(expected) as info:
        client.explain(png_bytes(), "m", methods="cam")
    assert text in str(info.value)
    assert info.value.status == status
    assert isinstance(info.value.__cause__, httpx.HTTPStatusError)
    if b'"request_id"' in body:
        assert info.value.request_id == f"r-{status}"


def test_rest_500_is_the_base_error(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.script.append((500, JSON, ts_error(500, "InternalServerError", "worker died")))
    with cx.ExplainClient(url, retries=0) as client, pytest.raises(cx.CxrExplainClientError) as info:
        client.predict(png_bytes(), "m")
    assert type(info.value) is cx.CxrExplainClientError and "worker died" in str(info.value)


def test_rest_binary_error_body(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    msg = explain_pb2.ExplainResponse(request_id="r-bin")
    msg.error.CopyFrom(explain_pb2.Error(code=422, message="latent_shift needs an autoencoder", type="autoencoder"))
    state.script.append((422, {"Content-Type": codec.PROTOBUF_MEDIA_TYPE}, msg.SerializeToString()))
    with cx.ExplainClient(url, retries=0) as client, pytest.raises(cx.InvalidInput) as info:
        client.explain(png_bytes(), "m", methods="latent_shift")
    assert info.value.request_id == "r-bin" and "autoencoder" in str(info.value)


def test_rest_retries_503_then_succeeds(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.script.extend([(503, JSON, ts_error(503, "ServiceUnavailableException", "busy"))] * 2)
    with cx.ExplainClient(url, retry_policy=FAST) as client:
        ex = client.explain(png_bytes(), "m", methods="cam")
    assert ex.request_id == "req-1"
    assert len(state.requests) == 3  # two 503s, then the answer


def test_rest_does_not_retry_a_model_part_the_server_could_not_load(http_server: tuple[str, HttpState]) -> None:
    # The handler's 503 for a latent_shift whose autoencoder failed to load: waiting does not cure it.
    url, state = http_server
    body = handler_error(503, "autoencoder_unavailable", "latent_shift is unavailable on this server")
    state.script.extend([(503, JSON, body)] * 3)
    with cx.ExplainClient(url, retry_policy=FAST) as client, pytest.raises(
            cx.ServerUnavailable, match="latent_shift is unavailable") as info:
        client.explain(png_bytes(), "m", methods="latent_shift")
    assert info.value.error_type == "autoencoder_unavailable" and len(state.requests) == 1


def test_rest_gives_up_after_retries(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.script.extend([(503, {}, b"")] * 10)
    policy = cx.RetryPolicy(retries=2, initial_backoff=0.01, max_backoff=0.02)
    with cx.ExplainClient(url, retry_policy=policy) as client, pytest.raises(cx.ServerUnavailable):
        client.predict(png_bytes(), "m")
    assert len(state.requests) == 3


@pytest.mark.parametrize("status", [400, 404, 422])
def test_rest_does_not_retry_client_errors(http_server: tuple[str, HttpState], status: int) -> None:
    url, state = http_server
    state.script.extend([(status, {}, b"")] * 3)
    with cx.ExplainClient(url, retry_policy=FAST) as client, pytest.raises(cx.CxrExplainClientError):
        client.predict(png_bytes(), "m")
    assert len(state.requests) == 1


def test_rest_timeout_and_connection_refused(http_server: tuple[str, HttpState]) -> None:
    url, state = http_server
    state.delay = 1.0
    with cx.ExplainClient(url, timeout=0.2, retries=0) as client, pytest.raises(cx.DeadlineExceeded):
        client.predict(png_bytes(), "m")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with cx.ExplainClient(f"http://127.0.0.1:{free}", retries=0) as client, pytest.raises(cx.ServerUnavailable):
        client.health()


def test_rest_health_models_describe_and_token_file(http_server: tuple[str, HttpState], tmp_path: Path) -> None:
    url, state = http_server
    key_file = tmp_path / "key_file.json"
    key_file.write_text(
        json.dumps(
            {
                "management": {"key": "mgmt-key", "expiration time": "2099"},
                "inference": {"key": "inf-key", "expiration time": "2099"},
                "API": {"key": "api"},
            }
        )
    )
    state.token = "inf-key"
    with cx.ExplainClient(url, token_file=key_file, management_url=url, retry_policy=FAST) as client:
        assert client.health().healthy
        desc = client.describe("m")
        state.token = "mgmt-key"
        models = client.models(limit=1)
    assert desc.labels == ["A", "B"] and desc.has_autoencoder and desc.input_spec["size"] == 224
    assert [m.name for m in models] == ["m0", "m1"]  # both pages
    describe_req = state.requests[1]
    assert header_options(describe_req) == {"describe": "true"} and describe_req.body == b""
    state.token = "other"
    with cx.ExplainClient(url, token="wrong", retries=0) as client, pytest.raises(cx.Unauthorized):
        client.health()


# --------------------------------------------------------------------------------------------------- gRPC
def test_grpc_retries_unavailable_in_the_sdk(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    inference.unavailable_first = 2
    with cx.ExplainClient(grpc_target=target, token="tok", retry_policy=FAST, transport="grpc") as client:
        ex = client.explain(png_bytes(), "m", methods=["cam"], targets="positive")
    assert ex.request_id == "req-1"
    assert [c[0] for c in inference.calls] == ["Predictions"] * 3
    name, req, metadata = inference.calls[-1]
    assert req is not None and req.model_name == "m"
    request_id = req.input["request_id"]  # the SDK's id for the call, the same on every attempt
    assert len(request_id) == 32 and {c[1].input["request_id"] for c in inference.calls} == {request_id}  # type: ignore[union-attr]
    assert dict(req.input) == {"data": png_bytes(), "methods": b"cam", "targets": b"positive", "request_id": request_id}
    assert metadata["authorization"] == "Bearer tok"


def test_grpc_without_retries_raises_unavailable(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    inference.unavailable_first = 1
    with cx.ExplainClient(grpc_target=target, retries=0, transport="grpc") as client:
        with pytest.raises(cx.ServerUnavailable) as info:
            client.predict(png_bytes(), "m")
    assert info.value.grpc_code == "UNAVAILABLE" and isinstance(info.value.__cause__, grpc.RpcError)
    assert len(inference.calls) == 1


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (
            "INTERNAL",
            "Model not found: m\norg.pytorch.serve.archive.model.ModelNotFoundException",
            cx.ModelNotFound,
        ),
        ("PERMISSION_DENIED", "Token Authorization failed.", cx.Unauthorized),
        ("INVALID_ARGUMENT", "bad input", cx.InvalidInput),
        ("FAILED_PRECONDITION", "precondition", cx.InvalidInput),
        ("NOT_FOUND", "no such model", cx.ModelNotFound),
        ("RESOURCE_EXHAUSTED", "queue full", cx.ServerUnavailable),
    ],
)
def test_grpc_status_mapping(
    grpc_server: tuple[str, Inference, Management], code: str, details: str, expected: type[cx.CxrExplainClientError]
) -> None:
    target, inference, _ = grpc_server
    inference.abort = (getattr(grpc.StatusCode, code), details)
    with cx.ExplainClient(grpc_target=target, retries=0, transport="grpc") as client:
        with pytest.raises(expected) as info:
            client.predict(png_bytes(), "m")
    assert info.value.grpc_code == code

    async def run() -> None:
        async with cx.AsyncExplainClient(grpc_target=target, retries=0, transport="grpc") as aclient:
            await aclient.predict(png_bytes(), "m")

    with pytest.raises(expected) as async_info:  # the async client maps errors with the same code
        asyncio.run(run())
    assert type(async_info.value) is type(info.value) and str(async_info.value) == str(info.value)


def test_grpc_payload_error_field(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    msg = explain_pb2.ExplainResponse(request_id="r-g")
    msg.error.CopyFrom(explain_pb2.Error(code=422, message="unary call asked to stream", type="invalid_option"))
    inference.reply = msg.SerializeToString()
    with cx.ExplainClient(grpc_target=target, retries=0) as client:
        with pytest.raises(cx.InvalidInput) as info:
            client.explain(png_bytes(), "m", methods="cam", transport="grpc")
    assert info.value.status == 422 and info.value.request_id == "r-g"


def test_grpc_health_models_describe(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, management = grpc_server
    inference.reply = make_description().SerializeToString()
    with cx.ExplainClient(grpc_target=target, grpc_management_target=target, transport="grpc") as client:
        assert client.health().healthy
        assert [m.name for m in client.models()] == ["g"]
        desc = client.describe("m")
    assert management.requests[0].limit > 0
    assert desc.architecture == "densenet121"
    describe_input = dict(inference.calls[-1][1].input)  # type: ignore[union-attr]
    assert describe_input == {"describe": b"true", "request_id": describe_input["request_id"]}
    assert len(describe_input["request_id"]) == 32


def test_grpc_stream_parts_in_order(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    inference.stream_parts = stream_parts()
    with cx.ExplainClient(grpc_target=target, token="tok") as client:
        parts = list(client.stream_explain(png_bytes(), "m", methods=["cam", "rap", "latent_shift"], frames=3))
    assert [p.kind for p in parts] == ["findings"] + ["heatmap"] * 4 + ["latent_shift", "end"]
    assert parts[-1].last and not any(p.last for p in parts[:-1])
    assert [f.label for f in parts[0].findings] == ["A", "B"]
    assert [(t, m) for p in parts[1:5] for t, m, _ in p.heatmaps] == [
        ("A", "cam"),
        ("A", "rap"),
        ("B", "cam"),
        ("B", "rap"),
    ]
    final = parts[-1].explanation
    unary = codec.to_explanation(make_response())
    assert final.targets == ["A", "B"]
    for t in ("A", "B"):
        for m in ("cam", "rap"):
            np.testing.assert_array_equal(final.results[t].heatmaps[m], unary.results[t].heatmaps[m])
    got_ls, want_ls = final.results["A"].latent_shift, unary.results["A"].latent_shift
    assert got_ls is not None and want_ls is not None
    np.testing.assert_array_equal(got_ls.frames, want_ls.frames)
    _, req, metadata = inference.calls[0]
    # to the streaming twin, with a sequence id (TorchServe 0.12 refuses a stream without one)
    assert req is not None and req.input["stream"] == b"true" and req.model_name == "m-stream"
    assert len(req.sequence_id) == 32
    assert metadata["authorization"] == "Bearer tok"
    assert inference.half_closed.wait(2.0)  # the client closed its side after the last part


def test_grpc_stream_error_status(grpc_server: tuple[str, Inference, Management]) -> None:
    target, inference, _ = grpc_server
    status = status_pb2.Status(code=13, message="Model not found: m")  # how StreamPredictions2 reports errors
    inference.stream_parts = [inference_pb2.PredictionResponse(status=status)]
    with cx.ExplainClient(grpc_target=target) as client, pytest.raises(cx.ModelNotFound):
        list(client.stream_explain(png_bytes(), "m"))



# -------------------------------------------------------------------------------------------------- async
def test_async_client_rest_grpc_and_stream(
    http_server: tuple[str, HttpState], grpc_server: tuple[str, Inference, Management]
) -> None:
    url, state = http_server
    target, inference, _ = grpc_server
    inference.stream_parts = stream_parts()
    inference.unavailable_first = 1
    state.script.append((503, {}, b""))

    async def run() -> tuple[cx.Explanation, cx.Explanation, list[cx.StreamPart]]:
        async with cx.AsyncExplainClient(url, target, retry_policy=FAST) as client:
            rest = await client.explain(png_bytes(), "m", methods=["cam"])
            over_grpc = await client.explain(png_bytes(), "m", methods=["cam"], transport="grpc")
            parts = [p async for p in client.stream_explain(png_bytes(), "m", methods=["cam"])]
            with pytest.raises(cx.InvalidInput):
                state.script.append((422, JSON, handler_error(422, "unknown_label", "no label Z")))
                await client.explain(png_bytes(), "m", targets="Z")
        return rest, over_grpc, parts

    rest, over_grpc, parts = asyncio.run(run())
    assert rest.request_id == over_grpc.request_id == "req-1"
    assert len(state.requests) == 3  # 503, retry, the 422 call
    assert [c[0] for c in inference.calls] == ["Predictions", "Predictions", "StreamPredictions2"]
    assert parts[-1].last and parts[0].kind == "findings"
    assert inference.half_closed.wait(2.0)  # closed its side after the last part, not cancelled
