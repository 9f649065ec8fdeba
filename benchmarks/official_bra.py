"""The authors' BRA algorithm (NCHW operator), re-implemented here as a baseline.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023,
arXiv:2303.08810. Written from the behaviour described in ``/work/shared/notes/biformer-facts.md``
(no code taken from the authors' repository): the point is to reproduce the *algorithm and
its costs* faithfully so that speed and memory can be compared side by side:

* NCHW input, one 1x1 conv to q | k | v, H and W must be divisible by ``n_win`` (asserted);
* routing on region means of the *detached* q and k (``avg_pool2d`` over each region),
  region affinity q_r k_r^T and ``torch.topk`` of it;
* the K and V tokens of the routed regions are gathered ``topk`` times (a real copy, with
  ``torch.gather`` on an expanded index, per head);
* the full attention matrix (queries x gathered keys) is materialised, soft-maxed and kept by
  autograd for the backward pass; the logit scale is dim^-0.5 with dim the *full* channel count;
* lepe (depthwise conv on v) is added before the 1x1 output projection.

Parameter names match :class:`yolo_attention.modules.biformer.BiLevelRoutingAttention`
(``qkv``, ``lepe``, ``proj``), so ``official.load_state_dict(ours.state_dict())`` gives both
modules the same weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["OfficialBRA"]


class OfficialBRA(nn.Module):
    """Baseline BRA with the official operator's algorithm (gather top-k copies, dense softmax)."""

    def __init__(self, dim: int, num_heads: int = 8, n_win: int = 7, topk: int = 4, side_dwconv: int = 3):
        super().__init__()
        assert dim % num_heads == 0
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.scale = dim**-0.5  # full channel count, as the authors' operator
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv else None
        self.proj = nn.Conv2d(dim, dim, 1)

    def _to_regions(self, t: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
        # (N, C, H, W) -> (N, heads, regions, tokens per region, head dim)
        n, c, h, w = t.shape
        s, heads = self.n_win, self.num_heads
        t = t.view(n, heads, c // heads, s, rh, s, rw)
        return t.permute(0, 1, 3, 5, 4, 6, 2).reshape(n, heads, s * s, rh * rw, c // heads)

    def _from_regions(self, t: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
        n, heads, _, _, hd = t.shape
        s = self.n_win
        t = t.view(n, heads, s, s, rh, rw, hd).permute(0, 1, 6, 2, 4, 3, 5)
        return t.reshape(n, heads * hd, s * rh, s * rw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.n_win
        assert h % s == 0 and w % s == 0, f"H={h} and W={w} must be divisible by n_win={s}"
        rh, rw = h // s, w // s
        q, k, v = self.qkv(x).chunk(3, dim=1)

        # region-level routing, no gradient
        q_r = F.avg_pool2d(q.detach(), (rh, rw)).flatten(2).transpose(1, 2)  # (N, S^2, C)
        k_r = F.avg_pool2d(k.detach(), (rh, rw)).flatten(2)  # (N, C, S^2)
        idx = torch.topk(q_r @ k_r, self.topk, dim=-1).indices  # (N, S^2, topk)

        # token-level attention over the gathered regions (copied top-k times)
        qs, ks, vs = (self._to_regions(t, rh, rw) for t in (q, k, v))  # (N, h, R, T, hd)
        heads, regions, tokens, hd = qs.shape[1], qs.shape[2], qs.shape[3], qs.shape[4]
        gidx = idx.view(n, 1, regions, self.topk, 1, 1).expand(n, heads, regions, self.topk, tokens, hd)
        # every query region sees all key regions (an expanded view), gather picks its top-k: a copy
        k_g = torch.gather(ks.unsqueeze(2).expand(n, heads, regions, regions, tokens, hd), 3, gidx)
        v_g = torch.gather(vs.unsqueeze(2).expand(n, heads, regions, regions, tokens, hd), 3, gidx)
        k_g = k_g.reshape(n, heads, regions, self.topk * tokens, hd)
        v_g = v_g.reshape(n, heads, regions, self.topk * tokens, hd)

        attn = (qs * self.scale) @ k_g.transpose(-1, -2)  # (N, h, R, T, topk*T): materialised
        attn = attn.softmax(dim=-1)
        out = self._from_regions(attn @ v_g, rh, rw)
        if self.lepe is not None:
            out = out + self.lepe(v)
        return self.proj(out)
