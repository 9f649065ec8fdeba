"""``results.png``: accuracy against cost (FLOPs, latency) beside the learning curves."""

from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.ticker import MaxNLocator

__all__ = ["plot"]


def _accuracy_vs_cost(ax, rows, results, xkey: str, xlabel: str) -> None:
    for i, r in enumerate(rows):
        x = getattr(r.cost, xkey) if r.cost else None
        if r.status == "failed" or x is None:
            continue
        color = f"C{i % 10}"
        ys = [res.map50_95 for res in results.values()
              if res.ok and res.variant == r.variant.name and res.stage == "train"]
        ax.scatter([x] * len(ys), ys, s=14, color=color, alpha=0.45, zorder=2)
        ax.errorbar([x], [r.map50_95], yerr=[r.map50_95_sd or 0.0], fmt="o", ms=8, capsize=5, color=color, zorder=3,
                    label=r.label)
        ax.annotate(r.label, (x, r.map50_95), textcoords="offset points", xytext=(7, 5), fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP50-95 (mean, bars: seed s.d.)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # close FLOPs values would print overlapping long ticks
    ax.grid(alpha=0.3)


def _curves(ax, rows, base: dict | None) -> None:
    if base and base.get("curve"):
        c = base["curve"]
        offset = max(c["epochs"])
        e = [k - offset for k in c["epochs"]]
        ax.plot(e, c["map50_95_mean"], color="0.5", lw=1.5, marker="o" if len(e) < 3 else None, label="base stage")
        ax.fill_between(e, c["map50_95_min"], c["map50_95_max"], color="0.5", alpha=0.2, lw=0)
        ax.axvline(0, color="0.6", lw=0.8, ls=":")
    for i, r in enumerate(rows):
        if r.curve is None:
            continue
        color = f"C{i % 10}"
        marker = "o" if len(r.curve.epochs) < 3 else None
        ax.plot(r.curve.epochs, r.curve.mean, color=color, lw=1.5, marker=marker, label=r.label)
        ax.fill_between(r.curve.epochs, r.curve.low, r.curve.high, color=color, alpha=0.15, lw=0)
    ax.set_xlabel("epoch" + (" (base stage before 0)" if base else ""))
    ax.set_ylabel("validation mAP50-95 (mean, band: seed range)")
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, 0), max(hi, 1.5))  # whole epochs from 0, also for a one-epoch curve
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to list when every run failed
        ax.legend(fontsize=8, loc="best")


def plot(rows, results, sweep, base: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _accuracy_vs_cost(axes[0], rows, results, "gflops", "GFLOPs per image (all operations, batch 1)")
    _accuracy_vs_cost(axes[1], rows, results, "latency_b1_ms", "latency, batch 1 (ms, median, side by side)")
    _curves(axes[2], rows, base)
    failed = [r.label for r in rows if r.status == "failed"]
    if failed:
        axes[1].text(0.02, 0.02, "failed: " + ", ".join(failed), transform=axes[1].transAxes, fontsize=8, color="red")
    fig.suptitle(textwrap.fill(title, 150), fontsize=10)  # long titles (data description) wrap, not clip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
