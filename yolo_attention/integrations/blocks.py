"""Channel-changing building blocks (YOLOv7's) as ultralytics YAML layers.

ultralytics' parse_model gives a module it does not know ``c2 = ch[f]``: right for attention
(channels kept), wrong for a block that changes the channel count, since later rows read
their input channels from that bookkeeping. For these blocks the factory therefore also
writes the real output channel count into parse_model's ``c2`` local before parse_model
appends it. That is a frame write (``PyFrame_LocalsToFast`` up to Python 3.12, the
write-through ``frame.f_locals`` of PEP 667 from 3.13), confined to these few blocks, checked
after writing, and failing with a clear message if parse_model's locals change.

Row grammar: ``[-1, 1, ELAN, [c2, c_, c3, n, every, act]]`` — input channels inferred, channel
counts in the YAML's own units (scaled by ``width_multiple``/``max_channels`` as ultralytics
scales its own layers).
"""

from __future__ import annotations

import ctypes
import inspect
import sys

import torch
import torch.nn as nn

from ..blocks.yolov7 import ELAN, SPPCSPC, ConvBNAct, MPDown, RepConv
from .yaml_args import BuilderInternalsChanged, _scaled, find_builder_frame

__all__ = ["BLOCKS", "install_blocks", "set_builder_local"]

# YAML name -> (class, names of constructor arguments that are channel counts besides c2)
BLOCKS: dict[str, tuple[type, tuple[str, ...]]] = {
    "ELAN": (ELAN, ("c_", "c3")),
    "MPDown": (MPDown, ()),
    "SPPCSPC": (SPPCSPC, ()),
    "RepConv7": (RepConv, ()),  # 'RepConv' is ultralytics' own (RT-DETR) class
}


def set_builder_local(frame, name: str, value) -> None:
    """Assign ``value`` to local ``name`` of a suspended builder frame, and check it took."""
    if sys.version_info >= (3, 13):
        frame.f_locals[name] = value
    else:
        locals_dict = frame.f_locals  # a fresh snapshot of the fast locals
        locals_dict[name] = value
        ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
    if frame.f_locals.get(name) != value:
        raise BuilderInternalsChanged(f"could not set parse_model's local {name!r}; this Python/ultralytics is not supported")


def _entry(yaml_name: str, cls: type, channel_args: tuple[str, ...]) -> type:
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "c1")]

    def __new__(entry_cls, *args, **kwargs):
        frame = find_builder_frame()
        if frame is None:  # called directly: the ordinary (c1, c2, ...) constructor
            return cls(*args, **kwargs)
        loc = frame.f_locals
        ch, f = loc.get("ch"), loc.get("f")
        if not isinstance(ch, list) or "c2" not in loc:
            raise BuilderInternalsChanged(
                f"{yaml_name}: ultralytics' parse_model no longer has the locals 'ch' and 'c2'; not supported"
            )
        if not isinstance(f, int):
            raise ValueError(f"{yaml_name}: takes a single input, but its YAML row has from={f!r}")
        if isinstance(loc.get("n"), int) and loc["n"] > 1:
            raise ValueError(f"{yaml_name}: changes the channel count, so it cannot be repeated (n must be 1)")
        if not args or isinstance(args[0], bool) or not isinstance(args[0], int):
            raise ValueError(f"{yaml_name}: the first YAML argument must be the output channel count, got {list(args)}")
        bound = dict(zip(params, args))
        bound.update(kwargs)
        for key in ("c2", *channel_args):
            if isinstance(bound.get(key), int) and not isinstance(bound.get(key), bool):
                bound[key] = _scaled(bound[key], loc)
        module = cls(ch[f], **bound)
        set_builder_local(frame, "c2", bound["c2"])
        return module

    return type(
        yaml_name,
        (nn.Module,),
        {"__new__": __new__, "__module__": cls.__module__, "__qualname__": cls.__qualname__, "_block_class": cls},
    )


def install_blocks(tasks) -> None:
    """Bind the blocks' YAML names in ``ultralytics.nn.tasks`` (never overwriting ultralytics' own)."""
    for name, (cls, channel_args) in BLOCKS.items():
        if name in tasks.__dict__ and getattr(tasks.__dict__[name], "_block_class", None) is None:
            continue
        tasks.__dict__[name] = _entry(name, cls, channel_args)
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([ELAN, SPPCSPC, ConvBNAct, MPDown, RepConv])
