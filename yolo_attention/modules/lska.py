"""Large Separable Kernel Attention.

Lau, Po, Rehman. "Large Separable Kernel Attention: Rethinking the Large Kernel Attention
Design in CNN", Expert Systems with Applications 2024, arXiv:2309.01439.

LKA (VAN, arXiv:2202.09741) approximates a k x k depthwise kernel by a (2d - 1) x (2d - 1)
depthwise convolution followed by a ceil(k / d) x ceil(k / d) depthwise convolution with
dilation d. LSKA separates both 2D kernels into a horizontal and a vertical 1D kernel:

    A   = W_1x1 * ( DW-D_{k' x 1} * ( DW-D_{1 x k'} * ( DW_{k0 x 1} * ( DW_{1 x k0} * x ))))
    out = A (.) x                                            (elementwise, A in R^{N x C x H x W})

with k0 = 2d - 1 the local kernel, k' = floor(k / d) the dilated kernel (dilation d), all
depthwise with biases, 'same' padding (k0 // 2 and d (k' - 1) / 2), and a full 1x1
convolution. The paper's kernel sizes and their decomposition (the authors' table):

    k    7   11   23   35   41   53
    k0   3    3    5    5    5    5
    k'   3    5    7   11   13   17
    d    2    2    3    3    3    3

This is LSKA itself, the "spatial gating unit": VAN wraps it in conv1x1 -> GELU -> LSKA ->
conv1x1 + residual inside a block with BatchNorm and an MLP. Inserted into a detector, the
unit alone is what YOLO practice uses (e.g. the widespread SPPF-LSKA, at P5 after SPPF).

Default k = 11: the kernel that YOLO practice uses (SPPF-LSKA sets ``k_size=11``). At 640 x
640 the neck's maps are 80, 40 and 20 pixels wide, where 11 spans a useful neighbourhood while
23 (the paper's ImageNet default for VAN) would mostly see the zero padding of a 20 x 20 P5
map. Any of the paper's sizes can be chosen.

What differs from common copies, and why: nothing in the arithmetic; copies of the authors'
``LSKA`` accept only these six sizes silently (any other k_size leaves the layers undefined
and fails at the first forward with an AttributeError); this module names the allowed sizes
at construction.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import check_channels, check_input

__all__ = ["LSKA", "LskaKernel", "LSKA_KERNELS"]


class LskaKernel(NamedTuple):
    local: int  # k0 = 2d - 1, the plain depthwise 1D kernels
    dilated: int  # k' = k // d, the dilated depthwise 1D kernels
    dilation: int  # d


LSKA_KERNELS: dict[int, LskaKernel] = {
    7: LskaKernel(3, 3, 2),
    11: LskaKernel(3, 5, 2),
    23: LskaKernel(5, 7, 3),
    35: LskaKernel(5, 11, 3),
    41: LskaKernel(5, 13, 3),
    53: LskaKernel(5, 17, 3),
}


def _strip(channels: int, length: int, horizontal: bool, dilation: int = 1) -> nn.Conv2d:
    pad = dilation * (length - 1) // 2
    size, padding = ((1, length), (0, pad)) if horizontal else ((length, 1), (pad, 0))
    return nn.Conv2d(channels, channels, size, padding=padding, dilation=dilation, groups=channels)


@register_attention(
    "lska",
    kind="spatial",
    paper="Large Separable Kernel Attention: Rethinking the Large Kernel Attention Design in CNN",
    arxiv="2309.01439",
    aliases=("large_separable_kernel_attention",),
    taps=(AttentionTap("conv1", "spatial", "attention map A (per channel, unsquashed)"),),
    _builtin=True,
)
class LSKA(nn.Module):
    """Large Separable Kernel Attention (arXiv:2309.01439): separable, dilated depthwise kernels; a 1x1; a product.

    Args:
        channels: input (and output) channels C.
        k_size: the large kernel k approximated, one of 7, 11, 23, 35, 41, 53 (default 11, YOLO practice).
    """

    def __init__(self, channels: int, k_size: int = 11):
        super().__init__()
        name = type(self).__name__
        self.channels = c = check_channels(name, channels)
        if isinstance(k_size, bool) or not isinstance(k_size, int) or k_size not in LSKA_KERNELS:
            raise ValueError(
                f"{name}: argument 'k_size' must be one of the paper's kernel sizes {tuple(LSKA_KERNELS)} "
                f"(a positive odd int with a decomposition), got {k_size!r}"
            )
        self.k_size = k_size
        spec = LSKA_KERNELS[k_size]
        self.conv0h = _strip(c, spec.local, horizontal=True)
        self.conv0v = _strip(c, spec.local, horizontal=False)
        self.conv_spatial_h = _strip(c, spec.dilated, horizontal=True, dilation=spec.dilation)
        self.conv_spatial_v = _strip(c, spec.dilated, horizontal=False, dilation=spec.dilation)
        self.conv1 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        attn = self.conv_spatial_v(self.conv_spatial_h(self.conv0v(self.conv0h(x))))
        return x * self.conv1(attn)

    def extra_repr(self) -> str:
        spec = LSKA_KERNELS[self.k_size]
        return (
            f"channels={self.channels}, k_size={self.k_size}, local={spec.local}, dilated={spec.dilated}, "
            f"dilation={spec.dilation}"
        )
