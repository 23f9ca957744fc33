"""Latent Shift ([Cohen2021]): counterfactual frames from an autoencoder, and a 2-D map of what changed.

For each row: z = E(x); the direction is ∂f(D(z))/∂z ([Cohen2021] eq. 1, f the target's logit by default or its
probability as in the paper: the model's published output, :meth:`ClassifierBundle.outputs`, which for
torchxrayvision weights is ``op_norm(σ(logit), t)``); the λ range is searched ([Cohen2021] §4.2,
:mod:`cxrexplain.lambda_search`); K frames x'_λ = D(z + λ ∂f/∂z) (eq. 2) are rendered at λ evenly spaced between
the bounds; the map reduces them (App. B). Classifier and autoencoder may live in different input spaces: images
cross through unit space (``InputSpec.to_unit`` / ``from_unit``, resized when the sizes differ), differentiably.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..bundle import AutoencoderBundle, ClassifierBundle
from ..errors import AutoencoderRequired, InvalidOption
from ..lambda_search import (
    Bound,
    Search,
    StopRule,
    fast,
    fast_evaluations_bound,
    grid_steps,
    published_lambdas,
    published_walk,
    run_searches,
    walk,
)
from ..xrv_densenet import op_norm_slope
from .base import ForwardContext, Method, MethodOutput, register

DIRECTIONS = ("logit", "sigmoid")
MAPS = ("max", "mean", "minmax", "int")
SEARCHES = ("fast", "exhaustive", "app_c", "reference_walk")
PUBLISHED = ("app_c", "reference_walk")  # the published procedures: the paper's sigmoid direction and λ grid
STOPS = ("relative", "absolute")
# Decode+classify batch: on this 2-core CPU ResNetAE-101 is fastest per image at 2 (BENCHMARKS.md, latent
# shift); GPUs want more.
CPU_BATCH, CUDA_BATCH = 2, 16
MIN_SCALE = 1e-4  # floor of p0 (1 - p0) when converting the step to logit units (p0 may round to 1.0)


@dataclass(frozen=True)
class LatentShiftResult:
    """What Latent Shift found for N rows: K counterfactual frames each, and how far to trust them.

    Attributes
    ----------
    frames
        (N, K, H, W) frames x'_λ in unit space [0, 1] at the classifier's input size, λ ascending ([Cohen2021] eq. 2).
    lambdas
        (N, K) the λ of each frame, from the lower to the upper bound of the search ([Cohen2021] §4.2).
    frame_probabilities
        (N, K) the classifier's probability of the row's target on each frame, in ``probability`` units.
    reconstruction_gap
        (N,) f(x) - f(D(E(x))) ([Cohen2021] App. K), in ``probability`` units: a large gap means the
        counterfactual cannot be trusted.
    reconstruction
        (N, H, W) D(E(x)) in unit space, the λ = 0 image the maps compare against.
    upper_bound_reached, lower_bound_reached
        (N,) bool: the search stopped at its threshold (not at a turn of the prediction or at the cap).
    map_kind, direction
        The map reduction (``max`` / ``mean`` / ``minmax`` / ``int``) and the shift direction (``logit`` /
        ``sigmoid``) that produced these frames.
    passes, search_passes
        Decode+classify evaluations (one per image): all of them, and those of the λ search alone.
    probability
        The units of the probabilities here, of the stop thresholds and of p0: ``sigmoid`` (σ(logit), what
        findings report) or ``op_norm`` (torchxrayvision's ``op_norm(σ(logit), t)``, the model's published
        output and [Cohen2021]'s f, for bundles with ``op_norm``: its operating point t is 0.5 here).
    """

    frames: torch.Tensor
    lambdas: torch.Tensor
    frame_probabilities: torch.Tensor
    reconstruction_gap: torch.Tensor
    reconstruction: torch.Tensor
    upper_bound_reached: torch.Tensor
    lower_bound_reached: torch.Tensor
    map_kind: str
    direction: str
    passes: int
    search_passes: int
    probability: str = "sigmoid"

    def cpu(self) -> LatentShiftResult:
        """The same result with every tensor detached and on the CPU (what :class:`ExplanationResult` holds)."""
        tensors = {f.name: getattr(self, f.name).detach().cpu() for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **tensors)


@dataclass
class LatentShiftOutput(MethodOutput):
    """:class:`MethodOutput` of Latent Shift: the 2-D map as ``heatmap``, the frames and their story as ``shift``."""

    shift: LatentShiftResult


def _resize(g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(g.shape[-2:]) == size:
        return g
    shrink = g.shape[-2] > size[0] or g.shape[-1] > size[1]
    return F.interpolate(g, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class Shifter:
    """Eq. 1 and eq. 2 for one batch: latents, directions, and batched decode+classify at any (row, λ).

    ``passes`` counts decode+classify evaluations (one per image). Probabilities are the bundle's published
    outputs (:meth:`ClassifierBundle.outputs`: σ(logit), or torchxrayvision's op_norm of it).
    """

    def __init__(self, bundle: ClassifierBundle, autoencoder: AutoencoderBundle, x: torch.Tensor,
                 targets: torch.Tensor, batch_size: int):
        self.bundle, self.clf = bundle, bundle.module
        self.encode: Callable[[torch.Tensor], torch.Tensor] = autoencoder.encode
        self.decode: Callable[[torch.Tensor], torch.Tensor] = autoencoder.decode
        self.clf_spec, self.ae_spec = bundle.input_spec, autoencoder.input_spec
        self.size = (int(x.shape[-2]), int(x.shape[-1]))
        self.targets, self.batch_size, self.passes = targets, batch_size, 0
        with torch.no_grad():
            self.z = torch.cat([self.encode(self.to_ae(c)) for c in x.detach().split(batch_size)])

    def to_ae(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier input -> unit space -> autoencoder input (differentiable)."""
        if self.clf_spec == self.ae_spec and self.size == (self.ae_spec.size,) * 2:
            return x
        g = _resize(self.clf_spec.to_unit(x), (self.ae_spec.size, self.ae_spec.size))
        return self.ae_spec.from_unit(g)

    def to_clf(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder output -> (classifier input, unit-space gray at the classifier's size); differentiable."""
        g = _resize(self.ae_spec.to_unit(d), self.size)
        if self.clf_spec == self.ae_spec:
            return (d if tuple(d.shape[-2:]) == self.size else self.clf_spec.from_unit(g)), g
        return self.clf_spec.from_unit(g), g

    def _target_logit(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.clf(x).gather(1, self.targets[rows, None])[:, 0]

    def probability(self, logit: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The target's published output from its logit, per row (differentiable)."""
        return self.bundle.outputs(logit, self.targets[rows])

    def directions(self, direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """∂f(D(z))/∂z per row (eq. 1), with p0 = f(D(E(x))) as probability and the unit-space D(E(x))."""
        grads, p0, x0 = [], [], []
        for rows in torch.arange(len(self.z), device=self.z.device).split(self.batch_size):
            with torch.enable_grad():
                z = self.z[rows].detach().requires_grad_(True)
                x_clf, g = self.to_clf(self.decode(z))
                logit = self._target_logit(x_clf, rows)
                p = self.probability(logit, rows)
                f = logit if direction == "logit" else p
                # Rows are independent (eval mode), so the gradient of the sum is each row's own gradient.
                (grad,) = torch.autograd.grad(f.sum(), z)
            grads.append(grad)
            p0.append(p.detach())
            x0.append(g.detach()[:, 0])
            self.passes += len(rows)
        return torch.cat(grads), torch.cat(p0), torch.cat(x0)

    @torch.no_grad()
    def evaluate(self, rows: Sequence[int], lams: Sequence[float], grad: torch.Tensor,
                 keep_images: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target probability of x'_λ = D(z + λ ∂f/∂z) (eqs. 1-2) at each (row, λ); optionally the unit images."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.z.device)
        shift = torch.as_tensor(list(lams), dtype=self.z.dtype, device=self.z.device)
        probs, images = [], []
        for r, lam in zip(index.split(self.batch_size), shift.split(self.batch_size), strict=True):
            z = self.z[r] + lam.view(-1, *[1] * (self.z.ndim - 1)) * grad[r]  # eq. 1
            x_clf, g = self.to_clf(self.decode(z))  # eq. 2
            probs.append(self.probability(self._target_logit(x_clf, r), r))
            if keep_images:
                images.append(g[:, 0])
            self.passes += len(r)
        return torch.cat(probs), (torch.cat(images) if keep_images else None)


def logit_slopes(bundle: ClassifierBundle, targets: torch.Tensor, p0: Sequence[float]) -> list[float]:
    """df/dl at D(E(x)) per row, from p0 = f(D(E(x))): p0 (1 - p0) for σ; for torchxrayvision's op_norm the
    sigmoid's slope divided by 2t or 2(1 - t) (:func:`~cxrexplain.xrv_densenet.op_norm_slope`)."""
    if not bundle.op_norm:
        return [p * (1 - p) for p in p0]
    ops = bundle.op_thresholds or [0.5] * len(bundle.labels)
    return [op_norm_slope(p, ops[int(t)]) for p, t in zip(p0, targets.tolist(), strict=True)]


def frame_lambdas(lower: float, upper: float, frames: int) -> torch.Tensor:
    """K evenly spaced λ from ``lower`` to ``upper`` in float64, both bounds exactly as the search evaluated
    them, and a grid point that should be λ = 0 exactly 0 (``linspace`` can give 4e-16 there), so the frames at
    the bounds and at D(E(x)) are the images already decoded, not decoded again."""
    lambdas = torch.linspace(lower, upper, frames, dtype=torch.float64)
    lambdas[0], lambdas[-1] = lower, upper
    return lambdas.masked_fill_(lambdas.abs() <= 1e-9 * (upper - lower), 0.0)


def latent_map(frames: torch.Tensor, x0: torch.Tensor, kind: str) -> torch.Tensor:
    """Reduce (N, K, H, W) frames (λ ascending) to (N, H, W) maps ([Cohen2021] App. B); ``x0`` is D(E(x)), λ = 0."""
    if kind == "max":  # latentshift-max: per pixel, the largest change from the λ = 0 reconstruction
        return (frames - x0[:, None]).abs().amax(dim=1)
    if kind == "mean":  # mean |x_λ - x_0|, as the reference code computes it (the paper's text averages x_λ)
        return (frames - x0[:, None]).abs().mean(dim=1)
    if kind == "minmax":  # latentshift-minmax: |x_λmin - x_λmax|
        return (frames[:, 0] - frames[:, -1]).abs()
    if kind == "int":  # latentshift-sliding interval: mean |difference between consecutive frames|
        return (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=1)
    raise InvalidOption(f"latent_shift: unknown map {kind!r}; use one of {', '.join(MAPS)}")


@register
class LatentShift(Method):
    """Latent Shift counterfactual frames and map ([Cohen2021] eqs. 1-2, §4.2, App. B/C/K).

    Options: ``frames`` (K, default 10); ``direction`` (``logit`` default, ``sigmoid`` as in the paper);
    ``map`` (``max``, ``mean``, ``minmax``, ``int``); ``search`` (``fast`` default, ``exhaustive``, ``app_c``,
    ``reference_walk``); ``max_lambda`` (cap on |λ|, 1000 as in App. C); ``step`` (grid step of the walk in the
    paper's sigmoid units, 10 as in App. C; times p0 (1 - p0) in logit units); ``batch_size`` (decode+classify
    batch, 0 = by device); ``fall`` / ``rise`` (0.30 / 0.05: how far the prediction must fall / rise from p0 to
    end the lower / upper search of ``fast`` and ``exhaustive``); ``stop``: how ``fall`` and ``rise`` are read.

    ``stop``: [Cohen2021] §4.2 says the prediction "decreases by 30% and increases by 5%". ``relative`` (default)
    reads them as fractions of p0, thresholds ``p0 (1 - fall)`` and ``p0 (1 + rise)``; ``absolute`` reads them as
    probability offsets, ``p0 - fall`` and ``p0 + rise``, as every version of the reference code does
    (mlmed/gifsplanation ``attribution.py``: ``initial_pred-0.15 > cur_pred``, ``initial_pred+0.05 < cur_pred``).
    Relative is the default because it scales with the prediction: an absolute fall of 0.3 cannot be reached
    from p0 <= 0.3 (the search then runs to a turn or to the cap, walking far past where the finding has gone),
    while 30 % of p0 can be reached from any p0. The two agree closely on confident predictions (p0 = 0.9:
    0.63 vs 0.60 below). Neither rise can be reached near p0 = 1 (relative above p0 = 1 / (1 + rise), absolute
    above 1 - rise). The published searches (``app_c``, ``reference_walk``) keep their own absolute rules.

    ``search=app_c`` and ``search=reference_walk`` reproduce published procedures, so they always shift along the
    paper's sigmoid direction ∂σ(f)/∂z and walk its λ grid (0, -10, -20 ... and the reference code's fine start),
    whatever ``direction`` says: along the logit direction the same λ grid would land on different images
    (∂σ(f)/∂z = p0 (1 - p0) ∂f/∂z). The result's ``direction`` says ``sigmoid`` for them.

    torchxrayvision weights (``bundle.op_norm``): [Cohen2021]'s f is torchxrayvision's output
    ``op_norm(σ(logit), t)`` (§4.2, App. C, App. K), so there the ``sigmoid`` direction is ∂op_norm(σ(l), t)/∂z,
    and p0, ``fall`` / ``rise`` and the published walks' thresholds, the frame probabilities and the
    reconstruction gap are op_norm'd values (the result's ``probability`` says ``op_norm``): torchxrayvision's
    ``model(x)`` on the same images. ``direction=logit`` shifts along ∂l/∂z as for any model (op_norm does not
    change the logit), its ``step`` converted by op_norm's slope so both directions still visit the same images.
    Findings keep σ(logit) against t for every model (the same positives).
    """

    name = "latent_shift"
    needs_graph = False  # its own passes through the autoencoder
    options = {"frames": int, "direction": str, "map": str, "search": str, "max_lambda": float, "step": float,
               "batch_size": int, "fall": float, "rise": float, "stop": str}
    frames: int = 10
    direction: str = "logit"
    map: str = "max"
    search: str = "fast"
    max_lambda: float = 1000.0
    step: float = 10.0
    batch_size: int = 0
    fall: float = 0.30
    rise: float = 0.05
    stop: str = "relative"

    def __init__(self, **options: object):
        super().__init__(**options)
        checks = {
            "direction": self.direction in DIRECTIONS, "map": self.map in MAPS, "search": self.search in SEARCHES,
            "frames": self.frames >= 2, "max_lambda": self.max_lambda > 0, "step": self.step > 0,
            "batch_size": self.batch_size >= 0, "fall": 0 < self.fall < 1, "rise": self.rise > 0,
            "stop": self.stop in STOPS,
        }
        ranges = {"frames": "2 or more", "max_lambda": "a number above 0", "step": "a number above 0",
                  "batch_size": "0 (by device) or more", "fall": "a fraction between 0 and 1, both excluded",
                  "rise": "a number above 0"}
        for key, ok in checks.items():
            if not ok:
                allowed = {"direction": DIRECTIONS, "map": MAPS, "search": SEARCHES, "stop": STOPS}.get(key)
                hint = f"one of {', '.join(allowed)}" if allowed else ranges[key]
                raise InvalidOption(f"latent_shift: {key}={getattr(self, key)!r} is not valid; use {hint}")

    @classmethod
    def cost_of(cls, options: Mapping[str, Any]) -> int:
        o = {key: options.get(key, getattr(cls, key)) for key in ("frames", "max_lambda", "step", "direction",
                                                                   "search")}
        # logit steps are the sigmoid's times df/dl: p0 (1 - p0) <= 0.25 (see _searches); op_norm's df/dl can reach
        # 0.5, so fewer steps: the bound stays an upper bound
        logit = o["direction"] == "logit" and o["search"] not in PUBLISHED
        kmax = grid_steps(o["max_lambda"], o["step"] * (0.25 if logit else 1.0))
        search = {"fast": 2 * fast_evaluations_bound(kmax), "exhaustive": 2 * kmax,
                  "app_c": kmax, "reference_walk": kmax + 9}.get(o["search"], 2 * kmax)
        # The search's passes plus one decoded frame each; never under 2 per frame (each frame is a decode and a
        # classification, even when the search reuses some of them).
        return max(1 + int(o["frames"]) + search, 2 * int(o["frames"]))

    @property
    def shift_direction(self) -> str:
        """The direction the frames move along: ``sigmoid`` for the published searches, else ``direction``."""
        return "sigmoid" if self.search in PUBLISHED else self.direction

    def thresholds(self, p0: float) -> tuple[float, float]:
        """The probabilities that end the lower and upper searches ([Cohen2021] §4.2, read as ``stop`` says)."""
        if self.stop == "absolute":
            return p0 - self.fall, p0 + self.rise
        return p0 * (1 - self.fall), p0 * (1 + self.rise)

    def _searches(self, p0: list[float], slopes: list[float]) -> list[tuple[int, Search]]:
        searches: list[tuple[int, Search]] = []
        for row, (p, slope) in enumerate(zip(p0, slopes, strict=True)):
            if self.search in ("fast", "exhaustive"):
                run = fast if self.search == "fast" else walk
                # ∂σ(l)/∂z = p0 (1 - p0) ∂l/∂z: both directions are the same line, with λ scaled by p0 (1 - p0)
                # (``slope``: df/dl at D(E(x)), which op_norm scales by 1/(2t) or 1/(2(1 - t))). ``step`` is in
                # the paper's (probability) units, so both walks visit the same images; the cap stays in the
                # direction's own units, which is how the logit direction reaches further on confident models
                # (the sigmoid gradient vanishes there).
                step = self.step * (max(slope, MIN_SCALE) if self.direction == "logit" else 1.0)
                low, high = self.thresholds(p)
                searches.append((row, run(StopRule(-1, p, low, step, self.max_lambda))))
                searches.append((row, run(StopRule(+1, p, high, step, self.max_lambda))))
            else:  # published walks: lower bound only, upper bound 0
                fine = self.search == "reference_walk"
                fall = 0.15 if fine else 0.5
                searches.append((row, published_walk(p, fall, self.max_lambda, published_lambdas(fine))))
        return searches

    def explain(self, ctx: ForwardContext) -> LatentShiftOutput:
        if ctx.autoencoder is None:
            raise AutoencoderRequired("latent_shift needs an autoencoder, and this model was loaded without one")
        batch = self.batch_size or (CUDA_BATCH if ctx.x.device.type == "cuda" else CPU_BATCH)
        shifter = Shifter(ctx.bundle, ctx.autoencoder, ctx.x, ctx.targets, batch)
        grad, p0, x0 = shifter.directions(self.shift_direction)
        p0_list = p0.tolist()
        n = len(p0_list)
        # Every evaluated (row, λ) keeps its image: the frames at the two bounds (and at λ = 0, D(E(x))) were
        # already decoded by the search, so they are not decoded again.
        seen: dict[tuple[int, float], tuple[float, torch.Tensor]] = {
            (row, 0.0): (p0_list[row], x0[row]) for row in range(n)}

        def probabilities(rows: Sequence[int], lams: Sequence[float]) -> torch.Tensor:
            probs, images = shifter.evaluate(rows, lams, grad, keep_images=True)
            assert images is not None
            seen.update({(r, lam): (p, image) for r, lam, p, image in zip(rows, lams, probs.tolist(), images,
                                                                          strict=True)})
            return probs

        bounds = run_searches(self._searches(p0_list, logit_slopes(ctx.bundle, ctx.targets, p0_list)), p0_list,
                              probabilities)
        if self.search in ("fast", "exhaustive"):
            lower, upper = bounds[0::2], bounds[1::2]
        else:
            lower, upper = bounds, [Bound(0.0, False)] * n
        search_passes = shifter.passes - n
        lambdas = torch.stack([frame_lambdas(lo.lam, hi.lam, self.frames) for lo, hi in zip(lower, upper, strict=True)])
        wanted = [(row, lam) for row in range(n) for lam in lambdas[row].tolist()]
        missing = [key for key in dict.fromkeys(wanted) if key not in seen]
        if missing:
            probabilities([r for r, _ in missing], [lam for _, lam in missing])
        probs = torch.tensor([seen[key][0] for key in wanted], device=p0.device)
        frames = torch.stack([seen[key][1] for key in wanted]).clamp(0, 1).view(n, self.frames, *shifter.size)
        lambdas = lambdas.float()
        x0 = x0.clamp(0, 1)
        # f(x) in the units of p0: σ(logit), or op_norm(σ(logit), t) ([Cohen2021] App. K with its f).
        target_p = ctx.bundle.outputs(ctx.logits.detach().gather(1, ctx.targets[:, None])[:, 0], ctx.targets)
        return LatentShiftOutput(
            heatmap=latent_map(frames, x0, self.map).float(),
            shift=LatentShiftResult(
                frames=frames,
                lambdas=lambdas.to(frames.device),
                frame_probabilities=probs.view(n, self.frames),
                reconstruction_gap=target_p - p0,  # [Cohen2021] App. K: f(x) - f(D(E(x)))
                reconstruction=x0,
                upper_bound_reached=torch.tensor([b.reached for b in upper]),
                lower_bound_reached=torch.tensor([b.reached for b in lower]),
                map_kind=self.map,
                direction=self.shift_direction,
                passes=shifter.passes,
                search_passes=search_passes,
                probability="op_norm" if ctx.bundle.op_norm else "sigmoid",
            ),
        )
