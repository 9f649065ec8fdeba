"""Classic YOLO repositories (YOLOv5, YOLOv7, YOLOv9 and the ``yolov5`` PyPI package).

These repositories build models with ``models/yolo.py``'s ``parse_model(d, ch)``, which resolves
a YAML module name with ``eval`` in that module's namespace and calls a module it does not know
with the row's arguments verbatim (its output channels are taken to be its input's). So:

* :func:`register_classic` binds every registered attention module (now and later) into a
  ``models.yolo`` module's namespace under its YAML name (the class name), never overwriting a
  name the repository defines. The bound object is a factory whose instances are the real
  module; input channels are inferred from ``parse_model``'s ``ch``/``f`` locals exactly as in
  the ultralytics integration (see :mod:`.yaml_args`), so one YAML row fits every width.
* :func:`run_script` / ``python -m yolo_attention.classic train.py --cfg ...`` runs a repository
  script unchanged, with an import hook that registers right after ``models.yolo`` (or
  ``yolov5.models.yolo``) is imported.
* :func:`install_import_hook` is the same hook for ``yolov5.models.yolo`` only, cheap enough to
  install at ``import yolo_attention`` (it imports nothing).
* :func:`make_classic_yaml` writes a classic-style model YAML with attention inserted.

Checkpoints pickle our real classes (``yolo_attention.modules.*``), so loading them (``detect.py``,
``val.py``, ``torch.load``) needs yolo_attention installed but no registration.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import runpy
import sys
import threading
import types
import warnings
from pathlib import Path

from ..registry import AttentionInfo, add_registry_listener, get_attention_info
from .yaml_args import bind_yaml_entry
from .yaml_gen import dump_model_yaml

__all__ = [
    "BUILDER",
    "CLASSIC_MODULES",
    "register_classic",
    "is_classic_registered",
    "install_import_hook",
    "run_script",
    "load_classic_yaml",
    "dump_classic_yaml",
    "make_classic_yaml",
    "main",
]

BUILDER = "classic parse_model"
# module names of a classic repository's model builder: the repos' own, and the PyPI package's
CLASSIC_MODULES = ("models.yolo", "yolov5.models.yolo")
_MARK = "_yolo_attention_classic"  # set in a registered module's namespace
_LOCK = threading.Lock()


def _bind(module: types.ModuleType, info: AttentionInfo) -> None:
    bind_yaml_entry(module, info, builder=BUILDER)


def register_classic(module: types.ModuleType | str) -> types.ModuleType:
    """Make every registered attention module (now and later) a YAML name of a classic ``models.yolo``.

    ``module`` is the module object or its import name (``"models.yolo"``, ``"yolov5.models.yolo"``).
    Idempotent. Returns the module.
    """
    if isinstance(module, str):
        module = importlib.import_module(module)
    if not isinstance(module, types.ModuleType):
        raise TypeError(f"register_classic: expected a module or its import name, got {type(module).__name__}")
    if not callable(module.__dict__.get("parse_model")):
        raise RuntimeError(
            f"yolo_attention: {module.__name__} ({getattr(module, '__file__', '?')}) has no parse_model; it is not "
            "a classic YOLO models/yolo.py"
        )
    with _LOCK:
        if module.__dict__.get(_MARK):
            return module
        module.__dict__[_MARK] = True
    add_registry_listener(lambda info: _bind(module, info))
    return module


def is_classic_registered(module: types.ModuleType | str) -> bool:
    if isinstance(module, str):
        module = sys.modules.get(module)
    return module is not None and bool(module.__dict__.get(_MARK))


def _after_import(module: types.ModuleType) -> None:
    if not callable(module.__dict__.get("parse_model")):
        return  # a `models.yolo` that is not a classic model builder: leave it alone
    try:
        register_classic(module)
    except Exception as e:  # never break the repository's own import
        warnings.warn(f"yolo_attention: could not register attention modules in {module.__name__}: {e}", stacklevel=2)


class _ClassicImportHook(importlib.abc.MetaPathFinder):
    """Registers right after one of ``self.names`` is imported (each time a fresh module is executed)."""

    def __init__(self):
        self.names: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        spec = None
        for finder in list(sys.meta_path):  # let the normal machinery find it, then wrap its loader
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
            _after_import(module)

        spec.loader.exec_module = exec_module
        return spec


_HOOK = _ClassicImportHook()


def install_import_hook(names=("yolov5.models.yolo",)) -> None:
    """Register into the given classic builder modules as soon as they are imported (or now, if they are).

    Imports nothing. With the default it covers the ``yolov5`` PyPI package; :func:`run_script`
    adds the repositories' own ``models.yolo``. Safe to call repeatedly.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    with _LOCK:
        _HOOK.names.update(names)
        if _HOOK not in sys.meta_path:
            sys.meta_path.insert(0, _HOOK)
    for name in names:
        mod = sys.modules.get(name)
        if mod is not None:
            _after_import(mod)


# --------------------------------------------------------------------------------------------- runner

_USAGE = """\
usage: python -m yolo_attention.classic SCRIPT [ARGS...]
       python -m yolo_attention.classic -m MODULE [ARGS...]

Run a classic YOLO repository script (YOLOv5/YOLOv7/YOLOv9 train.py, val.py, detect.py, ...)
with yolo_attention's modules available as model-YAML names, e.g.

  python -m yolo_attention.classic train.py --cfg models/yolov5s-se-neck.yaml --data coco128.yaml
"""


def run_script(script: str | os.PathLike, args=(), module: bool = False) -> dict:
    """Run a classic repository script as ``__main__`` with attention modules registered.

    ``sys.argv`` is ``[script, *args]`` (``runpy`` makes ``argv[0]`` the script's absolute path while it
    runs) and the script's directory leads ``sys.path``, as with ``python script ...``. With ``module=True``, ``script`` is a module name run like ``python -m``.
    Returns the script's globals.
    """
    install_import_hook(CLASSIC_MODULES)
    if module:
        sys.argv[:] = [str(script), *map(str, args)]
        return runpy.run_module(str(script), run_name="__main__", alter_sys=True)
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f"script {str(script)!r} does not exist (run from the repository's root directory)")
    path = path.resolve()
    sys.argv[:] = [str(script), *map(str, args)]
    script_dir = str(path.parent)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = script_dir  # what `python script` would have put there
    elif script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    return runpy.run_path(str(path), run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "-m":
        if len(argv) < 2:
            print(_USAGE, file=sys.stderr)
            return 2
        run_script(argv[1], argv[2:], module=True)
        return 0
    try:
        run_script(argv[0], argv[1:])
    except FileNotFoundError as e:
        if Path(argv[0]).is_file():
            raise
        print(f"yolo_attention.classic: error: {e}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------------- YAMLs


def _package_models_dir() -> Path | None:
    spec = importlib.util.find_spec("yolov5")  # locates the package without importing it (slow)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def load_classic_yaml(model: str | os.PathLike) -> tuple[dict, str]:
    """A classic model dict from a YAML path, or a name (``yolov5s``) from the ``yolov5`` package's YAMLs."""
    import yaml

    p = Path(str(model))
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"model YAML {p} does not exist")
    else:
        root = _package_models_dir()
        hint = (
            "pass the path of your repository's model YAML (e.g. models/yolov5s.yaml in a YOLOv5 checkout, "
            "cfg/training/yolov7.yaml in YOLOv7, models/detect/yolov9-c.yaml in YOLOv9)"
        )
        if root is None:
            raise ValueError(
                f"unknown classic model {str(model)!r}: {hint}, or `pip install 'yolo-attention[classic]'` to "
                "resolve names such as yolov5s from the yolov5 package"
            )
        candidates = [root / f"{p.name}.yaml", root / "hub" / f"{p.name}.yaml", root / "segment" / f"{p.name}.yaml"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            names = sorted({c.stem for d in (root, root / "hub") if d.is_dir() for c in d.glob("*.yaml")})
            names = [n for n in names if n != "anchors"]
            raise ValueError(f"unknown classic model {str(model)!r}: {hint}; the yolov5 package has {names}")
        p = found
    with open(p, encoding="ascii", errors="ignore") as f:  # as the classic repositories read it
        d = yaml.safe_load(f)
    if not isinstance(d, dict) or not isinstance(d.get("backbone"), list) or not isinstance(d.get("head"), list):
        raise ValueError(f"{p} is not a classic model YAML (needs 'backbone' and 'head' lists of rows)")
    return d, p.stem


def dump_classic_yaml(d: dict, path: str | os.PathLike, header: str = "") -> Path:
    """Write model dict ``d`` in the classic repositories' layout (ASCII, rows in a bracketed list)."""
    return dump_model_yaml(d, path, header, classic=True)


def make_classic_yaml(
    model: str | os.PathLike,
    attn: str,
    at="neck",
    out: str | os.PathLike | None = None,
    kwargs: dict | None = None,
    gated: bool = False,
    args=(),
) -> Path:
    """Write ``<model>-<attn>-<at>.yaml`` (or ``out``): a classic model YAML with ``attn`` inserted.

    ``model`` is a classic repository's model YAML path, or a name (``yolov5s``, ``yolov5n``) from the
    installed ``yolov5`` package. ``at``: ``backbone`` (after the backbone layers the head reads),
    ``neck`` (after the layers the Detect row reads), ``sppf`` (after the last backbone layer) and/or
    original layer indices, comma-separated. Every ``from`` (the Detect row's included) is renumbered.
    """
    from .yaml_gen import insert_attention

    d, stem = load_classic_yaml(model)
    info = get_attention_info(attn)
    ins = insert_attention(d, attn, at, args, kwargs, gated)
    place = "_".join(map(str, at)) if isinstance(at, (list, tuple)) else str(at).replace(",", "_")
    out = Path(out) if out is not None else Path(f"{stem}-{info.name}-{place}.yaml")
    paper = f" ({info.citation})" if info.citation else ""
    header = (
        f"{stem} with {info.cls.__name__}{paper} inserted at {at}: new layers {ins.inserted}.\n"
        "Generated by yolo-attention. Run the repository's scripts through the runner, e.g.\n"
        f"  python -m yolo_attention.classic train.py --cfg {out.name} ..."
    )
    return dump_classic_yaml(ins.yaml, out, header)
