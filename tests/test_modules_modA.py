"""Paper-faithfulness of CBAM, ECA, CoordAtt, SimAM, EMA, GAM and Triplet attention.

Each module is checked against an independent float64 re-statement of its paper's equations
(einsum and explicit shifted sums, no call into the module's own layers), and each documented
deviation from common copies is shown to matter: the reference with the copy's choice gives a
different result. The shape/dtype/export matrix every module passes lives in test_modules.py
and test_export.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from _helpers import _registry_does_not_leak, activate, assert_finite, rel_err, weighted_loss  # noqa: F401
from yolo_attention import CBAM, ECA, EMA, GAM, CoordAtt, SimAM, TripletAttention
from yolo_attention.modules.eca import eca_kernel_size
from yolo_attention.modules.helpers import SafeBatchNorm2d

# --------------------------------------------------------------------------------------
# Independent references (float64)
# --------------------------------------------------------------------------------------


def conv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-padded 'same' 2-D convolution (odd kernel) as an explicit sum over kernel offsets."""
    kh, kw = weight.shape[-2:]
    ph, pw = kh // 2, kw // 2
    n, _, h, w = x.shape
    xp = torch.zeros(n, x.shape[1], h + 2 * ph, w + 2 * pw, dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    out = torch.zeros(n, weight.shape[0], h, w, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out += torch.einsum("oc,nchw->nohw", weight[:, :, i, j], xp[:, :, i : i + h, j : j + w])
    return out if bias is None else out + bias[None, :, None, None]


def conv1x1_ref(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    out = torch.einsum("oc,nchw->nohw", conv.weight.double().flatten(1), x)
    return out if conv.bias is None else out + conv.bias.double()[None, :, None, None]


def bn_ref(x: torch.Tensor, bn: nn.BatchNorm2d, training: bool) -> torch.Tensor:
    if training:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean.double(), bn.running_var.double()
    x = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    return x * bn.weight.double()[None, :, None, None] + bn.bias.double()[None, :, None, None]


def to64(m: nn.Module) -> nn.Module:
    return m.double()


# --------------------------------------------------------------------------------------
# CBAM
# --------------------------------------------------------------------------------------


def cbam_ref(m: CBAM, x: torch.Tensor, spatial_order=("mean", "max"), max_pool_in_channel=True, training=False):
    """Paper: x' = sigmoid(MLP(avg) + MLP(max)) * x;  y = sigmoid(f7x7([mean_C x'; max_C x'])) * x'."""

    def mlp(z):  # z: N, C
        w0, b0 = m.fc1.weight.double().flatten(1), m.fc1.bias.double()
        w1, b1 = m.fc2.weight.double().flatten(1), m.fc2.bias.double()
        return torch.relu(z @ w0.T + b0) @ w1.T + b1

    logits = mlp(x.mean((2, 3)))
    if max_pool_in_channel:
        logits = logits + mlp(x.flatten(2).max(2).values)
    x = x * torch.sigmoid(logits)[:, :, None, None]
    pools = {"mean": x.mean(1, keepdim=True), "max": x.max(1, keepdim=True).values}
    desc = torch.cat([pools[k] for k in spatial_order], dim=1)
    s = conv_ref(desc, m.spatial_conv.weight.double(), None if m.spatial_conv.bias is None else m.spatial_conv.bias.double())
    if isinstance(m.spatial_norm, nn.BatchNorm2d):
        s = bn_ref(s, m.spatial_norm, training)
    return x * torch.sigmoid(s)


def test_cbam_matches_paper_and_each_part_matters():
    m = to64(activate(CBAM(64))).eval()
    assert m.rd_channels == 8 and m.spatial_conv.kernel_size == (7, 7) and m.spatial_conv.bias is not None
    with torch.no_grad():
        m.spatial_conv.weight.mul_(4)  # a sharp spatial gate, so that wrong variants differ clearly
        x = torch.randn(3, 64, 9, 13, dtype=torch.float64)
        y = m(x)
        torch.testing.assert_close(y, cbam_ref(m, x), rtol=1e-10, atol=1e-12)
        # the spatial descriptor order [mean; max] and the max-pooled channel descriptor both matter
        assert rel_err(cbam_ref(m, x, spatial_order=("max", "mean")), y) > 1e-3
        assert rel_err(cbam_ref(m, x, max_pool_in_channel=False), y) > 1e-3


def test_cbam_hidden_width():
    assert CBAM(256).rd_channels == 16  # C / 16
    assert CBAM(512).rd_channels == 32
    assert CBAM(16).rd_channels == 8  # never below the divisor (the authors' C // 16 would be 1, and 0 below 16)
    assert CBAM(8).rd_channels == 8
    assert CBAM(256, rd_divisor=1, rd_ratio=1 / 32).rd_channels == 8
    assert CBAM(64, rd_channels=3).rd_channels == 3
    assert sum(p.numel() for p in CBAM(256).parameters()) == 2 * 256 * 16 + 16 + 256 + 2 * 49 + 1


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cbam_authors_batchnorm_variant(mode):
    m = CBAM(32, norm_layer=SafeBatchNorm2d)
    assert m.spatial_conv.bias is None and isinstance(m.spatial_norm, SafeBatchNorm2d)
    m = to64(activate(m)).train(mode == "train")
    x = torch.randn(2, 32, 7, 6, dtype=torch.float64)
    ref = cbam_ref(m, x, training=mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


def test_cbam_batchnorm_variant_trains_at_batch1_1x1():
    """Plain BatchNorm raises on one value per channel; the safe one uses its running statistics."""
    m = CBAM(32, norm_layer=SafeBatchNorm2d).train()
    x = torch.randn(1, 32, 1, 1, requires_grad=True)
    y = m(x)
    weighted_loss(y).backward()
    assert_finite(x.grad)
    assert m.spatial_norm.num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        CBAM(32, norm_layer=nn.BatchNorm2d).train()(x)


@pytest.mark.parametrize("size", [(1, 1), (1, 8), (8, 1), (3, 5)])
def test_cbam_kernel_keeps_size(size):
    for k in (1, 3, 7, 9):
        m = CBAM(16, k_size=k).eval()
        x = torch.randn(2, 16, *size)
        assert m(x).shape == x.shape


def test_cbam_gates_are_tapped_submodules():
    m = CBAM(32).eval()
    seen = {}
    hooks = [getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o)) for n in ("channel_gate", "spatial_gate")]
    x = torch.randn(2, 32, 5, 7)
    y = m(x)
    for h in hooks:
        h.remove()
    assert seen["channel_gate"].shape == (2, 32, 1, 1) and seen["spatial_gate"].shape == (2, 1, 5, 7)
    torch.testing.assert_close(y, x * seen["channel_gate"] * seen["spatial_gate"])


# --------------------------------------------------------------------------------------
# ECA
# --------------------------------------------------------------------------------------


def nearest_odd(t: float) -> int:
    """|t|_odd of the paper: the odd number nearest to t (the larger one on a tie)."""
    odds = range(1, 2 * math.ceil(t) + 3, 2)
    return min(odds, key=lambda o: (abs(o - t), -o))


@pytest.mark.parametrize("channels", [1, 2, 4, 8, 16, 24, 32, 64, 96, 127, 128, 192, 256, 512, 1024, 2047, 2048, 4096])
def test_eca_adaptive_kernel_is_nearest_odd(channels):
    expected = nearest_odd(abs(math.log2(channels) / 2 + 1 / 2))
    assert eca_kernel_size(channels) == expected
    assert ECA(channels).k_size == expected == ECA(channels).conv.kernel_size[0]


def test_eca_kernel_sizes_at_yolo_widths():
    assert {c: ECA(c).k_size for c in (16, 32, 64, 96, 128, 256, 512, 1024)} == {
        16: 3, 32: 3, 64: 3, 96: 3, 128: 5, 256: 5, 512: 5, 1024: 5,
    }
    assert ECA(256, k_size=3).k_size == 3  # explicit size wins
    assert ECA(256, gamma=1, beta=0).k_size == 9  # log2(256) = 8 -> |8|_odd = 9
    assert sum(p.numel() for p in ECA(256).parameters()) == 5


def eca_ref(m: ECA, x: torch.Tensor) -> torch.Tensor:
    """s_c = sigmoid(sum_j w_j z_{c+j}), zero outside 0..C-1;  y = s * x."""
    z = x.mean((2, 3))
    w = m.conv.weight.double().flatten()
    k, c = w.numel(), z.shape[1]
    s = torch.zeros_like(z)
    for ch in range(c):
        for j in range(k):
            src = ch + j - k // 2
            if 0 <= src < c:
                s[:, ch] += w[j] * z[:, src]
    return x * torch.sigmoid(s)[:, :, None, None]


@pytest.mark.parametrize("channels", [16, 256])
def test_eca_matches_paper(channels):
    m = to64(activate(ECA(channels))).eval()
    with torch.no_grad():
        m.conv.weight.copy_(torch.randn_like(m.conv.weight))
        x = torch.randn(3, channels, 7, 5, dtype=torch.float64)
        torch.testing.assert_close(m(x), eca_ref(m, x), rtol=1e-10, atol=1e-12)


def test_eca_channel_neighbourhood_is_k():
    """At C = 256 (k = 5) channel c's weight depends on channels c-2..c+2 and no others; the fixed
    k = 3 of the common copies would miss c +- 2."""
    m = to64(ECA(256)).eval()
    with torch.no_grad():
        m.conv.weight.copy_(torch.randn_like(m.conv.weight).abs() + 0.1)
    z = torch.randn(1, 256, 1, 1, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: m(t).flatten() / t.flatten(), z).reshape(256, 256)
    row = jac[100]
    assert (row[98:103] != 0).all()
    assert (row[:98] == 0).all() and (row[103:] == 0).all()


# --------------------------------------------------------------------------------------
# Coordinate attention
# --------------------------------------------------------------------------------------


def coordatt_ref(m: CoordAtt, x: torch.Tensor, training: bool, joint_bn: bool = True) -> torch.Tensor:
    """z^h = mean over W, z^w = mean over H; f = hswish(BN(F1([z^h, z^w]))); y = x * sigmoid(F_h f^h) * sigmoid(F_w f^w)."""
    n, c, h, w = x.shape
    zh = torch.stack([x[:, :, i, :].mean(-1) for i in range(h)], dim=-1)  # N, C, H
    zw = torch.stack([x[:, :, :, j].mean(-1) for j in range(w)], dim=-1)  # N, C, W
    w1 = m.conv1.weight.double().flatten(1)
    z = torch.cat([zh, zw], dim=2)  # N, C, H + W
    f = torch.einsum("rc,ncl->nrl", w1, z).unsqueeze(-1)  # N, C/r, H + W, 1
    if joint_bn:
        f = bn_ref(f, m.bn1, training)
    else:  # the height and width descriptors normalised separately: not the paper's module
        f = torch.cat([bn_ref(f[:, :, :h], m.bn1, training), bn_ref(f[:, :, h:], m.bn1, training)], dim=2)
    f = f.squeeze(-1)
    f = f * torch.clamp(f + 3, 0, 6) / 6  # h-swish
    gh = torch.sigmoid(torch.einsum("cr,nrl->ncl", m.conv_h.weight.double().flatten(1), f[:, :, :h]) + m.conv_h.bias.double()[:, None])
    gw = torch.sigmoid(torch.einsum("cr,nrl->ncl", m.conv_w.weight.double().flatten(1), f[:, :, h:]) + m.conv_w.bias.double()[:, None])
    return x * gh[:, :, :, None] * gw[:, :, None, :]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("size", [(9, 13), (1, 1), (6, 1), (1, 7)])
def test_coordatt_matches_paper(mode, size):
    m = to64(activate(CoordAtt(64))).train(mode == "train")
    x = torch.randn(3, 64, *size, dtype=torch.float64)
    ref = coordatt_ref(m, x, training=mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


def test_coordatt_batchnorm_runs_over_both_descriptors_jointly():
    m = to64(activate(CoordAtt(64))).train()
    x = torch.randn(2, 64, 9, 13, dtype=torch.float64) + torch.linspace(-2, 2, 13, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
    assert rel_err(coordatt_ref(m, x, training=True, joint_bn=False), y) > 1e-3


def test_coordatt_gate_is_separable():
    """y / x = g^h(i) * g^w(j): a rank-1 matrix per image and channel, at any H x W."""
    m = to64(activate(CoordAtt(32))).eval()
    for h, w in [(9, 13), (20, 3), (5, 5)]:
        x = torch.randn(2, 32, h, w, dtype=torch.float64).abs() + 0.5
        with torch.no_grad():
            ratio = m(x) / x
        sv = torch.linalg.svdvals(ratio)  # N, C, min(H, W)
        assert (sv[..., 1:] < 1e-10 * sv[..., :1]).all()
        assert sv[..., 0].min() > 0


def test_coordatt_hidden_width():
    assert CoordAtt(256).rd_channels == 8 == max(8, 256 // 32)
    assert CoordAtt(512).rd_channels == 16 and CoordAtt(1024).rd_channels == 32
    assert CoordAtt(16).rd_channels == 8
    assert CoordAtt(384, rd_channels=12).rd_channels == 12
    assert isinstance(CoordAtt(64).act, nn.Hardswish)
    m = CoordAtt(64, norm_layer=None)
    assert isinstance(m.bn1, nn.Identity) and m.conv1.bias is not None


def test_coordatt_trains_at_batch1_1x1_and_updates_statistics():
    """At 1x1 the BatchNorm still sees two values per hidden channel (z^h and z^w)."""
    m = CoordAtt(32).train()
    before = m.bn1.running_mean.clone()
    x = torch.randn(1, 32, 1, 1, requires_grad=True)
    weighted_loss(m(x)).backward()
    assert_finite(x.grad)
    assert m.bn1.num_batches_tracked.item() == 1 and torch.isfinite(m.bn1.running_var).all()
    assert not torch.equal(before, m.bn1.running_mean)


# --------------------------------------------------------------------------------------
# SimAM
# --------------------------------------------------------------------------------------


def simam_ref(x: torch.Tensor, lam: float = 1e-4, n_of=lambda m: m - 1) -> torch.Tensor:
    """Per image and channel: e*_t = 4(s2 + lam) / ((t - mu)^2 + 2 s2 + 2 lam), s2 = sum (x - mu)^2 / n; y = sigmoid(1/e*) x."""
    y = torch.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            t = x[i, c]
            m = t.numel()
            mu = t.sum() / m
            s2 = ((t - mu) ** 2).sum() / n_of(m)
            energy = 4 * (s2 + lam) / ((t - mu) ** 2 + 2 * s2 + 2 * lam)
            y[i, c] = torch.sigmoid(1 / energy) * t
    return y


@pytest.mark.parametrize("size", [(9, 13), (2, 1), (1, 5), (2, 2)])
def test_simam_matches_paper_energy(size):
    m = SimAM(8)
    assert not list(m.parameters()) and not list(m.buffers())
    x = torch.randn(2, 8, *size, dtype=torch.float64) * 3
    torch.testing.assert_close(m(x), simam_ref(x), rtol=1e-10, atol=1e-12)
    # n = M - 1, not M: the unbiased spread of the paper (visible on small maps)
    assert rel_err(simam_ref(x, n_of=lambda m: m), m(x)) > 1e-3
    # lambda enters: a larger one flattens the weights
    assert rel_err(SimAM(8, e_lambda=1.0)(x), simam_ref(x, lam=1.0)) < 1e-10
    assert rel_err(SimAM(8, e_lambda=1.0)(x), m(x)) > 1e-3


def test_simam_single_neuron_is_finite_and_the_limit():
    """1x1: the neuron equals its mean, so (t - mu)^2 = sigma^2 = 0 and 1/E = 1/2."""
    m = SimAM(16).train()
    x = (torch.randn(3, 16, 1, 1) * 10).requires_grad_(True)
    y = m(x)
    torch.testing.assert_close(y, x * torch.sigmoid(torch.tensor(0.5)), rtol=1e-6, atol=1e-7)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, torch.sigmoid(torch.tensor(0.5)).item()))
    # a constant channel of any size is the same limit
    c = torch.full((1, 16, 4, 3), 2.5)
    torch.testing.assert_close(m(c), c * torch.sigmoid(torch.tensor(0.5)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_simam_low_precision_large_activations(dtype):
    """(x - mu)^2 of activations ~1e3 overflows float16 (max 65504); the energy is computed in float32."""
    x = torch.randn(2, 8, 6, 7) * 1000
    y = SimAM(8)(x.to(dtype))
    assert y.dtype == dtype
    assert_finite(y)
    assert rel_err(y, SimAM(8)(x.to(dtype).float())) < 1e-2


def test_simam_weights_are_per_image_and_channel():
    """Scaling or shifting one channel of one image leaves every other weight unchanged."""
    m = SimAM(4)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    w = m(x) / x
    x2 = x.clone()
    x2[1, 2] = x2[1, 2] * 7 + 3
    w2 = m(x2) / x2
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[1, 2] = False
    torch.testing.assert_close(w2[mask], w[mask], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------


def ema_ref(m: EMA, x: torch.Tensor, cross: bool = True) -> torch.Tensor:
    """Per image and group: X1 = GN(X * sig(f^h) * sig(f^w)), X2 = conv3x3(X);
    W = softmax_c(mean X1) . X2 + softmax_c(mean X2) . X1;  Y = X * sig(W).
    ``cross=False`` pairs each descriptor with its own branch instead (not the paper's module)."""
    n, c, h, w = x.shape
    cg = c // m.groups
    w1, b1 = m.conv1x1.weight.double().flatten(1), m.conv1x1.bias.double()
    w3, b3 = m.conv3x3.weight.double(), m.conv3x3.bias.double()
    gamma, beta = m.gn.weight.double(), m.gn.bias.double()
    out = torch.empty_like(x)
    for i in range(n):
        for k in range(m.groups):
            xg = x[i, k * cg : (k + 1) * cg]  # cg, h, w
            f = w1 @ torch.cat([xg.mean(2), xg.mean(1)], dim=1) + b1[:, None]  # cg, h + w
            t = xg * torch.sigmoid(f[:, :h])[:, :, None] * torch.sigmoid(f[:, h:])[:, None, :]
            mu = t.mean((1, 2), keepdim=True)
            var = ((t - mu) ** 2).mean((1, 2), keepdim=True)
            x1 = (t - mu) / torch.sqrt(var + m.gn.eps) * gamma[:, None, None] + beta[:, None, None]
            x2 = conv_ref(xg[None], w3, b3)[0]
            a1 = torch.softmax(x1.mean((1, 2)), 0)
            a2 = torch.softmax(x2.mean((1, 2)), 0)
            p1, p2 = (x2, x1) if cross else (x1, x2)
            wmap = (a1 @ p1.reshape(cg, -1) + a2 @ p2.reshape(cg, -1)).reshape(h, w)
            out[i, k * cg : (k + 1) * cg] = xg * torch.sigmoid(wmap)
    return out


@pytest.mark.parametrize("channels,size", [(64, (9, 13)), (96, (1, 1)), (48, (5, 1)), (256, (4, 6))])
def test_ema_matches_paper(channels, size):
    m = to64(activate(EMA(channels))).train()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
        x = torch.randn(2, channels, *size, dtype=torch.float64)
        y = m(x)
        torch.testing.assert_close(y, ema_ref(m, x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(m.eval()(x), y, rtol=0, atol=0)  # no batch statistics anywhere
        if size != (1, 1):  # the cross pairing of descriptors and maps matters
            assert rel_err(ema_ref(m, x, cross=False), y) > 1e-3


def test_ema_groups_rule():
    groups = {c: EMA(c).groups for c in (16, 24, 32, 48, 64, 80, 96, 128, 256, 320, 1024)}
    assert groups == {16: 16, 24: 24, 32: 32, 48: 24, 64: 32, 80: 20, 96: 32, 128: 32, 256: 32, 320: 32, 1024: 32}
    assert EMA(256, groups=8).groups == 8 and EMA(256, groups=8).conv3x3.in_channels == 32
    with pytest.raises(ValueError, match=r"EMA: argument 'groups' must divide channels=96, got 64"):
        EMA(96, groups=64)
    # parameters per group width cg: 1x1 conv cg^2 + cg, 3x3 conv 9 cg^2 + cg, GroupNorm 2 cg
    cg = 256 // 32
    assert sum(p.numel() for p in EMA(256).parameters()) == 10 * cg * cg + 4 * cg


@pytest.mark.parametrize("cls", [EMA, ECA, SimAM])
def test_training_is_per_image_without_batchnorm(cls):
    """No batch statistics (EMA's GroupNorm is per image): in training too, an image's output does not depend on its batch."""
    m = activate(cls(64)).train()
    x = torch.randn(3, 64, 7, 9)
    with torch.no_grad():
        batched = m(x)
        for i in range(3):
            torch.testing.assert_close(batched[i : i + 1], m(x[i : i + 1]), rtol=1e-5, atol=1e-6)


def test_ema_gate_is_one_map_per_group():
    m = activate(EMA(64)).eval()
    seen = []
    m.gate.register_forward_hook(lambda mod, i, o: seen.append(o))
    x = torch.randn(2, 64, 5, 7)
    y = m(x)
    assert seen[0].shape == (2, 32, 5, 7)
    torch.testing.assert_close(y, x * seen[0].repeat_interleave(2, dim=1))


# --------------------------------------------------------------------------------------
# GAM
# --------------------------------------------------------------------------------------


def gam_ref(m: GAM, x: torch.Tensor, training: bool, channel_sigmoid: bool = True) -> torch.Tensor:
    """M_c = sigmoid(perm^-1(MLP(perm x))); x' = M_c x; M_s = sigmoid(BN(conv7(relu(BN(conv7 x'))))); y = M_s x'.
    ``channel_sigmoid=False`` is the widely copied snippet (raw MLP output as the channel weight)."""
    fc0, fc1 = m.channel_mlp[0], m.channel_mlp[2]
    v = x.permute(0, 2, 3, 1)  # N, H, W, C
    v = torch.relu(v @ fc0.weight.double().flatten(1).T + fc0.bias.double()) @ fc1.weight.double().flatten(1).T + fc1.bias.double()
    mc = v.permute(0, 3, 1, 2)
    x = x * (torch.sigmoid(mc) if channel_sigmoid else mc)
    conv_a, bn_a, _, conv_b, bn_b = m.spatial
    s = torch.relu(bn_ref(conv_ref(x, conv_a.weight.double()), bn_a, training))
    s = bn_ref(conv_ref(s, conv_b.weight.double()), bn_b, training)
    return x * torch.sigmoid(s)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("size", [(9, 13), (1, 1), (3, 1)])
def test_gam_matches_paper(mode, size):
    m = to64(activate(GAM(32))).train(mode == "train")
    assert m.rd_channels == 8 and m.spatial[0].kernel_size == (7, 7)
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    ref = gam_ref(m, x, training=mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)
    if size == (9, 13):  # the sigmoid of the channel sub-module matters
        assert rel_err(gam_ref(m, x, training=mode == "train", channel_sigmoid=False), ref) > 1e-2


def test_gam_sizes_and_parameters():
    m = GAM(256)
    assert m.rd_channels == 64
    mlp = 2 * 256 * 64 + 64 + 256
    convs = 2 * 256 * 64 * 49
    norms = 2 * 64 + 2 * 256
    assert sum(p.numel() for p in m.parameters()) == mlp + convs + norms
    assert all(conv.bias is None for conv in (m.spatial[0], m.spatial[3]))  # BatchNorm follows
    assert GAM(16).rd_channels == 8 and GAM(64, rd_channels=4).rd_channels == 4
    assert GAM(32, k_size=3).spatial[0].kernel_size == (3, 3)


def test_gam_trains_at_batch1_1x1_where_plain_batchnorm_fails():
    x = torch.randn(1, 32, 1, 1, requires_grad=True)
    m = GAM(32).train()
    weighted_loss(m(x)).backward()
    assert_finite(x.grad)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        GAM(32, norm_layer=nn.BatchNorm2d).train()(x)


# --------------------------------------------------------------------------------------
# Triplet attention
# --------------------------------------------------------------------------------------


def triplet_ref(m: TripletAttention, x: torch.Tensor, training: bool, zpool_order=("max", "mean")) -> torch.Tensor:
    """The paper's rotations: permute x so that the reduced axis comes first, Z-pool it, k x k conv + BN +
    sigmoid over the remaining plane, multiply, rotate back; average the three branches."""

    def branch(t, seq):  # t: N, A, P, Q -> gate over the (P, Q) plane, times t
        pools = {"max": t.max(1, keepdim=True).values, "mean": t.mean(1, keepdim=True)}
        z = torch.cat([pools[k] for k in zpool_order], dim=1)
        conv, bn = seq
        return t * torch.sigmoid(bn_ref(conv_ref(z, conv.weight.double()), bn, training))

    y_cw = branch(x.permute(0, 2, 1, 3), m.conv_cw).permute(0, 2, 1, 3)  # rotate H into the channel axis
    y_hc = branch(x.permute(0, 3, 2, 1), m.conv_hc).permute(0, 3, 2, 1)  # rotate W into the channel axis
    y_hw = branch(x, m.conv_hw)
    return (y_cw + y_hc + y_hw) / 3


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 16, 9, 13), (3, 24, 5, 1), (2, 8, 1, 1), (1, 12, 11, 4)])
def test_triplet_matches_paper(mode, shape):
    m = to64(activate(TripletAttention(shape[1]))).train(mode == "train")
    with torch.no_grad():
        for seq in (m.conv_cw, m.conv_hc, m.conv_hw):
            seq[0].weight.copy_(torch.randn_like(seq[0].weight) * 0.3)  # distinct kernels per branch
    x = torch.randn(shape, dtype=torch.float64)
    ref = triplet_ref(m, x, training=mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)
    if shape == (2, 16, 9, 13):  # the order of the Z-pool maps matters (the kernel's input channels)
        assert rel_err(triplet_ref(m, x, training=mode == "train", zpool_order=("mean", "max")), ref) > 1e-3


def test_triplet_kernel_orientation_matters():
    """A kernel that is not symmetric distinguishes the (C, W) plane from (W, C): the module's first
    branch must be the paper's, not its transpose."""
    m = to64(activate(TripletAttention(16))).eval()
    x = torch.randn(2, 16, 9, 13, dtype=torch.float64)
    with torch.no_grad():
        m.conv_cw[0].weight.copy_(torch.randn_like(m.conv_cw[0].weight))
        y = m(x)
        torch.testing.assert_close(y, triplet_ref(m, x, training=False), rtol=1e-10, atol=1e-12)
        m.conv_cw[0].weight.copy_(m.conv_cw[0].weight.transpose(2, 3).clone())
        assert rel_err(m(x), y) > 1e-3


def test_triplet_parameters_and_gates():
    m = TripletAttention(256)
    assert sum(p.numel() for p in m.parameters()) == 3 * (2 * 49 + 2)  # three 2->1 7x7 convs + BatchNorm(1)
    seen = {}
    for name in ("gate_cw", "gate_hc", "gate_hw"):
        getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, o))
    x = torch.randn(2, 256, 5, 7)
    y = m.eval()(x)
    assert seen["gate_cw"].shape == (2, 256, 1, 7)
    assert seen["gate_hc"].shape == (2, 256, 5, 1)
    assert seen["gate_hw"].shape == (2, 1, 5, 7)
    torch.testing.assert_close(y, x * (seen["gate_cw"] + seen["gate_hc"] + seen["gate_hw"]) / 3)


def test_triplet_trains_at_batch1_1x1_where_plain_batchnorm_fails():
    x = torch.randn(1, 16, 1, 1, requires_grad=True)
    weighted_loss(TripletAttention(16).train()(x)).backward()
    assert_finite(x.grad)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        TripletAttention(16, norm_layer=nn.BatchNorm2d).train()(x)
