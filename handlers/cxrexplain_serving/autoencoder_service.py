"""The autoencoder archive's service: ``reconstruct`` (default), ``encode`` and ``decode`` over the same wire.

The classifier archives carry their own copy of the autoencoder for latent shift (gradients cannot cross
TorchServe workers); this service lets pipelines use the autoencoder alone, for example to check
reconstruction quality on their own images before trusting latent-shift counterfactuals.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

import cxrexplain_imageio
from cxrexplain.bundle import AutoencoderBundle
from cxrexplain.errors import CxrExplainError, InvalidInput, InvalidOption
from cxrexplain.explainer import select_device
from cxrexplain.preprocess import to_model_input

from .caps import CostCaps
from .options import check_request_id, negotiate, parse_options, text, with_header_options
from .responses import RowResult, wire_map
from .rows import Emit, RowRequest
from .telemetry import Telemetry, new_request_id
from .wire import explain_pb2

log = logging.getLogger(__name__)

OPERATIONS = ("reconstruct", "encode", "decode")


class AutoencoderService:
    """Answer batches of encode / decode / reconstruct requests; one bad row fails only itself."""

    def __init__(self, bundle: AutoencoderBundle, *, model_name: str, model_version: str,
                 caps: CostCaps | None = None, device: str | torch.device | None = None,
                 telemetry: Telemetry | None = None):
        self.bundle = bundle
        self.device = select_device(device)
        self.bundle.module.to(self.device)
        self.model_name = model_name
        self.model_version = model_version
        self.caps = caps or CostCaps()
        self.telemetry = telemetry or Telemetry(model_name)
        self.methods: list[str] = list(OPERATIONS)

    def handle_batch(self, rows: Sequence[RowRequest], emit: Emit | None = None) -> list[RowResult]:
        return [self._answer(row) for row in rows]

    def _answer(self, row: RowRequest) -> RowResult:
        started = time.perf_counter()
        request_id = row.request_id or new_request_id()
        content_type = negotiate(None, row.accept, row.rest)
        operation = "reconstruct"
        try:
            request_id = check_request_id(request_id)
            options = dict(with_header_options(row.options, row.header_options))
            operation = text("operation", options.pop("operation", "reconstruct")).lower() or "reconstruct"
            if operation not in OPERATIONS:
                raise InvalidOption(f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}")
            opts = parse_options(options)
            content_type = negotiate(opts.accept, row.accept, row.rest)
            message = self._run(operation, row, opts.heatmap_format, opts.heatmap_dtype)
            status = 200
        except CxrExplainError as exc:
            status = exc.http_status
            message = explain_pb2.ExplainResponse(error=explain_pb2.Error(
                code=status, message=str(exc), request_id=request_id, type=exc.code))
        message.request_id = request_id
        message.model_name, message.model_version = self.model_name, self.model_version
        message.not_for_diagnostic_use = status == 200
        elapsed = (time.perf_counter() - started) * 1e3
        message.timings_ms["total"] = elapsed
        self.telemetry.log_request(request_id, operation, (operation,), status, {"total": elapsed},
                                   None if status == 200 else message.error.type)
        return RowResult(request_id=request_id, status=status, message=message, content_type=content_type,
                         kind=operation, methods=(operation,))

    @torch.inference_mode()
    def _run(self, operation: str, row: RowRequest, fmt: str, dtype: str) -> explain_pb2.ExplainResponse:
        spec = self.bundle.input_spec
        body = bytes(row.body or b"")
        message = explain_pb2.ExplainResponse()
        if operation == "decode":
            z = torch.from_numpy(_latent(body)).to(self.device)[None]
        else:
            decoded = cxrexplain_imageio.decode_image(body, row.content_type, max_pixels=self.caps.max_pixels,
                                           max_bytes=self.caps.max_request_bytes, target_size=spec.size)
            x, _ = to_model_input(decoded.pixels, spec, original_size=(decoded.height, decoded.width),
                                  reduction=decoded.reduction)
            z = self.bundle.encode(x.to(self.device))
            if operation == "encode":
                flat = z[0].float().cpu().numpy()
                message.latent.CopyFrom(explain_pb2.Map(height=1, width=flat.size, dtype="float32",
                                                        data=flat.astype("<f4").tobytes()))
                message.latent_shape.extend(flat.shape)
                return message
        image = spec.to_unit(self.bundle.decode(z)).clamp(0, 1)[0, 0].float().cpu().numpy()
        message.reconstruction.CopyFrom(wire_map(image, fmt, dtype, display=True))
        return message


def _latent(body: bytes) -> np.ndarray:
    """A latent code sent as .npy (C, h, w) float; never unpickles."""
    if not body:
        raise InvalidInput("empty request body: send the latent code as a .npy file (C, h, w)")
    try:
        z = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"decode needs a .npy latent code (C, h, w); could not read it ({exc})") from None
    if z.ndim != 3 or not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise InvalidInput(f"decode needs a finite float latent of shape (C, h, w), got {z.dtype} {z.shape}")
    return z.astype(np.float32)
