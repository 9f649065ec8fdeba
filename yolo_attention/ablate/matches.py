"""Per-image matches of a validation pass, and mAP recomputed from them (also on resampled images).

ultralytics' ``DetectionValidator`` matches every image's predictions to its labels and appends,
per image, to ``validator.metrics.stats``: ``tp`` (predictions x 10 IoU thresholds 0.50:0.05:0.95,
correct or not), ``conf``, ``pred_cls`` and ``target_cls``; ``DetMetrics.process`` then computes
the mAP from the concatenation (``ap_per_class``) and clears the lists. :class:`MatchRecorder`
keeps those per-image entries (validator callbacks; the model is not run again), so the mAP of
any multiset of validation images can be recomputed: :func:`resampled_maps` does it for
bootstrap resamples, weighting each image by how often it was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ValMatches", "MatchRecorder", "map_scores", "resampled_maps"]

_AP_X = np.linspace(0.0, 1.0, 101)  # COCO's 101 recall points, as ultralytics' compute_ap
_EPS = 1e-16  # ultralytics' ap_per_class eps


@dataclass(frozen=True)
class ValMatches:
    """One validation pass, per image: predictions (matched at 10 IoU thresholds) and labels."""

    images: tuple[str, ...]  # image file names, in validation order
    tp: np.ndarray  # (P, 10) bool
    conf: np.ndarray  # (P,) float32
    pred_cls: np.ndarray  # (P,)
    pred_img: np.ndarray  # (P,) int: index into images
    target_cls: np.ndarray  # (T,)
    target_img: np.ndarray  # (T,) int

    @classmethod
    def from_stats(cls, images: list[str], stats: dict[str, list[np.ndarray]]) -> ValMatches:
        """From ultralytics' per-image ``metrics.stats`` lists (one entry per image, in order)."""
        n = len(stats["tp"])
        if len(images) != n:
            raise ValueError(f"{len(images)} image names for {n} validated images")
        npred = [len(c) for c in stats["conf"]]
        ntgt = [len(c) for c in stats["target_cls"]]
        def cat(xs, shape, dtype):
            return np.concatenate(xs, 0).astype(dtype) if xs else np.zeros(shape, dtype)

        return cls(
            images=tuple(images),
            tp=cat(stats["tp"], (0, 10), bool).reshape(-1, 10),
            conf=cat(stats["conf"], (0,), np.float32),
            pred_cls=cat(stats["pred_cls"], (0,), np.float32),
            pred_img=np.repeat(np.arange(n), npred),
            target_cls=cat(stats["target_cls"], (0,), np.float32),
            target_img=np.repeat(np.arange(n), ntgt),
        )

    def save(self, path: Path) -> None:
        np.savez_compressed(path, images=np.array(self.images), tp=self.tp, conf=self.conf, pred_cls=self.pred_cls,
                            pred_img=self.pred_img, target_cls=self.target_cls, target_img=self.target_img)

    @classmethod
    def load(cls, path: Path) -> ValMatches:
        with np.load(path) as z:
            return cls(images=tuple(str(s) for s in z["images"]), tp=z["tp"], conf=z["conf"], pred_cls=z["pred_cls"],
                       pred_img=z["pred_img"], target_cls=z["target_cls"], target_img=z["target_img"])

    def reordered(self, images: tuple[str, ...]) -> ValMatches:
        """The same matches with image indices in the order ``images`` (the same set of images)."""
        if images == self.images:
            return self
        if sorted(images) != sorted(self.images):
            raise ValueError("the runs were validated on different images; they cannot be compared image by image")
        pos = {name: i for i, name in enumerate(images)}
        new_index = np.array([pos[name] for name in self.images], dtype=np.int64)
        return ValMatches(images, self.tp, self.conf, self.pred_cls, new_index[self.pred_img], self.target_cls,
                          new_index[self.target_img])


class MatchRecorder:
    """Validator callbacks that keep the per-image matches of the latest validation pass.

    ``metrics.stats`` is cleared inside the validator before ``on_val_end``, so the entries are
    taken at each ``on_val_batch_end`` (references to the per-image arrays, no copies).
    """

    def __init__(self):
        self._entries: dict[str, list] | None = None
        self.matches: ValMatches | None = None
        self.map50: float | None = None  # ultralytics' own numbers for that pass, unrounded
        self.map50_95: float | None = None
        self.training = False  # whether that pass validated inside training (else a separate validation)
        self.passes = 0

    def attach(self, model) -> None:
        for event in ("on_val_start", "on_val_batch_end", "on_val_end"):
            model.add_callback(event, getattr(self, event))

    def on_val_start(self, validator) -> None:
        self._entries = None

    def on_val_batch_end(self, validator) -> None:
        self._entries = {k: list(validator.metrics.stats[k]) for k in ("tp", "conf", "pred_cls", "target_cls")}

    def on_val_end(self, validator) -> None:
        entries = self._entries or {k: [] for k in ("tp", "conf", "pred_cls", "target_cls")}
        files = validator.dataloader.dataset.im_files  # the loader's order (rectangular batches sort them)
        self.matches = ValMatches.from_stats([Path(f).name for f in files[: len(entries["tp"])]], entries)
        self.map50, self.map50_95 = float(validator.metrics.box.map50), float(validator.metrics.box.map)
        self.training = bool(validator.training)
        self.passes += 1


def map_scores(m: ValMatches) -> tuple[float, float]:
    """(mAP50, mAP50-95) of the matches, computed by ultralytics' own ``ap_per_class``."""
    from ultralytics.utils.metrics import ap_per_class

    if not len(m.target_cls):
        return 0.0, 0.0
    ap = ap_per_class(m.tp, m.conf, m.pred_cls, m.target_cls)[5]
    return (float(ap[:, 0].mean()), float(ap.mean())) if len(ap) else (0.0, 0.0)


def _class_ap(tp: np.ndarray, w: np.ndarray, n_labels: np.ndarray) -> np.ndarray:
    """AP at each IoU threshold of one class, for a batch of weightings of its predictions.

    ``tp`` (P, K): the class's predictions sorted by confidence; ``w`` (B, P): how often each is
    counted (its image's draws); ``n_labels`` (B,): weighted label counts. Returns (B, K).

    The arithmetic of ultralytics' ``compute_ap`` (sentinels, precision envelope, 101-point
    interpolation) on cumulative weighted counts. A weight of 0 repeats the previous point of
    the curve, which changes neither the envelope nor the interpolation; points before the
    first counted prediction get precision 1 at recall 0, the sentinel's own point.
    """
    b, k = w.shape[0], tp.shape[1]
    if not tp.shape[0]:
        return np.zeros((b, k))
    wt = w[:, :, None] * tp  # (B, P, K)
    tpc = np.cumsum(wt, 1)
    fpc = np.cumsum(w[:, :, None] - wt, 1)
    denom = tpc + fpc
    recall = tpc / (n_labels[:, None, None] + _EPS)
    precision = np.divide(tpc, denom, out=np.ones_like(tpc), where=denom > 0)
    mrec = np.concatenate((np.zeros((b, 1, k)), recall, recall[:, -1:], np.ones((b, 1, k))), 1)
    mpre = np.concatenate((np.ones((b, 1, k)), precision, np.zeros((b, 2, k))), 1)
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 1), 1), 1)
    # one np.interp for all curves: curve c moved right by c * span keeps the joint abscissa increasing
    mrec, mpre = mrec.transpose(0, 2, 1).reshape(b * k, -1), mpre.transpose(0, 2, 1).reshape(b * k, -1)
    shift = (np.ceil(mrec[:, -2].max()) + 1.0) * np.arange(b * k)[:, None]
    y = np.interp((_AP_X + shift).ravel(), (mrec + shift).ravel(), mpre.ravel()).reshape(b * k, -1)
    return np.trapezoid(y, _AP_X, axis=1).reshape(b, k)


class _Prepared:
    """Matches sorted once by confidence (ultralytics' order) and split by class."""

    def __init__(self, m: ValMatches):
        order = np.argsort(-m.conf)  # the same call on the same array as ap_per_class: the same order
        tp, pred_cls, pred_img = m.tp[order].astype(np.float64), m.pred_cls[order], m.pred_img[order]
        self.classes = np.unique(m.target_cls)
        self.per_class = []
        for c in self.classes:
            sel = np.flatnonzero(pred_cls == c)
            # predictions after the class's last correct one only lower the precision at the final recall,
            # which neither the envelope nor the interpolation sees: dropping them changes no AP
            hit = np.flatnonzero(tp[sel].any(1))
            sel = sel[: hit[-1] + 1] if len(hit) else sel[:0]
            self.per_class.append((tp[sel], pred_img[sel], m.target_img[m.target_cls == c]))


def resampled_maps(m: ValMatches, counts: np.ndarray) -> np.ndarray:
    """(B, 2) array of (mAP50, mAP50-95) for B image resamples; ``counts[b, i]``: draws of image i.

    A class with no label in a resample is left out of its mean, as ultralytics leaves out
    classes without labels.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != len(m.images):
        raise ValueError(f"counts must be (B, {len(m.images)}), got {counts.shape}")
    prep = _Prepared(m)
    out = np.zeros((counts.shape[0], 2))
    longest = max((len(tp) for tp, _, _ in prep.per_class), default=1)
    chunk = max(1, 100_000 // (10 * max(1, longest)))  # arrays of a few MB: cache-friendly
    for lo in range(0, counts.shape[0], chunk):
        cnt = counts[lo: lo + chunk]
        ap_sum, n_cls = np.zeros((len(cnt), 2)), np.zeros(len(cnt))
        for tp, pred_img, target_img in prep.per_class:
            n_labels = cnt[:, target_img].sum(1)
            ap = _class_ap(tp, cnt[:, pred_img], n_labels)
            has = n_labels > 0
            ap_sum[has] += np.stack((ap[:, 0], ap.mean(1)), 1)[has]
            n_cls += has
        out[lo: lo + chunk] = np.divide(ap_sum, n_cls[:, None], out=np.zeros_like(ap_sum), where=n_cls[:, None] > 0)
    return out
