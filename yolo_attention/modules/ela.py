"""Efficient Local Attention.

Xu, Wan. "ELA: Efficient Local Attention for Deep Convolutional Neural Networks",
arXiv:2403.01123 (2024).

For x in R^{N x C x H x W}, strip pooling along each axis:

    z_h = (1 / W) sum_w x[:, :, :, w]          in R^{N x C x H}
    z_w = (1 / H) sum_h x[:, :, h, :]          in R^{N x C x W}
    y_h = sigmoid(GN(F(z_h)))                  F: 1D convolution over positions, C -> C, kernel k,
    y_w = sigmoid(GN(F(z_w)))                     padding k // 2, `groups` groups, no bias;
                                                  F and GN (GroupNorm, `gn_groups` groups over
                                                  C/gn_groups channels x length) shared by both axes
    Y   = x * y_h[:, :, :, None] * y_w[:, :, None, :]

No channel reduction and no BatchNorm: the paper replaces Coordinate Attention's BN (whose
batch statistics mix images) by GroupNorm, so every image is normalised on its own.

The paper's four versions (kernel k, channels per convolution group, GroupNorm groups):

    ELA-T  k = 5   depthwise (C groups)     GN 32      lightweight networks
    ELA-B  k = 7   depthwise (C groups)     GN 16      lightweight and deeper networks
    ELA-S  k = 5   C / 8 groups (8 ch.)     GN 16      deeper networks
    ELA-L  k = 7   C / 8 groups (8 ch.)     GN 16      large networks

``variant`` selects one ("B" by default: the paper recommends it both for lightweight and for
deeper networks, the range of YOLO scales n..x); ``k_size``, ``groups`` and ``gn_groups``
override single values. Group counts are clamped to the largest divisor of C not above them
(GN 32 at C = 24 gives 24), so every channel count builds.

At a 1x1 map (or a single row or column) the GroupNorm statistics still cover C / gn_groups
channels; with one channel per norm group and one position the normalised value is 0 and the
gate sigmoid(GN bias), finite (:class:`SafeGroupNorm`: ``nn.GroupNorm`` refuses a single value
per group, although the result is defined).

Authors' code: none is published (the paper links no repository and none was found); the
widely copied ``ELA(in_channels, phi)`` snippet implements the same equations with the same
table, and fails for channel counts that GroupNorm(16 or 32) or C // 8 groups do not divide
(e.g. C = 24 with ELA-T, C = 12 with ELA-S); this module clamps the group counts instead.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import SafeGroupNorm, check_channels, check_input, check_odd, check_positive, largest_divisor

__all__ = ["ELA", "ElaVariant", "ELA_VARIANTS"]


class ElaVariant(NamedTuple):
    k_size: int  # kernel of the shared 1D convolution
    group_channels: int  # channels per convolution group (1: depthwise)
    gn_groups: int  # GroupNorm groups


ELA_VARIANTS: dict[str, ElaVariant] = {
    "T": ElaVariant(5, 1, 32),
    "B": ElaVariant(7, 1, 16),
    "S": ElaVariant(5, 8, 16),
    "L": ElaVariant(7, 8, 16),
}


@register_attention(
    "ela",
    kind="hybrid",
    paper="ELA: Efficient Local Attention for Deep Convolutional Neural Networks",
    arxiv="2403.01123",
    aliases=("efficient_local_attention",),
    taps=(
        AttentionTap("gate_h", "spatial", "row weights y_h (N, C, H, 1)"),
        AttentionTap("gate_w", "spatial", "column weights y_w (N, C, 1, W)"),
    ),
    _builtin=True,
)
class ELA(nn.Module):
    """Efficient Local Attention (arXiv:2403.01123): strip-pooled 1D convolution + GroupNorm gates per row and column.

    Args:
        channels: input (and output) channels C.
        variant: the paper's version, "T", "B", "S" or "L" (see the module docstring).
        k_size: kernel of the shared 1D convolution (odd), overriding the variant's.
        groups: groups of the 1D convolution, overriding the variant's (clamped to a divisor of C).
        gn_groups: GroupNorm groups, overriding the variant's (clamped to a divisor of C).
    """

    def __init__(
        self,
        channels: int,
        variant: str = "B",
        k_size: int | None = None,
        groups: int | None = None,
        gn_groups: int | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = c = check_channels(name, channels)
        key = variant.upper().removeprefix("ELA-") if isinstance(variant, str) else None
        if key not in ELA_VARIANTS:
            raise ValueError(f"{name}: argument 'variant' must be one of 'T', 'B', 'S', 'L', got {variant!r}")
        spec = ELA_VARIANTS[key]
        self.variant = key
        self.k_size = spec.k_size if k_size is None else check_odd(name, "k_size", k_size)
        wanted = c // spec.group_channels if groups is None else check_positive(name, "groups", groups)
        self.groups = largest_divisor(c, max(wanted, 1))
        self.gn_groups = largest_divisor(
            c, spec.gn_groups if gn_groups is None else check_positive(name, "gn_groups", gn_groups)
        )
        self.conv = nn.Conv1d(c, c, self.k_size, padding=self.k_size // 2, groups=self.groups, bias=False)
        self.gn = SafeGroupNorm(self.gn_groups, c)
        self.gate_h = nn.Sigmoid()
        self.gate_w = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        a_h = self.gate_h(self.gn(self.conv(x.mean(3))).unsqueeze(3))  # N, C, H, 1
        a_w = self.gate_w(self.gn(self.conv(x.mean(2))).unsqueeze(2))  # N, C, 1, W
        return x * a_h * a_w

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, variant={self.variant!r}, k_size={self.k_size}, groups={self.groups}, "
            f"gn_groups={self.gn_groups}"
        )
