"""Cost policy: the per-request caps, what a request costs, and how large its response can get.

Every check here runs from the request's options alone (:func:`price`), before any method object is built or
pixel decoded: a request over a cap is answered 422 with what to ask for instead. ``targets=positive`` is priced
at the most targets it can resolve to and still pass the target cap (:func:`price`); after the prediction pass
its exact count meets that cap (the one late check).
The response-size cap matters beyond cost: a reply above TorchServe's ``max_response_size`` makes the frontend
drop the worker's channel, and with it the whole batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cxrexplain import options_schema as schema
from cxrexplain.errors import CostCapExceeded
from cxrexplain.methods import base as registry

from .options import JSON
from .rows import RowState

DTYPE_BYTES = {"float16": 2, "float32": 4}
_JSON_OVERHEAD = 4 / 3  # base64 of every bytes field in the proto JSON mapping


@dataclass(frozen=True)
class CostCaps:
    """Per-request limits, checked before any explanation runs.

    ``max_work_units`` caps targets x sum over methods of the method's cost (one unit = one forward+backward:
    ``frames``-dependent for latent shift, ``steps`` for integrated gradients and semantic).
    ``max_response_bytes`` caps the encoded response (maps x resolution x dtype, frames, units' maps, GIF,
    base64 for JSON) and must stay below TorchServe's ``max_response_size``: a reply above it makes the frontend
    drop the worker's channel and the whole batch.
    """

    max_targets: int = 8
    max_frames: int = 30
    max_steps: int = 128
    max_work_units: int = 512
    max_response_bytes: int = 60 * 2**20
    max_pixels: int = 40_000_000
    max_request_bytes: int = 64 * 2**20
    max_engine_batch: int = 32

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> CostCaps:
        """Caps from a mapping (``serve.json``'s ``caps``), then ``CXREXPLAIN_<CAP>`` environment overrides."""
        names = {f.name for f in dataclasses.fields(cls)}
        merged: dict[str, Any] = {}
        for key, value in (values or {}).items():
            if key not in names:
                raise ValueError(f"unknown cost cap {key!r}; known: {', '.join(sorted(names))}")
            merged[key] = value
        for name in names:
            env = (environ or {}).get(f"CXREXPLAIN_{name.upper()}")
            if env:
                merged[name] = env
        caps: dict[str, int] = {}
        for key, value in merged.items():
            try:
                caps[key] = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"cost cap {key} must be an integer, got {value!r}") from None
            if caps[key] < 1:
                raise ValueError(f"cost cap {key} must be positive, got {caps[key]}")
        return cls(**caps)


def option(row: RowState, method: str, name: str) -> Any:
    """A method option of the row as parsed (typed, range-checked), else its declared default."""
    given = row.method_options.get(method, {})
    if name in given:
        return given[name]
    spec = schema.method_option(f"{method}.{name}")
    return None if spec.default is None else spec.parse(spec.default)


def frames(row: RowState) -> int:
    """K, the latent-shift frames the row asks for (its option, else the schema's default)."""
    return int(option(row, "latent_shift", "frames"))


def steps(row: RowState, method: str = "integrated_gradients") -> int | None:
    """The path points ``method`` (``integrated_gradients`` or ``semantic``) of the row asks for, ``None``
    without that method."""
    if method not in row.methods:
        return None
    return int(option(row, method, "steps"))


def target_bound(row: RowState, labels: int) -> int:
    """The most targets the row can resolve to, from its options alone: its named targets, ``top_k`` and for
    ``positive`` every label (its worst case), at most the model's ``labels``; 1 (the top finding) when it
    names none."""
    opts = row.options
    if not opts.has_targets:
        return 1
    named = len(opts.targets) + (labels if opts.positive else 0) + (opts.top_k or 0)
    return min(labels, named)


def price(row: RowState, caps: CostCaps, size: int, labels: int) -> None:
    """Every cap of an explain row from its options alone, before any method is built or pixel decoded:
    frames and steps, then targets, work units and response size at the row's worst-case target count
    (:func:`target_bound`).

    ``positive`` resolves to an unknown count until the forward pass, where that exact count meets the target
    cap (the one check made after computing). The most targets it can resolve to and still pass that check is
    ``max_targets``, so its work and response are priced at ``min(every label, max_targets)``: a model with more
    labels than the cap (NIH's 14, torchxrayvision's 18) still serves ``positive`` when few findings are.
    """
    check_method_caps(row, caps)
    bound = target_bound(row, labels)
    if row.options.positive:
        bound = min(bound, caps.max_targets)
    check_request_caps(row, caps, size, labels, targets=bound)


def check_method_caps(row: RowState, caps: CostCaps) -> None:
    """The caps one method's options can break (frames, steps)."""
    k = frames(row)
    if "latent_shift" in row.methods and k > caps.max_frames:
        raise CostCapExceeded(f"frames={k} is above the cap of {caps.max_frames}: ask for at most "
                              f"{caps.max_frames} frames")
    for method in ("integrated_gradients", "semantic"):
        n = steps(row, method)
        if n is not None and n > caps.max_steps:
            raise CostCapExceeded(f"{method} steps={n} is above the cap of {caps.max_steps}: "
                                  f"ask for at most {caps.max_steps} steps")


def check_request_caps(row: RowState, caps: CostCaps, size: int, labels: int, targets: int | None = None) -> None:
    """Targets, work units and response size of an explain row.

    ``size`` is the model's input size (maps are ``size`` x ``size``), ``labels`` its number of labels,
    ``targets`` the target count to price (default: the row's resolved targets; :func:`price` gives the worst
    case before they are known).
    """
    n = len(row.targets) if targets is None else targets
    if n > caps.max_targets:
        raise CostCapExceeded(f"{n} targets is above the cap of {caps.max_targets} targets per request: "
                              "name fewer targets or lower top_k")
    costs = {m: method_cost(row, m) for m in row.methods}
    per_target = sum(costs.values())
    work = n * per_target
    if work > caps.max_work_units:
        each = " + ".join(f"{m} {c}" for m, c in costs.items())
        raise CostCapExceeded(
            f"the request costs {work} work units (targets {n} x methods {per_target}: {each}), above the cap of "
            f"{caps.max_work_units}: ask for fewer targets, methods, frames or integration steps")
    estimate = estimate_response_bytes(row, size, labels, targets=n)
    if estimate > caps.max_response_bytes:
        raise CostCapExceeded(
            f"the response would be about {estimate / 2**20:.1f} MiB, above the cap of "
            f"{caps.max_response_bytes / 2**20:.1f} MiB: ask for fewer targets or frames, heatmap_dtype=float16 "
            "or heatmap_format=png, no gif, or Accept: application/x-protobuf (JSON adds a third)")


def method_cost(row: RowState, name: str) -> int:
    """Work units of one method for one target, from the row's options alone: what the method declares
    (:meth:`~cxrexplain.methods.base.Method.cost_of`: latent shift counts its search and frames, integrated
    gradients its steps), at least 1."""
    return max(int(registry.REGISTRY[name].cost_of(row.method_options.get(name, {}))), 1)


def estimate_response_bytes(row: RowState, size: int, labels: int, targets: int | None = None) -> int:
    """Upper estimate of the encoded response of an explain row, from its options alone, for ``targets``
    targets (default: the row's resolved targets)."""
    opts = row.options
    pixels = size**2
    if opts.heatmap_format == "png":
        per_map = 4 * pixels + 1024  # worst case: RGBA that does not compress
    else:
        per_map = DTYPE_BYTES[opts.heatmap_dtype] * pixels + 64
    per_target = len(row.methods) * (per_map + 128)
    if "latent_shift" in row.methods:
        k = frames(row)
        per_target += k * (per_map + 64)
        if opts.gif:
            per_target += int(k * pixels * 1.5) + 2048  # LZW can expand noise beyond 8 bits/pixel
    if "semantic" in row.methods:  # each unit's map, and its number, concept and IoU
        per_target += int(option(row, "semantic", "top")) * (per_map + 192)
    total = 2048 + 96 * labels + (len(row.targets) if targets is None else targets) * per_target
    if row.content_type == JSON:
        total = int(math.ceil(total * _JSON_OVERHEAD)) + 1024
    return total
