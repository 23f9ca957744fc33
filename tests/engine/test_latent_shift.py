"""Latent Shift ([Cohen2021]): the λ searches, frames, maps, reconstruction gap and the input-space adapter.

Most tests run on hand-made models whose prediction along the shift is known in closed form:
``PoolAE`` (E = 4x4 average pooling, D = nearest upsampling: linear) and ``BoxScore`` (the logit is a fixed
function of the mean brightness m inside a box). With z' = z + λ ∂f/∂z, m moves linearly in λ, so the logit is
``g(m0 + λ κ)`` for a known κ and the bounds can be computed by hand. The confident-model test uses the
phantom-trained fixtures from conftest.

Searches used, by name (README, "Latent shift direction"): ``fast`` and ``exhaustive`` (our stop rule: fall 30 %,
rise 5 % of p0 by default, or p0 - 0.3 and p0 + 0.05 with ``stop="absolute"``, on the grid k * step); ``app_c``
([Cohen2021] App. C as published) and ``reference_walk`` (mlmed/gifsplanation's walk), each checked against a
plain loop written here from the published rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from latent_nets import PoolAE

from cxrexplain import AutoencoderBundle, ClassifierBundle, Explainer, ExplanationResult, LatentShiftResult
from cxrexplain.autoencoder import build_autoencoder
from cxrexplain.errors import AutoencoderRequired, InvalidOption
from cxrexplain.methods.base import ForwardContext
from cxrexplain.methods.latent_shift import LatentShift, Shifter, frame_lambdas, latent_map
from cxrexplain.models import build_classifier
from cxrexplain.spec import TORCHVISION, InputSpec, unit_spec

SIZE = 32
BOX = (8, 24)  # rows and columns 8..23: 16 of the 64 pooled cells
CELLS = 16


class BoxScore(nn.Module):
    """Two labels: logit_0 = g(m), logit_1 = -g(m), m = mean of x in the box.

    ``kind``: "linear" g = s (m - c); "tanh" g = 3 tanh(s (m - c)); "turn" g = d - s (m - c)^2 (a peak: the
    upper search meets it); "valley" g = d + s (m - c)^2 (with m > c the lower search meets its floor).
    """

    def __init__(self, kind: str, s: float, c: float, d: float = 0.0):
        super().__init__()
        self.kind, self.s, self.c, self.d = kind, s, c, d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, :, BOX[0]:BOX[1], BOX[0]:BOX[1]].mean(dim=(1, 2, 3))
        if self.kind == "linear":
            g = self.s * (m - self.c)
        elif self.kind == "tanh":
            g = 3 * torch.tanh(self.s * (m - self.c))
        elif self.kind == "turn":
            g = self.d - self.s * (m - self.c) ** 2
        else:
            g = self.d + self.s * (m - self.c) ** 2
        return torch.stack([g, -g], dim=1)


def explainer(clf: nn.Module, ae: nn.Module | None = None, size: int = SIZE) -> Explainer:
    bundle = ClassifierBundle(clf, ["finding", "other"], input_spec=unit_spec(1, size))
    return Explainer(bundle, None if ae is None else AutoencoderBundle(ae, unit_spec(1, size)), device="cpu")


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(n, 1, SIZE, SIZE)


def shift(ex: Explainer, x: torch.Tensor, **options: object) -> ExplanationResult:
    return ex.explain(x, ["latent_shift"], targets="finding", options={"latent_shift": options})


def curve(clf: nn.Module, ae: nn.Module, x: torch.Tensor, direction: str) -> Callable[[float], float]:
    """Independent re-implementation of p(λ) = σ(f(D(z + λ ∂f/∂z))) for one image ([Cohen2021] eqs. 1-2)."""
    z = ae.encode(x).detach().requires_grad_(True)
    logit = clf(ae.decode(z))[0, 0]
    f = logit if direction == "logit" else torch.sigmoid(logit)
    (grad,) = torch.autograd.grad(f, z)

    def p(lam: float) -> float:
        with torch.no_grad():
            return torch.sigmoid(clf(ae.decode(z + lam * grad))[0, 0]).item()

    return p


# --- search: closed form, fast vs exhaustive, published walks -------------------------------------------------


def test_linear_bounds_match_closed_form() -> None:
    # logit(λ) = logit0 + λ s²/CELLS with the logit direction (∂m/∂z = 1/CELLS on each box cell).
    s, c, step = 4.0, 0.45, 0.05
    x = images()
    res = shift(explainer(BoxScore("linear", s, c), PoolAE()), x, search="exhaustive", step=step, max_lambda=20.0)
    m0 = x[:, :, BOX[0]:BOX[1], BOX[0]:BOX[1]].mean(dim=(1, 2, 3)).double()  # box is cell-aligned: D(E(x)) keeps m
    p0 = torch.sigmoid(s * (m0 - c))
    slope = s * s / CELLS
    lam_low = (torch.logit(0.7 * p0) - s * (m0 - c)) / slope  # 30 % fall ([Cohen2021] §4.2)
    lam_high = (torch.logit(1.05 * p0) - s * (m0 - c)) / slope  # 5 % rise
    step = step * p0 * (1 - p0)  # ``step`` is in the paper's sigmoid units: in logit units it is p0 (1 - p0) times
    expected_low = -torch.ceil(-lam_low / step - 1e-6) * step  # first grid point past the crossing
    expected_high = torch.ceil(lam_high / step - 1e-6) * step
    assert torch.allclose(res.lambdas[:, 0].double(), expected_low, atol=1e-4)
    assert torch.allclose(res.lambdas[:, -1].double(), expected_high, atol=1e-4)
    assert res.frame_probabilities[:, 0].le(0.7 * p0.float() + 1e-6).all()
    assert res.frame_probabilities[:, -1].ge(1.05 * p0.float() - 1e-6).all()
    assert res.latent_shift.upper_bound_reached.all() and res.latent_shift.lower_bound_reached.all()
    assert torch.allclose(res.reconstruction_gap, torch.zeros(2), atol=1e-6)  # cell-aligned box: no gap


def grid_bound(threshold: torch.Tensor, logit0: torch.Tensor, slope: float, step: torch.Tensor) -> torch.Tensor:
    """The first grid point k * step (k >= 1, on the threshold's side of λ = 0) at which a logit that moves as
    ``logit0 + λ slope`` crosses ``logit(threshold)``."""
    lam = (torch.logit(threshold) - logit0) / slope
    return torch.sign(lam) * torch.ceil(lam.abs() / step - 1e-6) * step


def test_relative_and_absolute_stop_thresholds_stop_at_their_own_bounds() -> None:
    """[Cohen2021] §4.2's "decreases by 30% and increases by 5%": relative (default) stops at p0 (1 - 0.3) and
    p0 (1 + 0.05), absolute (the reference code) at p0 - 0.3 and p0 + 0.05. Same linear model as above, p0 near
    0.55, where the two readings are several grid steps apart on both sides."""
    s, c, step = 4.0, 0.45, 0.05
    x = images()
    ex = explainer(BoxScore("linear", s, c), PoolAE())
    m0 = x[:, :, BOX[0]:BOX[1], BOX[0]:BOX[1]].mean(dim=(1, 2, 3)).double()
    logit0 = s * (m0 - c)
    p0 = torch.sigmoid(logit0)
    h = step * p0 * (1 - p0)  # the grid step in logit-direction λ units
    readings = {"relative": (0.7 * p0, 1.05 * p0), "absolute": (p0 - 0.3, p0 + 0.05)}
    found = {}
    for stop, (low, high) in readings.items():
        res = shift(ex, x, search="exhaustive", step=step, max_lambda=20.0, stop=stop)
        expected = torch.stack([grid_bound(low, logit0, s * s / CELLS, h),
                                grid_bound(high, logit0, s * s / CELLS, h)], dim=1)
        assert torch.allclose(res.lambdas[:, [0, -1]].double(), expected, atol=1e-4), stop
        assert res.frame_probabilities[:, 0].le(low.float() + 1e-6).all(), stop
        assert res.frame_probabilities[:, -1].ge(high.float() - 1e-6).all(), stop
        assert res.latent_shift.lower_bound_reached.all() and res.latent_shift.upper_bound_reached.all()
        found[stop] = res.lambdas[:, [0, -1]]
    # absolute reaches further on both sides here (p0 - 0.3 < 0.7 p0 and p0 + 0.05 > 1.05 p0 for p0 < 1)
    assert (found["absolute"][:, 0] < found["relative"][:, 0] - 5 * h.float()).all()
    assert (found["absolute"][:, 1] > found["relative"][:, 1] + h.float()).all()


def test_an_absolute_fall_below_zero_runs_to_the_cap() -> None:
    """p0 near 0.2: p0 - 0.3 < 0 can never be reached, so the absolute reading's lower search ends at the cap
    (not reached), where the relative one stops at 0.7 p0."""
    clf = BoxScore("linear", 4.0, 0.85)  # logit about -1.4 -> p0 about 0.2
    ex, x = explainer(clf, PoolAE()), images()
    relative = shift(ex, x, search="fast", step=0.5, max_lambda=8.0)
    absolute = shift(ex, x, search="fast", step=0.5, max_lambda=8.0, stop="absolute")
    assert (relative.frame_probabilities[:, 0] < 0.3).all()  # p0 < 0.3 on both rows
    assert relative.latent_shift.lower_bound_reached.all() and (relative.lambdas[:, 0] > -8.0).all()
    assert not absolute.latent_shift.lower_bound_reached.any()
    assert torch.allclose(absolute.lambdas[:, 0], torch.full((2,), -8.0))


CASES = {
    # name: (classifier, step, cap) -- monotone (linear, tanh), one turn above (turn) or below (valley) λ = 0.
    "linear-far": (BoxScore("linear", 0.2, 0.45), 1.0, 1000.0),
    "tanh": (BoxScore("tanh", 2.0, 0.47), 0.02, 20.0),
    "turn": (BoxScore("turn", 1.0, 0.25), 0.5, 50.0),
    "valley": (BoxScore("valley", 1.0, 0.3), 0.5, 100.0),
}


def walk_step(step: float, direction: str, p0: float) -> float:
    """The grid step in the direction's λ units (``step`` is in the paper's sigmoid units)."""
    return step * p0 * (1 - p0) if direction == "logit" else step


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("direction", ["logit", "sigmoid"])
def test_fast_search_matches_exhaustive_walk(case: str, direction: str) -> None:
    clf, step, cap = CASES[case]
    ex, x = explainer(clf, PoolAE()), images()
    opts = {"direction": direction, "step": step, "max_lambda": cap}
    fast, walk = shift(ex, x, search="fast", **opts), shift(ex, x, search="exhaustive", **opts)
    # Same stop rule on the same grid: the same bounds (the spec allows one step; here they coincide).
    assert torch.allclose(fast.lambdas, walk.lambdas, atol=1e-5 * cap)
    assert (fast.lambdas - walk.lambdas).abs().max() <= step  # the spec's promise: within one walk step
    assert torch.allclose(fast.frames, walk.frames, atol=1e-5)
    assert torch.allclose(fast.frame_probabilities, walk.frame_probabilities, atol=1e-6)
    assert torch.equal(fast.latent_shift.upper_bound_reached, walk.latent_shift.upper_bound_reached)
    assert fast.latent_shift.search_passes < walk.latent_shift.search_passes
    ratio = walk.latent_shift.search_passes / fast.latent_shift.search_passes
    print(f"{case}/{direction}: walk {walk.latent_shift.search_passes} search passes, fast "
          f"{fast.latent_shift.search_passes} ({ratio:.1f}x fewer); bounds {fast.lambdas[:, [0, -1]].tolist()}")
    if case == "linear-far" and direction == "logit":
        assert ratio > 4  # the walk runs about 250 steps down and 40 up here
    p = curve(clf, PoolAE(), x[:1], direction)
    if case == "turn":  # the rise of 5 % is out of reach: the upper bound is where p stops rising
        assert not fast.latent_shift.upper_bound_reached.any()
        top, h = fast.lambdas[0, -1].item(), walk_step(step, direction, p(0.0))
        assert p(top) > p(top - h) and p(top) >= p(top + h)
    if case == "valley":  # the fall of 30 % is out of reach: the lower bound is where p stops falling
        assert not fast.latent_shift.lower_bound_reached.any()
        floor, h = fast.lambdas[0, 0].item(), walk_step(step, direction, p(0.0))
        assert p(floor) < p(floor + h) and p(floor) <= p(floor - h)


def test_fast_search_on_a_grid_it_cannot_leave_within_the_cap() -> None:
    # p0 > 0.95: the rise of 5 % is unreachable and p keeps rising, so the upper bound is the cap (flagged).
    clf = BoxScore("linear", 4.0, -0.3)  # logit about 3.2 -> p0 about 0.96
    res = shift(explainer(clf, PoolAE()), images(), step=0.5, max_lambda=3.0)
    assert (res.frame_probabilities[:, 0] < 0.96).all()
    assert torch.allclose(res.lambdas[:, -1], torch.full((2,), 3.0))
    assert not res.latent_shift.upper_bound_reached.any()
    assert res.latent_shift.lower_bound_reached.all()


@pytest.mark.parametrize("sign", [-1, 1])
def test_a_flat_prediction_walks_on_to_the_cap_and_fast_gets_there_in_log_steps(sign: int) -> None:
    """A saturated sigmoid is flat: like the published walks, ours continue on a step that does not move the
    prediction, so both sides reach the cap; the fast search gets the same bound in O(log(cap / step))."""
    from cxrexplain.lambda_search import StopRule, fast, run_searches, walk

    def rule() -> StopRule:
        return StopRule(sign=sign, p0=0.999, threshold=0.7 if sign < 0 else 1.05, step=10.0, cap=1000.0)

    calls: list[float] = []

    def flat(rows, lams) -> torch.Tensor:
        calls.extend(lams)
        return torch.full((len(lams),), 0.999, dtype=torch.float64)

    (walked,) = run_searches([(0, walk(rule()))], [0.999], flat)
    walk_calls, calls[:] = len(calls), []
    (probed,) = run_searches([(0, fast(rule()))], [0.999], flat)
    assert walked.lam == probed.lam == sign * 1000.0 and not walked.reached and not probed.reached
    assert walk_calls == 100 and len(calls) == 6  # k = 1, 2, 4, 16, 64, then the cap (100)


@pytest.mark.parametrize("kmax", [1, 2, 3, 5, 10, 25, 100, 400])
def test_fast_search_stays_within_its_evaluation_bound(kmax: int) -> None:
    """The cost cap counts on ``fast_evaluations_bound``: no prediction path, monotone, noisy or turning, may make
    the fast search evaluate more (checked on 2000 random paths per grid length)."""
    from cxrexplain.lambda_search import StopRule, fast, fast_evaluations_bound, run_searches

    generator = torch.Generator().manual_seed(kmax)
    worst = 0
    for trial in range(2000):
        sign = 1 if trial % 2 else -1
        drift = 0.001 if trial % 4 < 2 else 0.0
        path = 0.5 + sign * torch.cumsum(drift + 0.002 * torch.randn(kmax + 1, generator=generator), 0)
        path[0] = 0.5
        threshold = 0.5 + sign * (0.001, 0.005, 0.02, 1.0)[trial % 4 if drift else (trial // 4) % 4]
        rule = StopRule(sign=sign, p0=0.5, threshold=threshold, step=1.0, cap=float(kmax))
        calls: list[float] = []

        def p(rows, lams, path=path, calls=calls) -> torch.Tensor:
            calls.extend(lams)
            return torch.stack([path[round(abs(lam))] for lam in lams]).double()

        run_searches([(0, fast(rule))], [0.5], p)
        worst = max(worst, len(calls))
    assert worst <= fast_evaluations_bound(kmax), (worst, fast_evaluations_bound(kmax))


def app_c_as_published(p: Callable[[float], float], cap: float = 1000.0) -> float:
    """[Cohen2021] App. C, plain loop: from 0 in steps of -10; stop on a rise, a fall of more than 0.5, or
    λ <= -1000."""
    initial = last = p(0.0)
    lam = 0.0
    while True:
        cur = p(lam)
        if last < cur or initial - 0.5 > cur or lam <= -cap:
            return lam
        last = cur
        lam -= 10


def reference_code_walk(p: Callable[[float], float], cap: float = 1000.0) -> float:
    """mlmed/gifsplanation's walk, plain loop: λ = 0, -1 ... -9, then steps of -10; stop on a rise, a fall of
    more than 0.15, or λ <= -1000."""
    initial = last = p(0.0)
    lam = 0.0
    while True:
        cur = p(lam)
        if last < cur or initial - 0.15 > cur or lam <= -cap:
            return lam
        last = cur
        lam = lam - 1 if abs(lam) < 10 else lam - 10


@pytest.mark.parametrize("search,loop", [("app_c", app_c_as_published), ("reference_walk", reference_code_walk)])
def test_published_searches_reproduced(search: str, loop: Callable[..., float]) -> None:
    clf, ae, x = BoxScore("linear", 1.0, 0.1), PoolAE(), images()  # p0 about 0.6, falls slowly
    res = shift(explainer(clf, ae), x, search=search, direction="sigmoid")
    for row in range(len(x)):
        expected = loop(curve(clf, ae, x[row:row + 1], "sigmoid"))
        assert res.lambdas[row, 0].item() == pytest.approx(expected)
        assert res.lambdas[row, -1].item() == 0.0  # no upper search
        assert expected <= -40  # the walk ran far (tens of evaluations)
    assert not res.latent_shift.upper_bound_reached.any()


def test_published_walk_stops_on_a_rise() -> None:
    # A valley below λ = 0: p falls by about 0.01 until λ is about -32, then rises again.
    clf, ae, x = BoxScore("valley", 1.0, 0.3), PoolAE(), images()
    res = shift(explainer(clf, ae), x, search="reference_walk", direction="sigmoid")
    for row in range(len(x)):
        p = curve(clf, ae, x[row:row + 1], "sigmoid")
        expected = reference_code_walk(p)
        assert res.lambdas[row, 0].item() == pytest.approx(expected)
        assert p(expected) > p(expected + (1 if expected > -10 else 10))  # it stopped because p rose


@pytest.mark.parametrize("search", ["app_c", "reference_walk"])
def test_published_searches_use_the_sigmoid_direction_whatever_direction_says(search: str) -> None:
    """A logit direction would put App. C's λ grid on other images (∂σ(f)/∂z = p0 (1 - p0) ∂f/∂z): the
    published searches always take the paper's sigmoid direction and grid, so direction=logit changes nothing."""
    clf, ae, x = BoxScore("linear", 1.0, 0.1), PoolAE(), images()
    ex = explainer(clf, ae)
    as_logit, as_sigmoid = shift(ex, x, search=search, direction="logit"), shift(ex, x, search=search,
                                                                                  direction="sigmoid")
    assert torch.equal(as_logit.lambdas, as_sigmoid.lambdas)
    assert torch.equal(as_logit.latent_shift.frames, as_sigmoid.latent_shift.frames)
    assert as_logit.latent_shift.direction == "sigmoid"
    # and the logit direction, where a search takes it, is a different walk on this model
    fast_logit, fast_sigmoid = shift(ex, x, direction="logit"), shift(ex, x, direction="sigmoid")
    assert fast_logit.latent_shift.direction == "logit"
    assert not torch.equal(fast_logit.lambdas, fast_sigmoid.lambdas)
    assert LatentShift(search=search, direction="logit").cost() == LatentShift(search=search,
                                                                               direction="sigmoid").cost()


# --- frames, maps, gap, shapes -------------------------------------------------------------------------------


def test_latent_map_known_answers() -> None:
    x0 = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    frames = torch.tensor([[[[0.1, 0.5], [0.9, 0.5]], [[0.3, 0.5], [0.5, 1.0]], [[0.5, 0.2], [0.5, 0.5]]]])
    # |frames - x0| per frame: [[.4,0],[.4,0]], [[.2,0],[0,.5]], [[0,.3],[0,0]]
    assert torch.allclose(latent_map(frames, x0, "max"), torch.tensor([[[0.4, 0.3], [0.4, 0.5]]]))
    assert torch.allclose(latent_map(frames, x0, "mean"), torch.tensor([[[0.2, 0.1], [0.4 / 3, 0.5 / 3]]]))
    assert torch.allclose(latent_map(frames, x0, "minmax"), torch.tensor([[[0.4, 0.3], [0.4, 0.0]]]))
    # consecutive: |f1-f0| = [[.2,0],[.4,.5]], |f2-f1| = [[.2,.3],[0,.5]]
    assert torch.allclose(latent_map(frames, x0, "int"), torch.tensor([[[0.2, 0.15], [0.2, 0.5]]]))


@pytest.mark.parametrize("kind", ["max", "mean", "minmax", "int"])
def test_method_output_and_maps_rederived(kind: str) -> None:
    clf, ae = BoxScore("tanh", 2.0, 0.47), PoolAE()
    x = images(3)
    res = shift(explainer(clf, ae), x, map=kind, frames=6, step=0.5, max_lambda=200.0)
    n, k = 3, 6
    assert res.frames.shape == (n, k, SIZE, SIZE) and res.lambdas.shape == (n, k)
    assert res.frame_probabilities.shape == (n, k) and res.reconstruction_gap.shape == (n,)
    assert res.heatmaps["latent_shift"].shape == (n, SIZE, SIZE)
    assert res.heatmaps["latent_shift"].dtype == torch.float32
    assert res.latent_shift.upper_bound_reached.dtype == torch.bool
    assert res.frames.min() >= 0 and res.frames.max() <= 1
    assert (res.lambdas.diff(dim=1) > 0).all()
    # Re-derive the map in float64 numpy from the frames and the λ = 0 reconstruction.
    f, r = res.frames.double().numpy(), res.latent_shift.reconstruction.double().numpy()
    expected = {"max": np.abs(f - r[:, None]).max(1), "mean": np.abs(f - r[:, None]).mean(1),
                "minmax": np.abs(f[:, 0] - f[:, -1]), "int": np.abs(np.diff(f, axis=1)).mean(1)}[kind]
    assert np.allclose(res.heatmaps["latent_shift"].numpy(), expected, atol=1e-6)
    # The map lives in the box: outside it the frames do not change (only box cells move).
    inside = np.zeros((SIZE, SIZE), bool)
    inside[BOX[0]:BOX[1], BOX[0]:BOX[1]] = True
    assert np.abs(res.heatmaps["latent_shift"].numpy()[:, ~inside]).max() < 1e-6
    # Frame probabilities are the classifier's on the unclamped frames: recompute them independently.
    for row in range(n):
        p = curve(clf, ae, x[row:row + 1], "logit")
        got = [p(lam) for lam in res.lambdas[row].tolist()]
        assert np.allclose(res.frame_probabilities[row].numpy(), got, atol=1e-5)


def test_the_result_is_typed_and_the_flat_fields_read_it() -> None:
    """``result.latent_shift`` is a :class:`LatentShiftResult` on the CPU, detached, echoing the options that made
    it; ``result.frames`` / ``lambdas`` / ``frame_probabilities`` / ``reconstruction_gap`` are its tensors."""
    x = images(2)
    res = shift(explainer(BoxScore("tanh", 2.0, 0.47), PoolAE()), x, frames=4, map="minmax", direction="sigmoid",
                step=0.5, max_lambda=200.0)
    typed = res.latent_shift
    assert isinstance(typed, LatentShiftResult)
    assert (typed.map_kind, typed.direction) == ("minmax", "sigmoid")
    assert res.frames is typed.frames and res.lambdas is typed.lambdas
    assert res.frame_probabilities is typed.frame_probabilities
    assert res.reconstruction_gap is typed.reconstruction_gap
    assert typed.reconstruction.shape == (2, SIZE, SIZE)
    assert typed.upper_bound_reached.shape == typed.lower_bound_reached.shape == (2,)
    assert typed.lower_bound_reached.dtype == torch.bool
    assert isinstance(typed.passes, int) and 0 < typed.search_passes < typed.passes
    for f in dataclasses.fields(typed):
        value = getattr(typed, f.name)
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu" and not value.requires_grad, f.name
    assert list(res.timings_ms) == ["latent_shift"]


def test_reconstruction_gap_is_f_x_minus_f_dex() -> None:
    # [Cohen2021] App. K. A box that is not cell-aligned so D(E(x)) changes the box mean.
    clf, ae = BoxScore("linear", 6.0, 0.4), PoolAE()
    clf_shifted = nn.Sequential(nn.ZeroPad2d((2, -2, 2, -2)), clf)  # samples the box off the 4x4 grid
    torch.manual_seed(3)
    x = torch.rand(2, 1, SIZE, SIZE) ** 2
    res = shift(explainer(clf_shifted, ae), x, step=0.5, max_lambda=20.0)
    with torch.no_grad():
        expected = torch.sigmoid(clf_shifted(x)[:, 0]) - torch.sigmoid(clf_shifted(ae(x))[:, 0])
    assert expected.abs().min() > 1e-3  # the gap is real here
    assert torch.allclose(res.reconstruction_gap, expected, atol=1e-6)


def test_frame_lambdas_keep_the_bounds_and_zero_exact() -> None:
    """The frames at the bounds and at λ = 0 are looked up among the images the search decoded, by exact λ."""
    lams = frame_lambdas(-10.0, 20.0, 10)  # torch.linspace gives 4.4e-16 where λ should be 0
    assert lams.dtype == torch.float64 and len(lams) == 10
    assert lams[0].item() == -10.0 and lams[-1].item() == 20.0 and lams[3].item() == 0.0
    assert torch.allclose(lams, torch.linspace(-10.0, 20.0, 10, dtype=torch.float64), atol=1e-12)
    assert (frame_lambdas(-1000.0, 1000.0, 10) != 0).all()  # no grid point at 0: nothing snapped
    assert frame_lambdas(0.0, 0.0, 3).tolist() == [0.0, 0.0, 0.0]


def test_batch_size_does_not_change_results() -> None:
    ex, x = explainer(BoxScore("tanh", 2.0, 0.47), PoolAE()), images(3)
    one = shift(ex, x, batch_size=1, step=0.5, max_lambda=200.0)
    many = shift(ex, x, batch_size=5, step=0.5, max_lambda=200.0)
    assert torch.allclose(one.lambdas, many.lambdas) and torch.allclose(one.frames, many.frames, atol=1e-6)
    assert one.latent_shift.passes == many.latent_shift.passes  # passes count images, not batches


# --- input spaces, errors, options --------------------------------------------------------------------------


def test_mixed_space_adapter_and_gradients() -> None:
    # Classifier: torchvision spec (3 channels, ImageNet normalization) at 48 px; autoencoder: xrv range at 32 px.
    torch.manual_seed(0)
    clf_spec = InputSpec(size=48)
    ae_spec = InputSpec(channels=1, size=32, value_range=(-1024.0, 1024.0), mean=(0.0,), std=(1.0,), name="xrv")
    clf = ClassifierBundle(build_classifier("densenet_small", 2), ["finding", "other"], input_spec=clf_spec)
    ae = AutoencoderBundle(build_autoencoder("resnet_ae_small"), ae_spec)
    gray = torch.rand(2, 1, 48, 48)
    x = clf_spec.from_unit(gray)
    ex = Explainer(clf, autoencoder=ae, device="cpu")
    res = ex.explain(x, ["latent_shift"], targets="finding", options={"latent_shift": {"frames": 4}})
    assert res.frames.shape == (2, 4, 48, 48) and res.heatmaps["latent_shift"].shape == (2, 48, 48)
    assert res.frames.min() >= 0 and res.frames.max() <= 1

    x = x.clone().requires_grad_(True)
    ctx = ForwardContext(bundle=clf, x=x, logits=clf.module(x), targets=torch.tensor([0, 0]), activations={},
                         autoencoder=ae)
    shifter = Shifter(clf, ae, x, ctx.targets, batch_size=2)
    # classifier -> unit -> autoencoder space is the composition of the two specs (with a resize).
    to_ae = shifter.to_ae(x)
    expected = ae_spec.from_unit(F.interpolate(gray, size=(32, 32), mode="bilinear", antialias=True))
    assert torch.allclose(to_ae, expected, atol=1e-2)  # xrv range: 1e-2 of 2048 is float round-off
    (dx,) = torch.autograd.grad(to_ae.sum(), x)
    assert torch.isfinite(dx).all() and dx.abs().sum() > 0
    # and back: decoder output -> classifier input at 48 px, with the unit-space frame.
    d = ae_spec.from_unit(torch.rand(2, 1, 32, 32))
    x_clf, g = shifter.to_clf(d)
    assert x_clf.shape == (2, 3, 48, 48) and g.shape == (2, 1, 48, 48)
    assert torch.allclose(clf_spec.to_unit(x_clf), g, atol=1e-5)
    # Eq. 1's gradient crosses both adapters and the classifier: finite and not zero.
    grad, p0, x0 = shifter.directions("logit")
    assert grad.shape == shifter.z.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert p0.shape == (2,) and x0.shape == (2, 48, 48)
    assert TORCHVISION.channels == 3


def test_latent_shift_without_autoencoder_is_refused() -> None:
    ex = explainer(BoxScore("linear", 1.0, 0.5))
    with pytest.raises(AutoencoderRequired, match="autoencoder"):
        shift(ex, images())
    # The method itself also refuses a context without one.
    x = images().requires_grad_(True)
    ctx = ForwardContext(bundle=ex.bundle, x=x, logits=ex.bundle.module(x), targets=torch.tensor([0, 0]),
                         activations={})
    with pytest.raises(AutoencoderRequired):
        LatentShift().explain(ctx)


@pytest.mark.parametrize("options", [{"direction": "tanh"}, {"map": "median"}, {"search": "grid"}, {"frames": 1},
                                     {"max_lambda": 0}, {"fall": 1.5}, {"rise": 0}, {"stop": "percent"},
                                     {"wobble": 1}])
def test_invalid_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidOption):
        LatentShift(**options)


def test_cost_grows_with_frames_and_walks() -> None:
    assert LatentShift(frames=20).cost() > LatentShift(frames=10).cost()
    assert LatentShift(search="exhaustive").cost() > 5 * LatentShift(search="fast").cost() / 2
    assert math.isfinite(LatentShift(search="reference_walk").cost())


# --- the confident phantom-trained model (conftest fixtures) ------------------------------------------------


@pytest.mark.slow
def test_confident_model_frames_remove_the_finding(phantom_classifier, phantom_autoencoder, phantom_batch,
                                                   phantom_images) -> None:
    ex = Explainer(phantom_classifier, autoencoder=phantom_autoencoder, device="cpu")
    probs = ex.predict(phantom_images)
    # Confident positives (f(x) > 0.9) of every finding present in the held-out batch.
    picks = [(i, name) for i, s in enumerate(phantom_batch) for name in s.present
             if probs[i, phantom_classifier.label_index(name)] > 0.9]
    assert len(picks) >= 3, f"the fixture classifier is not confident enough: {probs}"
    rows = torch.tensor([i for i, _ in picks])
    targets = [name for _, name in picks]
    x = phantom_images[rows]
    res = ex.explain(x, ["latent_shift"], targets=targets)  # defaults: logit direction, fast search, cap 1000
    t = torch.tensor([phantom_classifier.label_index(n) for n in targets])
    p0 = res.probabilities[torch.arange(len(t)), t] - res.reconstruction_gap  # f(D(E(x)))
    reached = res.latent_shift.lower_bound_reached
    assert reached.float().mean() >= 0.5
    # Where the fall was reached, the lowest frame removes at least 30 % of p0 ([Cohen2021] §4.2).
    assert (res.frame_probabilities[reached, 0] <= 0.7 * p0[reached] + 1e-6).all()
    heat = res.heatmaps["latent_shift"]
    ratios = []
    for row, (i, name) in enumerate(picks):
        x0, y0, x1, y1 = phantom_batch[i].boxes[name]
        inside = torch.zeros_like(heat[row], dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        ratios.append((heat[row][inside].mean() / heat[row][~inside].mean().clamp_min(1e-12)).item())
        print(f"{name}: f(x) {res.probabilities[row, t[row]]:.3f}, p0 {p0[row]:.3f} -> "
              f"{res.frame_probabilities[row, 0]:.3f} at λ {res.lambdas[row, 0]:.2f}; map inside/outside box "
              f"{ratios[-1]:.2f}")
    # The map sits in the finding's box more than outside it for most findings (median over the picks).
    assert float(np.median(ratios)) > 1.0
    # Within the same (small) cap, the logit direction moves the probability further down than the sigmoid one:
    # the two directions are the same line, but the sigmoid gradient is p0 (1 - p0) times shorter. That holds
    # where the reconstruction is still confident (p0 >= 0.5: the sigmoid step is at least 4x shorter); a pick
    # whose reconstruction lost the finding (p0 = f(D(E(x))) near 0.2) gives the two nearly the same length.
    opts = {"max_lambda": 0.5}
    logit = ex.explain(x, ["latent_shift"], targets=targets, options={"latent_shift": opts})
    sigmoid = ex.explain(x, ["latent_shift"], targets=targets,
                         options={"latent_shift": {**opts, "direction": "sigmoid"}})
    print("lowest-frame p, logit vs sigmoid:", logit.frame_probabilities[:, 0], sigmoid.frame_probabilities[:, 0])
    confident = p0 >= 0.5
    assert confident.any(), p0
    assert (logit.frame_probabilities[confident, 0] < sigmoid.frame_probabilities[confident, 0]).all()
