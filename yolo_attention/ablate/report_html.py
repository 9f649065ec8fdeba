"""``report.html``: the ablation in one self-contained file (the table, the plot, the pictures and the
notes, images embedded), and the links to the pictures in ``results.md``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from .pictures import Drawn, Pictures
from .report import Row, base_sentence, base_summary, report_notes, report_title, table_cells
from .results import CostReport, RunResult
from .sweep import Sweep

__all__ = ["HTML_IMAGES", "append_pictures_markdown", "write_html"]

HTML_IMAGES = 8  # images per variant whose pictures report.html embeds (all are linked from results.md)


def _kind(d: Drawn, picture) -> str:
    """'detections' (both models' detections and CAMs), 'channels' (set-level) or 'attention' (per image)."""
    from ..explain.run import CHANNEL_GROUP

    if picture.group == CHANNEL_GROUP:
        return "channels"
    return "detections" if Path(picture.path).relative_to(d.folder).parts[0] == "detections" else "attention"


def _link(text: str, path: Path, out: Path) -> str:
    return f"[{text}]({quote(Path(path).relative_to(out).as_posix(), safe='/@')})"


def _variant_line(d: Drawn, beside: str | None, out: Path) -> str:
    if not d.pictures:
        return f"- **{d.label}**: no pictures: {d.why_not}"
    beside = f" next to {beside}" if beside and not d.variant.is_baseline else ""
    parts = [_link("its report", d.report, out)] if d.report else []
    for kind, what in (("detections", "detections and CAMs"), ("attention", "attention")):
        links = [_link(Path(p.path).stem, p.path, out) for p in d.pictures if _kind(d, p) == kind]
        if links:
            parts.append(f"{what}: {' '.join(links)}")
    parts += [_link("channel weights", p.path, out) for p in d.pictures if _kind(d, p) == "channels"]
    return f"- **{d.label}**{beside}: {' · '.join(parts)}"


def append_pictures_markdown(out: Path, pics: Pictures) -> None:
    """Add the 'Pictures' section, with a link to every picture, to ``out/results.md``."""
    names = ", ".join(p.stem for p in pics.images)
    lines = ["", "## Pictures", ""]
    if any(d.pictures for d in pics.variants):
        beside = " next to the baseline's" if pics.beside else ""
        lines += [(f"Detections and class activation maps of {len(pics.images)} validation image(s) ({names}) by "
                   f"each variant's final weights{beside}, and what the attention modules computed on them "
                   "(docs/explain.md). All of them in [report.html](report.html)."), ""]
    lines += [_variant_line(d, pics.beside, out) for d in pics.variants]
    lines += [f"- {n}" for n in pics.notes] + [""]
    with open(out / "results.md", "a") as f:
        f.write("\n".join(lines))


def _html_pictures(pics: Pictures) -> list:
    """Every variant's pictures as one group, those of the first HTML_IMAGES images (and the set-level ones)."""
    keep = {p.stem for p in pics.images[:HTML_IMAGES]}
    out = []
    for d in pics.variants:
        group = d.label if d.variant.is_baseline or not pics.beside else f"{d.label} next to {pics.beside}"
        out += [replace(p, group=group) for p in d.pictures if _kind(d, p) == "channels" or Path(p.path).stem in keep]
    return out


def _html_notes(sweep: Sweep, costs: CostReport | None, pics: Pictures | None) -> list[str]:
    notes = [n.removeprefix("- ") for n in report_notes(sweep, costs)]  # the one-seed caveat is among them
    if pics is None:
        return notes
    if pics.variants:
        notes.append(f"Pictures: {len(pics.images)} validation image(s) and one seed's weights per variant; they "
                     "show what the detectors and modules computed, they are no evidence that a variant is better.")
    if len(pics.images) > HTML_IMAGES:
        notes.append(f"This page shows the pictures of the first {HTML_IMAGES} of {len(pics.images)} images; "
                     "results.md links all of them.")
    notes += pics.notes + [f"{d.label}: no pictures: {d.why_not}" for d in pics.variants if not d.pictures]
    return notes + list(dict.fromkeys(n for d in pics.variants for n in d.notes))  # "none: ..." once


def write_html(out: Path, sweep: Sweep, rows: list[Row], results: dict[str, RunResult], costs: CostReport | None,
               pics: Pictures | None) -> Path:
    """Write ``out/report.html``: the results table, ``results.png``, the pictures by variant, the notes."""
    from ..explain import Picture, Table, write_report_html

    head, body = table_cells(rows, sweep.train.batch)
    intro = " ".join(s for s in (report_title(sweep) + ".", base_sentence(sweep, base_summary(sweep, results))) if s)
    plots = [Picture(out / "results.png", "mAP50-95 against GFLOPs and against batch-1 latency (left, middle); "
                                          "validation mAP50-95 per epoch, the learning curves (right)")]
    title = f"Ablation: {Path(sweep.model).name} + attention at {', '.join(sweep.places)}"
    return write_report_html(out / "report.html", title, intro=intro, tables=[Table(head, body)], plots=plots,
                             pictures=_html_pictures(pics) if pics else [], notes=_html_notes(sweep, costs, pics))
