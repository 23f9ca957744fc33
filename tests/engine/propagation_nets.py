"""Seeded torchvision classifiers for the propagation tests (test_lrp, test_rap, test_guided_backprop)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision


def random_classifier(name: str, seed: int = 0, num_classes: int = 3, bias_free: bool = False) -> nn.Module:
    """A torchvision architecture with seeded random weights and BatchNorm statistics that are not identity.

    ``bias_free`` zeroes every bias and BatchNorm shift (running mean and beta), so that f(x) is a sum of
    ``x_i w_ij`` terms and relevance conservation ([Nam2021] eq. 1) must hold exactly.
    """
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                if bias_free:
                    module.bias.zero_()
                    module.running_mean.zero_()
                else:
                    module.bias.copy_(0.1 * torch.randn(c, generator=generator))
                    module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            elif isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                if bias_free:
                    module.bias.zero_()
                else:
                    module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def labels(n: int = 3) -> list[str]:
    return [f"finding{i}" for i in range(n)]


class TinyNet(nn.Module):
    """Three bias-free linear layers, hand-set float64 weights (one ReLU unit is off for the test input)."""

    W1 = [[1.0, -2.0, 0.5, 1.0], [-1.0, 1.0, 2.0, -0.5], [0.5, 0.5, -1.0, 1.0]]
    W2 = [[1.0, -1.0, 0.5], [0.5, 1.0, -1.0], [-1.0, 0.5, 1.0]]
    W3 = [[1.0, -0.5, 2.0], [-1.0, 1.0, 0.5]]

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3, bias=False, dtype=torch.float64)
        self.fc2 = nn.Linear(3, 3, bias=False, dtype=torch.float64)
        self.fc3 = nn.Linear(3, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            for layer, w in ((self.fc1, self.W1), (self.fc2, self.W2), (self.fc3, self.W3)):
                layer.weight.copy_(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def weights(self) -> list[torch.Tensor]:
        return [layer.weight.detach() for layer in (self.fc1, self.fc2, self.fc3)]


TINY_INPUT = [[1.0, -0.5, 2.0, 0.5], [-1.0, 2.0, 0.5, 1.0]]


class SmallConvNet(nn.Module):
    """Conv -> ReLU -> cat(features, conv(features)) -> BN (unmergeable) -> ReLU -> conv -> BN (mergeable)
    -> ReLU
    -> max pool -> residual add -> avg pool -> linear: every node kind of the rule engine at a tiny size."""

    def __init__(self, width: int = 8, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        kw = dict(dtype=dtype)
        self.width = width
        self.conv1 = nn.Conv2d(2, width, 3, padding=1, **kw)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, **kw)
        self.norm = nn.BatchNorm2d(2 * width, **kw)
        self.conv3 = nn.Conv2d(2 * width, width, 3, padding=1, bias=False, **kw)
        self.norm3 = nn.BatchNorm2d(width, **kw)
        self.side = nn.Conv2d(2 * width, width, 1, **kw)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 3, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.cat([y, self.conv2(y)], 1)
        y = torch.relu(self.norm(y))
        z = torch.relu(self.norm3(self.conv3(y))) + self.side(y)
        z = self.pool(z)
        return self.fc(torch.flatten(self.gap(torch.relu(z)), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0, bias_free: bool = False) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c, dtype = module.num_features, module.weight.dtype
                module.weight.copy_(torch.randn(c, generator=generator, dtype=dtype))  # signs vary
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator, dtype=dtype))
                if not bias_free:
                    module.bias.copy_(0.1 * torch.randn(c, generator=generator, dtype=dtype))
                    module.running_mean.copy_(0.1 * torch.randn(c, generator=generator, dtype=dtype))
            elif bias_free and getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model.eval()


def unrolled(net: SmallConvNet) -> nn.Module:
    """The same function as ``net`` with the unmergeable BN as a depthwise 1x1 conv and conv3 + norm3 as one
    conv: the engine then takes its generic conv path where ``net`` takes the diagonal / merged paths."""

    class Unrolled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dtype = net.conv1.weight.dtype
            self.conv1, self.conv2, self.side, self.pool, self.gap, self.fc = (
                net.conv1, net.conv2, net.side, net.pool, net.gap, net.fc)
            c = net.width
            self.depthwise = nn.Conv2d(2 * c, 2 * c, 1, groups=2 * c, dtype=dtype)
            self.merged = nn.Conv2d(2 * c, c, 3, padding=1, dtype=dtype)
            with torch.no_grad():
                a = net.norm.weight / torch.sqrt(net.norm.running_var + net.norm.eps)
                self.depthwise.weight.copy_(a.view(-1, 1, 1, 1))
                self.depthwise.bias.copy_(net.norm.bias - a * net.norm.running_mean)
                a3 = net.norm3.weight / torch.sqrt(net.norm3.running_var + net.norm3.eps)
                self.merged.weight.copy_(net.conv3.weight * a3.view(-1, 1, 1, 1))
                self.merged.bias.copy_(net.norm3.bias - a3 * net.norm3.running_mean)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv1(x))
            y = torch.cat([y, self.conv2(y)], 1)
            y = torch.relu(self.depthwise(y))
            z = torch.relu(self.merged(y)) + self.side(y)
            z = self.pool(z)
            return self.fc(torch.flatten(self.gap(torch.relu(z)), 1))

    return Unrolled().eval()


def relevance_at_input(model: nn.Module, x: torch.Tensor, start: torch.Tensor, rules, method: str,
                       record: dict | None = None) -> torch.Tensor:
    """Run the rule engine on ``model`` in ``x``'s dtype (the Explainer works in float32)."""
    from cxrexplain.graph import TracedModel
    from cxrexplain.propagation import propagate

    traced = TracedModel(model)
    logits, activations = traced.run(x.detach().requires_grad_(True), "all")
    return propagate(traced, activations, start(logits.detach()), rules, method, record)


def at_target(targets: list[int], value: str = "logit"):
    """A start-relevance builder: the target logit (LRP) or 1 (RAP, guided backprop) at each row's target."""

    def start(logits: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor(targets)[:, None]
        fill = logits.gather(1, rows) if value == "logit" else torch.ones_like(rows, dtype=logits.dtype)
        return torch.zeros_like(logits).scatter_(1, rows, fill)

    return start
