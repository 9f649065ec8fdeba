"""Shared helpers for the module, registry and export tests.

Every parametrised test runs over ``ALL_NAMES``: the modules registered when the tests are
collected plus a test-local user module (``UserTestGate``), which is registered with
``register_attention`` only for the duration of each test that uses it (fixture
``attn_name``) and unregistered afterwards, so it never leaks into other test files.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

from yolo_attention import registry
from yolo_attention.modules.helpers import check_channels, check_input, check_positive
from yolo_attention.registry import (
    create_attention,
    get_attention_info,
    list_attention,
    register_attention,
)

BUILTIN_NAMES: list[str] = [info.name for info in list_attention()]
USER_NAME = "user_test_gate"  # canonical form: "usertestgate"


class UserTestGate(nn.Module):
    """Test-only user module: y = x * sigmoid(conv1d_k(mean_HW(x))), a gate across neighbouring channels."""

    def __init__(self, channels: int, k_size: int = 3):
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "k_size", k_size)
        if k_size % 2 == 0:
            raise ValueError(f"{name}: argument 'k_size' must be an odd positive int, got {k_size!r}")
        self.conv = nn.Conv1d(1, 1, k_size, padding=k_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        s = self.conv(x.mean((2, 3)).unsqueeze(1)).squeeze(1)  # N, C
        return x * torch.sigmoid(s)[:, :, None, None]


@contextlib.contextmanager
def user_module_registered():
    """Register ``UserTestGate`` under ``USER_NAME`` and remove it again on exit, whatever happens."""
    canonical = registry._normalise(USER_NAME)
    assert canonical not in registry._REGISTRY, "user test module leaked from an earlier test"
    register_attention(USER_NAME, kind="custom", paper="test-local user module", aliases=("utg",))(UserTestGate)
    try:
        yield canonical
    finally:
        if canonical in registry._REGISTRY:
            registry.unregister_attention(canonical)


@contextlib.contextmanager
def registry_snapshot():
    """Restore the registry (entries, lookups, listeners) exactly as it was, for tests that mutate it."""
    reg, lookup, listeners = dict(registry._REGISTRY), dict(registry._LOOKUP), list(registry._LISTENERS)
    try:
        yield
    finally:
        changed = [info for name, info in reg.items() if registry._REGISTRY.get(name) is not info]
        registry._REGISTRY.clear()
        registry._REGISTRY.update(reg)
        registry._LOOKUP.clear()
        registry._LOOKUP.update(lookup)
        registry._LISTENERS[:] = listeners
        # Detector namespaces were re-bound to the test's entries; bind the restored ones again.
        for info in changed:
            for fn in listeners:
                fn(info)


ALL_NAMES: list[str] = BUILTIN_NAMES + [registry._normalise(USER_NAME)]


@pytest.fixture(params=ALL_NAMES)
def attn_name(request):
    """Canonical name of every registered module, plus the test-local user module (registered only meanwhile)."""
    if request.param == registry._normalise(USER_NAME):
        with user_module_registered() as name:
            yield name
    else:
        yield request.param


@pytest.fixture(autouse=True, scope="module")
def _registry_does_not_leak():
    before = sorted(registry._REGISTRY)
    yield
    assert sorted(registry._REGISTRY) == before, "a test left modules registered or removed"


def cls_name(name: str) -> str:
    return get_attention_info(name).cls.__name__


def activate(m: nn.Module, scale: float = 0.2) -> nn.Module:
    """Give zero-initialised parameters (residual projections, norm biases, layer scales) random values,
    and BatchNorm random running statistics, so every path of the module is exercised."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in m.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return m


def make(name: str, channels: int, active: bool = True, **kwargs) -> nn.Module:
    m = create_attention(name, channels, **kwargs)
    return activate(m) if active else m


def weighted_loss(y: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """A loss with random weights: unlike y.sum() it has no symmetry that zeroes gradients
    (sum of a softmax, sum of a normalised map)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(y.shape, generator=g)
    return (y.float() * w).sum()


def assert_finite(t: torch.Tensor, what: str = "tensor"):
    assert torch.isfinite(t).all(), f"{what} has non-finite values"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def constructor_args(cls_or_name) -> list[str]:
    """Constructor arguments after ``self`` and ``channels``."""
    import inspect

    cls = cls_or_name if isinstance(cls_or_name, type) else get_attention_info(cls_or_name).cls
    return list(inspect.signature(cls.__init__).parameters)[2:]


def reference_batch_norm(t: torch.Tensor, bn: nn.BatchNorm2d, training: bool) -> torch.Tensor:
    """BatchNorm restated for reference implementations: batch statistics (biased variance) in training,
    running statistics in evaluation."""
    if training:
        mean, var = t.mean((0, 2, 3)), t.var((0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    t = (t - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    return t * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


# ------------------------------------------------------------------ modules grouped at the neck (covering design)
NECK_PLACES = 3  # a detector's neck has three outputs (P3, P4, P5) feeding its head


def neck_groups(names: list[str], k: int = NECK_PLACES) -> list[tuple[str, ...]]:
    """``names`` in groups of up to ``k``: one detector built per group covers every module of it."""
    return [tuple(names[i:i + k]) for i in range(0, len(names), k)]


def neck_mix_yaml(model: str, names: tuple[str, ...], out_dir, fmt: str = "ultralytics"):
    """A model YAML with ``names[i]`` after the i-th neck output (P3, P4, P5), built by ``make_yaml``.

    Inserted from the last place to the first, so that the original layer indices of the places not
    yet used stay valid. Returns the path of the last YAML written."""
    from pathlib import Path

    from yolo_attention.integrations.yaml_gen import insertion_points, load_classic_yaml, load_model_yaml, make_yaml

    d, _ = load_classic_yaml(model) if fmt == "classic" else load_model_yaml(model)
    points = insertion_points(d, "neck")
    assert len(names) <= len(points), f"{len(names)} modules for {len(points)} neck places"
    path = model
    for p, name in sorted(zip(points, names), reverse=True):
        path = make_yaml(path, name, [p], out=Path(out_dir) / f"{Path(str(path)).stem}-{name}.yaml", format=fmt)
    return path
