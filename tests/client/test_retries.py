"""No call lost (issue #10): what the SDK retries, with one request id, and for how long."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from servers import (
    JSON,
    RESET,
    HttpState,
    Inference,
    Management,
    png_bytes,
    request_handler,
    stream_parts,
    ts_error,
)

import cxrexplain_client as cx
from cxrexplain_client._proto import (
    inference_pb2_grpc,
)
from cxrexplain_client._retry import Outcome, RetryState

# ------------------------------------------------------------------------------ retries: no call lost (#10)
# What TorchServe 0.12 answers when the worker handling the call dies (seen against a real server): 507 when the
# frontend has already seen the worker exit with 137 (SIGKILL), else 500; over gRPC RESOURCE_EXHAUSTED / INTERNAL.
WORKER_DIED_REST = (507, JSON, ts_error(507, "InternalServerException", "Worker died."))
WORKER_DIED_REST_500 = (500, JSON, ts_error(500, "InternalServerException", "Worker died."))
WORKER_DIED_GRPC = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Worker died.\norg.pytorch.serve.http.InternalServerException")
WORKER_DIED_GRPC_500 = (grpc.StatusCode.INTERNAL, "Worker died.\norg.pytorch.serve.http.InternalServerException")
UNAVAILABLE_GRPC = (grpc.StatusCode.UNAVAILABLE, "Model cxr has no worker to serve inference request.")
FAST_BUDGET = cx.RetryPolicy(initial_backoff=0.01, max_backoff=0.02, budget=2.0)


def _explain(mode: str, transport: str = "rest", **kwargs: Any) -> cx.Explanation:
    """One explain call through the sync or the async client built with ``kwargs``."""
    if mode == "sync":
        with cx.ExplainClient(**kwargs) as client:
            return client.explain(png_bytes(), "m", methods="cam", transport=transport)

    async def run() -> cx.Explanation:
        async with cx.AsyncExplainClient(**kwargs) as client:
            return await client.explain(png_bytes(), "m", methods="cam", transport=transport)

    return asyncio.run(run())


def _request_ids(state: HttpState) -> list[str | None]:
    return [next((v for k, v in r.headers.items() if k.lower() == "x-request-id"), None) for r in state.requests]


def _key_file(path: Path, inference: str) -> Path:
    path.write_text(json.dumps({"management": {"key": "mgmt"}, "inference": {"key": inference}, "API": {"key": "a"}}))
    return path


def test_default_policy_covers_30_s_of_unavailability() -> None:
    now = [0.0]
    state = RetryState(cx.RetryPolicy(), clock=lambda: now[0])
    waits = []
    while (delay := state.next_delay(Outcome.UNAVAILABLE)) is not None:
        waits.append(delay)
        now[0] += delay + 0.01  # each attempt is refused at once
    assert now[0] >= 30.0  # a restarting frontend (about 30 s) is ridden out
    assert max(waits) <= cx.RetryPolicy().max_backoff  # and found again within one short wait once it is back
    assert cx.RetryPolicy(retries=0).enabled is False


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rest_retries_503_507_and_reset_with_one_request_id(http_server: tuple[str, HttpState], mode: str) -> None:
    url, state = http_server
    state.script.extend([(503, {}, b""), (RESET, {}, b""), WORKER_DIED_REST, (RESET, {}, b"")])
    ex = _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert ex.request_id == "req-1"
    state.script.append(WORKER_DIED_REST_500)  # the other form of a worker death
    _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert len(state.requests) == 7
    ids = _request_ids(state)[:5]
    assert len(ids) == 5 and ids[0] is not None and len(ids[0]) == 32 and set(ids) == {ids[0]}
    assert len({r.body for r in state.requests}) == 1  # the same request every time


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_server_that_starts_late_is_waited_for(mode: str, transport: str) -> None:
    with socket.socket() as s:  # a port nothing listens on yet: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state, inference = HttpState(), Inference()
    started: list[Any] = []

    def start_later() -> None:
        time.sleep(0.3)  # the frontend restarting
        if transport == "rest":
            http = ThreadingHTTPServer(("127.0.0.1", port), request_handler(state))
            threading.Thread(target=http.serve_forever, daemon=True).start()
            started.append(http)
        else:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(inference, server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            server.start()
            started.append(server)

    threading.Thread(target=start_later, daemon=True).start()
    try:
        ex = _explain(mode, transport, url=f"http://127.0.0.1:{port}", grpc_target=f"127.0.0.1:{port}",
                      retry_policy=FAST_BUDGET)
    finally:
        time.sleep(0.35)
        for server in started:
            if isinstance(server, ThreadingHTTPServer):
                server.shutdown()
                server.server_close()
            else:
                server.stop(grace=None)
    assert ex.request_id == "req-1"
    assert len(state.requests if transport == "rest" else inference.calls) == 1  # refusals never reached it


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rest_worker_death_is_retried_once(http_server: tuple[str, HttpState], mode: str) -> None:
    url, state = http_server
    state.script.extend([WORKER_DIED_REST, (503, {}, b""), WORKER_DIED_REST])  # a poison image, twice deadly
    with pytest.raises(cx.ServerUnavailable) as info:
        _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert info.value.status == 507 and "Worker died" in str(info.value)
    assert len(state.requests) == 3  # the second worker death ends the call
    assert isinstance(info.value.__cause__, Exception)
    state.requests.clear()
    state.script.extend([WORKER_DIED_REST_500, WORKER_DIED_REST_500])
    with pytest.raises(cx.ServerUnavailable) as second:
        _explain(mode, url=url, retry_policy=FAST_BUDGET)
    assert second.value.status == 500 and len(state.requests) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_retry_budget_stops_retrying(
    http_server: tuple[str, HttpState], grpc_server: tuple[str, Inference, Management], mode: str, transport: str
) -> None:
    url, state = http_server
    target, inference, _ = grpc_server
    state.script.extend([(503, {}, b"")] * 1000)
    inference.unavailable_first = 1000
    policy = cx.RetryPolicy(initial_backoff=0.02, max_backoff=0.05, budget=0.3)
    start = time.monotonic()
    with pytest.raises(cx.ServerUnavailable):
        _explain(mode, transport, url=url, grpc_target=target, retry_policy=policy)
    elapsed = time.monotonic() - start
    attempts = len(state.requests) if transport == "rest" else len(inference.calls)
    assert 0.2 < elapsed < 1.0 and 4 <= attempts <= 30  # retried for the budget, then no more


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_grpc_retries_unavailable_and_a_dead_worker_with_one_request_id(
    grpc_server: tuple[str, Inference, Management], mode: str
) -> None:
    target, inference, _ = grpc_server
    inference.script.extend([UNAVAILABLE_GRPC, WORKER_DIED_GRPC, (grpc.StatusCode.UNAVAILABLE, "restarting")])
    ex = _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert ex.request_id == "req-1"
    ids = {c[1].input["request_id"] for c in inference.calls}  # type: ignore[union-attr]
    assert len(inference.calls) == 4 and len(ids) == 1 and len(ids.pop()) == 32
    inference.script.append(WORKER_DIED_GRPC_500)
    _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert len(inference.calls) == 6


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_is_retried_until_its_first_part_with_one_request_id(
    grpc_server: tuple[str, Inference, Management], mode: str
) -> None:
    target, inference, _ = grpc_server
    inference.stream_parts = stream_parts()
    inference.script.extend([UNAVAILABLE_GRPC, WORKER_DIED_GRPC])

    async def parts_async() -> list[cx.StreamPart]:
        async with cx.AsyncExplainClient(grpc_target=target, retry_policy=FAST_BUDGET) as client:
            return [p async for p in client.stream_explain(png_bytes(), "m", request_id="stream-1")]

    if mode == "sync":
        with cx.ExplainClient(grpc_target=target, retry_policy=FAST_BUDGET) as client:
            parts = list(client.stream_explain(png_bytes(), "m", request_id="stream-1"))
    else:
        parts = asyncio.run(parts_async())
    assert parts[-1].last and parts[0].kind == "findings"
    requests = [c[1] for c in inference.calls]
    assert len(requests) == 3 and {r.input["request_id"] for r in requests} == {b"stream-1"}  # type: ignore[union-attr]
    assert len({r.sequence_id for r in requests}) == 3  # type: ignore[union-attr]  # a fresh sequence each time
    inference.calls.clear()
    inference.script.extend([WORKER_DIED_GRPC, WORKER_DIED_GRPC_500])  # a poison image: once, not twice
    with cx.ExplainClient(grpc_target=target, retry_policy=FAST_BUDGET) as client, pytest.raises(cx.ServerUnavailable):
        list(client.stream_explain(png_bytes(), "m"))
    assert len(inference.calls) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_grpc_worker_death_is_retried_once_and_a_full_queue_not_at_all(
    grpc_server: tuple[str, Inference, Management], mode: str
) -> None:
    target, inference, _ = grpc_server
    inference.script.extend([WORKER_DIED_GRPC, WORKER_DIED_GRPC_500])
    with pytest.raises(cx.ServerUnavailable) as info:
        _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert info.value.status == 500 and info.value.grpc_code == "INTERNAL"
    assert len(inference.calls) == 2 and isinstance(info.value.__cause__, grpc.RpcError)
    inference.calls.clear()
    inference.script.append((grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))  # load, not a dead worker
    with pytest.raises(cx.ServerUnavailable) as full:
        _explain(mode, "grpc", grpc_target=target, retry_policy=FAST_BUDGET)
    assert full.value.status == 429 and len(inference.calls) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rest_refused_key_rereads_the_token_file_once(
    http_server: tuple[str, HttpState], tmp_path: Path, mode: str
) -> None:
    url, state = http_server
    key_file = _key_file(tmp_path / "key_file.json", "old-key")
    state.token = "new-key"  # the server restarted and wrote new keys

    async def run_async(client: cx.AsyncExplainClient) -> list[cx.Explanation]:
        _key_file(key_file, "new-key")
        first = await client.explain(png_bytes(), "m", methods="cam")
        return [first, await client.explain(png_bytes(), "m", methods="cam")]

    if mode == "sync":
        with cx.ExplainClient(url, token_file=key_file, retry_policy=FAST_BUDGET) as client:
            _key_file(key_file, "new-key")
            answers = [client.explain(png_bytes(), "m", methods="cam") for _ in range(2)]
    else:

        async def run() -> list[cx.Explanation]:
            async with cx.AsyncExplainClient(url, token_file=key_file, retry_policy=FAST_BUDGET) as client:
                return await run_async(client)

        answers = asyncio.run(run())
    assert [a.request_id for a in answers] == ["req-1", "req-1"]
    auth = [r.headers["Authorization"] for r in state.requests]
    assert auth == ["Bearer old-key", "Bearer new-key", "Bearer new-key"]  # re-read once, then kept
    ids = _request_ids(state)
    assert ids[0] == ids[1] != ids[2]  # the retry is the same request; the next call is another

    state.requests.clear()
    state.token = "newer-key"  # refused again, but the key file holds nothing newer: fail after one try
    with pytest.raises(cx.Unauthorized) as info:
        _explain(mode, url=url, token_file=key_file, retry_policy=FAST_BUDGET)
    assert info.value.status == 400 and len(state.requests) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_grpc_permission_denied_rereads_the_token_file_once(
    grpc_server: tuple[str, Inference, Management], tmp_path: Path, mode: str
) -> None:
    target, inference, _ = grpc_server
    key_file = _key_file(tmp_path / "key_file.json", "old-key")
    inference.token = "new-key"
    if mode == "sync":
        with cx.ExplainClient(grpc_target=target, token_file=key_file, retry_policy=FAST_BUDGET) as client:
            _key_file(key_file, "new-key")
            ex = client.explain(png_bytes(), "m", methods="cam", transport="grpc")
    else:

        async def run() -> cx.Explanation:
            async with cx.AsyncExplainClient(grpc_target=target, token_file=key_file, retry_policy=FAST_BUDGET) as c:
                _key_file(key_file, "new-key")
                return await c.explain(png_bytes(), "m", methods="cam", transport="grpc")

        ex = asyncio.run(run())
    assert ex.request_id == "req-1"
    assert [c[2]["authorization"] for c in inference.calls] == ["Bearer old-key", "Bearer new-key"]
    assert len({c[1].input["request_id"] for c in inference.calls}) == 1  # type: ignore[union-attr]
    inference.calls.clear()
    inference.token = "newer-key"
    with pytest.raises(cx.Unauthorized):
        _explain(mode, "grpc", grpc_target=target, token_file=key_file, retry_policy=FAST_BUDGET)
    assert len(inference.calls) == 1
