"""Non-local block (embedded Gaussian).

Wang, Girshick, Gupta, He. "Non-local Neural Networks", CVPR 2018, arXiv:1711.07971.

For x in R^{N x C x H x W}, inner width C' = C/2 and positions i (queries), j (keys):

    theta_i = W_theta x_i,   phi_j = W_phi x^_j,   g_j = W_g x^_j      (1x1 convs C -> C')
    y_i = sum_j softmax_j(s * theta_i . phi_j) g_j                     (embedded Gaussian, Eq. 1-3)
    z_i = BN(W_z y_i) + x_i                                            (1x1 conv C' -> C, residual)

x^ is x sub-sampled by a 2x2 max-pool with stride 2 (the paper's "subsampling trick", on in
the authors' code; ``pool_size=1`` turns it off), so keys and values cover a quarter of the
positions. The scale of BN is initialised to zero, so the block starts as the identity
(Sec. 4.1). The attention is plain softmax attention and runs through
``scaled_dot_product_attention``: no (HW x HW') matrix is kept where a fused kernel exists.

The authors' code is Caffe2 (facebookresearch/video-nonlocal-net); there is no official
PyTorch code, so the tests compare with the paper's equations. Where paper and code differ:

* Logit scale s: Eq. 3 has none (s = 1); the released code multiplies the logits by C'^-1/2
  (``USE_SCALE = True``), as Transformers do. The default follows the code (which trained the
  published models and keeps the softmax away from saturation at init); ``qk_scale=1.0``
  gives Eq. 3.
* Sub-sampling: the equation sub-samples x (x^) and the code max-pools x before the phi and
  g convolutions; the paper's text also describes pooling after them. Pooling first, as
  here, runs those convolutions on a quarter of the positions.

What differs from common copies, and why:

* The widely copied PyTorch block max-pools with ``floor`` rounding, which drops the last
  row/column of an odd map and fails on a 1-pixel side ("output size is too small"). Here
  the pool uses ``ceil_mode``: every position is covered, and 1xW / Hx1 / 1x1 maps work.
* phi has no bias: theta_i . (phi_j + b) adds theta_i . b to every logit of query i, which
  the softmax over j cancels (the bias would never train). The conv W_z before BN has no
  bias either (BN's shift replaces it).
* BatchNorm is :class:`SafeBatchNorm2d`: it normalises over N*H*W values and falls back to
  running statistics in the one case with a single value per channel (batch 1 at 1x1).
  ``norm_layer=None`` drops BN and zero-initialises W_z (with a bias) instead, for
  batch-statistic-free training; the block still starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_attention
from .helpers import SafeBatchNorm2d, check_channels, check_input, check_positive, resolve_rd_channels

__all__ = ["NonLocalBlock"]


@register_attention(
    "nonlocal",
    kind="global-context",
    paper="Non-local Neural Networks",
    arxiv="1711.07971",
    aliases=("non_local", "nonlocal_block", "non_local_block", "nlb"),
    _builtin=True,
)
class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block with a zero-initialised output (arXiv:1711.07971).

    Args:
        channels: input (and output) channels C.
        rd_ratio: inner width C'/C of theta, phi and g (paper: 1/2).
        rd_divisor: the inner width is rounded to a multiple of this, and is never below it.
        rd_channels: explicit inner width C' (overrides ``rd_ratio``/``rd_divisor``).
        pool_size: max-pool window and stride that sub-samples the keys and values (authors: 2;
            1 disables sub-sampling).
        qk_scale: logit scale s; default C'^-0.5 as the authors' code; 1.0 is the paper's Eq. 3.
        norm_layer: normalisation after W_z, scale zero-initialised (paper: BatchNorm); None for
            a zero-initialised W_z without normalisation.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 2,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        pool_size: int = 2,
        qk_scale: float | None = None,
        norm_layer: type[nn.Module] | None = SafeBatchNorm2d,
    ):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        self.rd_channels = rd_channels = resolve_rd_channels(name, channels, rd_ratio, rd_divisor, rd_channels)
        self.pool_size = check_positive(name, "pool_size", pool_size)
        if qk_scale is not None:
            check_positive(name, "qk_scale", qk_scale, integer=False)
        self.scale = float(qk_scale) if qk_scale is not None else rd_channels**-0.5

        self.theta = nn.Conv2d(channels, rd_channels, 1)
        self.phi = nn.Conv2d(channels, rd_channels, 1, bias=False)  # a bias would cancel in the softmax over j
        self.g = nn.Conv2d(channels, rd_channels, 1)
        self.w_z = nn.Conv2d(rd_channels, channels, 1, bias=norm_layer is None)
        if norm_layer is None:
            self.norm = nn.Identity()
            nn.init.zeros_(self.w_z.weight)
            nn.init.zeros_(self.w_z.bias)
        else:
            self.norm = norm_layer(channels)
            nn.init.zeros_(self.norm.weight)  # BN scale 0: the block starts as the identity (paper Sec. 4.1)
        self.starts_as_identity = True  # read by identity_start: no gate when inserted into a trained detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        n, _, h, w = x.shape
        # ceil_mode: odd sizes keep their last row/column, and a 1-pixel side stays 1 (floor gives 0)
        src = x if self.pool_size == 1 else F.max_pool2d(x, self.pool_size, self.pool_size, ceil_mode=True)
        # (N, 1, L, C') with unit stride along C': fused SDPA kernels (CPU flash included) require it
        q = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()  # N, 1, HW, C'
        k = self.phi(src).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()  # N, 1, HW', C'
        v = self.g(src).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # softmax over the HW' keys
        y = y.squeeze(1).transpose(1, 2).reshape(n, self.rd_channels, h, w)
        return x + self.norm(self.w_z(y))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, pool_size={self.pool_size}, scale={self.scale:.4g}"
