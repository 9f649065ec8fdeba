"""ultralytics integration: registered modules become YAML layer names, no source edits.

``import yolo_attention`` is the whole set-up. What happens, and why it is the least we can do:

* ultralytics resolves a YAML module name in the globals of ``ultralytics.nn.tasks``. For
  each registered module we add one name there (the class name, e.g. ``BAM``); names
  ultralytics itself defines are never overwritten. The name is bound to a small factory
  class whose instances are the real module (see :mod:`.yaml_args` for channel inference),
  so checkpoints pickle our real classes from an importable module.
* When ultralytics is not imported yet, a one-shot import hook adds the names right after
  ``ultralytics.nn.tasks`` is first imported: ``import yolo_attention`` stays cheap.
* Our classes are added to torch's safe globals so ``ULTRALYTICS_SAFE_LOAD=1`` loads
  checkpoints that contain them.
* Checkpoints and DDP hand-offs unpickle ``yolo_attention.modules.*``; importing any of
  them imports this package, which registers itself: a fresh process needs no import first.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading

import torch
import torch.nn as nn

from ..registry import AttentionInfo, add_registry_listener
from .yaml_args import bind_yaml_entry, make_yaml_entry

__all__ = ["register", "is_registered", "ensure_registered", "yaml_entry", "yolo_main", "TASKS_MODULE"]

TASKS_MODULE = "ultralytics.nn.tasks"
_LOCK = threading.Lock()
_installed_into: set[int] = set()


def yaml_entry(info: AttentionInfo) -> type:
    """The factory class that an ultralytics YAML name resolves to for ``info``'s module."""
    return make_yaml_entry(info, builder="ultralytics parse_model")


def _safe_globals(info: AttentionInfo | None = None) -> None:
    from ..modules import biformer, gated, helpers

    classes = [gated.GatedAttention, helpers.SafeBatchNorm2d, helpers.LayerNorm2d, biformer._ConvMlp]
    if info is not None:
        classes.append(info.cls)
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(classes)


def _install_one(tasks, info: AttentionInfo) -> None:
    if bind_yaml_entry(tasks, info, builder="ultralytics parse_model"):
        _safe_globals(info)


def _install(tasks) -> None:
    with _LOCK:
        if id(tasks) in _installed_into:
            return
        _installed_into.add(id(tasks))
    if not hasattr(tasks, "parse_model"):
        raise RuntimeError(
            f"yolo_attention: {TASKS_MODULE} has no parse_model; this ultralytics version is not supported"
        )
    _safe_globals()
    add_registry_listener(lambda info: _install_one(tasks, info))
    from .blocks import install_blocks

    install_blocks(tasks)  # YOLOv7's channel-changing blocks (ELAN, MPDown, SPPCSPC, RepConv7)
    _add_default_callback()


def ensure_registered(trainer=None) -> None:
    """A trainer callback whose only job is to exist: see :func:`_add_default_callback`."""
    register()


def _add_default_callback() -> None:
    # ultralytics' multi-GPU launcher cloudpickles the trainer's callbacks (with the model, which is only a
    # YAML path when training from a YAML) into a fresh process. A callback defined here is pickled by
    # reference, so unpickling it imports yolo_attention, which registers our YAML names before the child
    # process builds the model.
    try:
        from ultralytics.utils.callbacks.base import default_callbacks
    except ImportError:  # pragma: no cover - very old ultralytics
        return
    hooks = default_callbacks.setdefault("on_pretrain_routine_start", [])
    if ensure_registered not in hooks:
        hooks.append(ensure_registered)


class _TasksImportHook(importlib.abc.MetaPathFinder):
    """Registers our names right after ``ultralytics.nn.tasks`` is imported for the first time."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TASKS_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            _remove_hook()
            _install(module)

        spec.loader.exec_module = exec_module
        return spec


_HOOK = _TasksImportHook()


def _remove_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def register() -> None:
    """Make every registered module (now and later) available to ultralytics YAMLs.

    Called by ``import yolo_attention``. Imports nothing from ultralytics: if it is not imported
    yet, registration happens when it is.
    """
    tasks = sys.modules.get(TASKS_MODULE)
    if tasks is not None and hasattr(tasks, "parse_model"):
        _install(tasks)
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def is_registered() -> bool:
    tasks = sys.modules.get(TASKS_MODULE)
    return tasks is not None and id(tasks) in _installed_into


def yolo_main(argv: list[str]) -> int:
    """``yolo-attention yolo ...``: ultralytics' own ``yolo`` entry point with our modules registered."""
    register()
    # ultralytics reads its arguments from the sys.argv list object it captured at import
    sys.argv[:] = ["yolo", *argv]
    from ultralytics.cfg import entrypoint

    entrypoint()
    return 0
