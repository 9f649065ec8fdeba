"""Selective Kernel attention.

Li, Wang, Hu, Yang. "Selective Kernel Networks", CVPR 2019, arXiv:1903.06586.

For x in R^{N x C x H x W} and M branches (paper: M = 2):

    Split   U_m = relu(BN(conv3x3_{dilation m+1, groups G}(x)))          m = 0 .. M-1
            (paper: a 3x3 and a 5x5 kernel, the 5x5 realised as a 3x3 with dilation 2;
             grouped convolutions with G = 32)
    Fuse    U   = sum_m U_m
            s   = (1 / HW) sum_{i,j} U[:, :, i, j]                          in R^{N x C}
            z   = relu(W s + b)                                              W: C -> d,
            d   = max(C / r, L)                                              r = 16, L = 32
    Select  a_m = exp(A_m z) / sum_k exp(A_k z)                              softmax ACROSS the M
                                                                             branches, per channel
            V   = sum_m a_m * U_m                                            (N, C, H, W)

The module maps C channels to C channels (no residual: SK replaces a convolution).

Normalisation of z, and why it differs from the paper: the paper computes z = relu(BN(W s)),
BatchNorm on the pooled C-vector, whose batch statistics are undefined at batch 1 (the
"Expected more than 1 value per channel" crash on a detector's last, size-1 batch) and noisy
at detection batch sizes. Here the fully connected layer has a bias instead: z = relu(W s + b),
which is exactly the paper's evaluation-time function (BatchNorm with running statistics is an
affine map, folded into W and b). The branch convolutions keep the paper's BatchNorm (over
N*H*W values) as :class:`SafeBatchNorm2d`, safe at batch 1 with a 1x1 map.

Groups: G is clamped to the largest divisor of C not above ``groups`` (32 at C = 24 gives 24,
a depthwise convolution; at C = 96 it gives 32), so every channel count builds.

What differs from common copies, and why: the widely copied ``SKAttention`` snippet (e.g. in
the External-Attention-pytorch collection) uses four branches with real 1x1, 3x3, 5x5, 7x7
kernels, ungrouped, and a purely linear z = W s (no normalisation, no ReLU), i.e. a different
and far heavier module (22.1 M parameters at C = 512, counted from its layer shapes, against
0.20 M here). This module follows
the paper: two branches (3x3 and dilated 3x3), grouped G = 32, ReLU after the squeeze. The
authors' own implementation is Caffe (implus/SKNet); a PyTorch variant by the first author
(implus/PytorchInsight, ``resnet_sk.py``) uses a plain 3x3 and a grouped 3x3 as its two
branches, and the same fuse/select computation as here.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import (
    SafeBatchNorm2d,
    check_channels,
    check_input,
    check_positive,
    check_ratio,
    largest_divisor,
    resolve_layer,
)

__all__ = ["SKAttention"]


class BranchSoftmax(nn.Module):
    """Softmax across ``num_branches`` of branch-major logits (N, M*C, 1, 1) -> weights of the same shape.

    A module of its own so that a forward hook can read the selection weights.
    Computed in at least float32 (bfloat16/float16 inputs do not lose the small weights).
    """

    def __init__(self, num_branches: int):
        super().__init__()
        self.num_branches = num_branches

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        w = torch.softmax(logits.unflatten(1, (self.num_branches, -1)), dim=1, dtype=dtype)
        return w.to(logits.dtype).flatten(1, 2)


@register_attention(
    "sk",
    kind="channel",  # the attention is a per-channel selection between branches; no spatial map
    paper="Selective Kernel Networks",
    arxiv="1903.06586",
    aliases=("selective_kernel", "sknet", "sk_attention"),
    taps=(AttentionTap("select", "channel", "branch weights a_m", layout="branch-major"),),
    _builtin=True,
)
class SKAttention(nn.Module):
    """Selective Kernel unit (arXiv:1903.06586): branches of growing receptive field, mixed per channel.

    Args:
        channels: input (and output) channels C.
        num_branches: M; branch m is a 3x3 convolution with dilation m + 1 (receptive field
            3 + 2m: paper M = 2, a 3x3 and a "5x5").
        groups: groups G of the branch convolutions (paper: 32), clamped to the largest divisor
            of C not above it.
        rd_ratio: 1/r of the squeeze width d = max(C * rd_ratio, min_rd_channels) (paper r = 16).
        min_rd_channels: L, the smallest squeeze width (paper: 32).
        act_layer: activation of the branches and of the squeeze (paper: ReLU).
        norm_layer: normalisation of the branches (paper: BatchNorm; default safe at batch 1).
    """

    def __init__(
        self,
        channels: int,
        num_branches: int = 2,
        groups: int = 32,
        rd_ratio: float = 1 / 16,
        min_rd_channels: int = 32,
        act_layer: type[nn.Module] | str = nn.ReLU,
        norm_layer: type[nn.Module] = SafeBatchNorm2d,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = c = check_channels(name, channels)
        self.num_branches = check_positive(name, "num_branches", num_branches)
        self.groups = largest_divisor(c, check_positive(name, "groups", groups))
        check_ratio(name, "rd_ratio", rd_ratio)
        check_positive(name, "min_rd_channels", min_rd_channels)
        act = resolve_layer(name, "act_layer", act_layer)
        self.rd_channels = max(int(c * rd_ratio), min_rd_channels)

        self.branches = nn.ModuleList(
            nn.Sequential(
                # padding = dilation keeps H x W at every size, 1x1 included
                nn.Conv2d(c, c, 3, padding=m + 1, dilation=m + 1, groups=self.groups, bias=False),
                norm_layer(c),
                act(),
            )
            for m in range(self.num_branches)
        )
        self.fc1 = nn.Conv2d(c, self.rd_channels, 1)  # the bias stands in for the paper's BN shift
        self.act = act()
        self.fc2 = nn.Conv2d(self.rd_channels, self.num_branches * c, 1, bias=False)  # A_0 .. A_{M-1}, stacked
        self.select = BranchSoftmax(self.num_branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        feats = [branch(x) for branch in self.branches]
        u = feats[0]
        for f in feats[1:]:
            u = u + f
        z = self.act(self.fc1(u.mean((2, 3), keepdim=True)))
        a = self.select(self.fc2(z)).unflatten(1, (self.num_branches, -1))  # N, M, C, 1, 1
        out = a[:, 0] * feats[0]
        for m in range(1, self.num_branches):
            out = out + a[:, m] * feats[m]
        return out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_branches={self.num_branches}, groups={self.groups}, "
            f"rd_channels={self.rd_channels}"
        )
