"""Paper faithfulness of the context / self-attention modules: GC, non-local, criss-cross,
polarized self-attention, BoTNet MHSA and DAT's deformable attention.

Each module is checked against an independent restatement of its paper's equations (einsum
or loops, float64), plus the documented deviations from common copies. The shared contract
(shapes, dtypes, export, ...) is in test_modules.py and test_export.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _helpers import (  # noqa: F401
    _registry_does_not_leak,
    activate,
    reference_batch_norm,
    rel_err,
    weighted_loss,
)

from yolo_attention import (
    MHSA,
    CrissCrossAttention,
    DeformableAttention,
    GlobalContext,
    NonLocalBlock,
    PolarizedSelfAttention,
)


def _conv1x1(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    out = torch.einsum("oc,nchw->nohw", conv.weight.flatten(1), t)
    return out if conv.bias is None else out + conv.bias[None, :, None, None]


def _layer_norm_channels(t: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    mean = t.mean(1, keepdim=True)
    var = t.var(1, unbiased=False, keepdim=True)
    return (t - mean) / torch.sqrt(var + ln.eps) * ln.weight[None, :, None, None] + ln.bias[None, :, None, None]


# --------------------------------------------------------------------------------------
# GC (arXiv:1904.11492)
# --------------------------------------------------------------------------------------


def _gc_transform(seq: nn.Sequential, c: torch.Tensor) -> torch.Tensor:
    """W2 relu(LN(W1 c + b1)) + b2 on pooled (N, C, 1, 1) vectors."""
    return _conv1x1(seq[3], torch.relu(_layer_norm_channels(_conv1x1(seq[0], c), seq[1])))


def _gc_reference(m: GlobalContext, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    if m.pool_type == "attn":
        logits = torch.einsum("c,nchw->nhw", m.conv_mask.weight.flatten(), x).reshape(n, h * w)
        a = torch.softmax(logits, dim=1).reshape(n, h, w)  # one distribution over the HW positions
        context = torch.einsum("nhw,nchw->nc", a, x)[:, :, None, None]
    else:
        context = x.mean((2, 3), keepdim=True)
    y = x
    if m.scale_transform is not None:
        y = y * torch.sigmoid(_gc_transform(m.scale_transform, context))
    if m.add_transform is not None:
        y = y + _gc_transform(m.add_transform, context)
    return y


@pytest.mark.parametrize("pool_type,fusion", [("attn", "add"), ("avg", "add"), ("attn", "scale"), ("attn", "both")])
def test_gc_matches_formula(pool_type, fusion):
    m = activate(GlobalContext(64, pool_type=pool_type, fusion=fusion)).double().eval()
    with torch.no_grad():
        m.conv_mask is None or m.conv_mask.weight.mul_(3)  # a peaked context distribution
        for shape in [(3, 64, 9, 11), (1, 64, 1, 1), (2, 64, 1, 7)]:
            x = torch.randn(shape, dtype=torch.float64)
            torch.testing.assert_close(m(x), _gc_reference(m, x), rtol=1e-10, atol=1e-10)


def test_gc_context_is_a_weighted_mean_over_positions():
    """On a map constant over space every distribution over positions pools the same vector a, so
    y = x + T(a) whatever the mask. A softmax over the wrong axis (the single mask channel: all
    weights 1, a sum) or a missing softmax breaks this."""
    m = activate(GlobalContext(32)).double().eval()
    with torch.no_grad():
        m.conv_mask.weight.mul_(5)
        for h, w in [(1, 1), (4, 9), (13, 2)]:
            a = torch.randn(2, 32, 1, 1, dtype=torch.float64)
            x = a.expand(2, 32, h, w) + 0.0 * torch.randn(2, 32, h, w, dtype=torch.float64)
            torch.testing.assert_close(m(x), x + _gc_transform(m.add_transform, a), rtol=1e-10, atol=1e-10)
        # the same test rejects a pooled sum (softmax over the 1-channel axis gives weights of 1)
        x = torch.randn(2, 32, 1, 1, dtype=torch.float64).expand(2, 32, 4, 9)
        as_sum = x + _gc_transform(m.add_transform, x.sum((2, 3), keepdim=True))
        assert rel_err(as_sum - x, m(x) - x) > 0.1


def test_gc_starts_as_identity_and_trains():
    m = GlobalContext(48)
    x = torch.randn(2, 48, 7, 5)
    for mode in (True, False):
        with torch.no_grad():
            torch.testing.assert_close(m.train(mode)(x), x, rtol=0, atol=0)
            xb = x.to(torch.bfloat16)
            torch.testing.assert_close(copy.deepcopy(m).to(torch.bfloat16)(xb), xb, rtol=0, atol=0)
    # the zeroed last conv gets a gradient, and after one step the block is no longer the identity
    m.train()
    weighted_loss(m(x)).backward()
    last = m.add_transform[3]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    with torch.no_grad():
        last.weight -= 0.5 * last.weight.grad
        assert rel_err(m(x), x) > 1e-4


def test_gc_mask_bias_would_cancel():
    """Why the mask conv has no bias: a constant added to every logit leaves the softmax unchanged."""
    m = activate(GlobalContext(32)).eval()
    assert m.conv_mask.bias is None
    x = torch.randn(2, 32, 6, 5)
    logits = m.conv_mask(x).flatten(2)
    torch.testing.assert_close(torch.softmax(logits + 3.7, 2), torch.softmax(logits, 2))


def test_gc_hidden_width():
    assert GlobalContext(256).rd_channels == 16  # C / 16 as in the paper
    assert GlobalContext(1024).rd_channels == 64
    assert GlobalContext(16).rd_channels == 8  # the authors' int(16 / 16) = 1: LayerNorm over one value
    assert GlobalContext(64, rd_channels=3).rd_channels == 3
    m = GlobalContext(8, rd_ratio=1 / 4, rd_divisor=1)
    assert m.rd_channels == 2 and m(torch.randn(1, 8, 3, 3)).shape == (1, 8, 3, 3)


# --------------------------------------------------------------------------------------
# Non-local block (arXiv:1711.07971)
# --------------------------------------------------------------------------------------


def _max_pool_ceil(x: torch.Tensor, p: int) -> torch.Tensor:
    """p x p max-pool with stride p that keeps a partial last window (pads with -inf, then blocks)."""
    n, c, h, w = x.shape
    hp, wp = -(-h // p) * p, -(-w // p) * p
    x = F.pad(x, (0, wp - w, 0, hp - h), value=float("-inf"))
    return x.reshape(n, c, hp // p, p, wp // p, p).amax((3, 5))


def _nonlocal_reference(m: NonLocalBlock, x: torch.Tensor, training: bool, scale: float | None = None) -> torch.Tensor:
    """z = BN(W_z y) + x,  y_i = sum_j softmax_j(s theta_i . phi_j) g_j  over sub-sampled keys."""
    n, c, h, w = x.shape
    src = x if m.pool_size == 1 else _max_pool_ceil(x, m.pool_size)
    theta = _conv1x1(m.theta, x).flatten(2)  # N, C', HW
    phi, g = _conv1x1(m.phi, src).flatten(2), _conv1x1(m.g, src).flatten(2)  # N, C', HW'
    logits = torch.einsum("nci,ncj->nij", theta, phi) * (m.scale if scale is None else scale)
    y = torch.einsum("nij,ncj->nci", torch.softmax(logits, dim=2), g).reshape(n, -1, h, w)
    z = _conv1x1(m.w_z, y)
    return x + (reference_batch_norm(z, m.norm, training) if isinstance(m.norm, nn.BatchNorm2d) else z)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("pool_size", [1, 2, 3])
def test_nonlocal_matches_formula(mode, pool_size):
    m = activate(NonLocalBlock(32, pool_size=pool_size)).double().train(mode == "train")
    assert m.rd_channels == 16 and m.scale == 16**-0.5  # C/2, and the authors' code's C'^-1/2
    for shape in [(2, 32, 9, 11), (3, 32, 5, 1), (2, 32, 1, 1), (2, 32, 16, 12)]:
        x = torch.randn(shape, dtype=torch.float64)
        ref = _nonlocal_reference(m, x, training=mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_nonlocal_paper_scale_and_no_norm():
    """qk_scale=1 is Eq. 3 without scaling; norm_layer=None uses a zero-initialised W_z instead of BN."""
    m = activate(NonLocalBlock(24, qk_scale=1.0, norm_layer=None)).double().eval()
    assert isinstance(m.norm, nn.Identity) and m.w_z.bias is not None
    x = torch.randn(2, 24, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, _nonlocal_reference(m, x, training=False), rtol=1e-10, atol=1e-10)
        scaled = _nonlocal_reference(m, x, training=False, scale=m.rd_channels**-0.5)
        assert rel_err(scaled - x, y - x) > 0.01  # the scale is not a no-op: the test would see a wrong one
    fresh = NonLocalBlock(24, norm_layer=None)
    torch.testing.assert_close(fresh(x.float()), x.float(), rtol=0, atol=0)


def test_nonlocal_softmax_over_keys_by_invariance():
    """With g constant (g_j = b), softmax weights over the keys j sum to 1, so y_i = b at every i and
    z = x + BN(W_z b) whatever theta and phi are. A softmax over the queries breaks this."""
    m = activate(NonLocalBlock(16, pool_size=1)).eval()
    with torch.no_grad():
        m.g.weight.zero_()
        for conv in (m.theta, m.phi):
            conv.weight.mul_(4)
        b = m.g.bias[None, :, None, None]
        for shape in [(2, 16, 6, 9), (1, 16, 1, 1), (2, 16, 3, 1)]:
            x = torch.randn(shape) * 3
            expected = x + reference_batch_norm(_conv1x1(m.w_z, b), m.norm, training=False)
            torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)


def test_nonlocal_starts_as_identity():
    m = NonLocalBlock(64)
    x = torch.randn(2, 64, 9, 7)
    for mode in (True, False):
        with torch.no_grad():
            torch.testing.assert_close(m.train(mode)(x), x, rtol=0, atol=0)


def test_nonlocal_pooling_keeps_the_last_row_and_column():
    """ceil-mode sub-sampling: the keys include the last row/column of an odd map (floor drops them),
    so changing only those changes the output at the opposite corner."""
    m = activate(NonLocalBlock(16)).eval()
    x = torch.randn(1, 16, 5, 7)
    for index in [(..., 4, slice(None)), (..., slice(None), 6)]:
        x2 = x.clone()
        x2[index] += 3 * torch.randn_like(x2[index])
        with torch.no_grad():
            assert (m(x2)[..., 0, 0] - m(x)[..., 0, 0]).abs().max() > 1e-3
    with torch.no_grad():
        assert m(torch.randn(2, 16, 1, 1)).shape == (2, 16, 1, 1)
        assert m(torch.randn(2, 16, 1, 9)).shape == (2, 16, 1, 9)


# --------------------------------------------------------------------------------------
# Criss-cross attention (arXiv:1811.11721)
# --------------------------------------------------------------------------------------


def _criss_cross_loops(m: CrissCrossAttention, x: torch.Tensor, count_self_twice: bool = False) -> torch.Tensor:
    """One pass, position by position: softmax over the H + W - 1 positions of u's column and row."""
    q, k, v = _conv1x1(m.query, x), _conv1x1(m.key, x), _conv1x1(m.value, x)
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                path = [(g, j) for g in range(h) if g != i or count_self_twice] + [(i, c) for c in range(w)]
                logits = torch.stack([q[b, :, i, j] @ k[b, :, g, c] for g, c in path])
                a = torch.softmax(logits, 0)
                out[b, :, i, j] = sum(a[t] * v[b, :, g, c] for t, (g, c) in enumerate(path))
    return x + m.gamma * out


def test_criss_cross_matches_loops():
    m = activate(CrissCrossAttention(16, recurrence=1)).double()
    with torch.no_grad():
        m.query.weight.mul_(3)
        for shape in [(2, 16, 4, 5), (1, 16, 1, 6), (1, 16, 5, 1), (1, 16, 1, 1)]:
            x = torch.randn(shape, dtype=torch.float64)
            torch.testing.assert_close(m(x), _criss_cross_loops(m, x), rtol=1e-10, atol=1e-10)


def test_criss_cross_counts_self_once():
    """The joint softmax covers H + W - 1 positions: u appears once. Counting it twice (no mask on the
    column diagonal, a plausible bug) is a different function."""
    m = activate(CrissCrossAttention(16, recurrence=1)).double()
    x = torch.randn(2, 16, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        twice = _criss_cross_loops(m, x, count_self_twice=True)
        assert rel_err(twice - x, m(x) - x) > 0.01


def test_criss_cross_recurrence_shares_weights_and_reaches_every_position():
    m = activate(CrissCrossAttention(16, recurrence=2)).double()
    one = copy.deepcopy(m)
    one.recurrence = 1
    assert {n for n, _ in m.named_parameters()} == {"query.weight", "query.bias", "key.weight", "value.weight",
                                                   "value.bias", "gamma"}  # fmt: skip
    x = torch.randn(1, 16, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), one(one(x)), rtol=1e-12, atol=1e-12)
        # (0, 0) and (3, 4) share neither row nor column: one pass cannot connect them, two passes do
        x2 = x.clone()
        x2[..., 3, 4] += 1.0
        assert torch.equal(one(x2)[..., 0, 0], one(x)[..., 0, 0])
        assert (m(x2)[..., 0, 0] - m(x)[..., 0, 0]).abs().max() > 1e-6


def test_criss_cross_starts_as_identity():
    m = CrissCrossAttention(64)
    assert m.rd_channels == 8  # C / 8
    x = torch.randn(2, 64, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Polarized self-attention (arXiv:2107.00782)
# --------------------------------------------------------------------------------------


def _psa_channel_only(m: PolarizedSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2 in the paper's order: W_z(W_v(x) . softmax_HW(W_q(x))), LayerNorm over C, sigmoid."""
    n, c, h, w = x.shape
    p = torch.softmax(_conv1x1(m.ch_wq, x).reshape(n, h * w), dim=1)  # over the HW positions
    z = torch.einsum("nki,ni->nk", _conv1x1(m.ch_wv, x).reshape(n, -1, h * w), p)  # N, C/2
    z = _conv1x1(m.ch_wz, z[:, :, None, None])
    if isinstance(m.ch_norm, nn.LayerNorm):
        z = _layer_norm_channels(z, m.ch_norm)
    return torch.sigmoid(z)


def _psa_spatial_only(m: PolarizedSelfAttention, x: torch.Tensor, softmax_after: bool = False) -> torch.Tensor:
    """Eq. 3: softmax over the C/2 channels of GAP(W_q(x)), times W_v(x), sigmoid. ``softmax_after`` is the
    authors' PSA_p code instead (no softmax on the query, a softmax over HW after the product)."""
    n, c, h, w = x.shape
    q = _conv1x1(m.sp_wq, x).mean((2, 3))  # N, C/2
    v = _conv1x1(m.sp_wv, x).reshape(n, -1, h * w)  # N, C/2, HW
    if softmax_after:
        s = torch.softmax(torch.einsum("nk,nki->ni", q, v), dim=1)
    else:
        s = torch.einsum("nk,nki->ni", torch.softmax(q, dim=1), v)
    return torch.sigmoid(s).reshape(n, 1, h, w)


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_polarized_matches_formula(layout):
    m = activate(PolarizedSelfAttention(32, layout=layout)).double().eval()
    with torch.no_grad():
        for conv in (m.ch_wq, m.sp_wq):
            conv.weight.mul_(3)
        for shape in [(2, 32, 9, 7), (1, 32, 1, 1), (3, 32, 1, 10)]:
            x = torch.randn(shape, dtype=torch.float64)
            if layout == "parallel":
                ref = x * _psa_channel_only(m, x) + x * _psa_spatial_only(m, x)
            else:
                z = x * _psa_channel_only(m, x)
                ref = z * _psa_spatial_only(m, z)
            torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_polarized_spatial_softmax_is_over_the_pooled_query_channels():
    """The authors' PSA_p code puts the softmax after the product (over positions): a different, nearly
    constant gate. The reference used above would see that placement."""
    m = activate(PolarizedSelfAttention(32)).double().eval()
    x = torch.randn(2, 32, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = m.spatial_only(x), _psa_spatial_only(m, x, softmax_after=True)
        torch.testing.assert_close(ours, _psa_spatial_only(m, x), rtol=1e-10, atol=1e-10)
        assert rel_err(theirs, ours) > 0.05
        assert ((theirs > 0.5) & (theirs <= 0.7311)).all() and theirs.std() < 0.01  # sigmoid of values 1/HW-ish


def test_polarized_without_norm_and_odd_channels():
    m = activate(PolarizedSelfAttention(33, norm_layer=None)).double().eval()
    assert m.inner_channels == 16 and isinstance(m.ch_norm, nn.Identity)
    x = torch.randn(2, 33, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * _psa_channel_only(m, x) + x * _psa_spatial_only(m, x),
                                   rtol=1e-10, atol=1e-10)  # fmt: skip


# --------------------------------------------------------------------------------------
# BoTNet MHSA with relative position logits (arXiv:2101.11605)
# --------------------------------------------------------------------------------------


def _mhsa_reference(m: MHSA, x: torch.Tensor) -> torch.Tensor:
    """Full (HW x HW) logits s q_i.k_j + s q_i.(R_h[y'-y] + R_w[x'-x]) with offsets clipped to [-D, D]."""
    n, c, h, w = x.shape
    heads, d, big_d = m.num_heads, m.head_dim, m.max_rel_pos
    qkv = torch.einsum("oc,nchw->nohw", m.qkv.weight.flatten(1), x).reshape(n, 3, heads, d, h * w)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # N, heads, d, HW
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = (ys[None, :] - ys[:, None]).clamp(-big_d, big_d) + big_d  # [query i, key j]
    dx = (xs[None, :] - xs[:, None]).clamp(-big_d, big_d) + big_d
    r = m.rel_h[dy] + m.rel_w[dx]  # HW, HW, d
    s = d**-0.5
    logits = s * torch.einsum("nadi,nadj->naij", q, k) + s * torch.einsum("nadi,ijd->naij", q, r)
    o = torch.einsum("naij,nadj->nadi", torch.softmax(logits, dim=-1), v).reshape(n, c, h, w)
    return x + o if m.residual else o


@pytest.mark.parametrize("residual", [True, False])
def test_mhsa_matches_formula_at_any_size(residual):
    """One module, maps smaller and larger than its offset range (D = 3), square, rectangular, 1x1."""
    m = MHSA(16, num_heads=4, max_rel_pos=3, residual=residual).double()
    with torch.no_grad():
        m.rel_h.mul_(4)  # position logits comparable to content logits
        m.rel_w.mul_(4)
        for shape in [(2, 16, 4, 4), (1, 16, 9, 5), (2, 16, 1, 11), (1, 16, 1, 1), (1, 16, 6, 2)]:
            x = torch.randn(shape, dtype=torch.float64)
            torch.testing.assert_close(m(x), _mhsa_reference(m, x), rtol=1e-10, atol=1e-10)


def test_mhsa_position_logits_matter():
    """The position term is used (zeroing the tables changes the output), and the sign convention is key
    minus query: the reference above with query minus key would differ."""
    m = MHSA(16, max_rel_pos=7, residual=False).double().eval()
    x = torch.randn(1, 16, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        m.rel_h.mul_(6)
        m.rel_w.mul_(6)
        y = m(x)
        flipped = copy.deepcopy(m)  # R[-k] in place of R[k]: query minus key
        flipped.rel_h.copy_(m.rel_h.flip(0))
        flipped.rel_w.copy_(m.rel_w.flip(0))
        assert rel_err(flipped(x), y) > 0.05
        flipped.rel_h.zero_()
        flipped.rel_w.zero_()
        assert rel_err(flipped(x), y) > 0.05
    assert m.rel_h.shape == (15, 4) and m.rel_w.shape == (15, 4)  # one table for every map size


def test_mhsa_clips_offsets_beyond_max_rel_pos():
    """On a map longer than D + 1, offsets beyond D use the embedding of +-D: changing a table row other than
    the outermost ones, for an offset the map does not contain, changes nothing; the outermost rows do."""
    m = MHSA(8, num_heads=2, max_rel_pos=2, residual=False).double()
    x = torch.randn(1, 8, 1, 9, dtype=torch.float64)  # offsets -8..8 along W, clipped to -2..2
    with torch.no_grad():
        y = m(x)
        m.rel_w[0].add_(1.0)  # offset -2 and every offset below it
        assert rel_err(m(x), y) > 1e-3
        y = m(x)
        m.rel_h[0].add_(1.0)  # H = 1: only the offset 0 (row 2) occurs along H
        torch.testing.assert_close(m(x), y, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# DAT deformable attention (arXiv:2201.00520)
# --------------------------------------------------------------------------------------


def _bilinear(z: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """phi(z; p): bilinear interpolation with hat weights max(0, 1 - |p - r|) over the pixels r, at points
    given in [-1, 1] with -1 and +1 at the centres of the first and last pixels. z: B, C, H, W;
    gy, gx: B, P -> B, C, P (zero outside the map)."""
    h, w = z.shape[-2:]
    py, px = (gy + 1) / 2 * (h - 1), (gx + 1) / 2 * (w - 1)
    wy = torch.relu(1 - (py[..., None] - torch.arange(h, dtype=z.dtype)).abs())  # B, P, H
    wx = torch.relu(1 - (px[..., None] - torch.arange(w, dtype=z.dtype)).abs())  # B, P, W
    return torch.einsum("bchw,bph,bpw->bcp", z, wy, wx)


def _dat_reference(m: DeformableAttention, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    g, heads, d, s = m.offset_groups, m.num_heads, m.head_dim, m.offset_range_factor
    q = _conv1x1(m.proj_q, x)
    dw, ln, pw = m.conv_offset[0], m.conv_offset[1], m.conv_offset[3]
    t = F.conv2d(q.reshape(n * g, c // g, h, w), dw.weight, dw.bias, m.stride, m.k_size // 2, groups=c // g)
    off = torch.tanh(_conv1x1(pw, F.gelu(_layer_norm_channels(t, ln))))  # N*G, 2, H_G, W_G
    hg, wg = off.shape[-2:]
    assert (hg, wg) == (-(-h // m.stride), -(-w // m.stride))
    ref_y = ((torch.arange(hg, dtype=x.dtype) + 0.5) / hg * 2 - 1)[:, None].expand(hg, wg)
    ref_x = ((torch.arange(wg, dtype=x.dtype) + 0.5) / wg * 2 - 1)[None, :].expand(hg, wg)
    pos_y = (ref_y + s * off[:, 0] / hg).flatten(1)  # N*G, Ns
    pos_x = (ref_x + s * off[:, 1] / wg).flatten(1)
    sampled = _bilinear(x.reshape(n * g, c // g, h, w), pos_y, pos_x).reshape(n, c, -1, 1)  # x~
    k = _conv1x1(m.proj_k, sampled).reshape(n, heads, d, -1)
    v = _conv1x1(m.proj_v, sampled).reshape(n, heads, d, -1)
    qh = q.reshape(n, heads, d, h * w)
    # deformable relative position bias: table sampled at (query - key) / 2, normalised coordinates
    qy = ((torch.arange(h, dtype=x.dtype) + 0.5) / h * 2 - 1)[:, None].expand(h, w).flatten()
    qx = ((torch.arange(w, dtype=x.dtype) + 0.5) / w * 2 - 1)[None, :].expand(h, w).flatten()
    dy = ((qy[None, :, None] - pos_y[:, None, :]) / 2).flatten(1)  # N*G, HW*Ns
    dx = ((qx[None, :, None] - pos_x[:, None, :]) / 2).flatten(1)
    table = m.rpe_table.reshape(g, heads // g, *m.rpe_table.shape[-2:]).repeat(n, 1, 1, 1)  # N*G, M/G, T, T
    bias = _bilinear(table, dy, dx).reshape(n, heads, h * w, -1)
    logits = torch.einsum("nadi,nadj->naij", qh, k) / d**0.5 + bias
    o = torch.einsum("naij,nadj->nadi", torch.softmax(logits, dim=-1), v).reshape(n, c, h, w)
    y = _conv1x1(m.proj_out, o)
    return x + y if m.residual else y


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(), (2, 64, 9, 11)),  # defaults: 2 heads, 1 group, r = 4, k = 7
        (dict(num_heads=4, offset_groups=2, stride=2, k_size=3), (1, 64, 7, 5)),
        (dict(num_heads=4, offset_groups=4, stride=1, k_size=5, residual=False), (2, 64, 6, 6)),
        (dict(num_heads=2, stride=3, rel_pos_size=3), (1, 64, 1, 1)),
        (dict(num_heads=2, stride=2, rel_pos_size=5, offset_range_factor=8.0), (1, 64, 1, 13)),
    ],
)
def test_dat_matches_formula(kwargs, shape):
    m = activate(DeformableAttention(64, **kwargs)).double()
    with torch.no_grad():
        m.conv_offset[3].weight.mul_(10)  # offsets well away from the reference points
        m.rpe_table.mul_(20)  # a position bias comparable to the content logits
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(m(x), _dat_reference(m, x), rtol=1e-9, atol=1e-10)


def test_dat_offsets_are_bounded_and_matter():
    m = activate(DeformableAttention(32, num_heads=2, stride=2)).double()
    x = torch.randn(2, 32, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        m.conv_offset[3].weight.mul_(100)  # saturate tanh
        pos_y, pos_x = m._sample_points(m.proj_q(x).reshape(2, 32, 10, 8), torch.float64)
        hg, wg = pos_y.shape[-2:]
        ref_y = (torch.arange(hg, dtype=torch.float64) + 0.5) / hg * 2 - 1
        assert (pos_y - ref_y[:, None]).abs().max() <= m.offset_range_factor / hg + 1e-12
        assert (pos_y - ref_y[:, None]).abs().max() > 0.9 * m.offset_range_factor / hg
        y = m(x)
        m.conv_offset[3].weight.zero_()  # keys at the reference points only
        assert rel_err(m(x), y) > 1e-3


def test_dat_defaults_follow_dat_t_proportions():
    for channels, heads, groups in [(16, 1, 1), (96, 3, 1), (256, 8, 2), (384, 12, 3), (576, 18, 3), (1024, 32, 8)]:
        m = DeformableAttention(channels)
        assert (m.num_heads, m.offset_groups, m.head_dim) == (heads, groups, channels // heads)
    m = DeformableAttention(64)
    assert m.rpe_table.shape == (2, 27, 27) and m.conv_offset[0].stride == (4, 4)
