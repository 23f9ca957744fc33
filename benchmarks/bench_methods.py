"""Cost of each explanation method as a multiple of one forward pass, ours and the peer libraries alongside.

``python -m benchmarks.bench_methods [--quick] [--memory] [--threads 2] [--repeats 5] [--json out.json]``

For torchvision DenseNet-121, ResNet-50 and VGG-16 (random weights, 14 labels) at 224 px and batch 1 and 8, in
one process per model: the unit is one plain forward pass (eager, ``torch.inference_mode``); every method is
timed interleaved with it (round robin, rotated order, median of the repeats) and reported as
``median(method) / median(forward)``. Our methods run through :meth:`cxrexplain.Explainer.explain` (which
includes the shared forward pass with grad enabled, as a request would); the peers run their own forward too:

- pytorch-grad-cam ``GradCAM`` (package ``grad-cam``), hooks attached and released inside each call;
- zennit ``LRP alpha1-beta0``: ``AlphaBeta(1, 0)`` on convolutions and linear layers, zennit's base layer map
  (``Pass`` on activations and BatchNorm, ``Norm`` on sums and average pools), with ``ResNetCanonizer`` /
  ``VGGCanonizer``; DenseNet has no zennit canonizer, and ``SequentialMergeBatchNorm`` pairs DenseNet's
  BatchNorms with the wrong convolutions (leaf order is not data flow after a concatenation), so none: every
  BatchNorm gets the base map's ``Pass``;
- captum ``Saliency`` (abs), ``GuidedBackprop``, ``IntegratedGradients`` (``n_steps=32``, Gauss-Legendre,
  ``internal_batch_size=32``, as ours).

ReLU modules are switched to ``inplace=False`` before anything is timed (captum's and zennit's backward hooks
refuse in-place outputs); the forward unit uses the same modules.

Peak memory (``--memory``): each (model, batch, method) runs in a fresh interpreter: one call to set up
(tracing, plans, peers' first-call work), then the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``)
and the figure is the peak RSS (``VmHWM``) of a second call minus the RSS just before it, i.e. the extra
resident memory the call needed at its peak (a 5 ms psutil sampler is the fallback where the reset fails).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import cxrexplain
from cxrexplain.methods import base as registry

from . import common

for _module in ("lrp", "rap", "guided_backprop", "gradients", "gradcam", "cam"):
    try:  # register every method that exists, even before methods/__init__ imports it
        __import__(f"cxrexplain.methods.{_module}")
    except ImportError:
        pass

log = logging.getLogger("benchmarks.methods")

MODELS = ("densenet121", "resnet50", "vgg16")
LABELS = 14
TARGET = 1  # "Cardiomegaly" in CheXNet's label order; any fixed label does for timing
TARGETS = {"cam": 1.1, "lrp": 4.0, "rap": 6.0}  # upper bounds on method / forward from the issue
# Which of our methods a peer is compared with.
PAIRS = {"pgc_gradcam": "gradcam", "zennit_lrp": "lrp", "captum_saliency": "saliency",
         "captum_guided_backprop": "guided_backprop", "captum_integrated_gradients": "integrated_gradients"}


def build(arch: str) -> nn.Module:
    """A random-weight torchvision classifier with 14 outputs, eval mode, ReLUs not in place."""
    torch.manual_seed(0)
    model = cxrexplain.build_classifier(arch, LABELS)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model.eval()


def gradcam_layer(arch: str, model: nn.Module) -> nn.Module:
    """The layer pytorch-grad-cam hooks: the same feature map our Grad-CAM reads."""
    if arch.startswith("densenet"):
        return model.features  # type: ignore[return-value]  # norm5 output; ours reads relu(norm5)
    if arch.startswith("resnet"):
        return model.layer4[-1]  # type: ignore[index,return-value]
    features = model.features  # VGG: the last conv's ReLU
    relus = [m for m in features if isinstance(m, nn.ReLU)]  # type: ignore[union-attr]
    return relus[-1]


def zennit_composite(arch: str) -> Any:
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution

    if arch.startswith("resnet"):
        canonizers = [ResNetCanonizer()]
    elif arch.startswith("vgg"):
        canonizers = [VGGCanonizer()]
    else:  # DenseNet: no canonizer fits (see the module docstring)
        canonizers = []
    layer_map = layer_map_base() + [(Convolution, AlphaBeta(alpha=1.0, beta=0.0)),
                                    (nn.Linear, AlphaBeta(alpha=1.0, beta=0.0))]
    return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)


def callables(arch: str, model: nn.Module, x: torch.Tensor, ig_steps: int,
              only: set[str] | None = None, with_ig: bool = True) -> dict[str, Callable[[], Any]]:
    """Every timed thing for one (model, batch): ``forward`` first, then ours (``ours:*``), then the peers."""
    n = x.shape[0]
    targets = [TARGET] * n
    labels = [str(i) for i in range(LABELS)]
    bundle = cxrexplain.ClassifierBundle(module=model, labels=labels, architecture=arch)
    explainer = cxrexplain.Explainer(bundle, device="cpu")
    has_cam = not arch.startswith("vgg")
    ours = [m for m in ("cam", "gradcam", "lrp", "rap", "saliency", "guided_backprop", "integrated_gradients")
            if m in registry.REGISTRY and (m != "cam" or has_cam)]
    options = {"integrated_gradients": {"steps": ig_steps, "internal_batch_size": 32}}

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    fns: dict[str, Callable[[], Any]] = {"forward": forward}
    def ours_call(method: str, extra: dict[str, Any] | None = None) -> Callable[[], Any]:
        opts = {**options, method: extra} if extra else options
        return lambda: explainer.explain(x, methods=[method], targets=targets, options=opts)

    for m in ours:
        fns[f"ours:{m}"] = ours_call(m)
        if m in ("lrp", "rap"):  # the zennit-equivalent BatchNorm rule (merged into the conv) beside the default
            fns[f"ours:{m}:zennit"] = ours_call(m, {"batchnorm": "zennit"})

    target_tensor = torch.full((n,), TARGET, dtype=torch.long)

    def pgc_gradcam() -> Any:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with GradCAM(model=model, target_layers=[gradcam_layer(arch, model)]) as cam:
            # Our Explainer froze the parameters, so the graph to the hooked layer must start at the input.
            return cam(input_tensor=x.detach().requires_grad_(True),
                       targets=[ClassifierOutputTarget(TARGET) for _ in range(n)])

    composite = zennit_composite(arch)

    def zennit_lrp() -> Any:
        from zennit.attribution import Gradient

        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(x, torch.eye(LABELS)[target_tensor])
        return relevance

    def captum_saliency() -> Any:
        from captum.attr import Saliency

        return Saliency(model).attribute(x, target=target_tensor, abs=True)

    def captum_guided_backprop() -> Any:
        from captum.attr import GuidedBackprop

        return GuidedBackprop(model).attribute(x, target=target_tensor)

    def captum_integrated_gradients() -> Any:
        from captum.attr import IntegratedGradients

        return IntegratedGradients(model).attribute(x, target=target_tensor, n_steps=ig_steps,
                                                    method="gausslegendre", internal_batch_size=32)

    fns.update(pgc_gradcam=pgc_gradcam, zennit_lrp=zennit_lrp, captum_saliency=captum_saliency,
               captum_guided_backprop=captum_guided_backprop,
               captum_integrated_gradients=captum_integrated_gradients)
    if not with_ig:
        fns = {k: v for k, v in fns.items() if "integrated_gradients" not in k}
    if only is not None:
        fns = {k: v for k, v in fns.items() if k in only or k == "forward"}
    return fns


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One method in this fresh process: a first call (lazy set-up: tracing, plans), then the peak-RSS mark is
    reset and the second call's peak over the RSS just before it is the figure."""
    common.set_threads(args.threads)
    model = build(args.child_model)
    x = torch.randn(args.child_batch, 3, args.size, args.size)
    fns = callables(args.child_model, model, x, args.ig_steps, only={args.child_method})
    fn = fns[args.child_method]
    fn()
    before = common.current_rss_mb()
    exact = common.reset_peak_rss()
    with common.RssSampler(os.getpid(), interval_s=0.005) as sampler:  # the fallback when the reset fails
        fn()
    peak = common.peak_rss_mb() if exact else sampler.peak
    return {"before_mb": before, "peak_mb": peak, "extra_mb": max(0.0, peak - before), "exact": exact}


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.set_threads(args.threads)
    results: dict[str, Any] = {"machine": common.machine(), "args": vars(args), "models": {}}
    for arch in args.models:
        model = build(arch)
        per_batch: dict[str, Any] = {}
        for batch in args.batches:
            torch.manual_seed(1)
            x = torch.randn(batch, 3, args.size, args.size)
            only = set(args.methods) if args.methods else None
            fns = callables(arch, model, x, args.ig_steps, only=only, with_ig=batch in args.ig_batches)
            entry: dict[str, Any] = {}
            if not args.memory_only:
                log.info("%s batch %d: timing %s", arch, batch, ", ".join(fns))
                timings = common.interleaved(fns, repeats=args.repeats, warmup=1, slow_s=args.slow_s)
                entry.update({
                    "forward_ms": timings.median("forward") * 1e3,
                    "ratio": {k: timings.ratio(k, "forward") for k in fns},
                    "spread": {k: timings.spread(k) for k in fns},
                    "samples": {k: len(v) for k, v in timings.seconds.items()},
                    "seconds": timings.seconds,
                    "loads": timings.loads,
                })
                log.info("%s batch %d: %s", arch, batch, ", ".join(
                    f"{k} {v:.2f}x ({entry['spread'][k]:.0%})" for k, v in entry["ratio"].items()))
            if args.memory or args.memory_only:
                entry["extra_mb"] = {}
                for name in fns:
                    out = common.run_child("benchmarks.bench_methods", [
                        "--child-model", arch, "--child-batch", str(batch), "--child-method", name,
                        "--size", str(args.size), "--threads", str(args.threads),
                        "--ig-steps", str(args.ig_steps)])
                    entry["extra_mb"][name] = out["extra_mb"]
                    log.info("%s b%d %s: +%.0f MB", arch, batch, name, out["extra_mb"])
            per_batch[str(batch)] = entry
        results["models"][arch] = per_batch
        common.save_json(args.json, results)  # after every model: a long run killed later keeps what it did
    return results


def label(name: str) -> tuple[str, str]:
    """(method, implementation) for a timed name."""
    if name == "forward":
        return "forward (the unit)", "torch, inference_mode"
    if name.startswith("ours:"):
        return name[5:], "cxrexplain"
    library, _, method = name.partition("_")
    return method, {"pgc": "pytorch-grad-cam", "zennit": "zennit", "captum": "captum"}.get(library, library)


def markdown(results: dict[str, Any], command: str) -> str:
    info = results["machine"]
    out = [common.header("Method cost as a multiple of one forward pass", command, info)]
    for arch, per_batch in results["models"].items():
        batches = list(per_batch)
        timed = [b for b in batches if "ratio" in per_batch[b]]
        measured = [b for b in batches if "extra_mb" in per_batch[b]]
        names = list(dict.fromkeys(k for b in batches for k in {**per_batch[b].get("ratio", {}),
                                                                **per_batch[b].get("extra_mb", {})}))
        cols = ["method", "implementation"]
        cols += [c for b in timed for c in (f"x forward (batch {b})", f"spread b{b}")]
        cols += [f"extra peak MB (b{b})" for b in measured]
        cols += ["target"] if timed else []
        rows = []
        for name in names:
            method, impl = label(name)
            row: list[Any] = [method, impl]
            for b in timed:
                ratio = per_batch[b]["ratio"].get(name)
                row += ["-", "-"] if ratio is None else [ratio, f"{per_batch[b]['spread'][name]:.0%}"]
            row += [round(per_batch[b]["extra_mb"][name]) if name in per_batch[b]["extra_mb"] else "-"
                    for b in measured]
            if timed:
                bound = TARGETS.get(method) if impl == "cxrexplain" else None
                ratios = [per_batch[b]["ratio"][name] for b in timed if name in per_batch[b]["ratio"]]
                met = bound is not None and all(r <= bound for r in ratios)
                row.append("" if bound is None else f"<= {bound}x: {'met' if met else 'NOT met'}")
            rows.append(row)
        forward = ", ".join(f"batch {b}: {per_batch[b]['forward_ms']:.0f} ms" for b in timed)
        out.append(f"\n**{arch}**" + (f" (forward unit, for scale only: {forward})" if timed else "") + "\n")
        out.append(common.table(cols, rows))
        pair_rows = []
        for peer, mine in PAIRS.items():
            cells = []
            for b in timed:
                ratios = per_batch[b]["ratio"]
                ok = f"ours:{mine}" in ratios and peer in ratios
                cells.append(ratios[f"ours:{mine}"] / ratios[peer] if ok else "-")
            if any(c != "-" for c in cells):
                pair_rows.append([mine, label(peer)[1], *cells])
        if pair_rows:
            out.append("\nours / peer (time ratio, < 1 means ours is faster):\n")
            out.append(common.table(["method", "peer"] + [f"batch {b}" for b in timed], pair_rows))
    return "\n".join(out) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_methods", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: ResNet-50 at 32 px, batch 1, 1 repeat, IG 4 steps")
    p.add_argument("--models", nargs="*", help=f"default: {' '.join(MODELS)} (--quick: resnet50)")
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--methods", nargs="*", help="only these timed names (ours:lrp, zennit_lrp, ...)")
    p.add_argument("--ig-batches", nargs="*", type=int, default=[1],
                   help="batches at which integrated gradients (ours and captum's) run: it costs ~3 x steps "
                   "forwards by construction, and 32 steps x 8 rows of VGG-16 take minutes per call")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="wait (up to 30 min) for the 1-min load average to fall below this before starting")
    p.add_argument("--slow-s", type=float, default=20.0, help="callables slower than this get 3 repeats only")
    p.add_argument("--memory", action="store_true", help="peak RSS per method in a fresh process each")
    p.add_argument("--memory-only", action="store_true", help="only the memory children (load-insensitive)")
    p.add_argument("--json", help="also write every figure here")
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.repeats, args.ig_steps, args.ig_batches = 32, [1], 1, 4, [1]
        args.models = args.models or ["resnet50"]
    args.models = args.models or list(MODELS)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the raw figures (the Markdown goes to stdout)."""
    args = parse(argv)
    if args.child_method:
        print(json.dumps(child(args)))
        return {}
    warnings.filterwarnings("ignore", module="captum")  # "did not already require gradients", once per call
    return common.report(args, run, markdown)


if __name__ == "__main__":
    main()
