"""Classic YOLO repositories adapter (YOLOv5, YOLOv7, YOLOv9 and the ``yolov5`` PyPI package).

These repositories build models with ``models/yolo.py``'s ``parse_model(d, ch)``, which resolves
a YAML module name with ``eval`` in that module's namespace and calls a module it does not know
with the row's arguments verbatim (its output channels are taken to be its input's). With the
mechanism of :mod:`.adapter` (shared with the ultralytics adapter):

* :func:`register_classic` binds every registered attention module (now and later) into a
  ``models.yolo`` module's namespace under its YAML name (the class name), never overwriting a
  name the repository defines. Input channels come from ``parse_model``'s ``ch``/``f``, exactly
  as for ultralytics, so one YAML row fits every width.
* :func:`run_script` / ``python -m yolo_attention.classic train.py --cfg ...`` runs a repository
  script unchanged, with the import hook registering right after ``models.yolo`` (or
  ``yolov5.models.yolo``) is imported.
* :func:`install_import_hook` is the same hook for ``yolov5.models.yolo`` only, cheap enough to
  install at ``import yolo_attention`` (it imports nothing).

Classic YAMLs with attention are written by :func:`yolo_attention.integrations.yaml_gen.make_yaml`
(``format="classic"``). Checkpoints pickle our real classes (``yolo_attention.modules.*``), so
loading them (``detect.py``, ``val.py``, ``torch.load``) needs yolo_attention installed but no
registration.
"""

from __future__ import annotations

import importlib
import os
import pickle
import runpy
import sys
import traceback
import types
from pathlib import Path

from .adapter import DetectorAdapter

__all__ = [
    "ADAPTER",
    "BUILDER",
    "CLASSIC_MODULES",
    "TRUST_ENV",
    "ClassicAdapter",
    "register_classic",
    "is_classic_registered",
    "install_import_hook",
    "run_script",
    "main",
    # classic YAML helpers, kept here for code written against yolo-attention 0.1
    "load_classic_yaml",
    "dump_classic_yaml",
    "make_classic_yaml",
]

BUILDER = "classic parse_model"
# module names of a classic repository's model builder: the repos' own, and the PyPI package's
CLASSIC_MODULES = ("models.yolo", "yolov5.models.yolo")


class ClassicAdapter(DetectorAdapter):
    builder = BUILDER
    module_names = CLASSIC_MODULES


ADAPTER = ClassicAdapter()


def register_classic(module: types.ModuleType | str) -> types.ModuleType:
    """Make every registered attention module (now and later) a YAML name of a classic ``models.yolo``.

    ``module`` is the module object or its import name (``"models.yolo"``, ``"yolov5.models.yolo"``).
    Idempotent. Returns the module.
    """
    if isinstance(module, str):
        module = importlib.import_module(module)
    if not isinstance(module, types.ModuleType):
        raise TypeError(f"register_classic: expected a module or its import name, got {type(module).__name__}")
    return ADAPTER.install(module)


def is_classic_registered(module: types.ModuleType | str) -> bool:
    return ADAPTER.installed_in(module)


def install_import_hook(names=("yolov5.models.yolo",)) -> None:
    """Register into the given classic builder modules as soon as they are imported (or now, if they are).

    Imports nothing. With the default it covers the ``yolov5`` PyPI package; :func:`run_script`
    adds the repositories' own ``models.yolo``. Safe to call repeatedly.
    """
    ADAPTER.watch(names)


# --------------------------------------------------------------------------------------------- runner

TRUST_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch >= 2.6: full unpickling in torch.load

_USAGE = f"""\
usage: python -m yolo_attention.classic [--trust-checkpoints] SCRIPT [ARGS...]
       python -m yolo_attention.classic [--trust-checkpoints] -m MODULE [ARGS...]

Run a classic YOLO repository script (YOLOv5/YOLOv7/YOLOv9 train.py, val.py, detect.py, ...)
with yolo_attention's modules available as model-YAML names, e.g.

  python -m yolo_attention.classic train.py --cfg models/yolov5s-se-neck.yaml --data coco128.yaml --weights ''

--trust-checkpoints  let the script's own torch.load unpickle checkpoints fully ({TRUST_ENV}=1).
                     YOLOv7 and YOLOv9 save whole pickled models and load them with torch.load's
                     default, which torch >= 2.6 restricts to weights (weights_only=True), so their
                     train.py fails when it reloads its own checkpoint. Full unpickling can run
                     arbitrary code from the file: use it only with checkpoints you made or trust.
"""

_WEIGHTS_ONLY_HINT = (
    "yolo_attention.classic: this repository loads a checkpoint with torch.load, which torch >= 2.6 limits to "
    "weights (weights_only=True) while YOLOv7/YOLOv9 checkpoints are whole pickled models. If you trust the "
    "checkpoint (e.g. you trained it), re-run with `python -m yolo_attention.classic --trust-checkpoints ...`: "
    f"it sets {TRUST_ENV}=1 for this run. Unpickling an untrusted file can run arbitrary code."
)


def run_script(script: str | os.PathLike, args=(), module: bool = False, trust_checkpoints: bool = False) -> dict:
    """Run a classic repository script as ``__main__`` with attention modules registered.

    ``sys.argv`` is ``[script, *args]`` (``runpy`` makes ``argv[0]`` the script's absolute path while it
    runs) and the script's directory leads ``sys.path``, as with ``python script ...``. With
    ``module=True``, ``script`` is a module name run like ``python -m``. ``trust_checkpoints`` sets
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (see the usage text for the security trade-off).
    Returns the script's globals.
    """
    install_import_hook(CLASSIC_MODULES)
    if trust_checkpoints:
        os.environ[TRUST_ENV] = "1"
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


def _is_weights_only_failure(err: BaseException) -> bool:
    return isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).lower().replace(" ", "_")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    trust = bool(argv) and argv[0] == "--trust-checkpoints"
    if trust:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    as_module = argv[0] == "-m"
    if as_module and len(argv) < 2:
        print(_USAGE, file=sys.stderr)
        return 2
    script, args = (argv[1], argv[2:]) if as_module else (argv[0], argv[1:])
    try:
        run_script(script, args, module=as_module, trust_checkpoints=trust)
    except FileNotFoundError as e:
        if as_module or Path(script).is_file():
            raise
        print(f"yolo_attention.classic: error: {e}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as e:
        if trust or not _is_weights_only_failure(e):
            raise
        traceback.print_exc()
        print(f"\n{_WEIGHTS_ONLY_HINT}", file=sys.stderr)  # after the traceback, where it is read
        return 1
    return 0


# ----------------------------------------------------------------- classic YAMLs (moved to yaml_gen)


def load_classic_yaml(model):
    """See :func:`yolo_attention.integrations.yaml_gen.load_classic_yaml`."""
    from .yaml_gen import load_classic_yaml as load

    return load(model)


def dump_classic_yaml(d: dict, path, header: str = "") -> Path:
    """Write model dict ``d`` in the classic repositories' layout (see ``yaml_gen.dump_model_yaml``)."""
    from .yaml_gen import dump_model_yaml

    return dump_model_yaml(d, path, header, classic=True)


def make_classic_yaml(model, attn: str, at="neck", out=None, kwargs=None, gated: bool = False, args=()) -> Path:
    """``make_yaml(..., format="classic")``: see :func:`yolo_attention.integrations.yaml_gen.make_yaml`."""
    from .yaml_gen import make_yaml

    return make_yaml(model, attn, at, out=out, args=args, kwargs=kwargs, gated=gated, format="classic")
