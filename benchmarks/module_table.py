"""The README's module table: kind, paper, params at C=256, FLOPs at 256x40x40, CPU time relative to SE.

Times are measured side by side: in each of ``--rounds`` rounds every module runs a forward
(eval, no grad) and a training step (forward + backward) at 1x256x40x40, one module after the
other in a shuffled order, and each module's time is divided by SE's time of the same round.
The table reports the median of those per-round ratios (and their range), so a change in
machine load between modules does not enter the ratio.

    python benchmarks/module_table.py                     # all registered modules, 2 torch threads
    python benchmarks/module_table.py --rounds 9 --threads 1

Writes benchmarks/results/module_table.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yolo_attention  # noqa: E402
from yolo_attention.bench import code_info, machine_info  # noqa: E402
from yolo_attention.flops import count_flops  # noqa: E402

SHAPE = (1, 256, 40, 40)
REFERENCE = "se"


@dataclass
class Row:
    name: str
    yaml_name: str
    kind: str
    paper: str
    citation: str
    params: int
    mflops: float
    fwd_ratio: float  # median over rounds of time / SE's time in the same round
    fwd_ratio_range: tuple[float, float]
    train_ratio: float
    train_ratio_range: tuple[float, float]
    fwd_ms: float  # median over rounds (absolute CPU times: this machine only)
    train_ms: float


def _timer(module: torch.nn.Module, x: torch.Tensor, train: bool):
    if train:
        module.train()
        xg = x.clone().requires_grad_(True)

        def step():
            module.zero_grad(set_to_none=True)
            module(xg).sum().backward()
    else:
        module.eval()

        def step():
            with torch.no_grad():
                module(x)

    return step


MIN_SAMPLE_S = 0.02  # a timed sample loops a call until it lasts this long: SE's forward alone is ~0.1 ms


def _time(fn, repeats: int) -> float:
    """Median over ``repeats`` samples of the time of one call (ms); each sample averages enough calls."""
    t0 = time.perf_counter()
    fn()  # warm-up, and the loop count of a sample
    loops = max(1, round(MIN_SAMPLE_S / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops)
    return statistics.median(times) * 1e3


def measure(names: list[str], rounds: int, repeats: int, seed: int = 0) -> list[Row]:
    torch.manual_seed(0)
    x = torch.randn(*SHAPE)
    modules = {n: yolo_attention.create_attention(n, SHAPE[1]) for n in names}
    steps = {(n, t): _timer(m, x, t) for n, m in modules.items() for t in (False, True)}
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in steps}
    order = list(steps)
    rng = random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for key in order:
            times[key].append(_time(steps[key], repeats))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    rows = []
    for n, m in modules.items():
        info = yolo_attention.get_attention_info(n)
        ratios = {t: [a / b for a, b in zip(times[(n, t)], times[(REFERENCE, t)])] for t in (False, True)}
        rows.append(Row(
            name=n, yaml_name=info.yaml_name, kind=info.kind, paper=info.paper, citation=info.citation,
            params=sum(p.numel() for p in m.parameters()),
            mflops=count_flops(m.eval(), x).total / 1e6,
            fwd_ratio=statistics.median(ratios[False]), fwd_ratio_range=(min(ratios[False]), max(ratios[False])),
            train_ratio=statistics.median(ratios[True]), train_ratio_range=(min(ratios[True]), max(ratios[True])),
            fwd_ms=statistics.median(times[(n, False)]), train_ms=statistics.median(times[(n, True)]),
        ))  # fmt: skip
    return rows


def _ratio(median: float, span: tuple[float, float]) -> str:
    return f"{median:.2f}x ({span[0]:.2g}-{span[1]:.2g})"


def _arxiv_link(arxiv: str | None) -> str:
    return f"[{arxiv}](https://arxiv.org/abs/{arxiv})" if arxiv else "none"


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, {meta['threads']} torch "
        f"thread(s), {meta['rounds']} interleaved rounds of {meta['repeats']} runs, git {meta['git']}.",
        "",
        "| name | YAML name | kind | paper | arXiv | params (C=256) | MFLOPs (256x40x40) | CPU time vs SE, forward (range) | "
        "CPU time vs SE, train step (range) |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        info = yolo_attention.get_attention_info(r.name)
        lines.append(
            f"| `{r.name}` | `{r.yaml_name}` | {r.kind} | {r.paper} | {_arxiv_link(info.arxiv)} | "
            f"{r.params:,} | {r.mflops:,.1f} | {_ratio(r.fwd_ratio, r.fwd_ratio_range)} | "
            f"{_ratio(r.train_ratio, r.train_ratio_range)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", help="comma-separated names (default: every registered module)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = a.modules.split(",") if a.modules else [i.name for i in yolo_attention.list_attention()]
    names = [yolo_attention.get_attention_info(n).name for n in names]
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    load = tuple(round(v, 2) for v in __import__("os").getloadavg())
    rows = measure(names, a.rounds, a.repeats)
    mach = machine_info("cpu")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{mach.get('cpu', 'CPU')} ({mach.get('logical_cpus', '?')} logical CPUs), load average {load} at start",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": a.rounds, "repeats": a.repeats,
        "git": code_info().get("git_commit", "?"), "shape": SHAPE, "reference": REFERENCE,
    }  # fmt: skip
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "module_table.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    md = markdown(rows, meta)
    (out / "module_table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
