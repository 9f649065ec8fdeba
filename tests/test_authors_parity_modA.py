"""Equality with the authors' own PyTorch code: CBAM, ECA, CoordAtt, SimAM, EMA, Triplet attention.

Each test loads the authors' module from their repository (skipped unless
YOLO_ATTENTION_AUTHORS_CODE names a directory holding it, see tests/_authors.py), copies the
same weights into ours (state-dict keys mapped, weights re-indexed where a layout differs),
and compares in float64 the forward pass and the gradients with respect to the input and to
every parameter, in training and evaluation mode. docs/authors-parity.md records the commits
checked and the differences measured. GAM has no published code from its authors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import pytest
import torch
import torch.nn as nn

from _authors import authors_module
from _helpers import _registry_does_not_leak, weighted_loss  # noqa: F401
from yolo_attention import CBAM, ECA, EMA, CoordAtt, SimAM, TripletAttention
from yolo_attention.modules.helpers import SafeBatchNorm2d

TOL = 1e-12  # float64: only summation order differs


@dataclass(frozen=True)
class Key:
    """Our state-dict entry ``ours`` holds ``to_ours(theirs' entry)``; gradients map the same way."""

    ours: str
    theirs: str
    to_ours: Callable[[torch.Tensor], torch.Tensor] = lambda t: t


def randomise(m: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BatchNorm statistics (not the init values, which hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return m


def copy_weights(ours: nn.Module, theirs: nn.Module, keys: list[Key]) -> None:
    src = theirs.state_dict()
    dst = ours.state_dict()
    mapped = {k.ours for k in keys}
    unmapped = [k for k, v in dst.items() if k not in mapped and not k.endswith("num_batches_tracked")]
    assert not unmapped, f"our entries without a counterpart: {unmapped}"
    assert len({k.theirs for k in keys}) == len(keys)
    with torch.no_grad():
        for k in keys:
            value = k.to_ours(src[k.theirs])
            assert value.shape == dst[k.ours].shape, (k, value.shape, dst[k.ours].shape)
            dst[k.ours].copy_(value)


def compare(ours: nn.Module, theirs: nn.Module, keys: list[Key], shape: tuple, training: bool) -> float:
    """Max abs difference over output, input gradient, parameter gradients and BatchNorm statistics."""
    ours.train(training)
    theirs.train(training)
    x = torch.randn(shape, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    assert ya.shape == yb.shape == x.shape
    weighted_loss(ya).backward()
    weighted_loss(yb).backward()
    diffs = {"output": (ya - yb).abs().max().item(), "input grad": (xa.grad - xb.grad).abs().max().item()}
    ours_p, theirs_p = dict(ours.named_parameters()), dict(theirs.named_parameters())
    ours_b, theirs_b = dict(ours.named_buffers()), dict(theirs.named_buffers())
    for k in keys:
        if k.ours in ours_p:
            ga, gb = ours_p[k.ours].grad, k.to_ours(theirs_p[k.theirs].grad)
            assert ga is not None and gb is not None, k
            diffs[f"grad {k.ours}"] = (ga - gb).abs().max().item()
        else:  # running statistics after a training step
            diffs[k.ours] = (ours_b[k.ours] - k.to_ours(theirs_b[k.theirs])).abs().max().item()
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < TOL, f"{type(ours).__name__} {shape} {'train' if training else 'eval'}: {worst} differs by {diffs[worst]:.3g}"
    return diffs[worst]


def run_parity(make_pair: Callable[[], tuple[nn.Module, nn.Module, list[Key]]], shapes: list[tuple]) -> float:
    worst = 0.0
    for shape in shapes:
        for training in (True, False):
            ours, theirs, keys = make_pair()
            randomise(theirs)
            ours.double()
            theirs.double()
            copy_weights(ours, theirs, keys)
            worst = max(worst, compare(ours, theirs, keys, shape, training))
    print(f"max abs difference over {shapes}: {worst:.3g}")
    return worst


# --------------------------------------------------------------------------------------
# CBAM: Jongchan/attention-module, MODELS/cbam.py
# --------------------------------------------------------------------------------------


def test_cbam_equals_authors_code_with_their_batchnorm():
    mod = authors_module("Jongchan/attention-module", "MODELS/cbam.py")

    def pair():
        c = 64
        theirs = mod.CBAM(c, reduction_ratio=16)
        # their hidden width is C // 16; their spatial conv is followed by BatchNorm(momentum=0.01)
        ours = CBAM(c, rd_channels=c // 16, norm_layer=partial(SafeBatchNorm2d, momentum=0.01))
        swap = lambda w: w[:, [1, 0]]  # noqa: E731  their pooled maps are [max; mean], the paper's [mean; max]
        conv = lambda w: w[:, :, None, None]  # noqa: E731  Linear -> 1x1 convolution
        keys = [
            Key("fc1.weight", "ChannelGate.mlp.1.weight", conv),
            Key("fc1.bias", "ChannelGate.mlp.1.bias"),
            Key("fc2.weight", "ChannelGate.mlp.3.weight", conv),
            Key("fc2.bias", "ChannelGate.mlp.3.bias"),
            Key("spatial_conv.weight", "SpatialGate.spatial.conv.weight", swap),
            Key("spatial_norm.weight", "SpatialGate.spatial.bn.weight"),
            Key("spatial_norm.bias", "SpatialGate.spatial.bn.bias"),
            Key("spatial_norm.running_mean", "SpatialGate.spatial.bn.running_mean"),
            Key("spatial_norm.running_var", "SpatialGate.spatial.bn.running_var"),
        ]
        return ours, theirs, keys

    run_parity(pair, [(2, 64, 9, 13), (1, 64, 7, 7), (3, 64, 5, 1), (2, 64, 1, 6)])


# --------------------------------------------------------------------------------------
# ECA: BangguWu/ECANet, models/eca_module.py
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [64, 256])
def test_eca_equals_authors_code(channels):
    mod = authors_module("BangguWu/ECANet", "models/eca_module.py")

    def pair():
        ours = ECA(channels)  # the paper's adaptive k: 3 at 64 channels, 5 at 256
        theirs = mod.eca_layer(channels, k_size=ours.k_size)  # theirs takes k explicitly (default 3)
        return ours, theirs, [Key("conv.weight", "conv.weight")]

    run_parity(pair, [(2, channels, 9, 13), (1, channels, 1, 1), (3, channels, 4, 1)])


# --------------------------------------------------------------------------------------
# Coordinate attention: Andrew-Qibin/CoordAttention, coordatt.py
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [64, 512])
def test_coordatt_equals_authors_code(channels):
    mod = authors_module("Andrew-Qibin/CoordAttention", "coordatt.py")

    def pair():
        theirs = mod.CoordAtt(channels, channels, reduction=32)
        ours = CoordAtt(channels)
        assert ours.rd_channels == theirs.conv1.out_channels
        # their F_1 has a bias before BatchNorm: in training BatchNorm removes it, in evaluation it
        # shifts the running mean; ours has none, so their bias is folded into our running mean
        fold = lambda t: t - theirs.conv1.bias.detach()  # noqa: E731  (read after randomisation)
        keys = [Key(f"{a}.{p}", f"{a}.{p}") for a in ("conv1", "conv_h", "conv_w") for p in ("weight", "bias")
                if not (a == "conv1" and p == "bias")]
        keys += [Key("bn1.weight", "bn1.weight"), Key("bn1.bias", "bn1.bias"), Key("bn1.running_var", "bn1.running_var"),
                 Key("bn1.running_mean", "bn1.running_mean", fold)]
        return ours, theirs, keys

    run_parity(pair, [(2, channels, 9, 13), (1, channels, 1, 1), (3, channels, 5, 1), (2, channels, 1, 8)])


# --------------------------------------------------------------------------------------
# SimAM: ZjjConan/SimAM, networks/attentions/simam_module.py
# --------------------------------------------------------------------------------------


def test_simam_equals_authors_code_and_differs_only_at_1x1():
    mod = authors_module("ZjjConan/SimAM", "networks/attentions/simam_module.py")

    def pair():
        return SimAM(32), mod.simam_module(32, e_lambda=1e-4), []

    run_parity(pair, [(2, 32, 9, 13), (1, 32, 2, 1), (3, 32, 1, 7), (2, 32, 40, 40)])
    # one neuron per channel: theirs divides 0 by n = 0 (NaN everywhere), ours returns sigmoid(1/2) * x
    x = torch.randn(2, 32, 1, 1, dtype=torch.float64)
    assert torch.isnan(mod.simam_module(32)(x)).all()
    torch.testing.assert_close(SimAM(32)(x), x * torch.sigmoid(torch.tensor(0.5, dtype=torch.float64)))


# --------------------------------------------------------------------------------------
# EMA: YOLOonMe/EMA-attention-module, EMA_attention_module (a Python file without extension)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [64, 256])
def test_ema_equals_authors_code(channels):
    mod = authors_module("YOLOonMe/EMA-attention-module", "EMA_attention_module")

    def pair():
        theirs = mod.EMA(channels, factor=32)  # their code needs C divisible by 32
        ours = EMA(channels)
        assert ours.groups == 32
        keys = [Key(f"{a}.{p}", f"{a}.{p}") for a in ("conv1x1", "conv3x3", "gn") for p in ("weight", "bias")]
        return ours, theirs, keys

    run_parity(pair, [(2, channels, 9, 13), (1, channels, 1, 1), (3, channels, 5, 1), (2, channels, 1, 8)])


# --------------------------------------------------------------------------------------
# Triplet attention: landskape-ai/triplet-attention, triplet_attention.py (the root copy, which
# MODELS/triplet_attention.py points to as the latest)
# --------------------------------------------------------------------------------------


def test_triplet_equals_authors_code():
    mod = authors_module("landskape-ai/triplet-attention", "triplet_attention.py")

    def pair():
        theirs = mod.TripletAttention()
        ours = TripletAttention(16, norm_layer=partial(SafeBatchNorm2d, momentum=0.01))  # their BatchNorm momentum
        keys = []
        for branch in ("cw", "hc", "hw"):
            keys.append(Key(f"conv_{branch}.0.weight", f"{branch}.conv.conv.weight"))
            for p in ("weight", "bias", "running_mean", "running_var"):
                keys.append(Key(f"conv_{branch}.1.{p}", f"{branch}.conv.bn.{p}"))
        return ours, theirs, keys

    run_parity(pair, [(2, 16, 9, 13), (1, 16, 7, 7), (3, 16, 5, 1), (2, 16, 1, 6)])
