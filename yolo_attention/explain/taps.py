"""Read each attention module's own tensors with forward hooks on its declared taps.

Nothing is recomputed: a tap (``AttentionTap``, declared with ``register_attention(..., taps=)``)
names a submodule whose forward output *is* the attention tensor, and a hook copies it out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..modules.gated import GatedAttention
from ..registry import AttentionInfo, AttentionTap, list_attention

__all__ = ["AttentionLayer", "Capture", "TapRecorder", "activate", "find_attention_layers", "no_taps_note"]


@dataclass
class AttentionLayer:
    """One registered attention module inside a model (the outermost one, if they nest)."""

    index: int  # the model's layer index (ultralytics / classic ``model.model[i]``), else order of appearance
    path: str  # dotted path in the model
    module: nn.Module
    info: AttentionInfo
    gamma: float | None = None  # mean |gamma| of the GatedAttention wrapper, None when not gated

    @property
    def label(self) -> str:
        return f"layer {self.index} {self.info.yaml_name}"


def _layer_index(path: str, order: int) -> int:
    parts = path.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "model" and parts[1].isdigit() else order


def find_attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every registered attention module of ``model``, in order; modules nested in one are part of it."""
    by_cls = {info.cls: info for info in list_attention()}
    modules = dict(model.named_modules())
    found: list[AttentionLayer] = []
    for path, m in modules.items():
        info = by_cls.get(type(m))
        if info is None or any(path.startswith(f"{f.path}.") for f in found):
            continue
        parent = modules.get(path.rpartition(".")[0])
        gamma = float(parent.gamma.detach().abs().mean()) if isinstance(parent, GatedAttention) else None
        found.append(AttentionLayer(_layer_index(path, len(found)), path, m, info, gamma))
    return found


def no_taps_note(layer: AttentionLayer) -> str:
    return (f"{layer.label} ({layer.info.name}): not visualised, the module declares no attention taps "
            "(register_attention(..., taps=[AttentionTap(...)]))")


@dataclass
class Capture:
    """What one forward pass left in the hooks (keys: attention path, or (attention path, tap number))."""

    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tensors: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # tap outputs (see _keep)
    owner_inputs: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # routing: the router's owner


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    return None


def activate(t: torch.Tensor, tap: AttentionTap) -> torch.Tensor:
    """Map a tap's logits for display (``tap.activation``): softmax over channels (channel), positions
    (spatial, maps) or the last axis (tokens)."""
    if tap.activation == "sigmoid":
        return t.sigmoid()
    if tap.activation == "softmax":
        if tap.kind == "channel":
            return t.softmax(1)
        if tap.kind in ("spatial", "maps"):
            return t.flatten(2).softmax(-1).view_as(t)
        return t.softmax(-1)
    return t


def _keep(t: torch.Tensor, tap: AttentionTap) -> torch.Tensor:
    """What is kept of a tap's output: detached, mapped, on the CPU; token attention averaged over heads
    first (an (N, heads, L, L) tensor of a high-resolution map would not fit in memory twice), and
    single-head token attention (N, Q, L) given its heads axis, so that both are (N, 1, Q, L)."""
    t = t.detach()
    if not t.is_floating_point():
        return t.cpu()
    t = activate(t.float(), tap)
    if tap.kind == "tokens" and t.ndim == 4:
        t = t.mean(1, keepdim=True)
    elif tap.kind == "tokens" and t.ndim == 3:
        t = t.unsqueeze(1)
    return t.cpu()


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        return None


class TapRecorder:
    """Forward hooks on the taps of ``layers``; they record only inside :meth:`recording`."""

    def __init__(self, layers: list[AttentionLayer]):
        self.layers = layers
        self.problems: dict[str, list[str]] = {}  # attention path -> why a tap cannot be read
        self._capture: Capture | None = None
        self._handles = []
        for layer in layers:
            self._handles.append(layer.module.register_forward_pre_hook(self._shape_hook(layer.path)))
            for k, tap in enumerate(layer.info.taps):
                self._hook_tap(layer, k, tap)

    def _hook_tap(self, layer: AttentionLayer, k: int, tap: AttentionTap) -> None:
        sub = _submodule(layer.module, tap.module)
        if sub is None:
            self.problems.setdefault(layer.path, []).append(f"tap {tap.module!r} is not a submodule")
            return
        self._handles.append(sub.register_forward_hook(self._tap_hook((layer.path, k), tap)))
        if tap.kind == "routing":  # the token attention is asked of the module that owns the router
            owner = _submodule(layer.module, tap.module.rpartition(".")[0])
            self._handles.append(owner.register_forward_pre_hook(self._owner_hook((layer.path, k))))

    def _shape_hook(self, path):
        def hook(module, args):
            if self._capture is not None and args and isinstance(args[0], torch.Tensor):
                self._capture.input_shapes[path] = tuple(args[0].shape)

        return hook

    def _tap_hook(self, key, tap: AttentionTap):
        def hook(module, args, out):
            t = _first_tensor(out)
            if self._capture is not None and t is not None:
                self._capture.tensors[key] = _keep(t, tap)

        return hook

    def _owner_hook(self, key):
        def hook(module, args):
            if self._capture is not None and args and isinstance(args[0], torch.Tensor):
                self._capture.owner_inputs[key] = args[0].detach()

        return hook

    @contextlib.contextmanager
    def recording(self):
        """``with recorder.recording() as cap:`` run one forward pass; ``cap`` holds what the taps saw."""
        self._capture = cap = Capture()
        try:
            yield cap
        finally:
            self._capture = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
