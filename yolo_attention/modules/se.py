"""Squeeze-and-Excitation.

Hu, Shen, Albanie, Sun, Wu. "Squeeze-and-Excitation Networks", CVPR 2018, arXiv:1709.01507.

For x in R^{N x C x H x W}:

    z = (1 / HW) sum_{i,j} x[:, :, i, j]                     (squeeze, N x C x 1 x 1)
    s = sigmoid(W2 . relu(W1 . z + b1) + b2)                 (excitation, W1: C -> C/r, W2: C/r -> C)
    y = s * x                                                (channel-wise rescale)

with reduction r = 16 (``rd_ratio=1/16``). The two fully connected layers are 1x1
convolutions, equal to Linear layers on the pooled vector and simpler to export. No
normalisation is used, so any batch size, including 1, trains.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input, resolve_layer, resolve_rd_channels

__all__ = ["SE"]


@register_attention(
    "se",
    kind="channel",
    paper="Squeeze-and-Excitation Networks",
    arxiv="1709.01507",
    aliases=("squeeze_excite", "squeeze_excitation", "se_module"),
    taps=(AttentionTap("gate", "channel", "channel weights s"),),
    _builtin=True,
)
class SE(nn.Module):
    """Squeeze-and-Excitation channel attention (arXiv:1709.01507).

    Args:
        channels: input (and output) channels C.
        rd_ratio: reduction ratio 1/r of the bottleneck (paper: r = 16).
        rd_divisor: the hidden width is rounded to a multiple of this, and is never below it.
        rd_channels: explicit hidden width (overrides ``rd_ratio``/``rd_divisor``).
        act_layer: activation of the bottleneck (paper: ReLU); a class or a name such as "silu".
        gate_layer: gating function (paper: sigmoid); a class or a name such as "hard_sigmoid".
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] | str = nn.ReLU,
        gate_layer: type[nn.Module] | str = nn.Sigmoid,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.rd_channels = rd_channels = resolve_rd_channels(name, channels, rd_ratio, rd_divisor, rd_channels)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act = resolve_layer(name, "act_layer", act_layer)()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.gate = resolve_layer(name, "gate_layer", gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"
