"""ultralytics integration: YAML names, channel inference, YAML generation, insertion into built models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

pytest.importorskip("ultralytics")

import yolo_attention  # noqa: E402
from yolo_attention import register_attention  # noqa: E402
from yolo_attention.integrations.insert import add_attention  # noqa: E402
from yolo_attention.integrations.yaml_gen import (  # noqa: E402
    FAMILIES,
    insert_attention,
    insertion_points,
    load_model_yaml,
    make_attention_yaml,
)
from yolo_attention.modules.gated import GatedAttention  # noqa: E402
from yolo_attention.registry import _LOOKUP, _REGISTRY  # noqa: E402

from ultralytics.nn.tasks import DetectionModel  # noqa: E402

SEED_MODULES = ("se", "a2", "bam", "bra", "biformer")


def _v8(scale="n"):
    d, _ = load_model_yaml(f"yolov8{scale}")
    return d


def _build(d, scale=None):
    d = copy.deepcopy(d)
    if scale:
        d["scale"] = scale
    return DetectionModel(d, verbose=False)


def _out(model, x):
    model.eval()
    with torch.no_grad():
        y = model(x)
    return y[0] if isinstance(y, (list, tuple)) else y


def test_registered_names_resolve_in_ultralytics_namespace():
    import ultralytics.nn.tasks as tasks

    for info in yolo_attention.list_attention():
        assert tasks.__dict__[info.yaml_name]._attention_info is info


@pytest.mark.parametrize("scale", ["n", "s"])
def test_same_yaml_row_builds_at_every_scale(scale):
    d = _v8()
    d["backbone"].append([-1, 1, "SE", [0.25]])  # after SPPF: 1024 * width channels
    d["head"] = [[-1, 1, "Conv", [64, 1, 1]]]  # keep the model tiny and head-free
    m = _build(d, scale)
    se = m.model[10]
    expected = {"n": 256, "s": 512}[scale]
    assert type(se).__name__ == "SE" and se.channels == expected
    assert se.rd_channels == expected // 4
    # ultralytics' summary columns: the real class path and the real parameter count
    assert se.type == "yolo_attention.modules.se.SE"
    assert se.np == sum(p.numel() for p in se.parameters())
    m.eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 64, 64)).shape == (1, {"n": 16, "s": 32}[scale], 2, 2)


def test_explicit_channels_in_yaml_units_and_wrong_value_is_clear_error():
    d = _v8()
    d["head"] = [[-1, 1, "BAM", [1024]], [-1, 1, "Conv", [64, 1, 1]]]  # 1024 in YAML units == 256 at n
    assert _build(d, "n").model[10].channels == 256
    d["head"][0] = [-1, 1, "BAM", [256]]  # the actual value also works
    assert _build(d, "n").model[10].channels == 256
    d["head"][0] = [-1, 1, "BAM", [100]]
    with pytest.raises(ValueError, match=r"BAM: the YAML row gives channels=100.*outputs 256 channels"):
        _build(d, "n")


def test_keyword_mapping_gated_and_repeats():
    d = _v8()
    d["head"] = [
        [-1, 1, "BiLevelRoutingAttention", [{"num_heads": 4, "topk": 2}]],
        [-1, 6, "SE", [{"gated": True}]],  # depth 0.33 at n: 2 copies
        [-1, 1, "Conv", [64, 1, 1]],
    ]
    m = _build(d, "n")
    bra, seq = m.model[10], m.model[11]
    assert bra.num_heads == 4 and bra.topk == 2
    assert isinstance(seq, nn.Sequential) and len(seq) == 2 and all(isinstance(b, GatedAttention) for b in seq)
    assert seq.np == sum(p.numel() for p in seq.parameters())


def test_bad_yaml_arguments_name_the_module():
    d = _v8()
    d["head"] = [[-1, 1, "SE", [4.0]], [-1, 1, "Conv", [64, 1, 1]]]
    with pytest.raises(ValueError, match=r"SE: argument 'rd_ratio' must be a ratio"):
        _build(d, "n")
    d["head"][0] = [-1, 1, "SE", [{"nonsense": 1}]]
    with pytest.raises(TypeError, match=r"SE: bad YAML arguments.*accepts"):
        _build(d, "n")


def test_user_module_from_register_attention_is_usable_in_yaml():
    @register_attention("test_scale_gate", kind="channel")
    class TestScaleGate(nn.Module):
        def __init__(self, channels: int, init: float = 1.0):
            super().__init__()
            self.channels = channels
            self.w = nn.Parameter(torch.full((1, channels, 1, 1), init))

        def forward(self, x):
            return x * self.w

    try:
        d = _v8()
        d["head"] = [[-1, 1, "TestScaleGate", [0.5]], [-1, 1, "Conv", [64, 1, 1]]]
        m = _build(d, "n")
        assert isinstance(m.model[10], TestScaleGate) and m.model[10].w.shape[1] == 256
        assert float(m.model[10].w.detach().mean()) == 0.5
    finally:
        for k in [k for k, v in _LOOKUP.items() if v == "testscalegate"]:
            del _LOOKUP[k]
        _REGISTRY.pop("testscalegate", None)


def test_insertion_points_yolov8():
    d = _v8()
    assert insertion_points(d, "backbone") == [4, 6, 9]
    assert insertion_points(d, "neck") == [15, 18, 21]
    assert insertion_points(d, "sppf") == [9]
    assert insertion_points(d, "sppf,4") == [4, 9]
    with pytest.raises(ValueError, match="unknown place 'head'"):
        insertion_points(d, "head")
    with pytest.raises(ValueError, match="out of range"):
        insertion_points(d, "22")


def test_renumbering_rewires_every_reader():
    d = _v8()
    ins = insert_attention(d, "bam", "neck")
    rows = ins.yaml["backbone"] + ins.yaml["head"]
    assert ins.inserted == [16, 20, 24]
    assert rows[-1][0] == [16, 20, 24] and rows[-1][2] == "Detect"
    assert [rows[i][2] for i in ins.inserted] == ["BAM"] * 3
    # the concat that read layer 12 (upsampled P4 path) now reads 12 (unchanged index), the one that read
    # SPPF (9) still reads 9; the Conv after each neck output reads the attended output (-1)
    assert rows[18][0] == [-1, 12] and rows[22][0] == [-1, 9] and rows[17][0] == -1
    ins_b = insert_attention(d, "se", "backbone")
    rows_b = ins_b.yaml["backbone"] + ins_b.yaml["head"]
    assert ins_b.inserted == [5, 8, 12]
    assert rows_b[14][0] == [-1, 8] and rows_b[17][0] == [-1, 5]  # concats read the attended P4/P3 outputs
    assert rows_b[-1][0] == [18, 21, 24]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_builds_with_every_seed_module_and_keeps_outputs(tmp_path, family):
    """Per family: the generated YAML file builds; all five seed modules (chained after each neck output)
    build and run; and identity-initialised insertion at backbone+neck+sppf leaves every output unchanged,
    which checks the renumbering through the dataflow itself."""
    from ultralytics import YOLO

    name = FAMILIES[family]
    d, _ = load_model_yaml(name)
    path = make_attention_yaml(name, "se", "neck", out=tmp_path / f"{name}-se-neck.yaml")
    chained = YOLO(str(path)).model.yaml
    for attn in SEED_MODULES[1:]:
        chained = insert_attention(chained, attn, "neck").yaml
    model = DetectionModel(copy.deepcopy(chained), verbose=False)
    for attn in SEED_MODULES:
        cls = yolo_attention.get_attention_info(attn).cls
        assert sum(isinstance(m, cls) for m in model.model) == len(insertion_points(d, "neck")), attn
    assert torch.isfinite(_out(model, torch.rand(1, 3, 64, 64))).all()

    base = DetectionModel(copy.deepcopy(d), verbose=False)
    x = torch.rand(1, 3, 64, 96)
    new = add_attention(base, "bam", at="backbone,neck,sppf")
    assert new.attention_insertion["transferred"] == new.attention_insertion["total_old"] == len(base.state_dict())
    assert torch.equal(_out(new, x), _out(base, x)), f"{family}: outputs changed by identity insertion"


def test_add_attention_keeps_pretrained_tensors_and_identity():
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    base = copy.deepcopy(yolo.model)
    for p in base.parameters():  # "pretrained": weights that differ from any fresh initialisation
        p.data.add_(torch.randn_like(p) * 0.01)
    yolo.model = copy.deepcopy(base)
    x = torch.rand(2, 3, 96, 128)
    y0 = _out(base, x)
    add_attention(yolo, "bam", at="neck")
    new = yolo.model
    report = new.attention_insertion
    assert report["transferred"] == report["total_old"] == len(base.state_dict())
    assert report["inserted_layers"] == [16, 20, 24]
    old_sd, new_sd = base.state_dict(), new.state_dict()
    index_map = {i: i + sum(p < i for p in (15, 18, 21)) for i in range(len(base.model))}
    for key, value in old_sd.items():
        parts = key.split(".")
        parts[1] = str(index_map[int(parts[1])])
        assert torch.equal(new_sd[".".join(parts)], value), key
    assert torch.equal(_out(new, x), y0)  # exactly the identity before training
    assert all(isinstance(new.model[i], GatedAttention) for i in (16, 20, 24))
    assert new.yaml["head"][6][2] == "BAM"  # model.yaml describes the new structure (trainer rebuilds from it)
    rebuilt = DetectionModel(copy.deepcopy(new.yaml), verbose=False)
    assert set(rebuilt.state_dict()) == set(new_sd)


def test_add_attention_rejects_non_models():
    with pytest.raises(TypeError, match="add_attention: expected an ultralytics YOLO object"):
        add_attention(nn.Conv2d(3, 3, 1), "se")


def test_yaml_cli_writes_file_and_reports_errors(tmp_path, capsys):
    from yolo_attention.integrations.yaml_gen import main

    out = tmp_path / "m.yaml"
    assert main(["yolov8n", "--attn", "bam", "--at", "neck", "-o", str(out)]) == 0
    text = out.read_text()
    assert "BAM" in text and "[[16, 20, 24], 1, Detect, [nc]]" in text
    assert main(["yolov8n", "--attn", "nope", "-o", str(out)]) == 2
    assert "unknown attention module 'nope'" in capsys.readouterr().err
    assert main(["yolov8n", "--attn", "se", "--at", "head"]) == 2
    assert "unknown place 'head'" in capsys.readouterr().err
    assert main(["yolov99z", "--attn", "se"]) == 2
    assert "unknown model 'yolov99z'" in capsys.readouterr().err


def test_changed_builder_internals_fail_clearly():
    """If a parse_model no longer keeps 'ch'/'f' as locals, channel inference says so instead of guessing."""
    from yolo_attention.integrations.adapter import BuilderInternalsChanged
    from yolo_attention.integrations.classic import ADAPTER

    entry = ADAPTER.attention_factory(yolo_attention.get_attention_info("se"))

    def parse_model(rows):  # a builder whose bookkeeping has other names
        channels = [3, 16]
        return [entry(*args) for args in rows]

    with pytest.raises(BuilderInternalsChanged, match=r"SE: cannot infer input channels.*'ch'.*'f'"):
        parse_model([[0.25]])
    # outside any builder, the entry is the plain constructor and needs explicit channels
    assert entry(32, 0.25).channels == 32
    with pytest.raises(TypeError, match="SE: missing argument 'channels'"):
        entry(0.25)


def test_untested_ultralytics_version_fails_with_the_named_error(monkeypatch):
    """The tested versions are pinned; another version refuses to build unless explicitly allowed."""
    import ultralytics

    from yolo_attention.integrations import ultralytics as adapter_mod
    from yolo_attention.integrations.adapter import UNTESTED_ENV, BuilderInternalsChanged, version_tuple

    low, high = adapter_mod.TESTED_VERSIONS
    assert low <= version_tuple(ultralytics.__version__) < high, "the installed ultralytics is not a tested version"
    d = insert_attention(_v8(), "se", "sppf").yaml
    monkeypatch.setattr(adapter_mod.ADAPTER, "_version_checked", None)
    monkeypatch.setattr(ultralytics, "__version__", "9.0.0")
    monkeypatch.delenv(UNTESTED_ENV, raising=False)
    with pytest.raises(BuilderInternalsChanged, match=r"tested with ultralytics >=8\.4\.0,<8\.5, not 9\.0\.0"):
        _build(d)
    monkeypatch.setenv(UNTESTED_ENV, "1")
    assert isinstance(_build(d).model[10], yolo_attention.SE)


def test_every_class_inside_registered_modules_is_a_safe_global():
    """ULTRALYTICS_SAFE_LOAD / weights_only loaders must accept every class our modules are built from."""
    import ultralytics.nn.tasks  # noqa: F401  (installs the adapter)

    safe = {c for c in torch.serialization.get_safe_globals() if isinstance(c, type)}
    for info in yolo_attention.list_attention():
        m = yolo_attention.create_attention(info.name, 32)
        ours = {type(x) for x in m.modules() if type(x).__module__.startswith("yolo_attention")}
        assert ours <= safe, f"{info.name}: not safe globals: {sorted(c.__qualname__ for c in ours - safe)}"
