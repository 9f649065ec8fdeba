"""``yolo-attention explain``: detections, class activation maps, and what the attention modules computed.

``explain_models(models, images, out)`` writes the pictures and ``report.html``;
``write_report_html`` is the self-contained HTML writer (tables, plots, pictures). See docs/explain.md.
"""

from .report import Picture, Table, write_report_html
from .run import ExplainOptions, Explanation, explain_models
from .sources import ExplainError

__all__ = ["explain_models", "ExplainOptions", "Explanation", "ExplainError", "Picture", "Table", "write_report_html",
           "main"]


def main(argv: list[str] | None = None) -> int:
    from .cli import main as _main

    return _main(argv)
