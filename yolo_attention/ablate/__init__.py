"""``yolo-attention ablate``: train attention variants side by side and report accuracy and cost.

Parts:

* ``spec.py``: typed specs (variants, data, stages, runs, the cost measurement);
  ``results.py``: typed results;
* ``build.py``: building a variant's detector, and checking all variants before training;
* ``sweep.py``: a sweep's settings, its planned runs (an optional base stage per seed, then
  every variant), the ``--out`` folder and the loop that resumes and hands runs to a backend;
* ``worker.py``: the process of one run (training, per-epoch mAP, per-image matches);
* ``backends/local.py`` (one run after the other) and ``backends/ray.py`` (Ray tasks);
* ``matches.py`` + ``stats.py``: mAP from per-image matches, paired bootstrap over validation
  images combined with seed-to-seed variation: Δ with a 95% interval and a verdict;
* ``costs.py``: every variant's cost in one process, interleaved and repeated;
* ``report.py`` + ``plot.py``: table, CSV, Markdown, JSON and plot; ``pictures.py`` (``--explain``): each
  variant's detections, CAMs and attention next to the baseline's; ``report_html.py``: ``report.html``
  (everything in one file) and the pictures' links in ``results.md``; ``cli.py``: the command.

Before any training every variant's model is built once and run on a dummy image, so a bad
argument stops the command with exit code 2 and a message saying what to change.
"""

from .cli import DEFAULTS, Defaults, main
from .common import UsageError
from .spec import BASELINE, Variant, parse_variants

__all__ = ["main", "DEFAULTS", "Defaults", "UsageError", "BASELINE", "Variant", "parse_variants"]
