"""Equality with the authors' own PyTorch code (GC, CCNet, PSA, DAT), same weights, float64.

Skips unless YOLO_ATTENTION_AUTHORS_CODE names a directory with the authors' work trees (see
tests/_authors.py); docs/authors-parity.md records the commits checked and the results. The
non-local block (Caffe2) and BoTNet (TensorFlow) have no official PyTorch code: they are
checked against the papers' equations in test_modules_modC.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

import pytest
import torch
import torch.nn as nn

from _authors import authors_module, authors_root
from _helpers import _registry_does_not_leak  # noqa: F401
from yolo_attention import CrissCrossAttention, DeformableAttention, GlobalContext, PolarizedSelfAttention


def _randomise(*modules: nn.Module, seed: int = 0) -> None:
    """Non-trivial values for every parameter (zero-initialised ones included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def _assert_same_forward_and_grads(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, pairs, run_ours=None,
                                   run_theirs=None):  # fmt: skip
    """Same output, same input gradient and same gradient for each (our name, their name) parameter pair
    (returns the largest absolute difference of all of them);
    ``run_ours``/``run_theirs`` replace the modules' forward (e.g. one branch, or R passes)."""
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = (run_ours or ours)(xa), (run_theirs or theirs)(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(5), dtype=ya.dtype)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    diffs = [(ya - yb).abs().max(), (xa.grad - xb.grad).abs().max()]
    ours_p, theirs_p = dict(ours.named_parameters()), dict(theirs.named_parameters())
    for a, b in pairs:
        ga, gb = ours_p[a].grad, theirs_p[b].grad.reshape(ours_p[a].shape)
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10, msg=lambda m, a=a: f"gradient of {a}: {m}")
        diffs.append((ga - gb).abs().max())
    return max(diffs).item()  # over the output, the input gradient and the parameter gradients


def _copy(ours: nn.Module, theirs: nn.Module, pairs) -> None:
    ours_p, theirs_p = dict(ours.named_parameters()), dict(theirs.named_parameters())
    with torch.no_grad():
        for a, b in pairs:
            ours_p[a].copy_(theirs_p[b].reshape(ours_p[a].shape))


# --------------------------------------------------------------------------------------
# GC: xvjiarui/GCNet, mmdet/ops/gcb/context_block.py (ContextBlock)
# --------------------------------------------------------------------------------------


def _gcnet_module():
    # the file imports two weight initialisers from mmcv (not installed, and irrelevant here: the
    # weights are overwritten); a stand-in module provides them for the import only
    stub = types.ModuleType("mmcv.cnn")
    stub.constant_init = lambda m, val, bias=0: (nn.init.constant_(m.weight, val), m.bias is None or nn.init.constant_(m.bias, bias))  # noqa: E501
    stub.kaiming_init = lambda m, mode="fan_out", **kw: nn.init.kaiming_normal_(m.weight, mode=mode)
    saved = {k: sys.modules.get(k) for k in ("mmcv", "mmcv.cnn")}
    sys.modules["mmcv"], sys.modules["mmcv.cnn"] = types.ModuleType("mmcv"), stub
    try:
        return authors_module("xvjiarui/GCNet", "mmdet/ops/gcb/context_block.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


_GC_FUSIONS = {"add": ("channel_add",), "scale": ("channel_mul",), "both": ("channel_add", "channel_mul")}


@pytest.mark.parametrize("pool_type,fusion", [("attn", "add"), ("avg", "add"), ("attn", "scale"), ("attn", "both")])
def test_gc_equals_authors_context_block(pool_type, fusion):
    mod = _gcnet_module()
    theirs = mod.ContextBlock(64, ratio=1 / 16, pooling_type="att" if pool_type == "attn" else "avg",
                              fusion_types=_GC_FUSIONS[fusion]).double()  # fmt: skip
    # C = 64, r = 16: their int(C / r) = 4 hidden channels; ours would be 8 (never below rd_divisor), so set it
    ours = GlobalContext(64, rd_channels=theirs.planes, pool_type=pool_type, fusion=fusion).double()
    _randomise(theirs)
    pairs = []
    if pool_type == "attn":
        pairs.append(("conv_mask.weight", "conv_mask.weight"))  # their mask bias cancels in the softmax
    for ours_name, their_name in (("add_transform", "channel_add_conv"), ("scale_transform", "channel_mul_conv")):
        if getattr(ours, ours_name) is not None:
            pairs += [(f"{ours_name}.{i}.{p}", f"{their_name}.{i}.{p}") for i in (0, 1, 3) for p in ("weight", "bias")]
    _copy(ours, theirs, pairs)
    for shape in [(2, 64, 9, 13), (1, 64, 1, 1), (3, 64, 20, 7)]:
        ours.zero_grad()
        theirs.zero_grad()
        x = torch.randn(shape, dtype=torch.float64)
        diff = _assert_same_forward_and_grads(ours, theirs, x, pairs)
        print(f"gc {pool_type}/{fusion} {shape}: max |diff| {diff:.2e}")


# --------------------------------------------------------------------------------------
# Criss-cross: speedinghzl/CCNet, cc_attention/functions.py (CrissCrossAttention, pure PyTorch)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("recurrence", [1, 2])
def test_criss_cross_equals_authors(recurrence, monkeypatch):
    mod = authors_module("speedinghzl/CCNet", "cc_attention/functions.py")
    # their -inf mask is created with .cuda(); on this CPU-only machine .cuda() is made a no-op
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    theirs = mod.CrissCrossAttention(64).double()
    ours = CrissCrossAttention(64, recurrence=recurrence).double()
    assert ours.rd_channels == theirs.query_conv.out_channels == 8
    _randomise(theirs)
    pairs = [("query.weight", "query_conv.weight"), ("query.bias", "query_conv.bias"),  # their key bias cancels
             ("key.weight", "key_conv.weight"), ("value.weight", "value_conv.weight"),
             ("value.bias", "value_conv.bias"), ("gamma", "gamma")]  # fmt: skip
    _copy(ours, theirs, pairs)

    def run_theirs(x):  # RCCA: the same module R times (networks/ccnet.py, RCCAModule.forward)
        for _ in range(recurrence):
            x = theirs(x)
        return x

    for shape in [(2, 64, 7, 9), (1, 64, 12, 5), (2, 64, 1, 6)]:
        ours.zero_grad()
        theirs.zero_grad()
        x = torch.randn(shape, dtype=torch.float64)
        diff = _assert_same_forward_and_grads(ours, theirs, x, pairs, run_theirs=run_theirs)
        print(f"crisscross R={recurrence} {shape}: max |diff| {diff:.2e}")


# --------------------------------------------------------------------------------------
# Polarized self-attention: DeLightCMU/PSA, semantic-segmentation/network/PSA.py (PSA_p)
# --------------------------------------------------------------------------------------


def test_polarized_channel_only_branch_equals_authors_psa_p():
    """Their PSA_p's channel-only branch (``spatial_pool``) is Eq. 2 without the LayerNorm: equal to ours with
    norm_layer=None. Their spatial-only branch (``channel_pool``) places the softmax differently from Eq. 3
    (see the module docstring), so it is not compared."""
    mod = authors_module("DeLightCMU/PSA", "semantic-segmentation/network/PSA.py")
    theirs = mod.PSA_p(64, 64).double()
    ours = PolarizedSelfAttention(64, norm_layer=None).double()
    _randomise(theirs)
    pairs = [("ch_wq.weight", "conv_q_right.weight"), ("ch_wv.weight", "conv_v_right.weight"),
             ("ch_wz.weight", "conv_up.weight")]  # fmt: skip
    _copy(ours, theirs, pairs)
    for shape in [(2, 64, 9, 13), (1, 64, 1, 1), (3, 64, 16, 5)]:
        ours.zero_grad()
        theirs.zero_grad()
        x = torch.randn(shape, dtype=torch.float64)
        diff = _assert_same_forward_and_grads(ours, theirs, x, pairs, lambda t: t * ours.channel_only(t),
                                              theirs.spatial_pool)  # fmt: skip
        print(f"polarized channel-only {shape}: max |diff| {diff:.2e}")



# --------------------------------------------------------------------------------------
# DAT: LeapLabTHU/DAT, models/dat_blocks.py (DAttentionBaseline) at the CVPR 2022 release
# --------------------------------------------------------------------------------------

DAT_CVPR_COMMIT = "42b489e"  # "Add pretrained weights and motivations"; main has since become DAT++


def _dat_cvpr_module(tmp_path):
    """The CVPR 2022 version of their file, read from the repository's history (main holds DAT++)."""
    root = authors_root("LeapLabTHU/DAT")
    try:
        src = subprocess.run(["git", "-C", str(root), "show", f"{DAT_CVPR_COMMIT}:models/dat_blocks.py"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"authors' code not available: commit {DAT_CVPR_COMMIT} of LeapLabTHU/DAT cannot be read ({e})")
    file = tmp_path / "dat_blocks_cvpr2022.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location("_authors_dat_cvpr2022", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _float64_consts(theirs, x):
    """Their forward, with float64 as the default dtype: their offset range is built with torch.tensor([1 / Hk,
    1 / Wk]), which would otherwise round 1 / Hk to float32 (a 1e-6 difference that is not ours to test)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return theirs(x)[0]
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    "size,heads,groups,stride,k_size",
    [(14, 4, 2, 1, 5), (9, 2, 1, 4, 7), (7, 4, 4, 2, 3)],  # DAT-T stage-3 style; our defaults; more groups
)
def test_dat_equals_authors_cvpr2022(tmp_path, size, heads, groups, stride, k_size):
    """Their module is built for one size (position table (2H-1) x (2W-1)); at that size, with our table of
    rel_pos_size = H, the two are equal. Their key bias cancels in the softmax (we have none)."""
    mod = _dat_cvpr_module(tmp_path)
    c = 32
    theirs = mod.DAttentionBaseline(
        q_size=(size, size), kv_size=(size, size), n_heads=heads, n_head_channels=c // heads, n_groups=groups,
        attn_drop=0.0, proj_drop=0.0, stride=stride, offset_range_factor=2, use_pe=True, dwc_pe=False,
        no_off=False, fixed_pe=False, stage_idx=0,
    ).double()  # fmt: skip
    theirs.conv_offset[0] = nn.Conv2d(c // groups, c // groups, k_size, stride, k_size // 2, groups=c // groups).double()
    ours = DeformableAttention(c, num_heads=heads, offset_groups=groups, stride=stride, k_size=k_size,
                               offset_range_factor=2.0, rel_pos_size=size, residual=False).double()  # fmt: skip
    _randomise(theirs)
    with torch.no_grad():
        theirs.conv_offset[3].weight.mul_(10)  # large offsets
        theirs.rpe_table.mul_(20)
    pairs = [(f"{p}.{t}", f"{p}.{t}") for p in ("proj_q", "proj_v", "proj_out") for t in ("weight", "bias")]
    pairs += [("proj_k.weight", "proj_k.weight"), ("conv_offset.0.weight", "conv_offset.0.weight"),
              ("conv_offset.0.bias", "conv_offset.0.bias"), ("conv_offset.1.weight", "conv_offset.1.norm.weight"),
              ("conv_offset.1.bias", "conv_offset.1.norm.bias"), ("conv_offset.3.weight", "conv_offset.3.weight"),
              ("rpe_table", "rpe_table")]  # fmt: skip
    _copy(ours, theirs, pairs)
    for batch in (1, 3):
        ours.zero_grad()
        theirs.zero_grad()
        x = torch.randn(batch, c, size, size, dtype=torch.float64)
        diff = _assert_same_forward_and_grads(ours, theirs, x, pairs, run_theirs=lambda t: _float64_consts(theirs, t))
        print(f"dat size {size} heads {heads} groups {groups} r {stride} k {k_size} batch {batch}: max |diff| {diff:.2e}")
