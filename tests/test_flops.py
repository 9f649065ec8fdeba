"""FLOP counting: exact counts on hand-computable cases, attention's extra work, invariance."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import yolo_attention as ya
from yolo_attention.flops import FlopCounter, FlopReport, count_flops, format_flops, model_flops

ALL = [info.name for info in ya.list_attention()]


def torch_count(module, *inputs):
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(*inputs)
    return fc.get_total_flops()


# ----------------------------------------------------------------------------- exact counts


def test_conv1x1_exact():
    conv = nn.Conv2d(3, 4, 1)
    r = count_flops(conv, torch.randn(1, 3, 5, 5))
    # 25 output positions x 4 output channels, each a 3-term dot product: 2 * 3 * 4 * 25 = 600
    assert r.matmul == 600
    # plus one bias add per output element: 4 * 25 = 100
    assert r.total == 700
    assert r.by_op == {"convolution": 700}
    assert r.by_module == {"": 700}
    assert r.torch_builtin == torch_count(conv, torch.randn(1, 3, 5, 5)) == 600
    assert r.uncounted == {}

    no_bias = nn.Conv2d(3, 4, 1, bias=False)
    assert count_flops(no_bias, torch.randn(1, 3, 5, 5)).total == 600


def test_conv1x1_training_step_exact():
    conv = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 5, 5)
    fwd = 2 * 3 * 4 * 50 + 4 * 50  # 1200 matmul + 200 bias
    grad_input = 2 * 3 * 4 * 50  # grad_out (2x4x5x5) through the weight: as costly as the forward
    grad_weight = 2 * 3 * 4 * 50
    grad_bias = 4 * 50 - 4  # sum of grad_out over N, H, W: 50 values per channel, 49 adds
    r = count_flops(conv, x, training=True)
    assert r.training
    assert r.total == fwd + grad_input + grad_weight + grad_bias
    assert r.matmul == 1200 + grad_input + grad_weight
    r = count_flops(conv, x, training=True, input_grad=False)  # first layer: no grad for the image
    assert r.total == fwd + grad_weight + grad_bias


def test_depthwise_conv_backward_not_overcounted():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(1, 8, 6, 6)
    fwd = 2 * 9 * 8 * 36  # one 9-tap product per output element
    r = count_flops(conv, x, training=True)
    assert r.total == r.matmul == 3 * fwd  # forward, grad_input, grad_weight
    assert r.torch_builtin > r.matmul  # torch's formula counts the backward as if groups were 1


def test_softmax_exact():
    r = count_flops(nn.Softmax(dim=-1), torch.randn(2, 3, 10))
    # 60 elements x 5: running-max compare, subtract max, exp, add to sum, divide
    assert r.total == 5 * 60 == 300
    assert r.matmul == 0
    assert r.torch_builtin == 0  # torch's counter sees nothing here


def test_grid_sample_and_safe_softmax_exact():
    """grid_sample (DAT): 7 per output element + 16 per point, backward twice that; SDPA's math path with a
    mask that needs a gradient runs _safe_softmax, a softmax like any other (5 per element)."""

    class Sample(nn.Module):
        def forward(self, x, grid):
            return F.grid_sample(x, grid, mode="bilinear", align_corners=True)

    x, grid = torch.randn(2, 3, 8, 8), torch.rand(2, 5, 4, 2) * 2 - 1
    r = count_flops(Sample(), x, grid)
    assert r.uncounted == {} and r.total == 7 * 2 * 3 * 5 * 4 + 16 * 2 * 5 * 4
    r = count_flops(Sample(), x, grid.requires_grad_(), training=True)
    assert r.by_op["grid_sampler_2d_backward"] == 2 * (7 * 2 * 3 * 5 * 4 + 16 * 2 * 5 * 4)
    logits = torch.randn(2, 7, 9)
    assert count_flops(_Fn(lambda t: torch.ops.aten._safe_softmax(t, -1)), logits).total == 5 * logits.numel()


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, t):
        return self.fn(t)


def test_se_exact():
    n, c, h, w = 2, 64, 8, 8
    se = ya.SE(c)
    rd = se.rd_channels
    assert rd == 8  # make_divisible(64 / 16, 8)
    pool = n * c * h * w  # mean over H x W: HW - 1 adds + 1 divide per (n, c) = N*C*H*W
    fc1 = 2 * n * c * rd + n * rd  # 1x1 conv on the pooled vector + bias
    relu = n * rd
    fc2 = 2 * n * rd * c + n * c
    gate = 3 * n * c  # sigmoid: exp, add, divide
    scale = n * c * h * w  # x * s
    r = count_flops(se, torch.randn(n, c, h, w))
    assert r.total == pool + fc1 + relu + fc2 + gate + scale == 21024
    assert r.matmul == 2 * n * c * rd * 2 == 4096
    assert r.other == r.total - r.matmul
    assert r.by_module == {"": pool + scale, "fc1": fc1, "act": relu, "fc2": fc2, "gate": gate}
    assert r.by_op == {"mean": pool, "mul": scale, "convolution": fc1 + fc2, "sigmoid": gate, "relu": relu}


def test_double_attention_exact():
    n, c, h, w = 1, 64, 8, 8
    m = ya.DoubleAttention(c)
    cm, cn, hw = m.c_m, m.c_n, h * w
    convs = 2 * n * hw * c * (cm + 2 * cn) + 2 * n * hw * cm * c  # convA, convB, convV, reconstruct
    bmm = 2 * n * cm * hw * cn + 2 * n * cm * cn * hw  # gathering and distribution
    biases = n * hw * (cm + 2 * cn + c)
    softmax = 5 * n * cn * hw * 2  # over L for B, over c_n for V
    residual = n * c * hw
    r = count_flops(m, torch.randn(n, c, h, w))
    assert r.matmul == convs + bmm
    assert r.total == convs + bmm + biases + softmax + residual
    assert r.by_op["_softmax"] == softmax


def test_norms_exact():
    ln = nn.LayerNorm(8)
    assert count_flops(ln, torch.randn(2, 5, 8)).total == 7 * 80  # mean, centre, square, add, scale, affine
    bn = nn.BatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3)
    assert count_flops(bn, x).total == 2 * 72  # eval: per-channel scale and shift
    bn.train()
    with torch.no_grad(), FlopCounter() as fc:
        bn(x)
    r = fc.report()
    assert sum(v for k, v in r.by_op.items() if "batch_norm" in k) == 7 * 72  # batch statistics
    assert r.by_op.get("add_", 0) == 1  # num_batches_tracked += 1


def test_topk_and_gather():
    class Route(nn.Module):
        def forward(self, x):
            idx = torch.topk(x, 4, dim=-1).indices  # (2, 5, 4) out of 16
            return torch.gather(x, -1, idx)

    r = count_flops(Route(), torch.randn(2, 5, 16))
    assert r.by_op["topk"] == 2 * 5 * 16 * 2  # rows x n x log2(k) comparisons
    assert r.by_op["gather"] == 0 and r.op_calls["gather"] == 1  # listed, free
    assert r.total == 320


def test_sdpa_counts_softmax_and_mask():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    mask = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    scores = 1 * 2 * 4 * 6
    matmul = 2 * scores * 8 + 2 * scores * 8  # q k^T and p v

    class Attn(nn.Module):
        def forward(self, q, k, v, attn_mask=None):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

    r = count_flops(Attn(), q, k, v)
    assert r.matmul == matmul
    assert r.total == matmul + scores * (1 + 5)  # scale + softmax per score
    r = count_flops(Attn(), q, k, v, attn_mask=mask)
    sdpa = sum(val for op, val in r.by_op.items() if "scaled_dot_product" in op or op == "bmm")
    assert sdpa - matmul == scores * (1 + 5 + 1)  # + masking


# ----------------------------------------------------------------------------- attention modules


@pytest.mark.parametrize("name", ALL)
def test_attention_total_exceeds_matmul_count(name):
    m = ya.create_attention(name, 64)
    x = torch.randn(1, 64, 14, 14)
    r = count_flops(m, x)
    assert r.uncounted == {}
    assert r.total > r.matmul
    # convolutions and projections are matmul work; a parameter-free module (SimAM) has none
    assert (r.matmul > 0) == any(p.dim() > 1 for p in m.parameters())
    # the matmul/conv part covers at least what torch's own counter sees (more where torch
    # has no formula for a kernel, e.g. CPU flash attention)
    assert r.matmul >= torch_count(m, x)
    assert r.other == sum(r.by_op.values()) - r.matmul


def test_biformer_routing_ops_are_listed():
    r = count_flops(ya.create_attention("bra", 64), torch.randn(1, 64, 14, 14))
    assert r.by_op["topk"] > 0
    gathers = [op for op in r.by_op if op in ("index", "index_select", "gather", "_unsafe_index")]
    assert gathers and all(r.by_op[op] == 0 for op in gathers)  # listed, free
    sdpa = [op for op in r.by_op if "scaled_dot_product" in op]
    assert sdpa, r.by_op


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("training", [False, True])
def test_by_module_sums_to_total(name, training):
    m = ya.create_attention(name, 32, **({"num_heads": 4} if name in ("bra", "biformer") else {}))
    r = count_flops(m, torch.randn(2, 32, 9, 9), training=training)
    assert sum(r.by_module.values()) == r.total
    assert r.inclusive()[""] == r.total
    assert sum(sum(ops.values()) for ops in r.by_module_op.values()) == r.total
    for path in r.by_module:
        assert path == "" or path in dict(m.named_modules())


def test_backward_is_charged_to_the_right_module():
    r = count_flops(ya.create_attention("bra", 32, num_heads=4), torch.randn(1, 32, 14, 14), training=True)
    lepe = r.by_module_op["lepe"]
    assert set(lepe) == {"convolution", "convolution_backward"}
    # the depthwise lepe conv (3x3) costs a small fraction of the qkv projection (32 -> 96)
    assert r.module_total("lepe") < r.module_total("qkv")


@pytest.mark.parametrize("name", ALL)
def test_counting_leaves_outputs_and_state_unchanged(name):
    m = ya.create_attention(name, 32, **({"num_heads": 4} if name in ("bra", "biformer") else {}))
    if name == "a2":
        nn.init.normal_(m.reconstruct.weight)  # not the zero-initialised identity
    m.train()
    x = torch.randn(2, 32, 11, 11)
    state = copy.deepcopy(m.state_dict())
    m.eval()
    with torch.no_grad():
        ref = m(x)
        with FlopCounter(root=m):
            inside = m(x)
    torch.testing.assert_close(inside, ref, rtol=0, atol=0)
    m.train()
    rng = torch.get_rng_state()
    for training in (False, True):
        count_flops(m, x, training=training)
    assert m.training and all(sub.training for sub in m.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in m.parameters())
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=0, atol=0)


# ----------------------------------------------------------------------------- reporting


def test_uncounted_ops_are_reported():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cosh(x) * 2

    r = count_flops(Odd(), torch.randn(3, 4))
    assert r.uncounted == {"cosh": 1}
    assert r.total == 12  # only the multiply
    assert "without a FLOP formula" in str(r)


def test_report_str_and_dict():
    r = count_flops(ya.SE(64), torch.randn(1, 64, 8, 8))
    text = str(r)
    for needle in ("FLOPs", "matmul/conv", "sigmoid", "mean", "fc1", "(all)"):
        assert needle in text
    d = r.as_dict()
    assert d["total"] == r.total and d["other"] == r.total - r.matmul
    assert isinstance(r, FlopReport)
    assert format_flops(1234567) == "1.235 MFLOPs"
    assert format_flops(12) == "12 FLOPs"


def test_count_flops_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        count_flops(lambda x: x, torch.randn(1))


def test_model_flops_ultralytics_detection_model():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", verbose=False)
    assert model.training
    r = model_flops(model, imgsz=256)
    assert model.training  # counted in eval mode, flags restored
    assert r.uncounted == {}
    assert sum(r.by_module.values()) == r.total
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(torch.zeros(1, 3, 256, 256))
    assert r.matmul == r.torch_builtin == fc.get_total_flops()
    assert r.total > r.matmul
    layers = r.inclusive(depth=2)
    assert "model.0" in layers and "model.22" in layers
    # ultralytics' own figure (thop, matmul/conv based) is within a few percent
    from ultralytics.utils.torch_utils import get_flops

    ultra = get_flops(model, 256) * 1e9
    if ultra:
        assert abs(r.total - ultra) / ultra < 0.05
