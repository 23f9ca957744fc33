"""GPU readiness: every explanation method on CUDA against the CPU (same maps), and its cost there.

``PYTHONPATH=handlers python3 -m benchmarks.gpu_check --out build/gpu_check.md`` (``make gpu-check``)

Made for a lent GPU machine with its own Python and torch and nothing else of this project's environment (no
Java, no TorchServe, no package registry, minutes of time): it imports the engine (``cxrexplain``, whose needs
are torch and torchvision), torch and the standard library only, so the working tree and that machine's own
``python3`` are enough. It fails (exit 2) when CUDA is absent, rather than checking nothing.

1. **Same maps.** For each pairing (classifier + the autoencoder that backs ``latent_shift``): the small demo
   architectures the tests use (``densenet_small`` + ``resnet_ae_small``, 64 px) and the real sizes
   (DenseNet-121 and ResNet-50 at 224 px, paired with torchxrayvision's ResNetAE-101 layout). Models are
   randomly initialised from one seed (nothing can be downloaded there; ``--weights`` loads local files through
   the engine's own loader instead), built once on the CPU and copied, so both sides hold the same weights.
   Every registered method (:data:`cxrexplain.methods.base.REGISTRY`: a new method is checked without a change
   here) explains one batch of 2 rows, with targets 0 and 1, on the CPU and on the device, each with the
   engine's own per-device defaults (integrated gradients' and latent shift's chunk sizes differ by device,
   which is part of what is checked). Options are cut (:data:`CHECK_OPTIONS`) because the CPU reference pays
   for every pass. A method passes when, for each row, ``||device - cpu|| / ||cpu||`` (relative L2) is at most
   ``--tolerance`` (1e-3) for its map (and latent shift's frames and λ), with TF32 off on the device
   (``torch.backends.cuda.matmul.allow_tf32 = False``, ``torch.backends.cudnn.allow_tf32 = False``): with it
   on, convolutions round their inputs to 10 mantissa bits and differ from the CPU by ~1e-3 by design. Why
   1e-3: float32 kernels that sum in another order (cuDNN's algorithms, atomics in backward) differ by
   ~1e-7 per operation, which compounds over ~120 layers forward and backward to ~1e-5-1e-4; a real fault (a
   buffer left on the CPU, a device-dependent chunking or indexing bug, a wrong dtype) moves a map by 1e-1 or
   more. The deviation with the worker's default (cuDNN TF32 on) is reported beside it, not judged.
2. **Cost.** Each method at batch 1 and 8 (default options, as a request without options gets them), timed as
   a multiple of one plain forward pass (``torch.inference_mode``) of the same model and batch:
   interleaved rounds after a warm-up (:func:`benchmarks.common.interleaved`), each call ending in
   ``torch.cuda.synchronize()``, median of ``--repeats``; with the process's TF32 defaults, as a worker runs.
   Peak GPU memory of one call above what was allocated before it is reported beside.
3. What this machine cannot run is named as ``not run: <what> missing`` lines: the served path (TorchServe
   and Java) and ONNX predictions on CUDA (onnxruntime-gpu).

The core (:func:`check`, :func:`time_methods`) takes a device, so a test runs it on the CPU against the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import math
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import cxrexplain
from cxrexplain.methods import base as registry
from cxrexplain.semantic import DissectionTable, capture_output, unit_layer
from cxrexplain.spec import unit_spec

from . import common

SEED = 0
TOLERANCE = 1e-3
CHECK_BATCH = 2
CHECK_OPTIONS: dict[str, dict[str, Any]] = {
    # 8 steps x 2 rows = 16 path points: two chunks on the CPU (8), one on CUDA (32).
    "integrated_gradients": {"steps": 8},
    # A coarse walk (~17 decode+classify passes for 2 rows instead of ~60): the CPU side pays for ResNetAE-101.
    "latent_shift": {"frames": 4, "step": 1000.0},
}
CUDA_MISSING = (
    "gpu_check: CUDA is not available (torch {torch}, built for CUDA {cuda}; CUDA_VISIBLE_DEVICES={visible}). "
    "This check compares the engine on a GPU with the CPU and checked nothing. Run it on a machine with an NVIDIA "
    "GPU, its driver and a CUDA build of torch: `make gpu-check` (or `PYTHONPATH=handlers python3 -m "
    "benchmarks.gpu_check --out gpu_check.md`)."
)


@dataclass(frozen=True)
class Pairing:
    """A classifier and the autoencoder that backs its ``latent_shift``, at one input size."""

    arch: str
    size: int
    autoencoder: str
    weights: str | None = None
    autoencoder_weights: str | None = None

    @property
    def name(self) -> str:
        own = " (local weights)" if self.weights or self.autoencoder_weights else ""
        return f"{self.arch} + {self.autoencoder}, {self.size} px{own}"


SMALL = Pairing("densenet_small", 64, "resnet_ae_small")
REAL = (Pairing("densenet121", 224, "resnet_ae101"), Pairing("resnet50", 224, "resnet_ae101"))


def build(pairing: Pairing) -> tuple[cxrexplain.ClassifierBundle, cxrexplain.AutoencoderBundle]:
    """The pairing's bundles on the CPU: random weights from :data:`SEED`, or the local files it names."""
    torch.manual_seed(SEED)
    if pairing.arch == "densenet_small":  # as the tests' phantom model: 1 channel, unit space, 5 labels
        clf = cxrexplain.load_classifier("densenet_small", pairing.weights, labels=[str(i) for i in range(5)],
                                         input_spec=unit_spec(1, pairing.size))
    else:
        clf = cxrexplain.load_classifier(pairing.arch, pairing.weights)
    ae = cxrexplain.load_autoencoder(pairing.autoencoder, pairing.autoencoder_weights)
    if pairing.weights is None:
        calibrate(clf.module, images(clf.input_spec, 4, pairing.size))
    if pairing.autoencoder_weights is None:
        calibrate(ae.module, images(ae.input_spec, 4, ae.input_spec.size))
    clf.extra["dissection"] = unlabelled_table(clf)
    return clf, ae


def unlabelled_table(clf: cxrexplain.ClassifierBundle) -> DissectionTable:
    """A dissection table naming no concept, over the layer CAM reads: ``semantic`` needs one to run, and its
    maps and scores (what is checked here) do not depend on the labels (an archive's come from the exporter)."""
    layer = unit_layer(clf)
    with torch.no_grad(), capture_output(clf.module.eval(), layer) as seen:
        clf.module(images(clf.input_spec, 1, clf.input_spec.size))
    units = seen[-1].shape[1]
    return DissectionTable(layer=layer, concepts=("none",) * units, ious=(0.0,) * units, detectors=(False,) * units,
                           data="unlabelled: the GPU check's stand-in")


def calibrate(module: torch.nn.Module, x: torch.Tensor) -> None:
    """Set a random model's BatchNorm statistics from one batch, as training would have.

    Fresh statistics (mean 0, variance 1) let activations grow layer after layer: a random ResNet-50's logits
    reach ~50, its sigmoids saturate and latent shift's search stops at λ = 0, so the check would compare
    degenerate maps."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
    module.train()
    with torch.no_grad():
        module(x)
    module.eval()


def images(spec: cxrexplain.InputSpec, n: int, size: int) -> torch.Tensor:
    """``n`` smooth random gray images (structures ~8 px wide rather than pixel noise) in the model's space."""
    gen = torch.Generator().manual_seed(SEED + 1)
    coarse = torch.rand(n, 1, max(size // 8, 2), max(size // 8, 2), generator=gen)
    return spec.from_unit(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 for matmuls and cuDNN convolutions on (True), off (False), or as the process has it (None)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_l2(device_value: torch.Tensor, cpu_value: torch.Tensor) -> float:
    """The worst row's ``||device - cpu|| / ||cpu||`` (a zero reference row counts its absolute norm)."""
    a = device_value.detach().cpu().double().reshape(len(cpu_value), -1)
    b = cpu_value.detach().cpu().double().reshape(len(cpu_value), -1)
    diff = (a - b).norm(dim=1)
    scale = b.norm(dim=1)
    return float(torch.where(scale > 0, diff / scale.clamp_min(1e-300), diff).max())


def max_deviation(device_value: torch.Tensor, cpu_value: torch.Tensor) -> float:
    """The worst row's ``max |device - cpu| / max |cpu|``: the largest pixel error on the map's own scale."""
    a = device_value.detach().cpu().double().reshape(len(cpu_value), -1)
    b = cpu_value.detach().cpu().double().reshape(len(cpu_value), -1)
    return float(((a - b).abs().amax(dim=1) / b.abs().amax(dim=1).clamp_min(1e-300)).max())


def _compared(result: cxrexplain.ExplanationResult) -> dict[str, torch.Tensor]:
    """What must match across devices: the map, and for latent shift its frames and λ too."""
    out = {name: heat for name, heat in result.heatmaps.items()}
    if result.latent_shift is not None:
        out["frames"] = result.latent_shift.frames
        out["lambdas"] = result.latent_shift.lambdas
    return out


def _explain(explainer: cxrexplain.Explainer, x: torch.Tensor, method: str, targets: list[int],
             options: Mapping[str, Mapping[str, Any]] | None) -> cxrexplain.ExplanationResult:
    return explainer.explain(x, [method], targets=targets, options=options)


def _forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(x)


@dataclass
class CheckRow:
    pairing: str
    method: str
    batch: int
    rel_l2: float  # worst over rows and compared tensors, TF32 off
    max_dev: float  # of the map, TF32 off
    probability_dev: float  # max |Δp| of the classifier's probabilities
    tf32_rel_l2: float | None  # the same with the process's TF32 defaults (None: the device is not CUDA)
    passed: bool
    note: str = ""


def check(device: str | torch.device, pairings: Sequence[Pairing], batch: int = CHECK_BATCH,
          options: Mapping[str, Mapping[str, Any]] | None = None, tolerance: float = TOLERANCE,
          methods: Sequence[str] | None = None) -> list[CheckRow]:
    """Every method (default: every registered one) on ``device`` against the CPU; one row per (pairing,
    method). A method that raises gets a failing row with the error, and the others still run."""
    device = torch.device(device)
    options = CHECK_OPTIONS if options is None else options
    rows: list[CheckRow] = []
    for pairing in pairings:
        clf, ae = build(pairing)
        cpu = cxrexplain.Explainer(copy.deepcopy(clf), copy.deepcopy(ae), device="cpu")
        dev = cxrexplain.Explainer(clf, ae, device=device)
        x = images(clf.input_spec, batch, pairing.size)
        targets = [i % len(clf.labels) for i in range(batch)]
        for method in methods or sorted(registry.REGISTRY):
            run = functools.partial(_explain, x=x, method=method, targets=targets, options=options)
            try:
                ref = run(cpu)
                with tf32(False):
                    got = run(dev)
                tf32_l2 = None
                if device.type == "cuda":
                    with tf32(None):
                        default = _compared(run(dev))
                    tf32_l2 = max(relative_l2(v, _compared(ref)[k]) for k, v in default.items())
            except Exception as exc:  # report and go on: one broken method must not hide the others' figures
                traceback.print_exc(file=sys.stderr)
                rows.append(CheckRow(pairing.name, method, batch, math.nan, math.nan, math.nan, None, False,
                                     f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]))
                continue
            expected = _compared(ref)
            pairs = {k: (v, expected[k]) for k, v in _compared(got).items()}
            l2 = {k: relative_l2(a, b) for k, (a, b) in pairs.items()}
            worst = max(l2, key=lambda k: l2[k])
            passed = all(v <= tolerance for v in l2.values())
            note = "" if passed else f"worst: {worst}"
            rows.append(CheckRow(pairing.name, method, batch, l2[worst], max_deviation(*pairs[method]),
                                 float((got.probabilities - ref.probabilities).abs().max()), tf32_l2, passed,
                                 note))
    return rows


@dataclass
class TimeRow:
    pairing: str
    method: str  # "forward" is the unit
    batch: int
    ratio: float  # median(method) / median(forward)
    ms: float
    spread: float
    peak_mib: float | None  # extra device memory at the call's peak (CUDA only)


def _synchronized(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    if device.type != "cuda":
        return fn

    def call() -> Any:
        out = fn()
        torch.cuda.synchronize(device)  # the timer must see the kernels end, not their launch
        return out

    return call


def _peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def time_methods(device: str | torch.device, pairings: Sequence[Pairing], batches: Sequence[int] = (1, 8),
                 repeats: int = 5, options: Mapping[str, Mapping[str, Any]] | None = None,
                 methods: Sequence[str] | None = None) -> list[TimeRow]:
    """Each method as a multiple of one forward pass on ``device``, per (pairing, batch); "forward" rows first."""
    device = torch.device(device)
    rows: list[TimeRow] = []
    for pairing in pairings:
        clf, ae = build(pairing)
        explainer = cxrexplain.Explainer(clf, ae, device=device)
        module = explainer.bundle.module
        for batch in batches:
            x = images(clf.input_spec, batch, pairing.size).to(device)
            targets = [i % len(clf.labels) for i in range(batch)]

            fns: dict[str, Callable[[], Any]] = {"forward": functools.partial(_forward, module, x)}
            for method in methods or sorted(registry.REGISTRY):
                fns[method] = functools.partial(_explain, explainer, x, method, targets, options)
            fns = {name: _synchronized(fn, device) for name, fn in fns.items()}
            timings = common.interleaved(fns, repeats=repeats, warmup=1, slow_s=5.0)
            for name, fn in fns.items():
                rows.append(TimeRow(pairing.name, name, batch, timings.ratio(name, "forward"),
                                    timings.median(name) * 1e3, timings.spread(name), _peak_mib(fn, device)))
    return rows


def not_run_lines() -> list[str]:
    """What needs more than this machine has, each as ``not run: <what>: <which> missing`` (or why not)."""
    served = [name for name, there in (("Java 17 (`java`)", shutil.which("java")),
                                       ("TorchServe (`ts`)", importlib.util.find_spec("ts"))) if not there]
    lines = [f"not run: the served path on CUDA (TorchServe + Java): {', '.join(served)} missing" if served else
             "not run: the served path on CUDA: TorchServe and Java are here, but this engine check does not "
             "start a server; `make test` does"]
    if importlib.util.find_spec("onnxruntime") is None:
        lines.append("not run: ONNX predictions on CUDA: onnxruntime-gpu missing (no onnxruntime at all)")
    else:
        import onnxruntime  # only here: the check itself must not need it

        providers = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" in providers:
            lines.append("not run: ONNX predictions on CUDA: onnxruntime-gpu is here, but the ONNX path lives in "
                         "the serving layer, which this engine check does not import; `make test` covers it")
        else:
            lines.append(f"not run: ONNX predictions on CUDA: onnxruntime-gpu missing (onnxruntime "
                         f"{onnxruntime.__version__} has {', '.join(providers)} only)")
    return lines


def _cell(value: float | None, digits: str = ".2g") -> str:
    return "-" if value is None else ("error" if math.isnan(value) else format(value, digits))


def markdown(checks: Sequence[CheckRow], times: Sequence[TimeRow], not_run: Sequence[str], command: str,
             device: torch.device, tolerance: float) -> str:
    """The figures as Markdown: where, the check table, the cost table, the ``not run`` lines."""
    info = common.machine()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = (f"**{props.name}** ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}), CUDA "
                 f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        where = f"device {device}"
    out = [f"### GPU check: every method on {device.type.upper()} against the CPU\n", f"`{command}`\n",
           f"{info['date']}, commit {info['commit']}; {where}; torch {info['torch']}, Python {info['python']}; "
           f"CPU {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads.\n",
           "#### Same maps as on the CPU\n",
           f"Batch of {checks[0].batch if checks else CHECK_BATCH}, targets 0 and 1, options "
           f"{CHECK_OPTIONS}; random weights (seed {SEED}) unless local weights are named. Pass: every row's "
           f"relative L2 (map; latent shift also frames and λ) <= {tolerance:g} with TF32 off. Max deviation: "
           "max |device - cpu| / max |cpu| of the map. The TF32 column uses torch's defaults, as a worker runs "
           "(cuDNN TF32 on), and is not judged.\n"]
    out.append(common.table(
        ["model", "method", "rel. L2", "max deviation", "max Δp", "rel. L2, TF32 default", "pass"],
        [[c.pairing, c.method, _cell(c.rel_l2), _cell(c.max_dev), _cell(c.probability_dev),
          _cell(c.tf32_rel_l2), ("pass" if c.passed else "**FAIL**") + (f" ({c.note})" if c.note else "")]
         for c in checks]))
    if times:
        out += ["\n#### Cost as multiples of one forward pass\n",
                "Default options; median of interleaved repeats after one warm-up; the forward row gives its "
                "milliseconds for scale. Peak MiB: device memory one call allocated above what it found.\n",
                common.table(["model", "batch", "method", "x forward", "ms", "spread", "peak MiB"],
                             [[t.pairing, t.batch, "forward (the unit)" if t.method == "forward" else t.method,
                               f"{t.ratio:.2f}", f"{t.ms:.1f}", f"{t.spread:.0%}", _cell(t.peak_mib, ".0f")]
                              for t in times])]
    out += ["\n#### Not run here\n", *[f"- {line}" for line in not_run]]
    verdict = "all passed" if checks and all(c.passed for c in checks) else "**some FAILED**"
    out.append(f"\n{len(checks)} method checks: {verdict}.\n")
    return "\n".join(out)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", help="write the Markdown here too (it is always printed)")
    p.add_argument("--models", nargs="*", default=[r.arch for r in REAL],
                   help="classifier architectures at 224 px, each paired with resnet_ae101 (default: %(default)s)")
    p.add_argument("--weights", action="append", default=[], metavar="ARCH=PATH",
                   help="local weights for one of --models (loaded by cxrexplain.load_classifier); repeatable")
    p.add_argument("--autoencoder-weights", metavar="PATH", help="local weights for resnet_ae101")
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = p.parse_args(argv)
    weights = dict(item.split("=", 1) for item in args.weights)
    unknown = set(weights) - set(args.models)
    if unknown:
        p.error(f"--weights names {', '.join(sorted(unknown))}, not among --models {' '.join(args.models)}")
    args.pairings = [SMALL] + [replace(REAL[0], arch=arch, weights=weights.get(arch),
                                       autoencoder_weights=args.autoencoder_weights) for arch in args.models]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """0: every method matched the CPU; 1: some did not; 2: no CUDA, nothing checked."""
    args = parse(argv)
    if not torch.cuda.is_available():
        sys.stderr.write(CUDA_MISSING.format(torch=torch.__version__, cuda=torch.version.cuda,
                                             visible=os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")) + "\n")
        return 2
    device = torch.device("cuda")
    checks = check(device, args.pairings, tolerance=args.tolerance)
    times = time_methods(device, args.pairings[1:], args.batches, args.repeats)
    text = markdown(checks, times, not_run_lines(), "PYTHONPATH=handlers python3 -m benchmarks.gpu_check "
                    + " ".join(sys.argv[1:] if argv is None else argv), device, args.tolerance)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    sys.stdout.write(text)
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
