"""Reward-vs-step curves of a sweep: each table row's mean ± std over its runs, read from the runs' logged history.

A run's history is the per-step log it keeps on disk, read from the first of :data:`HISTORY_FILES` that exists:
a CSV with a ``step`` column and one column per logged key (``train/reward_mean``, ...), one row per logged step,
empty cells where a key was not logged at that step (Lightning's ``CSVLogger`` layout; every run writes
``csv/metrics.csv``, whatever its logger). A step logged twice (a resumed run) keeps its last value.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from rewardsds.eval.aggregate import Run, metric_slug, row_label, save_figure

#: where a run's per-step history is looked for, in order
HISTORY_FILES = ("csv/metrics.csv",)
#: curves drawn when the caller names none (those a run logged)
DEFAULT_CURVES = ("train/reward_mean", "train/reward_selected")


def history_file(run_dir: Path) -> Optional[Path]:
    """The run's history CSV (:data:`HISTORY_FILES`), or None."""
    for name in HISTORY_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            return path
    return None


def read_history(run_dir: Path, keys: Optional[Sequence[str]] = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{key: (steps [m] int64, values [m] float64)}`` of the run's logged history, sorted by step.

    Args:
        run_dir: the run folder.
        keys: the keys wanted (default: every column but ``step`` and ``epoch``).

    Returns:
        the keys that have at least one finite value; {} when the run has no history file.
    """
    path = history_file(run_dir)
    if path is None:
        return {}
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            return {}
        wanted = [k for k in (keys if keys is not None else reader.fieldnames) if k not in ("step", "epoch")]
        for row in reader:
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError):
                continue
            for k in wanted:
                cell = row.get(k)
                if cell in (None, ""):
                    continue
                try:
                    v = float(cell)
                except ValueError:  # not a number (a media object logged under the same key): not a curve
                    continue
                if math.isfinite(v):
                    series.setdefault(k, {})[step] = v
    out = {}
    for k, pts in series.items():
        steps = np.array(sorted(pts), dtype=np.int64)
        out[k] = (steps, np.array([pts[s] for s in steps], dtype=np.float64))
    return out


@dataclass
class Curve:
    """One table row's curve: at each step the mean, sample std (NaN below two runs) and count of its runs."""

    label: str
    keys: dict[str, Any]
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray


def row_curve(runs: Sequence[Run], key: str, histories: dict[Path, dict]) -> Optional[tuple[np.ndarray, ...]]:
    """(steps, mean, std, n) of ``key`` over ``runs`` at every step any of them logged; None if none did."""
    per_step: dict[int, list[float]] = {}
    for r in runs:
        h = histories.get(r.path, {})
        if key in h:
            for s, v in zip(*h[key]):
                per_step.setdefault(int(s), []).append(float(v))
    if not per_step:
        return None
    steps = np.array(sorted(per_step), dtype=np.int64)
    vals = [np.asarray(per_step[s]) for s in steps]
    mean = np.array([v.mean() for v in vals])
    std = np.array([v.std(ddof=1) if v.size > 1 else np.nan for v in vals])
    return steps, mean, std, np.array([v.size for v in vals], dtype=np.int64)


def curves(rows: Sequence[dict[str, Any]], group_by: Sequence[str], key: str, histories: dict[Path, dict]) -> list[Curve]:
    """One :class:`Curve` of ``key`` per table row (rows of :func:`rewardsds.eval.aggregate.aggregate`) that logged it."""
    out = []
    for row in rows:
        c = row_curve(row["_runs"], key, histories)
        if c is not None:
            out.append(Curve(row_label(row, group_by), {k: row[k] for k in group_by}, *c))
    return out


def write_curves_csv(path: Path, lines: Sequence[Curve], group_by: Sequence[str]) -> None:
    """``curves/<key>.csv``: the row's keys, ``step``, ``mean``, ``std`` (empty below two runs), ``n``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*group_by, "step", "mean", "std", "n"])
        for c in lines:
            for s, m, sd, n in zip(c.steps, c.mean, c.std, c.n):
                writer.writerow([*("" if c.keys[k] is None else c.keys[k] for k in group_by), int(s), float(m),
                                 "" if np.isnan(sd) else float(sd), int(n)])


def plot_curves(lines: Sequence[Curve], key: str, path: Path, over: Sequence[str]) -> Path:
    """One line per row (mean) with a ±std band where two or more runs logged the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, c in enumerate(lines):
        colour = f"C{i % 10}"
        ax.plot(c.steps, c.mean, color=colour, label=f"{c.label} ({int(c.n.max())} runs)", linewidth=1.4)
        band = ~np.isnan(c.std)
        if band.any():
            ax.fill_between(c.steps[band], (c.mean - c.std)[band], (c.mean + c.std)[band], color=colour, alpha=0.2,
                            linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{key} (mean ± std over {', '.join(over) or 'runs'})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_curves(folder: Path, rows: Sequence[dict[str, Any]], group_by: Sequence[str], keys: Sequence[str],
                 over: Sequence[str]) -> list[dict[str, Any]]:
    """``curves/<key>.png`` and ``curves/<key>.csv`` for each key some run logged.

    Returns:
        ``[{"key", "png", "csv", "lines": [Curve, ...]}]`` in the order of ``keys``; runs without history are
        simply absent from the lines.
    """
    runs = [r for row in rows for r in row["_runs"]]
    histories = {r.path: read_history(r.path, keys) for r in runs}
    out = []
    for key in keys:
        lines = curves(rows, group_by, key, histories)
        if not lines:
            continue
        stem = folder / "curves" / metric_slug(key)
        write_curves_csv(stem.with_suffix(".csv"), lines, group_by)
        out.append({"key": key, "png": plot_curves(lines, key, stem.with_suffix(".png"), over),
                    "csv": stem.with_suffix(".csv"), "lines": lines})
    return out
