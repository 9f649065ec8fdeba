"""The Ray backend: every run is a Ray task (one GPU, or N CPUs), on a local instance or a cluster.

No shared file system is needed: a task gets its spec, its parent's weights (through Ray's
object store) and the source of ``--import`` files; it regenerates the generated dataset on
its node and checks it by its files hash (a user's data YAML must be readable there: the task
fails naming the node otherwise); it runs the same worker process as the local backend in a
temporary folder and returns its result, log, per-epoch metrics and per-image matches (and the
weights: always for the base stage, for the runs ``--explain`` draws, and every run's with
``--fetch-weights``) as bytes, which the driver writes under ``--out``.

Failures follow the local backend: a run that fails is recorded and the others go on; a task
whose worker or node dies is retried by Ray (``max_retries``), then recorded as failed.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from ..common import UsageError, fmt_time
from ..progress import Progress
from ..results import MATCHES_FILE, RESULT_FILE, CostReport, RunResult
from ..spec import CostSpec, RunSpec
from ..stats import BOOT_FILE
from ..sweep import Store

__all__ = ["RaySession", "RayBackend", "connect", "EXTRA_HINT", "DEFAULT_RETRIES"]

EXTRA_HINT = "pip install 'yolo-attention[ray]'"
DEFAULT_RETRIES = 2  # Ray re-runs a task whose worker process or node died this many times
CONNECT_TIMEOUT_S = 3.0
_RETURNED = ("train.log", "progress.jsonl", MATCHES_FILE, BOOT_FILE, "train/results.csv", "train/args.yaml")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, an optional extra: {EXTRA_HINT}") from None
    return ray


@dataclass(frozen=True)
class RaySession:
    """A connected Ray: what each task asks for, and how many tasks the cluster runs at once."""

    address: str | None
    gpu: bool
    num_cpus: int
    concurrency: int
    started_here: bool
    retries: int = DEFAULT_RETRIES


def _host_port(address: str) -> tuple[str, int] | None:
    """``ray://host:10001`` or ``host:6379`` -> (host, port); None for ``auto`` and other forms."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname and parsed.port:
        return parsed.hostname, parsed.port
    return None


def _preflight(address: str) -> None:
    """Fail within seconds when nothing listens at the address (Ray itself retries for much longer)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise UsageError(f"--ray {address}: cannot reach a Ray cluster there ({type(e).__name__}: {e}); start one "
                         "with `ray start --head` (see docs/ablate-ray.md) or check the address") from None


def connect(address: str | None, device: str, cpus_per_run: int | None, retries: int = DEFAULT_RETRIES) -> RaySession:
    """Connect to Ray (``local``/None: a new local instance, unless this process already has one)."""
    ray = _import_ray()
    gpu = str(device).lower() not in ("cpu", "mps")
    if gpu and "," in str(device):
        raise UsageError(f"--device {device}: with --ray each run gets one GPU; give --device 0 (or cpu)")
    address = None if address in (None, "local") else address
    if address not in (None, "auto"):
        _preflight(address)
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=False)
        except Exception as e:  # noqa: BLE001  (ConnectionError, RuntimeError, ...: all mean "not reachable")
            raise UsageError(f"--ray {address or 'local'}: cannot connect to Ray: {type(e).__name__}: {e}") from None
        started = address is None
    resources = ray.cluster_resources()
    num_cpus = cpus_per_run or 1
    if gpu:
        if resources.get("GPU", 0) < 1:
            raise UsageError(f"--device {device}: the Ray cluster has no GPU (resources: {resources}); "
                             "use --device cpu")
        concurrency = int(resources["GPU"])
    else:
        concurrency = max(1, int(resources.get("CPU", 1) // num_cpus))
    return RaySession(address, gpu, num_cpus, concurrency, started, retries)


# ----------------------------------------------------------------------------- on the node


def _node_spec(spec, gpu: bool, imports: tuple[str, ...]):
    """The spec as this node runs it: its own copies of --import files, and the GPU Ray gave the task."""
    return replace(spec, imports=imports, device="0" if gpu else spec.device)


def _write_imports(sources: dict[str, str], folder: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        if name in sources:
            p = folder / Path(name).name
            p.write_text(sources[name])
            out.append(str(p))
        else:
            out.append(name)  # a dotted module name: installed on the node
    return tuple(out)


def _check_version(driver_version: str) -> str | None:
    import yolo_attention

    from ..dataset import node_name

    if yolo_attention.__version__ != driver_version:
        return (f"node {node_name()} has yolo-attention {yolo_attention.__version__}, the driver "
                f"{driver_version}: install the same version on every node")
    return None


def _run_train_task(spec_dict: dict, parent_weights: bytes | None, sources: dict[str, str], want_weights: bool,
                    gpu: bool, driver_version: str) -> dict:
    from ..dataset import DataUnavailable, materialize, node_name
    from ..worker import LOG_FILE, WEIGHTS, TrainTask, crash_result, run_process, write_task

    spec = RunSpec.from_dict(spec_dict)
    node = node_name()
    problem = _check_version(driver_version)
    if problem:
        return {"result": RunResult.failed(spec, problem, "version mismatch", node=node).to_dict(), "files": {}}
    with tempfile.TemporaryDirectory(prefix="yolo-attention-ablate-") as tmp:
        tmp = Path(tmp)
        try:
            data_yaml = materialize(spec.data)
        except DataUnavailable as e:
            return {"result": RunResult.failed(spec, str(e), "data unavailable", node=node).to_dict(), "files": {}}
        local = _node_spec(spec, gpu, _write_imports(sources, tmp / "imports", spec.imports))
        run_dir = tmp / "run"
        run_dir.mkdir()
        parent = None
        if parent_weights is not None:
            parent = tmp / "parent.pt"
            parent.write_bytes(parent_weights)
        write_task(TrainTask(local, str(run_dir), data_yaml, str(parent) if parent else None), run_dir / "task.json")
        t0 = time.time()
        rc = run_process(run_dir / "task.json", run_dir / LOG_FILE, local.threads)
        res_file = run_dir / RESULT_FILE
        if res_file.exists():
            import json

            result = json.loads(res_file.read_text())
        else:
            result = crash_result(local, rc, run_dir / LOG_FILE, time.time() - t0, node).to_dict()
        result["node"] = node
        names = _RETURNED + ((WEIGHTS,) if want_weights else ())
        files = {n: (run_dir / n).read_bytes() for n in names if (run_dir / n).is_file()}
        return {"result": result, "files": files}


def _run_cost_task(spec_dict: dict, sources: dict[str, str], gpu: bool, driver_version: str) -> dict:
    from ..dataset import materialize
    from .local import run_cost_task

    problem = _check_version(driver_version)
    if problem:
        raise RuntimeError(problem)
    spec = CostSpec.from_dict(spec_dict)
    with tempfile.TemporaryDirectory(prefix="yolo-attention-costs-") as tmp:
        tmp = Path(tmp)
        data_yaml = None if spec.data.nc else materialize(spec.data)
        local = _node_spec(spec, gpu, _write_imports(sources, tmp / "imports", spec.imports))
        return run_cost_task(local, tmp / "costs", data_yaml).to_dict()


# ----------------------------------------------------------------------------- on the driver


class RayBackend:
    """Submits runs as Ray tasks; ``next_result`` returns whichever finishes first."""

    def __init__(self, session: RaySession, store: Store, progress: Progress, fetch_weights: bool = False,
                 weights_of: frozenset[str] = frozenset()):
        import ray

        import yolo_attention

        self.ray, self.session, self.store, self.progress = ray, session, store, progress
        self.concurrency = session.concurrency
        self.fetch_weights = fetch_weights
        self.weights_of = weights_of  # run ids whose weights come back anyway (the ones --explain draws)
        self.version = yolo_attention.__version__
        resources = dict(num_gpus=1, num_cpus=session.num_cpus) if session.gpu else dict(num_cpus=session.num_cpus)
        self._train = ray.remote(_run_train_task).options(max_retries=session.retries, **resources)
        self._costs = ray.remote(_run_cost_task).options(max_retries=session.retries, **resources)
        self._weights: dict[Path, object] = {}
        self._in_flight: dict[object, tuple[RunSpec, float]] = {}
        self._sources: dict[str, str] = {}
        self._last_line = 0.0

    def describe(self) -> str:
        what = "1 GPU" if self.session.gpu else f"{self.session.num_cpus} CPU(s)"
        return f"Ray tasks of {what} each, up to {self.concurrency} at once"

    def _sources_of(self, imports: tuple[str, ...]) -> dict[str, str]:
        for name in imports:
            if name.endswith(".py") and name not in self._sources:
                self._sources[name] = Path(name).read_text()
        return {k: v for k, v in self._sources.items() if k in imports}

    def _weights_ref(self, path: Path | None):
        if path is None:
            return None
        if path not in self._weights:
            self._weights[path] = self.ray.put(path.read_bytes())  # once per parent, shared by its children
        return self._weights[path]

    def submit(self, spec: RunSpec, parent_weights: Path | None) -> None:
        # children need the base weights (resume too); --explain draws the runs of weights_of
        want = self.fetch_weights or spec.stage.name == "base" or spec.run_id in self.weights_of
        ref = self._train.remote(spec.to_dict(), self._weights_ref(parent_weights), self._sources_of(spec.imports),
                                 want, self.session.gpu, self.version)
        self._in_flight[ref] = (spec, time.time())

    def _wait_one(self):
        p = self.progress
        while True:
            ready, _ = self.ray.wait(list(self._in_flight), num_returns=1, timeout=1.0)
            if ready:
                return ready[0]
            if p.tty and time.time() - self._last_line > 1.0:
                self._last_line = time.time()
                left = p.eta()
                p.show(f"[{p.done}/{p.total} done, {len(self._in_flight)} running] elapsed "
                       f"{fmt_time(time.time() - p.start)} | left {'~' + fmt_time(left) if left is not None else '?'}")

    def next_result(self) -> tuple[RunSpec, RunResult]:
        ref = self._wait_one()
        spec, t0 = self._in_flight.pop(ref)
        wall = time.time() - t0
        try:
            payload = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the worker or node died (after Ray's retries), or cancelled
            msg = str(e).strip().splitlines()[0][:500] if str(e).strip() else ""
            res = RunResult.failed(spec, f"Ray task failed: {type(e).__name__}: {msg}", type(e).__name__, wall)
        else:
            run_dir = self.store.fresh_run_dir(spec.run_id)
            for name, data in payload["files"].items():
                (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (run_dir / name).write_bytes(data)
            res = RunResult.from_dict(payload["result"])
            res.fingerprint = spec.fingerprint  # the node ran it with its own paths; the run is the driver's spec
            if res.weights not in payload["files"]:
                res.weights = None  # left on the node (no --fetch-weights)
        self.progress.run_done(spec, wall, epochs_seen=False)
        p = self.progress
        status = (f"done on {res.node} in {fmt_time(wall)}: mAP50-95 {res.map50_95:.4f}" if res.ok
                  else f"FAILED ({(res.error or '?')[:200]})")
        p.show(f"[{p.done}/{p.total}] {spec.run_id}: {status} | elapsed {fmt_time(time.time() - p.start)}", final=True)
        return spec, res

    def measure_costs(self, spec: CostSpec) -> CostReport:
        ref = self._costs.remote(spec.to_dict(), self._sources_of(spec.imports), self.session.gpu, self.version)
        try:
            return CostReport.from_dict(self.ray.get(ref))
        except self.ray.exceptions.RayError as e:
            raise RuntimeError(f"the cost measurement failed on Ray: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        for ref in list(self._in_flight):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self._in_flight.clear()
        if self.session.started_here:
            self.ray.shutdown()
