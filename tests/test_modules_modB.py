"""Paper-faithfulness of SK, Shuffle Attention, SGE, ELA, MLCA, CPCA and LSKA.

Each module is checked against an independent, straightforward restatement of its paper's
equations in float64 (loops, einsum, explicit pooling), plus the behaviour its docstring
promises where it deviates from the paper or from common copies. The shared contract (shapes,
dtypes, batch 1, export) is tested for every registered module in test_modules.py/test_export.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _helpers import (  # noqa: F401
    _registry_does_not_leak,
    activate,
    assert_finite,
    reference_batch_norm,
    rel_err,
    weighted_loss,
)

from yolo_attention import SKAttention
from yolo_attention.modules.helpers import largest_divisor


def _grad_step(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    y = m(x)
    weighted_loss(y).backward()
    assert_finite(x.grad, "input gradient")
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    return y


def test_largest_divisor():
    assert [largest_divisor(c, 32) for c in (16, 24, 32, 48, 96, 256, 1024, 7)] == [16, 24, 32, 24, 32, 32, 32, 7]
    assert [largest_divisor(c, 64, step=2) for c in (16, 24, 32, 96, 256, 1024, 30)] == [8, 12, 16, 48, 64, 64, 15]
    for c in range(2, 200, 2):
        g = largest_divisor(c, 64, step=2)
        assert c % (2 * g) == 0 and all(c % (2 * h) for h in range(g + 1, 65))


# --------------------------------------------------------------------------------------
# SK: Selective Kernel Networks (arXiv:1903.06586)
# --------------------------------------------------------------------------------------


def _sk_reference(m: SKAttention, x: torch.Tensor, training: bool, softmax_dim: int = 1) -> torch.Tensor:
    """Paper: U_m = relu(BN(conv3x3 dilation m+1, G groups)); s = GAP(sum U_m); z = relu(W s + b);
    a = softmax over branches of (A_m z); V = sum a_m U_m."""
    feats = []
    for mdx, branch in enumerate(m.branches):
        conv, bn = branch[0], branch[1]
        d = mdx + 1
        assert conv.dilation == (d, d) and conv.kernel_size == (3, 3) and conv.groups == m.groups
        feats.append(torch.relu(reference_batch_norm(F.conv2d(x, conv.weight, padding=d, dilation=d, groups=m.groups), bn, training)))
    s = sum(feats).mean((2, 3))  # N, C
    z = torch.relu(s @ m.fc1.weight.flatten(1).T + m.fc1.bias)  # N, d
    logits = (z @ m.fc2.weight.flatten(1).T).view(x.shape[0], m.num_branches, m.channels)  # N, M, C
    a = torch.softmax(logits, dim=softmax_dim)
    return sum(a[:, i, :, None, None] * feats[i] for i in range(m.num_branches))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("channels,branches", [(64, 2), (48, 3)])
def test_sk_matches_paper(mode, channels, branches):
    m = activate(SKAttention(channels, num_branches=branches)).double().train(mode == "train")
    with torch.no_grad():
        m.fc2.weight.mul_(4)  # sharper selection, so a wrong softmax dimension shows
    x = torch.randn(3, channels, 9, 11, dtype=torch.float64)
    ref = _sk_reference(m, x, training=mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)
    # the restatement is discriminating: a softmax over the channels is a different function
    wrong = _sk_reference(m, x, training=mode == "train", softmax_dim=2)
    assert rel_err(wrong, ref) > 0.05


def test_sk_defaults_follow_paper():
    m = SKAttention(256)
    assert m.num_branches == 2 and m.groups == 32 and m.rd_channels == 32  # d = max(256/16, 32)
    assert SKAttention(1024).rd_channels == 64  # d = max(1024/16, 32)
    assert [b[0].dilation for b in m.branches] == [(1, 1), (2, 2)]  # 3x3 and "5x5" as dilated 3x3
    assert m.fc2.bias is None and m.fc2.out_channels == 2 * 256
    # groups clamped to a divisor of C
    assert [SKAttention(c).groups for c in (16, 24, 48, 96)] == [16, 24, 24, 32]
    for c in (16, 24, 48, 96):
        assert SKAttention(c).branches[0][0].weight.shape == (c, c // SKAttention(c).groups, 3, 3)


def test_sk_selection_weights_sum_to_one_across_branches():
    m = activate(SKAttention(32, num_branches=3)).eval()
    seen = {}
    m.select.register_forward_hook(lambda mod, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        m(torch.randn(2, 32, 7, 5))
    a = seen["a"].view(2, 3, 32)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 32))
    assert (a.sum(2) - 1).abs().max() > 0.1  # not normalised over channels


def test_sk_identical_branches_give_the_branch_output():
    """If every branch computes the same map, the weights (summing to 1 per channel) cannot change it."""
    m = activate(SKAttention(32)).eval()
    with torch.no_grad():
        b0, b1 = m.branches
        b1[0].dilation, b1[0].padding = (1, 1), (1, 1)
        b1[0].weight.copy_(b0[0].weight)
        b1[1].load_state_dict(b0[1].state_dict())
        m.fc2.weight.normal_(0, 3)
        x = torch.randn(2, 32, 6, 9)
        torch.testing.assert_close(m(x), b0(x), rtol=1e-5, atol=1e-6)


def test_sk_no_batchnorm_on_the_pooled_vector():
    """The paper's BN after the squeeze fails in training at batch 1; this module trains there."""
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm2d(32).train()(torch.randn(1, 32, 1, 1))  # what the paper's BN on z would do
    m = SKAttention(64).train()
    squeeze = [m.fc1, m.act, m.fc2, m.select]
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for s in squeeze for mod in s.modules())
    _grad_step(m, torch.randn(1, 64, 7, 7))


def test_sk_eval_equals_paper_with_folded_batchnorm():
    """The paper's z = relu(BN(W s)) in eval mode is relu(W' s + b') with W' = g W / sqrt(v + eps),
    b' = beta - g m / sqrt(v + eps): the bias form loses nothing at inference."""
    torch.manual_seed(1)
    c, d = 64, 32
    w = torch.randn(d, c, dtype=torch.float64) * 0.2
    bn = activate(nn.BatchNorm1d(d)).double().eval()
    m = activate(SKAttention(c)).double().eval()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        m.fc1.weight.copy_((scale[:, None] * w).view(d, c, 1, 1))
        m.fc1.bias.copy_(bn.bias - scale * bn.running_mean)
    x = torch.randn(2, c, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        feats = [b(x) for b in m.branches]
        s = sum(feats).mean((2, 3))
        z_paper = torch.relu(bn(s @ w.T))
        torch.testing.assert_close(m.act(m.fc1(s[:, :, None, None])).flatten(1), z_paper)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sk_low_precision_selection_stays_normalised(dtype):
    m = activate(SKAttention(32)).to(dtype).eval()
    with torch.no_grad():
        m.fc2.weight.mul_(50)  # saturating logits
        y = m(torch.randn(1, 32, 5, 5).to(dtype))
    assert y.dtype == dtype
    assert_finite(y)


# --------------------------------------------------------------------------------------
# Shuffle Attention (arXiv:2102.00240)
# --------------------------------------------------------------------------------------


def _shuffle_reference(m, x: torch.Tensor, shuffle: bool = True) -> torch.Tensor:
    """Paper, group by group: X'_k1 = sigmoid(W1 mean(X_k1) + b1) X_k1; X'_k2 = sigmoid(W2 GN(X_k2) + b2) X_k2;
    concatenate the groups; channel shuffle with 2 groups."""
    n, c_all, h, w = x.shape
    c = m.group_channels
    w1, b1, w2, b2 = (p[None, :, None, None] for p in (m.cweight, m.cbias, m.sweight, m.sbias))
    parts = []
    for k in range(m.groups):
        xk = x[:, 2 * c * k : 2 * c * (k + 1)]
        x1, x2 = xk[:, :c], xk[:, c:]
        y1 = torch.sigmoid(w1 * x1.mean((2, 3), keepdim=True) + b1) * x1
        mu = x2.mean((2, 3), keepdim=True)
        var = x2.var((2, 3), unbiased=False, keepdim=True)
        gn = (x2 - mu) / torch.sqrt(var + m.gn.eps) * m.gn.weight[None, :, None, None] + m.gn.bias[None, :, None, None]
        y2 = torch.sigmoid(w2 * gn + b2) * x2
        parts += [y1, y2]
    cat = torch.cat(parts, 1)
    if not shuffle:
        return cat
    out = torch.empty_like(cat)
    for k in range(2):
        for j in range(c_all // 2):
            out[:, 2 * j + k] = cat[:, k * (c_all // 2) + j]
    return out


@pytest.mark.parametrize("channels,groups", [(256, 64), (48, 4), (24, 64)])
def test_shuffle_matches_paper(channels, groups):
    from yolo_attention import ShuffleAttention

    m = activate(ShuffleAttention(channels, groups=groups)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 1)
    x = torch.randn(2, channels, 7, 6, dtype=torch.float64)
    ref = _shuffle_reference(m, x)
    with torch.no_grad():
        for mode in (True, False):  # GN has no running statistics: train == eval
            torch.testing.assert_close(m.train(mode)(x), ref, rtol=1e-10, atol=1e-12)
    assert rel_err(_shuffle_reference(m, x, shuffle=False), ref) > 0.5  # the shuffle is checked


def test_shuffle_groups_and_parameters():
    from yolo_attention import ShuffleAttention

    m = ShuffleAttention(256)
    assert m.groups == 64 and m.group_channels == 2  # paper G = 64: c = C / 2G
    assert sum(p.numel() for p in m.parameters()) == 6 * 2  # W1, b1, W2, b2 and GN's affine, shared by groups
    assert [ShuffleAttention(c).groups for c in (16, 24, 32, 96, 1024)] == [8, 12, 16, 48, 64]
    assert torch.equal(m.cweight, torch.zeros(2)) and torch.equal(m.cbias, torch.ones(2))  # authors' init
    with pytest.raises(ValueError, match=r"ShuffleAttention: argument 'channels' must be even.*15"):
        ShuffleAttention(15)


def test_shuffle_fresh_module_gates_at_sigmoid_one():
    """W = 0, b = 1 at init: every gate is sigmoid(1), so the output is the shuffled input times sigmoid(1)."""
    from yolo_attention import ShuffleAttention

    m = ShuffleAttention(32, groups=4).eval()
    x = torch.randn(2, 32, 5, 4)
    with torch.no_grad():
        y = m(x)
    shuffled = x.reshape(2, 2, 16, 5, 4).transpose(1, 2).reshape(2, 32, 5, 4)
    torch.testing.assert_close(y, shuffled * torch.sigmoid(torch.tensor(1.0)))


def test_shuffle_1x1_map_is_finite_and_trains():
    """GN over a single position maps to its bias (no NaN): the spatial gate is constant there."""
    from yolo_attention import ShuffleAttention

    m = activate(ShuffleAttention(32, groups=4)).train()
    y = _grad_step(m, torch.randn(1, 32, 1, 1))
    assert_finite(y)


# --------------------------------------------------------------------------------------
# SGE: Spatial Group-wise Enhance (arXiv:1905.09646)
# --------------------------------------------------------------------------------------


def _sge_reference(m, x: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Paper, group by group and position by position: c_i = g . x_i with g the mean feature;
    a_i = gamma (c_i - mu) / (sigma + eps) + beta (population sigma); y_i = x_i sigmoid(a_i)."""
    n, c, h, w = x.shape
    cg = c // m.groups
    out = torch.empty_like(x)
    for b in range(n):
        for k in range(m.groups):
            xk = x[b, k * cg : (k + 1) * cg].reshape(cg, h * w)  # features x_i as columns
            g = xk.mean(1)
            sim = torch.stack([g @ xk[:, i] for i in range(h * w)])
            mu = sim.mean()
            sigma = sim.std(unbiased=True) if unbiased else torch.sqrt(((sim - mu) ** 2).mean())
            a = m.weight[k] * (sim - mu) / (sigma + 1e-5) + m.bias[k]
            out[b, k * cg : (k + 1) * cg] = (xk * torch.sigmoid(a)).reshape(cg, h, w)
    return out


@pytest.mark.parametrize("channels,groups,size", [(64, 8, (5, 7)), (24, 64, (3, 3)), (32, 4, (1, 6))])
def test_sge_matches_paper(channels, groups, size):
    from yolo_attention import SpatialGroupEnhance

    m = SpatialGroupEnhance(channels, groups=groups).double()
    with torch.no_grad():
        m.weight.normal_(0, 2)
        m.bias.normal_(0, 1)
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    ref = _sge_reference(m, x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)
        # the authors' unbiased std is a different function on small maps
        assert (_sge_reference(m, x, unbiased=True) - ref).abs().max() > 1e-3


def test_sge_defaults_and_groups():
    from yolo_attention import SpatialGroupEnhance

    m = SpatialGroupEnhance(256)
    assert m.groups == 64 and torch.equal(m.weight, torch.zeros(64)) and torch.equal(m.bias, torch.ones(64))
    assert [SpatialGroupEnhance(c).groups for c in (16, 24, 32, 96, 1024)] == [16, 24, 32, 48, 64]


def test_sge_1x1_and_constant_groups_are_finite():
    """At one position (or a constant similarity map) the paper gives a = beta; the unbiased std of the
    authors' code gives NaN there."""
    from yolo_attention import SpatialGroupEnhance

    with pytest.warns(UserWarning, match="degrees of freedom"):
        assert torch.isnan(torch.tensor([[2.0]]).std(dim=1)).all()  # what Tensor.std does at m = 1
    m = SpatialGroupEnhance(32, groups=8).double().train()
    with torch.no_grad():
        m.weight.fill_(3.0)
        m.bias.normal_()
    x = torch.randn(2, 32, 1, 1, dtype=torch.float64)
    y = _grad_step(m, x)
    torch.testing.assert_close(y, x * torch.sigmoid(m.bias).repeat_interleave(4)[None, :, None, None])
    assert m.weight.grad.abs().max() == 0  # (c - mu) = 0: gamma has no effect at one position
    m.zero_grad()
    # every position identical (float64: in float32 the rounding noise of c - mu is amplified by 1/eps)
    const = torch.ones(1, 32, 4, 5, dtype=torch.float64) * torch.randn(1, 32, 1, 1, dtype=torch.float64)
    y = _grad_step(m, const)
    gates = torch.sigmoid(m.bias).repeat_interleave(4)[None, :, None, None]
    torch.testing.assert_close(y, const * gates, atol=1e-9, rtol=1e-9)


def test_sge_low_precision_statistics():
    """bfloat16 input, statistics in float32: a nearly constant map is not turned into noise."""
    from yolo_attention import SpatialGroupEnhance

    m = SpatialGroupEnhance(32, groups=8).eval()
    with torch.no_grad():
        m.weight.fill_(2.0)
    x = (3 + 0.05 * torch.randn(2, 32, 9, 9)).to(torch.bfloat16)  # the same (rounded) input for both
    with torch.no_grad():
        y32 = m(x.float())
        y16 = m.to(torch.bfloat16)(x)
    assert rel_err(y16, y32) < 0.01  # output rounding only (bfloat16 has 8 mantissa bits)


# --------------------------------------------------------------------------------------
# ELA: Efficient Local Attention (arXiv:2403.01123)
# --------------------------------------------------------------------------------------


def _conv1d_loops(z: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Zero-padded 'same' grouped 1D convolution written out tap by tap."""
    n, c, length = z.shape
    k = weight.shape[-1]
    per = c // groups
    zp = F.pad(z, (k // 2, k // 2))
    out = torch.zeros_like(z)
    for o in range(c):
        g = o // per
        for i in range(per):
            for t in range(k):
                out[:, o] += weight[o, i, t] * zp[:, g * per + i, t : t + length]
    return out


def _group_norm_ref(z: torch.Tensor, gn: nn.GroupNorm) -> torch.Tensor:
    n, c, length = z.shape
    zg = z.reshape(n, gn.num_groups, -1)
    mu = zg.mean(2, keepdim=True)
    var = ((zg - mu) ** 2).mean(2, keepdim=True)
    zn = ((zg - mu) / torch.sqrt(var + gn.eps)).reshape(n, c, length)
    return zn * gn.weight[None, :, None] + gn.bias[None, :, None]


def _ela_reference(m, x: torch.Tensor) -> torch.Tensor:
    """Paper: y_h = sigmoid(GN(F(mean_W x))), y_w = sigmoid(GN(F(mean_H x))), same F and GN; Y = x y_h y_w."""
    z_h, z_w = x.mean(3), x.mean(2)
    y_h = torch.sigmoid(_group_norm_ref(_conv1d_loops(z_h, m.conv.weight, m.groups), m.gn))
    y_w = torch.sigmoid(_group_norm_ref(_conv1d_loops(z_w, m.conv.weight, m.groups), m.gn))
    return x * y_h[:, :, :, None] * y_w[:, :, None, :]


@pytest.mark.parametrize(
    "variant,channels,size", [("T", 32, (6, 9)), ("B", 48, (7, 5)), ("S", 32, (1, 8)), ("L", 64, (9, 1))]
)
def test_ela_matches_paper(variant, channels, size):
    from yolo_attention import ELA

    m = activate(ELA(channels, variant=variant)).double()
    with torch.no_grad():
        m.gn.weight.normal_(1, 0.5)
        m.gn.bias.normal_(0, 0.5)
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _ela_reference(m, x), rtol=1e-10, atol=1e-12)


def test_ela_variants_follow_the_paper_table():
    from yolo_attention import ELA

    expected = {"T": (5, 256, 32), "B": (7, 256, 16), "S": (5, 32, 16), "L": (7, 32, 16)}
    for v, (k, groups, gn) in expected.items():
        m = ELA(256, variant=v)
        assert (m.k_size, m.groups, m.gn_groups) == (k, groups, gn), v
        assert m.conv.weight.shape == (256, 256 // groups, k) and m.conv.bias is None
    assert ELA(256).variant == "B" and ELA(256, variant="ela-s").variant == "S"
    m = ELA(256, variant="T", k_size=9, groups=64, gn_groups=8)  # explicit values override the variant
    assert (m.k_size, m.groups, m.gn_groups) == (9, 64, 8)
    # clamping to divisors of C
    assert ELA(24, variant="T").gn_groups == 24
    assert ELA(12, variant="S").groups == 1 and ELA(40, variant="S").groups == 5
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in ELA(64).modules())


def test_ela_shares_conv_and_norm_between_axes():
    """One F and one GN for rows and columns: transposing the input transposes the output."""
    from yolo_attention import ELA

    m = activate(ELA(32, variant="S")).eval()
    x = torch.randn(2, 32, 7, 11)
    with torch.no_grad():
        torch.testing.assert_close(m(x.transpose(2, 3)), m(x).transpose(2, 3), rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in m.parameters()) == 32 * 8 * 5 + 2 * 32  # one conv, one GN affine


def test_ela_1x1_single_value_groups():
    """C = 16 with 16 norm groups at a 1x1 map: one value per group normalises to 0, gates sigmoid(bias)^2."""
    from yolo_attention import ELA

    m = activate(ELA(16)).train()
    with torch.no_grad():
        m.gn.bias.normal_()
    x = torch.randn(1, 16, 1, 1)
    y = _grad_step(m, x)
    torch.testing.assert_close(y, x * torch.sigmoid(m.gn.bias)[None, :, None, None] ** 2)
    with pytest.raises(ValueError, match="Expected more than 1 value"):  # what nn.GroupNorm would do
        nn.GroupNorm(16, 16)(torch.randn(1, 16, 1))


# --------------------------------------------------------------------------------------
# MLCA: Mixed Local Channel Attention (EAAI 2023, DOI 10.1016/j.engappai.2023.106442)
# --------------------------------------------------------------------------------------


def _conv1d_seq(seq: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 -> 1 channel zero-padded 'same' convolution of (N, L) sequences, tap by tap."""
    k = weight.numel()
    padded = F.pad(seq, (k // 2, k // 2))
    return sum(weight.flatten()[t] * padded[:, t : t + seq.shape[1]] for t in range(k))


def _mlca_reference(m, x: torch.Tensor, per_cell_conv: bool = False) -> torch.Tensor:
    """Paper/authors: LAP to s x s (PyTorch's adaptive pooling), g = mean of the cells, a_g = sigmoid(ECA conv(g)),
    a_l = sigmoid(conv' over the cell-major sequence), A = (1-l) a_g + l a_l, y = x * UNAP_{HxW}(A)."""
    n, c, h, w = x.shape
    s = m.local_size
    cells = F.adaptive_avg_pool2d(x, s)  # N, C, s, s
    a_g = torch.sigmoid(_conv1d_seq(cells.mean((2, 3)), m.conv.weight))  # N, C
    seq = cells.permute(0, 2, 3, 1).reshape(n, s * s * c)  # cell after cell, C channels each
    if per_cell_conv:  # the plausible misreading: one ECA per cell, padded at the cell's borders
        conv = torch.cat([_conv1d_seq(seq[:, p * c : (p + 1) * c], m.conv_local.weight) for p in range(s * s)], 1)
    else:
        conv = _conv1d_seq(seq, m.conv_local.weight)
    a_l = torch.sigmoid(conv).reshape(n, s, s, c).permute(0, 3, 1, 2)
    att = (1 - m.local_weight) * a_g[:, :, None, None] + m.local_weight * a_l
    return x * F.adaptive_avg_pool2d(att, (h, w))


@pytest.mark.parametrize("size", [(1, 1), (3, 4), (5, 5), (10, 15), (7, 13), (33, 47), (1, 9)])
def test_mlca_matches_paper_at_any_size(size):
    from yolo_attention import MLCA

    m = MLCA(32).double()
    with torch.no_grad():
        m.conv.weight.normal_(0, 1)
        m.conv_local.weight.normal_(0, 1)
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    ref = _mlca_reference(m, x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)
    if size == (10, 15):  # the single sequence crosses cell borders: a per-cell ECA differs
        assert (_mlca_reference(m, x, per_cell_conv=True) - ref).abs().max() > 1e-3


def test_mlca_pool_matrices_are_adaptive_pooling():
    from yolo_attention.modules.mlca import adaptive_pool_matrix

    for n_in in (1, 2, 4, 5, 7, 13, 40):
        for n_out in (1, 3, 5, 9):
            x = torch.randn(3, n_in, dtype=torch.float64)
            ref = F.adaptive_avg_pool1d(x[:, None], n_out)[:, 0]
            torch.testing.assert_close(x @ adaptive_pool_matrix(n_in, n_out, x).T, ref)


def test_mlca_kernel_rule_and_mix():
    from yolo_attention import MLCA
    from yolo_attention.modules.mlca import eca_kernel_size

    assert [eca_kernel_size(c) for c in (16, 32, 64, 128, 256, 512, 1024)] == [3, 3, 3, 5, 5, 5, 5]
    assert MLCA(256).k_size == 5 and MLCA(256, k_size=7).conv_local.kernel_size == (7,)
    assert MLCA(256).local_size == 5 and MLCA(256).local_weight == 0.5
    # lambda = 0: the global ECA gate alone (s divides H and W: g is the global mean)
    m = MLCA(32, local_weight=0.0).double()
    x = torch.randn(2, 32, 10, 15, dtype=torch.float64)
    eca = torch.sigmoid(_conv1d_seq(x.mean((2, 3)), m.conv.weight))
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * eca[:, :, None, None])
    assert sum(p.numel() for p in MLCA(256).parameters()) == 2 * 5


# --------------------------------------------------------------------------------------
# CPCA: Channel Prior Convolutional Attention (arXiv:2306.05196)
# --------------------------------------------------------------------------------------


def _depthwise_loops(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """'same' zero-padded depthwise convolution, tap by tap."""
    kh, kw = conv.kernel_size
    h, w = x.shape[2:]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = conv.bias[None, :, None, None].expand_as(x).clone()
    for u in range(kh):
        for v in range(kw):
            out = out + conv.weight[None, :, 0, u, v, None, None] * xp[:, :, u : u + h, v : v + w]
    return out


def _cpca_reference(m, x: torch.Tensor, authors_ca: bool = False) -> torch.Tensor:
    """Paper: F_c = sigmoid(MLP(avg) + MLP(max)) F; D = dw5x5(F_c); SA = 1x1(D + sum_k dw_kx1(dw_1xk(D)));
    out = SA F_c."""

    fc1, fc2 = m.channel_prior.fc1, m.channel_prior.fc2

    def mlp(v):  # v: N, C
        hidden = torch.relu(v @ fc1.weight.flatten(1).T + fc1.bias)
        return hidden @ fc2.weight.flatten(1).T + fc2.bias

    avg, mx = x.mean((2, 3)), x.amax((2, 3))
    ca = torch.sigmoid(mlp(avg)) + torch.sigmoid(mlp(mx)) if authors_ca else torch.sigmoid(mlp(avg) + mlp(mx))
    f = x * ca[:, :, None, None]
    d = _depthwise_loops(f, m.conv0)
    s = d + sum(_depthwise_loops(_depthwise_loops(d, first), second) for first, second in m.strips)
    sa = torch.einsum("oc,nchw->nohw", m.mix.weight.flatten(1), s) + m.mix.bias[None, :, None, None]
    return sa * f


@pytest.mark.parametrize("size", [(9, 13), (1, 1), (4, 23), (25, 3)])
def test_cpca_matches_paper(size):
    from yolo_attention import CPCA

    m = activate(CPCA(16)).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    ref = _cpca_reference(m, x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)
        # the authors' code sums two sigmoids (a gate in (0, 2)): a different function
        assert rel_err(_cpca_reference(m, x, authors_ca=True), ref) > 0.2


def test_cpca_layers_follow_paper():
    from yolo_attention import CPCA

    m = CPCA(256)
    assert m.rd_channels == 64  # r = 4
    assert m.conv0.kernel_size == (5, 5) and m.conv0.groups == 256
    kernels = [conv.kernel_size for strip in m.strips for conv in strip]
    assert kernels == [(1, 7), (7, 1), (1, 11), (11, 1), (1, 21), (21, 1)]
    assert all(conv.groups == 256 for strip in m.strips for conv in strip)
    assert m.mix.kernel_size == (1, 1) and m.mix.groups == 1
    # no normalisation anywhere: batch independent in training too
    assert not any(isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for mod in m.modules())


# --------------------------------------------------------------------------------------
# LSKA: Large Separable Kernel Attention (arXiv:2309.01439)
# --------------------------------------------------------------------------------------


def _strip_loops(x: torch.Tensor, conv: nn.Conv2d, dilation: int) -> torch.Tensor:
    """'same' depthwise 1 x k or k x 1 convolution with dilation, tap by tap."""
    kh, kw = conv.kernel_size
    horizontal = kh == 1
    k = kw if horizontal else kh
    pad = dilation * (k - 1) // 2
    h, w = x.shape[2:]
    xp = F.pad(x, (pad, pad, 0, 0) if horizontal else (0, 0, pad, pad))
    out = conv.bias[None, :, None, None].expand_as(x).clone()
    for t in range(k):
        o = t * dilation
        tap = conv.weight[:, 0].flatten(1)[:, t][None, :, None, None]
        out = out + tap * (xp[:, :, :, o : o + w] if horizontal else xp[:, :, o : o + h, :])
    return out


def _lska_reference(m, x: torch.Tensor) -> torch.Tensor:
    """Paper: A = 1x1(DW-D_{k'x1}(DW-D_{1xk'}(DW_{k0x1}(DW_{1xk0}(x))))); out = A * x."""
    from yolo_attention.modules.lska import LSKA_KERNELS

    spec = LSKA_KERNELS[m.k_size]
    a = _strip_loops(_strip_loops(x, m.conv0h, 1), m.conv0v, 1)
    a = _strip_loops(_strip_loops(a, m.conv_spatial_h, spec.dilation), m.conv_spatial_v, spec.dilation)
    a = torch.einsum("oc,nchw->nohw", m.conv1.weight.flatten(1), a) + m.conv1.bias[None, :, None, None]
    return a * x


@pytest.mark.parametrize("k_size", [7, 11, 23, 35, 41, 53])
def test_lska_matches_paper(k_size):
    from yolo_attention import LSKA

    m = activate(LSKA(8, k_size=k_size)).double()
    x = torch.randn(2, 8, 13, 30, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _lska_reference(m, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k_size", [7, 11, 23, 35, 41, 53])
def test_lska_decomposition_covers_exactly_k_by_k(k_size):
    """The impulse response of the separable chain (positive weights, no biases) is a k x k square."""
    from yolo_attention import LSKA

    m = LSKA(1, k_size=k_size).double()
    with torch.no_grad():
        for conv in (m.conv0h, m.conv0v, m.conv_spatial_h, m.conv_spatial_v):
            conv.weight.uniform_(0.5, 1.0)
            conv.bias.zero_()
        size = k_size + 10
        x = torch.zeros(1, 1, size, size, dtype=torch.float64)
        x[0, 0, size // 2, size // 2] = 1
        a = m.conv_spatial_v(m.conv_spatial_h(m.conv0v(m.conv0h(x))))[0, 0]
    rows, cols = (a.abs() > 0).any(1).nonzero().flatten(), (a.abs() > 0).any(0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == k_size and cols.max() - cols.min() + 1 == k_size
    assert rows.min() + k_size // 2 == size // 2  # centred: 'same' padding


def test_lska_defaults_and_kernel_table():
    from yolo_attention import LSKA

    m = LSKA(64)
    assert m.k_size == 11
    convs = (m.conv0h, m.conv0v, m.conv_spatial_h, m.conv_spatial_v)
    assert [c.kernel_size for c in convs] == [(1, 3), (3, 1), (1, 5), (5, 1)]
    assert m.conv_spatial_h.dilation[1] == 2 and m.conv_spatial_v.dilation[0] == 2  # along the kernel's long axis
    m = LSKA(64, k_size=53)
    assert m.conv0h.kernel_size == (1, 5) and m.conv_spatial_v.kernel_size == (17, 1)
    assert m.conv_spatial_v.dilation[0] == 3
    with pytest.raises(ValueError, match=r"LSKA: argument 'k_size' must be one of .*\(7, 11, 23, 35, 41, 53\).*got 9"):
        LSKA(64, k_size=9)


def test_mlca_has_no_arxiv_id_and_cites_the_title():
    """MLCA exists only as a journal paper (DOI 10.1016/j.engappai.2023.106442): no 'arXiv:None' anywhere."""
    from yolo_attention import get_attention_info

    info = get_attention_info("mlca")
    assert info.arxiv is None and info.citation == "Mixed local channel attention for object detection"
    assert get_attention_info("se").citation == "Squeeze-and-Excitation Networks, arXiv:1709.01507"
