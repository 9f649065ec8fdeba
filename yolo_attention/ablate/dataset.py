"""The dataset of a sweep: generated on the driver, regenerated and checked on other machines.

The generated dataset is deterministic (same options, numpy and Pillow: byte-identical files),
so a worker of a cluster generates its own copy instead of receiving it, and checks it by the
files hash of its manifest against the driver's. A user's data YAML must be readable on every
machine that trains; a task that cannot read it fails with the name of its node.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path

from .spec import DataSpec

__all__ = ["DataUnavailable", "generate", "materialize", "node_name"]


class DataUnavailable(RuntimeError):
    """The dataset cannot be used on this machine (unreadable path, or a generated copy that differs)."""


def node_name() -> str:
    host = socket.gethostname()
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            return f"{host} ({ray.util.get_node_ip_address()})"
    return host


def generate(out_dir: Path, options: dict) -> tuple[str, str]:
    """Generate (or reuse) the dataset under ``out_dir``: (data YAML path, files hash)."""
    from ..data.synthetic import dataset_digest, generate_synthetic

    yaml_path = generate_synthetic(out_dir, **options)
    return str(yaml_path), dataset_digest(out_dir)


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock between processes of one machine (two tasks must not generate into one folder)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_readable(yaml_file: str) -> None:
    import yaml

    where = f"on node {node_name()}"
    p = Path(yaml_file)
    if not os.access(p, os.R_OK):
        raise DataUnavailable(f"data YAML {yaml_file} is not readable {where}: every machine that trains needs the "
                              "dataset at the same path (a shared or copied folder; see docs/ablate-ray.md)")
    d = yaml.safe_load(p.read_text()) or {}
    root = Path(str(d.get("path", ""))) if isinstance(d, dict) else Path()
    if root.is_absolute():
        for split in ("train", "val"):
            entries = d.get(split) or []
            for entry in entries if isinstance(entries, list) else [entries]:
                target = root / str(entry)
                if not target.exists():
                    raise DataUnavailable(f"data YAML {yaml_file}: {split} images {target} do not exist {where}")


def materialize(data: DataSpec, cache_root: Path | None = None) -> str:
    """Make the dataset available on this machine and return the path of its data YAML."""
    if not data.generated:
        _check_readable(data.yaml)
        return data.yaml
    from ..data.synthetic import dataset_digest, generate_synthetic

    cache_root = Path(cache_root or Path(tempfile.gettempdir()) / "yolo-attention-data")
    root = cache_root / (data.digest or "unhashed")[:16]
    with _lock(cache_root / f"{root.name}.lock"):
        yaml_path = generate_synthetic(root, **data.synthetic)
    got = dataset_digest(root)
    if data.digest and got != data.digest:
        import numpy
        import PIL

        raise DataUnavailable(
            f"the dataset generated on node {node_name()} differs from the driver's (files hash {got[:12]} != "
            f"{data.digest[:12]}); the generator needs the same numpy and Pillow everywhere (here numpy "
            f"{numpy.__version__}, Pillow {PIL.__version__})")
    return str(yaml_path)
