"""Efficient Channel Attention.

Wang, Wu, Zhu, Li, Zuo, Hu. "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks", CVPR 2020, arXiv:1910.03151.

For x in R^{N x C x H x W}:

    z = (1 / HW) sum_{i,j} x[:, :, i, j]                 (global average pooling, N x C)
    s = sigmoid( conv1d_k(z) )                           (one 1-D convolution across the channel
                                                          axis, kernel k, zero padding (k - 1) / 2,
                                                          no bias, shared by all channels)
    y = s * x

i.e. s_c = sigmoid( sum_{j=-(k-1)/2}^{(k-1)/2} w_j z_{c+j} ): each channel's weight comes from its k
neighbours, without the dimensionality reduction of SE. The kernel size adapts to C (Eq. 12):

    k = psi(C) = | log2(C) / gamma + b / gamma |_odd,    gamma = 2, b = 1

where |t|_odd is the odd number nearest to t. For t in [2m, 2m + 2) that is 2m + 1 (at an even
integer t = 2m both 2m - 1 and 2m + 1 are nearest; 2m + 1 is taken, as in the authors' published
formula), so k = 3 for C in [8, 128), e.g. 16, 32, 64, 96, and k = 5 for C in [128, 2048), e.g.
128, 256, 512, 1024. An explicit ``k_size`` overrides it.

What differs from common copies, and why: the authors' repository (BangguWu/ECANet) and most
snippets built on it construct the layer with a fixed ``k_size=3`` whatever C is (the adaptive
rule is only in the paper), so at 128 channels and above they use k = 3 where the paper's
module uses 5. Here the paper's rule is the default. The pooling is ``x.mean((2, 3))`` (no adaptive pooling layer), which exports to ONNX at any H x W.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, check_odd, check_positive, resolve_layer

__all__ = ["ECA", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The paper's adaptive kernel size psi(C) = |log2(C) / gamma + beta / gamma|_odd (Eq. 12)."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


@register_attention(
    "eca",
    kind="channel",
    paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
    arxiv="1910.03151",
    aliases=("eca_net", "efficient_channel_attention", "eca_layer", "eca_module"),
    taps=(AttentionTap("gate", "channel", "channel weights s"),),
    _builtin=True,
)
class ECA(nn.Module):
    """Efficient Channel Attention (arXiv:1910.03151).

    Args:
        channels: input (and output) channels C.
        k_size: kernel size k of the 1-D convolution across channels (odd). Default: the paper's
            adaptive ``psi(C)`` from ``gamma`` and ``beta``.
        gamma, beta: the paper's gamma and b of psi(C) (paper: 2 and 1); unused when ``k_size`` is given.
        gate_layer: gating function (paper: sigmoid); a class or a name such as "hard_sigmoid".
    """

    def __init__(
        self,
        channels: int,
        k_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: type[nn.Module] | str = nn.Sigmoid,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "gamma", gamma, integer=False)
        for arg, value in (("gamma", gamma), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: argument '{arg}' must be a finite number, got {value!r}")
        if k_size is None:
            k_size = eca_kernel_size(channels, gamma, beta)
        self.k_size = check_odd(name, "k_size", k_size)
        self.conv = nn.Conv1d(1, 1, k_size, padding=k_size // 2, bias=False)
        self.gate = resolve_layer(name, "gate_layer", gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        z = x.mean((2, 3)).unsqueeze(1)  # N, 1, C: channels as the 1-D sequence
        s = self.conv(z).transpose(1, 2).unsqueeze(-1)  # N, C, 1, 1
        return x * self.gate(s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k_size={self.k_size}"
