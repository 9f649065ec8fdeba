"""Build a registered module from a model-YAML row: the row grammar shared by every integration.

YOLO model builders (ultralytics' and the classic repositories' ``parse_model``) call a
module they do not know with the row's arguments verbatim and take its output channels to
be those of the layer feeding it. Rows therefore carry only hyper-parameters; the input
channel count comes from the builder's own bookkeeping, which the adapter reads
(:class:`~yolo_attention.integrations.adapter.BuilderCall`). Row grammar::

    [-1, 1, SE, []]                          all defaults
    [-1, 1, SE, [0.25]]                      hyper-parameters in signature order after channels
    [-1, 1, SE, [1024, 0.25]]                a leading int is an explicit channel count, in the
                                             YAML's own (unscaled) units; it must match the input
    [-1, 1, BiLevelRoutingAttention, [{num_heads: 4, topk: 2}]]   keywords as a trailing mapping
    [-1, 1, BAM, [{gated: true}]]            start as the identity (identity_start)
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch.nn as nn

from ..modules.gated import identity_start
from ..registry import AttentionInfo

if TYPE_CHECKING:
    from .adapter import BuilderCall

__all__ = ["build_from_row"]

RESERVED = ("channels", "gated")


def build_from_row(info: AttentionInfo, args: tuple, call: BuilderCall | None) -> nn.Module:
    """The module for a YAML row's ``args``; input channels from ``call`` (None: not inside a builder)."""
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

    if call is None:  # called directly, not from a model builder
        if explicit is None:
            raise TypeError(f"{name}: missing argument 'channels' (no YOLO model builder to infer it from)")
        c_in = explicit
    else:
        if call.input_channels is None:
            raise ValueError(
                f"{name}: takes a single input, but its YAML row has from={call.from_!r}; use one layer index"
            )
        c_in = call.input_channels
        if explicit is not None and explicit != c_in and call.scaled(explicit) != c_in:
            raise ValueError(
                f"{name}: the YAML row gives channels={explicit}, but the layer feeding it (from={call.from_}) "
                f"outputs {c_in} channels at this scale; drop the explicit value (input channels are inferred) or "
                "correct it"
            )

    sig = inspect.signature(cls.__init__)
    try:
        sig.bind(None, c_in, *args, **kwargs)
    except TypeError as e:
        params = [p for p in sig.parameters if p not in ("self", "channels")]
        raise TypeError(f"{name}: bad YAML arguments {args + ([kwargs] if kwargs else [])}: {e}; accepts {params}") from None
    module = cls(c_in, *args, **kwargs)
    return identity_start(module, c_in) if gated else module


def __getattr__(name: str):
    if name == "BuilderInternalsChanged":  # its home before the adapter existed
        from .adapter import BuilderInternalsChanged

        return BuilderInternalsChanged
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
