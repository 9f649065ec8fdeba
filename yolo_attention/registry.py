"""Registry of attention modules: registration is data, not another ``elif``.

Every integration (ultralytics YAMLs, existing models, the classic YOLOv5/v7
repositories, the ablation runner) reads this registry, so a module registered with
:func:`register_attention` is available everywhere at once.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch.nn as nn

__all__ = [
    "AttentionInfo",
    "KINDS",
    "register_attention",
    "create_attention",
    "list_attention",
    "get_attention_info",
    "add_registry_listener",
]

KINDS = ("channel", "spatial", "hybrid", "global-context", "sparse-attention", "custom")


@dataclass(frozen=True)
class AttentionInfo:
    """What the registry knows about one module."""

    name: str  # canonical lower-case name, e.g. "se"
    cls: type
    kind: str
    paper: str = ""
    arxiv: str | None = None
    aliases: tuple[str, ...] = ()
    builtin: bool = field(default=False, compare=False)

    @property
    def yaml_name(self) -> str:
        """The name a model YAML uses for this module (the class name)."""
        return self.cls.__name__

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "yaml_name": self.yaml_name,
            "kind": self.kind,
            "paper": self.paper,
            "arxiv": self.arxiv,
            "aliases": list(self.aliases),
        }


_REGISTRY: dict[str, AttentionInfo] = {}  # canonical name -> info
_LOOKUP: dict[str, str] = {}  # normalised name or alias -> canonical name
_LISTENERS: list[Callable[[AttentionInfo], None]] = []


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def add_registry_listener(fn: Callable[[AttentionInfo], None]) -> None:
    """Call ``fn(info)`` for every module registered now and later (used by integrations)."""
    _LISTENERS.append(fn)
    for info in list(_REGISTRY.values()):
        fn(info)


def register_attention(
    name: str | None = None,
    *,
    kind: str = "custom",
    paper: str = "",
    arxiv: str | None = None,
    aliases: Iterable[str] = (),
    override: bool = False,
    _builtin: bool = False,
):
    """Class decorator adding an attention module to the registry.

    The class must be an ``nn.Module`` whose constructor takes ``channels`` as its first
    argument and whose forward maps (N, C, H, W) to the same shape. Registered modules can
    be created by name, named in ultralytics and classic YOLO model YAMLs, inserted into
    existing models and compared by the ablation runner.

    Example::

        @register_attention("eca", kind="channel", paper="ECA-Net", arxiv="1910.03151")
        class ECA(nn.Module):
            def __init__(self, channels: int, k_size: int = 3): ...
    """
    if kind not in KINDS:
        raise ValueError(f"register_attention: argument 'kind' must be one of {KINDS}, got {kind!r}")

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_attention: expected an nn.Module subclass, got {cls!r}")
        params = [p for p in inspect.signature(cls.__init__).parameters.values()][1:]
        if not params or params[0].name != "channels":
            raise TypeError(
                f"register_attention: {cls.__name__}.__init__ must take 'channels' as its first argument "
                f"(got {[p.name for p in params[:1]] or 'no arguments'})"
            )
        canonical = _normalise(name or cls.__name__)
        if not canonical:
            raise ValueError(f"register_attention: invalid name {name!r}")
        keys = {canonical, _normalise(cls.__name__), *(_normalise(a) for a in aliases)}
        if not override:
            clashes = sorted(k for k in keys if k in _LOOKUP and _REGISTRY[_LOOKUP[k]].cls is not cls)
            if clashes:
                raise ValueError(
                    f"register_attention: name(s) {clashes} already belong to "
                    f"{[_REGISTRY[_LOOKUP[k]].cls.__name__ for k in clashes]}; pass override=True to replace"
                )
        else:
            for k in keys:  # drop stale aliases of a replaced entry
                old = _LOOKUP.get(k)
                if old is not None and old != canonical:
                    _REGISTRY.pop(old, None)
        info = AttentionInfo(
            name=canonical,
            cls=cls,
            kind=kind,
            paper=paper,
            arxiv=arxiv,
            aliases=tuple(sorted(keys - {canonical})),
            builtin=_builtin,
        )
        _REGISTRY[canonical] = info
        for k in keys:
            _LOOKUP[k] = canonical
        for fn in _LISTENERS:
            fn(info)
        return cls

    return decorator


def get_attention_info(name: str | type) -> AttentionInfo:
    """Look up a module by name, alias (case-, dash- and underscore-insensitive) or class."""
    if isinstance(name, type):
        for info in _REGISTRY.values():
            if info.cls is name:
                return info
        raise KeyError(f"{name.__name__} is not a registered attention module; decorate it with @register_attention")
    if not isinstance(name, str):
        raise TypeError(f"attention name must be a string, got {type(name).__name__}")
    key = _normalise(name)
    if key not in _LOOKUP:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(key, list(_LOOKUP), n=3, cutoff=0.6)
        hint = f" Did you mean {sorted({_LOOKUP[c] for c in close})}?" if close else ""
        raise KeyError(f"unknown attention module {name!r}; registered: {known}.{hint}")
    return _REGISTRY[_LOOKUP[key]]


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build a registered attention module by name: ``create_attention("bam", 256, rd_ratio=1/8)``."""
    info = get_attention_info(name)
    try:
        sig = inspect.signature(info.cls.__init__)
        sig.bind(None, channels, **kwargs)
    except TypeError as e:
        allowed = [p for p in sig.parameters if p not in ("self", "channels")]
        raise TypeError(f"{info.cls.__name__}: {e}; accepted keyword arguments: {allowed}") from None
    return info.cls(channels, **kwargs)


def list_attention() -> list[AttentionInfo]:
    """All registered modules, sorted by name, with paper, arXiv id and kind."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
