"""The Explainer: validate a batch, run the classifier once, hand every requested method the shared context."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .bundle import AutoencoderBundle, ClassifierBundle
from .errors import AutoencoderRequired, InvalidInput, InvalidOption
from .methods import base as registry
from .methods.base import ForwardContext, Method
from .methods.latent_shift import LatentShiftOutput, LatentShiftResult
from .methods.semantic import SemanticOutput, SemanticResult, dissection_table
from .models import find_head, load_autoencoder
from .spec import InputSpec

Target = str | int


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` when present unless told otherwise."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@dataclass
class ExplanationResult:
    """Everything :meth:`Explainer.explain` returns; tensors are on the CPU, detached.

    ``heatmaps[name]`` is (N, H, W) float32, raw and signed, at the model's input resolution. ``latent_shift``
    holds Latent Shift's frames and search outcome (``None`` unless ``latent_shift`` was requested); its frames,
    λ, frame probabilities and reconstruction gap are also readable here directly. ``semantic`` holds the top
    units of the ``semantic`` method (concepts, IoUs, maps), ``None`` unless it was requested.
    ``timings_ms[name]`` is the time each method took on the shared forward pass.
    """

    labels: list[str]
    targets: list[int]
    probabilities: torch.Tensor
    heatmaps: dict[str, torch.Tensor] = field(default_factory=dict)
    latent_shift: LatentShiftResult | None = None
    semantic: SemanticResult | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def target_names(self) -> list[str]:
        return [self.labels[t] for t in self.targets]

    @property
    def frames(self) -> torch.Tensor | None:
        """(N, K, H, W) latent-shift frames in [0, 1], or ``None``."""
        return None if self.latent_shift is None else self.latent_shift.frames

    @property
    def lambdas(self) -> torch.Tensor | None:
        """(N, K) the λ of each latent-shift frame, or ``None``."""
        return None if self.latent_shift is None else self.latent_shift.lambdas

    @property
    def frame_probabilities(self) -> torch.Tensor | None:
        """(N, K) the target's probability on each latent-shift frame, or ``None``."""
        return None if self.latent_shift is None else self.latent_shift.frame_probabilities

    @property
    def reconstruction_gap(self) -> torch.Tensor | None:
        """(N,) f(x) - f(D(E(x))) ([Cohen2021] App. K), or ``None``."""
        return None if self.latent_shift is None else self.latent_shift.reconstruction_gap


class Explainer:
    """Explain a classifier's findings.

    Parameters
    ----------
    classifier
        A :class:`ClassifierBundle` (from ``load_classifier``) or any ``nn.Module`` returning (N, L) logits
        (torchvision's VGG, ResNet, DenseNet, a custom ``nn.Sequential``, ...). A bare module takes the
        torchvision input spec, and labels ``"0" .. "L-1"`` with L the outputs of its head (its last
        ``nn.Linear``, found as ``load_classifier`` finds it) unless ``labels`` is given.
    autoencoder
        Backs ``latent_shift``; optional otherwise. An :class:`AutoencoderBundle` (from ``load_autoencoder``)
        keeps its own input spec. A bare module with callable ``encode(x) -> z`` and ``decode(z) -> x`` is
        bundled by ``load_autoencoder``: torchxrayvision's ResNetAE and this package's named ResNetAE layouts
        keep their own spec, any other module works in the classifier's input space unless
        ``autoencoder_spec`` says otherwise.
    device
        ``"cuda"`` or ``"cpu"``; default: CUDA when available.
    labels
        One name per output, for a bare classifier module only (a bundle carries its labels).
    autoencoder_spec
        The input space a bare autoencoder module was trained in, when it is not the classifier's.

    Raises
    ------
    TypeError
        ``classifier`` is not a bundle or module, or ``autoencoder`` is not a bundle or a module with
        ``encode``/``decode``.
    ValueError
        A bare classifier without an ``nn.Linear`` head and no ``labels``; ``labels`` or ``autoencoder_spec``
        given where a bundle already carries them.
    """

    def __init__(
        self,
        classifier: ClassifierBundle | nn.Module,
        autoencoder: AutoencoderBundle | nn.Module | None = None,
        device: str | torch.device | None = None,
        labels: Sequence[str] | None = None,
        *,
        autoencoder_spec: InputSpec | None = None,
    ):
        self.device = select_device(device)
        self.bundle = _bundle_classifier(classifier, labels)
        self.bundle.module.to(self.device)
        self.autoencoder = _bundle_autoencoder(autoencoder, autoencoder_spec, self.bundle.input_spec)
        if self.autoencoder is not None:
            self.autoencoder.module.to(self.device)
        for p in self.bundle.module.parameters():
            p.requires_grad_(False)

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an (N, C, H, W) batch in the classifier's input space; raises :class:`InvalidInput`."""
        spec = self.bundle.input_spec
        if not isinstance(x, torch.Tensor):
            raise InvalidInput(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise InvalidInput(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise InvalidInput("the batch is empty")
        if x.shape[1] != spec.channels:
            raise InvalidInput(f"this model takes {spec.channels} channel(s), the batch has {x.shape[1]}")
        if not x.is_floating_point():
            raise InvalidInput(f"expected a floating-point tensor, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise InvalidInput("the input contains NaN or Inf values")
        return x.to(self.device, torch.float32)

    def resolve_targets(
        self, targets: Target | Sequence[Target | None] | None, n: int, logits: torch.Tensor
    ) -> torch.Tensor:
        """One label index per row; ``None`` (for all rows, or in a row's place) explains that row's most
        probable finding, read from this forward pass."""
        top = logits.detach().argmax(dim=1)
        if targets is None:
            return top
        if isinstance(targets, str | int):
            targets = [targets] * n
        if len(targets) != n:
            raise InvalidInput(f"{len(targets)} targets for {n} rows: give one target per row")
        index = [int(top[i]) if t is None else self.bundle.label_index(t) for i, t in enumerate(targets)]
        return torch.tensor(index, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L) probabilities, without gradients."""
        return torch.sigmoid(self.bundle.module(self.check_input(x))).cpu()

    def explain(
        self,
        x: torch.Tensor,
        methods: Sequence[str | Method] | Mapping[str, Method] = ("cam",),
        targets: Target | Sequence[Target | None] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ExplanationResult:
        """Run the requested methods on one forward pass.

        Parameters
        ----------
        x
            (N, C, H, W) batch in the classifier's input space.
        methods
            Wire names (``["cam", "latent_shift"]``), :class:`Method` instances already built and validated
            (``[LatentShift(frames=5)]``), or a mapping of wire name to instance; instances are used as given,
            never built again.
        targets
            One label (name or index) for every row, one per row, or ``None``: the row's top finding, read from
            this call's forward pass (also in a row's place, ``[None, "Mass"]``).
        options
            Per-method options of methods given by name, for example
            ``{"latent_shift": {"frames": 10, "direction": "logit"}, "integrated_gradients": {"steps": 32}}``.
        """
        chosen = _methods(methods, options or {})
        if "latent_shift" in chosen and self.autoencoder is None:
            raise AutoencoderRequired("latent_shift needs an autoencoder, and this model was loaded without one")
        if "semantic" in chosen:
            dissection_table(self.bundle)  # refuse before any work when the model has no table
        x = self.check_input(x)
        captures = [m.captures(self.bundle) for m in chosen.values()]
        # Autograd bookkeeping only when a method differentiates through this forward (saliency, Grad-CAM).
        graph = any(m.needs_graph for m in chosen.values())
        with torch.enable_grad():
            x = x.detach().requires_grad_(graph)
            with torch.set_grad_enabled(graph):
                if "all" in captures:
                    logits, activations = self.bundle.traced.run(x, "all")
                elif any(captures):
                    names = tuple(name for c in captures for name in c)
                    logits, activations = self.bundle.traced.run(x, names)
                else:
                    logits, activations = self.bundle.module(x), {}
            ctx = ForwardContext(
                bundle=self.bundle,
                x=x,
                logits=logits,
                targets=self.resolve_targets(targets, x.shape[0], logits),
                activations=activations,
                autoencoder=self.autoencoder,
            )
            outputs, timings_ms = {}, {}
            for name, method in chosen.items():
                start = time.perf_counter()
                outputs[name] = method.explain(ctx)
                timings_ms[name] = (time.perf_counter() - start) * 1e3
        shift = outputs.get("latent_shift")
        semantic = outputs.get("semantic")
        return ExplanationResult(
            labels=list(self.bundle.labels),
            targets=ctx.targets.tolist(),
            probabilities=ctx.probabilities.cpu(),
            heatmaps={name: out.heatmap.detach().float().cpu() for name, out in outputs.items()},
            latent_shift=shift.shift.cpu() if isinstance(shift, LatentShiftOutput) else None,
            semantic=semantic.units.cpu() if isinstance(semantic, SemanticOutput) else None,
            timings_ms=timings_ms,
        )


def _methods(methods: Sequence[str | Method] | Mapping[str, Method],
             options: Mapping[str, Mapping[str, Any]]) -> dict[str, Method]:
    """The methods of one call by wire name: names are built with their ``options``, instances kept as given."""
    if isinstance(methods, Mapping):
        for key, instance in methods.items():
            if key != instance.name:
                raise ValueError(f"methods[{key!r}] is a {instance.name} method: key each instance by its name")
    requested: Sequence[str | Method] = list(methods.values()) if isinstance(methods, Mapping) else methods
    chosen: dict[str, Method] = {}
    given: dict[str, str | Method] = {}
    for method in requested:
        name = method.name if isinstance(method, Method) else method
        if name in given:
            if given[name] == method:  # the same name, or the same instance, again: once is enough
                continue
            raise InvalidOption(f"{name} is given twice, as different instances or as an instance and by name: "
                                "ask for each method once")
        if isinstance(method, Method) and name in options:
            raise InvalidOption(f"options for {name} were given beside a {name} instance: set them on the "
                                "instance, or give the method by name")
        given[name] = method
        chosen[name] = method if isinstance(method, Method) else registry.create(name, **dict(options.get(name, {})))
    return chosen


def _bundle_classifier(classifier: ClassifierBundle | nn.Module, labels: Sequence[str] | None) -> ClassifierBundle:
    if isinstance(classifier, ClassifierBundle):
        if labels is not None:
            raise ValueError("labels= is for a bare nn.Module; a ClassifierBundle carries its own labels: "
                             "give them to load_classifier(..., labels=[...]) instead")
        return classifier
    if isinstance(classifier, nn.Module):
        return _bundle_module(classifier, labels)
    raise TypeError(f"classifier must be a ClassifierBundle (from load_classifier) or an nn.Module returning "
                    f"(N, L) logits; got {type(classifier).__name__}")


def _bundle_module(module: nn.Module, labels: Sequence[str] | None) -> ClassifierBundle:
    if labels is None:
        head = find_head(module)
        if head is None:
            raise ValueError(f"cannot tell how many outputs {type(module).__name__} has (it has no nn.Linear "
                             "head): pass labels=[...] with one name per output, or a ClassifierBundle from "
                             "load_classifier")
        labels = [str(i) for i in range(head.out_features)]
    return ClassifierBundle(module=module, labels=list(labels))


def _bundle_autoencoder(
    autoencoder: AutoencoderBundle | nn.Module | None, spec: InputSpec | None, classifier_spec: InputSpec
) -> AutoencoderBundle | None:
    if isinstance(autoencoder, AutoencoderBundle):
        if spec is not None:
            raise ValueError("autoencoder_spec= is for a bare autoencoder module; an AutoencoderBundle carries "
                             "its own input_spec: build it with load_autoencoder(module, input_spec=...)")
        return autoencoder
    if isinstance(autoencoder, nn.Module):
        return load_autoencoder(autoencoder, input_spec=spec, classifier_spec=classifier_spec)
    if autoencoder is not None:
        raise TypeError(f"autoencoder must be an AutoencoderBundle (from load_autoencoder) or an nn.Module with "
                        f"callable encode(x) -> z and decode(z) -> x; got {type(autoencoder).__name__}")
    if spec is not None:
        raise ValueError("autoencoder_spec= describes an autoencoder: pass autoencoder= too")
    return None
