"""The service core in-process: real encoded images through ExplainService, every option, caps, per-row errors."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cxrexplain_render as render
from cxrexplain.autoencoder import build_autoencoder
from cxrexplain.bundle import AutoencoderBundle, ClassifierBundle
from cxrexplain.errors import InvalidOption, UnknownMethod
from cxrexplain.methods.base import Method
from cxrexplain.models import build_classifier
from cxrexplain.preprocess import to_model_input
from cxrexplain.spec import unit_spec
from cxrexplain_imageio import decode_image
from cxrexplain_lab.hostile_bodies import deflated_dicom
from cxrexplain_serving.caps import CostCaps
from cxrexplain_serving.options import PROTOBUF, parse_options, with_header_options
from cxrexplain_serving.predictor import OnnxPredictor
from cxrexplain_serving.responses import decode
from cxrexplain_serving.rows import RowRequest
from cxrexplain_serving.service import ExplainService
from cxrexplain_serving.telemetry import DECODE_ERRORS, METHOD_LATENCY, RECONSTRUCTION_GAP, REQUESTS, Telemetry

LABELS = ["Cardiomegaly", "Nodule", "Mass", "Effusion", "Pneumothorax"]
SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_bundle(seed: int = 0) -> ClassifierBundle:
    torch.manual_seed(seed)
    return ClassifierBundle(build_classifier("densenet_small", len(LABELS), 1), labels=list(LABELS),
                            input_spec=unit_spec(1, SIZE), architecture="densenet_small", version="7",
                            sha256="ab" * 32)


def make_autoencoder(seed: int = 1) -> AutoencoderBundle:
    torch.manual_seed(seed)
    return AutoencoderBundle(build_autoencoder("resnet_ae_small"), input_spec=unit_spec(1, SIZE),
                             architecture="resnet_ae_small")


def png(height: int = 80, width: int = 100, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + 0.1 * rng.standard_normal((height, width))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bundle() -> ClassifierBundle:
    return make_bundle()


@pytest.fixture(scope="module")
def service(bundle: ClassifierBundle) -> ExplainService:
    return ExplainService(bundle, model_name="cxr-test", model_version="7", caps=CostCaps(), device="cpu")


def row(body: bytes | None = None, request_id: str = "r1", **options: object) -> RowRequest:
    return RowRequest(body=png() if body is None else body, content_type="image/png",
                      options={k: v for k, v in options.items()}, request_id=request_id)


def answer(service: ExplainService, *rows: RowRequest):
    results = service.handle_batch(list(rows))
    assert len(results) == len(rows)
    return [(r, decode(r.body, r.content_type)) for r in results]


def eager_probabilities(bundle: ClassifierBundle, data: bytes) -> torch.Tensor:
    x, _ = to_model_input(decode_image(data, "image/png").pixels, bundle.input_spec)
    with torch.inference_mode():
        return torch.sigmoid(bundle.module.cpu()(x))[0]


def array(m) -> np.ndarray:
    return render.decode_array(m.data, m.height, m.width, m.dtype)


# --------------------------------------------------------------------------------------------- predict


def test_predict_answers_findings_with_the_models_probabilities(service, bundle):
    (result, msg), = answer(service, row(request_id="abc-1"))
    assert result.status == 200 and result.kind == "predict"
    assert msg.request_id == "abc-1" and msg.model_name == "cxr-test" and msg.model_version == "7"
    assert msg.not_for_diagnostic_use is True
    expected = eager_probabilities(bundle, png())
    assert [f.label for f in msg.findings] == LABELS
    np.testing.assert_allclose([f.probability for f in msg.findings], expected.numpy(), atol=1e-6)
    for f in msg.findings:
        assert f.operating_point == pytest.approx(0.5) and f.positive == (f.probability > 0.5)
    # 80 x 100 image: centre-crop square of 80 starting at column 10, resized to the model's 64.
    g = msg.geometry
    assert (g.original_height, g.original_width, g.crop_top, g.crop_left, g.crop_size, g.model_size) == \
        (80, 100, 0, 10, 80, SIZE)
    assert not msg.heatmaps and not msg.HasField("error")
    assert {"decode", "predict", "total"} <= set(msg.timings_ms)


def test_json_is_the_proto_mapping_with_field_names(service):
    (result, _), = answer(service, row())
    body = json.loads(result.body)
    assert result.content_type == "application/json"
    assert body["not_for_diagnostic_use"] is True and body["request_id"] == "r1"
    assert "timings_ms" in body and body["findings"][0]["label"] == LABELS[0]


def test_binary_protobuf_by_accept_header_option_or_grpc(service):
    rows = [RowRequest(png(), "image/png", {}, "a", accept="application/x-protobuf"),
            RowRequest(png(), "image/png", {"accept": "application/x-protobuf"}, "b"),
            RowRequest(png(), None, {}, "c", rest=False),  # gRPC: no HTTP headers, binary by default
            RowRequest(png(), None, {"accept": b"application/json"}, "d", rest=False)]
    results = service.handle_batch(rows)
    assert [r.content_type for r in results] == [PROTOBUF, PROTOBUF, PROTOBUF, "application/json"]
    for r in results:
        msg = decode(r.body, r.content_type)
        assert msg.request_id == r.request_id and len(msg.findings) == len(LABELS)
    assert results[0].body[:1] == b"\x0a"  # binary: field 1 (request_id), length-delimited; JSON starts "{"
    assert results[3].body[:1] == b"{"


# --------------------------------------------------------------------------------------------- explain


def test_explain_default_method_is_cam_of_the_top_finding(service, bundle):
    (result, msg), = answer(service, RowRequest(png(), "image/png", {}, "r", explain_flag=True))
    assert result.status == 200 and result.kind == "explain"
    p = eager_probabilities(bundle, png())
    assert list(msg.targets) == [LABELS[int(p.argmax())]]
    (heatmap,) = msg.heatmaps
    assert heatmap.method == "cam" and heatmap.target == LABELS[int(p.argmax())]
    assert (heatmap.map.height, heatmap.map.width, heatmap.map.dtype) == (SIZE, SIZE, "float16")
    assert len(heatmap.map.data) == SIZE * SIZE * 2
    # Same numbers as the engine called directly (float16 on the wire).
    x, _ = to_model_input(decode_image(png(), "image/png").pixels, bundle.input_spec)
    direct = service.explainer.explain(x, methods=["cam"], targets=[int(p.argmax())]).heatmaps["cam"][0].numpy()
    np.testing.assert_allclose(array(heatmap.map), direct, rtol=2e-3, atol=2e-3 * np.abs(direct).max())


def test_targets_by_name_and_index_several_methods_one_engine_call(service, bundle):
    calls = []
    original = service.explainer.explain

    def spy(x, methods, targets, options=None):
        calls.append((x.shape[0], tuple(methods), list(targets)))
        return original(x, methods=methods, targets=targets, options=options)

    service.explainer.explain = spy
    try:
        (r1, m1), (r2, m2) = answer(
            service,
            row(methods="cam,saliency", targets="Mass,0", request_id="one"),
            row(body=png(seed=3), methods=["cam", "saliency"], targets="nodule", request_id="two"))
    finally:
        del service.explainer.explain
    assert r1.status == r2.status == 200
    # Both requests share one engine call: 2 + 1 rows, one per (image, target).
    assert calls == [(3, ("cam", "saliency"), [2, 0, 1])]
    assert list(m1.targets) == ["Mass", "Cardiomegaly"] and list(m2.targets) == ["Nodule"]
    assert [(h.method, h.target) for h in m1.heatmaps] == [
        ("cam", "Mass"), ("cam", "Cardiomegaly"), ("saliency", "Mass"), ("saliency", "Cardiomegaly")]
    # Batching does not change a request's answer.
    (_, alone), = answer(service, row(body=png(seed=3), methods="cam,saliency", targets="Nodule"))
    for a, b in zip(alone.heatmaps, m2.heatmaps, strict=True):
        np.testing.assert_allclose(array(a.map), array(b.map), rtol=1e-3, atol=1e-3 * np.abs(array(a.map)).max())


def test_top_k_and_positive_resolve_to_label_names(bundle):
    svc = ExplainService(make_bundle(), model_name="m", model_version="1", device="cpu")
    p = eager_probabilities(svc.bundle, png())
    order = torch.argsort(p, descending=True).tolist()
    # Operating points: exactly labels order[1] and order[3] are positive.
    ops = [float(p[i]) + 0.01 for i in range(len(LABELS))]
    for i in (order[1], order[3]):
        ops[i] = float(p[i]) - 0.01
    svc.bundle.op_thresholds = ops
    (_, top), (_, pos), (_, both) = answer(
        svc, row(methods="cam", top_k="3"), row(methods="cam", targets="positive"),
        row(methods="cam", targets="Pneumothorax,positive", top_k=1))
    assert list(top.targets) == [LABELS[i] for i in order[:3]]
    assert list(pos.targets) == [LABELS[order[1]], LABELS[order[3]]]
    expected = list(dict.fromkeys(["Pneumothorax", LABELS[order[1]], LABELS[order[3]], LABELS[order[0]]]))
    assert list(both.targets) == expected
    assert [f.positive for f in pos.findings] == [i in (order[1], order[3]) for i in range(len(LABELS))]
    # No positive finding: an answer with findings and no heatmap, not an error.
    svc.bundle.op_thresholds = [0.999] * len(LABELS)
    (r, none), = answer(svc, row(methods="cam", targets="positive"))
    assert r.status == 200 and not none.targets and not none.heatmaps and len(none.findings) == len(LABELS)


def test_heatmap_png_and_float32(service):
    (_, as_png), (_, f32) = answer(service, row(methods="cam", heatmap_format="png"),
                                   row(methods="cam", heatmap_dtype="float32"))
    m = as_png.heatmaps[0].map
    assert m.dtype == "png"
    with Image.open(io.BytesIO(m.data)) as im:
        assert im.size == (SIZE, SIZE)
        values = np.asarray(im, dtype=np.float64) / 255.0
    raw = array(f32.heatmaps[0].map)
    assert f32.heatmaps[0].map.dtype == "float32" and len(f32.heatmaps[0].map.data) == SIZE * SIZE * 4
    # The PNG is the display normalization of the raw map: negatives to 0, divided by the maximum.
    np.testing.assert_allclose(values, np.maximum(raw, 0) / raw.max(), atol=1 / 255 + 1e-6)


def test_integrated_gradients_steps_and_dotted_method_options(service):
    (r, msg), = answer(service, row(methods="integrated_gradients", steps="4",
                                    **{"integrated_gradients.internal_batch_size": "2"}))
    assert r.status == 200 and msg.heatmaps[0].method == "integrated_gradients"
    (r, msg), = answer(service, row(methods="integrated_gradients", **{"integrated_gradients.bogus": "1"}))
    assert r.status == 422 and msg.error.type == "invalid_option" and "bogus" in msg.error.message
    (r, msg), = answer(service, row(methods="cam", **{"integrated_gradients.steps": "4"}))
    assert r.status == 422 and "integrated_gradients" in msg.error.message


# --------------------------------------------------------------------------------------------- errors


def test_one_corrupt_row_does_not_fail_the_batch(service):
    truncated = png()[:60]
    results = answer(service, row(body=truncated, request_id="bad"), row(request_id="good"),
                     RowRequest(b"GIF89a" + bytes(100), "image/gif", {}, "gif"),
                     RowRequest(body=b"", options={}, request_id="empty"),
                     RowRequest(body={"image": "x"}, options={}, request_id="json"),
                     row(methods="cam", request_id="good2"))
    statuses = {r.request_id: (r.status, m.error.type) for r, m in results}
    assert statuses == {"bad": (400, "invalid_input"), "good": (200, ""), "gif": (415, "unsupported_media_type"),
                        "empty": (400, "invalid_input"), "json": (415, "unsupported_media_type"),
                        "good2": (200, "")}
    bad = results[0][1]
    # An error body carries only the error: code, message, request id, type.
    assert bad.error.code == 400 and bad.error.request_id == "bad" and bad.error.message
    assert not bad.findings and not bad.model_name
    assert json.loads(results[0][0].body) == {"error": {"code": 400, "message": bad.error.message,
                                                        "request_id": "bad", "type": "invalid_input"}}
    assert results[5][1].heatmaps


@pytest.mark.parametrize(("options", "error_type", "needle"), [
    ({"colour": "red"}, "invalid_option", "colour"),
    ({"methods": "cam,telepathy"}, "unknown_method", "telepathy"),
    ({"methods": "cam", "targets": "Fracture"}, "unknown_label", "Fracture"),
    ({"methods": "cam", "targets": "9"}, "unknown_label", "9"),
    ({"heatmap_format": "jpeg"}, "invalid_option", "heatmap_format"),
    ({"heatmap_dtype": "int8"}, "invalid_option", "heatmap_dtype"),
    ({"top_k": "zero"}, "invalid_option", "top_k"),
    ({"stream": "maybe"}, "invalid_option", "stream"),
    ({"stream": "true"}, "invalid_option", "StreamPredictions2"),
    ({"methods": "latent_shift"}, "autoencoder_required", "autoencoder"),
])
def test_unusable_requests_answer_422_naming_the_problem(service, options, error_type, needle):
    (r, msg), (ok, _) = answer(service, row(**options), row(request_id="ok"))
    assert r.status == 422 and msg.error.type == error_type and needle in msg.error.message
    assert msg.error.request_id == "r1" and ok.status == 200


def test_unsafe_request_id_is_rejected_and_replaced(service):
    (r, msg), = answer(service, row(request_id="x" * 200))
    assert r.status == 400 and msg.error.request_id != "x" * 200 and len(msg.error.request_id) == 36


# --------------------------------------------------------------------------------------------- cost caps


def test_cost_caps_are_checked_before_computing(bundle):
    caps = CostCaps(max_targets=2, max_steps=16, max_work_units=12, max_response_bytes=60_000, max_frames=4)
    svc = ExplainService(bundle, make_autoencoder(), model_name="m", model_version="1", caps=caps, device="cpu")
    calls = []
    original = svc.explainer.explain
    svc.explainer.explain = lambda *a, **k: calls.append(1) or original(*a, **k)
    results = answer(
        svc,
        row(methods="cam", top_k="3", request_id="targets"),
        row(methods="integrated_gradients", steps="32", request_id="steps"),
        row(methods="integrated_gradients", steps="8", targets="0,1", request_id="work"),
        row(methods="cam,saliency,gradcam", targets="0,1", heatmap_dtype="float32", request_id="size"),
        row(methods="latent_shift", frames="5", request_id="frames"),
        row(methods="cam", targets="0,1", request_id="fits"))
    got = {r.request_id: (r.status, m.error.type, m.error.message) for r, m in results}
    for rid, needle in [("targets", "3 targets"), ("steps", "steps=32"), ("work", "work units"),
                        ("size", "MiB"), ("frames", "frames=5")]:
        status, kind, message = got[rid]
        assert (status, kind) == (422, "cost_cap_exceeded") and needle in message, rid
    assert got["fits"][0] == 200
    assert len(calls) == 1  # only the request within the caps reached the engine


def test_response_size_estimate_bounds_the_real_response(bundle):
    svc = ExplainService(bundle, make_autoencoder(), model_name="m", model_version="1", device="cpu")
    options = dict(methods="cam,saliency,latent_shift", targets="0,2", frames="3", gif="true",
                   heatmap_dtype="float32")
    (r, msg), = answer(svc, row(**options))
    assert r.status == 200
    work = svc._prepare(0, row(**options))
    work.targets = [0, 2]
    estimate = svc.estimate_response_bytes(work)
    assert len(r.body) <= estimate <= 4 * len(r.body)


def test_caps_from_mapping_and_environment():
    caps = CostCaps.from_mapping({"max_targets": 3}, {"CXREXPLAIN_MAX_FRAMES": "12", "OTHER": "1"})
    assert caps.max_targets == 3 and caps.max_frames == 12 and caps.max_steps == CostCaps().max_steps
    with pytest.raises(ValueError, match="unknown cost cap"):
        CostCaps.from_mapping({"max_gpus": 1})
    with pytest.raises(ValueError, match="positive"):
        CostCaps.from_mapping({"max_targets": 0})


# --------------------------------------------------------------------------------------------- latent shift


def test_latent_shift_frames_gif_and_gap(bundle):
    events = []
    telemetry = Telemetry("m", lambda spec, value, dims, rid: events.append((spec, value, dims)))
    svc = ExplainService(bundle, make_autoencoder(), model_name="m", model_version="1", device="cpu",
                         telemetry=telemetry)
    (r, msg), = answer(svc, row(methods="latent_shift", targets="Effusion", frames="4", gif="true",
                                latent_shift_map="mean", direction="sigmoid"))
    assert r.status == 200, msg.error.message
    (shift,) = msg.latent_shifts
    assert shift.target == "Effusion" and shift.map_kind == "mean" and shift.direction == "sigmoid"
    assert len(shift.lambdas) == len(shift.frame_probabilities) == len(shift.frames) == 4
    assert list(shift.lambdas) == sorted(shift.lambdas)
    frames = np.stack([array(f) for f in shift.frames])
    assert frames.shape == (4, SIZE, SIZE) and frames.min() >= 0 and frames.max() <= 1
    assert shift.gif.startswith(b"GIF8")
    assert np.isfinite(shift.reconstruction_gap) and abs(shift.reconstruction_gap) <= 1
    assert [h.method for h in msg.heatmaps] == ["latent_shift"]
    gaps = [value for spec, value, _ in events if spec == RECONSTRUCTION_GAP]
    assert gaps == [pytest.approx(abs(shift.reconstruction_gap))]
    assert svc.describe().has_autoencoder and "latent_shift" in svc.describe().methods


def test_latent_shift_answer_is_the_engines_typed_result(bundle):
    """Every wire field of a latent shift is read from the engine's LatentShiftResult of that (image, target)."""
    svc = ExplainService(bundle, make_autoencoder(), model_name="m", model_version="1", device="cpu")
    (r, msg), = answer(svc, row(methods="latent_shift", targets="Mass,Nodule", frames="3",
                                heatmap_dtype="float32"))
    assert r.status == 200, msg.error.message
    x, _ = to_model_input(decode_image(png(), "image/png").pixels, bundle.input_spec)
    direct = svc.explainer.explain(x.expand(2, -1, -1, -1), methods=["latent_shift"], targets=["Mass", "Nodule"],
                                   options={"latent_shift": {"frames": 3}}).latent_shift
    assert direct is not None
    for n, shift in enumerate(msg.latent_shifts):
        assert shift.target == ["Mass", "Nodule"][n]
        assert (shift.map_kind, shift.direction) == (direct.map_kind, direct.direction) == ("max", "logit")
        np.testing.assert_allclose(shift.lambdas, direct.lambdas[n].numpy(), rtol=1e-6)
        np.testing.assert_allclose(shift.frame_probabilities, direct.frame_probabilities[n].numpy(), atol=1e-6)
        assert shift.reconstruction_gap == pytest.approx(float(direct.reconstruction_gap[n]), abs=1e-6)
        assert shift.upper_bound_reached == bool(direct.upper_bound_reached[n])
        np.testing.assert_allclose(np.stack([array(f) for f in shift.frames]), direct.frames[n].numpy(), atol=1e-6)


# --------------------------------------------------------------------------------------------- streaming


def test_streaming_sends_findings_heatmaps_then_latent_shift_then_end(bundle):
    svc = ExplainService(bundle, make_autoencoder(), model_name="m", model_version="1", device="cpu")
    parts: list[tuple[int, bytes, str]] = []
    streaming = RowRequest(png(), "image/png", {"methods": "cam,latent_shift", "targets": "0,1", "frames": "3",
                                                 "stream": "true"}, "s", rest=False, can_stream=True)
    plain = RowRequest(png(seed=2), "image/png", {"methods": "cam"}, "p")
    results = svc.handle_batch([plain, streaming], emit=lambda i, b, ct: parts.append((i, b, ct)))
    assert {i for i, _, _ in parts} == {1}  # only the streaming row emits intermediate parts
    messages = [decode(b, ct) for _, b, ct in parts]
    assert [m.part for m in messages] == ["findings", "heatmap", "heatmap", "heatmap", "heatmap",
                                          "latent_shift", "latent_shift"]
    assert len(messages[0].findings) == len(LABELS) and list(messages[0].targets) == ["Cardiomegaly", "Nodule"]
    assert all(m.request_id == "s" and m.not_for_diagnostic_use and not m.last for m in messages)
    final = decode(results[1].body, results[1].content_type)
    assert final.part == "end" and final.last and results[1].status == 200
    assert decode(results[0].body, results[0].content_type).heatmaps  # the unary row is answered whole


def test_streaming_describe_and_errors_end_the_stream(service):
    parts = []
    rows = [RowRequest(None, None, {"describe": "true", "stream": "true"}, "d", rest=False, can_stream=True),
            RowRequest(b"junk", None, {"stream": "true"}, "e", rest=False, can_stream=True)]
    d, e = service.handle_batch(rows, emit=lambda *a: parts.append(a))
    assert not parts
    dm, em = decode(d.body, d.content_type), decode(e.body, e.content_type)
    assert dm.last and dm.description.labels == LABELS
    assert e.status == 415 and em.last and em.error.code == 415


# --------------------------------------------------------------------------------------------- describe, backends


def test_describe_answers_the_model_card(service):
    (r, msg), = answer(service, RowRequest(None, None, {"describe": "true"}, "d"))
    d = msg.description
    assert r.status == 200 and r.kind == "describe"
    assert list(d.labels) == LABELS and list(d.operating_points) == [0.5] * 5
    assert d.input_spec.channels == 1 and d.input_spec.size == SIZE and d.input_spec.resize == "center_crop"
    assert d.intended_use == "Research use only: not for diagnostic use" and msg.not_for_diagnostic_use
    assert {"cam", "gradcam", "saliency", "integrated_gradients"} <= set(d.methods)
    assert "latent_shift" not in d.methods and not d.has_autoencoder
    assert d.weights_sha256 == "ab" * 32 and d.version == "7" and d.architecture == "densenet_small"


def test_onnx_backend_serves_predictions(bundle, tmp_path):
    path = tmp_path / "model.onnx"
    module = bundle.module.cpu().eval()
    torch.onnx.export(module, (torch.zeros(1, 1, SIZE, SIZE),), str(path), input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    predictor = OnnxPredictor(path)
    assert predictor.providers == ["CPUExecutionProvider"]
    # ONNX Runtime's threads must not spin after a run: they would slow the torch explanation that follows
    options = predictor.session.get_session_options()
    for pool in ("intra", "inter"):
        assert options.get_session_config_entry(f"session.{pool}_op.allow_spinning") == "0"
    svc = ExplainService(bundle, model_name="m", model_version="1", device="cpu", predict_backend=predictor)
    (_, a), (_, b) = answer(svc, row(), row(body=png(seed=5)))
    for msg, data in ((a, png()), (b, png(seed=5))):
        np.testing.assert_allclose([f.probability for f in msg.findings], eager_probabilities(bundle, data),
                                   atol=1e-5)


def test_the_default_target_comes_from_the_explanations_own_forward(bundle):
    """No prediction pass for the default target (the top finding): one forward serves findings and target,
    even with a predictions backend; ``positive`` still needs the findings first."""
    calls = []

    def backend(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        with torch.inference_mode():
            return torch.sigmoid(bundle.module(x))

    svc = ExplainService(bundle, model_name="m", model_version="1", device="cpu", predict_backend=backend)
    (r, msg), (r2, msg2) = answer(svc, row(methods="cam"), row(body=png(seed=5), methods="cam", request_id="r2"))
    assert calls == [] and "predict" not in r.timings_ms
    for message, data in ((msg, png()), (msg2, png(seed=5))):
        expected = eager_probabilities(bundle, data)
        np.testing.assert_allclose([f.probability for f in message.findings], expected, atol=1e-5)
        assert list(message.targets) == [LABELS[int(expected.argmax())]] and len(message.heatmaps) == 1
    answer(svc, row(methods="cam", targets="positive"))
    assert calls == [1]


def test_each_method_is_built_once_per_request_and_the_engine_runs_those_instances(service, monkeypatch):
    """Preparation builds each requested method (which validates its options); the engine call reuses them."""
    built = []
    original = Method.__init__

    def counting(self, **options):
        built.append(self.name)
        original(self, **options)

    monkeypatch.setattr(Method, "__init__", counting)
    (r1, m1), (r2, m2) = answer(service, row(methods="cam,integrated_gradients", steps="4", request_id="a"),
                                row(body=png(seed=3), methods="cam,integrated_gradients", steps="4",
                                    request_id="b"))
    assert r1.status == r2.status == 200 and len(m1.heatmaps) == len(m2.heatmaps) == 2
    assert sorted(built) == ["cam", "cam", "integrated_gradients", "integrated_gradients"]


def test_the_default_target_travels_as_none_to_the_engine(service, bundle):
    """The service hands the engine ``None`` for a default target and answers with what the engine's forward
    read: the top finding of the findings in the same answer."""
    seen = []
    original = service.explainer.explain

    def spy(x, methods, targets, options=None):
        seen.append(list(targets))
        return original(x, methods=methods, targets=targets, options=options)

    service.explainer.explain = spy
    try:
        (r1, m1), (r2, m2) = answer(service, row(methods="cam", request_id="default"),
                                    row(body=png(seed=4), methods="cam", targets="Mass", request_id="named"))
    finally:
        del service.explainer.explain
    assert r1.status == r2.status == 200
    assert seen == [[None, 2]]
    top = max(m1.findings, key=lambda f: f.probability).label
    assert list(m1.targets) == [top] and m1.heatmaps[0].target == top
    assert list(m2.targets) == ["Mass"]


def test_telemetry_counts_requests_methods_and_decode_errors(bundle):
    events = []
    svc = ExplainService(bundle, model_name="m", model_version="1", device="cpu",
                         telemetry=Telemetry("m", lambda spec, value, dims, rid: events.append((spec, dims))))
    answer(svc, row(methods="cam,saliency"), row(body=b"\x89PNG\r\n\x1a\nbroken"), row())
    requests = sorted(tuple(d) for s, d in events if s == REQUESTS)
    assert requests == [("m", "cam", "200"), ("m", "predict", "200"), ("m", "predict", "400"),
                        ("m", "saliency", "200")]
    assert [d for s, d in events if s == DECODE_ERRORS] == [["m", "invalid_input"]]
    latencies = sorted(d[1] for s, d in events if s == METHOD_LATENCY)
    assert latencies == ["cam", "predict", "saliency"]  # each method timed on its own by the Explainer


def test_options_parse_every_transport_form():
    as_bytes = parse_options({"methods": b"cam, saliency", "top_k": b"2", "stream": b"false", "gif": True,
                              "targets": ["Mass", 3, "positive"], "ts_request_sequence_end": b"true"})
    as_text = parse_options({"methods": "cam,saliency", "top_k": 2, "stream": "0", "gif": "yes",
                             "targets": "Mass,3,positive"})
    assert as_bytes.methods == as_text.methods == ("cam", "saliency")
    assert as_bytes.top_k == as_text.top_k == 2 and as_bytes.gif and as_text.gif
    assert as_bytes.targets == as_text.targets == ("Mass", "3") and as_bytes.positive and as_text.positive
    assert parse_options({"frames": "6", "latent_shift_map": "INT"}).method_options == {
        "latent_shift": {"frames": 6, "map": "int"}}


def test_method_options_are_read_as_the_schema_declares_them():
    got = parse_options({"latent_shift.map": "INT", "integrated_gradients.steps": b"4", "lrp.alpha": "2",
                         "gradcam.layer": "features.28", "steps": "8"})
    assert got.method_options == {"latent_shift": {"map": "int"}, "integrated_gradients": {"steps": 4},
                                  "lrp": {"alpha": 2.0}, "gradcam": {"layer": "features.28"}}
    assert got.steps == 8  # the short key is kept for the cost cap; the explicit dotted key wins for the method
    for raw, needle in [({"latent_shift.map": "median"}, "latent_shift.map must be one of max, mean"),
                        ({"integrated_gradients.steps": "0"}, "integrated_gradients.steps must be at least 1"),
                        ({"lrp.alpha": "much"}, "lrp.alpha must be a number"),
                        ({"gradcam.depth": "3"}, "gradcam does not take 'depth'"),
                        ({"value_range": "1"}, "value_range must be two numbers"),
                        ({"accept": "text/html"}, "accept must be application/json or application/x-protobuf")]:
        with pytest.raises(InvalidOption, match=needle):
            parse_options(raw)
    with pytest.raises(UnknownMethod, match="telepathy"):
        parse_options({"telepathy.depth": "3"})
    assert parse_options({"accept": "application/json; charset=utf-8"}).accept == "application/json"


def test_options_header_is_the_same_request_as_fields(service):
    """REST's URL-encoded options header (the client SDK's form) means what the same multipart fields mean; an
    option given twice is 422 naming it, a header that is not URL-encoded pairs 400."""
    assert with_header_options({"data": b"x"}, "methods=cam%2Clrp&lrp.alpha=2&lrp.beta=1&top_k=2") == {
        "data": b"x", "methods": "cam,lrp", "lrp.alpha": "2", "lrp.beta": "1", "top_k": "2"}
    fields = row(methods="cam,saliency", targets="Mass", heatmap_dtype="float32")
    header = RowRequest(body=png(), content_type="image/png", request_id="h",
                        header_options="methods=cam%2Csaliency&targets=Mass&heatmap_dtype=float32")
    (r1, m1), (r2, m2) = answer(service, fields, header)
    assert r1.status == r2.status == 200
    assert [h.method for h in m1.heatmaps] == [h.method for h in m2.heatmaps] == ["cam", "saliency"]
    for a, b in zip(m1.heatmaps, m2.heatmaps, strict=True):
        assert a.map.data == b.map.data
    twice = RowRequest(body=png(), content_type="image/png", options={"methods": "cam"}, request_id="t",
                       header_options="METHODS=lrp")
    malformed = RowRequest(body=png(), content_type="image/png", request_id="m", header_options="methods")
    (r3, m3), (r4, m4) = answer(service, twice, malformed)
    assert r3.status == 422 and "'methods' is given twice" in m3.error.message
    assert r4.status == 400 and "URL-encoded" in m4.error.message


def test_npy_body_with_value_range(service):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.save(buf, rng.uniform(0, 4095, (70, 70)).astype(np.float32))
    data = buf.getvalue()
    (ok, msg), (bad, err) = answer(service, RowRequest(data, "application/x-npy", {"value_range": "0,4095"}, "n1"),
                                   RowRequest(data, "application/x-npy", {}, "n2"))
    assert ok.status == 200 and len(msg.findings) == len(LABELS)
    assert bad.status == 400 and "value_range" in err.error.message


# --------------------------------------------------------------------------------------------- memory budget


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_large_image_is_decoded_reduced_with_the_original_geometry(service, bundle):
    big = png(1500, 1100, seed=3)
    (result, msg), = answer(service, row(body=big))
    assert result.status == 200
    g = msg.geometry
    assert (g.original_height, g.original_width, g.crop_top, g.crop_left, g.crop_size, g.model_size) == \
        (1500, 1100, 200, 0, 1100, SIZE)
    reduced = decode_image(big, "image/png", target_size=SIZE)
    assert reduced.reduction == 1100 // (2 * SIZE)
    x, geometry = to_model_input(reduced.pixels, bundle.input_spec, original_size=(1500, 1100),
                                 reduction=reduced.reduction)
    with torch.inference_mode():
        served = torch.sigmoid(bundle.module.cpu()(x))[0]
    np.testing.assert_allclose([f.probability for f in msg.findings], served.numpy(), atol=1e-6)
    full = eager_probabilities(bundle, big)  # the full-resolution decode answers the same within noise
    np.testing.assert_allclose(served.numpy(), full.numpy(), atol=5e-3)
    assert geometry == to_model_input(decode_image(big).pixels, bundle.input_spec)[1]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux /proc")
def test_deflated_dicom_over_the_pixel_cap_is_a_400_before_it_is_inflated(service):
    data = deflated_dicom()  # 16384 x 16384 x 16 bits: 512 MiB inflated, ~0.5 MB on the wire
    assert len(data) < 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _kib("VmRSS")
    (result, msg), = answer(service, RowRequest(body=data, content_type="application/dicom", options={},
                                                request_id="deflated"))
    growth_mb = (_kib("VmHWM") - before) * 1024 / 1e6
    assert result.status == 400 and msg.error.type == "invalid_input"
    assert "16384 x 16384" in msg.error.message and "limit of 40000000 pixels" in msg.error.message
    assert growth_mb <= 300, growth_mb  # before issue #10: +1,033 MB


def test_warm_up_answers_every_kind_once_without_counting_it_as_traffic(bundle):
    from cxrexplain_serving.autoencoder_service import AutoencoderService
    from cxrexplain_serving.telemetry import Telemetry
    from cxrexplain_serving.warmup import warm_up

    emitted: list[str] = []
    telemetry = Telemetry("m", lambda spec, *_: emitted.append(spec.name))
    svc = ExplainService(bundle, make_autoencoder(), model_name="m", model_version="1", device="cpu",
                         telemetry=telemetry)
    report = warm_up(svc)
    assert report["status"] == {"predict": 200, **{method: 200 for method in svc.methods}}
    assert "latent_shift" in report["status"] and emitted == []
    (result,) = svc.handle_batch([row(methods="cam")])  # the sink is back for real requests
    assert result.status == 200 and "cxrexplain_requests_total" in emitted
    ae = AutoencoderService(make_autoencoder(), model_name="ae", model_version="1", device="cpu")
    assert warm_up(ae)["status"] == {"reconstruct": 200, "encode": 200}
