"""The ablation's statistics: mAP from per-image matches, the paired bootstrap, the interval and verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from yolo_attention.ablate.matches import ValMatches, map_scores, resampled_maps
from yolo_attention.ablate.stats import RunScores, bootstrap_counts, compare, t_quantile

pytest.importorskip("ultralytics")


def _detector_matches(rng: np.random.Generator, n_images: int, recall: float, n_classes: int = 2,
                      fp_per_image: float = 3.0) -> ValMatches:
    """Matches as ultralytics' validator produces them: each label found (or not) by one prediction, correct
    from IoU 0.5 up to a per-box IoU, plus unmatched predictions; found boxes score higher on average."""
    stats = {"tp": [], "conf": [], "pred_cls": [], "target_cls": []}
    thresholds = np.linspace(0.5, 0.95, 10)
    for _ in range(n_images):
        n_t = rng.integers(0, 5)
        cls = rng.integers(0, n_classes, n_t).astype(np.float32)
        found = rng.random(n_t) < recall
        iou = rng.uniform(0.5, 1.0, found.sum())
        n_fp = rng.poisson(fp_per_image)
        tp = np.concatenate((iou[:, None] >= thresholds, np.zeros((n_fp, 10), bool)))
        conf = np.concatenate((rng.beta(5, 2, found.sum()), rng.beta(2, 5, n_fp))).astype(np.float32)
        pcls = np.concatenate((cls[found], rng.integers(0, n_classes, n_fp).astype(np.float32)))
        stats["tp"].append(tp)
        stats["conf"].append(conf)
        stats["pred_cls"].append(pcls)
        stats["target_cls"].append(cls)
    return ValMatches.from_stats([f"{i:06d}.png" for i in range(n_images)], stats)


def _duplicated(m: ValMatches, counts: np.ndarray) -> ValMatches:
    """The resample written out: image i repeated counts[i] times (what a weight stands for)."""
    stats = {"tp": [], "conf": [], "pred_cls": [], "target_cls": []}
    for i, c in enumerate(counts):
        p, t = m.pred_img == i, m.target_img == i
        for _ in range(int(c)):
            stats["tp"].append(m.tp[p])
            stats["conf"].append(m.conf[p])
            stats["pred_cls"].append(m.pred_cls[p])
            stats["target_cls"].append(m.target_cls[t])
    return ValMatches.from_stats([str(k) for k in range(int(counts.sum()))], stats)


def test_map_from_weights_equals_ultralytics_on_the_written_out_resample():
    """resampled_maps (weighted counts) gives what ultralytics' ap_per_class gives on the duplicated images."""
    rng = np.random.default_rng(0)
    m = _detector_matches(rng, 40, recall=0.6)
    ones = np.ones((1, len(m.images)))
    assert np.allclose(resampled_maps(m, ones)[0], map_scores(m), atol=1e-12, rtol=0)
    for counts in bootstrap_counts(len(m.images), n_boot=4, seed=3):
        assert np.allclose(resampled_maps(m, counts[None])[0], map_scores(_duplicated(m, counts)), atol=1e-12, rtol=0)


def test_matches_roundtrip_and_reorder(tmp_path):
    rng = np.random.default_rng(1)
    m = _detector_matches(rng, 12, recall=0.5)
    m.save(tmp_path / "m.npz")
    back = ValMatches.load(tmp_path / "m.npz")
    assert back.images == m.images and np.array_equal(back.tp, m.tp) and np.array_equal(back.conf, m.conf)
    order = tuple(reversed(m.images))
    r = back.reordered(order)
    counts = bootstrap_counts(12, n_boot=3)
    assert np.allclose(resampled_maps(r, counts[:, ::-1]), resampled_maps(m, counts))  # same images, new order
    with pytest.raises(ValueError, match="different images"):
        m.reordered(("a.png",) * 12)


def test_replicates_do_not_depend_on_the_validation_order(tmp_path):
    """Workers compute their runs' replicates apart; sorting the images by name makes them resample alike."""
    from yolo_attention.ablate.stats import Replicates

    m = _detector_matches(np.random.default_rng(5), 16, recall=0.5)
    a, b = Replicates.of(m, n_boot=20), Replicates.of(m.reordered(tuple(reversed(m.images))), n_boot=20)
    assert a.images_sha == b.images_sha and np.array_equal(a.maps, b.maps)
    a.save(tmp_path / "r.npz")
    back = Replicates.load(tmp_path / "r.npz")
    assert (back.images_sha, back.n_boot, back.seed) == (a.images_sha, 20, a.seed) and np.array_equal(back.maps, a.maps)


def test_t_quantile_matches_tables():
    for df, q in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (10, 2.2281), (30, 2.0423), (math.inf, 1.9600)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, 5) == pytest.approx(-t_quantile(0.975, 5))


def _scores(ms: list[ValMatches], counts: np.ndarray) -> list[RunScores]:
    return [RunScores(s, map_scores(m), resampled_maps(m, counts)) for s, m in enumerate(ms)]


def test_identical_results_give_no_clear_difference_with_an_interval_at_zero():
    rng = np.random.default_rng(2)
    runs = [_detector_matches(rng, 30, recall=0.6) for _ in range(3)]
    counts = bootstrap_counts(30, n_boot=100)
    for n_seeds in (1, 3):
        a = _scores(runs[:n_seeds], counts)
        for metric in ("map50_95", "map50"):
            c = compare(a, a, metric)
            assert c.delta == 0.0 and c.ci == (0.0, 0.0) and c.verdict == "no clear difference"
            assert c.n_seeds == n_seeds
    assert compare(a, a).covers == "seeds and validation sampling"
    assert compare(a[:1], a[:1]).covers == "validation sampling only"


def _paired_runs(rng, n_images: int, recall_base: float, extra: float, seed_sd: float, n_seeds: int = 3):
    """Per seed, base and variant on the same images: the variant finds every label the base finds (same box,
    same score) and a share ``extra`` of those it misses; false positives are shared. ``seed_sd``: training noise."""
    thresholds = np.linspace(0.5, 0.95, 10)
    base, variant = [], []
    for _ in range(n_seeds):
        rb, ex = recall_base + rng.normal(0, seed_sd), extra + rng.normal(0, seed_sd)
        sb, sv = ({"tp": [], "conf": [], "pred_cls": [], "target_cls": []} for _ in range(2))
        for _ in range(n_images):
            n_t, n_fp = rng.integers(0, 5), rng.poisson(3.0)
            cls = rng.integers(0, 2, n_t).astype(np.float32)
            found_b = rng.random(n_t) < rb
            found_v = found_b | (rng.random(n_t) < ex)
            iou, score = rng.uniform(0.5, 1.0, n_t), rng.beta(5, 2, n_t).astype(np.float32)
            fp_conf, fp_cls = rng.beta(2, 5, n_fp).astype(np.float32), rng.integers(0, 2, n_fp).astype(np.float32)
            for st, found in ((sb, found_b), (sv, found_v)):
                st["tp"].append(np.concatenate((iou[found][:, None] >= thresholds, np.zeros((n_fp, 10), bool))))
                st["conf"].append(np.concatenate((score[found], fp_conf)))
                st["pred_cls"].append(np.concatenate((cls[found], fp_cls)))
                st["target_cls"].append(cls)
        names = [f"{i:06d}.png" for i in range(n_images)]
        base.append(ValMatches.from_stats(names, sb))
        variant.append(ValMatches.from_stats(names, sv))
    return base, variant


def test_a_constructed_shift_is_detected_and_covered():
    """Variant = baseline plus correct detections of 30% of the labels the baseline missed (known in expectation:
    measured on a large sample of the same construction)."""
    rng = np.random.default_rng(3)
    n = 300
    base, variant = _paired_runs(rng, n, recall_base=0.5, extra=0.3, seed_sd=0.01)
    counts = bootstrap_counts(n, n_boot=200)
    b, v = _scores(base, counts), _scores(variant, counts)
    # the true shift of this construction: its own mAP50-95 on a large sample of the same process
    big_b, big_v = _paired_runs(np.random.default_rng(99), 2000, recall_base=0.5, extra=0.3, seed_sd=0.0)
    truth = np.mean([map_scores(y)[1] - map_scores(x)[1] for x, y in zip(big_b, big_v)])
    c = compare(v, b, "map50_95")
    assert c.verdict == "better" and c.ci[0] > 0
    assert c.ci[0] <= truth <= c.ci[1]
    w = compare(b, v, "map50_95")  # the other way round
    assert w.verdict == "worse" and w.ci[1] < 0 and w.delta == pytest.approx(-c.delta)


def _coverage(n_seeds: int, seed_sd: float, val_sd: float, reps: int = 300) -> float:
    """How often the interval holds the true Δ, for a metric whose true Δ is known: a mean of per-image scores
    (images shared by both models: paired), plus a training effect per model and seed."""
    rng = np.random.default_rng(4)
    true_delta, n, hits = 0.05, 60, 0
    counts = bootstrap_counts(n, n_boot=200, seed=5)
    for _ in range(reps):
        u = rng.normal(0, val_sd, n)  # image difficulty, shared
        runs = {"b": [], "v": []}
        for s in range(n_seeds):
            for name, shift in (("b", 0.0), ("v", true_delta)):
                per_image = u + shift + rng.normal(0, 0.3 * val_sd, n)
                train_effect = rng.normal(0, seed_sd)
                full = per_image.mean() + train_effect
                boot = counts @ per_image / n + train_effect
                runs[name].append(RunScores(s, (full, full), np.stack((boot, boot), 1)))
        c = compare(runs["v"], runs["b"], "map50_95")
        hits += c.ci[0] <= true_delta <= c.ci[1]
    return hits / reps


@pytest.mark.parametrize("n_seeds, seed_sd, val_sd", [(1, 0.0, 1.0), (3, 0.02, 1.0), (3, 0.15, 1.0), (5, 0.1, 0.5)])
def test_interval_covers_the_true_delta_95_percent_of_the_time(n_seeds, seed_sd, val_sd):
    assert 0.9 <= _coverage(n_seeds, seed_sd, val_sd) <= 0.99


def test_one_seed_interval_misses_training_noise():
    """Why the report says "validation sampling only" for one seed: with training noise it covers far less."""
    assert _coverage(1, 0.1, 1.0) < 0.8


def test_recorded_matches_reproduce_ultralytics_map(tmp_path, monkeypatch):
    """MatchRecorder keeps what ultralytics' validator matched, image by image: the mAP recomputed from it is
    ultralytics' own mAP of that pass (so the bootstrap resamples the right thing). Predictions are jittered
    labels plus spurious boxes, so that the mAP is far from 0 without training a detector."""
    import torch
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionValidator

    from yolo_attention.ablate.matches import MatchRecorder
    from yolo_attention.data import generate_synthetic

    data = generate_synthetic(tmp_path / "data", n_train=2, n_val=10, imgsz=64, classes="circle,square,star")
    original = DetectionValidator.update_metrics

    def fake_predictions(self, preds, batch):
        g = torch.Generator().manual_seed(self.seen)
        fake = []
        for si in range(len(preds)):
            labels = self._prepare_batch(si, batch)
            boxes, cls = labels["bboxes"], labels["cls"]
            keep = torch.rand(len(cls), generator=g) < 0.7
            found = boxes[keep] + torch.randn(int(keep.sum()), 4, generator=g) * 2.0
            spurious = torch.rand(3, 2, generator=g) * 40
            spurious = torch.cat((spurious, spurious + 4 + torch.rand(3, 2, generator=g) * 20), 1)
            fake.append({"bboxes": torch.cat((found, spurious)),
                         "conf": torch.cat((0.5 + 0.5 * torch.rand(len(found), generator=g),
                                            0.6 * torch.rand(3, generator=g))),
                         "cls": torch.cat((cls[keep], torch.randint(0, 3, (3,), generator=g).float()))})
        return original(self, fake, batch)

    monkeypatch.setattr(DetectionValidator, "update_metrics", fake_predictions)
    model = YOLO("yolov8n.yaml")
    rec = MatchRecorder()
    rec.attach(model)
    metrics = model.val(data=str(data), imgsz=64, batch=4, device="cpu", workers=0, plots=False, verbose=False)
    m = rec.matches
    assert len(m.images) == 10 and rec.passes == 1 and not rec.training
    assert 0.1 < metrics.box.map < metrics.box.map50 < 0.95
    assert (rec.map50, rec.map50_95) == (float(metrics.box.map50), float(metrics.box.map))
    assert map_scores(m) == pytest.approx((metrics.box.map50, metrics.box.map), abs=1e-12)
    assert resampled_maps(m, np.ones((1, 10)))[0] == pytest.approx((metrics.box.map50, metrics.box.map), abs=1e-12)
