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

# Under pytest-xdist (the README runs ``-n 2``) the workers share the cores: each gets its share of
# threads, so that two workers on two cores do not run four threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
