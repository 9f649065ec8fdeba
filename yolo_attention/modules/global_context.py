"""Global context (GC) block.

Cao, Xu, Lin, Wei, Hu. "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCVW 2019, arXiv:1904.11492.

For x in R^{N x C x H x W} with positions j = 1..HW:

    context modelling    a = softmax_j(W_k x_j)                     (1x1 conv C -> 1, softmax over HW)
                         c = sum_j a_j x_j                          in R^{N x C x 1 x 1}
    transform            t = W_v2 . relu(LN(W_v1 c))                (bottleneck C -> C/r -> C, r = 16)
    fusion (add)         y = x + t                                  (broadcast over H x W)

This is the paper's default block (attention pooling, channel-add fusion). The paper's
ablations are available: average pooling (``pool_type="avg"``: c = mean_HW x) and scaling
fusion (``fusion="scale"``: y = x * sigmoid(t); ``"both"``: y = x * sigmoid(t') + t with a
second transform t'). The last convolution of each transform is zero-initialised, as the
authors do, so the add-fusion block starts as the identity.

The LayerNorm normalises the C/r values of one image's pooled vector: no statistic mixes
images, and any batch size, 1 included, trains.

What differs from common copies, and why:

* The mask convolution has no bias. The authors' block (and copies of it) has one, but a
  constant added to every position's logit cancels in the softmax over positions, so that
  bias never gets a gradient and never changes the output.
* The hidden width is ``make_divisible(C / r, rd_divisor)``, at least 8 by default. The
  authors' ``int(C * ratio)`` is 0 for C < 16 (the block cannot be built), and a LayerNorm over
  one or two values normalises them to (nearly) constants, which disables the transform.
  For C >= 128 with the default r = 16 both rules give C / 16.
* The softmax over positions runs in (at least) float32 for float16/bfloat16 inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import (
    LayerNorm2d,
    check_channels,
    check_choice,
    check_input,
    resolve_layer,
    resolve_rd_channels,
    softmax_fp32,
)

__all__ = ["GlobalContext"]

POOL_TYPES = ("attn", "avg")
FUSIONS = ("add", "scale", "both")


def _transform(channels: int, hidden: int, act_layer) -> nn.Sequential:
    """1x1 conv C -> C/r, LayerNorm over the C/r values, activation, 1x1 conv C/r -> C (last zeroed)."""
    t = nn.Sequential(nn.Conv2d(channels, hidden, 1), LayerNorm2d(hidden), act_layer(), nn.Conv2d(hidden, channels, 1))
    nn.init.zeros_(t[-1].weight)
    nn.init.zeros_(t[-1].bias)
    return t


@register_attention(
    "gc",
    kind="global-context",
    paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
    arxiv="1904.11492",
    aliases=("global_context", "gcnet", "gc_block", "context_block"),
    taps=(AttentionTap("conv_mask", "spatial", "context weights softmax_HW(W_k x)", "softmax"),),
    _builtin=True,
)
class GlobalContext(nn.Module):
    """Global context block (arXiv:1904.11492).

    Args:
        channels: input (and output) channels C.
        rd_ratio: bottleneck ratio 1/r of the transform (paper: r = 16).
        rd_divisor: the hidden width is rounded to a multiple of this, and is never below it.
        rd_channels: explicit hidden width (overrides ``rd_ratio``/``rd_divisor``).
        pool_type: ``"attn"`` (paper: softmax attention pooling) or ``"avg"`` (global average).
        fusion: ``"add"`` (paper), ``"scale"`` (sigmoid gate) or ``"both"`` (gate, then add).
        act_layer: activation of the transform (paper: ReLU).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        pool_type: str = "attn",
        fusion: str = "add",
        act_layer: type[nn.Module] | str = nn.ReLU,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.rd_channels = rd_channels = resolve_rd_channels(name, channels, rd_ratio, rd_divisor, rd_channels)
        self.pool_type = check_choice(name, "pool_type", pool_type, POOL_TYPES)
        self.fusion = check_choice(name, "fusion", fusion, FUSIONS)
        act = resolve_layer(name, "act_layer", act_layer)

        if pool_type == "attn":
            self.conv_mask = nn.Conv2d(channels, 1, 1, bias=False)  # a bias would cancel in the softmax
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        else:
            self.conv_mask = None
        self.add_transform = _transform(channels, rd_channels, act) if fusion in ("add", "both") else None
        self.scale_transform = _transform(channels, rd_channels, act) if fusion in ("scale", "both") else None
        self.gate = nn.Sigmoid() if self.scale_transform is not None else None
        self.starts_as_identity = fusion == "add"  # zeroed last layer; a sigmoid gate starts at 0.5 instead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        context = self._pool(x)  # N, C, 1, 1
        out = x
        if self.scale_transform is not None:
            out = out * self.gate(self.scale_transform(context))
        if self.add_transform is not None:
            out = out + self.add_transform(context)
        return out

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_mask is None:
            return x.mean((2, 3), keepdim=True)
        weights = softmax_fp32(self.conv_mask(x).flatten(2), dim=2)  # N, 1, HW
        # sum_j a_j x_j as one batched product (N, C, HW) @ (N, HW, 1): no (N, C, H, W) temporary
        return torch.bmm(x.flatten(2), weights.transpose(1, 2)).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, pool_type={self.pool_type!r}, fusion={self.fusion!r}"
