"""Is a variant better than the baseline? Δ mAP with a 95% interval from seeds and validation images.

The method (docs/ablate-statistics.md has it with references):

* Runs are paired by seed: variant and baseline trained with seed s share the data order and
  the initialisation of their common layers. ``d_s`` = mAP(variant, s) - mAP(baseline, s) on
  the whole validation set; the estimate is their mean ``D`` over the S paired seeds.
* Validation sampling: a paired bootstrap over validation images (Efron & Tibshirani, 1993).
  Each replicate draws the n images with replacement once and recomputes every run's mAP on
  that same multiset from its stored per-image matches (``matches.py``; the model is not run
  again), so the replicate of ``D`` keeps the pairing of images, models and seeds. Its
  variance over B replicates is ``v_val``.
* Seed-to-seed variation: ``v_seed`` = sample variance of ``d_s`` / S (S >= 2).
* ``D ± t(0.975, ν) · sqrt(v_val + v_seed)``, ν from Welch-Satterthwaite with the bootstrap
  variance taken as known: ν = (S - 1) (1 + v_val / v_seed)². With one seed ν = ∞ and the
  interval covers validation sampling only (the report says so).
* Verdict: "better" or "worse" only when the interval excludes 0, else "no clear difference".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .matches import ValMatches, resampled_maps

__all__ = ["Comparison", "RunScores", "Replicates", "compare", "bootstrap_counts", "t_quantile", "N_BOOT", "METRICS",
           "BOOT_FILE"]

N_BOOT = 500  # replicates: the bootstrap gives a standard error here, for which a few hundred suffice
BOOT_SEED = 0  # fixed: the same results give the same report
METRICS = ("map50_95", "map50")  # the order of the columns of RunScores arrays is (map50, map50_95)
_COLUMN = {"map50": 0, "map50_95": 1}

BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"
BOOT_FILE = "bootstrap.npz"


@dataclass(frozen=True)
class RunScores:
    """What the statistics need of one run: its seed, its mAPs and their bootstrap replicates."""

    seed: int
    full: tuple[float, float]  # (mAP50, mAP50-95) on the whole validation set
    boot: np.ndarray  # (B, 2): the same on each bootstrap resample (shared draws across runs)


@dataclass(frozen=True)
class Comparison:
    """Δ of one metric, variant minus baseline, with its 95% interval and the verdict from it."""

    metric: str
    delta: float
    ci: tuple[float, float]
    n_seeds: int
    se_validation: float
    se_seeds: float | None  # None with one seed
    df: float  # degrees of freedom of the t quantile (inf: normal)
    verdict: str

    @property
    def covers(self) -> str:
        return "validation sampling only" if self.n_seeds < 2 else "seeds and validation sampling"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "delta": self.delta, "ci": list(self.ci), "n_seeds": self.n_seeds,
                "se_validation": self.se_validation, "se_seeds": self.se_seeds,
                "df": None if math.isinf(self.df) else self.df, "verdict": self.verdict, "covers": self.covers}


def bootstrap_counts(n_images: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """(n_boot, n_images) draws per image: each row resamples the n images with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_images, size=(n_boot, n_images))
    return np.stack([np.bincount(row, minlength=n_images) for row in idx])


def _images_sha(images: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(images).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Replicates:
    """One run's (mAP50, mAP50-95) on the shared bootstrap resamples of its validation images.

    Every run draws the same resamples: the images are taken in sorted-name order and the draws
    come from a fixed seed, so runs computed apart (each worker computes its own, right after
    training) still resample the same images together.
    """

    images_sha: str
    n_boot: int
    seed: int
    maps: np.ndarray  # (n_boot, 2)

    @classmethod
    def of(cls, m: ValMatches, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> Replicates:
        images = tuple(sorted(m.images))
        counts = bootstrap_counts(len(images), n_boot, seed)
        return cls(_images_sha(images), n_boot, seed, resampled_maps(m.reordered(images), counts))

    def save(self, path: Path) -> None:
        np.savez(path, maps=self.maps, images_sha=self.images_sha, n_boot=self.n_boot, seed=self.seed)

    @classmethod
    def load(cls, path: Path) -> Replicates:
        with np.load(path) as z:
            return cls(str(z["images_sha"]), int(z["n_boot"]), int(z["seed"]), z["maps"])


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # 1 / (1 + d1 / (1 + d2 / (1 + ...))) as b0 + a1 / (b1 + a2 / (b2 + ...)), b0 = 0, a1 = 1, a_{k+1} = d_k, b = 1
    tiny = 1e-300
    f, c, dd = tiny, tiny, 0.0
    for j in range(1, 500):
        k = j - 1
        if k == 0:
            coef = 1.0
        elif k % 2:  # d_{2m+1}
            m = (k - 1) // 2
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_{2m}
            m = k // 2
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        dd = 1.0 + coef * dd
        dd = 1.0 / (dd if abs(dd) > tiny else tiny)
        c = 1.0 + coef / c
        c = c if abs(c) > tiny else tiny
        f *= c * dd
        if abs(c * dd - 1.0) < 1e-15:
            break
    return math.exp(log_front) / a * f


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` (real, > 0; inf gives the normal quantile)."""
    from statistics import NormalDist

    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if math.isinf(df) or df > 1e7:
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):  # bisection to machine precision
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def _verdict(ci: tuple[float, float]) -> str:
    if ci[0] > 0:
        return BETTER
    if ci[1] < 0:
        return WORSE
    return UNCLEAR


def compare(variant: Sequence[RunScores], baseline: Sequence[RunScores], metric: str = "map50_95",
            level: float = 0.95) -> Comparison | None:
    """Δ ``metric`` (variant - baseline) over the seeds both have, with its interval; None if no pair."""
    col = _COLUMN[metric]
    base = {r.seed: r for r in baseline}
    pairs = [(v, base[v.seed]) for v in sorted(variant, key=lambda r: r.seed) if v.seed in base]
    if not pairs:
        return None
    s = len(pairs)
    d = np.array([v.full[col] - b.full[col] for v, b in pairs])
    delta = float(d.mean())
    d_boot = np.mean([v.boot[:, col] - b.boot[:, col] for v, b in pairs], axis=0)  # (B,)
    v_val = float(d_boot.var(ddof=1)) if len(d_boot) > 1 else 0.0
    v_seed = float(d.var(ddof=1)) / s if s > 1 else None
    total = v_val + (v_seed or 0.0)
    df = math.inf if not v_seed else (s - 1) * (total / v_seed) ** 2
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(total)
    ci = (delta - half, delta + half)
    return Comparison(metric, delta, ci, s, math.sqrt(v_val), None if v_seed is None else math.sqrt(v_seed), df,
                      _verdict(ci))
