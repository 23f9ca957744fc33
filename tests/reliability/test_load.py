"""4 and then 16 SDK clients on a real TorchServe, mixing predictions and explanations over REST and gRPC, lose
no call and get a valid answer to every one (issue #10, load; the 10-minute version is ``make soak``).

The load comes from :mod:`benchmarks.load`, the soak's own generator. Latency percentiles, throughput, the SDK's
retries and the workers' resident memory before and after are printed (``pytest -s``), not asserted: the
machines are shared, and timings are the soak's and the benchmarks' business.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from served import build_store, png_bytes

from benchmarks.common import table
from benchmarks.load import DEFAULT_MIX, LoadResult, Server, load, worker_rss
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve

SECONDS = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_classifier, phantom_autoencoder):
    """The demo's shape: a classifier with its autoencoder (latent shift), batching up to 4 within 20 ms."""
    store = build_store(tmp_path_factory.mktemp("export"), [
        {"name": "cxr", "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "autoencoder": "cxr-ae", "batch_size": 4, "max_batch_delay_ms": 20},
        {"name": "cxr-ae", "kind": "autoencoder", "architecture": "resnet_ae_small", "weights": "weights/ae.pt"},
    ], phantom_classifier, phantom_autoencoder)
    with TorchServe(store, tmp_path_factory.mktemp("run"), ports=Ports.free()) as ts:
        yield ts


def report(result: LoadResult) -> str:
    rows = table(["kind", "n", "p50 ms", "p95 ms", "p99 ms"], result.rows())
    return (f"\n{result.clients} clients for {result.seconds:.1f} s: {len(result.samples)} calls, "
            f"{result.requests_per_s:.1f} /s, {len(result.errors)} errors, {len(result.retries)} SDK retries\n"
            f"{rows}\nerrors: {result.errors[:10]}\nretries: {result.retries[:10]}")


def test_4_then_16_clients_lose_no_call(server: TorchServe, phantom_batch) -> None:
    target = Server(server.url, server.grpc_target, Path(server.run_dir, "key_file.json"), "cxr")
    image = png_bytes(phantom_batch[0].image)
    before = worker_rss(server.management_url, server.headers("management"))
    results = [load(target, image, clients, SECONDS) for clients in (4, 16)]
    after = worker_rss(server.management_url, server.headers("management"))

    for result in results:
        print(report(result))
    print("worker RSS MiB (model, pid: before -> after): " + "; ".join(
        f"{model} {pid}: {before[model, pid]:.0f} -> {after.get((model, pid), float('nan')):.0f}"
        for model, pid in before))
    assert [r.errors for r in results] == [[], []]
    # Every kind answered over both transports, whatever the machine's speed: client i starts with kind i mod 5
    # and goes REST when i is even, so the 16 clients' first calls alone cover the 5 kinds on each transport.
    assert {(s.kind, s.transport) for s in results[1].samples} == {
        (k.name, t) for k in DEFAULT_MIX for t in ("rest", "grpc")}
    assert set(after) == set(before)  # the same workers: none died or was replaced under load
