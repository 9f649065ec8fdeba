"""SimAM: a parameter-free attention module.

Yang, Zhang, Li, Xie. "SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural
Networks", ICML 2021, PMLR 139:11863-11874 (no arXiv version).

Each neuron t of a channel with M = H * W neurons gets the minimal energy of a linear separation
of t from the other neurons of its channel (Eq. 4-5 of the paper):

    mu        = (1 / M) sum_i x_i                                (per image and channel)
    sigma^2   = (1 / n) sum_i (x_i - mu)^2,     n = M - 1
    e*_t      = 4 (sigma^2 + lambda) / ((t - mu)^2 + 2 sigma^2 + 2 lambda)
    y         = sigmoid(1 / E) * x,                              E = e*_t for every neuron t

so that 1 / e*_t = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2, with lambda = 1e-4. A neuron that
stands out from its channel has low energy and a high weight. No parameters; the weight is a full
C x H x W map (a 3-D weight, "neither channel- nor spatial-wise" in the paper), hence kind
"hybrid". Statistics are per image and channel, so no image of a batch affects another.

A single neuron (a 1x1 map): n = M - 1 = 0 and sigma^2 = 0 / 0, which the authors' code returns as
NaN for the whole output. The only neuron of a channel equals its mean, so its squared deviation
and sigma^2 are both 0 (the limit of any channel with vanishing spread); here n is taken as
max(M - 1, 1), which gives exactly that: 1 / E = 1/2 and y = sigmoid(1/2) * x. For M >= 2 nothing
changes. n is computed from a tensor, not a Python int, so traced graphs keep it dynamic.

The energy is computed in float32 for float16/bfloat16 inputs: squared deviations of activations
above ~256 overflow float16.

What differs from common copies, and why: copies of the authors' module divide by ``w * h - 1``
and return NaN at 1x1 (the P5 map of a 32-pixel input), which then spreads through the whole
detector; they also compute in the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_positive

__all__ = ["SimAM"]


@register_attention(
    "simam",
    kind="hybrid",
    paper="SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks",
    arxiv=None,
    aliases=("simam_module", "simple_attention_module", "parameter_free_attention"),
    taps=(AttentionTap("gate", "spatial", "neuron weights sigmoid(1/E)"),),
    _builtin=True,
)
class SimAM(nn.Module):
    """SimAM parameter-free attention (ICML 2021, PMLR 139).

    Args:
        channels: input (and output) channels C (no parameters depend on it; inputs are checked against it).
        e_lambda: the regulariser lambda of the energy (paper: 1e-4).
    """

    def __init__(self, channels: int, e_lambda: float = 1e-4):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "e_lambda", e_lambda, integer=False)
        if not math.isfinite(e_lambda):
            raise ValueError(f"{name}: argument 'e_lambda' must be a positive number, got {e_lambda!r}")
        self.e_lambda = float(e_lambda)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        d2 = (xf - xf.mean((2, 3), keepdim=True)).square()
        # n = max(H*W - 1, 1) as a tensor: at 1x1 the sum of squared deviations is 0, so sigma^2 = 0
        n = (torch.ones_like(xf[:1, :1]).sum() - 1).clamp_min(1)
        var = d2.sum((2, 3), keepdim=True) / n
        inv_energy = d2 / (4 * (var + self.e_lambda)) + 0.5
        return x * self.gate(inv_energy).to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, e_lambda={self.e_lambda}"
