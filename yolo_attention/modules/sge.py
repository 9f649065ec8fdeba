"""Spatial Group-wise Enhance.

Li, Hu, Yang. "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", arXiv:1905.09646.

For x in R^{N x C x H x W} split into G groups (paper: G = 64) of C/G channels; for one group
let x_i in R^{C/G} be the feature vector at position i (m = H*W positions):

    g     = (1 / m) sum_i x_i                         the group's global descriptor
    c_i   = g . x_i                                   similarity of each position to it
    mu    = (1 / m) sum_i c_i
    sigma = sqrt((1 / m) sum_i (c_i - mu)^2)          (population statistics, over positions)
    a_i   = gamma * (c_i - mu) / (sigma + eps) + beta eps = 1e-5; gamma, beta: one per group
    y_i   = x_i * sigmoid(a_i)

gamma is initialised to 0 and beta to 1 (the authors' code): every gate starts at sigmoid(1).
There are 2G parameters; nothing mixes images of a batch.

Groups: G is clamped to the largest divisor of C not above ``groups`` (64 at C = 256; 32 at
C = 32; 24 at C = 24, one channel per group), so every channel count builds.

Numerics: the statistics are computed in float32 (or float64) whatever the input dtype, because
normalising a nearly constant similarity map amplifies rounding. At a single position (1x1
map) c - mu = 0 and sigma = 0, so a = beta; sigma is computed as sqrt(max(var, 1e-12)), which
equals sqrt(var) whenever var >= 1e-12 and keeps the gradient finite (d sqrt(v)/dv is infinite
at v = 0).

What differs from common copies, and why: the authors' code (implus/PytorchInsight,
``SpatialGroupEnhance``) and the snippets copied from it normalise with ``Tensor.std``, the
unbiased (m - 1) estimator: at a 1x1 map it divides by m - 1 = 0 and returns NaN, which then
poisons the whole detector (P5 of a small validation image, a rectangular batch). The paper
writes the population standard deviation (1/m), used here; it is finite at every size. On maps
of m positions the two differ by a factor sqrt(m / (m - 1)) inside the normalisation (6% at
3x3, 0.1% at 20x20). The widely copied snippet (External-Attention-pytorch ``SGE``) also drops
the eps (0/0 on any constant group), initialises beta to 0 instead of 1 and defaults to G = 8.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_positive, largest_divisor

__all__ = ["SpatialGroupEnhance"]


@register_attention(
    "sge",
    kind="spatial",
    paper="Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks",
    arxiv="1905.09646",
    aliases=("spatial_group_enhance", "spatial_group_wise_enhance", "sgenet"),
    taps=(AttentionTap("gate", "spatial", "spatial gates, one map per group (N, G, H, W)"),),
    _builtin=True,
)
class SpatialGroupEnhance(nn.Module):
    """Spatial Group-wise Enhance (arXiv:1905.09646): each group gated by its positions' similarity to its mean.

    Args:
        channels: input (and output) channels C.
        groups: G (paper: 64), clamped to the largest divisor of C not above it.
    """

    eps = 1e-5  # added to sigma (the paper's and the authors' value)

    def __init__(self, channels: int, groups: int = 64):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.groups = largest_divisor(self.channels, check_positive(name, "groups", groups))
        self.weight = nn.Parameter(torch.zeros(self.groups))  # gamma
        self.bias = nn.Parameter(torch.ones(self.groups))  # beta
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, _, h, w = x.shape
        xg = x.reshape(n, self.groups, -1, h, w)
        xs = xg.to(torch.promote_types(x.dtype, torch.float32))
        sim = (xs * xs.mean((3, 4), keepdim=True)).sum(2)  # N, G, H, W: c_i = g . x_i
        mu = sim.mean((2, 3), keepdim=True)
        var = sim.var((2, 3), correction=0, keepdim=True)  # population variance, as in the paper
        t = (sim - mu) / (var.clamp_min(1e-12).sqrt() + self.eps)
        a = t * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        gate = self.gate(a.to(x.dtype))  # N, G, H, W
        return (xg * gate.unsqueeze(2)).reshape(n, -1, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
