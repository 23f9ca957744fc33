"""Predictions-only backends: the fast path for findings (ONNX Runtime), beside the eager model."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class Predictor(Protocol):
    """A predictions-only backend: (N, C, S, S) model input -> (N, L) probabilities on the CPU."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class OnnxPredictor:
    """ONNX Runtime session over the archive's ``model.onnx`` (input ``x``, output logits).

    The CUDA provider is listed first only when torch sees a GPU: ``onnxruntime-gpu`` lists CUDA on machines
    without one and then fails to load it. ONNX Runtime's CPU threads do not spin-wait after a run: by default
    they do, and they then compete with the torch explanation that follows in the same process (measured on
    this 2-core CPU: a DenseNet-121 CAM explain after an ONNX prediction took 101 ms spinning, 43 ms not).
    """

    def __init__(self, path: str | Path, output: str = "logits"):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output = output
        self.providers = self.session.get_providers()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        values = torch.from_numpy(np.asarray(out, dtype=np.float32))
        return values if self.output == "probabilities" else torch.sigmoid(values)
