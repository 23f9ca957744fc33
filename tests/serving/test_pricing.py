"""Validate and price before work: every option is parsed, range-checked and priced from the options alone,
before any method object is built, any pixel decoded or any tensor allocated; no option value answers a 5xx."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrexplain import options_schema as schema
from cxrexplain.bundle import ClassifierBundle
from cxrexplain.errors import CxrExplainError
from cxrexplain.methods import gradients
from cxrexplain.methods.base import Method
from cxrexplain.models import build_classifier
from cxrexplain.spec import unit_spec
from cxrexplain_serving.caps import CostCaps
from cxrexplain_serving.prepare import Preparer
from cxrexplain_serving.responses import decode
from cxrexplain_serving.rows import RowRequest
from cxrexplain_serving.service import ExplainService
from cxrexplain_serving.telemetry import Telemetry

LABELS = ["Cardiomegaly", "Nodule", "Mass", "Effusion", "Pneumothorax"]
SIZE = 64
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNG = tiny_png()


@pytest.fixture(scope="module")
def service() -> ExplainService:
    torch.manual_seed(0)
    bundle = ClassifierBundle(build_classifier("densenet_small", len(LABELS), 1), labels=list(LABELS),
                              input_spec=unit_spec(1, SIZE), architecture="densenet_small", version="1",
                              sha256="ab" * 32)
    return ExplainService(bundle, model_name="m", model_version="1", caps=CostCaps(), device="cpu")


def answer(service: ExplainService, body: bytes, **options: str):
    (result,) = service.handle_batch([RowRequest(body=body, content_type="image/png", options=options,
                                                 request_id="r")])
    return result, decode(result.body, result.content_type)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the method objects built while the test runs."""
    names: list[str] = []
    original = Method.__init__

    def counting(self: Method, **options: object) -> None:
        names.append(self.name)
        original(self, **options)

    monkeypatch.setattr(Method, "__init__", counting)
    return names


@pytest.mark.parametrize(("steps", "error_type"), [("129", "cost_cap_exceeded"), ("4096", "cost_cap_exceeded"),
                                                    ("6000", "invalid_option"), ("1000000", "invalid_option"),
                                                    ("1" + "0" * 5000, "invalid_option")])
def test_over_cap_steps_are_refused_before_any_method_is_built(service, built, steps, error_type):
    """steps above the cap (128) or the schema's range (at most 4096; and a number too long to read) answer 422
    naming steps: no method object, no quadrature, no decoding (the body is not an image at all)."""
    gradients.path_rule.cache_clear()
    for options in ({"methods": "integrated_gradients", "steps": steps},
                    {"methods": "cam,integrated_gradients", "integrated_gradients.steps": steps}):
        result, msg = answer(service, b"not an image", **options)
        assert (result.status, msg.error.type) == (422, error_type), msg.error.message
        assert "steps" in msg.error.message
    assert built == [] and gradients.path_rule.cache_info().currsize == 0


def test_positive_is_priced_at_its_worst_accepted_case_before_decoding(service, built):
    # positive can resolve to every label; the most it can resolve to and pass the target cap after the forward
    # pass is max_targets: its work is priced at min(labels, max_targets) targets, before any decoding.
    tight = ExplainService(service.bundle, model_name="m", model_version="1", device="cpu",
                           caps=CostCaps(max_targets=len(LABELS) - 1, max_work_units=len(LABELS) - 2))
    result, msg = answer(tight, b"not an image", methods="cam", targets="positive")
    assert (result.status, msg.error.type) == (422, "cost_cap_exceeded"), msg.error.message
    assert f"costs {len(LABELS) - 1} work units (targets {len(LABELS) - 1} x" in msg.error.message
    assert built == []
    # With work to spare, positive passes pricing on a model with more labels than the target cap: the body is
    # decoded (and, being no image, refused as such: 400).
    roomy = ExplainService(service.bundle, model_name="m", model_version="1", device="cpu",
                           caps=CostCaps(max_targets=len(LABELS) - 1))
    result, msg = answer(roomy, b"not an image", methods="cam", targets="positive")
    assert result.status == 400 and built == ["cam"], msg.error.message
    built.clear()
    # top_k and named targets are priced at their count (at most the model's labels); the body is decoded only
    # once the price is within the caps, and then its fault is its own (400).
    result, msg = answer(roomy, b"not an image", methods="cam", top_k="1000")
    assert (result.status, msg.error.type) == (422, "cost_cap_exceeded") and "5 targets" in msg.error.message
    assert built == []
    result, msg = answer(roomy, b"not an image", methods="cam", top_k="4")
    assert result.status == 400 and built == ["cam"]


def test_work_units_are_priced_from_latent_shift_options_alone(built):
    """A latent-shift search priced far above the work cap (a tiny grid step, a huge lambda cap) is refused
    without an autoencoder run or a method built; the message names the method's cost."""
    preparer = Preparer(unit_spec(1, SIZE), CostCaps(), labels=5, methods=("latent_shift",), default_methods=("cam",),
                        has_autoencoder=True, telemetry=Telemetry("m"))
    state = preparer.prepare(0, RowRequest(body=b"x", options={
        "methods": "latent_shift", "latent_shift.step": "0.01", "latent_shift.max_lambda": "1000000",
        "latent_shift.search": "exhaustive"}))
    assert state.error_type == "cost_cap_exceeded" and "latent_shift" in str(state.error)
    assert built == []


def test_refusing_over_cap_steps_costs_the_worker_under_20_mb():
    """Peak resident memory growth (VmHWM after resetting it) of refusing over-cap steps (as a field or in the
    options header) and a malformed header, in a fresh process so this one's history does not count."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    script = textwrap.dedent("""
        import json, time, torch
        from cxrexplain.bundle import ClassifierBundle
        from cxrexplain.models import build_classifier
        from cxrexplain.spec import unit_spec
        from cxrexplain_serving.rows import RowRequest
        from cxrexplain_serving.service import ExplainService

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        torch.set_num_threads(1)
        bundle = ClassifierBundle(build_classifier("densenet_small", 5, 1), labels=list("abcde"),
                                  input_spec=unit_spec(1, 64), architecture="densenet_small")
        service = ExplainService(bundle, model_name="m", model_version="1", device="cpu")
        def ask(steps, header=None):
            row = RowRequest(body=b"not an image", content_type="image/png", header_options=header,
                             options={"methods": "integrated_gradients"} if header else
                                     {"methods": "integrated_gradients", "steps": steps})
            return service.handle_batch([row])[0].status
        ask("129")  # warm the code path (imports, caches) once
        ask("129", header="steps=129")
        out = {}
        for name, steps, header in [("6000", "6000", None), ("128 < 4096", "4096", None),
                                    ("1000000", "1000000", None), ("header 6000", "", "steps=6000"),
                                    ("header malformed", "", "steps=6000&&=&%zz")]:
            open("/proc/self/clear_refs", "w").write("5")
            before, started = status("VmRSS"), time.perf_counter()
            code = ask(steps, header)
            out[name] = {"status": code, "seconds": time.perf_counter() - started,
                         "peak_mb": status("VmHWM") - before}
        print(json.dumps(out))
    """)
    env = {"PYTHONPATH": ":".join(str(ROOT / p) for p in ("handlers", "lab", "client", ".")), "PATH": "/usr/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    for name, m in measured.items():
        assert m["status"] == (400 if "malformed" in name else 422), name
        assert m["peak_mb"] < 20, (name, m)


# ---------------------------------------------------------------------------- no option value answers a 5xx

# Every declared option: the request-level keys and each method's <method>.<option>, read from the schema, so a
# new option or method is covered without new test code.
KEYS = sorted(schema.REQUEST_OPTIONS) + sorted(f"{m}.{o}" for m, opts in schema.METHOD_OPTIONS.items() for o in opts)


def spec_of(key: str) -> schema.OptionSpec:
    return schema.method_option(key) if "." in key else schema.REQUEST_OPTIONS[key]


def method_of(key: str) -> str | None:
    """The method an option belongs to (``latent_shift`` for ``frames`` and ``latent_shift.frames``)."""
    dotted = key if "." in key else spec_of(key).sets
    return dotted.partition(".")[0] if dotted else None


NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=10**15, max_value=10**400).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e400", "-1e400", "1e-400", "0", "-0", "-1", "1_000", "+7",
                     "0x10", "1e6", "6000", "1000000", "1" + "0" * 5000, "4096", "4097", "0.01", "1,2", "2,1",
                     "nan,1", "0,inf", "", " ", "\x00", "true", "positive", "cam,positive"]),
)


def values(key: str) -> st.SearchStrategy[str]:
    spec = spec_of(key)
    declared = list(spec.choices) + [dict(spec.aliases).get(a, a) for a, _ in spec.aliases]
    declared += [spec.default] if spec.default is not None else []
    return st.one_of(st.text(max_size=40), NUMBERS, st.sampled_from(declared or [""]),
                     st.lists(st.sampled_from(declared or ["0"]), max_size=4).map(",".join))


TRANSPORTS = ("field", "bytes", "header")


def preparer() -> Preparer:
    return Preparer(unit_spec(1, SIZE), CostCaps(), labels=len(LABELS), methods=tuple(schema.METHODS),
                    default_methods=("cam",), has_autoencoder=True, telemetry=Telemetry("m"))


PREPARER = preparer()


def check(options: dict[str, str | bytes], header: str | None, named: set[str]) -> None:
    state = PREPARER.prepare(0, RowRequest(body=PNG, content_type="image/png", options=options,
                                           header_options=header))
    if state.error is None:
        return
    assert isinstance(state.error, CxrExplainError)
    assert 400 <= state.status < 500, (options, header, state.status, str(state.error))
    assert any(name in str(state.error) for name in named), (options, header, str(state.error))


def request(key: str, value: str, transport: str) -> tuple[dict[str, str | bytes], str | None]:
    fields: dict[str, str | bytes] = {}
    method = method_of(key)
    if method is not None:
        fields["methods"] = method
    if transport == "header":
        return fields, urllib.parse.urlencode({key: value})
    fields[key] = value.encode("utf-8", "surrogatepass") if transport == "bytes" else value
    return fields, None


@pytest.mark.parametrize("key", KEYS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=st.data())
def test_any_value_of_any_option_answers_200_or_a_4xx_naming_it(key, data):
    value = data.draw(values(key), label=key)
    transport = data.draw(st.sampled_from(TRANSPORTS), label="transport")
    fields, header = request(key, value, transport)
    named = {key, key.rpartition(".")[2]} | ({method_of(key)} if method_of(key) else set())
    check(fields, header, named)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=st.data())
def test_any_mix_of_options_answers_200_or_a_4xx(data):
    """Several options at once (a tiny step with a huge lambda cap, positive with top_k, ...): still never a 5xx;
    the error names one of the options given."""
    keys = data.draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=6, unique=True), label="keys")
    fields: dict[str, str | bytes] = {key: data.draw(values(key), label=key) for key in keys}
    methods = {m for m in (method_of(k) for k in keys) if m is not None}
    if methods and "methods" not in fields:
        fields["methods"] = ",".join(sorted(methods))
    named = set(fields) | {k.rpartition(".")[2] for k in fields} | methods | {"methods", "targets", "top_k"}
    check(fields, None, named)
