"""``yolo-attention explain``: taps read every module's own tensors, the pictures show them, bad input is refused.

The command itself runs in-process on CPU on generated images with models built from YAML
(random weights), at a small input size, so it takes seconds.
"""

from __future__ import annotations

import base64
import copy
import io
import pickle
import re
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
from yolo_attention.explain.figures import PANEL_WIDTH, Panel, render_panel, save_grid
from yolo_attention.explain.taps import TapRecorder, find_attention_layers, no_taps_note
from yolo_attention.explain.views import TOP_MAPS, ImageView, Notes, channel_values, layer_panels, tap_panels
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


def _check_shape(tap: AttentionTap, t: torch.Tensor, shape_in, owner) -> None:
    """The shape a tap of this kind and layout must have, for a module input ``shape_in`` (N, C, H, W)."""
    _, c, h, w = shape_in
    assert t.shape[0] == N
    if tap.kind == "channel":  # (N, K) or (N, K, 1, 1): the C channels, a part of them (C/2, groups), or M x C
        assert t.ndim == 2 or (t.ndim == 4 and t.shape[2:] == (1, 1)), tuple(t.shape)
        k = t.shape[1]
        assert (k % c == 0) if tap.layout == "branch-major" else (c % k == 0), (k, c)
    elif tap.kind == "spatial":  # (N, K, H | 1, W | 1) with K dividing C (one map, per group, per channel); or a grid
        assert t.ndim == 4 and c % t.shape[1] == 0, tuple(t.shape)
        if tap.layout != "grid":
            assert t.shape[2:] in ((h, w), (h, 1), (1, w)), f"a spatial tap must lie over the {h}x{w} input"
    elif tap.kind == "maps":
        assert t.ndim in (3, 4) and (t.shape[2:] == (h, w) if t.ndim == 4 else t.shape[2] == h * w)
    elif tap.kind == "routing":
        h, w = shape_in[-2:]
        regions = region_grid(h, owner.n_win)[0] * region_grid(w, owner.n_win)[0]
        assert t.ndim == 3 and t.shape[1] == regions and not t.is_floating_point()
        assert 0 <= int(t.min()) and int(t.max()) < regions
    elif tap.kind == "tokens":
        assert t.ndim == 4 and t.shape[-1] == h * w


def _upsampled(m: torch.Tensor) -> np.ndarray:
    up = F.interpolate(m[None, None], size=(H * STRIDE, W * STRIDE), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def _expected_heat(tap: AttentionTap, t: torch.Tensor) -> np.ndarray:
    """What a spatial panel must show, built here from the captured tensor: its maps' mean, each per-row
    or per-column weight spread along its row or column, a grid's cells spread over the input as adaptive
    pooling lays them out (each input position one STRIDE x STRIDE block of pixels)."""
    m = t.float().mean(0)
    if tap.layout == "grid":
        cells = F.adaptive_avg_pool2d(m[None, None], (H, W))[0, 0]
        return cells.repeat_interleave(STRIDE, 0).repeat_interleave(STRIDE, 1).numpy()
    return _upsampled(m.expand(H, W).contiguous())


def _check_channel_picture(tap: AttentionTap, t: torch.Tensor, v: np.ndarray) -> None:
    """The values are the tensor's; the plot has one bar per weight at its mean over the images, sorted
    (for branch-major: per channel, one bar per branch stacked on the previous branch's)."""
    from matplotlib.figure import Figure

    from yolo_attention.explain.figures import ChannelSeries, _channel_axes

    flat = t.reshape(N, -1).numpy()
    expected = flat.reshape(N, -1, C) if tap.layout == "branch-major" else flat
    np.testing.assert_array_equal(v, expected)
    ax = Figure().subplots()
    _channel_axes(ax, ChannelSeries("t", v, C))
    bars = [p.get_data() for p in ax.patches]  # one filled step outline per series: (tops, edges, baselines)
    means = v.mean(0).reshape(-1, v.shape[-1])  # (series, bars)
    assert len(bars) == len(means) and all(len(b.values) == means.shape[1] for b in bars)
    order = np.argsort(-means[0], kind="stable")
    np.testing.assert_allclose(np.diff(bars[0].edges), 1)
    for b, m in zip(bars, means):
        np.testing.assert_allclose(b.values - b.baseline, m[order], rtol=1e-6, atol=1e-7)
    assert np.all(np.diff(means[0][order]) <= 0)


def _check_maps_panels(tap: AttentionTap, t: torch.Tensor, panels: list[Panel], layer, cap) -> None:
    """Each panel is the map its title names, and the maps shown are the most used (or highest) ones."""
    maps = t.reshape(*t.shape[:2], H, W)[1]
    score = maps.flatten(1).amax(1)  # the maps' peaks, unless a maps tap is a distribution over its K maps
    for k, other in enumerate(layer.info.taps):
        u = cap.tensors[(layer.path, k)][1].flatten(1)
        if other.kind == "maps" and len(u) > 1 and torch.allclose(u.sum(0), torch.ones(()), atol=1e-3):
            score = u.mean(1)  # its mean over the positions: how much each map is used
            break
    shown = [int(p.title.split(", map ")[1].split()[0]) for p in panels]
    assert len(shown) == min(TOP_MAPS, len(maps))
    top = score.sort(descending=True).values[: len(shown)]
    assert sorted(score[shown].tolist(), reverse=True) == pytest.approx(top.tolist())
    for j, p in zip(shown, panels):
        np.testing.assert_allclose(p.heat, _upsampled(maps[j]), atol=1e-7)


def test_hooks_capture_every_registered_module(attn_name):
    """For every registered module: each declared tap yields a tensor of its kind's (and layout's) shape, and
    the picture drawn from it shows exactly that tensor: channel bars are its weights (one bar per weight),
    spatial maps its maps' mean resized to the image, maps panels the maps named. A module without taps
    gets the 'not visualised' note."""
    x = torch.randn(N, C, H, W)
    layers, rec, cap = _capture(make(attn_name, C), x)
    assert len(layers) == 1 and layers[0].index == 1
    layer = layers[0]
    assert rec.problems == {}, rec.problems
    if not layer.info.taps:
        assert "not visualised" in no_taps_note(layer) and layer.info.yaml_name in no_taps_note(layer)
        return
    assert cap.input_shapes[layer.path] == (N, C, H, W)
    notes = Notes()
    values = channel_values(layer, cap, notes)
    for k, tap in enumerate(layer.info.taps):
        t = cap.tensors[(layer.path, k)]
        owner = layer.module.get_submodule(tap.module.rpartition(".")[0])
        _check_shape(tap, t, cap.owner_inputs.get((layer.path, k), x).shape, owner)
        panels = tap_panels(layer, k, cap, _view(1), notes)
        assert all(render_panel(p).width == PANEL_WIDTH for p in panels)
        if tap.kind == "channel":
            assert not panels
            _check_channel_picture(tap, t, values[k])
        elif tap.kind == "spatial":
            assert len(panels) == 1 and panels[0].heat.shape == (H * STRIDE, W * STRIDE)
            np.testing.assert_allclose(panels[0].heat, _expected_heat(tap, t[1]), rtol=1e-5, atol=1e-7)
        elif tap.kind == "maps":
            _check_maps_panels(tap, t, panels, layer, cap)
        else:  # routing and tokens: the pictures' contents are checked by the tests below
            assert panels and all(p.image is not None for p in panels)
            assert all(p.heat is None or p.heat.shape == (H * STRIDE, W * STRIDE) for p in panels)
    assert not notes, notes


@pytest.mark.parametrize("tap, message", [
    ({"kind": "spatial", "layout": "branch-major"}, "'layout' for a 'spatial' tap must be None or 'grid'"),
    ({"kind": "channel", "layout": "grid"}, "'layout' for a 'channel' tap must be None or 'branch-major'"),
    ({"kind": "maps", "layout": "grid"}, "'layout' for a 'maps' tap must be None, got 'grid'"),
])
def test_tap_layout_must_fit_its_kind(tap, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AttentionTap("gate", **tap)
    old = AttentionTap("gate", "channel", "weights", "sigmoid")  # declared before the layout field: still valid
    assert old.layout is None and old == AttentionTap("gate", "channel", "weights", "sigmoid", None)


def test_branch_major_tap_of_the_wrong_width_is_a_note():
    """A branch-major tap whose width is no multiple of the module's channels is a note, not a crash."""
    with registry_snapshot():
        register_attention("branch_test", taps=[AttentionTap("conv", "channel", layout="branch-major")])(_OddBranches)
        layers, _, cap = _capture(_OddBranches(C), torch.randn(N, C, H, W))
        notes = Notes()
        assert channel_values(layers[0], cap, notes) == {}
    assert len(notes) == 1 and "not a multiple of the module's 32 input channels" in notes[0]


class _OddBranches(nn.Module):
    """Test-local module whose 'branch weights' (C + 1 of them) cannot be M blocks of C."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels + 1, 1)

    def forward(self, x):
        return x * self.conv(x.mean((2, 3), keepdim=True))[:, :-1].sigmoid()


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


def test_branch_weights_reach_the_channel_plot(workspace, tmp_path, monkeypatch):
    """yolov8n with SK at the neck: each layer's selection weights reach the channel plot as (images, M, C),
    M = 2 branches of the layer's own C channels, and the plot is written."""
    from yolo_attention.explain import run as explain_run
    from yolo_attention.integrations.yaml_gen import make_attention_yaml

    _, images, _ = workspace
    drawn = []

    def spy(path, series, title=""):
        drawn.extend(series)
        return save_channel_plots(path, series, title)

    save_channel_plots = explain_run.save_channel_plots
    monkeypatch.setattr(explain_run, "save_channel_plots", spy)
    yaml = make_attention_yaml("yolov8n", "sk", "neck", out=tmp_path / "yolov8n-sk.yaml")
    result = explain_models([str(yaml)], [images / "wide.png"], tmp_path / "out", ExplainOptions(imgsz=64))
    assert not [n for n in result.notes if "SKAttention" in n], result.notes
    assert [(s.values.shape, s.channels) for s in drawn] == [((1, 2, c), c) for c in (64, 128, 256)]
    assert all(np.allclose(s.values.sum(1), 1, atol=1e-5) for s in drawn)  # a softmax across the branches
    assert (tmp_path / "out" / "attention" / "yolov8n-sk" / "channels.png").read_bytes().startswith(PNG_MAGIC)


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
