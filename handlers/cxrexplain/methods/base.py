"""The one interface every explanation method implements, and the registry of wire names.

The :class:`~cxrexplain.explainer.Explainer` runs one forward pass and hands each requested method the same
:class:`ForwardContext`; a method never runs its own plain forward of the classifier (methods that need
more evaluations by nature, integrated gradients or latent shift, run those extra ones themselves).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from ..bundle import AutoencoderBundle, ClassifierBundle
from ..errors import InvalidOption, UnknownMethod
from ..options_schema import parse_bool

Captures = tuple[str, ...] | Literal["all"]


@dataclass
class ForwardContext:
    """What the shared forward pass produced.

    ``x`` is the (N, C, H, W) input. When a requested method declares :attr:`Method.needs_graph`, ``x`` is a
    leaf that requires grad and ``logits`` (N, L) and every tensor in ``activations`` (fx node name -> output)
    are connected to it by autograd; methods differentiate with ``retain_graph=True`` so the next method can
    reuse the graph. Otherwise the forward ran without autograd bookkeeping.
    """

    bundle: ClassifierBundle
    x: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    activations: dict[str, torch.Tensor]
    autoencoder: AutoencoderBundle | None = None

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.logits.detach())

    def target_logits(self) -> torch.Tensor:
        """(N,) logit of each row's target, still attached to the graph."""
        return self.logits.gather(1, self.targets[:, None])[:, 0]

    def input_gradient(self) -> torch.Tensor:
        """d(target logit)/dx for every row at once (rows are independent, so the sum's gradient is per row)."""
        (grad,) = torch.autograd.grad(self.target_logits().sum(), self.x, retain_graph=True)
        return grad


@dataclass
class MethodOutput:
    """A method's raw result: ``heatmap`` (N, H, W) float32 signed. A method with more to say returns a subclass
    with typed fields (Latent Shift's frames: :class:`~cxrexplain.methods.latent_shift.LatentShiftOutput`)."""

    heatmap: torch.Tensor


class Method(ABC):
    """An explanation method. Subclasses set ``name`` (the wire name) and implement :meth:`explain`.

    A constructor validates the options and stores them; it allocates nothing that grows with an option
    (work proportional to ``steps`` or ``frames`` happens in :meth:`explain`).
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, type]] = {}
    needs_graph: ClassVar[bool] = True
    """Whether :meth:`explain` differentiates through the shared forward (``ctx.x`` / ``ctx.logits`` /
    ``ctx.activations``). When no requested method does, the shared forward runs without autograd."""

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.options)
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise InvalidOption(f"{self.name} does not take {', '.join(sorted(unknown))}; its options: {allowed}")
        for key, value in options.items():
            try:
                setattr(self, key, _coerce(self.options[key], value))
            except (TypeError, ValueError) as exc:
                expected = self.options[key].__name__
                raise InvalidOption(f"{self.name}: option {key}={value!r} is not a valid {expected}") from exc

    def captures(self, bundle: ClassifierBundle) -> Captures:
        """fx node names whose outputs the shared forward must keep for this method ("all" for propagation)."""
        return ()

    @classmethod
    def cost_of(cls, options: Mapping[str, Any]) -> int:
        """Work units per row relative to one forward+backward, for the cost cap, read from ``options`` alone
        (typed as declared; a missing one is the class default), so a request is priced before any method
        object is built. Must stay cheap and finite for every value the options schema's ranges allow."""
        return 1

    def cost(self) -> int:
        """:meth:`cost_of` this instance's options."""
        return self.cost_of({key: getattr(self, key) for key in self.options})

    @abstractmethod
    def explain(self, ctx: ForwardContext) -> MethodOutput:
        """Return raw heatmaps for every row of ``ctx``."""


def _coerce(kind: type, value: Any) -> Any:
    """Convert an option value (often text from the wire) to ``kind``. ``bool("false")`` would be True, so text
    booleans are read with the wire's one set of words (:func:`~cxrexplain.options_schema.parse_bool`, the
    reading the server and the client SDK use); its error is a ``ValueError``."""
    if kind is bool and isinstance(value, str):
        return parse_bool("value", value)
    return kind(value)


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def create(name: str, **options: Any) -> Method:
    """Instantiate a registered method by wire name; raises :class:`UnknownMethod` with the known names."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; known methods: {', '.join(sorted(REGISTRY))}") from None
    return cls(**options)
