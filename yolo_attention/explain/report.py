"""A self-contained HTML report: tables, plots and pictures, images embedded as data URIs.

The file opens in any browser without a server and without the files next to it. Used by
``yolo-attention explain`` (``report.html``) and meant for ``ablate``'s report as well.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["Picture", "Table", "write_report_html"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif", ".webp": "image/webp"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.55em; text-align: left; } th { background: #eee; }
figure { display: inline-block; margin: 0.4em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #444; max-width: 60em; }
ul.notes { font-size: 0.85em; color: #633; }
"""


@dataclass(frozen=True)
class Table:
    head: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""


@dataclass(frozen=True)
class Picture:
    """A PNG (or JPEG, SVG) written to disk, with what it shows; ``group`` sections the report."""

    path: Path
    title: str
    group: str = ""
    caption: str = ""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(path: Path) -> str | None:
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _table_html(t: Table) -> str:
    cap = f"<caption>{_esc(t.caption)}</caption>" if t.caption else ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in t.head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(p: Picture, missing: list[str]) -> str:
    uri = _data_uri(Path(p.path))
    if uri is None:
        missing.append(str(p.path))
        return f"<figure><figcaption>{_esc(p.title)}: picture missing ({_esc(p.path)})</figcaption></figure>"
    cap = _esc(p.title) + (f"<br>{_esc(p.caption)}" if p.caption else "")
    return f'<figure><img src="{uri}" alt="{_esc(p.title)}"><figcaption>{cap}</figcaption></figure>'


def _groups(pictures: Sequence[Picture]) -> dict[str, list[Picture]]:
    groups: dict[str, list[Picture]] = {}
    for p in pictures:
        groups.setdefault(p.group, []).append(p)
    return groups


def write_report_html(path: str | Path, title: str, *, intro: str = "", tables: Sequence[Table] = (),
                      plots: Sequence[Picture] = (), pictures: Sequence[Picture] = (),
                      notes: Sequence[str] = ()) -> Path:
    """Write ``path``: the title, an intro paragraph, tables, plots, then pictures by group, then notes.

    Every image is embedded (base64), so the file stands alone. A picture whose file is missing
    is listed in the page instead of breaking it. Returns the path.
    """
    missing: list[str] = []
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"]
    if intro:
        parts.append(f"<p>{_esc(intro)}</p>")
    parts += [_table_html(t) for t in tables]
    if plots:
        parts.append("<section><h2>Plots</h2>" + "".join(_figure_html(p, missing) for p in plots) + "</section>")
    for group, pics in _groups(pictures).items():
        heading = f"<h2>{_esc(group)}</h2>" if group else ""
        parts.append(f"<section>{heading}{''.join(_figure_html(p, missing) for p in pics)}</section>")
    notes = list(notes) + [f"picture missing: {m}" for m in missing]
    if notes:
        parts.append("<section><h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{_esc(n)}</li>" for n in notes)
                     + "</ul></section>")
    parts.append("</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
