"""ultralytics adapter: registered modules become YAML layer names, no source edits.

``import yolo_attention`` is the whole set-up. What happens, and why it is the least we can do
(the mechanism is :mod:`.adapter`'s, shared with the classic repositories):

* ultralytics resolves a YAML module name in the globals of ``ultralytics.nn.tasks``. For
  each registered module we add one name there (the class name, e.g. ``BAM``); names
  ultralytics itself defines are never overwritten. The name is bound to a factory class
  whose instances are the real module; input channels come from parse_model's bookkeeping,
  so one row fits every scale. Checkpoints therefore pickle our real classes.
* YOLOv7's channel-changing blocks (``ELAN``, ``MPDown``, ``SPPCSPC``, ``RepConv7``) are sized
  by parse_model as it sizes its own ``Conv`` rows (output channels ``args[0]``, scaled by the
  width multiple); see :class:`.adapter._SizedLike`.
* When ultralytics is not imported yet, the import hook adds the names right after
  ``ultralytics.nn.tasks`` is first imported: ``import yolo_attention`` stays cheap.
* Our classes are added to torch's safe globals, so ``ULTRALYTICS_SAFE_LOAD=1`` loads
  checkpoints that contain them; a default trainer callback makes multi-GPU child processes
  import us (see :meth:`UltralyticsAdapter.setup`).
* Tested with the ultralytics versions in :data:`TESTED_VERSIONS`; building with another one
  raises :class:`~.adapter.BuilderInternalsChanged` unless ``YOLO_ATTENTION_UNTESTED_DETECTOR=1``.
"""

from __future__ import annotations

import sys
import types

from ..registry import AttentionInfo
from .adapter import (
    UNTESTED_ENV,
    BuilderCall,
    BuilderInternalsChanged,
    DetectorAdapter,
    add_safe_globals,
    make_factory,
    untested_allowed,
    version_tuple,
)

__all__ = [
    "ADAPTER",
    "TASKS_MODULE",
    "TESTED_VERSIONS",
    "UltralyticsAdapter",
    "register",
    "is_registered",
    "ensure_registered",
    "yaml_entry",
    "yolo_main",
]

TASKS_MODULE = "ultralytics.nn.tasks"
# [lowest, first untested): the releases whose parse_model this adapter is tested against
TESTED_VERSIONS = ((8, 4, 0), (8, 5))


def _yolov7_blocks() -> dict[str, tuple[type, tuple[str, ...]]]:
    """YAML name -> (class, constructor arguments after c2 that are channel counts)."""
    from ..blocks.yolov7 import ELAN, SPPCSPC, MPDown, RepConv

    return {
        "ELAN": (ELAN, ("c_", "c3")),
        "MPDown": (MPDown, ()),
        "SPPCSPC": (SPPCSPC, ()),
        "RepConv7": (RepConv, ()),  # 'RepConv' is ultralytics' own (RT-DETR) class
    }


class UltralyticsAdapter(DetectorAdapter):
    builder = "ultralytics parse_model"
    module_names = (TASKS_MODULE,)

    def __init__(self):
        super().__init__()
        self._version_checked: str | None = None

    def check_call(self, call: BuilderCall) -> None:
        version = getattr(sys.modules.get("ultralytics"), "__version__", "0")
        if version == self._version_checked:
            return
        low, high = TESTED_VERSIONS
        if not low <= version_tuple(version) < high and not untested_allowed():
            raise BuilderInternalsChanged(
                f"yolo_attention is tested with ultralytics >={'.'.join(map(str, low))},<{'.'.join(map(str, high))}, "
                f"not {version}: install a tested version (pip install 'yolo-attention[ultralytics]'), or set "
                f"{UNTESTED_ENV}=1 to build anyway (channel inference relies on parse_model's internals)"
            )
        self._version_checked = version

    def extra_factories(self, module: types.ModuleType) -> dict[str, type]:
        conv = module.__dict__.get("Conv")
        if conv is None:
            raise BuilderInternalsChanged(f"{TASKS_MODULE} has no Conv; this ultralytics version is not supported")
        return {
            name: make_factory(name, cls, self._block_builder(name, cls, channel_args), self.builder, sized_like=conv,
                               _block_class=cls)
            for name, (cls, channel_args) in _yolov7_blocks().items()
        }  # fmt: skip

    def _block_builder(self, name: str, cls: type, channel_args: tuple[str, ...]):
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "c1", "c2")]

        def build(args: tuple, call: BuilderCall | None):
            if call is None:  # called directly: the ordinary (c1, c2, ...) constructor
                return cls(*args)
            self.check_call(call)
            if call.input_channels is None:
                raise ValueError(f"{name}: takes a single input, but its YAML row has from={call.from_!r}")
            if not args or args[0] != call.input_channels:
                raise BuilderInternalsChanged(
                    f"{name}: {self.builder} did not size this row as a Conv row (got arguments {list(args)}, input "
                    f"channels {call.input_channels}); this ultralytics version is not supported"
                )
            if call.repeats is not None and call.repeats > 1:
                raise ValueError(f"{name}: changes the channel count, so it cannot be repeated (n must be 1)")
            c1, c2, *rest = args
            if rest and isinstance(rest[-1], dict):
                raise ValueError(f"{name}: takes positional YAML arguments [c2, {', '.join(params)}]")
            bound = dict(zip(params, rest))
            for key in channel_args:  # parse_model scaled c2; inner widths scale the same way
                if isinstance(bound.get(key), int) and not isinstance(bound.get(key), bool):
                    bound[key] = call.scaled(bound[key])
            return cls(c1, c2, **bound)

        return build

    def setup(self, module: types.ModuleType) -> None:
        from ..blocks.yolov7 import ELAN, SPPCSPC, ConvBNAct, MPDown, RepConv

        add_safe_globals([ELAN, SPPCSPC, ConvBNAct, MPDown, RepConv])
        _add_default_callback()


ADAPTER = UltralyticsAdapter()


def yaml_entry(info: AttentionInfo) -> type:
    """The factory class that an ultralytics YAML name resolves to for ``info``'s module."""
    return ADAPTER.attention_factory(info)


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


def register() -> None:
    """Make every registered module (now and later) available to ultralytics YAMLs.

    Called by ``import yolo_attention``. Imports nothing from ultralytics: if it is not imported
    yet, registration happens when it is.
    """
    ADAPTER.watch()


def is_registered() -> bool:
    return ADAPTER.installed_in(TASKS_MODULE)


def yolo_main(argv: list[str]) -> int:
    """``yolo-attention yolo ...``: ultralytics' own ``yolo`` entry point with our modules registered."""
    from ..extras import require

    require("ultralytics", "yolo-attention yolo")
    register()
    # ultralytics reads its arguments from the sys.argv list object it captured at import
    sys.argv[:] = ["yolo", *argv]
    from ultralytics.cfg import entrypoint

    entrypoint()
    return 0
