"""A report folder's report.md and self-contained report.html (plots inlined) from one table: shared
by `tunelab compare` and `tunelab tune`."""

from __future__ import annotations

import base64
from pathlib import Path

from tunelab.runs.io import atomic_write_text

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
         "padding:4px 8px;text-align:right}td:first-child,th:first-child,td:last-child{text-align:left}")


def esc(s) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def write_table_report(root: Path, title: str, intro: list[str], head: list[str], rows: list[list], plots: list[Path],
                       extra_md: list[str] = ()) -> None:
    """report.md (plots as files under plots/) and report.html (the same, plots inlined as base64)."""
    md = [f"# {title}", "", *intro, "", *markdown_table(head, rows), "", *extra_md, *[f"![{p.stem}](plots/{p.name})" for p in plots]]
    atomic_write_text(root / "report.md", "\n".join(md) + "\n")
    imgs = "".join(f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></p>'
                   for p in plots)
    paragraphs = "".join(f"<p>{esc(x)}</p>" for x in [*intro, *extra_md] if x.strip())
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>tunelab: {esc(title)}</title><style>{STYLE}"
            f"</style></head><body><h1>{esc(title)}</h1>{paragraphs}<table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
            + f"</table>{imgs}</body></html>")
    atomic_write_text(root / "report.html", html)


def save_figure(fig, root: Path, name: str) -> Path:
    """root/plots/<name>.png from a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    (root / "plots").mkdir(parents=True, exist_ok=True)
    path = root / "plots" / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
