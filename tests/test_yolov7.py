"""YOLOv7 / YOLOv7-tiny on ultralytics: blocks, configs, paper parameter/FLOP parity, attention, training."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from yolo_attention.blocks import ELAN, SPPCSPC, MPDown, RepConv

pytest.importorskip("ultralytics")

import yolo_attention  # noqa: E402,F401
from yolo_attention.integrations.insert import add_attention  # noqa: E402
from yolo_attention.integrations.yaml_gen import load_model_yaml  # noqa: E402

from ultralytics.nn.tasks import DetectionModel  # noqa: E402


def _randomise_bn(module):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("c1,c2,s", [(16, 16, 1), (16, 32, 1), (16, 16, 2)])
def test_repconv_fuse_is_exact(c1, c2, s):
    m = RepConv(c1, c2, 3, s)
    _randomise_bn(m)
    m.eval()
    x = torch.randn(2, c1, 9, 11)
    y = m(x)
    m.fuse()
    assert isinstance(m.fused, nn.Conv2d)
    assert torch.allclose(m(x), y, atol=1e-5)


def test_block_shapes_and_widths():
    x = torch.randn(2, 32, 16, 20)
    elan = ELAN(32, 64, 16, 16, n=4, every=2)  # backbone E-ELAN: 4 * c_ concatenated
    assert elan.out.conv.in_channels == 4 * 16 and elan(x).shape == (2, 64, 16, 20)
    elan_h = ELAN(32, 64, 32, 16, n=4, every=1)  # head ELAN-H: 2 c_ + 4 c3
    assert elan_h.out.conv.in_channels == 2 * 32 + 4 * 16 and elan_h(x).shape == (2, 64, 16, 20)
    assert MPDown(32, 64)(x).shape == (2, 64, 8, 10)
    assert MPDown(32, 64)(torch.randn(1, 32, 15, 9)).shape == (1, 64, 8, 5)  # odd sizes: both branches agree
    assert SPPCSPC(32, 16)(x).shape == (2, 16, 16, 20)
    assert SPPCSPC(32, 16, tiny=True)(x).shape == (2, 16, 16, 20)
    with pytest.raises(ValueError, match=r"ELAN: argument 'n' \(3\) must be a multiple of 'every' \(2\)"):
        ELAN(8, 8, n=3, every=2)
    with pytest.raises(ValueError, match="MPDown: argument 'c2' must be even"):
        MPDown(8, 9)


# The paper's numbers (arXiv:2207.02696, Table 1) are for its anchor-based IDetect head: one 1x1 conv
# per level to 3 anchors x (5 + 80) = 255 outputs. Swap that for ultralytics' Detect and fold RepConv's
# training-time 1x1 branch away, and the backbone+neck must reproduce the paper.
PAPER = {"yolov7": (36.9e6, 104.7e9, (256, 512, 1024), 31), "yolov7-tiny": (6.2e6, 13.8e9, (128, 256, 512), 29)}


@pytest.mark.parametrize("name", [pytest.param("yolov7", marks=pytest.mark.slow), "yolov7-tiny"])
def test_configs_match_the_paper_after_swapping_the_head(name):
    from yolo_attention.flops import model_flops

    params_paper, flops_paper, head_in, head_index = PAPER[name]
    d, _ = load_model_yaml(name)
    model = DetectionModel(copy.deepcopy(d), verbose=False).eval()
    ours = sum(p.numel() for p in model.parameters())
    ours -= sum(p.numel() for p in model.model[head_index].parameters())
    ours -= sum(sum(p.numel() for p in m.point.parameters()) for m in model.modules() if isinstance(m, RepConv))
    idetect_params = sum(c * 255 + 255 for c in head_in)
    assert abs(ours + idetect_params - params_paper) / params_paper < 0.01

    report = model_flops(model, 640)
    flops = report.total - report.module_total(f"model.{head_index}")
    flops -= sum(report.module_total(f"model.{i}.point") for i, m in enumerate(model.model) if isinstance(m, RepConv))
    sizes = (80, 40, 20)
    idetect_flops = sum(2 * c * 255 * s * s for c, s in zip(head_in, sizes))
    # BatchNorm is counted unfused here (2 FLOPs/element); the paper's figure is for the fused model
    assert abs(flops + idetect_flops - flops_paper) / flops_paper < 0.03


@pytest.mark.parametrize(
    "name,places",
    [
        ("yolov7-tiny", (("backbone", "se"), ("neck", "bra"), ("sppf", "bam"))),
        pytest.param("yolov7", (("backbone,neck,sppf", "bam"),), marks=pytest.mark.slow),
    ],
)
def test_attention_insertion_on_yolov7(name, places):
    d, _ = load_model_yaml(name)
    base = DetectionModel(copy.deepcopy(d), verbose=False)
    x = torch.rand(1, 3, 64, 96)
    base.eval()
    with torch.no_grad():
        y0 = base(x)[0]
    for at, attn in places:
        new = add_attention(base, attn, at=at).eval()
        assert new.attention_insertion["transferred"] == len(base.state_dict())
        with torch.no_grad():
            assert torch.equal(new(x)[0], y0), (name, at)


def test_channel_changing_rows_are_checked():
    d, _ = load_model_yaml("yolov7-tiny")
    bad = copy.deepcopy(d)
    bad["backbone"][2] = [-1, 2, "ELAN", [64, 32, 32, 2, 1, "leaky"]]
    with pytest.raises(ValueError, match="ELAN: changes the channel count, so it cannot be repeated"):
        DetectionModel(bad, verbose=False)
    # the rows are sized by parse_model exactly as its own Conv rows, so a row without an output width
    # fails there, as a Conv row would
    bad = copy.deepcopy(d)
    bad["backbone"][2] = [-1, 1, "ELAN", ["leaky"]]
    with pytest.raises(TypeError):
        DetectionModel(bad, verbose=False)


def test_blocks_are_sized_by_the_builder_without_frame_writes():
    """The builder records each block's real output width (it sizes the rows as Conv rows), at every width."""
    d, _ = load_model_yaml("yolov7-tiny")
    for width in (1.0, 0.5):
        d["width_multiple"] = width
        model = DetectionModel(copy.deepcopy(d), verbose=False)
        elan = model.model[2]
        assert isinstance(elan, ELAN)
        assert elan.out.conv.out_channels == int(64 * width)  # c2 scaled by the width multiple
        assert elan.cv1.conv.out_channels == int(32 * width)  # inner widths scaled the same way
        assert model.model[3].f == -1 and model.model[4].cv1.conv.in_channels == int(64 * width)
    import yolo_attention.integrations as integrations

    sources = [p.read_text() for p in Path(integrations.__file__).parent.glob("*.py")]
    assert not any("PyFrame_LocalsToFast" in s or "ctypes" in s for s in sources)


@pytest.mark.slow
def test_yolov7_tiny_trains_reloads_and_exports(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from ultralytics import YOLO

    from yolo_attention.data.synthetic import generate_synthetic
    from yolo_attention.integrations.yaml_gen import make_attention_yaml

    data = generate_synthetic(tmp_path / "data", n_train=8, n_val=4, imgsz=64, seed=0)
    cfg = make_attention_yaml("yolov7-tiny", "bam", "neck", out=tmp_path / "yolov7-tiny-bam-neck.yaml")
    model = YOLO(str(cfg))
    model.train(data=str(data), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False,
                project=str(tmp_path), name="v7", exist_ok=True, verbose=False)
    best = tmp_path / "v7" / "weights" / "best.pt"
    code = (
        "import json; from ultralytics import YOLO\n"
        f"m = YOLO({str(best)!r})\n"
        "print(json.dumps(sorted({type(x).__name__ for x in m.model.modules()})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    kinds = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"ELAN", "SPPCSPC", "BAM"} <= set(kinds)

    net = YOLO(str(best))
    f = net.export(format="onnx", imgsz=64, dynamic=True, simplify=False, device="cpu")
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    ref_model = net.model.float().eval()
    for h, w in [(64, 64), (96, 64)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            ref = ref_model(x)[0].numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert abs(got - ref).max() < 1e-3 * max(1.0, abs(ref).max())
