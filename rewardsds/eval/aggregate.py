"""Sweep tables from run folders on disk: group runs by the swept keys, mean +- std over seeds and prompts.

A run is a folder with ``metrics.json`` (written by every run) and, after ``rewardsds-eval --metrics ...``,
``eval_metrics.json``. Its settings are its command-line overrides (``metrics.json: overrides``); the keys
whose values differ between runs are the swept keys. Rows of the table are the combinations of the swept
keys minus the keys averaged over (``seed``, ``prompt``, ``prompt_index`` by default); each cell is the mean
and sample standard deviation of one metric over the runs of that row. Nothing here needs W&B.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

#: metrics.json keys aggregated besides the ``final/*`` and ``eval/*`` ones (cost of a run)
COST_METRICS = ("wall_time_s", "step_time_median_s", "evals_per_step_mean", "peak_memory_gb")
#: keys averaged over, not grouped by
OVER_KEYS = ("seed", "prompt", "prompt_index")
#: swept keys listed first in tables (the rest follow alphabetically)
KEY_ORDER = ("prompts", "strategy", "n_noises", "reward")


@dataclass
class Run:
    """One run folder: its settings (overrides), its metrics (numbers) and the rest of metrics.json."""

    path: Path
    info: dict[str, Any]
    settings: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> Optional[str]:
        return self.info.get("status")


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["strategy=min_max", "+x=1"]`` -> ``{"strategy": "min_max", "x": "1"}`` (later values win)."""
    out: dict[str, str] = {}
    for o in overrides or []:
        key, sep, value = str(o).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _number(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def load_run(path: Path) -> Run:
    """Read ``metrics.json`` (and ``eval_metrics.json`` if present) of the run folder ``path``."""
    info = json.loads((path / "metrics.json").read_text())
    run = Run(path=path, info=info, settings=parse_overrides(info.get("overrides") or []))
    for key, value in info.items():
        v = _number(value)
        if v is not None and (key.startswith("final/") or key in COST_METRICS):
            run.values[key] = v
    ev = path / "eval_metrics.json"
    if ev.is_file():
        for key, value in json.loads(ev.read_text()).get("metrics", {}).items():
            v = _number(value)
            if v is not None:
                run.values[f"eval/{key}"] = v
    return run


def find_runs(folder: Path) -> list[Path]:
    """Run folders (holding ``metrics.json``) below ``folder``, sorted."""
    return sorted(p.parent for p in Path(folder).rglob("metrics.json"))


def swept_keys(runs: Sequence[Run], over: Sequence[str] = OVER_KEYS) -> list[str]:
    """Override keys whose value differs between runs (a key missing in a run counts as a value), minus ``over``."""
    keys: set[str] = set()
    for r in runs:
        keys |= set(r.settings)
    varying = [k for k in keys if k not in over and len({r.settings.get(k) for r in runs}) > 1]
    return sorted(varying, key=lambda k: (KEY_ORDER.index(k) if k in KEY_ORDER else len(KEY_ORDER), k))


def metric_names(runs: Sequence[Run]) -> list[str]:
    """Metrics present in any run: ``final/*`` and ``eval/*`` (sorted), then the cost metrics."""
    present: set[str] = set()
    for r in runs:
        present |= set(r.values)
    quality = sorted(k for k in present if k.startswith(("final/", "eval/")))
    return quality + [k for k in COST_METRICS if k in present]


def _sort_value(v: Optional[str]) -> tuple:
    if v is None:
        return (0, 0.0, "")
    try:
        return (1, float(v), "")
    except ValueError:
        return (2, 0.0, v)


def aggregate(runs: Sequence[Run], group_by: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per combination of ``group_by`` values: ``runs`` and ``<metric>/mean|std|n`` per metric.

    Args:
        runs: the runs to aggregate (already filtered, e.g. to complete ones).
        group_by: override keys that define a row; a run without the key has the value None.
        metrics: metric names (``final/reward``, ``eval/clip``, ``wall_time_s``, ...).

    Returns:
        rows sorted by their key values (numbers numerically); ``std`` is the sample standard deviation
        (n - 1), None for fewer than two values; ``mean`` is None when no run has the metric.
    """
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r.settings.get(k) for k in group_by), []).append(r)
    rows = []
    for key in sorted(groups, key=lambda t: tuple(_sort_value(v) for v in t)):
        members = groups[key]
        row: dict[str, Any] = dict(zip(group_by, key))
        row["runs"] = len(members)
        for m in metrics:
            xs = [r.values[m] for r in members if m in r.values]
            row[f"{m}/n"] = len(xs)
            row[f"{m}/mean"] = statistics.fmean(xs) if xs else None
            row[f"{m}/std"] = statistics.stdev(xs) if len(xs) > 1 else None
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str]) -> None:
    """``summary.csv``: the group keys, ``runs``, then ``<metric>/mean``, ``<metric>/std``, ``<metric>/n``."""
    columns = [*group_by, "runs"] + [f"{m}/{s}" for m in metrics for s in ("mean", "std", "n")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})


def format_cell(mean: Optional[float], std: Optional[float], digits: int) -> str:
    """``mean ± std`` with ``digits`` decimals; only the mean for one value; ``–`` for none."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(rows: Sequence[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str], digits: int = 4,
             over: Sequence[str] = OVER_KEYS) -> str:
    """A markdown table of ``rows`` (mean ± std per metric), with a line saying what was averaged over."""
    head = [*(group_by or ["runs of"]), "runs", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        keys = [("(unset)" if row[k] is None else str(row[k])) for k in group_by] or ["all"]
        cells = [format_cell(row[f"{m}/mean"], row[f"{m}/std"], digits) for m in metrics]
        lines.append("| " + " | ".join([*keys, str(row["runs"]), *cells]) + " |")
    note = (f"Mean ± sample std over the runs of each row (averaged over {', '.join(over)}); "
            "one value shows the mean of a single run.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def _label(row: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys) or "all"


def plot_vs_key(rows: Sequence[dict[str, Any]], group_by: Sequence[str], metric: str, x_key: str, path: Path) -> Optional[Path]:
    """``metric`` (mean ± std) against the numeric swept key ``x_key``, one line per combination of the other keys.

    Returns the PNG path, or None when ``x_key`` is not swept or not numeric.
    """
    if x_key not in group_by:
        return None
    try:
        [float(r[x_key]) for r in rows if r[x_key] is not None]
    except ValueError:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in group_by if k != x_key]
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r[x_key] is not None and r[f"{metric}/mean"] is not None:
            lines.setdefault(_label(r, others), []).append(r)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, pts in lines.items():
        pts = sorted(pts, key=lambda r: float(r[x_key]))
        xs = [float(r[x_key]) for r in pts]
        ys = [r[f"{metric}/mean"] for r in pts]
        err = [r[f"{metric}/std"] or 0.0 for r in pts]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xticks(sorted({float(r[x_key]) for pts in lines.values() for r in pts}))
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {x_key} (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_vs_wall_time(rows: Sequence[dict[str, Any]], group_by: Sequence[str], metric: str, path: Path,
                      time_metric: str = "wall_time_s") -> Optional[Path]:
    """``metric`` against the mean wall time of each row (the quality / cost trade-off), one labelled point per row."""
    pts = [r for r in rows if r.get(f"{metric}/mean") is not None and r.get(f"{time_metric}/mean") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hue = "strategy" if "strategy" in group_by else (group_by[0] if group_by else None)
    others = [k for k in group_by if k != hue]
    colours: dict[Any, Any] = {}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in pts:
        c = colours.setdefault(r[hue] if hue else None, f"C{len(colours) % 10}")
        x, y = r[f"{time_metric}/mean"], r[f"{metric}/mean"]
        ax.errorbar(x, y, xerr=r[f"{time_metric}/std"] or 0.0, yerr=r[f"{metric}/std"] or 0.0, marker="o", color=c, capsize=3)
        if others:
            ax.annotate(_label(r, others), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if hue:
        for value, c in colours.items():
            ax.plot([], [], "o", color=c, label=f"{hue}={value}")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{time_metric} (mean)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {time_metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def metric_slug(metric: str) -> str:
    return metric.replace("/", "_")


def summarize(folder: Path, runs: Sequence[Run], *, group_by: Optional[Sequence[str]] = None,
              over: Sequence[str] = OVER_KEYS, digits: int = 4, plots: bool = True) -> dict[str, Any]:
    """Write ``summary.csv``, ``summary.md`` and ``plots/*.png`` into ``folder`` for ``runs``.

    Returns:
        ``{"group_by", "metrics", "rows", "markdown", "plots"}``.
    """
    keys = list(group_by) if group_by is not None else swept_keys(runs, over)
    metrics = metric_names(runs)
    rows = aggregate(runs, keys, metrics)
    write_csv(folder / "summary.csv", rows, keys, metrics)
    table = markdown(rows, keys, metrics, digits, over)
    (folder / "summary.md").write_text(table)
    written: list[Path] = []
    if plots:
        for m in metrics:
            if m in COST_METRICS:
                continue
            for p in (plot_vs_key(rows, keys, m, "n_noises", folder / "plots" / f"{metric_slug(m)}_vs_n_noises.png"),
                      plot_vs_wall_time(rows, keys, m, folder / "plots" / f"{metric_slug(m)}_vs_wall_time.png")):
                if p is not None:
                    written.append(p)
    return {"group_by": keys, "metrics": metrics, "rows": rows, "markdown": table, "plots": written}
