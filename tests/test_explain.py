"""``yolo-attention explain``: taps read every module's own tensors, the pictures show them, bad input is refused.

The command itself runs in-process on CPU on generated images with models built from YAML
(random weights), at a small input size, so it takes seconds.
"""

from __future__ import annotations

import base64
import copy
import io
import pickle
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _helpers import _registry_does_not_leak, attn_name, make, registry_snapshot  # noqa: F401  (fixtures)
from yolo_attention import DoubleAttention, create_attention
from yolo_attention.explain import ExplainOptions, Picture, Table, explain_models, write_report_html
from yolo_attention.explain.cli import main as explain_main
from yolo_attention.explain.detectors import Placement
from yolo_attention.explain.figures import Panel, save_grid
from yolo_attention.explain.taps import TapRecorder, find_attention_layers, no_taps_note
from yolo_attention.explain.views import ImageView, Notes, channel_values, layer_panels
from yolo_attention.modules.biformer import BiLevelRoutingAttention, region_grid
from yolo_attention.registry import AttentionTap, register_attention

C, N, H, W = 32, 2, 12, 20
STRIDE = 8  # the test "image" is the model input at 8 pixels per map cell
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Host(nn.Module):
    """A model with one attention layer at index 1, as ultralytics numbers them (``model.1``)."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), attn)

    def forward(self, x):
        return self.model(x)


def _capture(attn: nn.Module, x: torch.Tensor):
    host = _Host(attn).eval()
    layers = find_attention_layers(host)
    rec = TapRecorder(layers)
    with torch.no_grad(), rec.recording() as cap:
        host(x)
    rec.close()
    return layers, rec, cap


def _view(index: int = 0, query=(5.0, 5.0), image_shape=(H * STRIDE, W * STRIDE)) -> ImageView:
    rgb = np.full((*image_shape, 3), 128, np.uint8)
    return ImageView(index, rgb, Placement(image_shape, (H * STRIDE, W * STRIDE)), query, "test query")


def _check_shape(kind: str, t: torch.Tensor, shape_in, owner) -> None:
    assert t.shape[0] == N
    if kind == "channel":
        assert tuple(t.shape) in ((N, C, 1, 1), (N, C))
    elif kind == "spatial":
        assert t.ndim == 4 and t.shape[1] in (1, C) and t.shape[2] in (1, H) and t.shape[3] in (1, W)
        assert t.shape[2:] != (1, 1), "a spatial tap must vary over the image"
    elif kind == "maps":
        assert t.ndim in (3, 4) and (t.shape[2:] == (H, W) if t.ndim == 4 else t.shape[2] == H * W)
    elif kind == "routing":
        h, w = shape_in[-2:]
        regions = region_grid(h, owner.n_win)[0] * region_grid(w, owner.n_win)[0]
        assert t.ndim == 3 and t.shape[1] == regions and not t.is_floating_point()
        assert 0 <= int(t.min()) and int(t.max()) < regions
    elif kind == "tokens":
        assert t.ndim == 4 and t.shape[-1] == H * W


def test_hooks_capture_every_registered_module(attn_name):
    """Each declared tap yields a tensor of its kind's shape, the pictures of it are drawn without error,
    and a module without taps gets the 'not visualised' note."""
    x = torch.randn(N, C, H, W)
    layers, rec, cap = _capture(make(attn_name, C), x)
    assert len(layers) == 1 and layers[0].index == 1
    layer = layers[0]
    assert rec.problems == {}, rec.problems
    if not layer.info.taps:
        assert "not visualised" in no_taps_note(layer) and layer.info.yaml_name in no_taps_note(layer)
        return
    assert cap.input_shapes[layer.path] == (N, C, H, W)
    for k, tap in enumerate(layer.info.taps):
        t = cap.tensors[(layer.path, k)]
        owner = layer.module.get_submodule(tap.module.rpartition(".")[0])
        _check_shape(tap.kind, t, cap.owner_inputs.get((layer.path, k), x).shape, owner)
    notes = Notes()
    panels = layer_panels(layer, cap, _view(1), notes)
    values = channel_values(layer, cap, notes)
    n_channel = sum(t.kind == "channel" for t in layer.info.taps)
    assert len(values) == n_channel and all(v.shape == (N, C) for v in values.values())
    assert len(panels) >= len(layer.info.taps) - n_channel
    for p in panels:
        assert p.image is not None and (p.heat is None or p.heat.shape == (H * STRIDE, W * STRIDE))
        assert np.isfinite(p.heat).all() if p.heat is not None else p.boxes


def test_a2_taps_are_its_softmaxes_and_old_pickles_load():
    """A2's taps read softmax_L(B) and softmax_cn(V); a module pickled before they were submodules loads,
    runs and gives the same output; the state dict has no new keys."""
    torch.manual_seed(0)
    m = DoubleAttention(C, zero_init=False).eval()
    x = torch.randn(N, C, H, W)
    layers, _, cap = _capture(m, x)
    b = m.convB(x).flatten(2)
    v = m.convV(x).flatten(2)
    torch.testing.assert_close(cap.tensors[(layers[0].path, 0)], torch.softmax(b, 2), rtol=0, atol=1e-7)
    torch.testing.assert_close(cap.tensors[(layers[0].path, 1)], torch.softmax(v, 1), rtol=0, atol=1e-7)
    assert [k.split(".")[0] for k in m.state_dict()] == ["convA"] * 2 + ["convB"] * 2 + ["convV"] * 2 + ["reconstruct"] * 2

    old = copy.deepcopy(m)
    del old._modules["map_softmax"], old._modules["vector_softmax"]  # the layout pickled before the change
    loaded = pickle.loads(pickle.dumps(old))
    buf = io.BytesIO()
    torch.save(old, buf)
    buf.seek(0)
    for restored in (loaded, torch.load(buf, weights_only=False)):
        assert {"map_softmax", "vector_softmax"} <= set(restored._modules)
        with torch.no_grad():
            assert torch.equal(restored(x), m(x))


class _TokenAttention(nn.Module):
    """Test-local user module: one-head self-attention whose softmax is a submodule (a 'tokens' tap)."""

    def __init__(self, channels: int):
        super().__init__()
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.softmax = nn.Softmax(-1)

    def forward(self, x):
        q, k, v = self.qkv(x).flatten(2).chunk(3, 1)  # (N, C, L) each
        a = self.softmax((q.transpose(1, 2) @ k).unsqueeze(1) * x.shape[1] ** -0.5)  # (N, 1, L, L)
        return x + (v @ a[:, 0].transpose(1, 2)).view_as(x)


def test_tokens_tap_draws_the_query_positions_attention():
    with registry_snapshot():
        register_attention("token_attention_test", taps=[AttentionTap("softmax", "tokens", "tokens")])(_TokenAttention)
        m = _TokenAttention(C)
        x = torch.randn(N, C, H, W)
        layers, _, cap = _capture(m, x)
        notes = Notes()
        panels = layer_panels(layers[0], cap, _view(1, query=(100.0, 30.0)), notes)
    assert not notes and len(panels) == 1 and "query position" in panels[0].title
    q = (30 // STRIDE) * W + 100 // STRIDE  # the query point's cell
    with torch.no_grad():
        qs, ks, _ = m.qkv(x[1:]).flatten(2).chunk(3, 1)
        rows = torch.softmax(qs.transpose(1, 2) @ ks * C**-0.5, -1)[0]  # (L, L): every position's attention
    got = torch.from_numpy(panels[0].heat[STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE].copy()).flatten()
    assert int((rows - got).abs().sum(1).argmin()) == q  # the drawn map is the query position's row


# ------------------------------------------------------------------------------------------------ routing


def _paper_routing(m: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Top-k regions from the paper's definition: region means (real tokens) of q and k, affinity q_r k_r^T."""
    c = m.channels
    q, k, _ = F.conv2d(x, m.qkv.weight, m.qkv.bias).split(c, 1)
    h, w = x.shape[-2:]
    nh, rh, hp = region_grid(h, m.n_win)
    nw, rw, wp = region_grid(w, m.n_win)

    def means(t):
        pad = F.pad(t, (0, wp - w, 0, hp - h))
        ones = F.pad(torch.ones(1, 1, h, w), (0, wp - w, 0, hp - h))
        s = F.avg_pool2d(pad, (rh, rw), divisor_override=1)
        return (s / F.avg_pool2d(ones, (rh, rw), divisor_override=1)).flatten(2).transpose(1, 2)

    affinity = means(q) @ means(k).transpose(1, 2)
    return affinity.topk(m.topk, dim=-1).indices


@pytest.mark.parametrize("query", [(5.0, 5.0), (150.0, 90.0), (60.0, 40.0)])
def test_routing_picture_marks_exactly_the_routed_regions(query):
    m = create_attention("bra", C, num_heads=4, n_win=3, topk=2).eval()
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W)
    layers, _, cap = _capture(m, x)
    notes = Notes()
    view = _view(1, query)
    panels = layer_panels(layers[0], cap, view, notes)
    expected = _paper_routing(m, x)  # (N, R, k)
    nh, rh, _ = region_grid(H, 3)
    nw, rw, _ = region_grid(W, 3)
    row, col = int(query[1]) // STRIDE, int(query[0]) // STRIDE
    q = (row // rh) * nw + col // rw
    routing = next(p for p in panels if "routes to" in p.title)
    routed = {b.label: b for b in routing.boxes if b.label.startswith("routed region")}
    assert set(routed) == {f"routed region {r}" for r in expected[1, q].tolist()}
    assert [b.label for b in routing.boxes if b.dashed] == [f"query region {q}"]
    for label, b in routed.items():  # each rectangle covers exactly its region's tokens
        r = int(label.split()[-1])
        ri, rj = divmod(r, nw)
        want = (rj * rw * STRIDE, ri * rh * STRIDE, min((rj + 1) * rw, W) * STRIDE, min((ri + 1) * rh, H) * STRIDE)
        assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx(want)
    heat = next(p for p in panels if "token attention" in p.title)
    assert heat.heat.shape == (H * STRIDE, W * STRIDE) and heat.heat.max() > 0
    assert not notes, notes
    # the heatmap is the module's own attention: a distribution over exactly the routed regions' tokens
    from yolo_attention.explain.views import region_token_attention

    a = region_token_attention(m, x[1:2], q)[0]
    on = torch.zeros(H, W, dtype=torch.bool)
    for r in expected[1, q].tolist():
        ri, rj = divmod(r, nw)
        on[ri * rh : (ri + 1) * rh, rj * rw : (rj + 1) * rw] = True
    assert a.shape == (H, W) and torch.allclose(a.sum(), torch.tensor(1.0), atol=1e-5)
    assert (a[~on] == 0).all() and (a[on] > 0).all()


# ------------------------------------------------------------------------------------------------ geometry, HTML


@pytest.mark.parametrize("image_shape", [(300, 500), (480, 360), (97, 131)])
def test_placement_inverts_ultralytics_letterbox(image_shape):
    from ultralytics.data.augment import LetterBox

    img = np.zeros((*image_shape, 3), np.uint8)
    img[:, :] = 255
    boxed = LetterBox(new_shape=(160, 160), auto=True, stride=32)(image=img)
    p = Placement(image_shape, boxed.shape[:2])
    crop = p.crop(boxed)
    assert abs(crop.shape[0] / crop.shape[1] - image_shape[0] / image_shape[1]) < 0.05
    assert (crop[1:-1, 1:-1] == 255).all()  # no padding left inside
    for x, y in [(0.0, 0.0), (image_shape[1] - 1.0, image_shape[0] - 1.0), (17.0, 11.0)]:
        xi, yi = p.to_input(x, y)
        back = p.boxes_to_image(torch.tensor([[xi, yi, xi + 1e-3, yi + 1e-3]]))[0]
        assert float(back[0]) == pytest.approx(x, abs=1e-3) and float(back[1]) == pytest.approx(y, abs=1e-3)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tags, self.cells = [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)


def _parse_html(path: Path) -> _Images:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _embedded_pngs(parser: _Images) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert all(s.startswith(prefix) for s in parser.srcs), [s[:40] for s in parser.srcs]
    return [base64.b64decode(s[len(prefix):]) for s in parser.srcs]


def test_report_html_is_self_contained(tmp_path):
    a = save_grid(tmp_path / "a.png", [Panel("a", np.zeros((20, 30, 3), np.uint8), heat=np.random.rand(5, 5))], 1)
    b = save_grid(tmp_path / "b.png", [Panel("text only", text="nothing to draw")], 1)
    out = write_report_html(
        tmp_path / "r" / "report.html", "T <1>", intro="x & y",
        tables=[Table(["variant", "mAP"], [["se", "0.5"], ["<b>bam</b>", "0.6"]])],
        plots=[Picture(a, "plot")], pictures=[Picture(b, "pic", "group 1"), Picture(tmp_path / "gone.png", "lost")],
        notes=["<script>alert(1)</script>"])
    parser = _parse_html(out)
    pngs = _embedded_pngs(parser)
    assert len(pngs) == 2 and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert pngs[0] == a.read_bytes()
    assert "<b>bam</b>" in parser.cells and "script" not in parser.tags and "b" not in parser.tags
    assert "gone.png" in out.read_text()  # a missing picture is listed, not fatal


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Three generated images, one rectangular crop, one broken file; a YOLOv8n YAML with BAM at the neck."""
    from PIL import Image

    from yolo_attention.data import generate_synthetic
    from yolo_attention.integrations.yaml_gen import make_attention_yaml

    root = tmp_path_factory.mktemp("explain")
    data = generate_synthetic(root / "data", n_train=1, n_val=3, imgsz=96)
    images = root / "images"
    images.mkdir()
    val = sorted((data.parent / "images" / "val").iterdir())
    for p in val[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    Image.open(val[2]).crop((0, 20, 96, 76)).save(images / "wide.png")  # 96 x 56
    (images / "broken.png").write_bytes(b"not an image")
    yaml = make_attention_yaml("yolov8n", "bam", "neck", out=root / "yolov8n-bam.yaml")
    return root, images, yaml


def test_command_runs_on_cpu_with_yaml_models(workspace, capsys):
    root, images, yaml = workspace
    out = root / "out"
    rc = explain_main([str(yaml), "yolov8n.yaml", "--source", str(images), "--out", str(out), "--imgsz", "64",
                       "--device", "cpu"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "broken.png" in text.out and "no attention module" in text.out
    stems = ["000000", "000001", "wide"]
    for s in stems:
        assert (out / "detections" / f"{s}.png").read_bytes().startswith(PNG_MAGIC)
        assert (out / "attention" / "yolov8n-bam" / f"{s}.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "attention" / "yolov8n-bam" / "channels.png").is_file()
    assert not (out / "attention" / "yolov8n").exists()  # no attention: CAM only
    pngs = _embedded_pngs(_parse_html(out / "report.html"))
    assert len(pngs) == 2 * len(stems) + 1 and all(p.startswith(PNG_MAGIC) for p in pngs)
    # the same directory again is refused, and accepted with --exist-ok
    assert explain_main([str(yaml), "--source", str(images), "--out", str(out)]) == 2
    assert "--exist-ok" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--source", "EMPTY"], "no images found"),
    (["--source", "IMAGES", "--query", "500,3"], "outside"),
    (["--source", "IMAGES", "--query", "3"], "two numbers"),
    (["--source", "IMAGES", "--layer", "3"], "--layer 3 is not an attention layer"),
    (["--source", "IMAGES", "--imgsz", "16"], "--imgsz"),
], ids=["no-images", "query-outside", "query-format", "not-attention-layer", "imgsz"])
def test_bad_input_is_refused_clearly(workspace, tmp_path, capsys, args, message):
    root, images, yaml = workspace
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [str(empty) if a == "EMPTY" else str(images) if a == "IMAGES" else a for a in args]
    args += [] if "--imgsz" in args else ["--imgsz", "64"]
    assert explain_main([str(yaml), *args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_file_is_named(workspace, tmp_path, capsys):
    _, images, _ = workspace
    assert explain_main([str(tmp_path / "nope.pt"), "--source", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "nope.pt: no such file" in capsys.readouterr().err


def test_checkpoint_and_library_cams(workspace, tmp_path):
    """An ultralytics checkpoint (as ``YOLO.save`` writes it) with A2, explained with grad-cam's Grad-CAM
    and Eigen-CAM; one attention layer chosen with ``layer``."""
    pytest.importorskip("pytorch_grad_cam")
    from ultralytics import YOLO

    from yolo_attention.integrations.yaml_gen import make_attention_yaml

    root, images, _ = workspace
    ckpt = tmp_path / "a2.pt"
    YOLO(str(make_attention_yaml("yolov8n", "a2", "neck", out=tmp_path / "yolov8n-a2.yaml"))).save(ckpt)
    for method in ("gradcam", "eigencam"):
        result = explain_models([str(ckpt)], [images / "wide.png"], tmp_path / method,
                                ExplainOptions(method=method, imgsz=64, layer=20))
        assert (tmp_path / method / "attention" / "a2" / "wide.png").is_file()
        assert any("Grad" in p.title or "Eigen" in p.title or "wide" in p.title for p in result.pictures)
        assert not any("not visualised" in n for n in result.notes)


def test_classic_yolov5_checkpoint(workspace, tmp_path):
    """A YOLOv5 checkpoint saved as the repositories save it ({'model': half model}), with BAM at the neck."""
    pytest.importorskip("yolov5.models.yolo")
    pytest.importorskip("pytorch_grad_cam")
    import yolov5.models.yolo as y5

    from yolo_attention.integrations.classic import make_classic_yaml

    _, images, _ = workspace
    model = y5.Model(str(make_classic_yaml("yolov5n", "bam", "neck", out=tmp_path / "y5.yaml")), ch=3, nc=3)
    ckpt = tmp_path / "yolov5n-bam.pt"
    torch.save({"model": copy.deepcopy(model).half()}, ckpt)
    result = explain_models([str(ckpt)], [images / "wide.png"], tmp_path / "out", ExplainOptions(imgsz=64))
    assert (tmp_path / "out" / "attention" / "yolov5n-bam" / "wide.png").is_file()
    assert (tmp_path / "out" / "attention" / "yolov5n-bam" / "channels.png").is_file()
    assert not result.notes, result.notes


def test_model_labels_tell_checkpoints_apart():
    from yolo_attention.explain.detectors import model_labels

    runs = ["runs/ablate/none/seed0/weights/best.pt", "runs/ablate/bam/seed0/weights/best.pt"]
    assert model_labels(runs) == ["none/best", "bam/best"]
    assert model_labels(["yolov8n.yaml", "m/yolov8n-se.yaml"]) == ["yolov8n", "yolov8n-se"]
    assert model_labels(["x.pt", "x.pt"]) == ["x#1", "x#2"]


def test_report_embeds_the_first_images_and_the_set_level_plots():
    from yolo_attention.explain.run import CHANNEL_GROUP, _report_pictures

    pics = [Picture(Path(f"{g}{i}.png"), "t", f"Image {g}") for g in "abc" for i in range(2)]
    pics.append(Picture(Path("channels.png"), "c", CHANNEL_GROUP))
    kept = _report_pictures(pics, 2)
    assert [p.path.name for p in kept] == ["a0.png", "a1.png", "b0.png", "b1.png", "channels.png"]
