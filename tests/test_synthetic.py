"""The embedded synthetic detection dataset: determinism, labels, files, reuse, CLI, ultralytics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolo_attention.data import main as data_main
from yolo_attention.data.synthetic import (
    DEFAULT_CLASSES,
    DEFAULT_IMGSZ,
    DEFAULT_N_TRAIN,
    DEFAULT_N_VAL,
    MANIFEST_NAME,
    SHAPES,
    SyntheticConfig,
    generate_synthetic,
    render_sample,
)

SMALL = dict(n_train=10, n_val=4, imgsz=128)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".txt", ".json")
    }


def _read_labels(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    assert all(len(r) == 5 for r in rows), path
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "ds"
    return generate_synthetic(out, seed=3, **SMALL)


# ---------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, small):
    again = generate_synthetic(tmp_path / "again", seed=3, **SMALL)
    other = generate_synthetic(tmp_path / "other", seed=4, **SMALL)
    a, b, c = _hashes(small.parent), _hashes(again.parent), _hashes(other.parent)
    assert len(a) == 2 * (10 + 4) + 1  # images, labels, manifest
    assert a == b
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in images)  # every image differs with another seed


def test_image_does_not_depend_on_split_sizes_or_order():
    cfg_a, cfg_b = SyntheticConfig(seed=7, n_train=5, n_val=2, imgsz=96), SyntheticConfig(seed=7, n_train=50, n_val=9, imgsz=96)
    later_first = [render_sample(cfg_a, "train", i) for i in (4, 2)]
    for i, s in zip((4, 2), later_first):
        t = render_sample(cfg_b, "train", i)
        assert np.array_equal(s.image, t.image) and s.objects == t.objects
    # train and val images are drawn from different streams
    assert not np.array_equal(render_sample(cfg_a, "train", 0).image, render_sample(cfg_a, "val", 0).image)


# ---------------------------------------------------------------- files and labels


def test_layout_split_sizes_and_yaml(small):
    import yaml

    root = small.parent
    for split, n in (("train", 10), ("val", 4)):
        assert sorted(p.name for p in (root / "images" / split).iterdir()) == [f"{i:06d}.png" for i in range(n)]
        assert sorted(p.name for p in (root / "labels" / split).iterdir()) == [f"{i:06d}.txt" for i in range(n)]
    data = yaml.safe_load(small.read_text())
    assert data["path"] == str(root.resolve())
    # absolute splits: YOLOv7's train.py ignores 'path' and resolves relative ones against its cwd
    assert data["train"] == str(root.resolve() / "images" / "train") and data["val"] == str(root.resolve() / "images" / "val")
    assert data["nc"] == len(DEFAULT_CLASSES)
    assert data["names"] == dict(enumerate(DEFAULT_CLASSES))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["complete"] is True
    assert manifest["options"] == SyntheticConfig(seed=3, **SMALL).to_dict()
    assert manifest["stats"]["train"]["images"] == 10
    n_lines = sum(len(_read_labels(p)) for p in (root / "labels" / "train").iterdir())
    assert manifest["stats"]["train"]["instances"] == n_lines


def test_labels_are_valid_and_match_render(small):
    root, S = small.parent, SMALL["imgsz"]
    cfg = SyntheticConfig(seed=3, **SMALL)
    total = 0
    for split, n in (("train", 10), ("val", 4)):
        for i in range(n):
            lab = _read_labels(root / "labels" / split / f"{i:06d}.txt")
            total += len(lab)
            if len(lab):
                cls, xc, yc, w, h = lab.T
                assert np.all(cls == np.round(cls)) and cls.min() >= 0 and cls.max() < len(DEFAULT_CLASSES)
                x0, x1, y0, y1 = xc - w / 2, xc + w / 2, yc - h / 2, yc + h / 2
                eps = 1e-5
                assert x0.min() >= -eps and y0.min() >= -eps and x1.max() <= 1 + eps and y1.max() <= 1 + eps
                assert (w * S).min() >= 3 and (h * S).min() >= 3  # not degenerate
            sample = render_sample(cfg, split, i)
            from PIL import Image

            assert np.array_equal(np.asarray(Image.open(root / "images" / split / f"{i:06d}.png")), sample.image)
            assert [o.yolo_line(S) for o in sample.objects] == [
                line for line in (root / "labels" / split / f"{i:06d}.txt").read_text().splitlines()
            ]
    assert total > 14  # more than one object per image on average


def test_boxes_contain_drawn_objects():
    """Inside a labelled box the image differs from the ring around it far more often than
    inside a random box of the same size: labels sit on drawn objects."""
    cfg = SyntheticConfig(seed=11, imgsz=160)
    rng = np.random.default_rng(0)

    def contrast(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> float | None:
        S, m = img.shape[0], max(2, (x1 - x0) // 4)
        ox0, oy0, ox1, oy1 = max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, S), min(y1 + m, S)
        outer = img[oy0:oy1, ox0:ox1].astype(np.float64)
        ring = np.ones(outer.shape[:2], bool)
        ring[y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0] = False
        if ring.sum() < 8:
            return None
        cx, cy, rw, rh = (x0 + x1) // 2, (y0 + y1) // 2, max(1, (x1 - x0) // 6), max(1, (y1 - y0) // 6)
        core = img[cy - rh : cy + rh + 1, cx - rw : cx + rw + 1].reshape(-1, 3).astype(np.float64)
        return float(np.linalg.norm(np.median(core, 0) - np.median(outer[ring], 0)))

    real, rand = [], []
    for i in range(80):
        s = render_sample(cfg, "train", i)
        for o in s.objects:
            x0, y0, x1, y1 = (int(round(v)) for v in o.box)
            if o.visible < 0.8 or min(x1 - x0, y1 - y0) < 10 or cfg.classes[o.cls] in ("ring", "cross", "star"):
                continue  # the box centre of these may be background
            c = contrast(s.image, x0, y0, x1, y1)
            w, h = x1 - x0, y1 - y0
            rx, ry = int(rng.integers(0, cfg.imgsz - w + 1)), int(rng.integers(0, cfg.imgsz - h + 1))
            r = contrast(s.image, rx, ry, rx + w, ry + h)
            if c is not None and r is not None:
                real.append(c > 25)
                rand.append(r > 25)
    assert len(real) >= 40
    assert np.mean(real) >= 0.8
    assert np.mean(real) >= np.mean(rand) + 0.3


def test_min_visible_is_honoured():
    for mv in (0.4, 0.85):
        cfg = SyntheticConfig(seed=2, imgsz=128, min_visible=mv)
        vis = [o.visible for i in range(25) for o in render_sample(cfg, "train", i).objects]
        assert vis and min(vis) >= mv - 1e-3


def test_size_range_is_honoured():
    """Amodal boxes span the configured diameters (a box side is about a diameter, up to rotation and shape)."""
    cfg = SyntheticConfig(seed=1, imgsz=128, min_size=0.1, max_size=0.3)
    objs = [o for i in range(30) for o in render_sample(cfg, "train", i).objects]
    sides = np.array([max(o.box[2] - o.box[0], o.box[3] - o.box[1]) / cfg.imgsz for o in objs])
    assert len(sides) >= 40
    assert sides.min() >= 0.1 * 0.7 and np.median(sides) < 0.3  # truncation by the border can shrink a box a bit
    assert sides.max() <= 0.3 * 1.2  # a square's diagonal, or a stretched shape, is a little longer than the diameter
    default = np.array([max(o.box[2] - o.box[0], o.box[3] - o.box[1]) / 128
                        for i in range(30) for o in render_sample(SyntheticConfig(seed=1, imgsz=128), "train", i).objects])
    assert default.min() < 0.1 * 0.7  # the default range reaches smaller objects


def test_not_trivially_easy():
    """Statistics of the default dataset: varied counts, scales, occlusion and clutter."""
    cfg = SyntheticConfig(seed=0)
    S = cfg.imgsz
    samples = [render_sample(cfg, "train", i) for i in range(60)]
    counts = np.array([len(s.objects) for s in samples])
    assert len(set(counts.tolist())) >= 5 and counts.std() >= 1.5 and counts.max() >= 6
    sides = np.array([max(o.box[2] - o.box[0], o.box[3] - o.box[1]) / S for s in samples for o in s.objects])
    assert (sides < 0.1).mean() >= 0.15  # small objects
    assert ((sides >= 0.1) & (sides < 0.25)).mean() >= 0.2  # medium
    assert (sides >= 0.25).mean() >= 0.08  # large
    vis = np.array([o.visible for s in samples for o in s.objects])
    assert 0.15 <= (vis < 0.95).mean() <= 0.8  # a good share of objects is partly hidden
    assert (vis < 0.7).sum() >= 10  # some of them substantially
    assert np.mean([any(o.visible < 0.95 for o in s.objects) for s in samples]) >= 0.3
    assert np.mean([s.n_distractors for s in samples]) >= 4  # unlabelled clutter
    per_class = np.bincount([o.cls for s in samples for o in s.objects], minlength=len(cfg.classes))
    assert per_class.min() >= 0.4 * per_class.mean()  # every class is well represented
    # backgrounds are textured, not flat: local variation away from the objects
    assert np.median([s.image.astype(np.float64).std(axis=(0, 1)).mean() for s in samples]) > 8


def test_other_classes(tmp_path):
    yaml_path = generate_synthetic(tmp_path, classes=("heart", "arrow", "hexagon", "crescent"), n_train=6, n_val=2, imgsz=96)
    assert "  3: crescent\n" in yaml_path.read_text()
    ids = np.concatenate([_read_labels(p)[:, 0] for p in (tmp_path / "labels" / "train").iterdir()])
    assert set(ids.astype(int)) <= {0, 1, 2, 3} and len(ids) > 0


# ---------------------------------------------------------------- reuse and arguments


def test_manifest_reuse_and_regeneration(tmp_path):
    out = tmp_path / "ds"
    y = generate_synthetic(out, seed=1, n_train=6, n_val=2, imgsz=96)
    first = _hashes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert generate_synthetic(out, seed=1, n_train=6, n_val=2, imgsz=96) == y
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes  # reused, not rewritten

    # other options: regenerated, stale files removed, ultralytics' label cache dropped
    (out / "labels" / "train.cache").write_text("stale")
    generate_synthetic(out, seed=1, n_train=4, n_val=2, imgsz=96)
    assert len(list((out / "images" / "train").iterdir())) == 4
    assert not (out / "labels" / "train.cache").exists()
    assert json.loads((out / MANIFEST_NAME).read_text())["options"]["n_train"] == 4

    # an incomplete dataset (a missing file) is regenerated, identical to the first time
    generate_synthetic(out, seed=1, n_train=6, n_val=2, imgsz=96)
    (out / "images" / "val" / "000001.png").unlink()
    generate_synthetic(out, seed=1, n_train=6, n_val=2, imgsz=96)
    assert _hashes(out) == first

    # files the generator did not write are never deleted
    (out / "images" / "train" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="did not write"):
        generate_synthetic(out, seed=2, n_train=6, n_val=2, imgsz=96)
    assert (out / "images" / "train" / "mine.jpg").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_train=-1), "n_train"),
        (dict(n_val=-3), "n_val"),
        (dict(n_train=0), "n_train"),
        (dict(n_train=2.5), "n_train"),
        (dict(n_val=True), "n_val"),
        (dict(imgsz=16), "imgsz"),
        (dict(seed=-1), "seed"),
        (dict(classes=("circle", "blob")), "unknown class"),
        (dict(classes=()), "at least one"),
        (dict(classes=("circle", "circle")), "repeat"),
        (dict(min_visible=0.0), "min_visible"),
        (dict(min_visible=1.5), "min_visible"),
        (dict(clutter=-1.0), "clutter"),
        (dict(max_objects=0), "max_objects"),
        (dict(min_size=0.0), "min_size"),
        (dict(max_size=1.5), "max_size"),
        (dict(min_size=0.3, max_size=0.2), "smaller than max_size"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_synthetic(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()  # nothing written


def test_defaults_and_class_list():
    cfg = SyntheticConfig()
    assert (cfg.n_train, cfg.n_val, cfg.imgsz) == (DEFAULT_N_TRAIN, DEFAULT_N_VAL, DEFAULT_IMGSZ)
    assert 200 <= DEFAULT_N_TRAIN <= 300 and 60 <= DEFAULT_N_VAL <= 100 and 160 <= DEFAULT_IMGSZ <= 256
    assert set(DEFAULT_CLASSES) <= set(SHAPES) and len(DEFAULT_CLASSES) >= 5
    assert SyntheticConfig(classes="circle, star").classes == ("circle", "star")


# ---------------------------------------------------------------- CLI


def test_cli(tmp_path, capsys):
    from yolo_attention.cli import main as cli_main

    out = tmp_path / "cli"
    argv = ["data", "synthetic", "--out", str(out), "--n-train", "3", "--n-val", "2", "--imgsz", "96", "--seed", "5"]
    assert cli_main(argv + ["--classes", "star,cross", "ring"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out.resolve() / "data.yaml")
    assert "wrote 3 train + 2 val" in printed.err
    assert "  2: ring\n" in (out / "data.yaml").read_text()
    assert yaml.safe_load((out / "data.yaml").read_text())["nc"] == 3  # the classic repositories' train.py read nc
    # --train/--val: the former spelling of --n-train/--n-val (as `yolo-attention ablate` has them), still accepted
    assert data_main(["synthetic", "--out", str(out), "--train", "3", "--val", "2", "--imgsz", "96", "--seed", "5", "--classes", "star", "cross", "ring", "-q"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out.resolve() / "data.yaml") and printed.err == ""

    for bad in (["--train", "-2"], ["--classes", "circle,blob"], ["--imgsz", "8"]):
        with pytest.raises(SystemExit) as e:
            data_main(["synthetic", "--out", str(tmp_path / "bad"), *bad])
        assert e.value.code == 2
        assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_main([])


def test_files_hash_identifies_the_dataset(tmp_path):
    """The manifest's files hash is the same for the same options in another folder (a worker's copy) and
    differs for other data; a folder without a complete dataset has none."""
    from yolo_attention.data import dataset_digest

    opts = dict(n_train=3, n_val=2, imgsz=64)
    generate_synthetic(tmp_path / "a", seed=1, **opts)
    generate_synthetic(tmp_path / "b", seed=1, **opts)
    generate_synthetic(tmp_path / "c", seed=2, **opts)
    assert dataset_digest(tmp_path / "a") == dataset_digest(tmp_path / "b") != dataset_digest(tmp_path / "c")
    with pytest.raises(ValueError, match="no complete generated dataset"):
        dataset_digest(tmp_path)


# ---------------------------------------------------------------- ultralytics reads it


def test_ultralytics_reads_the_dataset(small):
    pytest.importorskip("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(small))
    assert data["nc"] == len(DEFAULT_CLASSES) and data["names"] == dict(enumerate(DEFAULT_CLASSES))
    root = small.parent
    for split, n in (("train", 10), ("val", 4)):
        assert Path(data[split]) == root / "images" / split
        ds = YOLODataset(img_path=data[split], imgsz=SMALL["imgsz"], augment=False, hyp=get_cfg(), data=data, task="detect")
        assert len(ds) == n
        n_lines = sum(len(_read_labels(p)) for p in (root / "labels" / split).iterdir())
        assert sum(len(lb["cls"]) for lb in ds.labels) == n_lines
        item = ds[0]
        assert item["img"].shape[1:] == (SMALL["imgsz"], SMALL["imgsz"])
        boxes = np.concatenate([lb["bboxes"] for lb in ds.labels if len(lb["bboxes"])])
        assert boxes.min() >= 0 and boxes.max() <= 1
