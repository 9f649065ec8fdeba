"""yolo-attention: trustworthy attention modules for YOLO detectors.

``import yolo_attention`` registers every module and, when ultralytics or a classic YOLO
repository is imported (before or after), makes them available to its model YAMLs.

The flat API::

    from yolo_attention import create_attention, list_attention, register_attention   # modules
    from yolo_attention import add_attention, make_yaml, model_cost                     # ultralytics models
    from yolo_attention import register_classic, run_script                             # classic repositories
    from yolo_attention import generate_synthetic, model_cfg                            # data, shipped configs

Names below the first line are imported on first use, so ``import yolo_attention`` imports
no detector framework.
"""

from importlib import import_module as _import_module

from . import modules as _modules
from .modules import *  # noqa: F401,F403  (every attention class: modules/__init__.py keeps the list)
from .registry import (
    AttentionInfo,
    AttentionTap,
    create_attention,
    get_attention_info,
    list_attention,
    register_attention,
)

__version__ = "0.1.0"

from .integrations.classic import install_import_hook as _hook_classic  # noqa: E402
from .integrations.ultralytics import register as _register_ultralytics  # noqa: E402

_register_ultralytics()
_hook_classic()  # the `yolov5` package's models.yolo, when (and if) it is imported

# flat name -> module that defines it (imported on first access)
_LAZY = {
    "add_attention": ".integrations.insert",
    "make_yaml": ".integrations.yaml_gen",
    "insert_attention": ".integrations.yaml_gen",
    "model_cost": ".integrations.cost",
    "register_classic": ".integrations.classic",
    "run_script": ".integrations.classic",
    "generate_synthetic": ".data.synthetic",
    "model_cfg": ".cfg",
    "count_flops": ".flops",
    "GatedAttention": ".modules.gated",
    "BuilderInternalsChanged": ".integrations.adapter",
    "MissingExtra": ".extras",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'yolo_attention' has no attribute {name!r}")
    value = getattr(_import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    *_modules.__all__,
    "AttentionInfo",
    "AttentionTap",
    "create_attention",
    "get_attention_info",
    "list_attention",
    "register_attention",
    *_LAZY,
]
