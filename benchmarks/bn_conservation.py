"""Conservation of LRP-alpha1-beta0 and RAP under each BatchNorm rule: sum of the map over the target's logit.

``python -m benchmarks.bn_conservation [--size 224] [--images 2] [--json out.json]``

For torchvision DenseNet-121, ResNet-50 and VGG-16-BN with seeded random weights and *trained-like* BatchNorm
(:func:`trained_like`), each method is run through :class:`cxrexplain.Explainer` with ``batchnorm=pass`` (the
RAP authors' rule) and ``batchnorm=zennit`` (BatchNorm folded into affine nodes), on random images, for the
top-scoring label of each; the figure is ``sum(map) / f(x)`` per image (1 is conservation, [Nam2021] eq. 1),
reported as the mean and the worst |ratio - 1|. Two settings: conv / linear biases zero (so f(x) is a sum of
the input's contributions but for the BatchNorm shifts), and conv / linear biases as well.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
import torch.nn as nn
import torchvision

import cxrexplain

from . import common

MODELS = ("densenet121", "resnet50", "vgg16_bn")
METHODS = ("lrp", "rap")
RULES = ("pass", "zennit")
log = logging.getLogger("benchmarks.bn_conservation")


def trained_like(model: nn.Module, seed: int = 0, size: int = 64, biases: bool = False) -> nn.Module:
    """``model`` with BatchNorm as training leaves it, in eval mode.

    Running mean and variance are the statistics of the activations themselves (three train-mode forwards of
    random images with cumulative averaging), so every layer sees inputs of the scale it normalizes and the
    pre-ReLU outputs keep a spread of signs through 121 layers; then gamma ~ U(0.3, 1.3) and beta ~ N(-0.1,
    0.2) (trained BatchNorms have mostly positive gamma and shifts of either sign, more often negative).
    Conv and linear biases are zero unless ``biases`` (then N(0, 0.05)).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=generator) if biases else 0.0)
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration forwards
                module.weight.fill_(1.0)
                module.bias.zero_()
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, size, size, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.3 + torch.rand(c, generator=generator))
                module.bias.copy_(-0.1 + 0.2 * torch.randn(c, generator=generator))
    return model.eval()


def model(name: str, seed: int = 0, size: int = 64, biases: bool = False, num_classes: int = 3) -> nn.Module:
    """A seeded torchvision ``name`` with :func:`trained_like` BatchNorm."""
    torch.manual_seed(seed)
    return trained_like(getattr(torchvision.models, name)(num_classes=num_classes), seed, size, biases)


def ratios(net: nn.Module, method: str, batchnorm: str, x: torch.Tensor) -> torch.Tensor:
    """``sum(map) / f(x)`` per image, for each image's top label (float64 sums of the float32 map)."""
    labels = [f"finding{i}" for i in range(net(x[:1]).shape[1])]
    explainer = cxrexplain.Explainer(net, device="cpu", labels=labels)
    with torch.no_grad():
        logits = net(x)
    targets = logits.argmax(1)
    result = explainer.explain(x, [method], targets=targets.tolist(), options={method: {"batchnorm":
                                                                                             batchnorm}})
    total = result.heatmaps[method].double().sum((1, 2))
    return total / logits.gather(1, targets[:, None])[:, 0].double()


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(11))
    for biases in (False, True):
        for name in MODELS:
            net = model(name, size=args.size, biases=biases)
            for method in METHODS:
                for rule in RULES:
                    r = ratios(net, method, rule, x)
                    rows.append({"model": name, "biases": biases, "method": method, "batchnorm": rule,
                                 "ratios": r.tolist(), "worst_error": float((r - 1).abs().max())})
                    log.info("%s", rows[-1])
    return {"machine": common.machine(), "size": args.size, "images": args.images, "rows": rows}


def markdown(results: dict[str, Any], command: str) -> str:
    rows = [[r["model"], "yes" if r["biases"] else "zero", r["method"], r["batchnorm"],
             ", ".join(f"{v:.5f}" for v in r["ratios"]), f"{r['worst_error']:.1e}"] for r in results["rows"]]
    table = common.table(["model", "conv / linear biases", "method", "batchnorm", "sum(map) / f(x) per image",
                          "worst abs(ratio - 1)"], rows)
    title = f"BatchNorm rules: conservation at {results['size']} px"
    return common.header(title, command, results["machine"]) + "\n" + table + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the measurement; returns the raw figures (the Markdown goes to stdout)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bn_conservation",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size", type=int, default=224, help="input size in pixels")
    p.add_argument("--images", type=int, default=2, help="random images per model")
    p.add_argument("--json", help="also write every figure here")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="wait (up to 30 min) for the 1-min load average to fall below this before starting")
    return common.report(p.parse_args(argv), run, markdown)


if __name__ == "__main__":
    main()
