"""Latent Shift on torchxrayvision weights works in torchxrayvision's output units ([Cohen2021] §4.2, App. C, K).

torchxrayvision's ``model(x)`` answers ``op_norm(σ(logit), t)`` when the model carries ``op_threshs``, and that
is the paper's f. A torchxrayvision DenseNet (the PyPI package, ``weights=None``: nothing is downloaded) with
seeded random weights and operating points is saved as a state dict and loaded through ``load_classifier`` as a
user would; p0, the direction, the stop thresholds, the frames' probabilities and the reconstruction gap are
recomputed with torchxrayvision's own forward. A demo-style bundle (Youden-J operating points, no op_norm) keeps
σ(logit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from latent_nets import PoolAE

from cxrexplain import AutoencoderBundle, ClassifierBundle, Explainer, ExplanationResult
from cxrexplain.models import build_classifier, load_classifier, save_classifier
from cxrexplain.spec import InputSpec, unit_spec

SIZE = 64  # torchxrayvision's DenseNet built without weights does not resize, so 64 px keeps this fast
TARGET = "Cardiomegaly"  # index 10: operating point 0.256 of the linspace below
SPEC = InputSpec(channels=1, size=SIZE, value_range=(-1024.0, 1024.0), mean=(0.0,), std=(1.0,),
                 name="torchxrayvision")
# The random model's f moves by 1e-4 per 1e6 of λ (pixels in the thousands, gradients per pixel ~1e-6): a step
# of 2.5e8 reaches the lower stop in a few steps, and the fall crosses the operating point (op_norm's 0.5).
STEP, CAP, FALL = 2.5e8, 1.25e10, 0.30

# DenseNet-121 on this shared 2-core machine: one thread is ~50x faster than two competing ones.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def xrv():
    import torchxrayvision

    return torchxrayvision


@pytest.fixture(scope="module")
def upstream(xrv) -> nn.Module:
    """torchxrayvision's DenseNet with operating points: its forward returns op_norm(σ(logit), t)."""
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None, op_threshs=torch.linspace(0.05, 0.4, 18)).eval()
    with torch.no_grad():
        # Freshly initialized features are in the hundreds on [-1024, 1024] pixels: σ would sit at 0 or 1, where
        # op_norm(σ) = σ and the two units could not be told apart. A smaller head keeps σ in between.
        model.classifier.weight.mul_(0.003)
    return model


@pytest.fixture(scope="module")
def bundle(upstream, tmp_path_factory) -> ClassifierBundle:
    path = tmp_path_factory.mktemp("xrv") / "densenet121-res224-like.pt"
    torch.save(upstream.state_dict(), path)  # the op_threshs buffer travels in the state dict
    return load_classifier("xrv-densenet121", path, input_spec=SPEC)


def xrv_logits(upstream: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return upstream.classifier(upstream.features2(x))


def images() -> torch.Tensor:
    return SPEC.from_unit(torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5)))


def run(bundle: ClassifierBundle, x: torch.Tensor, target: str, **options: object) -> ExplanationResult:
    ex = Explainer(bundle, AutoencoderBundle(PoolAE(), bundle.input_spec), device="cpu")
    return ex.explain(x, ["latent_shift"], targets=target, options={"latent_shift": options})


def test_bundle_records_torchxrayvision_operating_points(bundle, upstream, tmp_path: Path) -> None:
    t = upstream.op_threshs
    assert bundle.op_norm and bundle.op_thresholds == pytest.approx(t.tolist())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(bundle.outputs(bundle.module(x)), upstream(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(torch.sigmoid(bundle.module(x)), upstream(x), atol=1e-2)  # the units differ
    # The archive path: save_classifier's sidecar carries it, and every other model stays σ.
    again = load_classifier(None, save_classifier(bundle, tmp_path / "saved.pt"))
    assert again.op_norm and again.op_thresholds == bundle.op_thresholds
    demo = ClassifierBundle(build_classifier("densenet_small", 2, in_channels=1), ["a", "b"], input_spec=unit_spec(1),
                            architecture="densenet_small", op_thresholds=[0.31, 0.62])
    assert not load_classifier(None, save_classifier(demo, tmp_path / "demo.pt")).op_norm


@pytest.mark.parametrize("direction", ["sigmoid", "logit"])
def test_latent_shift_is_in_torchxrayvision_output_units(bundle, upstream, xrv, direction: str) -> None:
    x = images()
    res = run(bundle, x, TARGET, direction=direction, search="exhaustive", frames=5, step=STEP, max_lambda=CAP,
              fall=FALL)
    shift = res.latent_shift
    assert shift is not None and shift.probability == "op_norm"
    target = bundle.label_index(TARGET)
    ae = PoolAE()
    z = ae.encode(x).detach().requires_grad_(True)
    logits = xrv_logits(upstream, ae.decode(z))
    outputs = xrv.models.op_norm(torch.sigmoid(logits), upstream.op_threshs)
    torch.testing.assert_close(outputs, upstream(ae.decode(z)))  # torchxrayvision's forward: the paper's f
    logit, f = logits[:, target], outputs[:, target]
    (grad,) = torch.autograd.grad((f if direction == "sigmoid" else logit).sum(), z, retain_graph=True)
    # df/dl at D(E(x)) by autograd through torchxrayvision's op_norm: the logit walk's step conversion.
    slope = torch.autograd.grad(f.sum(), logits)[0][:, target] if direction == "logit" else None
    p0 = f.detach()
    assert (p0 - torch.sigmoid(logit.detach())).abs().min() > 0.05  # a raw-σ implementation fails below

    def p(row: int, lam: float) -> float:
        with torch.no_grad():
            return upstream(ae.decode(z[row:row + 1] + lam * grad[row:row + 1]))[0, target].item()

    for row in range(len(x)):
        assert res.frame_probabilities[row].tolist() == pytest.approx(
            [p(row, lam) for lam in res.lambdas[row].tolist()], abs=1e-5)
        # §4.2's lower stop (relative: 70 % of p0), p0 in torchxrayvision's units, on the walk's grid.
        assert shift.lower_bound_reached[row], "the lower search should reach its threshold within the cap"
        delta = STEP * (1.0 if slope is None else float(slope[row]))
        lower, threshold = float(res.lambdas[row, 0]), (1 - FALL) * float(p0[row])
        assert lower / -delta == pytest.approx(round(lower / -delta), abs=1e-3)
        assert p(row, lower) <= threshold < p(row, lower + delta)
    with torch.no_grad():  # App. K: f(x) - f(D(E(x))) with torchxrayvision's f
        gap = upstream(x)[:, target] - upstream(ae(x))[:, target]
    torch.testing.assert_close(res.reconstruction_gap, gap, rtol=0, atol=1e-5)
    # Findings keep σ(logit) against t for every model (the same positives as op_norm against 0.5).
    with torch.no_grad():
        torch.testing.assert_close(res.probabilities, torch.sigmoid(xrv_logits(upstream, x)), rtol=1e-5, atol=1e-6)


def test_demo_style_bundle_keeps_the_sigmoid(tmp_path: Path) -> None:
    # The demo's Youden-J operating points only mark positives: latent shift stays in σ(logit), as before.
    torch.manual_seed(1)
    module = build_classifier("densenet_small", 2, in_channels=1)
    demo = ClassifierBundle(module, ["a", "b"], input_spec=unit_spec(1, SIZE), architecture="densenet_small",
                            op_thresholds=[0.2, 0.7])
    demo = load_classifier(None, save_classifier(demo, tmp_path / "demo.pt"))
    assert not demo.op_norm
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    res = run(demo, x, "a", direction="sigmoid", search="exhaustive", frames=4, step=2.0, max_lambda=50.0)
    shift = res.latent_shift
    assert shift is not None and shift.probability == "sigmoid"
    ae = PoolAE()
    z = ae.encode(x).requires_grad_(True)
    f = torch.sigmoid(demo.module(ae.decode(z))[:, 0])
    (grad,) = torch.autograd.grad(f.sum(), z)
    with torch.no_grad():
        frames = [torch.sigmoid(demo.module(ae.decode(z[row:row + 1] + lam * grad[row:row + 1]))[0, 0]).item()
                  for row in range(2) for lam in res.lambdas[row].tolist()]
        gap = torch.sigmoid(demo.module(x)[:, 0]) - f
    assert res.frame_probabilities.flatten().tolist() == pytest.approx(frames, abs=1e-6)
    torch.testing.assert_close(res.reconstruction_gap, gap, rtol=0, atol=1e-6)
