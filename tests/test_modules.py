"""The contract of every registered attention module, and paper-faithfulness checks.

Contract: ``channels`` first; output shape == input shape (N, C, H, W) for any batch and any
H x W (1x1, odd, rectangular); float32 and bfloat16; train and eval; finite gradients;
serialisable; clear errors. Axes are covered with a covering design, not their product:
every size x every module (one channel count), every channel count x every module (one
size), every batch x every module, dtypes x modules x modes, batch-1 training at 1x1 for
every module.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _helpers import (  # noqa: F401  (fixtures are used by name)
    ALL_NAMES,
    BUILTIN_NAMES,
    USER_NAME,
    UserTestGate,
    _registry_does_not_leak,
    activate,
    assert_finite,
    attn_name,
    cls_name,
    constructor_args,
    make,
    reference_batch_norm,
    rel_err,
    weighted_loss,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_attention import (
    BAM,
    SE,
    DoubleAttention,
    create_attention,
    get_attention_info,
)
from yolo_attention.registry import _normalise

SIZES = [(1, 1), (5, 7), (20, 15), (33, 47), (80, 80), (1, 9), (7, 1)]
CHANNELS = [16, 24, 96, 256]
BATCHES = [1, 2, 3]
C0 = 24  # channel count of the size sweep


def _forward_backward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    y = m(x)
    assert y.shape == x.shape, f"{type(m).__name__}: output {tuple(y.shape)} != input {tuple(x.shape)}"
    assert y.dtype == x.dtype
    assert_finite(y, "output")
    weighted_loss(y).backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert_finite(x.grad, "input gradient")
    for pname, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"parameter {pname} got no gradient"
            assert_finite(p.grad, f"gradient of {pname}")
    return y


# --------------------------------------------------------------------------------------
# Shapes, batches, channels, modes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_every_size_train_and_eval(attn_name, size):
    batch = BATCHES[SIZES.index(size) % len(BATCHES)]
    m = make(attn_name, C0).train()
    x = torch.randn(batch, C0, *size)
    _forward_backward(m, x)
    m.eval()
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape
    assert_finite(y, "eval output")


@pytest.mark.parametrize("channels", CHANNELS)
def test_every_channel_count(attn_name, channels):
    m = make(attn_name, channels).train()
    x = torch.randn(2, channels, 9, 11)
    _forward_backward(m, x)
    with torch.no_grad():
        assert m.eval()(x).shape == x.shape


@pytest.mark.parametrize("batch", BATCHES)
def test_every_batch_size(attn_name, batch):
    m = make(attn_name, 16).train()
    _forward_backward(m, torch.randn(batch, 16, 6, 5))
    with torch.no_grad():
        assert m.eval()(torch.randn(batch, 16, 6, 5)).shape == (batch, 16, 6, 5)


def test_batch1_training_at_1x1(attn_name):
    """A detector's last, size-1 batch reaching a 1x1 map (P5 of a tiny image) must train."""
    m = make(attn_name, 32).train()
    params = list(m.parameters())  # none for a parameter-free module (SimAM)
    opt = torch.optim.SGD(params, lr=0.01) if params else None
    for _ in range(2):
        if opt:
            opt.zero_grad()
        _forward_backward(m, torch.randn(1, 32, 1, 1))
        if opt:
            opt.step()
    for pname, p in m.named_parameters():
        assert_finite(p, f"parameter {pname} after a step")
    for bname, b in m.named_buffers():
        if b.is_floating_point():
            assert_finite(b, f"buffer {bname}")
    with torch.no_grad():
        y = m.eval()(torch.randn(1, 32, 1, 1))
    assert y.shape == (1, 32, 1, 1)
    assert_finite(y)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bfloat16(attn_name, mode):
    m32 = make(attn_name, 32).train(mode == "train")
    m16 = copy.deepcopy(m32).to(torch.bfloat16)
    x = torch.randn(2, 32, 11, 13)
    if mode == "train":
        y16 = _forward_backward(m16, x.to(torch.bfloat16))
        for pname, p in m16.named_parameters():
            assert p.grad.dtype == torch.bfloat16, pname
    else:
        with torch.no_grad():
            y16 = m16(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and y16.shape == x.shape
    assert_finite(y16)
    with torch.no_grad():
        y32 = m32(x)
    # bfloat16 has an 8-bit mantissa: rounding gives ~1e-2 relative error, a wrong computation O(1).
    # Top-k routing (sparse attention) is discontinuous: rounding may flip the choice of a few regions
    # (it does so even for a float32 model with bf16-rounded weights), so only the bulk must agree there.
    err = (y16.float() - y32).abs() / y32.std()
    p90 = torch.quantile(err.flatten(), 0.9)
    assert p90 < 0.03, f"bfloat16 output deviates from float32 (p90 of |error| / std: {p90:.3g})"
    if get_attention_info(attn_name).kind != "sparse-attention":
        assert rel_err(y16, y32) < 0.05, f"bfloat16 output deviates from float32: rel err {rel_err(y16, y32):.3g}"


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_channels_last_input(attn_name, mode):
    m = make(attn_name, 16).train(mode == "train")
    x = torch.randn(2, 16, 9, 12)
    xl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = copy.deepcopy(m)(x)  # deepcopy: a training forward may update BatchNorm statistics
    y = _forward_backward(m, xl)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_batch_independence_eval(attn_name):
    """In eval mode image i's output must not depend on the other images of the batch."""
    m = make(attn_name, 16).eval()
    x = torch.randn(3, 16, 10, 9)
    with torch.no_grad():
        batched = m(x)
        for i in range(3):
            torch.testing.assert_close(batched[i : i + 1], m(x[i : i + 1]), rtol=1e-4, atol=1e-5)
        # and a different partner image changes nothing either
        other = x.clone()
        other[1:] = torch.randn_like(other[1:]) * 5
        torch.testing.assert_close(m(other)[0], batched[0], rtol=1e-4, atol=1e-5)


def test_eval_is_deterministic_and_train_eval_consistent(attn_name):
    m = make(attn_name, 16).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    # a training forward must not alter an eval forward except through running statistics
    has_bn = any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    if not has_bn:
        with torch.no_grad():
            ref = m(x)
            torch.testing.assert_close(m.train()(x), ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------

# Parameters whose gradient is legitimately exactly zero for a *freshly built* module:
# A2's reconstruction W_r is zero-initialised, so dL/dA, dL/dB, dL/dV (and hence the gradients
# of convA/convB/convV) vanish at init; W_r and b_r themselves get gradients.
ZERO_GRAD_AT_INIT = {
    "a2": {"convA.weight", "convA.bias", "convB.weight", "convB.bias", "convV.weight", "convV.bias"},
    # Shuffle Attention's spatial gate is sigmoid(W_2 GN(x) + b_2) with W_2 = 0 at init (the authors'):
    # GN's affine gets a gradient once W_2 moves
    "shuffle": {"gn.weight", "gn.bias"},
    # GC: the transform's last conv is zero-initialised (the block starts as the identity)
    "gc": {"conv_mask.weight", "add_transform.0.weight", "add_transform.0.bias", "add_transform.1.weight",
           "add_transform.1.bias"},
    # non-local: BN's scale after W_z is zero-initialised (the block starts as the identity)
    "nonlocal": {"theta.weight", "theta.bias", "phi.weight", "g.weight", "g.bias", "w_z.weight"},
    # criss-cross: gamma = 0 at init (the module starts as the identity)
    "crisscross": {"query.weight", "query.bias", "key.weight", "value.weight", "value.bias"},
}


@pytest.mark.parametrize("init", ["fresh", "activated"])
def test_gradients_reach_every_parameter(attn_name, init):
    m = make(attn_name, 16, active=init == "activated").train()
    x = torch.randn(2, 16, 9, 10, requires_grad=True)
    y = m(x)
    weighted_loss(y).backward()
    assert_finite(x.grad, "input gradient")
    assert x.grad.abs().sum() > 0, "input gradient is all zero"
    allowed = ZERO_GRAD_AT_INIT.get(attn_name, set()) if init == "fresh" else set()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{pname}: no gradient"
        assert_finite(p.grad, f"gradient of {pname}")
        if pname in allowed:
            assert p.grad.abs().max() == 0, f"{pname}: expected exactly zero gradient at init"
        else:
            assert p.grad.abs().sum() > 0, f"{pname}: gradient is all zero"


def test_a2_gradients_at_init():
    """Identity at init, but trainable: W_r and b_r get gradients, the input gradient passes through."""
    m = DoubleAttention(32).train()
    x = torch.randn(2, 32, 7, 9, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g, rtol=0, atol=0)
    assert m.reconstruct.weight.grad.abs().min() >= 0 and m.reconstruct.weight.grad.abs().sum() > 0
    assert m.reconstruct.bias.grad.abs().sum() > 0
    # one SGD step on W_r makes the other branches trainable
    with torch.no_grad():
        m.reconstruct.weight -= 0.1 * m.reconstruct.weight.grad
    m.zero_grad()
    weighted_loss(m(x)).backward()
    for conv in (m.convA, m.convB, m.convV):
        assert conv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------
# Paper faithfulness
# --------------------------------------------------------------------------------------


def test_se_matches_formula():
    """y = x * sigmoid(W2 relu(W1 mean_HW(x) + b1) + b2), r = 16."""
    m = SE(256).eval()
    assert m.rd_channels == 16
    assert SE(64).rd_channels == 8  # never below the divisor
    x = torch.randn(3, 256, 7, 5)
    w1, b1 = m.fc1.weight.flatten(1), m.fc1.bias
    w2, b2 = m.fc2.weight.flatten(1), m.fc2.bias
    z = x.mean((2, 3))
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * s[:, :, None, None], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.train()(x), x * s[:, :, None, None], rtol=1e-5, atol=1e-6)
    # no normalisation anywhere (batch-1 safe): only the two FC layers hold parameters
    assert {n.split(".")[0] for n, _ in m.named_parameters()} == {"fc1", "fc2"}


def _a2_reference(m: DoubleAttention, x, softmax_b_dim=-1, softmax_v_dim=1):
    def conv(c, t):
        return torch.einsum("oc,nchw->nohw", c.weight.flatten(1), t) + c.bias[None, :, None, None]

    n, _, h, w = x.shape
    a = conv(m.convA, x).flatten(2)  # n, c_m, L
    b = conv(m.convB, x).flatten(2)  # n, c_n, L
    v = conv(m.convV, x).flatten(2)  # n, c_n, L
    g = torch.einsum("nml,nkl->nmk", a, torch.softmax(b, softmax_b_dim))  # gather: softmax over L
    z = torch.einsum("nmk,nkl->nml", g, torch.softmax(v, softmax_v_dim))  # distribute: softmax over c_n
    out = conv(m.reconstruct, z.reshape(n, -1, h, w))
    return x + out if m.residual else out


def test_a2_matches_formula_and_softmax_dims_matter():
    torch.manual_seed(3)
    m = DoubleAttention(32, zero_init=False).eval()
    with torch.no_grad():
        for conv in (m.convB, m.convV):
            conv.weight.mul_(4)  # sharp softmaxes, so wrong dimensions differ a lot
        x = torch.randn(2, 32, 6, 7)
        y = m(x)
        ref = _a2_reference(m, x)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
        # the reference is discriminating: softmax over the wrong dimension is a different function
        for bd, vd in [(1, 1), (-1, -1), (1, -1)]:
            wrong = _a2_reference(m, x, bd, vd)
            assert rel_err(wrong - x, ref - x) > 0.05, (bd, vd)


def test_a2_softmax_dims_by_invariance():
    """With constant feature maps A = a (convA weight 0), softmax_L(B) and softmax_cn(V) each sum to 1,
    so G = a and Z = a at every position whatever x, B and V are: out = W_r a + b_r everywhere.
    A softmax over the wrong dimension breaks this for any generic B, V."""
    m = DoubleAttention(16, c_m=8, c_n=8, zero_init=False, residual=False).eval()
    with torch.no_grad():
        m.convA.weight.zero_()
        m.convA.bias.copy_(torch.randn(8))
        m.convB.weight.mul_(3)
        m.convV.weight.mul_(3)
        expected = m.reconstruct.weight.flatten(1) @ m.convA.bias + m.reconstruct.bias
        for shape in [(2, 16, 5, 7), (1, 16, 1, 1), (3, 16, 12, 4)]:
            y = m(torch.randn(shape) * 3)
            torch.testing.assert_close(y, expected[None, :, None, None].expand(shape), rtol=1e-4, atol=1e-5)


def test_a2_starts_as_identity():
    for mode in (True, False):
        m = DoubleAttention(48).train(mode)
        x = torch.randn(2, 48, 9, 5)
        with torch.no_grad():
            torch.testing.assert_close(m(x), x, rtol=0, atol=0)
        xb = x.to(torch.bfloat16)
        with torch.no_grad():
            torch.testing.assert_close(copy.deepcopy(m).to(torch.bfloat16)(xb), xb, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a2_no_mixing_across_batch(mode):
    """A2 has no batch statistics: image i's output is the same alone or in a batch, train or eval."""
    m = activate(DoubleAttention(32)).train(mode == "train")
    x = torch.randn(4, 32, 7, 6)
    with torch.no_grad():
        batched = m(x)
        for i in range(4):
            torch.testing.assert_close(batched[i : i + 1], m(x[i : i + 1]), rtol=1e-5, atol=1e-6)


def test_a2_bfloat16_large_logits_stay_finite():
    m = activate(DoubleAttention(32)).to(torch.bfloat16).eval()
    x = (torch.randn(2, 32, 9, 9) * 300).to(torch.bfloat16)
    with torch.no_grad():
        assert_finite(m(x))


def _bam_reference(m: BAM, x, training: bool):
    """Paper: M_c = MLP(avgpool x); M_s = 1x1 -> two 3x3 convs with dilation 4 -> 1x1; y = x + x*sigmoid(M_c+M_s)."""
    l1, l2 = m.channel_mlp[0], m.channel_mlp[2]
    z = x.mean((2, 3))
    mc = torch.relu(z @ l1.weight.flatten(1).T + l1.bias) @ l2.weight.flatten(1).T + l2.bias  # N, C
    convs = [mod for mod in m.spatial if isinstance(mod, nn.Conv2d)]
    bns = [mod for mod in m.spatial if isinstance(mod, nn.BatchNorm2d)]
    assert len(convs) == 4 and len(bns) == 3
    s = torch.relu(reference_batch_norm(F.conv2d(x, convs[0].weight), bns[0], training))
    for conv, bn in zip(convs[1:3], bns[1:]):
        assert conv.weight.shape[-2:] == (3, 3)
        s = torch.relu(reference_batch_norm(F.conv2d(s, conv.weight, padding=4, dilation=4), bn, training))
    ms = F.conv2d(s, convs[3].weight, convs[3].bias)  # N, 1, H, W
    return x + x * torch.sigmoid(mc[:, :, None, None] + ms)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bam_matches_formula(mode):
    m = activate(BAM(64)).train(mode == "train")
    assert m.rd_channels == 8  # C / 16, rounded to the divisor
    x = torch.randn(3, 64, 9, 11)
    ref = _bam_reference(m, x, training=mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (5, 7), (9, 1), (2, 13), (33, 47)])
@pytest.mark.parametrize("dilation", [1, 4, 8])
def test_bam_keeps_size_with_dilation(size, dilation):
    m = activate(BAM(32, dilation=dilation)).eval()
    dil = [mod.dilation for mod in m.spatial if isinstance(mod, nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert dil == [(dilation, dilation)] * 2
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        ms = m.spatial(x)
        assert ms.shape == (2, 1, *size)
        assert m(x).shape == x.shape


def test_bam_trains_at_batch_1():
    m = BAM(32).train()
    bn = next(mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    # 1x1 map at batch 1: no batch statistics exist; running statistics are used and left untouched
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x = torch.randn(1, 32, 1, 1)
    y = _forward_backward(m, x)
    assert all(torch.equal(a, b) for a, b in zip(before, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))
    # the result is x + x*sigmoid(M_c + M_s) with M_s from running statistics
    with torch.no_grad():
        torch.testing.assert_close(y, _bam_reference(m, x, training=False), rtol=1e-4, atol=1e-5)
    opt.step()
    # batch 1 on a larger map: ordinary BatchNorm over H*W values, statistics updated
    opt.zero_grad()
    _forward_backward(m, torch.randn(1, 32, 5, 3))
    opt.step()
    assert bn.num_batches_tracked.item() == 1
    assert not torch.equal(bn.running_mean, before[0])
    for p in m.parameters():
        assert_finite(p)


def test_bam_batch1_1x1_without_running_stats():
    """norm_layer without running statistics: a single value per channel normalises to 0 (then the affine bias)."""
    from functools import partial

    from yolo_attention.modules.helpers import SafeBatchNorm2d

    m = activate(BAM(32, norm_layer=partial(SafeBatchNorm2d, track_running_stats=False))).train()
    _forward_backward(m, torch.randn(1, 32, 1, 1))
    bn = next(mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d))
    x = torch.randn(1, 8, 1, 1)
    torch.testing.assert_close(bn(x), bn.bias.view(1, -1, 1, 1).expand_as(x))


def test_layernorm2d_normalises_channels():
    from yolo_attention.modules.helpers import LayerNorm2d

    ln = activate(LayerNorm2d(16, eps=1e-6))
    x = torch.randn(2, 16, 5, 7)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (16,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref)
    torch.testing.assert_close(ln(x.contiguous(memory_format=torch.channels_last)), ref)


def test_bam_channel_branch_has_no_batch_norm():
    """The pooled vector's batch statistics are undefined at batch 1: no BN there."""
    m = BAM(64)
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.channel_mlp.modules())


# --------------------------------------------------------------------------------------
# Copying and serialisation
# --------------------------------------------------------------------------------------


def test_deepcopy(attn_name):
    m = make(attn_name, 16).eval()
    x = torch.randn(2, 16, 7, 5)
    c = copy.deepcopy(m)
    with torch.no_grad():
        torch.testing.assert_close(c(x), m(x), rtol=0, atol=0)
        if next(m.parameters(), None) is not None:  # a parameter-free module (SimAM) has no storage to share
            next(c.parameters()).add_(1.0)  # independent storage
            assert not torch.equal(next(c.parameters()), next(m.parameters()))


def test_pickle(attn_name):
    m = make(attn_name, 16).eval()
    x = torch.randn(2, 16, 6, 9)
    m2 = pickle.loads(pickle.dumps(m))
    assert type(m2) is type(m)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m3 = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(m3(x), m(x), rtol=0, atol=0)


def test_state_dict_round_trip(attn_name):
    m = make(attn_name, 24).eval()
    torch.manual_seed(99)
    fresh = create_attention(attn_name, 24).eval()
    fresh.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 24, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)


def test_half_round_trip(attn_name):
    """m.half() state dicts (as saved by mixed-precision trainers) load back into float32 instances."""
    m = make(attn_name, 24).eval()
    x = torch.randn(2, 24, 7, 8)
    with torch.no_grad():
        ref = m(x)
    sd16 = copy.deepcopy(m).half().state_dict()
    for k, v in sd16.items():
        if v.is_floating_point():
            assert v.dtype == torch.float16, k
    fresh = create_attention(attn_name, 24).eval()
    fresh.load_state_dict(sd16, strict=True)
    for (k, a), b in zip(fresh.state_dict().items(), sd16.values()):
        if a.is_floating_point():
            assert a.dtype == torch.float32, k
            torch.testing.assert_close(a, b.float(), rtol=0, atol=0)
        else:
            assert torch.equal(a, b), k
    with torch.no_grad():
        y = fresh(x)
        assert rel_err(y, ref) < 5e-3
        back = copy.deepcopy(m).half().float()
        torch.testing.assert_close(back(x), y, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Bad inputs and impossible arguments: clear errors
# --------------------------------------------------------------------------------------


def _err_text(excinfo) -> str:
    return str(excinfo.value)


def test_wrong_channel_count(attn_name):
    m = create_attention(attn_name, 16)
    with pytest.raises(ValueError) as e:
        m(torch.randn(1, 24, 8, 8))
    msg = _err_text(e)
    assert cls_name(attn_name) in msg and "channels" in msg and "16" in msg and "24" in msg, msg


@pytest.mark.parametrize(
    "bad", [torch.randn(16, 8, 8), torch.randn(1, 1, 16, 8, 8), torch.randn(8, 16), [1.0, 2.0]],
    ids=["3d", "5d", "2d", "list"],
)
def test_not_4d_input(attn_name, bad):
    m = create_attention(attn_name, 16)
    with pytest.raises((ValueError, TypeError)) as e:
        m(bad)
    msg = _err_text(e)
    assert cls_name(attn_name) in msg and "4-D" in msg, msg


@pytest.mark.parametrize("channels", [-8, 0, True, 16.0, "16", None], ids=repr)
def test_impossible_channels(attn_name, channels):
    with pytest.raises((ValueError, TypeError)) as e:
        create_attention(attn_name, channels)
    msg = _err_text(e)
    assert cls_name(attn_name) in msg and "channels" in msg and "positive int" in msg, msg


# argument -> (bad value, text the message must contain besides the module and argument names)
BAD_ARGS = {
    "rd_ratio": [(1.5, "(0, 1]"), (0, "(0, 1]"), (-0.25, "(0, 1]"), (16, "1/16"), ("1/16", "(0, 1]")],
    "cm_ratio": [(2.0, "(0, 1]"), (0.0, "(0, 1]")],
    "cn_ratio": [(-1, "(0, 1]")],
    "rd_divisor": [(0, "positive")],
    "rd_channels": [(0, "positive"), (-4, "positive")],
    "divisor": [(0, "positive")],
    "c_m": [(0, "positive"), (4.5, "positive int")],
    "c_n": [(-2, "positive")],
    "num_heads": [(0, "positive"), (-8, "positive"), (7, "divisible"), (8.0, "positive int")],
    "n_win": [(0, "positive")],
    "topk": [(0, "positive"), (True, "positive int")],
    "side_dwconv": [(2, "odd"), (-1, "odd")],
    "dilation": [(0, "positive"), (-4, "positive"), (2.5, "positive int")],
    "num_dilated": [(0, "positive")],
    "act_layer": [("not_an_activation", "relu")],
    "gate_layer": [("not_a_gate", "sigmoid")],
    "mlp_ratio": [(0, "positive"), (-1.0, "positive"), ("3", "positive")],
    "drop_path": [(1.0, "[0, 1)"), (-0.1, "[0, 1)"), ("0.1", "[0, 1)")],
    "k_size": [(0, "positive"), (4, "odd")],
    # shared by several modules: only the cases every one of them rejects (module tests probe the rest)
    "gamma": [(0, "positive"), (-2, "positive")],
    "beta": [("1", "number"), (None, "number")],
    "groups": [(0, "positive"), (-4, "positive"), (2.5, "positive int")],
    "e_lambda": [(0, "positive"), (-1e-4, "positive"), (float("inf"), "positive")],
    "num_branches": [(0, "positive"), (2.0, "positive int")],
    "min_rd_channels": [(0, "positive")],
    "variant": [("X", "'T'"), (3, "'T'")],
    "gn_groups": [(0, "positive"), (1.5, "positive int")],
    "local_size": [(0, "positive"), (2.5, "positive int")],
    "local_weight": [(1.5, "[0, 1]"), (-0.1, "[0, 1]"), ("0.5", "[0, 1]")],
    "pool_type": [("max", "attn"), (None, "avg")],
    "fusion": [("concat", "add"), ("mul", "scale")],
    "pool_size": [(0, "positive"), (2.0, "positive int")],
    "recurrence": [(0, "positive"), (1.5, "positive int")],
    "layout": [("serial", "parallel"), ("", "sequential")],
    "max_rel_pos": [(0, "positive"), (3.5, "positive int")],
    "offset_groups": [(0, "positive"), (3, "divisible")],
    "stride": [(0, "positive"), (2.0, "positive int")],
    "offset_range_factor": [(0, "positive"), ("2", "positive")],
    "rel_pos_size": [(0, "positive")],
}


def _bad_arg_cases():
    cases = []
    for name in ALL_NAMES:
        if name in BUILTIN_NAMES:
            params = constructor_args(name)
        else:  # the user module is only registered while its tests run
            params = constructor_args(UserTestGate)
        for arg in params:
            for value, expect in BAD_ARGS.get(arg, []):
                cases.append(pytest.param(name, arg, value, expect, id=f"{name}-{arg}={value!r}"))
    return cases


@pytest.mark.parametrize("attn_name,arg,value,expect", _bad_arg_cases(), indirect=["attn_name"])
def test_impossible_arguments(attn_name, arg, value, expect):
    with pytest.raises((ValueError, TypeError)) as e:
        create_attention(attn_name, 16, **{arg: value})
    msg = _err_text(e)
    assert cls_name(attn_name) in msg, f"message does not name the module {cls_name(attn_name)}: {msg}"
    assert arg in msg, f"message does not name the argument {arg!r}: {msg}"
    assert expect in msg, f"message does not state the expectation {expect!r}: {msg}"


def test_every_builtin_argument_is_probed():
    """A new constructor argument of a built-in module gets a bad-value case here, or an explicit pass."""
    untested_ok = {"qk_scale", "layer_scale", "residual", "zero_init", "norm_layer"}
    for name in ALL_NAMES:
        if name == _normalise(USER_NAME):
            continue
        missing = [a for a in constructor_args(name) if a not in BAD_ARGS and a not in untested_ok]
        assert not missing, f"{name}: no bad-value case for {missing}"


def test_activation_names_and_instances():
    x = torch.randn(2, 32, 5, 5)
    a = SE(32, act_layer="silu", gate_layer="hard-sigmoid")
    assert isinstance(a.act, nn.SiLU) and isinstance(a.gate, nn.Hardsigmoid)
    b = BAM(32, act_layer=nn.SiLU())  # an instance: each use gets its own copy
    acts = [mod for mod in b.modules() if isinstance(mod, nn.SiLU)]
    assert len(acts) == 4 and len({id(a) for a in acts}) == 4
    assert b(x).shape == x.shape
    with pytest.raises(ValueError, match=r"SE: argument 'act_layer'.*relu"):
        SE(32, act_layer="nope")
    with pytest.raises(ValueError, match=r"BAM: argument 'act_layer'"):
        BAM(32, act_layer=3)


def test_numpy_integer_channels_accepted():
    np = pytest.importorskip("numpy")
    for name in ALL_NAMES:
        if name == _normalise(USER_NAME):
            continue
        m = create_attention(name, np.int64(16))
        assert m.channels == 16
        assert m(torch.randn(1, 16, 3, 3)).shape == (1, 16, 3, 3)


# --------------------------------------------------------------------------------------
# Property test over shapes
# --------------------------------------------------------------------------------------

_CACHE: dict = {}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    channels=st.sampled_from([16, 24, 32]),
    training=st.booleans(),
)
def test_property_any_shape(attn_name, batch, h, w, channels, training):
    key = (attn_name, channels, get_attention_info(attn_name).cls)
    if key not in _CACHE:
        _CACHE[key] = make(attn_name, channels)
    m = _CACHE[key].train(training)
    x = torch.randn(batch, channels, h, w)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape
    assert_finite(y)
    if not training:
        with torch.no_grad():
            torch.testing.assert_close(m(x[:1]), y[:1], rtol=1e-4, atol=1e-5)


def test_sizes_cover_required_values():
    assert {(1, 1), (5, 7), (20, 15), (33, 47), (80, 80)} <= set(SIZES)
    assert {16, 24, 96, 256} <= set(CHANNELS)
    assert set(BATCHES) == {1, 2, 3}
