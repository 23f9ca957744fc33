"""CAM (Zhou et al., 2016): the class's linear weights applied to the pooled feature maps."""

from __future__ import annotations

import torch

from ..bundle import ClassifierBundle
from .base import Captures, ForwardContext, Method, MethodOutput, register
from .upsample import to_input_size


@register
class CAM(Method):
    """``M_c(u, v) = sum_k w_{c,k} A_k(u, v)`` with A the map a global-average-pool + linear head pools.

    Exact and nearly free: no backward pass, one weighted sum over the kept feature maps.
    """

    name = "cam"
    needs_graph = False  # reads kept feature maps only

    def captures(self, bundle: ClassifierBundle) -> Captures:
        return (bundle.cam_node,)

    def feature_map(self, ctx: ForwardContext) -> torch.Tensor:
        """(N, h, w) CAM at the feature map's resolution, before upsampling."""
        bundle = ctx.bundle
        features = ctx.activations[bundle.cam_node].detach()
        weights = bundle.traced.cam_head().linear.weight.detach()[ctx.targets]  # (N, K)
        # Zhou et al. §2: M_c(x, y) = sum_k w_k^c f_k(x, y)
        return torch.einsum("nk,nkhw->nhw", weights, features)

    def explain(self, ctx: ForwardContext) -> MethodOutput:
        return MethodOutput(heatmap=to_input_size(self.feature_map(ctx), ctx.x))
