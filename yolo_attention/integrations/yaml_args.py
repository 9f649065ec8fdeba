"""Build a registered module from a model-YAML row, inferring its input channels.

YOLO model builders (ultralytics' and the classic repositories' ``parse_model``) call a
module they do not know with the row's arguments verbatim and take its output channels to
be those of the layer feeding it. Rows therefore carry only hyper-parameters; the input
channel count is read from the builder's own bookkeeping (its ``ch`` list and the row's
``f``) in the calling frame. Row grammar, shared by every integration::

    [-1, 1, SE, []]                          all defaults
    [-1, 1, SE, [0.25]]                      hyper-parameters in signature order after channels
    [-1, 1, SE, [1024, 0.25]]                a leading int is an explicit channel count, in the
                                             YAML's own (unscaled) units; it must match the input
    [-1, 1, BiLevelRoutingAttention, [{num_heads: 4, topk: 2}]]   keywords as a trailing mapping
    [-1, 1, BAM, [{gated: true}]]            wrap in GatedAttention (starts as the identity)
"""

from __future__ import annotations

import inspect
import math
import sys

import torch.nn as nn

from ..modules.gated import GatedAttention
from ..registry import AttentionInfo

__all__ = ["build_from_row", "make_yaml_entry", "bind_yaml_entry", "find_builder_frame", "BuilderInternalsChanged"]

RESERVED = ("channels", "gated")


class BuilderInternalsChanged(RuntimeError):
    """The detector's parse_model no longer exposes what channel inference relies on."""


def find_builder_frame(max_depth: int = 12):
    """The innermost ``parse_model`` frame on the stack, or None when not called from one."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        frame = frame.f_back
        if frame is None:
            return None
        if frame.f_code.co_name == "parse_model":
            return frame
    return None


def _scaled(c: int, frame_locals: dict) -> int:
    """A YAML channel count as the builder scales it (width multiple, max_channels, divisible by 8)."""
    width = frame_locals.get("width", frame_locals.get("gw", 1.0)) or 1.0
    max_ch = frame_locals.get("max_channels", float("inf"))
    v = min(c, max_ch) * width
    return int(math.ceil(v / 8) * 8)


def build_from_row(info: AttentionInfo, args: tuple, builder: str = "parse_model") -> nn.Module:
    cls = info.cls
    name = cls.__name__
    args = list(args)
    kwargs = {}
    if args and isinstance(args[-1], dict):
        kwargs = dict(args.pop())
    explicit = kwargs.pop("channels", None)
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        if explicit is not None:
            raise ValueError(f"{name}: channels given twice in the YAML row ({args[0]} and {{channels: {explicit}}})")
        explicit = args.pop(0)
    gated = kwargs.pop("gated", False)

    frame = find_builder_frame()
    if frame is None:  # called directly, not from a model builder
        if explicit is None:
            raise TypeError(f"{name}: missing argument 'channels' (no YOLO model builder to infer it from)")
        c_in = explicit
    else:
        loc = frame.f_locals
        ch, f = loc.get("ch"), loc.get("f")
        if not isinstance(ch, list) or f is None:
            raise BuilderInternalsChanged(
                f"{name}: cannot infer input channels: {builder} in {frame.f_code.co_filename} no longer has the "
                "locals 'ch' (list of layer output channels) and 'f' (the row's 'from'); this version of the detector "
                "is not supported by yolo_attention, please report it"
            )
        if not isinstance(f, int):
            raise ValueError(f"{name}: takes a single input, but its YAML row has from={f!r}; use one layer index")
        c_in = ch[f]
        if explicit is not None and explicit != c_in and _scaled(explicit, loc) != c_in:
            raise ValueError(
                f"{name}: the YAML row gives channels={explicit}, but the layer feeding it (from={f}) outputs "
                f"{c_in} channels at this scale; drop the explicit value (input channels are inferred) or correct it"
            )

    sig = inspect.signature(cls.__init__)
    try:
        sig.bind(None, c_in, *args, **kwargs)
    except TypeError as e:
        params = [p for p in sig.parameters if p not in ("self", "channels")]
        raise TypeError(f"{name}: bad YAML arguments {args + ([kwargs] if kwargs else [])}: {e}; accepts {params}") from None
    module = cls(c_in, *args, **kwargs)
    return GatedAttention(module, c_in) if gated else module


_ENTRIES: dict[tuple[str, str], type] = {}  # (builder, yaml name) -> factory class


def make_yaml_entry(info: AttentionInfo, builder: str) -> type:
    """A class to bind under ``info.yaml_name`` in a model builder's namespace.

    It is an ``nn.Module`` subclass (restricted loaders accept only those) whose construction
    returns the real module built by :func:`build_from_row`; its ``__module__``/``__qualname__``
    are the real class's, so model summaries print the real class path.
    """
    key = (builder, info.yaml_name)
    entry = _ENTRIES.get(key)
    if entry is not None and entry._attention_info.cls is info.cls:
        return entry

    def __new__(cls, *args, **kwargs):
        if kwargs:
            args = (*args, kwargs)
        return build_from_row(cls._attention_info, args, builder=builder)

    entry = type(
        info.yaml_name,
        (nn.Module,),
        {
            "__new__": __new__,
            "__module__": info.cls.__module__,
            "__qualname__": info.cls.__qualname__,
            "__doc__": f"YAML factory for {info.cls.__qualname__}; instances are {info.cls.__qualname__}.",
            "_attention_info": info,
        },
    )
    _ENTRIES[key] = entry
    return entry


def bind_yaml_entry(namespace, info: AttentionInfo, builder: str) -> bool:
    """Bind ``info``'s YAML name in a builder's module namespace, unless the builder defines that name.

    A name the detector code base already uses for its own class is never overwritten (a warning
    says ours is unavailable under it there). Returns whether the name now resolves to our module.
    """
    name = info.yaml_name
    existing = namespace.__dict__.get(name)
    if existing is not None and getattr(existing, "_attention_info", None) is None:
        import warnings

        warnings.warn(
            f"yolo_attention: {namespace.__name__} already defines {name!r}; our {info.cls.__qualname__} is not "
            f"available under that YAML name there (its own {name} is used; rename the class to use ours)",
            stacklevel=3,
        )
        return False
    namespace.__dict__[name] = make_yaml_entry(info, builder=builder)
    return True
