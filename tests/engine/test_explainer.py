"""The Explainer's contract: input validation, targets, the shared forward, result types, nothing left behind.

Runs every registered method that needs nothing beyond the classifier (``latent_shift`` needs an autoencoder,
``semantic`` a dissection table), so methods landing later are held to the same contract.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from cxrexplain import (
    XRV,
    AutoencoderBundle,
    AutoencoderRequired,
    ClassifierBundle,
    Explainer,
    InputSpec,
    InvalidInput,
    InvalidOption,
    UnknownLabel,
    UnknownMethod,
)
from cxrexplain.methods import base as registry
from cxrexplain.methods.base import ForwardContext, Method, MethodOutput
from cxrexplain.models import build_classifier
from cxrexplain.spec import unit_spec

LABELS = ["Cardiomegaly", "Nodule", "Mass", "Effusion", "Pneumothorax"]
SIZE = 32
NEEDS_MORE = {"latent_shift", "semantic"}  # need an autoencoder / a dissection table


def classifier_methods() -> list[str]:
    return sorted(set(registry.REGISTRY) - NEEDS_MORE)


def small_options() -> dict[str, dict[str, int]]:
    return {"integrated_gradients": {"steps": 4}}


@pytest.fixture()
def bundle() -> ClassifierBundle:
    torch.manual_seed(0)
    module = build_classifier("densenet_small", len(LABELS), in_channels=1)
    return ClassifierBundle(module=module, labels=list(LABELS), input_spec=unit_spec(1, SIZE))


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 1, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: torch.rand(1, SIZE, SIZE), "N, C, H, W"),
        (lambda: torch.rand(1, 1, 1, SIZE, SIZE), "N, C, H, W"),
        (lambda: torch.rand(2, 3, SIZE, SIZE), "1 channel"),
        (lambda: torch.rand(0, 1, SIZE, SIZE), "empty"),
        (lambda: torch.ones(1, 1, SIZE, SIZE, dtype=torch.uint8), "floating"),
        (lambda: torch.ones(1, 1, SIZE, SIZE, dtype=torch.int64), "floating"),
        (lambda: torch.rand(1, 1, SIZE, SIZE).index_fill_(2, torch.tensor([3]), float("nan")), "NaN"),
        (lambda: torch.rand(1, 1, SIZE, SIZE).index_fill_(3, torch.tensor([0]), float("inf")), "Inf"),
        (lambda: np.zeros((1, 1, SIZE, SIZE), dtype=np.float32), "torch.Tensor"),
    ],
    ids=["3d", "5d", "channels", "empty", "uint8", "int64", "nan", "inf", "numpy"],
)
def test_invalid_input(bundle: ClassifierBundle, make, message: str) -> None:
    ex = Explainer(bundle, device="cpu")
    with pytest.raises(InvalidInput, match=message):
        ex.explain(make(), methods=["cam"], targets=0)
    with pytest.raises(InvalidInput):
        ex.predict(make())


def test_unknown_label(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    ex = Explainer(bundle, device="cpu")
    with pytest.raises(UnknownLabel, match="Cardiomegaly, Nodule"):
        ex.explain(x, methods=["cam"], targets="Atelectasis")
    with pytest.raises(UnknownLabel, match="out of range"):
        ex.explain(x, methods=["cam"], targets=len(LABELS))
    with pytest.raises(UnknownLabel):
        ex.explain(x, methods=["cam"], targets=["Mass", "Mass", "nope"])


def test_unknown_method_lists_the_known_ones(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    with pytest.raises(UnknownMethod) as info:
        Explainer(bundle, device="cpu").explain(x, methods=["cam", "occlusion"], targets=0)
    message = str(info.value)
    assert "occlusion" in message
    for name in registry.REGISTRY:
        assert name in message


def test_latent_shift_without_autoencoder(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    with pytest.raises(AutoencoderRequired, match="autoencoder"):
        Explainer(bundle, device="cpu").explain(x, methods=["cam", "latent_shift"], targets=0)


# --------------------------------------------------------------------------------------------------- targets


def test_targets_by_name_and_by_index(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    ex = Explainer(bundle, device="cpu")
    by_name = ex.explain(x, methods=["gradcam"], targets=["Mass", "effusion", "NODULE"])
    by_index = ex.explain(x, methods=["gradcam"], targets=[2, 3, 1])
    mixed = ex.explain(x, methods=["gradcam"], targets=["Mass", "3", 1])
    assert by_name.targets == by_index.targets == mixed.targets == [2, 3, 1]
    assert by_name.target_names == ["Mass", "Effusion", "Nodule"]
    torch.testing.assert_close(by_name.heatmaps["gradcam"], by_index.heatmaps["gradcam"], rtol=0, atol=0)
    torch.testing.assert_close(mixed.heatmaps["gradcam"], by_index.heatmaps["gradcam"], rtol=0, atol=0)


def test_one_target_is_broadcast_and_rows_are_independent(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    ex = Explainer(bundle, device="cpu")
    one = ex.explain(x, methods=["saliency", "cam"], targets="Mass")
    per_row = ex.explain(x, methods=["saliency", "cam"], targets=["Mass"] * 3)
    assert one.targets == per_row.targets == [2, 2, 2]
    for name in ("saliency", "cam"):
        torch.testing.assert_close(one.heatmaps[name], per_row.heatmaps[name], rtol=0, atol=0)
    # Each row's map depends only on that row and its target: explaining a row alone gives the same map.
    alone = ex.explain(x[1:2], methods=["saliency", "cam"], targets="Mass")
    for name in ("saliency", "cam"):
        torch.testing.assert_close(alone.heatmaps[name][0], one.heatmaps[name][1], rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match="one target per row"):
        ex.explain(x, methods=["cam"], targets=["Mass", "Nodule"])


def test_no_target_explains_the_most_probable_finding(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    res = Explainer(bundle, device="cpu").explain(x, methods=["cam"])
    assert res.targets == res.probabilities.argmax(dim=1).tolist()


def test_the_default_target_is_read_from_the_one_forward_pass(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    """``None`` (for all rows or in a row's place) is the row's top finding in this call's own forward: the
    classifier runs once, and the explained target is the argmax of the probabilities the result reports."""
    ex = Explainer(bundle, device="cpu")
    head = bundle.traced.cam_head().linear
    forwards: list[int] = []
    handle = head.register_forward_hook(lambda module, args, out: forwards.append(len(out)))
    try:
        res = ex.explain(x, methods=["cam"], targets=[None, "Mass", None])
    finally:
        handle.remove()
    assert forwards == [3]  # one forward of the batch, no pass to find the top finding
    top = res.probabilities.argmax(dim=1).tolist()
    assert res.targets == [top[0], 2, top[2]]
    named = ex.explain(x, methods=["cam"], targets=res.targets)
    torch.testing.assert_close(res.heatmaps["cam"], named.heatmaps["cam"], rtol=0, atol=0)


def test_method_instances_run_as_given_and_are_never_built_again(
    bundle: ClassifierBundle, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the service does: it builds (and so validates) each method once, then hands the instances over."""
    ex = Explainer(bundle, device="cpu")
    names = ["cam", "saliency", "integrated_gradients"]
    targets = [0, "Mass", None]
    by_name = ex.explain(x, methods=names, targets=targets, options=small_options())
    instances = [registry.create(name, **small_options().get(name, {})) for name in names]
    built: list[str] = []
    original = Method.__init__

    def counting(self: Method, **options: object) -> None:
        built.append(self.name)
        original(self, **options)

    monkeypatch.setattr(Method, "__init__", counting)
    as_list = ex.explain(x, methods=instances, targets=targets)
    as_mapping = ex.explain(x, methods={m.name: m for m in instances}, targets=targets)
    assert built == []
    for res in (as_list, as_mapping):
        assert res.targets == by_name.targets and list(res.heatmaps) == names
        for name in names:
            torch.testing.assert_close(res.heatmaps[name], by_name.heatmaps[name], rtol=0, atol=0, msg=name)
    ex.explain(x, methods=["cam", "cam"], targets=0)  # by name: built here, once per name
    assert built == ["cam"]


def test_method_instances_conflicting_with_names_or_options_are_refused(
    bundle: ClassifierBundle, x: torch.Tensor
) -> None:
    ex = Explainer(bundle, device="cpu")
    steps4 = registry.create("integrated_gradients", steps=4)
    with pytest.raises(InvalidOption, match="set them on the instance"):
        ex.explain(x, methods=[steps4], targets=0, options={"integrated_gradients": {"steps": 8}})
    with pytest.raises(InvalidOption, match="given twice"):
        ex.explain(x, methods=["integrated_gradients", steps4], targets=0)
    with pytest.raises(InvalidOption, match="given twice"):
        ex.explain(x, methods=[steps4, registry.create("integrated_gradients", steps=4)], targets=0)
    with pytest.raises(ValueError, match="key each instance by its name"):
        ex.explain(x, methods={"cam": steps4}, targets=0)
    once = ex.explain(x, methods=[steps4, steps4], targets=0)  # the same instance twice is asked once
    assert list(once.heatmaps) == ["integrated_gradients"]


def test_each_method_is_timed_on_its_own(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    res = Explainer(bundle, device="cpu").explain(x, methods=["cam", "saliency"], targets=0)
    assert list(res.timings_ms) == ["cam", "saliency"] and all(ms >= 0 for ms in res.timings_ms.values())
    assert res.latent_shift is None and res.frames is None and res.lambdas is None
    assert res.frame_probabilities is None and res.reconstruction_gap is None


# ------------------------------------------------------------------------------------- the shared forward


def test_several_methods_in_one_call_equal_separate_calls(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    names = classifier_methods()
    assert {"cam", "gradcam", "saliency", "integrated_gradients"} <= set(names)
    ex = Explainer(bundle, device="cpu")
    targets = ["Mass", 0, "Pneumothorax"]
    together = ex.explain(x, methods=names, targets=targets, options=small_options())
    backwards = ex.explain(x, methods=names[::-1], targets=targets, options=small_options())
    for name in names:
        alone = ex.explain(x, methods=[name], targets=targets, options=small_options()).heatmaps[name]
        scale = alone.abs().max().item() or 1.0
        torch.testing.assert_close(together.heatmaps[name], alone, rtol=1e-5, atol=1e-6 * scale, msg=name)
        torch.testing.assert_close(backwards.heatmaps[name], alone, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_the_shared_forward_records_autograd_only_for_methods_that_differentiate_through_it(
    bundle: ClassifierBundle, x: torch.Tensor
) -> None:
    ex = Explainer(bundle, device="cpu")
    head = bundle.traced.cam_head().linear
    seen: list[bool] = []
    handle = head.register_forward_hook(lambda module, args, out: seen.append(out.requires_grad))
    try:
        for methods, graph in ((["cam"], False), (["lrp", "rap", "guided_backprop"], False),
                               (["cam", "saliency"], True), (["gradcam"], True)):
            seen.clear()
            ex.explain(x, methods=methods, targets=0)
            assert seen == [graph], methods
    finally:
        handle.remove()


def test_probabilities_are_the_sigmoid_of_the_module(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    ex = Explainer(bundle, device="cpu")
    res = ex.explain(x, methods=["cam"], targets=0)
    with torch.no_grad():
        expected = torch.sigmoid(bundle.module(x))
    torch.testing.assert_close(res.probabilities, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ex.predict(x), expected, rtol=1e-5, atol=1e-6)
    assert res.probabilities.shape == (3, len(LABELS))


def test_heatmaps_are_float32_at_input_resolution(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    names = classifier_methods()
    ex = Explainer(bundle, device="cpu")
    res = ex.explain(x.double(), methods=names, targets=1, options=small_options())
    assert set(res.heatmaps) == set(names)
    for name, heatmap in res.heatmaps.items():
        assert heatmap.dtype == torch.float32, name
        assert heatmap.shape == (3, SIZE, SIZE), name
        assert heatmap.device.type == "cpu", name
        assert torch.isfinite(heatmap).all(), name


# --------------------------------------------------------------------------------------- no state left behind


def test_no_autograd_state_and_model_unchanged(bundle: ClassifierBundle, x: torch.Tensor) -> None:
    ex = Explainer(bundle, device="cpu")
    # Documented: the Explainer freezes the classifier's parameters (requires_grad False) when it takes the
    # model; gradients flow to the input only.
    assert not any(p.requires_grad for p in bundle.module.parameters())
    before = copy.deepcopy(bundle.module.state_dict())
    x_before = x.clone()
    res = ex.explain(x, methods=classifier_methods(), targets=2, options=small_options())
    tensors = [res.probabilities, *res.heatmaps.values()]
    assert all(not t.requires_grad and t.grad_fn is None for t in tensors)
    assert not x.requires_grad and x.grad is None
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    assert not any(p.requires_grad or p.grad is not None for p in bundle.module.parameters())
    after = bundle.module.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    assert not bundle.module.training


def test_a_bare_module_works() -> None:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=3)
    ex = Explainer(module, device="cpu")
    assert ex.labels == ["0", "1", "2"]
    x = torch.rand(2, 3, SIZE, SIZE)
    res = ex.explain(x, methods=["cam", "gradcam", "saliency"], targets=[0, "2"])
    assert res.targets == [0, 2]
    assert all(h.shape == (2, SIZE, SIZE) for h in res.heatmaps.values())
    with torch.no_grad():
        torch.testing.assert_close(res.probabilities, torch.sigmoid(module(x)), rtol=1e-5, atol=1e-6)


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")


def hook_count(module: nn.Module) -> int:
    """Hooks on every submodule, plus the global module hooks."""
    local = sum(len(getattr(m, name, {})) for m in module.modules() for name in HOOK_DICTS)
    globals_ = torch.nn.modules.module
    kinds = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks")
    glob = sum(len(getattr(globals_, name)) for name in kinds)
    return local + glob


class Boom(Method):
    """A method that fails on purpose after the others have run."""

    name = "boom"

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        raise RuntimeError("on purpose")


def test_no_hooks_left_after_explain_or_after_an_exception(
    bundle: ClassifierBundle, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = Explainer(bundle, device="cpu")
    module = bundle.module
    clean = hook_count(module)
    state = copy.deepcopy(module.state_dict())
    names = classifier_methods()

    ex.explain(x, methods=names, targets=0, options=small_options())
    assert hook_count(module) == clean

    # 1) A later method raises: the earlier ones must have cleaned up already.
    monkeypatch.setitem(registry.REGISTRY, "boom", Boom)
    with pytest.raises(RuntimeError, match="on purpose"):
        ex.explain(x, methods=[*names, "boom"], targets=0, options=small_options())
    assert hook_count(module) == clean

    # 2) An exception inside a method's own work: a tripwire on the first convolution lets the shared forward
    # through and raises on any later forward (integrated gradients' path points, a propagation method's own
    # pass); methods that do no extra forward finish normally. Either way nothing may stay attached.
    calls = {"n": 0}

    def tripwire(mod: nn.Module, args: tuple) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("tripwire")

    handle = module.features.conv0.register_forward_pre_hook(tripwire)
    try:
        armed = hook_count(module)
        tripped = []
        for name in names:
            calls["n"] = 0
            try:
                ex.explain(x, methods=[name], targets=0, options=small_options())
            except RuntimeError as exc:
                assert "tripwire" in str(exc), name
                tripped.append(name)
            assert hook_count(module) == armed, name
    finally:
        handle.remove()
    assert "integrated_gradients" in tripped  # the tripwire does fire inside a method's own forwards
    assert hook_count(module) == clean
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    # The Explainer still works after all that.
    again = ex.explain(x, methods=["cam"], targets=0)
    assert again.heatmaps["cam"].shape == (3, SIZE, SIZE)


# ------------------------------------------------------------------------------- users' modules, users' AEs


def _tiny_densenet() -> nn.Module:
    return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3)


def _custom_sequential() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 32 * 32, 3))


@pytest.mark.parametrize("make", [lambda: torchvision.models.vgg11(num_classes=3),
                                  lambda: torchvision.models.resnet18(num_classes=3), _tiny_densenet,
                                  _custom_sequential], ids=["vgg11", "resnet18", "densenet", "sequential"])
def test_any_classifier_module_is_explained_with_labels_from_its_head(make) -> None:
    torch.manual_seed(0)
    ex = Explainer(make(), device="cpu")  # VGG's head is classifier.6, inside a Sequential
    assert ex.labels == ["0", "1", "2"]
    res = ex.explain(torch.rand(2, 3, 64, 64), methods=["gradcam"], targets=[0, 2])
    assert res.targets == [0, 2] and res.heatmaps["gradcam"].shape == (2, 64, 64)
    assert torch.isfinite(res.heatmaps["gradcam"]).all()


class TinyAE(nn.Module):
    """An autoencoder of the user's own: 3 channels in and out, halving then doubling the size."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.down(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(z)


def test_an_autoencoder_module_of_ones_own_works_in_the_classifier_input_space() -> None:
    torch.manual_seed(0)
    clf = ClassifierBundle(_tiny_densenet(), ["a", "b", "c"], input_spec=InputSpec(size=SIZE))
    ex = Explainer(clf, autoencoder=TinyAE(), device="cpu")
    assert isinstance(ex.autoencoder, AutoencoderBundle) and ex.autoencoder.input_spec == clf.input_spec
    x = clf.input_spec.from_unit(torch.rand(2, 1, SIZE, SIZE))
    res = ex.explain(x, ["latent_shift"], targets="b", options={"latent_shift": {"frames": 3}})
    assert res.frames is not None and res.frames.shape == (2, 3, SIZE, SIZE)
    assert torch.isfinite(res.heatmaps["latent_shift"]).all()
    own = unit_spec(3, SIZE)
    assert Explainer(clf, autoencoder=TinyAE(), device="cpu", autoencoder_spec=own).autoencoder.input_spec == own


def test_torchxrayvision_resnet_ae_keeps_its_own_spec() -> None:
    xrv = pytest.importorskip("torchxrayvision")
    module = xrv.autoencoders.ResNetAE50()  # random weights, nothing downloaded
    ex = Explainer(_tiny_densenet(), autoencoder=module, device="cpu")
    assert ex.autoencoder.input_spec == XRV != ex.bundle.input_spec


def test_wrong_classifiers_and_autoencoders_say_what_to_pass(bundle: ClassifierBundle) -> None:
    headless = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"Sequential .*no nn.Linear head.*pass labels=\[\.\.\.\]"):
        Explainer(headless, device="cpu")
    assert Explainer(headless, device="cpu", labels=["x", "y"]).labels == ["x", "y"]
    with pytest.raises(TypeError, match="ClassifierBundle .*or an nn.Module.*got str"):
        Explainer("densenet121", device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="load_classifier"):
        Explainer(bundle, device="cpu", labels=["x"] * len(LABELS))
    with pytest.raises(TypeError, match=r"encode\(x\) -> z and decode\(z\) -> x; Conv2d has no 'encode' and no "
                                        r"'decode': pass a module with both, or an AutoencoderBundle"):
        Explainer(bundle, autoencoder=nn.Conv2d(1, 1, 1), device="cpu")
    with pytest.raises(TypeError, match="AutoencoderBundle .*encode.*got dict"):
        Explainer(bundle, autoencoder={"encode": None}, device="cpu")  # type: ignore[arg-type]
    ae = AutoencoderBundle(TinyAE(), unit_spec(3, SIZE))
    with pytest.raises(ValueError, match="load_autoencoder"):
        Explainer(bundle, autoencoder=ae, device="cpu", autoencoder_spec=XRV)
    with pytest.raises(ValueError, match="pass autoencoder="):
        Explainer(bundle, device="cpu", autoencoder_spec=XRV)
