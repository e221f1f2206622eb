"""One static HTML page for a sweep: tables, paired comparison, curves, plots and contact sheets.

``report.html`` sits in the sweep folder and links every figure by a relative path (``plots/...``,
``curves/...``, ``sheets/...``), so it opens from disk in any browser, without a server, and stays valid when the
folder is copied or archived as a whole.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from rewardsds.eval.aggregate import PAIRED_COLUMNS, format_cell
from rewardsds.eval.stats import Bootstrap
from rewardsds.utils.io import write_text

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td.key, th.key { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; image-rendering: pixelated; }
.note { color: #555; font-size: 0.9em; }
"""


def _rel(path: Path, folder: Path) -> str:
    return Path(path).resolve().relative_to(folder.resolve()).as_posix()


def _table(head: Sequence[str], body: Sequence[Sequence[str]], n_keys: int, table_id: str) -> str:
    cls = lambda i: ' class="key"' if i < n_keys else ""  # noqa: E731
    out = [f'<table id="{table_id}"><thead><tr>']
    out += [f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in body:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{html.escape(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def summary_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str], digits: int) -> str:
    head = [*(group_by or ["runs of"]), "runs", *metrics]
    body = []
    for r in rows:
        keys = [("(unset)" if r[k] is None else str(r[k])) for k in group_by] or ["all"]
        body.append([*keys, str(r["runs"]), *(format_cell(r[f"{m}/mean"], r[f"{m}/std"], digits,
                                                           (r[f"{m}/ci_low"], r[f"{m}/ci_high"])) for m in metrics)])
    return _table(head, body, max(1, len(group_by)), "summary")


def paired_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str], digits: int) -> str:
    head = [*(group_by or ["variant"]), "vs baseline", "metric", "pairs", "win rate", "mean difference"]
    body = []
    for r in rows:
        keys = [("(unset)" if r[k] is None else str(r[k])) for k in group_by] or ["all"]
        body.append([*keys, r["baseline"], r["metric"], str(r["pairs"]),
                     format_cell(r["win_rate"], None, digits, (r["win_ci_low"], r["win_ci_high"])),
                     format_cell(r["diff_mean"], None, digits, (r["diff_ci_low"], r["diff_ci_high"]))])
    return _table(head, body, max(1, len(group_by)) + 2, "paired")


def _figure(src: str, caption: str) -> str:
    return (f'<figure><a href="{html.escape(src)}"><img src="{html.escape(src)}" alt="{html.escape(caption)}"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(folder: Path, *, summary: dict[str, Any], curves: Sequence[dict[str, Any]], sheets: Sequence[Any],
                 over: Sequence[str], boot: Bootstrap, digits: int, n_runs: int, skipped: int,
                 evaluated: Sequence[str] = (), files: Sequence[Path] = (), title: Optional[str] = None) -> Path:
    """Write ``folder/report.html`` from what :mod:`rewardsds.eval.cli` produced.

    Args:
        folder: the sweep folder (every linked file lies below it).
        summary: the result of :func:`rewardsds.eval.aggregate.summarize`.
        curves: the result of :func:`rewardsds.eval.curves.write_curves`.
        sheets: the :class:`rewardsds.eval.sheets.Sheet` list.
        over: keys averaged over.
        boot: the bootstrap used for the intervals (described on the page).
        digits: decimals of the tables.
        n_runs, skipped: runs aggregated and runs left out.
        evaluated: evaluator names scored in this call.
        files: data files to link (``summary.csv``, ``eval.csv``, ...).
        title: page title (default: the folder name).

    Returns:
        the path of ``report.html``.
    """
    folder = Path(folder)
    title = title or f"rewardsds results: {folder.name}"
    keys = summary["group_by"]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts.append(f'<p class="note">{n_runs} runs aggregated ({skipped} left out) from <code>{html.escape(str(folder))}'
                 f"</code>; rows: {html.escape(', '.join(keys) or 'all runs')}; averaged over "
                 f"{html.escape(', '.join(over) or 'nothing')}; intervals: {html.escape(boot.describe())}"
                 + (f"; evaluators scored now: {html.escape(', '.join(evaluated))}" if evaluated else "")
                 + f". Written {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>")
    if files:
        links = " · ".join(f'<a href="{html.escape(_rel(p, folder))}">{html.escape(_rel(p, folder))}</a>' for p in files)
        parts.append(f"<p>Data: {links}</p>")
    parts.append("<h2>Summary</h2>")
    parts.append(summary_table(summary["rows"], keys, summary["metrics"], digits))
    if summary.get("paired") or summary.get("paired_notes"):
        spec = ", ".join(f"{k}={v}" for k, v in (summary.get("baseline") or {}).items())
        parts.append(f"<h2>Paired comparison against {html.escape(spec)}</h2>")
        if summary.get("paired"):
            parts.append(f'<p class="note">Pairs share prompt and seed; a win is a higher value (ties count half). '
                         f"Columns: {html.escape(', '.join(PAIRED_COLUMNS))} in paired.csv.</p>")
            parts.append(paired_table(summary["paired"], keys, digits))
        else:
            parts.append('<p class="note">No row could be paired with a baseline.</p>')
        if summary.get("paired_notes"):
            parts.append('<ul class="note">' + "".join(f"<li>{html.escape(n)}</li>" for n in summary["paired_notes"])
                         + "</ul>")
    if curves:
        parts.append("<h2>Curves</h2>")
        parts += [_figure(_rel(c["png"], folder), f"{c['key']} vs step") for c in curves]
    if summary.get("plots"):
        parts.append("<h2>Plots</h2>")
        parts += [_figure(_rel(p, folder), p.stem) for p in summary["plots"]]
    if sheets:
        parts.append("<h2>Contact sheets</h2>")
        parts += [f"<h3>{html.escape(s.prompt)}</h3>" + _figure(_rel(s.path, folder), f"{s.prompt}: "
                  f"{len(s.rows)} variants x {len(s.cols)} seeds") for s in sheets]
    parts.append("</body></html>\n")
    path = folder / "report.html"
    write_text(path, "\n".join(parts))
    return path
