"""ultralytics end to end: training, checkpoints in fresh processes, DDP hand-off, CLI, ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("ultralytics")

import yolo_attention  # noqa: E402
from yolo_attention.data.synthetic import generate_synthetic  # noqa: E402
from yolo_attention.integrations.insert import add_attention  # noqa: E402
from yolo_attention.integrations.yaml_gen import make_attention_yaml  # noqa: E402

pytestmark = pytest.mark.slow

SEED_MODULES = ("se", "a2", "bam", "bra", "biformer")
TRAIN_ARGS = dict(epochs=1, imgsz=64, batch=8, workers=0, device="cpu", plots=False, amp=False, verbose=False, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data"), n_train=16, n_val=8, imgsz=64, seed=0)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "ULTRALYTICS_SAFE_LOAD"}
    env.update(extra)
    return env


def _run_py(code: str, **env) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter that does NOT import yolo_attention unless the code does."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=_env(**env),
                       timeout=600)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


RELOAD = """
import sys, json
import numpy as np
from ultralytics import YOLO
m = YOLO({path!r})
kinds = sorted({{type(x).__name__ for x in m.model.modules()}})
r = m.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
print(json.dumps({{"kinds": kinds, "imported_first": {imported_first}, "preds": len(r)}}))
"""


def _reload_in_fresh_process(path, import_first=False, **env):
    code = ("import yolo_attention\n" if import_first else "") + RELOAD.format(path=str(path), imported_first=import_first)
    out = _run_py(code, **env).stdout.strip().splitlines()[-1]
    return json.loads(out)


@pytest.mark.parametrize("attn", SEED_MODULES)
def test_one_epoch_training_validation_and_fresh_process_reload(tmp_path, data, attn):
    from ultralytics import YOLO

    yaml_path = make_attention_yaml("yolov8n", attn, "neck", out=tmp_path / f"yolov8n-{attn}-neck.yaml")
    model = YOLO(str(yaml_path))
    cls = yolo_attention.get_attention_info(attn).cls
    model.train(data=str(data), project=str(tmp_path), name="run", exist_ok=True, **TRAIN_ARGS)
    metrics = model.val(data=str(data), imgsz=64, batch=8, workers=0, device="cpu", plots=False, verbose=False)
    assert 0.0 <= metrics.box.map50 <= 1.0
    best = tmp_path / "run" / "weights" / "best.pt"
    assert best.exists()
    trained = YOLO(str(best)).model
    assert sum(isinstance(m, cls) for m in trained.model) == 3
    # a fresh process that never imports yolo_attention loads and predicts
    res = _reload_in_fresh_process(best)
    assert cls.__name__ in res["kinds"] and res["preds"] == 1
    if attn == "bam":  # restricted (weights-only) loading once yolo_attention is imported
        res = _reload_in_fresh_process(best, import_first=True, ULTRALYTICS_SAFE_LOAD="1")
        assert "BAM" in res["kinds"]


def test_add_attention_to_checkpoint_then_train_save_reload(tmp_path, data):
    from ultralytics import YOLO

    # a "pretrained" checkpoint of plain yolov8n, made here (no downloads)
    base = YOLO("yolov8n.yaml")
    base.train(data=str(data), project=str(tmp_path), name="base", exist_ok=True, **TRAIN_ARGS)
    ckpt = tmp_path / "base" / "weights" / "last.pt"

    model = YOLO(str(ckpt))
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    add_attention(model, "bra", at="neck")
    assert model.model.attention_insertion["transferred"] == len(before)
    model.train(data=str(data), project=str(tmp_path), name="ft", exist_ok=True, **TRAIN_ARGS)
    tuned = tmp_path / "ft" / "weights" / "last.pt"
    res = _reload_in_fresh_process(tuned)
    assert "GatedAttention" in res["kinds"] and "BiLevelRoutingAttention" in res["kinds"]
    # training started from the pretrained tensors: the first conv moved away from, not reset from, them
    reloaded = YOLO(str(tuned)).model
    first = "model.0.conv.weight"
    delta = (reloaded.state_dict()[first].float() - before[first].float()).abs().mean()
    fresh = YOLO("yolov8n.yaml").model.state_dict()[first]
    assert delta < (fresh - before[first]).abs().mean() / 5


@pytest.mark.parametrize("source", ["yaml-path", "built-model"])
def test_ddp_handoff_trains_in_fresh_process(tmp_path, data, source):
    """Reproduce ultralytics' multi-GPU hand-off: the trainer state is cloudpickled by ultralytics' own
    generate_ddp_file and trained by its generated script in a new process."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.dist import generate_ddp_file

    yaml_path = make_attention_yaml("yolov8n", "bam", "neck", out=tmp_path / "yolov8n-bam-neck.yaml")
    args = dict(model=str(yaml_path), data=str(data), project=str(tmp_path), name=source, exist_ok=True, **TRAIN_ARGS)
    trainer = DetectionTrainer(overrides=args)
    if source == "built-model":
        trainer.model = trainer.get_model(cfg=str(yaml_path), verbose=False)
    else:
        assert isinstance(trainer.model, str)  # what ultralytics pickles when training from a YAML
    script = Path(generate_ddp_file(trainer))
    try:
        assert "import yolo_attention" not in script.read_text()
        _run_py(script.read_text().replace('if __name__ == "__main__":', "if True:"))
    finally:
        script.unlink(missing_ok=True)
        script.with_suffix(".pt").unlink(missing_ok=True)
    weights = tmp_path / source / "weights" / "last.pt"
    res = _reload_in_fresh_process(weights)
    assert "BAM" in res["kinds"]


def test_cli_passthrough_trains_like_yolo(tmp_path, data):
    yaml_path = make_attention_yaml("yolov8n", "se", "neck", out=tmp_path / "yolov8n-se-neck.yaml")
    cmd = [
        sys.executable, "-m", "yolo_attention", "yolo", "train", f"model={yaml_path}", f"data={data}", "epochs=1",
        "imgsz=64", "batch=8", "workers=0", "device=cpu", "plots=False", "amp=False", f"project={tmp_path}",
        "name=cli", "exist_ok=True",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(YOLO_VERBOSE="True"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "cli" / "weights" / "best.pt").exists()
    assert "yolo_attention.modules.se.SE" in r.stdout + r.stderr  # ultralytics' own summary table
    # plain `yolo` (no import of ours) cannot build the YAML: the failure the pass-through exists for
    plain = subprocess.run(
        [sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()", "train", f"model={yaml_path}",
         f"data={data}", "epochs=1", "imgsz=64", "device=cpu", f"project={tmp_path}", "name=plain"],
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert plain.returncode != 0 or not (tmp_path / "plain" / "weights" / "best.pt").exists()


@pytest.mark.parametrize("attn", SEED_MODULES)
def test_onnx_export_matches_onnxruntime(tmp_path, attn, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ultralytics writes the .onnx beside the YAML's bare name, i.e. in the cwd
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ultralytics import YOLO

    yaml_path = make_attention_yaml("yolov8n", attn, "neck", out=tmp_path / f"yolov8n-{attn}-neck.yaml")
    model = YOLO(str(yaml_path))
    for m in model.model.modules():  # non-trivial weights everywhere (A2 starts with a zero reconstruction)
        if isinstance(m, torch.nn.Conv2d) and m.weight.abs().sum() == 0:
            torch.nn.init.normal_(m.weight, std=0.02)
    f = model.export(format="onnx", imgsz=96, dynamic=True, simplify=False, device="cpu")
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    net = model.model.eval()
    for h, w in [(96, 96), (64, 128), (160, 96)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            ref = net(x)[0].numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == ref.shape
        assert abs(got - ref).max() < 1e-3 * max(1.0, abs(ref).max()), (attn, h, w, abs(got - ref).max())
