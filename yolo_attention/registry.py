"""Registry of attention modules: registration is data, not another ``elif``.

Every integration (ultralytics YAMLs, existing models, the classic YOLOv5/v7
repositories, the ablation runner) reads this registry, so a module registered with
:func:`register_attention` is available everywhere at once.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch.nn as nn

__all__ = [
    "AttentionInfo",
    "AttentionTap",
    "TAP_KINDS",
    "TAP_LAYOUTS",
    "KINDS",
    "register_attention",
    "create_attention",
    "list_attention",
    "get_attention_info",
    "add_registry_listener",
    "unregister_attention",
]

KINDS = ("channel", "spatial", "hybrid", "global-context", "sparse-attention", "custom")

# What a tapped tensor is (see AttentionTap); `yolo-attention explain` draws each kind its own way.
TAP_KINDS = (
    "channel",  # (N, C, 1, 1) weights per channel
    "spatial",  # (N, K, H or 1, W or 1): K maps over the image (one, per group, per channel), averaged for display
    "maps",  # (N, K, H, W) or (N, K, H*W): K attention distributions over positions (e.g. A2's descriptors)
    "routing",  # (N, R, k) integer indices of the regions each query region attends to (BRA)
    "tokens",  # (N, heads, Q, L) or (N, Q, L): attention weights of queries over keys
)

# How a tap's tensor is laid out where its kind alone does not say (AttentionTap.layout); the kind it applies to.
TAP_LAYOUTS = {
    "branch-major": "channel",  # (N, M*C, 1, 1): M blocks of C, the weight of branch m for each channel
    "grid": "spatial",  # (N, K, s, t): s x t cells that cover the module's input as adaptive pooling lays them out
}


@dataclass(frozen=True)
class AttentionTap:
    """Where a module's attention tensor can be read: the output of one of its submodules.

    ``module`` is the dotted path of the submodule (as in ``named_modules``; ``""`` is the
    module itself) whose forward output is the tensor; a forward hook reads it, so nothing is
    recomputed. ``kind`` is one of :data:`TAP_KINDS`; ``activation`` (``"sigmoid"``,
    ``"softmax"`` or None) says that the output is a logit to be mapped for display;
    ``name`` labels the picture. ``layout`` (one of :data:`TAP_LAYOUTS`, or None) says how the
    tensor is laid out where the kind alone does not: ``"branch-major"`` for a channel tap that
    holds, for each of M branches, one weight per channel (M*C values, as SK's selection), and
    ``"grid"`` for a spatial tap on a coarse grid of cells over the whole input (MLCA's 5 x 5)
    rather than on the input's own positions. Declared with ``register_attention(..., taps=[...])``.
    """

    module: str
    kind: str
    name: str = ""
    activation: str | None = None
    layout: str | None = None

    def __post_init__(self):
        if not isinstance(self.module, str):
            raise TypeError(f"AttentionTap: argument 'module' must be a dotted submodule path, got {self.module!r}")
        if self.kind not in TAP_KINDS:
            raise ValueError(f"AttentionTap: argument 'kind' must be one of {TAP_KINDS}, got {self.kind!r}")
        if self.activation not in (None, "sigmoid", "softmax"):
            raise ValueError(
                f"AttentionTap: argument 'activation' must be None, 'sigmoid' or 'softmax', got {self.activation!r}"
            )
        if self.layout is not None and TAP_LAYOUTS.get(self.layout) != self.kind:
            allowed = [k for k, v in TAP_LAYOUTS.items() if v == self.kind]
            raise ValueError(
                f"AttentionTap: argument 'layout' for a {self.kind!r} tap must be None"
                f"{''.join(f' or {a!r}' for a in allowed)}, got {self.layout!r}"
            )


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
    taps: tuple[AttentionTap, ...] = ()  # where its attention tensors are read (for pictures)

    @property
    def citation(self) -> str:
        """"<paper>, arXiv:<id>", or the title alone for a paper without an arXiv version."""
        return ", ".join(part for part in (self.paper, f"arXiv:{self.arxiv}" if self.arxiv else "") if part)

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
            "taps": [asdict(t) for t in self.taps],
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
    taps: Iterable[AttentionTap] = (),
    override: bool = False,
    _builtin: bool = False,
):
    """Class decorator adding an attention module to the registry.

    The class must be an ``nn.Module`` whose constructor takes ``channels`` as its first
    argument and whose forward maps (N, C, H, W) to the same shape. Registered modules can
    be created by name, named in ultralytics and classic YOLO model YAMLs, inserted into
    existing models and compared by the ablation runner.

    ``taps`` declares where the module's attention tensors can be read (:class:`AttentionTap`),
    so that ``yolo-attention explain`` can draw them; a module without taps is "not visualised".

    Example::

        @register_attention("eca", kind="channel", paper="ECA-Net", arxiv="1910.03151",
                            taps=[AttentionTap("gate", "channel")])
        class ECA(nn.Module):
            def __init__(self, channels: int, k_size: int = 3): ...
    """
    if isinstance(name, type):  # used bare, as ``@register_attention`` without parentheses
        return register_attention(
            None, kind=kind, paper=paper, arxiv=arxiv, aliases=aliases, taps=taps, override=override,
            _builtin=_builtin,
        )(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"register_attention: argument 'name' must be a string or None, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"register_attention: argument 'kind' must be one of {KINDS}, got {kind!r}")
    if isinstance(aliases, str):  # a single alias, not its characters
        aliases = (aliases,)
    aliases = tuple(aliases)
    bad = [a for a in aliases if not isinstance(a, str) or not _normalise(a)]
    if bad:
        raise ValueError(f"register_attention: argument 'aliases' must be non-empty names, got {bad!r}")
    taps = (taps,) if isinstance(taps, AttentionTap) else tuple(taps)
    bad = [t for t in taps if not isinstance(t, AttentionTap)]
    if bad:
        raise TypeError(f"register_attention: argument 'taps' must hold AttentionTap objects, got {bad!r}")

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_attention: expected an nn.Module subclass, got {cls!r}")
        params = [p for p in inspect.signature(cls.__init__).parameters.values()][1:]
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if not params or params[0].name != "channels" or params[0].kind not in positional:
            got = f"{params[0].name!r} ({params[0].kind.description})" if params else "no arguments"
            raise TypeError(
                f"register_attention: {cls.__name__}.__init__ must take 'channels' as its first positional "
                f"argument, got {got}"
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
        # Replace every entry that one of the new keys points to, with all its aliases, so that no
        # alias is left pointing at a removed entry (or silently at the new class).
        for old in {_LOOKUP[k] for k in keys if k in _LOOKUP}:
            _remove(old)
        info = AttentionInfo(
            name=canonical,
            cls=cls,
            kind=kind,
            paper=paper,
            arxiv=arxiv,
            aliases=tuple(sorted(keys - {canonical})),
            builtin=_builtin,
            taps=taps,
        )
        _REGISTRY[canonical] = info
        for k in keys:
            _LOOKUP[k] = canonical
        for fn in _LISTENERS:
            fn(info)
        return cls

    return decorator


def _remove(canonical: str) -> AttentionInfo | None:
    info = _REGISTRY.pop(canonical, None)
    for k in [k for k, v in _LOOKUP.items() if v == canonical]:
        del _LOOKUP[k]
    return info


def unregister_attention(name: str | type) -> AttentionInfo:
    """Remove a module (by name, alias or class) from the registry and return its entry.

    Meant for tests and interactive sessions that redefine a module. Integrations that already
    received the module through a listener (e.g. names injected into ultralytics) keep their copy.
    """
    info = get_attention_info(name)
    _remove(info.name)
    return info


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
