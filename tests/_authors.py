"""Load a module's reference implementation from the authors' own repository, or skip.

Equality with the authors' code is checked where they published it, but their code is
never part of this project (and CI has no GitHub access). A test that compares against
it calls :func:`authors_module`, which skips cleanly unless the environment variable
``YOLO_ATTENTION_AUTHORS_CODE`` names a directory holding a work tree of the repository
as ``<owner>+<name>/`` (e.g. ``$YOLO_ATTENTION_AUTHORS_CODE/moskomule+senet.pytorch``).
docs/authors-parity.md lists the repositories, the commits checked and the results.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

ENV = "YOLO_ATTENTION_AUTHORS_CODE"


def authors_root(repo: str) -> Path:
    """The work tree of ``owner/name`` under ``$YOLO_ATTENTION_AUTHORS_CODE``, or skip the test."""
    base = os.environ.get(ENV)
    if not base:
        pytest.skip(f"authors' code not available: set {ENV} to a directory holding {repo.replace('/', '+')}/")
    root = Path(base) / repo.replace("/", "+")
    if not root.is_dir():
        pytest.skip(f"authors' code not available: {root} does not exist")
    return root


def authors_module(repo: str, path: str, extra_sys_path: tuple[str, ...] = ()) -> ModuleType:
    """Import ``path`` (relative to the repository root) of ``owner/name`` as a fresh module, or skip.

    ``extra_sys_path`` adds repository sub-directories to ``sys.path`` while the file is executed
    (for files that import their siblings).
    """
    root = authors_root(repo)
    file = root / path
    if not file.is_file():
        pytest.skip(f"authors' code not available: {file} does not exist")
    added = [str(root / p) for p in extra_sys_path]
    sys.path[:0] = added
    try:
        name = f"_authors_{uuid.uuid4().hex}"
        # an explicit source loader also reads files without a .py suffix (EMA's authors publish one)
        spec = importlib.util.spec_from_file_location(name, file, loader=importlib.machinery.SourceFileLoader(name, str(file)))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for p in added:
            sys.path.remove(p)
    return module
