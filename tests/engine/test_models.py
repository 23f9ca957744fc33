"""Architectures by name, weight files in every form users have, metadata sidecars, upstream compatibility."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cxrexplain import (
    TORCHVISION,
    XRV,
    ClassifierBundle,
    InputSpec,
    UnsupportedModel,
    WeightsError,
    build_classifier,
    load_autoencoder,
    load_classifier,
    save_autoencoder,
    save_classifier,
)
from cxrexplain.models import NIH_LABELS, find_head, sidecar_path
from cxrexplain.spec import unit_spec
from cxrexplain.xrv_densenet import XRV_ALL_OP_THRESHOLDS, XRV_LABELS

# (name, final linear path, first conv path, default input channels)
ARCHS = [
    ("densenet121", "classifier", "features.conv0", 3),
    ("chexnet", "classifier", "features.conv0", 3),
    ("t_densenet121", "classifier", "features.conv0", 3),
    ("densenet169", "classifier", "features.conv0", 3),
    ("resnet18", "fc", "conv1", 3),
    ("resnet50", "fc", "conv1", 3),
    ("vgg16", "classifier.6", "features.0", 3),
    ("vgg16_bn", "classifier.6", "features.0", 3),
    ("xrv-densenet121", "classifier", "features.conv0", 1),
    ("densenet_small", "classifier", "features.conv0", 3),
    ("densenet_fine", "classifier", "features.conv0", 3),
]


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every float parameter and buffer (BatchNorm statistics too), so a round trip that
    dropped or mixed up any tensor changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75 if "running_var" in name else \
                    torch.randn(tensor.shape, generator=gen) * 0.1
                tensor.copy_(values)
    return model.eval()


def _small(seed: int = 0, labels: int = 3, channels: int = 1) -> nn.Module:
    return _randomized(build_classifier("densenet_small", labels, in_channels=channels), seed)


def _demo_bundle(seed: int) -> ClassifierBundle:
    """An unversioned densenet_small bundle in unit space, as the demo trainer makes them."""
    return ClassifierBundle(module=_small(seed=seed), labels=list("abc"), input_spec=unit_spec(1),
                            architecture="densenet_small")


def _out(model: nn.Module, channels: int = 1, size: int = 64) -> torch.Tensor:
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------------------------------------
# Architectures


@pytest.mark.parametrize("name,head,stem,channels", ARCHS)
@pytest.mark.parametrize("in_channels", [None, 1])
def test_every_architecture_builds_with_l_outputs_and_its_channels(name, head, stem, channels, in_channels):
    # On the meta device: the layout is checked without allocating VGG's 138 M parameters.
    with torch.device("meta"):
        model = build_classifier(name, 5, in_channels=in_channels)
    linear, conv = model.get_submodule(head), model.get_submodule(stem)
    assert isinstance(linear, nn.Linear) and linear.out_features == 5
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == (in_channels or channels)
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is linear


@pytest.mark.parametrize("name", ["t_densenet121", "resnet18", "xrv-densenet121", "densenet_small",
                                  "densenet_fine"])
def test_forward_gives_n_by_l_logits(name):
    torch.manual_seed(0)
    model = build_classifier(name, 4, in_channels=1)
    out = _out(model)
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_t_densenet_feature_maps_are_28x28_at_224():
    torch.manual_seed(0)
    bundle = ClassifierBundle(module=build_classifier("t-densenet", 14), labels=list(NIH_LABELS))
    head = bundle.traced.cam_head()
    logits, kept = bundle.traced.run(torch.randn(1, 3, 224, 224), (head.feature_node,))
    assert kept[head.feature_node].shape == (1, 512, 28, 28)  # [Khakzar2022] §3: last feature maps 28x28
    assert head.linear.in_features == 512 and logits.shape == (1, 14)
    # Blocks 3-4 and transitions 2-3 are gone.
    names = {n for n, _ in bundle.module.features.named_children()}
    assert {"denseblock1", "transition1", "denseblock2", "norm5"} <= names
    assert not {"transition2", "denseblock3", "transition3", "denseblock4"} & names


@pytest.mark.parametrize("name,maps", [("densenet_small", 3), ("densenet_fine", 12)])
def test_demo_cam_maps_at_96_px(name, maps):
    # The served demo's densenet_fine is truncated as T-DenseNet is: stride 8, so CAM sees 12x12 where the
    # fixtures' densenet_small sees 3x3 (stride 32).
    bundle = ClassifierBundle(module=build_classifier(name, 5, in_channels=1), labels=list("abcde"),
                              input_spec=unit_spec(1, 96))
    _, kept = bundle.traced.run(torch.rand(1, 1, 96, 96), (bundle.cam_node,))
    assert kept[bundle.cam_node].shape[-2:] == (maps, maps)


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "t_densenet121", "xrv-densenet121",
                                  "densenet_small"])
def test_cam_head_found_on_gap_linear_models(name):
    with torch.device("meta"):
        bundle = ClassifierBundle(module=build_classifier(name, 6), labels=[str(i) for i in range(6)])
    head = bundle.traced.cam_head()
    assert head.feature_node in bundle.traced.nodes
    assert head.linear.out_features == 6


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_cam_head_not_found_on_vgg(name):
    with torch.device("meta"):
        bundle = ClassifierBundle(module=build_classifier(name, 6), labels=[str(i) for i in range(6)])
    with pytest.raises(UnsupportedModel, match="gradcam"):
        bundle.traced.cam_head()


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(WeightsError) as err:
        build_classifier("densenet122", 3)
    message = str(err.value)
    for known in ("densenet121", "resnet50", "vgg16", "t_densenet121", "xrv-densenet121", "densenet_small"):
        assert known in message
    with pytest.raises(WeightsError, match="densenet122"):
        load_classifier("densenet122", "/nonexistent/file.pt")  # the name is checked before the file


def test_defaults_per_architecture():
    chexnet = load_classifier("chexnet")
    assert chexnet.labels == list(NIH_LABELS) and chexnet.input_spec == TORCHVISION
    assert chexnet.architecture == "densenet121" and chexnet.module.classifier.out_features == 14
    xrv = load_classifier("xrv-densenet121")
    assert xrv.labels == list(XRV_LABELS) and xrv.input_spec == XRV
    assert xrv.op_thresholds == pytest.approx(list(XRV_ALL_OP_THRESHOLDS))
    assert xrv.module.features.conv0.in_channels == 1
    assert chexnet.version == "0" and chexnet.sha256 is None  # no file, no hash


# ----------------------------------------------------------------------------------------------------------
# File forms


def _forms(model: nn.Module, tmp_path: Path) -> dict[str, Path]:
    state = model.state_dict()
    forms = {
        "state_dict": state,
        "checkpoint_state_dict": {"epoch": 7, "best_auc": 0.81, "state_dict": state},
        "checkpoint_model_state_dict": {"model_state_dict": state, "optimizer": {"lr": 1e-3}},
        "checkpoint_model": {"model": state},
        "data_parallel": OrderedDict((f"module.{k}", v) for k, v in state.items()),
    }
    paths = {}
    for name, obj in forms.items():
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(obj, paths[name])
    return paths


def test_every_file_form_loads_to_identical_outputs(tmp_path):
    model = _small(seed=3)
    expected = _out(model)
    for form, path in _forms(model, tmp_path).items():
        bundle = load_classifier("densenet_small", path, labels=["a", "b", "c"])
        assert torch.equal(_out(bundle.module), expected), form
        assert bundle.input_spec.channels == 1  # read from the file's first convolution


def test_chexnet_era_checkpoint_loads_unchanged(tmp_path):
    # CheXNet's published checkpoint: DataParallel around a wrapper holding torchvision's DenseNet-121 under
    # ``densenet121``, a Sequential(Linear, Sigmoid) head, torchvision < 0.3 names (norm.1), no
    # num_batches_tracked (torch < 0.4.1).
    model = _randomized(build_classifier("densenet121", 14), seed=5)
    old = OrderedDict()
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        for new, era in ((".norm1.", ".norm.1."), (".norm2.", ".norm.2."), (".conv1.", ".conv.1."),
                         (".conv2.", ".conv.2.")):
            if "denselayer" in key:
                key = key.replace(new, era)
        key = key.replace("classifier.", "classifier.0.")
        old[f"module.densenet121.{key}"] = value
    assert any(".norm.1." in k for k in old) and "module.densenet121.classifier.0.weight" in old
    path = tmp_path / "model.pth.tar"
    torch.save({"epoch": 12, "arch": "densenet121", "state_dict": old, "best_loss": 0.15}, path)
    bundle = load_classifier("chexnet", path)
    assert bundle.labels == list(NIH_LABELS)
    assert torch.equal(_out(bundle.module, channels=3), _out(model, channels=3))


def test_whole_module_is_refused_unless_allowed(tmp_path):
    model = _small(seed=4)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(WeightsError) as err:
        load_classifier("densenet_small", path, labels=["a", "b", "c"])
    assert "allow_pickle=True" in str(err.value) and "densenet_small" in str(err.value)
    assert "state_dict" in str(err.value)  # the message shows how to convert the file once
    bundle = load_classifier("densenet_small", path, labels=["a", "b", "c"], allow_pickle=True)
    assert torch.equal(_out(bundle.module), _out(model))
    # Without a name, the unpickled module itself is used.
    custom = load_classifier(None, path, allow_pickle=True)
    assert custom.architecture == "custom" and custom.labels == ["0", "1", "2"]
    assert torch.equal(_out(custom.module), _out(model))


def test_any_module_loads_a_state_dict(tmp_path):
    torch.manual_seed(0)

    def gap_net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 2))

    model = gap_net()
    path = tmp_path / "seq.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    fresh = gap_net()
    bundle = load_classifier(fresh, path, input_spec=XRV)
    assert bundle.labels == ["0", "1"] and bundle.input_spec == XRV and bundle.architecture == "custom"
    assert torch.equal(_out(bundle.module), _out(model))
    assert bundle.traced.cam_head().linear is bundle.module[4]


def test_names_that_fit_are_kept_even_with_a_module_prefix(tmp_path):
    # A user's model whose own submodule is called "module": its keys must not be taken for DataParallel's.
    class Wrapper(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.module = _small(seed=seed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    model = Wrapper(seed=2)
    path = tmp_path / "wrapper.pt"
    torch.save(model.state_dict(), path)
    bundle = load_classifier(Wrapper(seed=3), path, labels=list("abc"), input_spec=unit_spec(1))
    assert torch.equal(_out(bundle.module), _out(model))


def test_outputs_count_read_from_the_file(tmp_path, caplog):
    model = _randomized(build_classifier("resnet18", 2, in_channels=1), seed=6)  # e.g. RSNA normal/pneumonia
    path = tmp_path / "rsna.pt"
    torch.save(model.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="cxrexplain.models"):
        bundle = load_classifier("resnet18", path)
    assert bundle.labels == ["0", "1"] and "labels=" in caplog.text
    assert bundle.input_spec.channels == 1
    assert torch.equal(_out(bundle.module), _out(model))
    named = load_classifier("resnet18", path, labels=["Normal", "Pneumonia"])
    assert named.label_index("pneumonia") == 1


# ----------------------------------------------------------------------------------------------------------
# Metadata sidecar, hashes, versions


def test_sidecar_round_trip(tmp_path):
    spec = InputSpec(channels=1, size=64, value_range=(0.0, 1.0), mean=(0.5,), std=(0.25,), name="phantom")
    original = ClassifierBundle(module=_small(seed=8), labels=["Cardiomegaly", "Nodule", "Effusion"],
                                input_spec=spec, architecture="densenet_small",
                                op_thresholds=[0.3, 0.6, 0.45], cam_layer="features_norm5", version="demo-7")
    path = save_classifier(original, tmp_path / "demo" / "classifier.pt")
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["architecture"] == "densenet_small" and meta["labels"] == original.labels
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(torch.load(path, weights_only=True), dict)  # a plain state dict, loadable anywhere

    loaded = load_classifier(None, path)
    assert loaded.architecture == "densenet_small" and loaded.labels == original.labels
    assert loaded.input_spec == spec and loaded.op_thresholds == pytest.approx([0.3, 0.6, 0.45])
    assert loaded.cam_layer == "features_norm5" and loaded.version == "demo-7"
    assert loaded.sha256 == meta["sha256"]
    assert torch.equal(_out(loaded.module), _out(original.module))
    # Arguments win over the sidecar.
    overridden = load_classifier("densenet_small", path, labels=["x", "y", "z"], op_thresholds=[0.1] * 3,
                                 version="v2", cam_layer=None)
    assert overridden.labels == ["x", "y", "z"] and overridden.version == "v2"
    assert overridden.op_thresholds == pytest.approx([0.1] * 3)


def test_sha256_streamed_stable_and_version_default(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_small(seed=9).state_dict(), path)
    first, second = load_classifier("densenet_small", path, labels=list("abc")), \
        load_classifier("densenet_small", path, labels=list("abc"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.sha256 == second.sha256 == digest
    assert first.version == digest[:12]
    # A bundle saved without a version gets its own file's hash as version on the way back.
    saved = save_classifier(_demo_bundle(seed=9), tmp_path / "v.pt")
    assert load_classifier(None, saved).version == hashlib.sha256(saved.read_bytes()).hexdigest()[:12]


def test_sidecar_for_another_file_is_rejected(tmp_path):
    path = save_classifier(_demo_bundle(seed=1), tmp_path / "w.pt")
    torch.save(_small(seed=2).state_dict(), path)  # the weights change, the sidecar does not
    with pytest.raises(WeightsError, match="another file"):
        load_classifier(None, path)


def test_custom_module_sidecar_needs_the_module(tmp_path):
    model = _small(seed=1)
    path = save_classifier(ClassifierBundle(module=model, labels=list("abc"), input_spec=unit_spec(1)),
                           tmp_path / "custom.pt")
    with pytest.raises(WeightsError, match="custom module"):
        load_classifier(None, path)
    bundle = load_classifier(build_classifier("densenet_small", 3, in_channels=1), path)
    assert bundle.labels == list("abc") and torch.equal(_out(bundle.module), _out(model))


# ----------------------------------------------------------------------------------------------------------
# Errors


def test_missing_file_names_the_path_and_the_architecture(tmp_path):
    path = tmp_path / "weights" / "chexnet.pth.tar"
    with pytest.raises(WeightsError) as err:
        load_classifier("densenet121", path)
    assert str(path) in str(err.value) and "densenet121" in str(err.value)


def test_wrong_architecture_names_the_mismatched_keys(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(build_classifier("resnet18", 3).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        load_classifier("densenet_small", path, labels=list("abc"))
    message = str(err.value)
    assert "densenet_small" in message and str(path) in message
    assert "missing" in message and "features.conv0.weight" in message
    assert "unexpected" in message and "conv1.weight" in message


def test_wrong_number_of_labels_names_the_shape_mismatch(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_small(seed=1, labels=3).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        load_classifier("densenet_small", path, labels=list("abcd"))
    assert "classifier.weight" in str(err.value) and "(3, " in str(err.value) and "(4, " in str(err.value)


@pytest.mark.parametrize("content", [b"not a torch file at all", b"PK\x03\x04" + b"\x00" * 64])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        load_classifier("densenet_small", path, labels=list("abc"))
    assert "corrupt" in str(err.value) and "densenet_small" in str(err.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(_small().state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        load_classifier("densenet_small", path, labels=list("abc"))


# ----------------------------------------------------------------------------------------------------------
# torchxrayvision compatibility (the PyPI package; constructed with weights=None, so nothing is downloaded)


@pytest.fixture(scope="module")
def xrv():
    import torchxrayvision

    return torchxrayvision


def test_xrv_densenet_state_dict_loads_strictly_with_identical_logits(xrv, tmp_path):
    torch.manual_seed(0)
    upstream = _randomized(xrv.models.DenseNet(weights=None), seed=11)
    assert not hasattr(upstream, "input_resolution")  # so its forward does not resize: 64 px is fine
    path = tmp_path / "res224-like.pt"
    torch.save(upstream.state_dict(), path)
    bundle = load_classifier("xrv-densenet121", path)
    ours = bundle.module
    assert set(ours.state_dict()) == set(upstream.state_dict())  # strict: same names
    x = torch.randn(1, 1, 64, 64) * 500
    with torch.no_grad():
        torch.testing.assert_close(ours(x), upstream(x), rtol=1e-5, atol=1e-5)
    all_layout = xrv.models.model_urls["densenet121-res224-all"]
    assert bundle.labels == list(all_layout["labels"]) == list(xrv.datasets.default_pathologies)
    assert bundle.op_thresholds == pytest.approx(list(all_layout["op_threshs"]), rel=1e-6)
    assert bundle.input_spec == XRV and all_layout["input_resolution"] == bundle.input_spec.size


def test_xrv_op_threshs_buffer_becomes_operating_points(xrv, tmp_path):
    # A model built with op_threshs returns op_norm(sigmoid(logits)); we keep logits and the points apart.
    thresholds = torch.linspace(0.05, 0.4, 18)
    upstream = _randomized(xrv.models.DenseNet(weights=None, op_threshs=thresholds), seed=12)
    path = tmp_path / "with-op.pt"
    torch.save(upstream.state_dict(), path)
    bundle = load_classifier("xrv-densenet121", path)
    assert bundle.op_thresholds == pytest.approx(thresholds.tolist())
    x = torch.randn(1, 1, 64, 64) * 500
    with torch.no_grad():
        normalized = xrv.models.op_norm(torch.sigmoid(bundle.module(x)), thresholds)
        torch.testing.assert_close(normalized, upstream(x), rtol=1e-5, atol=1e-6)


def test_xrv_pickled_module_file(xrv, tmp_path):
    # The published res224 files are whole pickled modules: refused by default, loadable when trusted.
    upstream = _randomized(xrv.models.DenseNet(weights=None), seed=13)
    path = tmp_path / "nih-pc-chex-densenet121.pt"
    torch.save(upstream, path)
    with pytest.raises(WeightsError, match="allow_pickle"):
        load_classifier("xrv-densenet121", path)
    bundle = load_classifier("xrv-densenet121", path, allow_pickle=True)
    x = torch.randn(1, 1, 64, 64) * 500
    with torch.no_grad():
        torch.testing.assert_close(bundle.module(x), upstream(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Autoencoders


@pytest.fixture(scope="module")
def autoencoders():
    from cxrexplain import autoencoder

    return autoencoder


def test_autoencoder_round_trip_with_sidecar(autoencoders, tmp_path):
    torch.manual_seed(0)
    module = _randomized(autoencoders.build_autoencoder("resnet_ae_small"), seed=14)
    original = load_autoencoder(module)
    path = tmp_path / "ae.pt"
    torch.save({f"module.{k}": v for k, v in module.state_dict().items()}, path)  # DataParallel form
    plain = load_autoencoder("resnet_ae_small", path)
    assert plain.input_spec == autoencoders.autoencoder_spec("resnet_ae_small")
    saved = save_autoencoder(plain, tmp_path / "again.pt")
    loaded = load_autoencoder(None, saved)
    assert loaded.architecture == "resnet_ae_small" and loaded.version == plain.version
    assert loaded.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.module.decode(loaded.module.encode(x)),
                           original.module.decode(original.module.encode(x)))


def test_autoencoder_errors(autoencoders, tmp_path):
    with pytest.raises(WeightsError) as err:
        load_autoencoder("resnet_ae101", tmp_path / "101-elastic.pt")
    assert "101-elastic.pt" in str(err.value) and "resnet_ae101" in str(err.value)
    with pytest.raises(WeightsError, match="resnet_ae_small"):
        load_autoencoder("resnet_ae7", None)
    path = tmp_path / "classifier.pt"
    torch.save(_small().state_dict(), path)
    with pytest.raises(WeightsError, match="unexpected"):
        load_autoencoder("resnet_ae_small", path)


def test_load_autoencoder_spec_of_a_module(autoencoders):
    class Own(nn.Module):
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return z

    # A module of one's own works in the classifier's input space, unless told otherwise; no silent default.
    with pytest.raises(ValueError, match=r"Own .*pass input_spec= .*or classifier_spec="):
        load_autoencoder(Own())
    assert load_autoencoder(Own(), classifier_spec=TORCHVISION).input_spec == TORCHVISION
    assert load_autoencoder(Own(), input_spec=XRV, classifier_spec=TORCHVISION).input_spec == XRV
    # This package's named layouts and torchxrayvision's ResNetAE keep their own space.
    small = autoencoders.build_autoencoder("resnet_ae_small")
    assert load_autoencoder(small, classifier_spec=TORCHVISION).input_spec == unit_spec(1, 64)
    xrv = pytest.importorskip("torchxrayvision")
    assert load_autoencoder(xrv.autoencoders.ResNetAE50(), classifier_spec=TORCHVISION).input_spec == XRV
    with pytest.raises(TypeError, match="Linear has no 'encode' and no 'decode'"):
        load_autoencoder(nn.Linear(2, 2), classifier_spec=TORCHVISION)


@pytest.mark.parametrize(("name", "head"), [("vgg11", "classifier.6"), ("resnet18", "fc"),
                                            ("densenet121", "classifier"), ("densenet_small", "classifier")])
def test_find_head_and_a_bare_module_labels(name, head):
    with torch.device("meta"):  # no memory: only the layout matters
        module = build_classifier(name, 4)
    assert find_head(module) is module.get_submodule(head)
    sequential = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 5))
    assert find_head(sequential) is sequential[4]
    assert find_head(nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(1))) is None
    assert load_classifier(sequential).labels == [str(i) for i in range(5)]
