"""Plots (matplotlib, Agg backend) and the two renderings of a run report: HTML and Markdown.

A report is a list of `Section`s. Each holds figures (PNG bytes), tables and notes, or, when that
part of the run has not happened yet, a `missing` line shown instead ("not run yet: ..."). The HTML
page is self-contained: every figure is embedded as a base64 data URI and nothing is fetched. The
Markdown twin links the same PNGs, written to a folder beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 96
FIGSIZE = (7.5, 3.6)


@dataclass
class Figure:
    name: str  # file stem, unique within a report
    png: bytes
    caption: str = ""


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    missing: str = ""  # non-empty: this part of the run is absent; shown instead of the content
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


# --------------------------------------------------------------------------------------- plots
def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> bytes:
    """One line per named (x, y) series."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, marker="." if len(xs) < 50 else None)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    return _png(fig)


def histograms(
    groups: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    bins: int | Sequence[float] = 30,
    log_x: bool = False,
) -> bytes:
    """Overlaid histograms (step outlines) of several named samples."""
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, values in groups.items():
        if values:
            ax.hist(
                values,
                bins=bins,
                histtype="step",
                linewidth=1.6,
                label=f"{name} (n={len(values):,})",
            )
    if log_x:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def score_panels(panels: dict[str, dict[str, int]], *, title: str) -> bytes:
    """One bar chart per panel (e.g. per iteration): counts per score label, side by side."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(3.6 * len(panels), 5.0), 3.4), squeeze=False, sharey=True
    )
    for ax, (name, counts) in zip(axes[0], panels.items(), strict=True):
        labels = list(counts)
        bars = ax.bar(labels, [counts[k] for k in labels], color="#4c78a8")
        ax.bar_label(bars, fontsize="small")
        ax.margins(y=0.12)
        ax.set(title=name, xlabel="score")
    axes[0][0].set_ylabel("candidates")
    fig.suptitle(title)
    return _png(fig)


def bar_plot(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    errors: Sequence[float] | None = None,
    horizontal: bool = False,
    reference: float | None = None,
    fmt: str = "%.1f",
) -> bytes:
    """Bars with optional error bars (one standard error) and an optional reference line."""
    height = max(2.6, 0.32 * len(labels) + 1.2) if horizontal else FIGSIZE[1]
    fig, ax = plt.subplots(figsize=(FIGSIZE[0], height))
    if horizontal:
        bars = ax.barh(labels, values, xerr=errors, color="#72b7b2", capsize=4)
        ax.invert_yaxis()
        ax.set(title=title, xlabel=ylabel)
    else:
        bars = ax.bar(labels, values, yerr=errors, color="#72b7b2", capsize=6, width=0.6)
        pad = 1.0 if len(labels) < 3 else 0.5  # a lone bar does not fill the whole plot
        ax.set_xlim(-pad, len(labels) - 1 + pad)
        ax.set(title=title, ylabel=ylabel)
        if reference is not None:
            ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
    ax.bar_label(bars, fmt=fmt, fontsize="small", padding=2)
    ax.margins(**({"x": 0.12} if horizontal else {"y": 0.12}))
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    return _png(fig)


# ----------------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #4c78a8;padding-bottom:.2em}h2{margin-top:1.8em;color:#2a4d77}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:.6em 1em;border-radius:4px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;width:100%}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f0f4f8}td.text{white-space:pre-wrap;max-width:420px}
nav a{margin-right:1em}
"""


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="text">{html.escape(v)}</td>' for v in row) + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """A self-contained page: figures embedded as base64 PNG, no external resources."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    if subtitle:
        parts.append(f"<p>{html.escape(subtitle)}</p>")
    parts.append(
        "<nav>"
        + "".join(f"<a href='#{_anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections)
        + "</nav>"
    )
    for s in sections:
        parts.append(f"<h2 id='{_anchor(s.title)}'>{html.escape(s.title)}</h2>")
        if s.missing:
            parts.append(f"<p class='missing'>{html.escape(s.missing)}</p>")
            continue
        parts += [f"<p>{html.escape(n)}</p>" for n in s.notes]
        for f in s.figures:
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(f.name)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
            )
        parts += [_html_table(t) for t in s.tables]
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def render_markdown(
    title: str, sections: Sequence[Section], image_dir: str, subtitle: str = ""
) -> str:
    """The Markdown twin; figures are linked as `image_dir/<name>.png` (see `write_figures`)."""
    lines = [f"# {title}", ""]
    if subtitle:
        lines += [subtitle, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.missing:
            lines += [f"> {s.missing}", ""]
            continue
        for n in s.notes:
            lines += [n, ""]
        for f in s.figures:
            lines += [f"![{f.caption or f.name}]({image_dir}/{f.name}.png)", ""]
        for t in s.tables:
            lines.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
            lines.append("|" + "---|" * len(t.columns))
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in t.rows]
            lines.append("")
    return "\n".join(lines)


def write_figures(sections: Sequence[Section], folder: Path) -> int:
    """Write every figure as `<folder>/<name>.png`; returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in sections:
        if s.missing:
            continue
        for f in s.figures:
            (folder / f"{f.name}.png").write_bytes(f.png)
            n += 1
    return n
