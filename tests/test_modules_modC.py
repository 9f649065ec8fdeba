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

from _helpers import _registry_does_not_leak, activate, rel_err, weighted_loss  # noqa: F401
from yolo_attention import GlobalContext


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
