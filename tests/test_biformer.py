"""Bi-level routing attention (arXiv:2303.08810): the fast path against a slow reference.

``reference_bra`` below restates the documented semantics of
:class:`yolo_attention.modules.biformer.BiLevelRoutingAttention` with explicit Python loops over
images, query regions and heads, building every region from the list of its *real* token
coordinates, so padding never exists there: padded tokens cannot leak into region means or
attention by construction. Comparisons run in float64, where the top-k routing of the two
implementations cannot differ by rounding.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import yolo_attention.modules.biformer as bra_mod
from yolo_attention.modules.biformer import BiFormerBlock, BiLevelRoutingAttention, RegionRouter
from yolo_attention.ops import RegionGeometry, region_grid, routed_attention, sdpa_gather, triton_bra, trust

ROOT = Path(__file__).resolve().parents[1]


def _load_official():
    spec = importlib.util.spec_from_file_location("official_bra", ROOT / "benchmarks" / "official_bra.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("official_bra", mod)
    spec.loader.exec_module(mod)
    return mod.OfficialBRA


OfficialBRA = _load_official()


# ----------------------------------------------------------------------------- reference


def reference_grid(size: int, n_win: int):
    """(count, length): regions along a side of ``size`` tokens, as documented."""
    length = math.ceil(size / min(size, n_win))
    return math.ceil(size / length), length


def reference_bra(m: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Documented BRA semantics, one image, query region and head at a time."""
    n, c, h, w = x.shape
    heads, hd = m.num_heads, c // m.num_heads
    nh, rh = reference_grid(h, m.n_win)
    nw, rw = reference_grid(w, m.n_win)
    q, k, v = F.conv2d(x, m.qkv.weight, m.qkv.bias).split(c, dim=1)

    # real token coordinates of every region, row-major over the region grid
    regions = []
    for i in range(nh):
        for j in range(nw):
            ys = [y for y in range(i * rh, (i + 1) * rh) if y < h]
            xs = [xx for xx in range(j * rw, (j + 1) * rw) if xx < w]
            coords = [(y, xx) for y in ys for xx in xs]
            assert coords, "every region holds at least one real token"
            regions.append((torch.tensor([p[0] for p in coords]), torch.tensor([p[1] for p in coords])))
    k_top = min(m.topk, len(regions))

    images = []
    for b in range(n):
        # routing: region means over real tokens of the detached q and k
        q_mean = torch.stack([q[b, :, ys, xs].detach().mean(-1) for ys, xs in regions])  # (R, C)
        k_mean = torch.stack([k[b, :, ys, xs].detach().mean(-1) for ys, xs in regions])
        affinity = q_mean @ k_mean.T
        outputs = []  # per query region: (region tokens, C)
        for r, (ys, xs) in enumerate(regions):
            routed = torch.topk(affinity[r], k_top).indices.tolist()
            key_y = torch.cat([regions[j][0] for j in routed])  # real tokens of the routed regions
            key_x = torch.cat([regions[j][1] for j in routed])
            q_tok, k_tok, v_tok = q[b, :, ys, xs].T, k[b, :, key_y, key_x].T, v[b, :, key_y, key_x].T
            per_head = []
            for hh in range(heads):
                ch = slice(hh * hd, (hh + 1) * hd)
                attn = torch.softmax(q_tok[:, ch] @ k_tok[:, ch].T * m.scale, dim=-1)
                per_head.append(attn @ v_tok[:, ch])
            outputs.append(torch.cat(per_head, dim=1))
        all_y = torch.cat([ys for ys, _ in regions])  # the regions partition the map
        all_x = torch.cat([xs for _, xs in regions])
        images.append(x.new_zeros(h, w, c).index_put((all_y, all_x), torch.cat(outputs)).permute(2, 0, 1))
    o = torch.stack(images)
    if m.lepe is not None:
        o = o + m.lepe(v)  # depthwise conv on the unpadded v (zero padding at the borders)
    return F.conv2d(o, m.proj.weight, m.proj.bias)


def _grads(module, x, y, g):
    params = [p for p in module.parameters()]
    return torch.autograd.grad(y, [x] + params, g)


def _assert_matches_reference(m, x, atol=1e-10):
    x = x.clone().requires_grad_(True)
    y = m(x)
    ref = reference_bra(m, x)
    assert y.shape == ref.shape == x.shape
    torch.testing.assert_close(y, ref, atol=atol, rtol=1e-9)
    g = torch.randn_like(y)
    for name, a, b in zip(["input"] + [n for n, _ in m.named_parameters()], _grads(m, x, y, g), _grads(m, x, ref, g)):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-8, msg=lambda s, name=name: f"grad of {name}: {s}")


def _module(c, heads, topk=4, n_win=7, side_dwconv=3, **kw):
    return BiLevelRoutingAttention(c, num_heads=heads, n_win=n_win, topk=topk, side_dwconv=side_dwconv, **kw).double()


# ----------------------------------------------------------------------------- the reference itself


def test_reference_grid_matches_module_grid():
    for size in range(1, 60):
        for s in (1, 3, 7, 8):
            count, length = reference_grid(size, s)
            assert region_grid(size, s) == (count, length, count * length)
            assert (count - 1) * length < size <= count * length  # no empty region, < 1 region of padding


def test_reference_matches_dense_attention_when_one_region_is_routed_everywhere():
    # one region per side (n_win=1): BRA is plain global multi-head attention plus lepe
    torch.manual_seed(1)
    m = _module(16, 4, topk=1, n_win=1)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    q, k, v = F.conv2d(x, m.qkv.weight, m.qkv.bias).flatten(2).split(16, dim=1)
    qh, kh, vh = (t.view(2, 4, 4, 30).transpose(-1, -2) for t in (q, k, v))
    o = torch.softmax(qh @ kh.transpose(-1, -2) * 16**-0.5, -1) @ vh  # (2, heads, 30, 4)
    o = o.transpose(-1, -2).reshape(2, 16, 5, 6) + m.lepe(v.view(2, 16, 5, 6))
    torch.testing.assert_close(reference_bra(m, x), F.conv2d(o, m.proj.weight, m.proj.bias))
    torch.testing.assert_close(m(x), reference_bra(m, x))


# ----------------------------------------------------------------------------- fast path == reference

CASES = [
    # (batch, channels, H, W, num_heads, topk)
    (1, 16, 14, 14, 4, 4),  # divisible
    (3, 16, 14, 14, 2, 4),  # divisible, batch 3
    (1, 32, 21, 21, 8, 4),  # divisible, regions of 3x3
    (2, 16, 5, 7, 2, 4),  # smaller than n_win along H
    (1, 32, 15, 20, 16, 4),  # non-divisible both ways
    (1, 16, 33, 47, 1, 3),  # non-divisible, one head
    (1, 16, 1, 1, 4, 4),  # one token
    (3, 16, 3, 5, 4, 4),  # smaller than n_win: topk > regions
    (2, 16, 9, 4, 8, 50),  # topk far above the number of regions
]


# the recompute (CUDA default) path shares all code but the attention call: a subset suffices
MODES = [(case, False) for case in CASES] + [(CASES[i], True) for i in (1, 4, 7, 8)]


@pytest.mark.parametrize(
    "case,recompute", MODES, ids=lambda v: "n{}c{}_{}x{}_h{}_k{}".format(*v) if isinstance(v, tuple) else ["saved", "recompute"][v]
)
def test_fast_path_matches_reference(case, recompute):
    n, c, h, w, heads, topk = case
    torch.manual_seed(hash(case) % 1000)
    m = _module(c, heads, topk=topk)
    m.recompute = recompute
    _assert_matches_reference(m, torch.randn(n, c, h, w, dtype=torch.float64))


@pytest.mark.parametrize("n_win,side_dwconv", [(3, 5), (4, 0), (2, 3)])
def test_other_grids_and_lepe(n_win, side_dwconv):
    torch.manual_seed(2)
    m = _module(16, 4, topk=2, n_win=n_win, side_dwconv=side_dwconv)
    _assert_matches_reference(m, torch.randn(2, 16, 10, 13, dtype=torch.float64))


def test_chunked_paths_match_reference(monkeypatch):
    # force many chunks of query regions in the no-grad and the recompute paths
    monkeypatch.setattr(sdpa_gather, "CHUNK_ELEMENTS", 1)
    torch.manual_seed(3)
    m = _module(16, 4)
    x = torch.randn(2, 16, 15, 20, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference_bra(m, x))
    assert len(sdpa_gather.chunk_bounds(torch.empty(50, 9, 4, 4), torch.zeros(50, 4, dtype=torch.long))) > 1
    m.recompute = True
    _assert_matches_reference(m, x)


def test_float32_close_to_reference():
    torch.manual_seed(4)
    m = BiLevelRoutingAttention(32, num_heads=4)
    x = torch.randn(2, 32, 14, 21)
    ref = reference_bra(m.double(), x.double()).float()
    torch.testing.assert_close(m.float()(x), ref, atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- padding


def test_padding_invariance_padded_tokens_never_leak():
    # the reference has no padded tokens at all. The fast path pads x with zeros before the
    # projection, so its padded tokens hold q = k = v = bias: large biases would make them
    # dominate routing and attention if they were not excluded
    torch.manual_seed(5)
    m = _module(16, 4)
    with torch.no_grad():
        m.qkv.bias.uniform_(-30, 30)
    for h, w in [(15, 20), (8, 9), (13, 13)]:
        _assert_matches_reference(m, torch.randn(1, 16, h, w, dtype=torch.float64))


def test_divisible_maps_need_no_mask(monkeypatch):
    masks = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        masks.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(sdpa_gather.F, "scaled_dot_product_attention", spy)
    m = BiLevelRoutingAttention(16, num_heads=4)
    m(torch.randn(1, 16, 14, 21))
    assert masks == [None]
    m(torch.randn(1, 16, 16, 21))  # 6 regions of 3 rows: 2 padded rows
    assert masks[-1] is not None and masks[-1].dtype == torch.bool and not bool(masks[-1].all())


# ----------------------------------------------------------------------------- the official algorithm


@pytest.mark.parametrize("shape,heads,topk", [((2, 32, 14, 14), 8, 4), ((1, 16, 21, 28), 4, 4), ((1, 64, 28, 28), 8, 16)])
def test_agrees_with_official_algorithm_on_divisible_sizes(shape, heads, topk):
    torch.manual_seed(7)
    c = shape[1]
    ours = _module(c, heads, topk=topk)
    official = OfficialBRA(c, num_heads=heads, topk=topk).double()
    official.load_state_dict(ours.state_dict())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y, y_off = ours(x), official(x)
    torch.testing.assert_close(y, y_off)
    g = torch.randn_like(y)
    for a, b in zip(_grads(ours, x, y, g), _grads(official, x, y_off, g)):
        torch.testing.assert_close(a, b)


def test_official_algorithm_asserts_divisibility():
    with pytest.raises(AssertionError):
        OfficialBRA(16, num_heads=4)(torch.randn(1, 16, 15, 14))


# ----------------------------------------------------------------------------- memory


def _saved_numels(m, x):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    return y, sizes


@pytest.mark.parametrize("recompute", [False, True])
def test_attention_matrix_is_not_kept_for_backward(recompute):
    n, c, heads, side = 2, 16, 8, 28  # regions of 16 tokens, 4 routed: 64 keys, head dim 2
    m = BiLevelRoutingAttention(c, num_heads=heads)
    m.recompute = recompute
    x = torch.randn(n, c, side, side, requires_grad=True)
    _, sizes = _saved_numels(m, x)
    attention_matrix = n * 49 * heads * 16 * 64
    assert max(sizes) < attention_matrix / 4
    if recompute:
        # only q, k, v (and small things): nothing of the size of the top-k K/V copies
        gathered = n * 49 * 4 * 16 * c
        assert max(sizes) < gathered


def test_recompute_saves_less_than_gathered_kv():
    x = torch.randn(2, 32, 28, 28, requires_grad=True)
    m = BiLevelRoutingAttention(32, num_heads=4)
    totals = {}
    for mode in (False, True):
        m.recompute = mode
        _, sizes = _saved_numels(m, x)
        totals[mode] = sum(sizes)
    assert totals[True] < 0.7 * totals[False]


# ----------------------------------------------------------------------------- arguments and inputs


def test_channels_not_divisible_by_heads_raises():
    with pytest.raises(ValueError, match=r"BiLevelRoutingAttention: argument 'channels' \(30\) must be divisible by 'num_heads' \(8\)"):
        BiLevelRoutingAttention(30, num_heads=8)
    with pytest.raises(ValueError, match=r"BiFormerBlock: argument 'channels' \(30\) must be divisible by 'num_heads' \(4\)"):
        BiFormerBlock(30, num_heads=4)


@pytest.mark.parametrize("kw", [{"topk": 0}, {"n_win": 0}, {"num_heads": 0}, {"side_dwconv": 2}, {"side_dwconv": True}])
def test_bad_arguments_raise(kw):
    with pytest.raises(ValueError, match="BiLevelRoutingAttention"):
        BiLevelRoutingAttention(16, **{"num_heads": 4, **kw})
    with pytest.raises(ValueError, match="BiFormerBlock"):  # the block names itself, not its BRA
        BiFormerBlock(16, **{"num_heads": 4, **kw})


@pytest.mark.parametrize("drop_path", [1.0, -0.1, "0.1", True])
def test_biformer_block_bad_drop_path(drop_path):
    with pytest.raises(ValueError, match=r"BiFormerBlock: argument 'drop_path' must be a number in \[0, 1\)"):
        BiFormerBlock(16, num_heads=4, drop_path=drop_path)


def test_wrong_input_raises():
    m = BiLevelRoutingAttention(16, num_heads=4)
    with pytest.raises(ValueError, match="channels=16"):
        m(torch.randn(1, 8, 14, 14))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(16, 14, 14))


def test_channels_last_train_eval_and_batch_one():
    torch.manual_seed(8)
    m = BiLevelRoutingAttention(32, num_heads=4)
    for shape in [(1, 32, 14, 14), (3, 32, 15, 20), (1, 32, 7, 1)]:
        x = torch.randn(*shape)
        y = m.train()(x)
        y_cl = m(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(y_cl, y, atol=1e-6, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(m.eval()(x), y, atol=1e-6, rtol=1e-5)
        xg = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        m.train()(xg).square().sum().backward()
        assert xg.grad.shape == x.shape and torch.isfinite(xg.grad).all()


def test_bfloat16_forward_backward():
    torch.manual_seed(9)
    m = BiLevelRoutingAttention(32, num_heads=4)
    x = torch.randn(2, 32, 15, 21)
    y32 = m(x)
    mb = BiLevelRoutingAttention(32, num_heads=4).to(torch.bfloat16)
    mb.load_state_dict(m.state_dict())
    xb = x.to(torch.bfloat16).requires_grad_(True)
    yb = mb(xb)
    assert yb.dtype == torch.bfloat16 and yb.shape == x.shape
    yb.float().square().sum().backward()
    assert torch.isfinite(xb.grad.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad.float()).all() for p in mb.parameters())
    # routing may flip on bf16 near-ties: most outputs are still close to float32
    close = ((yb.float() - y32).abs() <= 0.05 + 0.05 * y32.abs()).float().mean()
    assert close > 0.9


def test_kernel_attribute():
    m = BiLevelRoutingAttention(16, num_heads=4)
    x = torch.randn(1, 16, 14, 14)
    m.kernel = "sdpa"
    y = m(x)
    m.kernel = "cuda-magic"
    with pytest.raises(ValueError, match="BiLevelRoutingAttention: attribute 'kernel' must be"):
        m(x)
    if not triton_bra.INTERPRET:  # CPU tensors cannot run the Triton kernels
        m.kernel = "triton"
        with pytest.raises(RuntimeError, match="BiLevelRoutingAttention: attribute 'kernel' = 'triton' needs a CUDA"):
            m(x)
    m.kernel = "auto"  # on CPU: the SDPA path
    torch.testing.assert_close(m(x), y)


def test_old_pickles_without_recompute_attribute_still_run():
    m = BiLevelRoutingAttention(16, num_heads=4)
    del m.recompute, m.kernel
    x = torch.randn(1, 16, 14, 14, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None


def test_modules_pickled_before_the_ops_split_load_and_compute_the_same():
    # pickled by the code of commit 9468bdd (before yolo_attention/ops and the router submodule);
    # one module also lacks the later attributes `kernel` and `recompute`
    saved = torch.load(ROOT / "tests" / "data" / "bra_pickled_9468bdd.pt", weights_only=False)
    for name, m in saved["modules"].items():
        bra = m.attn if isinstance(m, BiFormerBlock) else m
        assert isinstance(bra.router, RegionRouter), name
        assert "router" not in "".join(m.state_dict())  # the state dict is the old one
        routes = []
        bra.router.register_forward_hook(lambda mod, args, out: routes.append(out))
        for x, y_old, g_old in zip(saved["inputs"], saved["outputs"][name], saved["input_grads"][name]):
            x = x.clone().requires_grad_(True)
            y = m(x)
            y.square().sum().backward()
            # bit-identical on the machine that wrote the file; other CPUs may round differently
            torch.testing.assert_close(y, y_old, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(x.grad, g_old, atol=1e-5, rtol=1e-5)
        assert len(routes) == 2 and routes[0].dtype == torch.int64


def test_old_module_layout_gets_a_router_on_unpickling():
    m = BiLevelRoutingAttention(16, num_heads=4)
    x = torch.randn(1, 16, 9, 11)
    y = m(x)
    del m._modules["router"]  # the __dict__ layout of modules pickled before the router existed
    m2 = pickle.loads(pickle.dumps(m))
    assert isinstance(m2.router, RegionRouter)
    torch.testing.assert_close(m2(x), y, atol=0, rtol=0)


# ----------------------------------------------------------------------------- routing tap, region attention


def test_router_is_a_parameterless_tap_and_state_dicts_are_unchanged():
    from yolo_attention.registry import get_attention_info

    m = BiLevelRoutingAttention(16, num_heads=4)
    assert list(m.router.parameters()) == [] and list(m.router.buffers()) == []
    assert set(m.state_dict()) == {f"{p}.{t}" for p in ("qkv", "lepe", "proj") for t in ("weight", "bias")}
    blk = BiFormerBlock(16, num_heads=4)
    for name, owner in (("bra", m), ("biformer", blk)):
        (tap,) = get_attention_info(name).taps
        assert tap.kind == "routing" and isinstance(owner.get_submodule(tap.module), RegionRouter)


def test_router_hook_reads_the_routing_that_attention_used(monkeypatch):
    torch.manual_seed(15)
    m = _module(16, 4, topk=3)
    seen, used = [], []
    m.router.register_forward_hook(lambda mod, args, out: seen.append(out))
    real = bra_mod.routed_attention
    monkeypatch.setattr(bra_mod, "routed_attention", lambda qkv, routes, *a, **kw: used.append(routes) or real(qkv, routes, *a, **kw))
    x = torch.randn(2, 16, 15, 20, dtype=torch.float64)
    m(x)
    (routes,) = seen
    assert routes.shape == (2, 5 * 7, 3) and routes.dtype == torch.int64  # 15x20 with n_win 7: 5 x 7 regions of 3x3
    assert used[0] is routes
    # and it is the documented routing: top-k of region-mean affinities over real tokens
    q, k, _ = F.conv2d(x, m.qkv.weight, m.qkv.bias).split(16, dim=1)
    q_r = F.avg_pool2d(F.pad(q, (0, 1)), 3) * 9 / torch.tensor([9.0] * 6 + [6.0], dtype=torch.float64)
    k_r = F.avg_pool2d(F.pad(k, (0, 1)), 3) * 9 / torch.tensor([9.0] * 6 + [6.0], dtype=torch.float64)
    affinity = q_r.flatten(2).transpose(1, 2) @ k_r.flatten(2)
    torch.testing.assert_close(routes, affinity.topk(3, dim=-1).indices, atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(2, 16, 15, 20), (1, 16, 14, 14)])
def test_region_attention_is_the_attention_the_forward_used(monkeypatch, shape):
    torch.manual_seed(16)
    m = _module(16, 4, topk=3)
    used = {}
    real = bra_mod.routed_attention

    def spy(qkv, routes, geometry, *a, **kw):
        used.update(qkv=qkv, o=real(qkv, routes, geometry, *a, **kw))
        return used["o"]

    monkeypatch.setattr(bra_mod, "routed_attention", spy)
    x = torch.randn(*shape, dtype=torch.float64)
    m(x)
    image = shape[0] - 1
    for region in (0, 6, 34 if shape[2] == 15 else 48):
        ra = m.region_attention(x, region, image=image)
        t = ra.geometry.tokens
        assert ra.probs.shape == (4, t, 3 * t) and ra.routes.shape == (3,)
        torch.testing.assert_close(ra.probs.sum(-1), torch.ones(4, t, dtype=torch.float64))
        v = used["qkv"][image, ra.routes, :, 2].flatten(0, 1).transpose(0, 1)  # (heads, k*T, hd)
        o = used["o"][image, region].transpose(0, 1)  # (heads, T, hd)
        torch.testing.assert_close(ra.probs @ v, o)
        real_keys = ra.geometry.valid_tokens()[ra.routes].flatten()
        assert bool((ra.probs[..., ~real_keys] == 0).all())
    with pytest.raises(ValueError, match="BiLevelRoutingAttention: argument 'region' must be an int in"):
        m.region_attention(x, 10_000)
    with pytest.raises(ValueError, match="BiLevelRoutingAttention: argument 'image' must be an int in"):
        m.region_attention(x, 0, image=shape[0])


# ----------------------------------------------------------------------------- ops: geometry, routed_attention


def test_region_geometry_layout_round_trip_and_masks():
    g = RegionGeometry.of(15, 20, 7)
    assert g == RegionGeometry(n_h=5, n_w=7, region_h=3, region_w=3, height=15, width=20, padded=True)
    assert (g.regions, g.tokens, g.routed(4), g.routed(99)) == (35, 9, 4, 35)
    x = torch.randn(2, 3, 15, 20)
    xr = g.to_regions(x)
    assert xr.shape == (2, 35, 9, 3)
    torch.testing.assert_close(g.to_map(xr, 3), x, atol=0, rtol=0)
    valid = g.valid_tokens()
    assert int(valid.sum()) == 15 * 20 and bool((xr[:, ~valid] == 0).all())
    routes = torch.tensor([[6, 0], [13, 34]])
    mask = g.key_mask(routes)
    assert mask.shape == (2, 1, 1, 18)
    torch.testing.assert_close(mask[:, 0, 0], valid[routes].flatten(1))
    assert RegionGeometry.of(14, 21, 7).key_mask(routes) is None


def test_routed_attention_matches_dense_attention_over_routed_real_tokens():
    torch.manual_seed(17)
    g = RegionGeometry.of(8, 9, 3)  # 3 x 3 regions of 3 x 3 tokens, one padded column
    n, heads, hd, k_top = 2, 2, 4, 2
    qkv = torch.randn(n, g.regions, g.tokens, 3, heads, hd, dtype=torch.float64, requires_grad=True)
    routes = torch.stack([torch.randperm(g.regions)[:k_top] for _ in range(n * g.regions)]).view(n, g.regions, k_top)
    o = routed_attention(qkv, routes, g, 0.3, backend="sdpa", recompute=True)
    valid = g.valid_tokens()
    expected = torch.empty_like(o)
    for b in range(n):
        for r in range(g.regions):
            keys = qkv[b, routes[b, r]].flatten(0, 1)[valid[routes[b, r]].flatten()]  # (real keys, 3, heads, hd)
            p = torch.softmax(torch.einsum("thd,shd->hts", qkv[b, r, :, 0], keys[:, 1]) * 0.3, -1)
            expected[b, r] = torch.einsum("hts,shd->thd", p, keys[:, 2])
    torch.testing.assert_close(o, expected)
    grad = torch.randn_like(o)
    torch.testing.assert_close(*(torch.autograd.grad(t, qkv, grad)[0] for t in (o, expected)))
    with pytest.raises(ValueError, match="routed_attention: argument 'backend' must be"):
        routed_attention(qkv, routes, g, 0.3, backend="flash")


# ----------------------------------------------------------------------------- when "auto" trusts Triton


def _record(capability=(9, 0), triton_version="3.1.0", sha=None, errors=None):
    errors = errors or {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}
    tol = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}
    checks = tuple(
        trust.TritonCheck(dtype, (2, 64, 28, 28), err, err, tol[dtype], fell_back=False) for dtype, err in errors.items()
    )
    return trust.TritonRecord("NVIDIA H100", capability, triton_version, sha or trust.kernel_sha256(), checks=checks)


@pytest.fixture
def gpu_like(monkeypatch):
    """A pretend CUDA device (capability 9.0) and triton 3.1.0, with no environment override."""
    monkeypatch.delenv(trust.ENV_VAR, raising=False)
    monkeypatch.setattr(trust.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(trust, "_triton_version", lambda: "3.1.0")
    trust._recorded_dtypes.cache_clear()
    yield torch.device("cuda")
    trust._recorded_dtypes.cache_clear()


def test_auto_trusts_only_a_passed_record_of_this_configuration(gpu_like, tmp_path):
    path = tmp_path / "triton_verified.json"
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    assert not trust.auto_trusts(gpu_like, f32, path)  # no file: no trust
    trust.record_check(_record(errors={"float32": 1e-6, "float16": 1e-3, "bfloat16": 0.9}), path)
    assert trust.auto_trusts(gpu_like, f32, path) and trust.auto_trusts(gpu_like, f16, path)
    assert not trust.auto_trusts(gpu_like, bf16, path)  # failed its check
    assert not trust.auto_trusts(torch.device("cpu"), f32, path)
    for other in (_record(capability=(8, 0)), _record(triton_version="3.2.0"), _record(sha="0" * 64)):
        path.unlink()
        trust.record_check(other, path)
        assert not trust.auto_trusts(gpu_like, f32, path), other
    data = json.loads(path.read_text())  # what the GPU script writes
    assert data["format"] == 1 and data["records"][0]["checks"][0]["passed"] is True


def test_record_check_replaces_its_configuration_and_drops_other_kernel_sources(tmp_path):
    path = tmp_path / "triton_verified.json"
    trust.record_check(_record(sha="0" * 64), path)
    trust.record_check(_record(capability=(8, 0)), path)
    trust.record_check(_record(), path)
    trust.record_check(_record(errors={"float32": 0.5}), path)  # the same configuration again
    records = trust.load_records(path)
    assert [(r.capability, r.passed_dtypes()) for r in records] == [((8, 0), {"float32", "float16", "bfloat16"}), ((9, 0), set())]
    assert records[0] == _record(capability=(8, 0))  # read back as written


def test_shipped_record_file_is_readable():
    records = trust.load_records()  # yolo_attention/ops/triton_verified.json, written by benchmarks/gpu_biformer.sh
    assert trust.RECORD_PATH.exists() and all(r.checks for r in records)


def test_environment_variable_forces_or_forbids(gpu_like, tmp_path, monkeypatch):
    path = tmp_path / "triton_verified.json"
    trust.record_check(_record(), path)
    monkeypatch.setenv(trust.ENV_VAR, "0")
    assert not trust.auto_trusts(gpu_like, torch.float32, path)
    monkeypatch.setenv(trust.ENV_VAR, "1")
    assert trust.auto_trusts(gpu_like, torch.float64, path)  # never checked, but forced
    monkeypatch.setenv(trust.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="YOLO_ATTENTION_TRITON must be '1'"):
        trust.auto_trusts(gpu_like, torch.float32, path)


def test_damaged_record_file_trusts_nothing_with_a_warning(gpu_like, tmp_path):
    path = tmp_path / "triton_verified.json"
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="cannot read the Triton records"):
        assert not trust.auto_trusts(gpu_like, torch.float32, path)


def test_backend_choice(monkeypatch):
    from yolo_attention.ops import routed

    qkv = torch.empty(1, 4, 9, 3, 2, 8)
    monkeypatch.setattr(routed.triton_bra, "available", lambda t: True)  # as on a CUDA machine
    monkeypatch.setattr(routed, "auto_trusts", lambda device, dtype: dtype == torch.float32)
    monkeypatch.delenv(trust.ENV_VAR, raising=False)
    assert routed._uses_triton("auto", qkv) and routed._uses_triton("triton", qkv)
    assert not routed._uses_triton("auto", qkv.half()) and routed._uses_triton("triton", qkv.half())
    assert not routed._uses_triton("sdpa", qkv)
    assert not routed._uses_triton("triton", torch.empty(1, 4, 9, 3, 1, 256))  # head dim above the kernels' limit
    monkeypatch.setenv(trust.ENV_VAR, "0")
    with pytest.warns(RuntimeWarning, match="YOLO_ATTENTION_TRITON=0 forbids"):
        assert not routed._uses_triton("triton", qkv)
    monkeypatch.setattr(routed.triton_bra, "available", lambda t: False)  # CPU without the interpreter
    monkeypatch.setenv(trust.ENV_VAR, "1")
    assert not routed._uses_triton("auto", qkv)


# ----------------------------------------------------------------------------- BiFormerBlock


@pytest.mark.parametrize("layer_scale,drop_path", [(None, 0.0), (1e-2, 0.2)])
def test_biformer_block_shapes_and_grads(layer_scale, drop_path):
    torch.manual_seed(10)
    blk = BiFormerBlock(32, num_heads=4, layer_scale=layer_scale, drop_path=drop_path)
    for shape in [(2, 32, 14, 14), (1, 32, 15, 20), (1, 32, 3, 5)]:
        x = torch.randn(*shape, requires_grad=True)
        y = blk.train()(x)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all()
        for name, p in blk.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        blk.zero_grad()
    blk.eval()
    with torch.no_grad():
        x = torch.randn(1, 32, 15, 20)
        torch.testing.assert_close(blk(x), blk(x))


def test_biformer_block_is_the_documented_composition():
    torch.manual_seed(11)
    blk = BiFormerBlock(16, num_heads=4).double().eval()
    x = torch.randn(1, 16, 10, 13, dtype=torch.float64)
    x1 = x + blk.pos_embed(x)
    x2 = x1 + reference_bra(blk.attn, blk.norm1(x1))
    expected = x2 + blk.mlp(blk.norm2(x2))
    torch.testing.assert_close(blk(x), expected)


# ----------------------------------------------------------------------------- export and compile


def test_onnx_legacy_export_dynamic_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(12)
    m = BiLevelRoutingAttention(16, num_heads=4).eval()
    path = tmp_path / "bra.onnx"
    torch.onnx.export(
        m,
        (torch.randn(1, 16, 14, 14),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 16, 14, 14), (2, 16, 21, 21), (1, 16, 15, 20), (1, 16, 33, 47), (1, 16, 5, 7), (1, 16, 1, 1)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            y = m(x)
        (y_ort,) = sess.run(None, {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y_ort), y, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    torch.manual_seed(13)
    m = BiLevelRoutingAttention(16, num_heads=4)
    cm = torch.compile(m, fullgraph=True)
    for shape in [(2, 16, 14, 14), (1, 16, 15, 20)]:  # the second call compiles with dynamic shapes
        x = torch.randn(*shape, requires_grad=True)
        y = cm(x)
        y.square().sum().backward()
        gx = x.grad
        x.grad = None
        y0 = m(x)
        y0.square().sum().backward()
        torch.testing.assert_close(y, y0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("recompute", [False, True])
def test_autocast_bfloat16(recompute):
    torch.manual_seed(14)
    m = BiLevelRoutingAttention(32, num_heads=4)
    m.recompute = recompute
    x = torch.randn(2, 32, 15, 20, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# ----------------------------------------------------------------------------- Triton kernels (interpreter)

TRITON_CHECK = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # run the Triton kernels on CPU, before the module defines them
import torch
import yolo_attention.modules.biformer as bm
from yolo_attention.ops import triton_bra
assert triton_bra._bra_fwd is not None, "triton kernels not defined"
torch.manual_seed(0)
cases = [(1, 16, 14, 14, 2, 4, torch.float32), (2, 16, 9, 10, 4, 3, torch.float32), (1, 16, 3, 5, 2, 8, torch.float32),
         (1, 16, 9, 10, 2, 4, torch.float16)]  # the interpreter's tl.dot mishandles bfloat16: checked on GPU only
for n, c, h, w, heads, topk, dtype in cases:
    m = bm.BiLevelRoutingAttention(c, heads, topk=topk).to(dtype)
    x = torch.randn(n, c, h, w, dtype=dtype, requires_grad=True)
    g = torch.randn(n, c, h, w, dtype=dtype)
    res = {}
    for kernel in ("sdpa", "triton"):
        m.kernel = kernel
        y = m(x)
        res[kernel] = (y, torch.autograd.grad(y, [x, *m.parameters()], g))
        with torch.no_grad():
            torch.testing.assert_close(m(x), y)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(res["triton"][0], res["sdpa"][0], **tol)
    for a, b in zip(res["triton"][1], res["sdpa"][1]):
        torch.testing.assert_close(a, b, **{k: 10 * v for k, v in tol.items()})
assert not triton_bra.FAILED_CONFIGS, triton_bra.FAILED_CONFIGS

# "auto" runs the kernels only when allowed (no GPU record can match on CPU): count kernel launches
launches = []
forward = triton_bra._forward
triton_bra._forward = lambda *a: launches.append(1) or forward(*a)
m = bm.BiLevelRoutingAttention(16, 2)
x = torch.randn(1, 16, 9, 10)
with torch.no_grad():
    for env, kernel, runs in [("", "auto", 0), ("1", "auto", 1), ("0", "auto", 0), ("0", "triton", 0), ("", "triton", 1)]:
        os.environ["YOLO_ATTENTION_TRITON"] = env
        m.kernel = kernel
        before = len(launches)
        m(x)
        assert len(launches) - before == runs, (env, kernel, launches)
print("triton ok")
"""


@pytest.mark.slow
def test_triton_kernels_match_sdpa_in_the_interpreter():
    pytest.importorskip("triton")
    import subprocess

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 and "triton ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
