"""Identity-initialised blend for inserting a module into a trained network.

    y = x + gamma * (f(x) - x),   gamma in R^C, initialised to 0

With gamma = 0 the block is exactly the identity, so a pretrained detector's outputs are
unchanged at insertion, whatever f is (SE and BAM gate multiplicatively, where zeroing a
last layer gives a gate of 0.5, not the identity). The per-channel gamma is the LayerScale
idea (Touvron et al., arXiv:2103.17239) applied to the difference f(x) - x, in the spirit of
ReZero (Bachlechner et al., arXiv:2003.04887): gamma gets a gradient from the first step,
f's parameters once gamma moves away from 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["GatedAttention", "identity_start"]


class GatedAttention(nn.Module):
    """Wrap a channel-preserving module ``attn`` as ``x + gamma * (attn(x) - x)`` with ``gamma = init``."""

    def __init__(self, attn: nn.Module, channels: int, init: float = 0.0):
        super().__init__()
        self.attn = attn
        self.channels = channels
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * (self.attn(x) - x)


def identity_start(module: nn.Module, channels: int) -> nn.Module:
    """``module`` made to start as the identity for insertion into a trained network.

    A module that already starts as the identity (a residual block whose last layer is zero-initialised,
    declared by ``module.starts_as_identity = True``: A2, GC, Non-local, Criss-Cross) is returned as it is.
    Gating it would freeze it: ``attn(x) - x`` is exactly 0, so gamma gets no gradient, and the block's
    parameters get none while gamma is 0. Every other module is wrapped in :class:`GatedAttention`.
    """
    if getattr(module, "starts_as_identity", False):
        return module
    return GatedAttention(module, channels)
