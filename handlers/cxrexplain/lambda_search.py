"""The λ-range searches of Latent Shift ([Cohen2021] §4.2 and App. C), written as generators so the rows batch.

A search is a generator that yields the λ it wants evaluated, receives the target probability of
``f(D(z + λ ∂f/∂z))`` at that λ, and returns a :class:`Bound`. :func:`run_searches` drives many of them (every
row, both sides) at once: each round it collects the λ every live search asks for, evaluates the new ones in
one batched call and sends the answers back, so rows and sides share decode+classify batches.

Our searches (``walk`` and ``fast``) move on the grid λ_k = sign · min(k · step, cap), k = 1 .. ceil(cap / step),
with one stop rule: stop at the first k where the prediction has reached its threshold (bound λ_k), or where it
moves the wrong way (bound λ_{k-1}, the last point before it turned), or at the cap. A step where the prediction
does not move at all continues, as in the published walks (a saturated sigmoid can be flat for many steps).
``walk`` visits k = 1, 2, 3 ...; ``fast`` probes k = 1, 2, 4, 16, 64 ... and then bisects, so where the
prediction changes monotonically with λ it returns the same grid point as the walk (and, for one turn, the same
turning point) in O(log(cap / step)) evaluations instead of O(cap / step).

The published searches (``published_walk``) look only at negative λ and keep their own rules (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Bound:
    """Where a search stopped; ``reached`` is True when the threshold stopped it (not a turn or the cap)."""

    lam: float
    reached: bool


Search = Generator[float, float, Bound]
PROBE_FACTOR = 4  # fast's geometric probes: k = 1, 2, 4, then x4: 16, 64 ...


@dataclass(frozen=True)
class StopRule:
    """Our stop rule for one side: ``sign`` -1 searches the lower bound (fall), +1 the upper bound (rise).

    ``threshold`` is the probability that counts as reached ([Cohen2021] §4.2: "the prediction decreases by 30% and
    increases by 5%"): ``p0 (1 - fall)`` below and ``p0 (1 + rise)`` above, or ``p0 - fall`` and ``p0 + rise``
    (the method's ``stop`` option); a threshold below 0 or above 1 cannot be reached and the search ends where the
    prediction stops moving its way or at the cap.
    """

    sign: int
    p0: float
    threshold: float
    step: float
    cap: float

    @property
    def kmax(self) -> int:
        return grid_steps(self.cap, self.step)

    def lam(self, k: int) -> float:
        return self.sign * min(k * self.step, self.cap)

    def reached(self, p: float) -> bool:
        return p <= self.threshold if self.sign < 0 else p >= self.threshold

    def progressed(self, p_new: float, p_old: float) -> bool:
        """Not the wrong way: a flat step counts as progress."""
        return p_new <= p_old if self.sign < 0 else p_new >= p_old


def grid_steps(cap: float, step: float) -> int:
    """Steps of the grid λ_k = k · step up to the cap (the last one capped): at least 1."""
    return max(1, math.ceil(cap / step - 1e-9))


def walk(rule: StopRule) -> Search:
    """Step by step, k = 1, 2, 3 ...: the exhaustive reference for :func:`fast`."""
    prev = rule.p0
    for k in range(1, rule.kmax + 1):
        p = yield rule.lam(k)
        if rule.reached(p):
            return Bound(rule.lam(k), True)
        if not rule.progressed(p, prev):
            return Bound(rule.lam(k - 1), False)
        prev = p
    return Bound(rule.lam(rule.kmax), False)


def fast(rule: StopRule) -> Search:
    """Probes k = 1, 2, 4, then growing by 4 (16, 64 ...) to bracket the stop, then bisection on the grid.

    Factor 4 rather than 2: about (0.5 + 1) log2 K evaluations to a bound k ~ K instead of (1 + 1) log2 K, and
    6 instead of 8 to a cap 100 steps out (where a flat or slowly moving prediction takes the walk). The steps
    before 4 are taken one by one because near bounds are common on confident models: on the trained demo
    pair the upper side turned after 2 steps, which probes 1, 4, 16 found only after 7 evaluations (the walk: 3).
    """
    seen: dict[int, float] = {0: rule.p0}

    def value(k: int) -> Generator[float, float, float]:
        if k not in seen:
            seen[k] = yield rule.lam(k)
        return seen[k]

    def first_reached(lo: int, hi: int) -> Generator[float, float, Bound]:
        # Invariant: lo has not reached the threshold, hi has. Monotone => the walk's first reached k.
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if rule.reached((yield from value(mid))):
                hi = mid
            else:
                lo = mid
        return Bound(rule.lam(hi), True)

    def turning_point(lo: int, hi: int) -> Generator[float, float, Bound]:
        # The prediction moved the right way up to somewhere in [lo, hi] and then turned: bisect on the sign of
        # its step (one turn assumed) to the last point before the turn, which is where the walk stops.
        while lo < hi:
            mid = (lo + hi) // 2
            p_mid = yield from value(mid)
            if rule.reached(p_mid):
                return (yield from first_reached(lo, mid))
            p_next = yield from value(mid + 1)
            if rule.reached(p_next):
                return Bound(rule.lam(mid + 1), True)
            if rule.progressed(p_next, p_mid):
                lo = mid + 1
            else:
                hi = mid
        return Bound(rule.lam(lo), False)

    before, prev, k = 0, 0, 1
    while True:
        p = yield from value(k)
        if rule.reached(p):
            return (yield from first_reached(prev, k))
        if not rule.progressed(p, seen[prev]):
            return (yield from turning_point(before, k))
        if k >= rule.kmax:
            return Bound(rule.lam(k), False)
        before, prev, k = prev, k, next_probe(k, rule.kmax)


def next_probe(k: int, kmax: int) -> int:
    """The probe after ``k`` in :func:`fast`: k = 1, 2, 4, then growing by :data:`PROBE_FACTOR`, up to ``kmax``."""
    return min(2 * k if k < 4 else PROBE_FACTOR * k, kmax)


def fast_evaluations_bound(kmax: int) -> int:
    """At most this many evaluations for one :func:`fast` search over ``kmax`` grid steps (for cost caps): its
    probes, then bisection taking at most two evaluations per halving of the bracket."""
    probes, k = 1, 1
    while k < kmax:
        k, probes = next_probe(k, kmax), probes + 1
    return min(kmax, probes + 2 * math.ceil(math.log2(kmax)))


def published_lambdas(fine_start: bool, step: float = 10.0) -> Iterator[float]:
    """λ = 0, -10, -20 ... ([Cohen2021] App. C) or 0, -1 ... -9, -10, -20 ... (the reference code's walk)."""
    lam = 0.0
    while True:
        yield lam
        lam -= 1.0 if fine_start and abs(lam) < step else step


def published_walk(p0: float, fall: float, cap: float, lambdas: Iterator[float]) -> Search:
    """The published lower-bound walks, rules as written: stop when the prediction rises above the previous
    one, when it is more than ``fall`` (absolute) below p0, or once λ <= -cap; the bound is the λ it stopped at.

    App. C uses fall 0.5 and steps of 10; the reference code (mlmed/gifsplanation) fall 0.15 and a fine start.
    We read App. C's initial prediction as p0 = f(D(E(x))), as the reference code does.
    """
    last = p0
    for lam in lambdas:
        cur = yield lam
        fell = p0 - fall > cur
        if last < cur or fell or lam <= -cap:
            return Bound(lam, fell)
        last = cur
    raise AssertionError("the λ sequence is infinite")  # pragma: no cover


Evaluate = Callable[[Sequence[int], Sequence[float]], torch.Tensor]


def run_searches(searches: Sequence[tuple[int, Search]], p0: Sequence[float], evaluate: Evaluate) -> list[Bound]:
    """Drive ``(row, search)`` pairs together; ``evaluate(rows, lams)`` returns the probabilities (one per
    pair, batched by the caller). Answers are cached per row, and λ = 0 is p0, so nothing is evaluated twice."""
    cache: list[dict[float, float]] = [{0.0: float(p)} for p in p0]
    results: list[Bound | None] = [None] * len(searches)
    pending: dict[int, float] = {}

    def advance(i: int, answer: float | None) -> None:
        row, search = searches[i]
        try:
            lam = next(search) if answer is None else search.send(answer)
            while lam in cache[row]:
                lam = search.send(cache[row][lam])
        except StopIteration as stop:
            results[i] = stop.value
            return
        pending[i] = lam

    for i in range(len(searches)):
        advance(i, None)
    while pending:
        wanted = list(dict.fromkeys((searches[i][0], lam) for i, lam in pending.items()))
        probs = evaluate([r for r, _ in wanted], [lam for _, lam in wanted]).tolist()
        for (row, lam), p in zip(wanted, probs, strict=True):
            cache[row][lam] = p
        asked, pending = pending, {}
        for i, lam in asked.items():
            advance(i, cache[searches[i][0]][lam])
    done = [r for r in results if r is not None]
    if len(done) != len(searches):  # pragma: no cover - every search ends at its cap
        raise RuntimeError("a λ search ended without a bound")
    return done
