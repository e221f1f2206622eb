"""Sweep tables from run folders on disk: group runs by what they recorded, mean, std and 95% intervals.

A run is a folder with ``metrics.json`` (written by every run) and, after ``rewardsds-eval --metrics ...``,
``eval_metrics.json`` (its ``eval/*`` values are also merged into ``metrics.json``). A run's settings are what
its ``metrics.json`` records (:data:`RECORDED_KEYS`: experiment, loss, reward, strategy, n_noises,
lookahead_steps, seed, prompt, ...; the strategy and N of each labelled variant of a ``compare.runs`` folder
included), completed by its command-line overrides for keys it does not record (``strategy.lambda_max=0.5``).
The settings whose values differ between runs are the swept keys. Rows of the table are the combinations of
the swept keys minus the keys averaged over (``seed``, ``prompt``, ``prompt_index`` by default); each cell is
the mean, the sample standard deviation and the bootstrap interval (:mod:`rewardsds.eval.stats`) of one
metric over the runs of that row. Nothing here needs W&B.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from rewardsds.eval.stats import Bootstrap, finite, paired, summarize as summarize_values
from rewardsds.utils.io import write_text

#: metrics.json keys aggregated besides the ``final/*`` and ``eval/*`` ones (cost of a run)
COST_METRICS = ("wall_time_s", "step_time_median_s", "evals_per_step_mean", "peak_memory_gb")
#: keys averaged over, not grouped by
OVER_KEYS = ("seed", "prompt", "prompt_index")
#: settings every run records in its metrics.json (train.base_metrics and the built strategy)
RECORDED_KEYS = ("experiment", "prompts", "prior", "representation", "loss", "reward", "strategy", "n_noises",
                 "lookahead_steps", "reward_duration", "steps", "prompt", "prompt_index", "seed")
#: override keys that name a recorded setting under another name
OVERRIDE_ALIASES = {"lookahead.steps": "lookahead_steps", "prompts_file": "prompts"}
#: override keys that set up, name or log a run without changing its result (left out of the settings): each
#: entry and every key below it (``logger`` covers ``logger.name``, ``logger.tags``, ...; ``hydra`` covers
#: ``hydra/launcher``), so two runs that differ only in where or under which name they were logged are one row
SETUP_KEYS = ("debug", "trainer", "logger", "output", "hydra", "resume", "resume_allow_changes", "compare", "name",
              "gpu_lock", "hparams_search")
#: swept keys listed first in tables (the rest follow alphabetically)
KEY_ORDER = ("experiment", "prompts", "prior", "representation", "loss", "reward", "strategy", "n_noises",
             "lookahead_steps")
#: quality metrics: higher is better for each of them (rewards and evaluators)
QUALITY_PREFIXES = ("final/", "eval/")


@dataclass
class Run:
    """One run folder: its settings (recorded, then overrides), its metrics (numbers) and all of metrics.json."""

    path: Path
    info: dict[str, Any]
    settings: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> Optional[str]:
        return self.info.get("status")

    def pair_key(self) -> tuple[str, str]:
        """(prompt, seed): the runs of two variants that a paired comparison matches."""
        return (str(self.info.get("prompt", self.settings.get("prompt", ""))),
                str(self.info.get("seed", self.settings.get("seed", ""))))


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["strategy=min_max", "+x=1"]`` -> ``{"strategy": "min_max", "x": "1"}`` (later values win)."""
    out: dict[str, str] = {}
    for o in overrides or []:
        key, sep, value = str(o).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _is_setup_key(key: str) -> bool:
    # "." a field below the entry (logger.name); "/" a config group below it (hydra/launcher=gpus)
    return any(key == e or key.startswith((e + ".", e + "/")) for e in SETUP_KEYS)


def run_settings(info: dict[str, Any]) -> dict[str, str]:
    """The settings of a run as strings: recorded keys first, then override keys it does not record.

    A recorded value wins over an override of the same key: a ``compare.runs`` variant records its own
    strategy and N while its overrides are those of the whole comparison.
    """
    settings: dict[str, str] = {}
    for key, value in parse_overrides(info.get("overrides") or []).items():
        key = OVERRIDE_ALIASES.get(key, key)
        if not _is_setup_key(key):
            settings[key] = value
    for key in RECORDED_KEYS:
        value = info.get(key)
        if value is not None and not isinstance(value, (dict, list)):
            settings[key] = str(value)
    return settings


def load_run(path: Path) -> Run:
    """Read ``metrics.json`` (and ``eval_metrics.json`` if present) of the run folder ``path``."""
    info = json.loads((path / "metrics.json").read_text())
    run = Run(path=path, info=info, settings=run_settings(info))
    for key, value in info.items():
        v = finite(value)
        if v is not None and (key.startswith(QUALITY_PREFIXES) or key in COST_METRICS):
            run.values[key] = v
    ev = path / "eval_metrics.json"
    if ev.is_file():
        for key, value in json.loads(ev.read_text()).get("metrics", {}).items():
            v = finite(value)
            if v is not None:
                run.values[f"eval/{key}"] = v
    return run


def find_runs(folder: Path) -> list[Path]:
    """Run folders (holding ``metrics.json``) below ``folder``, sorted."""
    return sorted(p.parent for p in Path(folder).rglob("metrics.json"))


def swept_keys(runs: Sequence[Run], over: Sequence[str] = OVER_KEYS) -> list[str]:
    """Settings whose value differs between runs (a key missing in a run counts as a value), minus ``over``."""
    keys: set[str] = set()
    for r in runs:
        keys |= set(r.settings)
    varying = [k for k in keys if k not in over and len({r.settings.get(k) for r in runs}) > 1]
    return sorted(varying, key=lambda k: (KEY_ORDER.index(k) if k in KEY_ORDER else len(KEY_ORDER), k))


def metric_names(runs: Sequence[Run]) -> list[str]:
    """Metrics present in any run: ``eval/*`` and ``final/*`` (sorted), then the cost metrics."""
    present: set[str] = set()
    for r in runs:
        present |= set(r.values)
    quality = sorted(k for k in present if k.startswith(QUALITY_PREFIXES))
    return quality + [k for k in COST_METRICS if k in present]


def _sort_value(v: Optional[str]) -> tuple:
    if v is None:
        return (0, 0.0, "")
    try:
        return (1, float(v), "")
    except ValueError:
        return (2, 0.0, v)


def group_runs(runs: Sequence[Run], group_by: Sequence[str]) -> list[tuple[tuple, list[Run]]]:
    """``(key values, runs)`` per combination of ``group_by`` values, sorted (numbers numerically)."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r.settings.get(k) for k in group_by), []).append(r)
    return [(key, groups[key]) for key in sorted(groups, key=lambda t: tuple(_sort_value(v) for v in t))]


def aggregate(runs: Sequence[Run], group_by: Sequence[str], metrics: Sequence[str],
              boot: Bootstrap = Bootstrap()) -> list[dict[str, Any]]:
    """One row per combination of ``group_by`` values: ``runs`` and ``<metric>/mean|std|ci_low|ci_high|n``.

    Args:
        runs: the runs to aggregate (already filtered, e.g. to complete ones).
        group_by: settings that define a row; a run without the key has the value None.
        metrics: metric names (``final/reward``, ``eval/clip_score``, ``wall_time_s``, ...).
        boot: the bootstrap of the intervals (:class:`rewardsds.eval.stats.Bootstrap`).

    Returns:
        rows sorted by their key values (numbers numerically); ``std`` is the sample standard deviation
        (n - 1), None for fewer than two values, as is the interval; ``mean`` is None when no run has the metric.
        ``_runs`` holds the row's :class:`Run` objects.
    """
    rows = []
    for key, members in group_runs(runs, group_by):
        row: dict[str, Any] = dict(zip(group_by, key))
        row["runs"] = len(members)
        row["_runs"] = members
        for m in metrics:
            s = summarize_values([r.values[m] for r in members if m in r.values], boot)
            row[f"{m}/n"] = s.n
            row[f"{m}/mean"] = s.mean
            row[f"{m}/std"] = s.std
            row[f"{m}/ci_low"] = s.ci[0] if s.ci else None
            row[f"{m}/ci_high"] = s.ci[1] if s.ci else None
        rows.append(row)
    return rows


STAT_COLUMNS = ("mean", "std", "ci_low", "ci_high", "n")


def _csv_cell(v: Any) -> Any:
    return "" if v is None else v


def write_csv(path: Path, rows: Sequence[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str]) -> None:
    """``summary.csv``: the group keys, ``runs``, then ``<metric>/mean|std|ci_low|ci_high|n`` per metric."""
    columns = [*group_by, "runs"] + [f"{m}/{s}" for m in metrics for s in STAT_COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_cell(row.get(c)) for c in columns})


def format_cell(mean: Optional[float], std: Optional[float], digits: int,
                ci: Optional[tuple[Optional[float], Optional[float]]] = None) -> str:
    """``mean ± std [low, high]`` with ``digits`` decimals; only the mean for one value; ``–`` for none."""
    if mean is None:
        return "–"
    text = f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
    if ci is not None and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def row_label(row: dict[str, Any], keys: Sequence[str]) -> str:
    """``strategy=min_max, n_noises=8`` (``all`` when nothing is grouped)."""
    return ", ".join(f"{k}={'(unset)' if row[k] is None else row[k]}" for k in keys) or "all"


def markdown(rows: Sequence[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str], digits: int = 4,
             over: Sequence[str] = OVER_KEYS, boot: Bootstrap = Bootstrap()) -> str:
    """A markdown table of ``rows`` (mean ± std [interval] per metric), with a line saying what was averaged over."""
    head = [*(group_by or ["runs of"]), "runs", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        keys = [("(unset)" if row[k] is None else str(row[k])) for k in group_by] or ["all"]
        cells = [format_cell(row[f"{m}/mean"], row[f"{m}/std"], digits, (row[f"{m}/ci_low"], row[f"{m}/ci_high"]))
                 for m in metrics]
        lines.append("| " + " | ".join([*keys, str(row["runs"]), *cells]) + " |")
    note = (f"Mean ± sample std [{boot.describe()}] over the runs of each row (averaged over {', '.join(over)}); "
            "one value shows the mean of a single run.")
    return "\n".join(lines) + "\n\n" + note + "\n"


# ----------------------------------------------------------------------------------------- paired comparison
def parse_baseline(text: str) -> dict[str, str]:
    """``"strategy=none,n_noises=1"`` -> ``{"strategy": "none", "n_noises": "1"}``."""
    out = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise ValueError(f"--baseline {text!r}: expected key=value[,key=value], e.g. strategy=none")
        out[key] = value
    return out


def default_baseline(rows: Sequence[dict[str, Any]], group_by: Sequence[str]) -> Optional[dict[str, str]]:
    """``strategy=none`` (plain distillation) when ``strategy`` is swept and one row has it, else None."""
    if "strategy" in group_by and any(r["strategy"] == "none" for r in rows):
        return {"strategy": "none"}
    return None


#: settings of the reward-aligned method itself: a variant and its baseline may differ on them besides the
#: baseline's own keys (SDS runs N = 1 without a lookahead; RewardSDS N = 8 with one); ``x.`` = a prefix
METHOD_KEYS = ("strategy", "strategy.", "n_noises", "lookahead_steps", "lookahead.", "reward_duration")


def is_method_key(key: str) -> bool:
    """Whether ``key`` is a setting of the reward-aligned method (:data:`METHOD_KEYS`)."""
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in METHOD_KEYS)


def _of_spec(key: str, spec: dict[str, str]) -> bool:
    """Whether ``key`` is a baseline key or a setting of one (``loss.lambda_pg`` of ``--baseline loss=sds``)."""
    return key in spec or any(key.startswith(k + ".") for k in spec)


def _spec_text(spec: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in spec.items())


def _value(v: Any) -> str:
    return "(unset)" if v is None else str(v)


def baseline_for(row: dict[str, Any], baselines: Sequence[dict[str, Any]], group_by: Sequence[str],
                 spec: dict[str, str]) -> tuple[Optional[dict[str, Any]], str]:
    """The baseline row of ``row``, or None and why there is none.

    A baseline must agree with ``row`` on every grouped key except the baseline's own keys (``spec``, and the
    settings below them: ``loss.*`` for ``loss=sds``) and the method's settings (:data:`METHOD_KEYS`: n_noises,
    lookahead_steps, ...): an SDS row of another experiment, step count, loss or prompt set is no baseline, even
    when it is the only one. Of several such rows the one that also agrees on the method's settings is taken
    (``strategy=none,min_max x n_noises=4,16``: N = 4 against N = 4); still several is ambiguous, and none is taken.

    Args:
        row: a table row of :func:`aggregate`.
        baselines: the rows that have the ``spec`` values.
        group_by: the keys of the rows.
        spec: the baseline's key values (``{"strategy": "none"}``).

    Returns:
        ``(baseline, "")``, or ``(None, reason)`` with a reason that names the candidates and the fix.
    """
    fixed = [k for k in group_by if not _of_spec(k, spec) and not is_method_key(k)]
    loose = [k for k in group_by if not _of_spec(k, spec) and is_method_key(k)]
    agree = [b for b in baselines if all(b[k] == row[k] for k in fixed)]
    if len(agree) > 1:
        agree = [b for b in agree if all(b[k] == row[k] for k in loose)] or agree
    if len(agree) == 1:
        return agree[0], ""
    if not agree:
        want = ", ".join(f"{k}={_value(row[k])}" for k in fixed)
        return None, (f"no {_spec_text(spec)} row has {want}; the {_spec_text(spec)} rows are "
                      + "; ".join(f"({row_label(b, fixed)})" for b in baselines)
                      + ". Fix: run the baseline with these settings, or compare rows that share them (--group-by)")
    return None, (f"{len(agree)} {_spec_text(spec)} rows agree with it: "
                  + "; ".join(f"({row_label(b, group_by)})" for b in agree)
                  + f". Fix: name one, e.g. --baseline {suggest_baseline(agree, group_by, spec)}")


def suggest_baseline(candidates: Sequence[dict[str, Any]], group_by: Sequence[str], spec: dict[str, str]) -> str:
    """A ``--baseline`` value naming one of several candidate rows: ``spec`` plus the first grouped key (in table
    order) whose values tell every candidate apart (``loss=sds,strategy=none``), else every key on which they
    differ. The candidate is the one with the fewest noises (plain distillation), else the first."""
    differ = [k for k in group_by if not _of_spec(k, spec) and len({_value(c[k]) for c in candidates}) > 1]
    one = [k for k in differ if len({_value(c[k]) for c in candidates}) == len(candidates)]
    keys = one[:1] or differ

    def fewest(c: dict[str, Any]) -> tuple:
        return _sort_value(c.get("n_noises")) if "n_noises" in group_by else (0,)

    pick = min(candidates, key=fewest)
    named = {**{k: str(pick[k]) for k in keys}, **spec}  # str(): how match_baselines compares --baseline values
    return _spec_text(dict(sorted(named.items())))


def match_baselines(rows: Sequence[dict[str, Any]], group_by: Sequence[str], spec: dict[str, str]
                    ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], list[str]]:
    """Each non-baseline row with its baseline row (:func:`baseline_for`), and notes on what was not paired.

    Args:
        rows: the rows of :func:`aggregate`.
        group_by: the keys of those rows.
        spec: the baseline's key values; every key must be in ``group_by`` and some row must have them.

    Returns:
        ``([(row, baseline), ...], notes)``: one note per row without a baseline (its label and why), and one when
        several rows have the ``spec`` values (they are baselines, not compared with each other; how to name one).

    Raises:
        ValueError: a ``spec`` key that is not grouped, or values that no row has.
    """
    unknown = [k for k in spec if k not in group_by]
    if unknown:
        grouped = (f"the rows are grouped by {', '.join(group_by)}" if group_by else
                   "the table has one row of all runs (no setting differs between them, so there is no baseline to name)")
        raise ValueError(f"--baseline {_spec_text(spec)}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                         f"a key of the table's rows ({grouped}). Fix: "
                         + (f"name one of {', '.join(group_by)}" if group_by else "leave --baseline out"))
    baselines = [r for r in rows if all(str(r[k]) == v for k, v in spec.items())]
    if not baselines:
        seen = "; ".join(f"{k}: {', '.join(sorted({str(r[k]) for r in rows}))}" for k in spec)
        raise ValueError(f"--baseline {_spec_text(spec)}: no table row has these values (the rows have {seen})")
    pairs, notes = [], []
    if len(baselines) > 1:
        notes.append(f"{len(baselines)} rows are {_spec_text(spec)} baselines ("
                     + "; ".join(row_label(b, group_by) for b in baselines)
                     + "): each other row is paired with the one that agrees on its settings, and they are not "
                     f"compared with each other. To compare every row against one of them: --baseline "
                     f"{suggest_baseline(baselines, group_by, spec)}")
    for row in rows:
        if any(row is b for b in baselines):
            continue
        base, why = baseline_for(row, baselines, group_by, spec)
        if base is None:
            notes.append(f"{row_label(row, group_by)}: not paired: {why}")
        else:
            pairs.append((row, base))
    return pairs, notes


def paired_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str], spec: dict[str, str],
                 metrics: Sequence[str], boot: Bootstrap = Bootstrap()) -> tuple[list[dict[str, Any]], list[str]]:
    """Win rate (with interval) and mean difference of every non-baseline row against its baseline row, and notes
    on the rows left out.

    Baselines are matched by :func:`match_baselines` (a row without one gets no entry, and a note says why). Runs
    are matched on (prompt, seed) (:meth:`Run.pair_key`); a pair counts when both runs have the metric, and a metric
    without any pair gets no row (a row with a baseline but no shared prompt and seed gets a note).
    Several runs of one row with the same pair key (only possible with a narrowed ``group_by``) are averaged.

    Args:
        rows: the rows of :func:`aggregate` (with their ``_runs``).
        group_by: the keys of those rows.
        spec: the baseline's key values (``{"strategy": "none"}``); every key must be in ``group_by``.
        metrics: quality metrics to compare (higher is better).
        boot: the bootstrap of both intervals.

    Returns:
        ``(entries, notes)``: one entry per (variant row, metric): the variant's keys, ``baseline`` (its label),
        ``metric``, ``pairs``, ``win_rate``, ``win_ci_low``, ``win_ci_high``, ``diff_mean``, ``diff_ci_low``,
        ``diff_ci_high``; the notes of :func:`match_baselines` and of rows without a pair.
    """
    matches, notes = match_baselines(rows, group_by, spec)
    out = []
    for row, base in matches:
        before = len(out)
        for m in metrics:
            p = paired(_by_pair(row["_runs"], m), _by_pair(base["_runs"], m), boot)
            if not p.pairs:
                continue
            out.append({**{k: row[k] for k in group_by}, "baseline": row_label(base, group_by), "metric": m,
                        "pairs": p.pairs, "win_rate": p.win_rate,
                        "win_ci_low": p.win_ci[0] if p.win_ci else None, "win_ci_high": p.win_ci[1] if p.win_ci else None,
                        "diff_mean": p.diff_mean,
                        "diff_ci_low": p.diff_ci[0] if p.diff_ci else None, "diff_ci_high": p.diff_ci[1] if p.diff_ci else None})
        if len(out) == before and metrics:
            notes.append(f"{row_label(row, group_by)}: not paired: no run shares a prompt and seed (with a metric) "
                         f"with the runs of its baseline ({row_label(base, group_by)})")
    return out, notes


def paired_rows(rows: Sequence[dict[str, Any]], group_by: Sequence[str], spec: dict[str, str],
                metrics: Sequence[str], boot: Bootstrap = Bootstrap()) -> list[dict[str, Any]]:
    """The entries of :func:`paired_table` (without its notes)."""
    return paired_table(rows, group_by, spec, metrics, boot)[0]


def _by_pair(runs: Sequence[Run], metric: str) -> dict[tuple[str, str], float]:
    acc: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        if metric in r.values:
            acc.setdefault(r.pair_key(), []).append(r.values[metric])
    return {k: sum(v) / len(v) for k, v in acc.items()}


PAIRED_COLUMNS = ("baseline", "metric", "pairs", "win_rate", "win_ci_low", "win_ci_high", "diff_mean", "diff_ci_low",
                  "diff_ci_high")


def write_paired_csv(path: Path, rows: Sequence[dict[str, Any]], group_by: Sequence[str]) -> None:
    """``paired.csv``: the variant's keys, then :data:`PAIRED_COLUMNS`."""
    columns = [*group_by, *PAIRED_COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_cell(row.get(c)) for c in columns})


def paired_markdown(rows: Sequence[dict[str, Any]], group_by: Sequence[str], digits: int = 4,
                    boot: Bootstrap = Bootstrap(), notes: Sequence[str] = ()) -> str:
    """Markdown of :func:`paired_table`: win rate [interval] and mean difference [interval] per variant and metric,
    then its ``notes`` (rows left out and why) as a list."""
    head = [*(group_by or ["variant"]), "vs baseline", "metric", "pairs", "win rate", "mean difference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        keys = [("(unset)" if r[k] is None else str(r[k])) for k in group_by] or ["all"]
        win = format_cell(r["win_rate"], None, digits, (r["win_ci_low"], r["win_ci_high"]))
        diff = format_cell(r["diff_mean"], None, digits, (r["diff_ci_low"], r["diff_ci_high"]))
        lines.append("| " + " | ".join([*keys, r["baseline"], r["metric"], str(r["pairs"]), win, diff]) + " |")
    note = ("Pairs are runs with the same prompt and seed; a win is a higher value than the baseline's (ties count "
            f"half). Intervals: {boot.describe()} over the pairs.")
    text = ("\n".join(lines) + "\n\n" + note + "\n") if rows else "No row could be paired with a baseline.\n"
    if notes:
        text += "\n" + "".join(f"- {n}\n" for n in notes)
    return text


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
            lines.setdefault(row_label(r, others), []).append(r)
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
    return save_figure(fig, path)


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
            ax.annotate(row_label(r, others), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if hue:
        for value, c in colours.items():
            ax.plot([], [], "o", color=c, label=f"{hue}={value}")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{time_metric} (mean)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {time_metric}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders made) and release it; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


#: the names of the files ``rewardsds-eval`` wrote into one of its figure folders (plots/, curves/, sheets/)
WRITTEN_LIST = ".rewardsds-eval-files"


def replace_outputs(folder: Path, written: Sequence[Path]) -> list[Path]:
    """Remove what ``rewardsds-eval`` wrote into ``folder`` last time and did not write again; record what it wrote.

    A re-evaluation with other rows (``--group-by``, other runs) writes other figures; the previous ones would stay
    beside them (``final_reward_vs_n_noises.png`` of a grouping without n_noises). Only files named in
    ``folder/.rewardsds-eval-files`` (the previous call's ``written``) are removed, never files put there otherwise.

    Args:
        folder: the figure folder (``<sweep>/plots``).
        written: the files written into ``folder`` now.

    Returns:
        the files removed.
    """
    folder = Path(folder)
    listed = folder / WRITTEN_LIST
    keep = {Path(p).name for p in written if Path(p).parent == folder}
    previous = listed.read_text().split("\n") if listed.is_file() else []
    removed = []
    for name in previous:
        f = folder / name
        # one name per line of a file this function wrote; a name with a separator is no file of this folder
        if name and name not in keep and Path(name).name == name and f.is_file():
            f.unlink()
            removed.append(f)
    if keep:
        write_text(listed, "".join(f"{n}\n" for n in sorted(keep)))
    elif listed.is_file():
        listed.unlink()
    return removed


def metric_slug(metric: str) -> str:
    return metric.replace("/", "_")


def summarize(folder: Path, runs: Sequence[Run], *, group_by: Optional[Sequence[str]] = None,
              over: Sequence[str] = OVER_KEYS, digits: int = 4, plots: bool = True, boot: Bootstrap = Bootstrap(),
              baseline: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Write ``summary.csv``/``.md``, ``paired.csv``/``.md`` (with a baseline) and ``plots/*.png`` into ``folder``.

    Args:
        folder: where the tables and plots go.
        runs: the runs to aggregate.
        group_by: row keys (default: :func:`swept_keys`).
        over: keys averaged over (and left out of the default ``group_by``).
        digits: decimals in the markdown tables.
        plots: write ``plots/<metric>_vs_n_noises.png`` and ``plots/<metric>_vs_wall_time.png`` (and remove the
            plots an earlier call wrote that this one does not, :func:`replace_outputs`).
        boot: the bootstrap of every interval.
        baseline: the baseline's key values for the paired table (default: :func:`default_baseline`).

    Returns:
        ``{"group_by", "metrics", "rows", "markdown", "plots", "baseline", "paired", "paired_notes",
        "paired_markdown"}`` (``paired_notes``: the rows left out of the paired table and why).
    """
    keys = list(group_by) if group_by is not None else swept_keys(runs, over)
    metrics = metric_names(runs)
    rows = aggregate(runs, keys, metrics, boot)
    spec = baseline if baseline is not None else default_baseline(rows, keys)
    quality = [m for m in metrics if m.startswith(QUALITY_PREFIXES)]
    # a bad baseline raises here, before any file is written
    pairs, notes = paired_table(rows, keys, spec, quality, boot) if spec else ([], [])
    table = markdown(rows, keys, metrics, digits, over, boot)
    write_csv(folder / "summary.csv", rows, keys, metrics)
    write_text(folder / "summary.md", table)
    pairs_md = ""
    if spec:
        write_paired_csv(folder / "paired.csv", pairs, keys)
        pairs_md = paired_markdown(pairs, keys, digits, boot, notes)
        write_text(folder / "paired.md", pairs_md)
    written: list[Path] = []
    if plots:
        for m in metrics:
            if m in COST_METRICS:
                continue
            for p in (plot_vs_key(rows, keys, m, "n_noises", folder / "plots" / f"{metric_slug(m)}_vs_n_noises.png"),
                      plot_vs_wall_time(rows, keys, m, folder / "plots" / f"{metric_slug(m)}_vs_wall_time.png")):
                if p is not None:
                    written.append(p)
        replace_outputs(folder / "plots", written)
    return {"group_by": keys, "metrics": metrics, "rows": rows, "markdown": table, "plots": written,
            "baseline": spec, "paired": pairs, "paired_notes": notes, "paired_markdown": pairs_md}
