"""Tables and learning-curve plots of the recipes in ``benchmarks/results/recipe/``.

    python benchmarks/recipe/report.py                     # table of every recipe
    python benchmarks/recipe/report.py --plot docs/x.png r01-sgd02 r01-adamw002 ...

The x axis of a curve is CPU seconds of training (per-epoch validation excluded), so
recipes with other image sizes, batches or data sizes compare at equal cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "recipe"


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def epochs(stage: dict) -> list[dict]:
    return [r for r in stage["curve"] if not r["final_eval"]]


def budget(res: dict) -> dict:
    """CPU seconds of the recipe as ablate would run it: data, pretraining, every fine-tune, validated once each."""
    stages = res["stages"]
    pre = stages[0]["cpu_val_once"]
    ft = {s["name"]: s["cpu_val_once"] for s in stages[1:]}
    return {"data": res["data_cpu"] if not res["data_reused"] else None, "pretrain": pre, "finetune": ft,
            "total": pre + sum(ft.values())}


def table(names: list[str]) -> str:
    head = ("recipe", "threads", "img/epoch", "imgsz", "batch", "epochs", "pretrain CPU s", "fine-tunes CPU s",
            "mAP50 (pre)", "mAP50-95 (pre)", "best epoch mAP50-95", "fine-tuned mAP50-95", "note")
    rows = []
    for n in names:
        res = load(n)
        r = res["recipe"]
        b = budget(res)
        pre = res["stages"][0]
        best = max(epochs(pre), key=lambda e: e["map50_95"])
        ft = ", ".join(f"{s['name'][3:]} {s['map50_95']:.3f}" for s in res["stages"][1:])
        rows.append((n, str(r["threads"]), str(r["data"]["n_train"]), str(r["imgsz"]), str(r["batch"]),
                     f"{r['pretrain']['epochs']}" + (f"+{r['finetune']['epochs']}" if r["finetune"] else ""),
                     f"{b['pretrain']:.0f}", " + ".join(f"{v:.0f}" for v in b["finetune"].values()) or "-",
                     f"{pre['map50']:.3f}", f"{pre['map50_95']:.3f}", f"{best['map50_95']:.3f} (ep {best['epoch']})",
                     ft or "-", r["note"]))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(names: list[str], path: Path, title: str, finetune: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, n in enumerate(names):
        res = load(n)
        pre = res["stages"][0]
        xs, ys, x = [], [], pre["setup_cpu"]
        for e in epochs(pre):
            x += e["train_cpu"]
            xs.append(x)
            ys.append(e["map50_95"])
        ax.plot(xs, ys, "-o", ms=3, color=f"C{i % 10}", label=f"{n}: {res['recipe']['note']}")
        if finetune:
            for j, st in enumerate(res["stages"][1:]):
                fx, fy, x2 = [xs[-1]], [ys[-1]], xs[-1] + st["setup_cpu"]
                for e in epochs(st):
                    x2 += e["train_cpu"]
                    fx.append(x2)
                    fy.append(e["map50_95"])
                ax.plot(fx, fy, "--", lw=1, color=f"C{(i + j + 1) % 10}", label=f"  fine-tune {st['name'][3:]}")
    ax.axhline(0.30, color="k", lw=0.8, ls=":")
    ax.set_xlabel("CPU seconds of training (setup included, per-epoch validation excluded)")
    ax.set_ylabel("validation mAP50-95 (EMA weights, after each epoch)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="*")
    p.add_argument("--plot", type=Path)
    p.add_argument("--title", default="")
    p.add_argument("--finetune", action="store_true", help="also draw each variant's fine-tuning curve")
    a = p.parse_args(argv)
    names = a.names or sorted(p.stem for p in RESULTS.glob("*.json"))
    if a.plot:
        plot(names, a.plot, a.title, a.finetune)
    print(table(names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
