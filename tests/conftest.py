"""Test-wide settings. Tests never touch the network and never write outside temp dirs."""

import os
import tempfile

# ultralytics reads these at import time: no DNS probe, settings file in a private temp dir.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-attention-cfg-"))
os.environ.setdefault("YOLO_VERBOSE", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
