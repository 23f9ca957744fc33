"""Start warm: answer one synthetic request of every kind before the first real one.

A fresh worker pays first-use costs on its first request of each kind: oneDNN primitive creation per shape,
the 1x1 convolution form each shape tunes (``cxrexplain.propagation.pointwise.fastest``), ONNX Runtime's first
run, the lazy integrated-gradients quadrature, PIL's PNG decoder. :func:`warm_up` pays them in ``initialize``,
through the same service, options and batch size 1 a client's first request uses, so that request is served at
warm speed (issue #10: first request at most 2x a warm one; ``benchmarks/bench_warm_start.py`` measures it).

Warm-up requests are not traffic: the metrics sink is off while they run (their request-log lines say
``request_id=warm-up-...``). A warm-up request that fails is logged and the worker starts anyway: the same
request from a client would get the same error answer, and every other kind still serves.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from .autoencoder_service import AutoencoderService
from .rows import RowRequest
from .service import ExplainService

log = logging.getLogger(__name__)


def synthetic_png(size: int, seed: int = 0) -> bytes:
    """A smooth 8-bit gray PNG of ``size`` px (upsampled noise: every method has gradients to follow)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    coarse.resize((size, size), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def warm_up_requests(service: ExplainService | AutoencoderService) -> list[RowRequest]:
    """One request per kind the service answers: predictions and each method with its default options
    (classifier), or each operation (autoencoder); all on one synthetic image at the model's input size.

    Default options, not cheaper ones: the shapes a method runs depend on them (integrated gradients' chunks of
    path points, latent shift's frames), and the first real request most likely uses the defaults."""
    if isinstance(service, AutoencoderService):
        image = synthetic_png(service.bundle.input_spec.size)
        return [RowRequest(body=image, content_type="image/png", options={"operation": op},
                           request_id=f"warm-up-{op}") for op in ("reconstruct", "encode")]
    image = synthetic_png(service.bundle.input_spec.size)
    rows = [RowRequest(body=image, content_type="image/png", kind="predict", request_id="warm-up-predict")]
    for method in service.methods:
        rows.append(RowRequest(body=image, content_type="image/png", options={"methods": method}, kind="explain",
                               request_id=f"warm-up-{method}"))
    return rows


@contextmanager
def _muted(service: ExplainService | AutoencoderService) -> Iterator[None]:
    sink, service.telemetry.sink = service.telemetry.sink, None
    try:
        yield
    finally:
        service.telemetry.sink = sink


def warm_up(service: ExplainService | AutoencoderService) -> dict[str, Any]:
    """Answer :func:`warm_up_requests` one at a time (batch size 1, as a first request); returns
    ``{"seconds": total, "status": {kind: HTTP-like status}}`` and logs any kind that did not answer 200."""
    started = time.perf_counter()
    status: dict[str, int] = {}
    with _muted(service):
        for row in warm_up_requests(service):
            (result,) = service.handle_batch([row])
            status[row.request_id.removeprefix("warm-up-")] = result.status
            if result.status != 200:
                log.warning("warm-up %s answered %d (%s): a client asking the same gets the same answer",
                            row.request_id, result.status, result.error_type)
    return {"seconds": time.perf_counter() - started, "status": status}
