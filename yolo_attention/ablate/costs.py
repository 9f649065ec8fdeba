"""Every variant's costs measured side by side: one process, interleaved, repeated.

Timings taken one run after the other move with the machine's load (a busy neighbour makes
one variant look slow). Here all variants are built in one process and measured in rounds:
each round times every variant once (latency at batch 1, latency at the training batch, a few
training steps), in an order that rotates from round to round; the reported value is the
median over rounds. A load change then hits all variants alike, and the ratios to the
baseline hold even when the absolute numbers move.

Costs depend on the architecture, not on the trained values, so each variant is built as it
was trained (inserted gated into the base, or as a YAML row) from its definition.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

from .results import CostReport, VariantCost
from .spec import CostSpec, Variant

__all__ = ["measure_costs", "LATENCY_RUNS_B1", "LATENCY_RUNS_BATCH", "TRAIN_STEPS", "WARMUP"]

WARMUP = 2  # untimed calls of each kind per variant before the first round
LATENCY_RUNS_B1 = 10  # forward passes per variant and round, batch 1 (median)
LATENCY_RUNS_BATCH = 3  # forward passes per variant and round, training batch (median)
TRAIN_STEPS = 2  # training steps per variant and round (median)
OBJECTS_PER_IMAGE = 4  # synthetic labels of the training step (the loss's cost barely depends on them)


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from ..bench import machine_info

    return f"{machine_info('cpu')['cpu']} ({device.type.upper()}, {torch.get_num_threads()} threads)"


def _static(det, imgsz: int) -> dict:
    """Parameters and FLOPs (ours: every operation; ultralytics': convolutions and matmuls), fused model."""
    from ..flops import model_flops
    from ..integrations.cost import ultralytics_gflops

    out = {"params": sum(p.numel() for p in det.parameters())}
    m = _fused_eval(det)
    rep = model_flops(m, imgsz=imgsz, batch=1)
    out["gflops"], out["gflops_matmul"] = rep.total / 1e9, rep.matmul / 1e9
    with contextlib.suppress(Exception):  # a thop problem leaves ultralytics' figure empty, not the row
        out["gflops_ultralytics"] = ultralytics_gflops(m, imgsz)[0]
    return out


def _fused_eval(det):
    m = copy.deepcopy(det).float().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    with contextlib.suppress(Exception):
        m = m.fuse(verbose=False) if "verbose" in m.fuse.__code__.co_varnames else m.fuse()
    return m


class _Bench:
    """One variant's models and inputs on the device, and its timed calls."""

    def __init__(self, det, imgsz: int, batch: int, device):
        import torch
        from ultralytics.cfg import get_cfg

        self.device = device
        self.eval = _fused_eval(det).to(device)
        self.train = copy.deepcopy(det).float().to(device).train()
        self.train.args = get_cfg()  # the loss reads its gains (box, cls, dfl) from model.args
        for p in self.train.parameters():
            p.requires_grad_(True)
        self.opt = torch.optim.SGD(self.train.parameters(), lr=1e-6, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        n = batch * OBJECTS_PER_IMAGE
        self.x1 = torch.rand(1, 3, imgsz, imgsz, generator=g).to(device)
        self.xb = torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device)
        wh = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        xy = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
        self.labels = {"img": self.xb, "batch_idx": torch.arange(batch).repeat_interleave(OBJECTS_PER_IMAGE).float(),
                       "cls": torch.zeros(n, 1), "bboxes": torch.cat((xy, wh), 1)}
        self.labels = {k: v.to(device) for k, v in self.labels.items()}

    def forward_b1(self):
        import torch

        with torch.inference_mode():
            self.eval(self.x1)

    def forward_batch(self):
        import torch

        with torch.inference_mode():
            self.eval(self.xb)

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.train.loss(self.labels)[0]
        loss.sum().backward()
        self.opt.step()


def _timed_ms(fn, runs: int, device) -> float:
    from ..bench import time_ms

    return time_ms(fn, 0, runs, device)[0]


def _build(spec: CostSpec, v: Variant, nc: int | None):
    from .build import build_variant

    return build_variant(spec.model, v, nc, gated=spec.gated)[1]


def _prepare(spec: CostSpec, nc: int | None, device) -> tuple[dict, dict, dict]:
    """Build and warm up every variant: (benches, static costs, errors) by variant name."""
    benches, static, errors = {}, {}, {}
    for v in spec.variants:
        try:
            det = _build(spec, v, nc)
            static[v.name] = _static(det, spec.imgsz)
            b = _Bench(det, spec.imgsz, spec.batch, device)
            for fn in (b.forward_b1, b.forward_batch, b.train_step):
                for _ in range(WARMUP):
                    fn()
            benches[v.name] = b
        except Exception as e:  # noqa: BLE001  (one variant that cannot be measured must not hide the others)
            errors[v.name] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    return benches, static, errors


def _rounds(benches: dict, repeats: int, device) -> dict[str, dict[str, list[float]]]:
    """Time every variant once per round, the order rotating from round to round (ms per call)."""
    times = {n: {"b1": [], "batch": [], "step": []} for n in benches}
    names = list(benches)
    for r in range(repeats if names else 0):
        for n in names[r % len(names):] + names[: r % len(names)]:
            b = benches[n]
            times[n]["b1"].append(_timed_ms(b.forward_b1, LATENCY_RUNS_B1, device))
            times[n]["batch"].append(_timed_ms(b.forward_batch, LATENCY_RUNS_BATCH, device))
            times[n]["step"].append(_timed_ms(b.train_step, TRAIN_STEPS, device))
    return times


def measure_costs(spec: CostSpec, data_yaml: str | None = None) -> CostReport:
    """Build every variant, then time them in ``spec.repeats`` interleaved rounds; medians over rounds."""
    import torch
    from ultralytics.utils.torch_utils import select_device

    import yolo_attention  # noqa: F401

    from ..bench import peak_mb, machine_info
    from .build import data_nc, import_user_modules

    t0 = time.time()
    import_user_modules(spec.imports)
    device = select_device(spec.device, verbose=False)  # on CPU it sets ultralytics' training thread count
    if spec.threads:
        torch.set_num_threads(spec.threads)
    nc = spec.data.nc or (data_nc(data_yaml) if data_yaml else None)
    benches, static, errors = _prepare(spec, nc, device)
    times = _rounds(benches, spec.repeats, device)
    results = []
    for v in spec.variants:
        if v.name not in benches:
            results.append(VariantCost(v.name, **static.get(v.name, {}), error=errors.get(v.name)))
            continue
        t = {k: statistics.median(x) for k, x in times[v.name].items()}
        results.append(VariantCost(
            v.name, **static[v.name], latency_b1_ms=t["b1"], latency_batch_ms=t["batch"],
            train_images_per_s=spec.batch / (t["step"] / 1e3),
            train_peak_mem_mb=peak_mb(benches[v.name].train_step, device)))
    memory = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
              else "peak size of the tensors alive during the step (yolo_attention.bench's tracker)")
    return CostReport(fingerprint=spec.fingerprint, device=_device_name(device), imgsz=spec.imgsz, batch=spec.batch,
                      repeats=spec.repeats, variants=results, machine=machine_info(device),
                      memory_kind=f"one training step at batch {spec.batch}: {memory}", wall_s=time.time() - t0)
