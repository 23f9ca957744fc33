"""The ``semantic`` method through a real TorchServe: an archive exported with a recipe ``semantic`` field carries
its dissection table and answers the top units with their concepts, IoUs and maps, over REST and gRPC, through the
SDK; an archive without a table refuses ``semantic`` (422) saying how to get one.

One server for the module, two archives of the 64 px phantom classifier (dissection over 16 phantoms: the test
checks the plumbing; tests/lab/test_dissection.py checks what dissection finds).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from served import build_store, png_bytes

import cxrexplain_client as cx
from cxrexplain.semantic import capture_output
from export.launcher import Ports, TorchServe

pytestmark = pytest.mark.serve
LAYER = "features.denseblock3"


@pytest.fixture(scope="module")
def store(tmp_path_factory, phantom_classifier) -> Path:
    common = {"kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt", "onnx": False,
              "batch_size": 1}
    return build_store(tmp_path_factory.mktemp("export"), [
        {**common, "name": "cxr-sem", "semantic": {"layer": LAYER, "concepts": "phantom", "n": 16}},
        {**common, "name": "cxr-plain", "warm_up": False},
    ], phantom_classifier)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    with TorchServe(store, tmp_path_factory.mktemp("run"), ports=Ports.free()) as ts:
        yield ts


@pytest.fixture(scope="module")
def image(phantom_batch) -> bytes:
    return png_bytes(phantom_batch[0].image)  # Cardiomegaly


def test_archive_carries_the_table(store, phantom_classifier) -> None:
    with zipfile.ZipFile(store / "cxr-sem.mar") as mar:
        serve = json.loads(mar.read("serve.json"))
        table = json.loads(mar.read(serve["semantic"]["table"]))
    with torch.no_grad(), capture_output(phantom_classifier.module, LAYER) as seen:
        phantom_classifier.module(torch.zeros(1, 1, 64, 64))
    units = seen[0].shape[1]
    assert table["layer"] == LAYER and len(table["units"]) == units
    assert {"unit", "concept", "iou", "detector"} <= set(table["units"][0]) and "16 images" in table["data"]
    with zipfile.ZipFile(store / "cxr-plain.mar") as mar:
        assert "semantic" not in json.loads(mar.read("serve.json")) and "dissection.json" not in mar.namelist()


def test_semantic_rest_and_grpc_through_the_sdk(server, store, image) -> None:
    with zipfile.ZipFile(store / "cxr-sem.mar") as mar:
        table = json.loads(mar.read("dissection.json"))["units"]
    with cx.ExplainClient(url=server.url, grpc_target=server.grpc_target, token=server.key()) as client:
        assert "semantic" in client.describe("cxr-sem").methods
        assert "semantic" not in client.describe("cxr-plain").methods
        answers = {}
        for transport in ("rest", "grpc"):
            result = client.explain(image, "cxr-sem", methods=["semantic"], targets=["Cardiomegaly"],
                                    method_options={"semantic": {"top": 3, "steps": 8}}, transport=transport)
            res = result.result("Cardiomegaly")
            assert res.semantic is not None and res.semantic.layer == LAYER and len(res.semantic.units) == 3
            assert res.heatmaps["semantic"].shape == (64, 64)
            scores = [u.score for u in res.semantic.units]
            assert scores == sorted(scores, reverse=True) and scores[0] > 0
            for u in res.semantic.units:  # each unit's concept and IoU are the archive's table's
                assert (u.concept, u.detector) == (table[u.unit]["concept"], table[u.unit]["detector"])
                assert u.iou == pytest.approx(table[u.unit]["iou"], rel=1e-6)
                assert u.map.shape == (64, 64) and np.isfinite(u.map).all()
            # divided by its maximum at the layer's resolution, then upsampled: a bilinear blend never exceeds it
            assert all(float(np.abs(u.map).max()) <= 1.002 for u in res.semantic.units)
            assert float(res.semantic.units[0].map.max()) > 0.5
            answers[transport] = res.semantic
            assert result.summary()["targets"]["Cardiomegaly"]["semantic"]["layer"] == LAYER
        assert [u.unit for u in answers["rest"].units] == [u.unit for u in answers["grpc"].units]


def test_semantic_without_a_table_is_refused(server, image) -> None:
    with cx.ExplainClient(url=server.url, grpc_target=server.grpc_target, token=server.key()) as client:
        for transport in ("rest", "grpc"):
            with pytest.raises(cx.CxrExplainClientError, match="dissection table") as caught:
                client.explain(image, "cxr-plain", methods=["semantic"], transport=transport)
            assert caught.value.error_type == "dissection_required" and "semantic:" in str(caught.value)
