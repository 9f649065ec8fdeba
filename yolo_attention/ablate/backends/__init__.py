"""Where the runs of a sweep run: ``local`` (one after the other, here) or ``ray`` (tasks on a Ray cluster).

Both start the same worker process per run (``yolo_attention.ablate.worker``) and follow the
same resume and failure semantics (``sweep.execute``); see ``sweep.Backend`` for the interface.
"""

from .local import LocalBackend

__all__ = ["LocalBackend"]
