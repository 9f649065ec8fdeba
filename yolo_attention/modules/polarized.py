"""Polarized self-attention (PSA; here ``PolarizedSelfAttention``, as ultralytics already has a PSA).

Liu, Liu, Fan, Huang. "Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
arXiv:2107.00782 (Neurocomputing 2022).

For x in R^{N x C x H x W}; W_q, W_v, W_z are 1x1 convolutions with C/2 inner channels:

    channel-only   A^ch = sigmoid(LN(W_z [ W_v^ch(x) . softmax_HW(W_q^ch(x)) ]))   in R^{N x C x 1 x 1}
                   (W_q^ch: C -> 1, softmax over the HW positions; W_v^ch: C -> C/2; the product
                    pools the C/2 values over positions; W_z: C/2 -> C; LN over the C channels)
    spatial-only   A^sp = sigmoid( softmax_C/2(GAP(W_q^sp(x))) . W_v^sp(x) )        in R^{N x 1 x H x W}
                   (W_q^sp, W_v^sp: C -> C/2; the softmax is over the C/2 pooled query channels)
    parallel       PSA_p(x) = A^ch * x + A^sp * x                     (Eq. 4, default)
    sequential     PSA_s(x) = A^sp(z) * z  with  z = A^ch(x) * x      (Eq. 5)

Both branches are linear in x until the softmaxes, so they are computed in an equal, cheaper
order: the channel branch pools x with the softmax weights and then applies W_v^ch to one
C-vector per image (instead of W_v^ch on every position); the spatial branch folds the
softmax weights into W_v^sp (a C-vector per image) and takes one product with x (no C/2 x
H x W map), and GAP(W_q^sp x) = W_q^sp GAP(x). No statistic mixes images: LayerNorm
normalises one image's C-vector, so any batch size, 1 included, trains.

What differs from the authors' code and common copies, and why:

* The authors' repository (DeLightCMU/PSA, network/PSA.py) does not compute the spatial-only
  branch of the paper: ``PSA_p`` applies the softmax *after* the product, over the HW
  positions of the 1 x HW map, so the gate sigmoid(softmax) lies in (0.5, 0.73] and is close to
  0.5 almost everywhere on a large map; ``PSA_s`` applies it to W_v(x) over positions, per
  channel, and none to the pooled query. Their channel-only
  branch matches Eq. 2 except that ``PSA_p`` has no LayerNorm after W_z and ``PSA_s`` puts a
  bottleneck (C/2 -> C/8 -> LN -> ReLU -> C) there. This module follows the paper's Eq. 2-5
  (issue DeLightCMU/PSA#5 reports the same discrepancy); ``norm_layer=None`` drops the
  LayerNorm, which makes the channel-only branch equal to the authors' ``PSA_p``.
* No bias in the projections, as in the authors' code.
* Softmaxes run in float32 for float16/bfloat16 inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import AttentionTap, register_attention
from .helpers import LayerNorm2d, check_channels, check_choice, check_input, softmax_fp32

__all__ = ["PolarizedSelfAttention"]

LAYOUTS = ("parallel", "sequential")


@register_attention(
    "polarized",
    kind="hybrid",
    paper="Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
    arxiv="2107.00782",
    aliases=("polarized_self_attention", "polarized_attention"),
    taps=(
        AttentionTap("channel_gate", "channel", "channel-only weights A^ch"),
        AttentionTap("spatial_gate", "spatial", "spatial-only weights A^sp"),
    ),
    _builtin=True,
)
class PolarizedSelfAttention(nn.Module):
    """Polarized self-attention, parallel or sequential layout (arXiv:2107.00782).

    Args:
        channels: input (and output) channels C (inner width C/2, at least 1).
        layout: ``"parallel"`` (PSA_p, Eq. 4) or ``"sequential"`` (PSA_s, Eq. 5).
        norm_layer: normalisation of the channel-only logits over the C channels, an NCHW layer
            built as ``norm_layer(C)`` (paper: LayerNorm, here ``LayerNorm2d``); None drops it (the
            authors' ``PSA_p`` code).
    """

    def __init__(self, channels: int, layout: str = "parallel", norm_layer: type[nn.Module] | None = LayerNorm2d):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.layout = check_choice(name, "layout", layout, LAYOUTS)
        inner = max(1, channels // 2)
        self.inner_channels = inner
        # channel-only branch
        self.ch_wq = nn.Conv2d(channels, 1, 1, bias=False)
        self.ch_wv = nn.Conv2d(channels, inner, 1, bias=False)
        self.ch_wz = nn.Conv2d(inner, channels, 1, bias=False)
        self.ch_norm = norm_layer(channels) if norm_layer is not None else nn.Identity()
        self.channel_gate = nn.Sigmoid()
        # spatial-only branch
        self.sp_wq = nn.Conv2d(channels, inner, 1, bias=False)
        self.sp_wv = nn.Conv2d(channels, inner, 1, bias=False)
        self.spatial_gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        if self.layout == "parallel":
            return x * self.channel_only(x) + x * self.spatial_only(x)
        z = x * self.channel_only(x)
        return z * self.spatial_only(z)

    def channel_only(self, x: torch.Tensor) -> torch.Tensor:
        """A^ch (N, C, 1, 1): W_v^ch applied after pooling x with softmax_HW(W_q^ch x) (equal, by linearity)."""
        weights = softmax_fp32(self.ch_wq(x).flatten(2), dim=2)  # N, 1, HW
        pooled = torch.bmm(x.flatten(2), weights.transpose(1, 2)).unsqueeze(-1)  # N, C, 1, 1
        return self.channel_gate(self.ch_norm(self.ch_wz(self.ch_wv(pooled))))

    def spatial_only(self, x: torch.Tensor) -> torch.Tensor:
        """A^sp (N, 1, H, W): the softmax over the C/2 pooled queries folded into W_v^sp (equal, by linearity)."""
        n, _, h, w = x.shape
        query = self.sp_wq(x.mean((2, 3), keepdim=True)).flatten(1)  # GAP(W_q x) = W_q GAP(x): N, C/2
        mix = softmax_fp32(query, dim=1) @ self.sp_wv.weight.flatten(1)  # N, C
        logits = torch.bmm(mix.unsqueeze(1), x.flatten(2))  # N, 1, HW
        return self.spatial_gate(logits.reshape(n, 1, h, w))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner_channels={self.inner_channels}, layout={self.layout!r}"
