"""CAM and Grad-CAM: known answers on a tiny fixed-weight model, the CAM/Grad-CAM relation on GAP+linear
heads, and parity with pytorch-grad-cam (``grad-cam`` on PyPI) on DenseNet-121, ResNet-50 and VGG-16."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from cxrexplain import ClassifierBundle, Explainer, InvalidOption, UnsupportedModel
from cxrexplain.methods import base as registry
from cxrexplain.methods.base import ForwardContext
from cxrexplain.methods.gradcam import default_layer, resolve_layer
from cxrexplain.spec import unit_spec


def forward_context(bundle: ClassifierBundle, method: registry.Method, x: torch.Tensor,
                    targets: list[int]) -> ForwardContext:
    """The shared forward the Explainer runs, to call a method's internals (maps at feature resolution)."""
    x = x.detach().clone().requires_grad_(True)
    logits, kept = bundle.traced.run(x, method.captures(bundle))
    return ForwardContext(bundle, x, logits, torch.tensor(targets), kept)


# ------------------------------------------------------------------------------------ tiny known-answer model


class Tiny(nn.Module):
    """A 1x1 conv (A_0 = x, A_1 = 2x + 1), ReLU, GAP, linear: every CAM value is a small exact number."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0], [-3.0, 1.0]]))
            self.fc.bias.copy_(torch.tensor([0.25, -0.5, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


W = np.array([[1.0, -1.0], [0.5, 2.0], [-3.0, 1.0]])
B = np.array([0.25, -0.5, 1.0])
X = np.arange(16, dtype=np.float64).reshape(4, 4)  # the 4x4 arange input, all >= 0 so ReLU passes both maps
A = np.stack([X, 2 * X + 1])  # the feature maps, by hand


def tiny_bundle(dtype: torch.dtype = torch.float32) -> ClassifierBundle:
    return ClassifierBundle(module=Tiny().to(dtype), labels=["a", "b", "c"], input_spec=unit_spec(1, 4))


def test_cam_known_answer_float64() -> None:
    bundle = tiny_bundle(torch.float64)
    x = torch.from_numpy(X)[None, None]
    method = registry.create("cam")
    ctx = forward_context(bundle, method, x, [0])
    for c in range(3):
        ctx.targets = torch.tensor([c])
        expected = W[c, 0] * A[0] + W[c, 1] * A[1]  # M_c = sum_k w_ck A_k
        got = method.feature_map(ctx)[0].numpy()
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        # The map's spatial mean plus the bias is the logit (GAP and the linear layer commute).
        assert got.mean() + B[c] == pytest.approx(ctx.logits[0, c].item(), abs=1e-12)


def test_cam_and_gradcam_known_answer_through_explainer() -> None:
    ex = Explainer(tiny_bundle(), device="cpu")
    x = torch.from_numpy(X).float()[None, None].repeat(3, 1, 1, 1)
    res = ex.explain(x, methods=["cam", "gradcam"], targets=[0, 1, 2])
    for c in range(3):
        cam = W[c, 0] * A[0] + W[c, 1] * A[1]
        np.testing.assert_allclose(res.heatmaps["cam"][c].numpy(), cam, rtol=1e-6)
        # Grad-CAM on a GAP+linear head: dy_c/dA_k = w_ck / (h w) everywhere, so the map is ReLU(CAM) / 16.
        np.testing.assert_allclose(res.heatmaps["gradcam"][c].numpy(), np.maximum(cam, 0) / 16, rtol=1e-6)
    assert (res.heatmaps["gradcam"][0] == 0).all()  # w_0 . A < 0 everywhere: ReLU leaves nothing


def test_cam_upsamples_bilinearly_to_the_input() -> None:
    module = Tiny()
    module.conv.stride = (2, 2)  # 4x4 input -> 2x2 features
    bundle = ClassifierBundle(module=module, labels=["a", "b", "c"], input_spec=unit_spec(1, 4))
    x = torch.from_numpy(X).float()[None, None]
    res = Explainer(bundle, device="cpu").explain(x, methods=["cam"], targets=["b"])
    feats = X[::2, ::2]
    coarse = W[1, 0] * feats + W[1, 1] * (2 * feats + 1)
    expected = F.interpolate(torch.tensor(coarse)[None, None], size=(4, 4), mode="bilinear",
                             align_corners=False)
    np.testing.assert_allclose(res.heatmaps["cam"][0].numpy(), expected[0, 0].numpy(), rtol=1e-6)


# -------------------------------------------------------------------------- torchvision random-weight nets


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "densenet121": torchvision.models.densenet121(num_classes=10).eval(),
        "resnet50": torchvision.models.resnet50(num_classes=10).eval(),
        "vgg16": torchvision.models.vgg16(num_classes=10).eval(),
    }


def _bundle(net: nn.Module) -> ClassifierBundle:
    bundle = ClassifierBundle(module=copy.deepcopy(net), labels=[str(i) for i in range(10)])
    for p in bundle.module.parameters():
        p.requires_grad_(False)
    return bundle


@pytest.mark.parametrize("arch", ["densenet121", "resnet50"])
def test_relu_cam_over_hw_equals_gradcam_on_gap_linear_heads(nets: dict[str, nn.Module], arch: str) -> None:
    torch.manual_seed(1)
    bundle = _bundle(nets[arch])
    x = torch.randn(2, 3, 128, 128)
    cam, gradcam = registry.create("cam"), registry.create("gradcam")
    ctx = forward_context(bundle, cam, x, [3, 7])
    coarse_cam = cam.feature_map(ctx)
    coarse_grad = gradcam.feature_map(ctx)  # default layer = the map the GAP head pools, same node as CAM
    h, w = coarse_cam.shape[-2:]
    assert (h, w) == (4, 4)
    assert coarse_grad.abs().max() > 0
    torch.testing.assert_close(coarse_grad, torch.relu(coarse_cam) / (h * w), rtol=1e-5, atol=1e-7)


def test_cam_on_vgg16_raises_and_points_to_gradcam(nets: dict[str, nn.Module]) -> None:
    ex = Explainer(_bundle(nets["vgg16"]), device="cpu")
    with pytest.raises(UnsupportedModel, match="gradcam"):
        ex.explain(torch.rand(1, 3, 64, 64), methods=["cam"], targets=[0])


def test_gradcam_default_layers(nets: dict[str, nn.Module]) -> None:
    assert default_layer(_bundle(nets["densenet121"])) == "relu"  # F.relu(features) pooled by the head
    assert default_layer(_bundle(nets["resnet50"])) == "layer4_2_relu_2"
    assert default_layer(_bundle(nets["vgg16"])) == "features_29"  # ReLU after the last Conv2d
    bundle = _bundle(nets["vgg16"])
    bundle.cam_layer = "features_27"
    assert default_layer(bundle) == "features_27"


def test_gradcam_layer_option_takes_node_names_and_module_paths(nets: dict[str, nn.Module]) -> None:
    traced = _bundle(nets["resnet50"]).traced
    assert resolve_layer(traced, "layer4") == "layer4_2_relu_2"
    assert resolve_layer(traced, "layer4.2") == "layer4_2_relu_2"
    assert resolve_layer(traced, "layer3_5_relu_2") == "layer3_5_relu_2"
    assert resolve_layer(_bundle(nets["densenet121"]).traced, "features.denseblock4").startswith("cat")
    with pytest.raises(InvalidOption, match="module path"):
        resolve_layer(traced, "layer9")
    ex = Explainer(_bundle(nets["resnet50"]), device="cpu")
    res = ex.explain(torch.rand(1, 3, 64, 64), methods=["gradcam"], targets=[0],
                     options={"gradcam": {"layer": "layer3"}})
    assert res.heatmaps["gradcam"].shape == (1, 64, 64)


# ----------------------------------------------------------------------------- parity with pytorch-grad-cam

# Layers compared, as (their module, our layer option). DenseNet: ``features.denseblock4`` rather than the
# usual ``features[-1]`` (norm5): torchvision's DenseNet applies ``F.relu(..., inplace=True)`` to norm5's
# output, so a forward hook there keeps a tensor the ReLU then overwrites, while the tensor hook's gradient is
# taken before the ReLU; pytorch-grad-cam then mixes ReLU'd activations with pre-ReLU gradients, which is no
# single layer's Grad-CAM. denseblock4's output is not modified in place. VGG-16: the last ReLU (our default)
# and the final MaxPool (``features[-1]``, pytorch-grad-cam's usual choice).
PARITY = [
    ("densenet121", lambda m: m.features.denseblock4, "features.denseblock4"),
    ("resnet50", lambda m: m.layer4[-1], None),  # None: our default layer is the same tensor
    ("vgg16", lambda m: m.features[29], None),
    ("vgg16", lambda m: m.features[30], "features.30"),
]


@pytest.mark.parametrize(("arch", "their_layer", "our_layer"), PARITY,
                         ids=["densenet121", "resnet50", "vgg16-relu", "vgg16-pool"])
def test_gradcam_matches_pytorch_grad_cam(nets: dict[str, nn.Module], arch: str, their_layer: Callable,
                                          our_layer: str | None) -> None:
    from pytorch_grad_cam import GradCAM as TheirGradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(2)
    x = torch.randn(2, 3, 128, 128)
    targets = [1, 6]
    reference = copy.deepcopy(nets[arch])  # its parameters require grad: pytorch-grad-cam's hooks need that
    layer = their_layer(reference)
    with TheirGradCAM(model=reference, target_layers=[layer]) as theirs:
        final = theirs(x, targets=[ClassifierOutputTarget(t) for t in targets])
        acts = theirs.activations_and_grads.activations[0].numpy()
        grads = theirs.activations_and_grads.gradients[0].numpy()
        # Their raw map: sum_k mean(grad_k) A_k, before the ReLU, min-max scaling and cv2 resize.
        raw = theirs.get_cam_image(x, layer, None, acts, grads)

    bundle = _bundle(nets[arch])
    method = registry.create("gradcam", **({"layer": our_layer} if our_layer else {}))
    ctx = forward_context(bundle, method, x, targets)
    ours = method.feature_map(ctx).numpy()
    assert ours.shape == raw.shape and ours.max() > 0

    # 1) Raw Grad-CAM at the layer's resolution: same float32 sums in a different order.
    np.testing.assert_allclose(ours, np.maximum(raw, 0), rtol=1e-4, atol=1e-6 * np.abs(raw).max())

    # 2) End to end: their output is min-max(cv2.resize(min-max(ReLU(raw)))); ours is upsampled by torch's
    # bilinear interpolation (half-pixel centres, like cv2's INTER_LINEAR), then given the same scaling.
    options = {"gradcam": {"layer": our_layer}} if our_layer else None
    heat = Explainer(bundle, device="cpu").explain(x, methods=["gradcam"], targets=targets, options=options)
    ours_scaled = scale_cam_image(heat.heatmaps["gradcam"].numpy())
    np.testing.assert_allclose(ours_scaled, final, atol=2e-4)  # measured: up to 8e-5 (VGG-16, 8x8 -> 128)
