"""The one place that touches a detector code base's internals.

YOLO model builders (ultralytics' ``parse_model`` and the classic repositories' copy of it)
resolve a YAML module name in their module's namespace, then call it with the row's
arguments. Everything yolo-attention needs from them lives here, shared by the ultralytics
and the classic adapters:

* :func:`builder_call` reads the calling builder's bookkeeping (its ``ch`` list and the row's
  ``f``) from its frame — read only, never written;
* :func:`make_factory` is the one factory generator: the class bound under a YAML name, whose
  construction returns the real module, built by a callback from the row's arguments;
* :func:`bind_names` binds factories in a builder's namespace, never over the code base's own
  names;
* :data:`IMPORT_HOOK` is the one import hook: it runs callbacks right after a watched module
  (``ultralytics.nn.tasks``, ``models.yolo``) is executed, so ``import yolo_attention`` stays
  cheap and imports no detector;
* :func:`add_safe_globals` lets restricted checkpoint loaders unpickle our classes;
* :class:`DetectorAdapter` ties these together per code base.

The rest of the package (registry, modules, YAML transforms, insertion, ablation) never reads
a frame.
"""

from __future__ import annotations

import importlib.abc
import math
import os
import re
import sys
import threading
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

__all__ = [
    "BuilderInternalsChanged",
    "BuilderCall",
    "builder_call",
    "make_factory",
    "bind_names",
    "ImportHook",
    "IMPORT_HOOK",
    "add_safe_globals",
    "DetectorAdapter",
    "UNTESTED_ENV",
]

BUILDER_FUNCTION = "parse_model"
UNTESTED_ENV = "YOLO_ATTENTION_UNTESTED_DETECTOR"  # "1": build with detector versions outside the tested range


class BuilderInternalsChanged(RuntimeError):
    """The detector's model builder no longer exposes what yolo-attention relies on."""


@dataclass(frozen=True)
class BuilderCall:
    """What a model builder knows about the row it is building (read from its locals)."""

    builder: str  # e.g. "ultralytics parse_model"
    source: str  # file of the builder function
    input_channels: int | None  # ch[f] for a single-input row, None for several inputs
    from_: int | list  # the row's 'from'
    repeats: int | None  # the row's 'n' after depth scaling, when the builder keeps it
    width: float  # width multiple (1.0 when the builder has none)
    max_channels: float  # channel cap (inf when the builder has none)

    def scaled(self, c: int) -> int:
        """A YAML channel count as the builder scales its own layers (width, cap, multiple of 8)."""
        return int(math.ceil(min(c, self.max_channels) * self.width / 8) * 8)


def _builder_frame(max_depth: int = 12):
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return None
        if frame.f_code.co_name == BUILDER_FUNCTION:
            return frame
        frame = frame.f_back
    return None


def builder_call(builder: str, who: str) -> BuilderCall | None:
    """The innermost model builder on the stack, as a :class:`BuilderCall`; None outside a builder.

    ``who`` (the module being built) names the error if the builder's locals changed.
    """
    frame = _builder_frame()
    if frame is None:
        return None
    loc = frame.f_locals  # a snapshot: reading only
    ch, f = loc.get("ch"), loc.get("f")
    if not isinstance(ch, list) or f is None:
        raise BuilderInternalsChanged(
            f"{who}: cannot infer input channels: {builder} in {frame.f_code.co_filename} no longer has the locals "
            "'ch' (list of layer output channels) and 'f' (the row's 'from'); this version of the detector is not "
            "supported by yolo_attention, please report it"
        )
    n = loc.get("n")
    return BuilderCall(
        builder=builder,
        source=frame.f_code.co_filename,
        input_channels=ch[f] if isinstance(f, int) else None,
        from_=f,
        repeats=n if isinstance(n, int) else None,
        width=loc.get("width", loc.get("gw", 1.0)) or 1.0,
        max_channels=loc.get("max_channels", float("inf")),
    )


# ------------------------------------------------------------------------------------ factories


class _SizedLike(type(nn.Module)):
    """Metaclass of factories that a builder must size as one of its own classes.

    ``parse_model`` decides how to size a row by testing ``m in {Conv, C2f, ...}`` (hash, then
    equality). A factory whose class compares and hashes equal to the builder's ``Conv`` is
    therefore sized as a Conv row: ``c1`` from the builder's bookkeeping, ``c2 = args[0]``
    scaled by the width multiple, and ``c2`` recorded for the rows that read it. That is how
    channel-changing blocks (YOLOv7's) tell the builder their output width without touching
    its frame. Only the factory class is affected; the modules it builds are ordinary.
    """

    def __eq__(cls, other):
        return cls is other or other is cls.__dict__.get("_sized_like")

    def __hash__(cls):
        target = cls.__dict__.get("_sized_like")
        return hash(target) if target is not None else id(cls) >> 4


def make_factory(
    yaml_name: str,
    real_cls: type,
    build: Callable[[tuple, BuilderCall | None], nn.Module],
    builder: str,
    sized_like: type | None = None,
    **attrs,
) -> type:
    """The class bound under ``yaml_name`` in a builder's namespace.

    It is an ``nn.Module`` subclass (restricted loaders accept only those) whose construction
    returns ``build(args, call)``, with ``call`` the :class:`BuilderCall` of the builder that is
    constructing it (None when constructed directly). Its ``__module__``/``__qualname__`` are
    ``real_cls``'s, so model summaries print the real class path. With ``sized_like``, the builder
    sizes its rows as rows of that class (see :class:`_SizedLike`).
    """

    def __new__(cls, *args, **kwargs):
        if kwargs:  # keywords of a YAML row arrive as a trailing mapping
            args = (*args, kwargs)
        return build(args, builder_call(builder, yaml_name))

    namespace = {
        "__new__": __new__,
        "__module__": real_cls.__module__,
        "__qualname__": real_cls.__qualname__,
        "__doc__": f"YAML factory for {real_cls.__qualname__}; instances are {real_cls.__qualname__}.",
        "_yaml_factory_of": real_cls,
        "_sized_like": sized_like,
        **attrs,
    }
    meta = _SizedLike if sized_like is not None else type(nn.Module)
    return meta(yaml_name, (nn.Module,), namespace)


def is_factory(obj) -> bool:
    return isinstance(obj, type) and "_yaml_factory_of" in obj.__dict__


def bind_names(namespace: types.ModuleType, factories: dict[str, type]) -> list[str]:
    """Bind ``factories`` (YAML name -> factory) in a builder's module namespace; return the names bound.

    A name the code base already uses for its own object is never overwritten (a warning says
    ours is unavailable under it there); our own earlier factories are replaced.
    """
    bound = []
    for name, factory in factories.items():
        existing = namespace.__dict__.get(name)
        if existing is not None and not is_factory(existing):
            warnings.warn(
                f"yolo_attention: {namespace.__name__} already defines {name!r}; our "
                f"{factory._yaml_factory_of.__qualname__} is not available under that YAML name there (its own "
                f"{name} is used; rename the class to use ours)",
                stacklevel=3,
            )
            continue
        namespace.__dict__[name] = factory
        bound.append(name)
    return bound


def add_safe_globals(classes: Iterable[type]) -> None:
    """Allow restricted loaders (``torch.load(weights_only=True)``, ``ULTRALYTICS_SAFE_LOAD=1``) to build these."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(list(classes))


# ---------------------------------------------------------------------------------- import hook


class ImportHook(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a watched module is executed (each time a fresh copy is).

    The hook finds the module's spec with the remaining finders and wraps its loader's
    ``exec_module``; it never changes what is imported.
    """

    def __init__(self):
        self._callbacks: dict[str, list[Callable[[types.ModuleType], None]]] = {}
        self._lock = threading.Lock()

    def watch(self, name: str, callback: Callable[[types.ModuleType], None]) -> None:
        """Call ``callback(module)`` after ``name`` is imported, and now if it already is."""
        with self._lock:
            callbacks = self._callbacks.setdefault(name, [])
            if callback not in callbacks:
                callbacks.append(callback)
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)
        module = sys.modules.get(name)
        if module is not None:
            callback(module)

    def watched(self, name: str) -> bool:
        return name in self._callbacks

    def find_spec(self, fullname, path, target=None):
        callbacks = self._callbacks.get(fullname)
        if not callbacks:
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            for callback in list(callbacks):
                callback(module)

        spec.loader.exec_module = exec_module
        return spec


IMPORT_HOOK = ImportHook()


# ---------------------------------------------------------------------------------- the adapter


class DetectorAdapter:
    """One detector code base: its builder, the modules holding it, its YAML names and set-up.

    :meth:`install` binds a factory for every registered attention module (now and, through a
    registry listener, later) plus :meth:`extra_factories` into a builder module, and runs
    :meth:`setup` once per module. :meth:`watch` installs when the module is imported.
    Subclasses set ``builder`` and ``module_names`` and may override :meth:`check_call`
    (e.g. a version check), :meth:`extra_factories` and :meth:`setup`.
    """

    builder: str = "parse_model"
    module_names: tuple[str, ...] = ()
    _MARK = "_yolo_attention_adapter"

    def __init__(self):
        self._lock = threading.Lock()
        self._factories: dict[type, type] = {}  # attention class -> its factory for this builder

    # -- what subclasses customise
    def check_call(self, call: BuilderCall) -> None:
        """Called for every row built by this builder; raise :class:`BuilderInternalsChanged` to refuse."""

    def extra_factories(self, module: types.ModuleType) -> dict[str, type]:
        return {}

    def setup(self, module: types.ModuleType) -> None:
        """One-time set-up after the names are first bound into ``module``."""

    # -- the mechanism
    def attention_factory(self, info) -> type:
        """The factory a YAML name resolves to for registered module ``info`` (one per class)."""
        from .yaml_args import build_from_row

        factory = self._factories.get(info.cls)
        if factory is None or factory._attention_info is not info:

            def build(args, call, info=info):
                if call is not None:
                    self.check_call(call)
                return build_from_row(info, args, call)

            factory = make_factory(info.yaml_name, info.cls, build, self.builder, _attention_info=info)
            self._factories[info.cls] = factory
        return factory

    def check_module(self, module: types.ModuleType) -> None:
        if not callable(module.__dict__.get(BUILDER_FUNCTION)):
            raise BuilderInternalsChanged(
                f"yolo_attention: {module.__name__} ({getattr(module, '__file__', '?')}) has no {BUILDER_FUNCTION}; "
                f"it is not a {self.builder} module this version of yolo_attention supports"
            )

    def install(self, module: types.ModuleType) -> types.ModuleType:
        """Bind our YAML names into ``module``; idempotent. Returns the module."""
        from ..modules.gated import GatedAttention
        from ..registry import add_registry_listener

        self.check_module(module)
        with self._lock:
            if module.__dict__.get(self._MARK) is self:
                return module
            module.__dict__[self._MARK] = self
        add_safe_globals([GatedAttention])

        def bind(info):
            if bind_names(module, {info.yaml_name: self.attention_factory(info)}):
                add_safe_globals([info.cls, *_helper_classes(info.cls)])

        add_registry_listener(bind)  # every module registered now and later
        bind_names(module, self.extra_factories(module))
        self.setup(module)
        return module

    def installed_in(self, module: types.ModuleType | str | None) -> bool:
        if isinstance(module, str):
            module = sys.modules.get(module)
        return module is not None and module.__dict__.get(self._MARK) is self

    def watch(self, names: Iterable[str] | None = None) -> None:
        """Install into each of ``names`` (default: :attr:`module_names`) now or when it is imported."""
        for name in (names,) if isinstance(names, str) else names if names is not None else self.module_names:
            IMPORT_HOOK.watch(name, self._after_import)

    def _after_import(self, module: types.ModuleType) -> None:
        if not callable(module.__dict__.get(BUILDER_FUNCTION)):
            return  # a module of that name that is no model builder: leave it alone
        try:
            self.install(module)
        except Exception as e:  # never break the detector's own import
            warnings.warn(f"yolo_attention: could not register attention modules in {module.__name__}: {e}", stacklevel=2)


def _helper_classes(cls: type) -> list[type]:
    """nn.Module classes of ``cls``'s package (its building blocks: norms, routers, MLPs), for safe globals."""
    package = cls.__module__.rpartition(".")[0] or cls.__module__
    return [
        v
        for name, module in list(sys.modules.items())
        if module is not None and (name == package or name.startswith(package + "."))
        for v in list(vars(module).values())
        if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == name
    ]


def untested_allowed() -> bool:
    return os.environ.get(UNTESTED_ENV, "") not in ("", "0")


def version_tuple(version: str) -> tuple[int, ...]:
    """(8, 4, 190) from "8.4.190" (a pre-release or local tag after the numbers is ignored)."""
    m = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()
