"""``python -m yolo_attention.classic SCRIPT [ARGS...]``: run a classic YOLO repository script
(YOLOv5/YOLOv7/YOLOv9 ``train.py``, ``val.py``, ...) with yolo_attention's modules available as
model-YAML names. See :mod:`yolo_attention.integrations.classic`.
"""

from __future__ import annotations

import sys

from .integrations.classic import main, register_classic, run_script

__all__ = ["main", "register_classic", "run_script"]

if __name__ == "__main__":
    sys.exit(main())
