"""ONNX export of a classifier for the predictions fast path, checked against PyTorch before it is kept."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from cxrexplain.bundle import ClassifierBundle

log = logging.getLogger(__name__)

OPSET = 18
TOLERANCE = 1e-4  # max |logit difference| allowed between ONNX Runtime and eager PyTorch (float32)


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model within :data:`TOLERANCE`."""


def export_onnx(bundle: ClassifierBundle, path: Path, seed: int = 0, batches: tuple[int, ...] = (1, 3)) -> float:
    """Export with a dynamic batch axis, then compare on random inputs; returns the max abs difference."""
    spec = bundle.input_spec
    module = bundle.module.eval().cpu()
    example = torch.zeros(2, spec.channels, spec.size, spec.size)
    batch = torch.export.Dim("batch", min=1, max=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}}, opset_version=OPSET, dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in batches:
        x = spec.from_unit(torch.rand(n, 1, spec.size, spec.size, generator=generator))
        with torch.inference_mode():
            expected = module(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > TOLERANCE:
        raise ParityError(f"ONNX export of {bundle.architecture} differs from PyTorch by {worst:.2e} "
                          f"(tolerance {TOLERANCE:.0e}); the archive was not written")
    log.info("ONNX parity for %s: max |diff| = %.2e over batches %s", bundle.architecture, worst, batches)
    return worst
