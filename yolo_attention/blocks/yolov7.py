"""YOLOv7 building blocks, written from the paper.

Wang, Bochkovskiy, Liao. "YOLOv7: Trainable bag-of-freebies sets new state-of-the-art for
real-time object detectors", CVPR 2023, arXiv:2207.02696.

* :class:`ELAN` — (extended) efficient layer aggregation: two 1x1 "cross-stage" branches and a
  chain of 3x3 convolutions on the second; the first branch, the second and selected chain
  outputs are concatenated and fused by a 1x1 convolution. One class covers the backbone
  E-ELAN (4 convs, every 2nd output kept), the head's ELAN-H (4 convs of half width, every
  output kept) and YOLOv7-tiny's ELAN (2 convs, every output kept).
* :class:`MPDown` — the MP down-sampling block: max-pool + 1x1 conv in one branch, 1x1 conv +
  stride-2 3x3 conv in the other, concatenated (each branch half of the output channels).
* :class:`SPPCSPC` — spatial pyramid pooling (k = 5, 9, 13) inside a CSP split; ``tiny=True``
  gives YOLOv7-tiny's variant without the 3x3 convolutions.
* :class:`RepConv` — the re-parameterisable convolution (RepVGG, arXiv:2101.03697) used before
  the detection head: 3x3 conv-BN + 1x1 conv-BN (+ identity BN when shapes allow) in training,
  one fused 3x3 convolution after :meth:`RepConv.fuse`.

Constructors follow the ultralytics convention ``(c1, c2, ...)``; in a YAML row the input
channels are inferred and the first argument is the output channel count.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBNAct", "ELAN", "MPDown", "SPPCSPC", "RepConv", "make_act"]


def make_act(act) -> nn.Module:
    if act is True or act in ("silu", "SiLU"):
        return nn.SiLU(inplace=True)
    if act in ("leaky", "leaky_relu", "LeakyReLU"):
        return nn.LeakyReLU(0.1, inplace=True)
    if act in ("relu", "ReLU"):
        return nn.ReLU(inplace=True)
    if act is False or act in ("identity", None):
        return nn.Identity()
    raise ValueError(f"YOLOv7 blocks: argument 'act' must be 'silu', 'leaky', 'relu' or 'identity', got {act!r}")


def _check(name: str, **channels) -> None:
    for arg, v in channels.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: argument '{arg}' must be a positive int, got {v!r}")


class ConvBNAct(nn.Module):
    """Conv2d (no bias) + BatchNorm + activation, 'same' padding."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, act="silu"):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ELAN(nn.Module):
    """Efficient layer aggregation (arXiv:2207.02696, Fig. 2).

    Args:
        c1, c2: input and output channels.
        c_: width of the two 1x1 branches (default c2 // 4 for the backbone E-ELAN... given explicitly in YAMLs).
        c3: width of the 3x3 chain (default ``c_``; the head's ELAN-H uses ``c_ // 2``).
        n: number of 3x3 convolutions in the chain.
        every: keep every ``every``-th chain output for the concatenation (backbone: 2, head/tiny: 1).
        act: activation ('silu' for YOLOv7, 'leaky' for YOLOv7-tiny).
    """

    def __init__(self, c1: int, c2: int, c_: int | None = None, c3: int | None = None, n: int = 4, every: int = 2,
                 act="silu"):
        super().__init__()
        c_ = c_ if c_ is not None else max(c2 // 4, 1)
        c3 = c3 if c3 is not None else c_
        _check("ELAN", c1=c1, c2=c2, c_=c_, c3=c3, n=n, every=every)
        if n % every:
            raise ValueError(f"ELAN: argument 'n' ({n}) must be a multiple of 'every' ({every})")
        self.cv1 = ConvBNAct(c1, c_, 1, act=act)
        self.cv2 = ConvBNAct(c1, c_, 1, act=act)
        self.chain = nn.ModuleList(ConvBNAct(c_ if i == 0 else c3, c3, 3, act=act) for i in range(n))
        self.every = every
        self.out = ConvBNAct(2 * c_ + (n // every) * c3, c2, 1, act=act)

    def forward(self, x):
        a, y = self.cv1(x), self.cv2(x)
        feats = [a, y]
        for i, conv in enumerate(self.chain):
            y = conv(y)
            if (i + 1) % self.every == 0:
                feats.append(y)
        return self.out(torch.cat(feats[::-1], 1))  # the paper's order: last chain output first


class MPDown(nn.Module):
    """MP down-sampling (arXiv:2207.02696): [1x1 -> 3x3 s2, maxpool 2 -> 1x1], c2 // 2 channels each."""

    def __init__(self, c1: int, c2: int, act="silu"):
        super().__init__()
        _check("MPDown", c1=c1, c2=c2)
        if c2 % 2:
            raise ValueError(f"MPDown: argument 'c2' must be even (two branches of c2 // 2), got {c2}")
        c_ = c2 // 2
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.cv1 = ConvBNAct(c1, c_, 1, act=act)
        self.cv2 = ConvBNAct(c1, c_, 1, act=act)
        self.cv3 = ConvBNAct(c_, c_, 3, 2, act=act)

    def forward(self, x):
        return torch.cat([self.cv3(self.cv2(x)), self.cv1(self.pool(x))], 1)


class SPPCSPC(nn.Module):
    """SPP inside a CSP split (arXiv:2207.02696); ``tiny`` drops the 3x3 convolutions."""

    def __init__(self, c1: int, c2: int, k=(5, 9, 13), e: float = 0.5, tiny: bool = False, act="silu"):
        super().__init__()
        _check("SPPCSPC", c1=c1, c2=c2)
        c_ = int(2 * c2 * e)  # YOLOv7: 1024 -> 512 with c_ = 512; tiny: 512 -> 256 with c_ = 256
        self.cv1 = ConvBNAct(c1, c_, 1, act=act)
        self.cv2 = ConvBNAct(c1, c_, 1, act=act)
        self.pre = nn.Identity() if tiny else nn.Sequential(ConvBNAct(c_, c_, 3, act=act), ConvBNAct(c_, c_, 1, act=act))
        self.pools = nn.ModuleList(nn.MaxPool2d(int(kk), 1, int(kk) // 2) for kk in k)
        self.post = (
            ConvBNAct((len(k) + 1) * c_, c_, 1, act=act)
            if tiny
            else nn.Sequential(ConvBNAct((len(k) + 1) * c_, c_, 1, act=act), ConvBNAct(c_, c_, 3, act=act))
        )
        self.out = ConvBNAct(2 * c_, c2, 1, act=act)

    def forward(self, x):
        x1 = self.pre(self.cv1(x))
        y1 = self.post(torch.cat([x1] + [p(x1) for p in self.pools], 1))
        return self.out(torch.cat([y1, self.cv2(x)], 1))


class RepConv(nn.Module):
    """Re-parameterisable 3x3 convolution (RepVGG, arXiv:2101.03697) as used by YOLOv7's head."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act="silu"):
        super().__init__()
        _check("RepConv", c1=c1, c2=c2)
        if k != 3:
            raise ValueError(f"RepConv: argument 'k' must be 3, got {k!r}")
        self.c1, self.c2, self.s = c1, c2, s
        self.dense = nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1, bias=False), nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03))
        self.point = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, bias=False), nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03))
        self.identity = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03) if c1 == c2 and s == 1 else None
        self.act = make_act(act)
        self.fused: nn.Conv2d | None = None

    def forward(self, x):
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.dense(x) + self.point(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @staticmethod
    def _fold(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    @torch.no_grad()
    def fuse(self) -> "RepConv":
        """Fold the three branches into one 3x3 convolution (inference only)."""
        k3, b3 = self._fold(self.dense[0].weight, self.dense[1])
        k1, b1 = self._fold(F.pad(self.point[0].weight, (1, 1, 1, 1)), self.point[1])
        kernel, bias = k3 + k1, b3 + b1
        if self.identity is not None:
            eye = torch.zeros_like(self.dense[0].weight)
            eye[torch.arange(self.c1), torch.arange(self.c1), 1, 1] = 1.0
            ki, bi = self._fold(eye, self.identity)
            kernel, bias = kernel + ki, bias + bi
        conv = nn.Conv2d(self.c1, self.c2, 3, self.s, 1, bias=True).to(kernel.device, kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.fused = conv
        del self.dense, self.point, self.identity
        self.identity = None
        return self
