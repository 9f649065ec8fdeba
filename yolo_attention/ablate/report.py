"""From results to answers: one row per variant (accuracy, Δ with its interval and verdict, costs as
ratios to the baseline, learning curve), written as a table (printed, Markdown, CSV), JSON and a plot."""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .common import write_json
from .matches import ValMatches
from .results import CostReport, RunResult, VariantCost
from .spec import Variant
from .stats import BOOT_FILE, BOOT_SEED, N_BOOT, Comparison, Replicates, RunScores, compare
from .sweep import Store, Sweep

__all__ = ["Row", "analyse", "write_reports", "text_table", "markdown_table", "table_cells", "report_title",
           "report_notes", "base_summary", "base_sentence"]

COST_KEYS = ("params", "gflops", "latency_b1_ms", "latency_batch_ms", "train_images_per_s", "train_peak_mem_mb")


@dataclass(frozen=True)
class CurveSummary:
    """Validation mAP50-95 per epoch over the seeds: mean and range."""

    epochs: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]

    @classmethod
    def of(cls, runs: list[RunResult]) -> CurveSummary | None:
        by_epoch: dict[int, list[float]] = {}
        for r in runs:
            for p in r.curve:
                by_epoch.setdefault(p.epoch, []).append(p.map50_95)
        if not by_epoch:
            return None
        e = sorted(by_epoch)
        return cls(e, [statistics.mean(by_epoch[k]) for k in e], [min(by_epoch[k]) for k in e],
                   [max(by_epoch[k]) for k in e])

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "map50_95_mean": self.mean, "map50_95_min": self.low, "map50_95_max": self.high}


@dataclass
class Row:
    """One variant's line of the report."""

    variant: Variant
    label: str
    status: str  # ok, partial (some seeds failed) or failed
    seeds_ok: list[int]
    seeds_failed: list[int]
    error: str = ""
    map50: float | None = None
    map50_sd: float | None = None
    map50_95: float | None = None
    map50_95_sd: float | None = None
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    verdict: str = ""
    cost: VariantCost | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    curve: CurveSummary | None = None

    def to_json(self) -> dict:
        d = {"variant": self.variant.name, "label": self.label, "attn": self.variant.attn,
             "kwargs": self.variant.kwargs, "place": self.variant.place, "status": self.status,
             "seeds_ok": self.seeds_ok, "seeds_failed": self.seeds_failed, "error": self.error,
             "map50": self.map50, "map50_sd": self.map50_sd, "map50_95": self.map50_95,
             "map50_95_sd": self.map50_95_sd, "verdict_text": self.verdict,
             "cost_ratios": self.ratios, "curve": self.curve.to_dict() if self.curve else None}
        for metric in ("map50_95", "map50"):
            c = self.comparisons.get(metric)
            d[f"delta_{metric}"] = c.delta if c else None
            d[f"delta_{metric}_ci"] = list(c.ci) if c else None
            d[f"verdict_{metric}"] = c.verdict if c else None
            d[f"statistics_{metric}"] = c.to_dict() if c else None
        # better / worse / no clear difference (from the mAP50-95 interval); baseline or failed rows say so
        d["verdict"] = d["verdict_map50_95"] or self.verdict
        d["n_seeds"] = self.comparisons["map50_95"].n_seeds if "map50_95" in self.comparisons else None
        d["interval_covers"] = self.comparisons["map50_95"].covers if "map50_95" in self.comparisons else None
        for k in COST_KEYS + ("gflops_matmul", "gflops_ultralytics"):
            d[k] = getattr(self.cost, k) if self.cost else None
        d["cost_error"] = self.cost.error if self.cost else None
        return d


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _replicates(r: RunResult, store: Store) -> Replicates | None:
    """The run's bootstrap replicates: as its worker stored them, else computed here from its matches."""
    d = store.run_dir(r.run_id)
    if r.bootstrap and (d / r.bootstrap).exists():
        rep = Replicates.load(d / r.bootstrap)
        if (rep.n_boot, rep.seed) == (N_BOOT, BOOT_SEED):
            return rep
    if not r.matches or not (d / r.matches).exists():
        return None
    rep = Replicates.of(ValMatches.load(d / r.matches))
    rep.save(d / BOOT_FILE)
    return rep


def _scores(runs: list[RunResult], store: Store) -> tuple[dict[str, RunScores], str]:
    """Every run's mAP and its replicates on the shared image resamples ('' or why there are none)."""
    out, shas = {}, set()
    for r in runs:
        rep = _replicates(r, store)
        if rep is None:
            return {}, f"run {r.run_id} has no per-image matches"
        shas.add(rep.images_sha)
        out[r.run_id] = RunScores(r.seed, (r.map50, r.map50_95), rep.maps)
    if len(shas) > 1:
        return {}, "the runs were validated on different images"
    return out, ""


def _verdict_text(c: Comparison) -> str:
    return f"{c.verdict} ({_count(c.n_seeds, 'seed')}{': validation sampling only' if c.n_seeds < 2 else ''})"


def _cost_ratios(cost: VariantCost | None, base: VariantCost | None) -> dict[str, float]:
    if cost is None or base is None:
        return {}
    out = {}
    for k in COST_KEYS:
        a, b = getattr(cost, k), getattr(base, k)
        if a is not None and b:
            out[k] = a / b
    return out


def analyse(sweep: Sweep, results: dict[str, RunResult], store: Store, costs: CostReport | None) -> list[Row]:
    qualified = len(sweep.places) > 1
    planned = [r for r in sweep.plan() if r.stage.name == "train" and r.run_id in results]
    by_variant = {v.name: [results[r.run_id] for r in planned if r.variant == v] for v in sweep.variants}
    ok_runs = [r for rs in by_variant.values() for r in rs if r.ok]
    scores, why_not = _scores(ok_runs, store)
    base_v = next((v for v in sweep.variants if v.is_baseline), None)
    base_cost = costs.get(base_v.name) if costs and base_v else None
    rows = []
    for v in sweep.variants:
        rs = by_variant[v.name]
        ok, failed = [r for r in rs if r.ok], [r for r in rs if not r.ok]
        row = Row(v, v.label(qualified), "ok" if ok and not failed else ("partial" if ok else "failed"),
                  [r.seed for r in ok], [r.seed for r in failed],
                  error=(failed[0].error or "")[:300] if failed else "")
        row.map50, row.map50_sd = _mean_sd([r.map50 for r in ok])
        row.map50_95, row.map50_95_sd = _mean_sd([r.map50_95 for r in ok])
        row.curve = CurveSummary.of(ok)
        row.cost = costs.get(v.name) if costs else None
        row.ratios = _cost_ratios(row.cost, base_cost)
        base_runs = by_variant[base_v.name] if base_v else []
        if v.is_baseline:
            row.verdict = "baseline"
        elif not ok:
            row.verdict = "failed: " + row.error[:120]
        elif base_v is None or not any(r.ok for r in base_runs):
            row.verdict = "no baseline ('none') to compare with"
        elif not scores:
            row.verdict = f"no interval: {why_not}"
        else:
            base_scores = [scores[r.run_id] for r in base_runs if r.ok]
            for metric in ("map50_95", "map50"):
                c = compare([scores[r.run_id] for r in ok], base_scores, metric)
                if c is not None:
                    row.comparisons[metric] = c
            c = row.comparisons.get("map50_95")
            row.verdict = _verdict_text(c) if c else "no seed in common with the baseline"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- tables


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def _cost_cell(row: Row, key: str, fmt: str) -> str:
    v = getattr(row.cost, key) if row.cost else None
    if v is None:
        return "-"
    text = format(v, fmt)
    ratio = row.ratios.get(key)
    return text if ratio is None or row.variant.is_baseline else f"{text} ({ratio:.2f}x)"


def _delta_cell(row: Row, metric: str) -> str:
    c = row.comparisons.get(metric)
    if c is None:
        return "-"
    return f"{_signed(c.delta)} [{_signed(c.ci[0])}, {_signed(c.ci[1])}]"


def _map_cell(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


COLUMNS = [
    ("variant", lambda r: r.label),
    ("params", lambda r: f"{r.cost.params / 1e6:.3f} M" if r.cost and r.cost.params else "-"),
    ("GFLOPs (all ops)", lambda r: _cost_cell(r, "gflops", ".3f")),
    ("GFLOPs (ultralytics)", lambda r: f"{r.cost.gflops_ultralytics:.3f}" if r.cost and r.cost.gflops_ultralytics
     else "-"),
    ("latency b1 (ms)", lambda r: _cost_cell(r, "latency_b1_ms", ".1f")),
    ("latency bN (ms)", lambda r: _cost_cell(r, "latency_batch_ms", ".1f")),
    ("train (img/s)", lambda r: _cost_cell(r, "train_images_per_s", ".1f")),
    ("train mem (MB)", lambda r: _cost_cell(r, "train_peak_mem_mb", ".0f")),
    ("mAP50", lambda r: _map_cell(r.map50, r.map50_sd)),
    ("mAP50-95", lambda r: _map_cell(r.map50_95, r.map50_95_sd)),
    ("Δ mAP50 [95% CI]", lambda r: _delta_cell(r, "map50")),
    ("Δ mAP50-95 [95% CI]", lambda r: _delta_cell(r, "map50_95")),
    ("verdict", lambda r: r.verdict),
]
CSV_FIELDS = [
    "variant", "attn", "place", "status", "seeds_ok", "seeds_failed", "params", "gflops", "gflops_matmul",
    "gflops_ultralytics", "latency_b1_ms", "latency_batch_ms", "train_images_per_s", "train_peak_mem_mb", "map50",
    "map50_sd", "map50_95", "map50_95_sd", "delta_map50", "delta_map50_ci", "delta_map50_95", "delta_map50_95_ci",
    "verdict", "verdict_text", "n_seeds", "interval_covers", "error",
]


def table_cells(rows: list[Row], batch: int) -> tuple[list[str], list[list[str]]]:
    head = [h.replace("bN", f"b{batch}") for h, _ in COLUMNS]
    body = [[fn(r) if r.status != "failed" or h in ("variant", "verdict") else "-" for h, fn in COLUMNS] for r in rows]
    return head, body


def markdown_table(rows: list[Row], batch: int) -> str:
    head, body = table_cells(rows, batch)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def text_table(rows: list[Row], batch: int) -> str:
    head, body = table_cells(rows, batch)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    widths[-1] = 0
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths[:-1]] + ["-------"]), *map(fmt, body)])


# ----------------------------------------------------------------------------- files


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def report_title(sweep: Sweep) -> str:
    t = sweep.train
    start = (f"fine-tuned from a base trained {_count(sweep.base.epochs, 'epoch')} per seed" if sweep.base
             else "from the checkpoint" if sweep.gated else "from scratch")
    return (f"{Path(sweep.model).name} + attention at {', '.join(sweep.places)} | {sweep.data.desc} | imgsz {t.imgsz}, "
            f"{_count(t.epochs, 'epoch')} {start}, batch {t.batch}, {_count(len(sweep.seeds), 'seed')}, {sweep.device}")


def report_notes(sweep: Sweep, costs: CostReport | None) -> list[str]:
    from .costs import LATENCY_RUNS_B1, LATENCY_RUNS_BATCH, TRAIN_STEPS

    notes = [
        "- mAP: ultralytics' validation of each run's final weights (last epoch, no best-epoch selection); "
        "mean ± sample s.d. over seeds.",
        f"- Δ: variant minus baseline, mean over seeds paired by seed, with a 95% interval that combines "
        f"seed-to-seed variation and validation-set sampling (a paired bootstrap over validation images, "
        f"{N_BOOT} resamples of the stored per-image matches). The verdict is \"better\" or \"worse\" only when "
        "the interval excludes 0. With one seed the interval covers validation sampling only. Method: "
        "docs/ablate-statistics.md.",
    ]
    if costs is not None:
        notes.append(
            f"- Costs: measured after training in one process on {costs.device}, all variants interleaved in "
            f"{costs.repeats} rounds (medians): latency = median of {LATENCY_RUNS_B1} (batch 1) and "
            f"{LATENCY_RUNS_BATCH} (batch {costs.batch}) forward passes of the fused model per round; train = "
            f"images/s of {TRAIN_STEPS} training steps (forward, loss, backward, SGD step) per round at batch "
            f"{costs.batch}; train mem = {costs.memory_kind}. (x) = ratio to the baseline. GFLOPs (all ops): "
            "yolo_attention.flops, softmax, top-k and elementwise gates included; GFLOPs (ultralytics): "
            "convolutions and matrix products only.")
    return notes


def base_summary(sweep: Sweep, results: dict[str, RunResult]) -> dict | None:
    if sweep.base is None:
        return None
    runs = [results[r.run_id] for r in sweep.plan() if r.stage.name == "base" and r.run_id in results]
    ok = [r for r in runs if r.ok]
    mean, sd = _mean_sd([r.map50_95 for r in ok])
    curve = CurveSummary.of(ok)
    return {"stage": sweep.base.to_dict(), "seeds_ok": [r.seed for r in ok],
            "seeds_failed": [r.seed for r in runs if not r.ok], "map50_95": mean, "map50_95_sd": sd,
            "curve": curve.to_dict() if curve else None}


def base_sentence(sweep: Sweep, base: dict | None) -> str:
    """The base stage's line of the reports ('' without a base stage or when every base run failed)."""
    if not base or base["map50_95"] is None:
        return ""
    return (f"Base stage (trained once per seed, then every variant fine-tuned from it): mAP50-95 "
            f"{_map_cell(base['map50_95'], base['map50_95_sd'])} after {_count(sweep.base.epochs, 'epoch')}.")


def _write_csvs(out: Path, rows: list[Row], sweep: Sweep, results: dict[str, RunResult]) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            d = r.to_json()
            w.writerow({k: ("" if d.get(k) is None else d[k]) for k in CSV_FIELDS})
    keys = ["run_id", "variant", "stage", "seed", "status", "map50", "map50_95", "train_s", "wall_s", "node", "error"]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for spec in sweep.plan():
            r = results.get(spec.run_id)
            if r:
                d = r.to_dict()
                w.writerow({k: ("" if d.get(k) is None else d[k]) for k in keys})


def write_reports(out: Path, sweep: Sweep, results: dict[str, RunResult], store: Store,
                  costs: CostReport | None) -> list[Row]:
    rows = analyse(sweep, results, store, costs)
    title = report_title(sweep)
    base = base_summary(sweep, results)
    _write_csvs(out, rows, sweep, results)
    md = [f"# Ablation: {title}", "", markdown_table(rows, sweep.train.batch), ""]
    if base_sentence(sweep, base):
        md += [base_sentence(sweep, base), ""]
    md += report_notes(sweep, costs) + [""]
    (out / "results.md").write_text("\n".join(md))
    write_json(out / "results.json", {
        "config": sweep.to_dict(), "title": title, "base": base, "variants": [r.to_json() for r in rows],
        "costs": costs.to_dict() if costs else None,
        "statistics": {"n_boot": N_BOOT, "level": 0.95, "method": "docs/ablate-statistics.md"},
        "runs": {k: v.to_dict() for k, v in results.items()}})
    try:
        from .plot import plot

        plot(rows, results, sweep, base, out / "results.png", title)
    except Exception as e:  # noqa: BLE001
        print(f"yolo-attention ablate: warning: could not draw the plot: {e}", file=sys.stderr)
    return rows
