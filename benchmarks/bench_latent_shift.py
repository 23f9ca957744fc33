"""Latent Shift: decode+classify passes and time of our λ search against the published walks; decoder batch.

``python -m benchmarks.bench_latent_shift [--quick] [--threads 2] [--repeats 3] [--json out.json]``

Models: torchvision DenseNet-121 (random weights, 14 labels, 3-channel ImageNet input at 224 px) and
ResNetAE-101 (random weights, torchxrayvision's 1-channel [-1024, 1024] space at 224 px); images cross between
the two spaces through the bundle's adapters, as in production. One image, target label 1.

(a) ``direction="sigmoid"`` (the paper's): the reference code's walk (``search="reference_walk"``), [Cohen2021] App. C
    (``"app_c"``) and ours (``"fast"``; optionally our step-by-step walk ``"exhaustive"``: our stop rule, both
    sides, the same bounds as ``"fast"`` by construction), all with the cap |λ| <= 1000 and step 10:
    decode+classify passes (``result.latent_shift.passes`` / ``search_passes``) and time of the whole
    ``explain`` call, interleaved. The published walks search the lower side only, with their own stop rules.
(b) the default ``direction="logit"`` with ``search="fast"`` (default batching) against the paper's procedure
    as published (App. C walk, sigmoid direction, un-batched: ``batch_size=1``): end-to-end time ratio.
(c) decoder batch sweep: per-image time of ``decode`` and of ``decode`` + classify (no grad) at batch
    1, 2, 4, 8, 16, interleaved.

A random-weight classifier barely reacts to a shift along the sigmoid direction, so the published walks run
to their cap: that is the case where the search cost matters (and the one a poorly calibrated model hits).

``--weights CLF.pt --autoencoder AE.pt`` runs (a) and (b) on trained models instead (for example the demo
models of ``make serve`` in ``.cache/demo-weights/``): the image is the first held-out phantom (seed 7000)
with a finding the classifier gives >= 0.9, and the target is that finding. A confident classifier is the
other case where the sigmoid direction stalls (its gradient vanishes as the probability nears 1).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import cxrexplain
from cxrexplain.explainer import ExplanationResult
from cxrexplain.spec import unit_spec
from cxrexplain_lab.phantom import PhantomDataset

from . import common

log = logging.getLogger("benchmarks.latent_shift")
TARGET = 1
SWEEP = (1, 2, 4, 8, 16)


def models(quick: bool) -> tuple[cxrexplain.ClassifierBundle, cxrexplain.AutoencoderBundle, int]:
    """(classifier, autoencoder, size): the 224 px pair, or the small demo layouts for ``--quick``."""
    torch.manual_seed(0)
    if quick:
        size = 64
        small = cxrexplain.build_classifier("densenet_small", 14, in_channels=1)
        clf = cxrexplain.ClassifierBundle(module=small, labels=[str(i) for i in range(14)],
                                          input_spec=unit_spec(1, size))
        ae = cxrexplain.load_autoencoder("resnet_ae_small")
    else:
        size = 224
        clf = cxrexplain.ClassifierBundle(module=cxrexplain.build_classifier("densenet121", 14),
                                          labels=[str(i) for i in range(14)], architecture="densenet121")
        ae = cxrexplain.load_autoencoder("resnet_ae101")
    return clf, ae, size


def trained_case(weights: Path, autoencoder: Path) -> tuple[cxrexplain.Explainer, torch.Tensor, int, str]:
    """Trained models, the first held-out phantom with a finding the classifier gives >= 0.9, that finding."""
    clf = cxrexplain.load_classifier(None, weights=weights)
    explainer = cxrexplain.Explainer(clf, autoencoder=cxrexplain.load_autoencoder(None, weights=autoencoder),
                                     device="cpu")
    phantoms = PhantomDataset(200, size=clf.input_spec.size, seed=7000)
    for i in range(len(phantoms)):
        image, labels = phantoms[i]
        x = clf.input_spec.from_unit(image[None])
        probabilities = explainer.predict(x)[0]
        for index in labels.nonzero()[:, 0].tolist():
            if probabilities[index] >= 0.9:
                finding = f"{clf.labels[index]} (p = {probabilities[index]:.3f}, held-out phantom {i})"
                return explainer, x, index, finding
    raise RuntimeError(f"no held-out phantom with a finding at p >= 0.9 for {weights}")


def shift_calls(explainer: cxrexplain.Explainer, x: torch.Tensor, target: int,
                variants: dict[str, dict[str, Any]],
                store: dict[str, ExplanationResult]) -> dict[str, Callable[[], Any]]:
    def call(name: str) -> None:
        store[name] = explainer.explain(x, methods=["latent_shift"], targets=[target] * x.shape[0],
                                        options={"latent_shift": variants[name]})

    def bind(name: str) -> Callable[[], None]:
        return lambda: call(name)

    return {name: bind(name) for name in variants}


def summarize(result: ExplanationResult) -> dict[str, Any]:
    shift = result.latent_shift
    assert shift is not None
    return {"passes": shift.passes, "search_passes": shift.search_passes,
            "lambda_range": [float(shift.lambdas[0, 0]), float(shift.lambdas[0, -1])]}


def samples(fns: dict[str, Callable[[], Any]], repeats: int) -> common.Timings:
    """``repeats`` timed calls each, the first one included (these calls take minutes: no separate warm-up;
    the first call of a search does the same work as the later ones), interleaved."""
    return common.interleaved(fns, repeats=max(repeats - 1, 0), warmup=1, slow_s=0.0, slow_repeats=repeats)


def part_a(explainer: cxrexplain.Explainer, x: torch.Tensor, target: int, repeats: int, cap: float,
           searches: tuple[str, ...]) -> dict[str, Any]:
    variants = {name: {"direction": "sigmoid", "search": name, "max_lambda": cap, "step": 10.0}
                for name in searches}
    store: dict[str, ExplanationResult] = {}
    timings = samples(shift_calls(explainer, x, target, variants, store), repeats)
    out = {name: {**summarize(store[name]), "seconds": timings.seconds[name],
                  "time_over_fast": timings.ratio(name, "fast"), "spread": timings.spread(name)}
           for name in variants}
    for name in variants:
        out[name]["passes_over_fast"] = out[name]["passes"] / out["fast"]["passes"]
        fast_search = max(1, out["fast"]["search_passes"])
        out[name]["search_passes_over_fast"] = out[name]["search_passes"] / fast_search
    return out


def part_b(explainer: cxrexplain.Explainer, x: torch.Tensor, target: int, repeats: int) -> dict[str, Any]:
    variants = {"ours (logit, fast, batched)": {},
                "paper (sigmoid, App. C walk, batch 1)": {"direction": "sigmoid", "search": "app_c",
                                                          "batch_size": 1}}
    store: dict[str, ExplanationResult] = {}
    timings = samples(shift_calls(explainer, x, target, variants, store), repeats)
    ours = "ours (logit, fast, batched)"
    return {name: {**summarize(store[name]), "seconds": timings.seconds[name],
                   "time_over_ours": timings.ratio(name, ours), "spread": timings.spread(name)}
            for name in variants}


def part_c(clf: cxrexplain.ClassifierBundle, ae: cxrexplain.AutoencoderBundle, size: int,
           repeats: int) -> dict[int, Any]:
    module: Any = ae.module
    with torch.no_grad():
        z1 = module.encode(torch.randn(1, 1, size, size))
    fns: dict[str, Callable[[], Any]] = {}
    for b in SWEEP:
        z = z1.expand(b, *z1.shape[1:]).contiguous()

        def decode(z: torch.Tensor = z) -> None:
            with torch.no_grad():
                module.decode(z)

        def decode_classify(z: torch.Tensor = z) -> None:
            with torch.no_grad():
                d = module.decode(z)
                g = ae.input_spec.to_unit(d)
                if tuple(g.shape[-2:]) != (size, size):
                    g = torch.nn.functional.interpolate(g, size=(size, size), mode="bilinear")
                clf.module(clf.input_spec.from_unit(g))

        fns[f"decode b{b}"] = decode
        fns[f"decode+classify b{b}"] = decode_classify
    timings = common.interleaved(fns, repeats=repeats, warmup=1)
    return {b: {"decode_ms_per_image": timings.median(f"decode b{b}") * 1e3 / b,
                "decode_classify_ms_per_image": timings.median(f"decode+classify b{b}") * 1e3 / b,
                "spread": max(timings.spread(f"decode b{b}"), timings.spread(f"decode+classify b{b}"))}
            for b in SWEEP}


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.set_threads(args.threads)
    if args.weights:
        explainer, x, target, case = trained_case(args.weights, args.autoencoder)
        size = explainer.bundle.input_spec.size
    else:
        clf, ae, size = models(args.quick)
        explainer = cxrexplain.Explainer(clf, autoencoder=ae, device="cpu")
        torch.manual_seed(1)
        x = clf.input_spec.from_unit(torch.rand(1, 1, size, size))  # unit-space noise in the classifier's space
        target, case = TARGET, f"random weights, noise image, label {TARGET}"
    results: dict[str, Any] = {"machine": common.machine(), "args": {k: str(v) for k, v in vars(args).items()},
                               "size": size, "case": case, "max_lambda": args.max_lambda}
    log.info("(a) sigmoid direction: reference walk, App. C, fast (%s)", case)
    results["a"] = part_a(explainer, x, target, args.repeats, args.max_lambda, tuple(args.searches))
    log.info("(b) logit/fast vs the paper's App. C, un-batched")
    results["b"] = part_b(explainer, x, target, args.repeats)
    if not args.weights:
        log.info("(c) decoder batch sweep")
        results["c"] = part_c(clf, ae, size, args.repeats + 2)
    return results


def markdown(results: dict[str, Any], command: str) -> str:
    out = [common.header(f"Latent Shift search and decoder batching ({results['size']} px)", command,
                         results["machine"])]
    out.append(f"\nCase: {results['case']}.\n")
    a = results["a"]
    out.append("\n(a) direction = sigmoid, cap |λ| <= "
               f"{results['max_lambda']:g}, one image; passes = decode+classify evaluations "
               "(direction + search + the K = 10 frames the search did not already decode), time = the whole "
               "explain call:\n")
    out.append(common.table(
        ["search", "λ range", "passes", "search passes", "passes / fast", "search passes / fast",
         "time / fast", "spread"],
        [[name, f"[{r['lambda_range'][0]:g}, {r['lambda_range'][1]:g}]", r["passes"], r["search_passes"],
          r["passes_over_fast"], r["search_passes_over_fast"], r["time_over_fast"], f"{r['spread']:.0%}"]
         for name, r in a.items()]))
    b = results["b"]
    out.append("\n(b) default direction (logit) with our fast search vs the paper's procedure as "
               "published:\n")
    out.append(common.table(["procedure", "λ range", "passes", "time / ours", "spread"],
                            [[name, f"[{r['lambda_range'][0]:g}, {r['lambda_range'][1]:g}]", r["passes"],
                              r["time_over_ours"], f"{r['spread']:.0%}"] for name, r in b.items()]))
    c = results.get("c")
    if c is None:
        return "\n".join(out) + "\n"
    best = min(c, key=lambda k: c[k]["decode_ms_per_image"])
    best_dc = min(c, key=lambda k: c[k]["decode_classify_ms_per_image"])
    out.append(f"\n(c) per-image time relative to batch 1 (decode fastest per image at batch {best}, "
               f"decode+classify at batch {best_dc}; batch-1 decode {c[1]['decode_ms_per_image']:.0f} ms, "
               "for scale only):\n")
    out.append(common.table(["batch", "decode per image / batch 1", "decode+classify per image / batch 1",
                             "spread"],
                            [[k, v["decode_ms_per_image"] / c[1]["decode_ms_per_image"],
                              v["decode_classify_ms_per_image"] / c[1]["decode_classify_ms_per_image"],
                              f"{v['spread']:.0%}"] for k, v in c.items()]))
    return "\n".join(out) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_latent_shift",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: the small demo layouts at 64 px")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant, the first included")
    p.add_argument("--max-lambda", type=float, default=1000.0)
    p.add_argument("--searches", nargs="*", default=["reference_walk", "app_c", "fast"],
                   help="(a)'s searches; add 'exhaustive' (our stop rule walked step by step: fast's bounds, "
                   "up to 2 x 100 search passes)")
    p.add_argument("--weights", type=Path, help="trained classifier weights (with sidecar) instead of random")
    p.add_argument("--autoencoder", type=Path, help="trained autoencoder weights, with --weights")
    p.add_argument("--json", help="also write every figure here")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="wait (up to 30 min) for the 1-min load average to fall below this before starting")
    args = p.parse_args(argv)
    if bool(args.weights) != bool(args.autoencoder):
        p.error("--weights and --autoencoder go together")
    if args.quick:
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the raw figures (the Markdown goes to stdout)."""
    args = parse(argv)
    return common.report(args, run, markdown)


if __name__ == "__main__":
    main()
