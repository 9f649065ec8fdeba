"""Classic YOLO repositories (YOLOv5/v7/v9 ``models/yolo.py``), tested with the ``yolov5`` PyPI package."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
import warnings
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # yolov5 imports the deprecated pkg_resources
    pytest.importorskip("yolov5.models.yolo")
    import yaml
    import yolov5
    import yolov5.models.yolo as y5
    from yolov5.utils.loss import ComputeLoss

import yolo_attention  # noqa: E402
from yolo_attention import register_attention  # noqa: E402
from yolo_attention.integrations import classic  # noqa: E402
from yolo_attention.integrations.classic import (  # noqa: E402
    install_import_hook,
    load_classic_yaml,
    make_classic_yaml,
    register_classic,
)
from yolo_attention.integrations.yaml_gen import insertion_points  # noqa: E402
from yolo_attention.registry import _LOOKUP, _REGISTRY  # noqa: E402

SEED_MODULES = ("se", "a2", "bam", "bra", "biformer")
PKG = Path(yolov5.__file__).parent
REPO_ROOT = Path(__file__).resolve().parents[1]

register_classic(y5)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _model(cfg) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return y5.Model(cfg)


def _attn_layers(model, info_cls):
    return [m for m in model.model if isinstance(m, info_cls)]


# ------------------------------------------------------------------------------------------- registration


def test_every_registered_name_resolves_in_classic_namespace():
    for info in yolo_attention.list_attention():
        entry = y5.__dict__[info.yaml_name]
        assert entry._attention_info is info
        assert eval(info.yaml_name, y5.__dict__) is entry  # what parse_model does
    assert classic.is_classic_registered(y5)
    assert register_classic("yolov5.models.yolo") is y5  # by import name, idempotent


def test_never_overwrites_repo_names_and_late_registration():
    def parse_model(d, ch):  # pragma: no cover - never called
        raise AssertionError

    class SE(nn.Module):  # the "repository's own" SE
        pass

    fake = types.ModuleType("fake_models_yolo")
    fake.parse_model, fake.SE = parse_model, SE
    with pytest.warns(UserWarning, match="already defines 'SE'"):
        register_classic(fake)
    assert fake.SE is SE
    assert fake.BAM._attention_info.cls is yolo_attention.BAM

    @register_attention("classic_late_probe", kind="custom")
    class ClassicLateProbe(nn.Module):
        def __init__(self, channels: int, scale: float = 1.0):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    try:
        assert y5.ClassicLateProbe._attention_info.cls is ClassicLateProbe
        assert fake.ClassicLateProbe._attention_info.cls is ClassicLateProbe
    finally:
        _REGISTRY.pop("classiclateprobe", None)
        for k in [k for k, v in _LOOKUP.items() if v == "classiclateprobe"]:
            del _LOOKUP[k]


def test_not_a_classic_module_is_rejected():
    with pytest.raises(RuntimeError, match="no parse_model"):
        register_classic(types.ModuleType("models.yolo"))


def test_import_hook_registers_a_freshly_imported_package_module():
    name = "yolov5.models.yolo"
    original = sys.modules.pop(name)
    try:
        install_import_hook()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import importlib

            fresh = importlib.import_module(name)
        assert fresh is not original
        assert fresh.__dict__["SE"]._attention_info.cls is yolo_attention.SE
    finally:
        sys.modules[name] = original
        import yolov5.models as pkg

        pkg.yolo = original


# ------------------------------------------------------------------------------------------------ YAMLs


def test_places_on_yolov5s():
    d, stem = load_classic_yaml("yolov5s")
    assert stem == "yolov5s"
    assert insertion_points(d, "backbone") == [4, 6, 9]
    assert insertion_points(d, "neck") == [17, 20, 23]
    assert insertion_points(d, "sppf") == [9]


def test_classic_yaml_layout_and_renumbering(tmp_path):
    p = make_classic_yaml("yolov5s", "bam", "neck", out=tmp_path / "m.yaml", kwargs={"rd_ratio": 0.25}, gated=True)
    text = p.read_text(encoding="ascii")
    d = yaml.safe_load(text)
    src, _ = load_classic_yaml(PKG / "models" / "yolov5s.yaml")
    for k in ("nc", "depth_multiple", "width_multiple", "anchors"):
        assert d[k] == src[k]
    assert d["backbone"] == src["backbone"]
    assert d["head"][-1] == [[18, 22, 26], 1, "Detect", ["nc", "anchors"]]
    rows = d["backbone"] + d["head"]
    assert [i for i, r in enumerate(rows) if r[2] == "BAM"] == [18, 22, 26]
    assert rows[18][3] == [{"rd_ratio": 0.25, "gated": True}]
    assert "backbone:\n  # [from, number, module, args]\n  [[-1, 1, Conv, [64, 6, 2, 2]],  # 0" in text
    assert "anchors:\n  - [10, 13, 16, 30, 33, 23]" in text

    dflt = make_classic_yaml(PKG / "models" / "yolov5n.yaml", "se", "backbone,sppf")
    try:
        assert dflt.name == "yolov5n-se-backbone_sppf.yaml"
        rows = [*(dd := yaml.safe_load(dflt.read_text()))["backbone"], *dd["head"]]
        assert [i for i, r in enumerate(rows) if r[2] == "SE"] == [5, 8, 12]
    finally:
        dflt.unlink()


def test_unknown_model_name_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="path of your repository's model YAML"):
        make_classic_yaml("yolov5q", "se", out=tmp_path / "x.yaml")
    with pytest.raises(FileNotFoundError):
        make_classic_yaml(tmp_path / "missing.yaml", "se")


def test_cli_classic_format(tmp_path):
    from yolo_attention.integrations.yaml_gen import main

    out = tmp_path / "cli.yaml"
    assert main(["yolov5n", "--attn", "se", "--at", "neck", "--format", "classic", "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["head"][-1][0] == [18, 22, 26]


# --------------------------------------------------------------------------------------- build and train


def test_one_row_fits_every_width(tmp_path):
    """The same rows (implicit and explicit, unscaled channels) build at width 0.25 and 0.5."""
    p = make_classic_yaml("yolov5s", "se", "neck,sppf", out=tmp_path / "s.yaml")
    d = yaml.safe_load(p.read_text())
    assert d["backbone"][10] == [-1, 1, "SE", []]  # after SPPF (layer 9): new layer 10
    d["backbone"][10] = [-1, 1, "SE", [1024, 0.25]]  # explicit channels, in the YAML's own (unscaled) units
    chans = {}
    for scale, gw in (("n", 0.25), ("s", 0.5)):
        d["width_multiple"] = gw  # the only difference between the two files
        cfg = classic.dump_classic_yaml(d, tmp_path / f"yolov5{scale}-se.yaml")
        m = _model(cfg)
        ses = _attn_layers(m, yolo_attention.SE)
        assert [se.i for se in ses] == [10, 19, 23, 27]
        chans[scale] = [se.channels for se in ses]
        with torch.no_grad():
            out = m.eval()(torch.zeros(1, 3, 64, 64))[0]
        assert out.shape == (1, 252, 85)
    assert chans == {"n": [256, 64, 128, 256], "s": [512, 128, 256, 512]}
    assert ses[0].rd_channels == 128  # rd_ratio 0.25 from the row


def _hyp() -> dict:
    with open(PKG / "data" / "hyps" / "hyp.scratch-low.yaml") as f:
        return yaml.safe_load(f)


def _train_steps(model, steps=2, size=64):
    model.hyp = _hyp()
    model.train()
    loss_fn = ComputeLoss(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    imgs = torch.rand(2, 3, size, size)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 7, 0.3, 0.6, 0.2, 0.2]])
    for _ in range(steps):
        loss, items = loss_fn(model(imgs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss).all()
    return loss.item()


def _build_train_save(tmp_path, scale, attn, train=True):
    info = yolo_attention.get_attention_info(attn)
    cfg = make_classic_yaml(f"yolov5{scale}", attn, "neck", out=tmp_path / f"yolov5{scale}-{attn}-neck.yaml")
    model = _model(cfg)
    layers = _attn_layers(model, info.cls)
    assert [m.i for m in layers] == [18, 22, 26]
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    if train:
        before = [p.detach().clone() for m in layers for p in m.parameters()]
        _train_steps(model)
        after = [p.detach() for m in layers for p in m.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), "attention parameters did not train"
    ckpt = tmp_path / f"yolov5{scale}-{attn}.pt"
    torch.save({"model": deepcopy(model).half()}, ckpt)  # as the repositories save
    x = torch.rand(1, 3, 64, 64)
    ref = deepcopy(model).half().float().eval()
    with torch.no_grad():
        expected = ref(x)[0]
    torch.save({"x": x, "y": expected}, tmp_path / f"yolov5{scale}-{attn}.ref")
    return ckpt


_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    import torch
    assert "yolo_attention" not in sys.modules
    for ck in sys.argv[1:]:
        model = torch.load(ck, map_location="cpu", weights_only=False)["model"].float().eval()
        ref = torch.load(ck[:-3] + ".ref", weights_only=False)
        with torch.no_grad():
            y = model(ref["x"])[0]
        torch.testing.assert_close(y, ref["y"], rtol=1e-4, atol=1e-4)
        print("ok", ck, type(model.model[18]).__module__)
    """
)


def _load_fresh(ckpts):
    r = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *map(str, ckpts)], capture_output=True, text=True, env=_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") == len(ckpts)
    assert "yolo_attention.modules" in r.stdout


def test_yolov5n_se_neck_trains_saves_and_loads_fresh(tmp_path):
    ckpt = _build_train_save(tmp_path, "n", "se")
    _load_fresh([ckpt])


@pytest.mark.slow
def test_every_seed_module_at_neck_n_and_s(tmp_path):
    ckpts = []
    for attn in SEED_MODULES:
        ckpts.append(_build_train_save(tmp_path, "n", attn, train=True))
        ckpts.append(_build_train_save(tmp_path, "s", attn, train=attn == "bra"))
    _load_fresh(ckpts)


# ------------------------------------------------------------------------------------------------ runner

_FAKE_YOLO = '''
"""A minimal stand-in for a classic repository's models/yolo.py (written for this test)."""
import math

import torch.nn as nn


class Conv(nn.Conv2d):
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__(c1, c2, k, s, k // 2)


def parse_model(d, ch):
    gd, gw = d["depth_multiple"], d["width_multiple"]
    layers = []
    for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
        m = eval(m) if isinstance(m, str) else m
        if m is Conv:
            c1, c2 = ch[f], int(math.ceil(args[0] * gw / 8) * 8)
            args = [c1, c2, *args[1:]]
        else:
            c2 = ch[f]
        layers.append(m(*args))
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), ch


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        import yaml
        with open(cfg) as fh:
            self.yaml = yaml.safe_load(fh)
        self.model, self.ch = parse_model(self.yaml, ch=[3])

    def forward(self, x):
        return self.model(x)
'''

_FAKE_TRAIN = '''
import argparse, sys
import torch
from models.yolo import Model

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--cfg")
    opt = p.parse_args()
    import os
    assert os.path.samefile(sys.argv[0], "train.py") and sys.argv[1:] == ["--cfg", opt.cfg], sys.argv
    assert sys.path[0] == os.path.dirname(os.path.abspath(__file__)), sys.path
    m = Model(opt.cfg)
    y = m(torch.zeros(1, 3, 32, 32))
    print("built", [type(l).__name__ for l in m.model], m.ch, tuple(y.shape))
'''

_FAKE_CFG = """
nc: 1
depth_multiple: 1.0
width_multiple: 0.25
backbone:
  [[-1, 1, Conv, [64, 3, 2]],
   [-1, 1, SE, []],
   [-1, 1, BAM, [{gated: true}]],
  ]
head:
  [[-1, 1, Conv, [128, 3, 2]],
   [-1, 1, BiLevelRoutingAttention, [32, {num_heads: 2, topk: 1, n_win: 2}]],
  ]
"""


def test_runner_with_a_classic_style_repo(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "yolo.py").write_text(_FAKE_YOLO)
    (tmp_path / "train.py").write_text(_FAKE_TRAIN)
    (tmp_path / "models" / "tiny.yaml").write_text(_FAKE_CFG)
    cmd = [sys.executable, "-m", "yolo_attention.classic", "train.py", "--cfg", "models/tiny.yaml"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "built ['Conv', 'SE', 'GatedAttention', 'Conv', 'BiLevelRoutingAttention'] [16, 16, 16, 32, 32]" in r.stdout
    assert "(1, 32, 8, 8)" in r.stdout

    # without the runner the repository does not know the names
    r = subprocess.run([sys.executable, "train.py", "--cfg", "models/tiny.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode != 0 and "NameError" in r.stderr


def test_runner_usage_and_missing_script(tmp_path, capsys):
    assert classic.main([]) == 2
    assert classic.main(["--help"]) == 0
    assert classic.main([str(tmp_path / "nope.py")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_runner_with_the_yolov5_package(tmp_path):
    cfg = make_classic_yaml("yolov5n", "biformer", "neck", out=tmp_path / "models" / "yolov5n-biformer-neck.yaml")
    (tmp_path / "train.py").write_text(textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("ignore")
        import torch
        from yolov5.models.yolo import Model

        assert __name__ == "__main__"
        cfg = sys.argv[sys.argv.index("--cfg") + 1]
        m = Model(cfg)
        print("layers", [type(l).__name__ for l in m.model][18::4])
        print("out", tuple(m.eval()(torch.zeros(1, 3, 64, 64))[0].shape))
        """
    ))
    cmd = [sys.executable, "-m", "yolo_attention.classic", "train.py", "--cfg", str(cfg.relative_to(tmp_path))]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "layers ['BiFormerBlock', 'BiFormerBlock', 'BiFormerBlock']" in r.stdout
    assert "out (1, 252, 85)" in r.stdout
