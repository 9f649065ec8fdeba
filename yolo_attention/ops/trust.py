"""When ``backend="auto"`` trusts the Triton kernels: a recorded GPU check, or an environment variable.

The kernels (:mod:`yolo_attention.ops.triton_bra`) are tested on CPU in the Triton
interpreter, which cannot vouch for a GPU compiler or for bfloat16. So "auto" uses them only

* for a dtype that a recorded check on a GPU passed, on a matching configuration: the same
  CUDA compute capability (major and minor), the same triton version and the same kernel
  source (SHA-256 of ``triton_bra.py``: editing the kernels voids every record); or
* when the environment variable ``YOLO_ATTENTION_TRITON=1`` says so (the user's own check).

``YOLO_ATTENTION_TRITON=0`` forbids the kernels, also where a module asks for them
explicitly (``kernel="triton"``); unset (or empty) leaves the decision to the records.

Records are written by ``benchmarks/gpu_biformer.sh`` (:func:`record_check`) to
``triton_verified.json`` next to this file, which ships with the package (with no record until
a GPU has run the check); one record per (capability, triton version) with the current kernel
source, each listing the dtypes and shapes checked, the largest relative errors and whether
each check passed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["ENV_VAR", "RECORD_PATH", "TritonCheck", "TritonRecord", "env_policy", "auto_trusts", "record_check"]

ENV_VAR = "YOLO_ATTENTION_TRITON"
RECORD_PATH = Path(__file__).with_name("triton_verified.json")
_KERNEL_SOURCE = Path(__file__).with_name("triton_bra.py")
_FORMAT = 1


@dataclass(frozen=True)
class TritonCheck:
    """One comparison of the Triton kernels with the SDPA backend (output and all gradients)."""

    dtype: str  # "float32", "float16", "bfloat16"
    shape: tuple[int, ...]  # input (N, C, H, W)
    output_error: float  # max |triton - sdpa| / max |sdpa| over the output
    grad_error: float  # the same, the largest over the input and parameter gradients
    tolerance: float  # output bound; gradients are allowed 10x
    fell_back: bool  # a kernel configuration failed and SDPA ran instead

    @property
    def passed(self) -> bool:
        return not self.fell_back and self.output_error < self.tolerance and self.grad_error < 10 * self.tolerance


@dataclass(frozen=True)
class TritonRecord:
    """A GPU check of the Triton kernels: where it ran and what it found."""

    device: str  # torch.cuda.get_device_name()
    capability: tuple[int, int]
    triton: str
    kernel_sha256: str
    torch: str = ""
    cuda: str = ""
    date_utc: str = ""
    checks: tuple[TritonCheck, ...] = ()

    def matches(self, capability, triton_version: str, kernel_sha256: str) -> bool:
        return (
            tuple(self.capability) == tuple(capability)
            and self.triton == triton_version
            and self.kernel_sha256 == kernel_sha256
        )

    def passed_dtypes(self) -> frozenset[str]:
        """Dtypes that were checked and passed every check."""
        dtypes = {c.dtype for c in self.checks}
        return frozenset(d for d in dtypes if all(c.passed for c in self.checks if c.dtype == d))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["checks"] = [{**asdict(c), "passed": c.passed} for c in self.checks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TritonRecord:
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        checks = tuple(
            TritonCheck(**{**{k: v for k, v in c.items() if k in TritonCheck.__dataclass_fields__}, "shape": tuple(c["shape"])})
            for c in d.get("checks", ())
        )
        return cls(**{**fields, "capability": tuple(d["capability"]), "checks": checks})


def kernel_sha256() -> str:
    """SHA-256 of the kernel source file (what a record vouches for)."""
    return hashlib.sha256(_KERNEL_SOURCE.read_bytes()).hexdigest()


def load_records(path: Path | str = RECORD_PATH) -> list[TritonRecord]:
    """The records in ``path`` ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("format") != _FORMAT:
        raise ValueError(f"{path}: unknown Triton record format {data.get('format')!r} (expected {_FORMAT})")
    return [TritonRecord.from_dict(r) for r in data.get("records", ())]


def record_check(record: TritonRecord, path: Path | str = RECORD_PATH) -> None:
    """Add ``record`` to ``path``, replacing the record of the same capability and triton version
    and dropping records of other kernel sources (they can never match again)."""
    keep = [
        r
        for r in load_records(path)
        if r.kernel_sha256 == record.kernel_sha256
        and not (tuple(r.capability) == tuple(record.capability) and r.triton == record.triton)
    ]
    payload = {"format": _FORMAT, "records": [r.as_dict() for r in [*keep, record]]}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    _recorded_dtypes.cache_clear()


def env_policy() -> bool | None:
    """``YOLO_ATTENTION_TRITON``: True ("1", force), False ("0", forbid) or None (unset: the records decide)."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value in ("", "auto"):
        return None
    if value in ("0", "1"):
        return value == "1"
    raise ValueError(f"environment variable {ENV_VAR} must be '1' (use the Triton kernels), '0' (never) or unset, got {value!r}")


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


@functools.lru_cache(maxsize=None)
def _recorded_dtypes(capability: tuple[int, int], path: str) -> frozenset[str]:
    version = _triton_version()
    if version is None:
        return frozenset()
    try:
        records = load_records(path)
    except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged file: trust nothing, say why once
        warnings.warn(f"routed attention: cannot read the Triton records {path} ({err}); the kernels stay off",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return frozenset()
    sha = kernel_sha256()
    return frozenset().union(*(r.passed_dtypes() for r in records if r.matches(capability, version, sha)))


def auto_trusts(device: torch.device, dtype: torch.dtype, path: Path | str = RECORD_PATH) -> bool:
    """Whether ``backend="auto"`` may run the Triton kernels for ``dtype`` tensors on ``device``.

    The environment variable decides when set; otherwise a passed record for this CUDA
    device's capability, the installed triton and the current kernel source is needed.
    """
    policy = env_policy()
    if policy is not None:
        return policy
    if device.type != "cuda":
        return False
    capability = tuple(torch.cuda.get_device_capability(device))
    return str(dtype).removeprefix("torch.") in _recorded_dtypes(capability, str(path))
