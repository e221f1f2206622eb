"""``rewardsds-eval``: turn a folder of finished runs (a sweep) into the tables, curves, sheets and report of a paper.

Usage::

    rewardsds-eval outputs/sweeps/<date>/<time>                      # CLIP score, aesthetic, ImageReward
    rewardsds-eval outputs/sweeps/<date>/<time> --metrics none       # only the metrics the runs wrote
    rewardsds-eval <folder> --metrics clip_score,image_reward --device cuda \\
        --override clip_score.pretrained=/models/clip-vit-large-patch14 \\
        --override image_reward.checkpoint=/models/ImageReward --baseline strategy=none

Every folder below the given one that holds a ``metrics.json`` is a run; finished runs (``"status":
"complete"``) are used. Evaluators (:mod:`rewardsds.eval.evaluators`) score each run's ``eval/view_*.png``
(3D: fixed cameras around the object, averaged) or ``final/*.png`` (2D) and record the results in the run's
``eval_metrics.json`` and, as ``eval/<metric>``, in its ``metrics.json``. Then, from disk only:

- ``eval.csv``: one row per run (its recorded settings and every ``eval/*`` value);
- ``summary.csv`` / ``summary.md``: one row per combination of the swept settings (what the runs recorded:
  strategy, n_noises, loss, reward, lookahead_steps, ...), averaged over seeds and prompts, with mean, sample std
  and a 95% percentile-bootstrap interval (:mod:`rewardsds.eval.stats`) of every ``final/*``, ``eval/*`` and cost
  metric;
- ``paired.csv`` / ``paired.md``: each row's win rate against its baseline row (``--baseline``, default
  ``strategy=none`` when it is swept: the row with those values that agrees on every other grouped key but the
  method's settings, :func:`rewardsds.eval.aggregate.baseline_for`) on runs with the same prompt and seed, with its
  interval, and the mean paired difference; rows without a baseline are listed with the reason;
- ``curves/<key>.png`` / ``.csv``: reward-vs-step curves (mean ± std over each row's runs) from the runs'
  logged history (``csv/metrics.csv``, which every run writes);
- ``sheets/<i>-<prompt>.png``: per prompt, variants x seeds of final images captioned with a metric;
- ``plots/``: each quality metric against n_noises and against wall time;
- ``report.html``: all of the above on one page that opens from disk.

Runs that were logged to W&B (``metrics.json["wandb"]``) get their ``eval/*`` values in their run summary, and
the sweep gets one W&B run (``job_type=eval``, in the sweep's group) with the tables and figures
(``--wandb auto|on|off``).

Evaluator models are reward options of ``conf/reward/``; their sources are set like those of a training
reward, per metric: ``--override <metric>.<field>=<value>`` (repeatable) or a YAML mapping
``{<metric>: {<field>: <value>}}`` given with ``--sources``; command-line overrides win. Evaluation defaults to
``dtype=fp32`` and ``pil_exact=true``. A model that cannot be loaded stops the command with one message and
exit status 2, as does any other usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from rewardsds.errors import RewardSDSError
from rewardsds.eval.evaluators import DEFAULT_METRICS, EvaluatorLoadError, load_png, run_images  # noqa: F401

FIRST_COLUMNS = ("strategy", "n_noises", "seed")
_SKIP_KEYS = ("prompt", "status")


class UsageError(RewardSDSError):
    """A command-line argument of ``rewardsds-eval`` is wrong; the message says which and what to give."""


def default_conf_dir() -> Path:
    """The package's Hydra configs (``rewardsds/conf``, installed with the package)."""
    import rewardsds.conf

    return Path(rewardsds.conf.__file__).resolve().parent


def find_runs(folder: Path) -> list[Path]:
    """Run folders (holding ``metrics.json``) below ``folder``, sorted."""
    from rewardsds.eval.aggregate import find_runs as _find

    return _find(folder)


def parse_overrides(items: Sequence[str], metrics: Sequence[str]) -> dict[str, list[str]]:
    """``<metric>.<field>=<value>`` strings -> {metric: ["<field>=<value>", ...]}."""
    out: dict[str, list[str]] = {m: [] for m in metrics}
    for item in items:
        key, sep, value = item.partition("=")
        if key.startswith("reward."):
            key = key[len("reward."):]
        metric, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise UsageError(f"--override {item!r}: expected <metric>.<field>=<value>, "
                             "e.g. image_reward.checkpoint=/models/ImageReward")
        if metric not in out:
            raise UsageError(f"--override {item!r}: metric {metric!r} is not in --metrics {','.join(metrics)}")
        out[metric].append(f"{field}={value}")
    return out


def _scalar_settings(metrics: dict) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in _SKIP_KEYS and not k.startswith("eval/")
            and isinstance(v, (str, int, float, bool))}


def write_csv(path: Path, rows: list[dict], metric_names: Sequence[str]) -> None:
    """``eval.csv``: run, prompt, its scalar settings, the number of images and ``eval/<metric>`` per metric."""
    settings: list[str] = []
    for row in rows:
        for key in row["settings"]:
            if key not in settings:
                settings.append(key)
    ordered = [k for k in FIRST_COLUMNS if k in settings] + sorted(k for k in settings if k not in FIRST_COLUMNS)
    columns = ["run", "prompt", *ordered, "images", *[f"eval/{m}" for m in metric_names]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({"run": row["run"], "prompt": row["prompt"], **row["settings"], "images": row["images"],
                             **{f"eval/{m}": row["metrics"].get(m, "") for m in metric_names}})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardsds-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="folder holding run folders (searched recursively for metrics.json)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma-separated evaluators: clip_score, aesthetic, image_reward, or any reward option of "
                        "conf/reward (clip = raw cosine, pickscore, hpsv2, ...); none to only aggregate what the runs wrote")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="fp32", help="model precision for every metric (auto, fp32, fp16, bf16)")
    p.add_argument("--override", action="append", default=[], metavar="METRIC.FIELD=VALUE",
                   help="set a metric's config field, e.g. clip_score.pretrained=/models/clip-vit-large-patch14")
    p.add_argument("--sources", type=Path, help="YAML mapping {metric: {field: value}} of model sources")
    p.add_argument("--include-incomplete", action="store_true", help="also use runs whose status is not complete")
    p.add_argument("--conf-dir", type=Path, default=None, help="the project's conf/ folder (default: next to the package)")
    p.add_argument("--group-by", default=None, metavar="KEY,KEY",
                   help="settings that define a table row (default: every recorded setting whose value differs)")
    p.add_argument("--over", default="seed,prompt,prompt_index", metavar="KEY,KEY",
                   help="keys averaged over rather than grouped by (default: seed,prompt,prompt_index)")
    p.add_argument("--baseline", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="the values of the baseline rows the paired table compares against, e.g. strategy=none or "
                        "loss=sds,strategy=none (default: strategy=none when swept); none: no table")
    p.add_argument("--bootstrap", type=int, default=10_000, metavar="B", help="bootstrap resamples of every interval")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of numpy's default_rng for the bootstrap")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the intervals")
    p.add_argument("--curves", default=None, metavar="KEY,KEY",
                   help="logged keys drawn against the step (default: train/reward_mean,train/reward_selected); none")
    p.add_argument("--sheet-metric", default=None, metavar="METRIC",
                   help="value under each contact-sheet tile (default: the first metric scored now, else final/reward)")
    p.add_argument("--tile", type=int, default=160, help="contact-sheet tile side in pixels")
    p.add_argument("--no-sheets", action="store_true", help="skip sheets/*.png")
    p.add_argument("--digits", type=int, default=4, help="decimals in the markdown and HTML tables")
    p.add_argument("--no-plots", action="store_true", help="skip plots/*.png")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--wandb", choices=("auto", "on", "off"), default="auto",
                   help="push results to W&B: auto = when the runs were logged there (metrics.json records a run id)")
    p.add_argument("--wandb-project", default="rewardsds", help="project of the sweep's eval run when no run records one")
    return p


def _keys(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 for usage errors and models that cannot be loaded)."""
    from rewardsds.utils.quiet import quiet_progress_bars, quiet_torchao_enum_constants

    quiet_torchao_enum_constants()  # before any evaluator imports transformers (and with it torchao)
    quiet_progress_bars()  # without a terminal: no "Loading weights" bars in the log
    try:
        return _main(build_parser().parse_args(argv))
    except EvaluatorLoadError as err:
        print(str(err), file=sys.stderr)
        return 2
    except RewardSDSError as err:
        print(f"rewardsds-eval: error: {err}", file=sys.stderr)
        return 2


def _check_args(args: argparse.Namespace) -> list[str]:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise UsageError("--metrics is empty; e.g. --metrics clip_score,aesthetic,image_reward (or none)")
    if metrics == ["none"]:
        metrics = []
    elif "none" in metrics:
        raise UsageError(f"--metrics {args.metrics}: none cannot be combined with metrics")
    for name, value, ok, want in (("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
                                  ("--digits", args.digits, args.digits >= 0, ">= 0"),
                                  ("--bootstrap", args.bootstrap, args.bootstrap >= 1, ">= 1"),
                                  ("--confidence", args.confidence, 0 < args.confidence < 1, "in (0, 1)"),
                                  ("--tile", args.tile, args.tile >= 8, ">= 8")):
        if not ok:
            raise UsageError(f"{name} = {value}: must be {want}")
    if not args.folder.is_dir():
        raise UsageError(f"{args.folder}: no such folder; give the folder of a run or of a sweep")
    if not metrics and (args.override or args.sources):
        raise UsageError("--override/--sources configure metric models; they need --metrics <names>")
    return metrics


def _metric_configs(args: argparse.Namespace, metrics: list[str]) -> dict[str, tuple]:
    from omegaconf import OmegaConf

    from rewardsds.eval.evaluators import evaluator, metric_config

    if not metrics:
        return {}
    conf_dir = (args.conf_dir or default_conf_dir()).resolve()
    if not (conf_dir / "reward").is_dir():
        raise UsageError(f"--conf-dir {conf_dir}: has no reward/ group; pass the project's conf/ folder")
    sources = OmegaConf.to_container(OmegaConf.load(args.sources)) if args.sources else {}
    unknown = sorted(set(sources) - set(metrics))
    if unknown:
        raise UsageError(f"--sources {args.sources}: metrics {unknown} are not in --metrics {','.join(metrics)}")
    overrides = parse_overrides(args.override, metrics)
    out = {}
    for m in metrics:
        ev = evaluator(m, conf_dir)
        out[m] = (ev, metric_config(ev, conf_dir, dtype=args.dtype, sources=sources.get(m) or {}, overrides=overrides[m]))
    return out


def _main(args: argparse.Namespace) -> int:
    from rewardsds.eval import aggregate
    from rewardsds.eval.stats import Bootstrap

    metrics = _check_args(args)
    folder = args.folder.resolve()
    configs = _metric_configs(args, metrics)
    boot = Bootstrap(resamples=args.bootstrap, seed=args.bootstrap_seed, confidence=args.confidence)
    baseline = None
    if args.baseline and args.baseline != "none":
        try:
            baseline = aggregate.parse_baseline(args.baseline)
        except ValueError as err:
            raise UsageError(str(err)) from None

    runs, skipped = [], []
    found = list(find_runs(folder))
    if not found:
        raise UsageError(f"{folder}: holds no run (no metrics.json in it or below). Fix: give the folder of a run or sweep "
                         "(outputs/runs/<date>/<time> or outputs/sweeps/<date>/<time>); a run killed while starting wrote none")
    for run in found:
        info = json.loads((run / "metrics.json").read_text())
        views, paths = run_images(run)
        if info.get("status") != "complete" and not args.include_incomplete:
            skipped.append((run, f"status {info.get('status')!r}"))
        elif metrics and not paths:
            skipped.append((run, "no eval/*.png or final/*.png"))
        elif metrics and not isinstance(info.get("prompt"), str):
            skipped.append((run, "metrics.json has no prompt"))
        else:
            runs.append({"path": run, "info": info, "views": views, "paths": paths})
    for run, why in skipped:
        print(f"skipped {run.relative_to(folder)}: {why}", file=sys.stderr)
    if not runs:
        raise UsageError(f"{folder}: no finished runs{' with images' if metrics else ''} to evaluate"
                         f"{f' ({len(skipped)} skipped, as listed above)' if skipped else ''}. Fix: give the folder of a "
                         "finished run or sweep" + ("" if args.include_incomplete or not any(why.startswith("status") for _, why in skipped)
                                                   else ", or add --include-incomplete"))

    if metrics:
        score_runs(runs, configs, args)

    rows = []
    for run in runs:
        out_path = run["path"] / "eval_metrics.json"
        result = json.loads(out_path.read_text()) if out_path.is_file() else {}
        rows.append({"run": str(run["path"].relative_to(folder)) or ".", "prompt": run["info"].get("prompt", ""),
                     "settings": _scalar_settings(run["info"]), "images": len(run["paths"]),
                     "metrics": result.get("metrics", {})})
    metric_columns = list(metrics) + sorted({m for r in rows for m in r["metrics"]} - set(metrics))
    loaded = [aggregate.load_run(run["path"]) for run in runs]
    over = _keys(args.over) or []
    try:  # before any table is written: a bad --baseline must not leave a half-updated folder
        summary = aggregate.summarize(folder, loaded, group_by=_keys(args.group_by), over=over, digits=args.digits,
                                      plots=not args.no_plots, boot=boot, baseline=baseline)
    except ValueError as err:  # a --baseline that names no row or no grouped key
        raise UsageError(str(err)) from None
    write_csv(folder / "eval.csv", rows, metric_columns)
    if metrics:
        width = max(len(r["run"]) for r in rows)
        print(f"{'run':<{width}}  " + "  ".join(f"{m:>12}" for m in metrics))
        for r in rows:
            print(f"{r['run']:<{width}}  " + "  ".join(f"{r['metrics'][m]:>12.4f}" for m in metrics))
    print(f"wrote {folder / 'eval.csv'} ({len(rows)} runs, {len(skipped)} skipped)")
    print()
    print(summary["markdown"])
    if summary["baseline"]:  # the table, or why there is none: rows left out are named, never dropped silently
        print(summary["paired_markdown"])
    written = [folder / "summary.csv", folder / "summary.md"] + ([folder / "paired.csv", folder / "paired.md"]
                                                                 if summary["baseline"] else [])
    curves = _curves(folder, summary, args, over)
    sheets = [] if args.no_sheets else _sheets(folder, summary, args, metrics)
    report = None
    if not args.no_report:
        from rewardsds.eval.report import write_report

        report = write_report(folder, summary=summary, curves=curves, sheets=sheets, over=over, boot=boot,
                              digits=args.digits, n_runs=len(loaded), skipped=len(skipped), evaluated=metrics,
                              files=[folder / "eval.csv", *written, *(c["csv"] for c in curves)])
    from rewardsds.lifecycle import plural

    print("wrote " + ", ".join(p.name for p in written)
          + (f", {plural(len(summary['plots']), 'plot')}" if summary["plots"] else "")
          + (f", {plural(len(curves), 'curve')}" if curves else "") + (f", {plural(len(sheets), 'contact sheet')}" if sheets else "")
          + (f" and {report}" if report else f" in {folder}"))
    try:
        _push_wandb(folder, loaded, summary, curves, sheets, args)
    except Exception as err:  # the files are written; say what failed instead of a traceback after them
        print(f"rewardsds-eval: pushing to W&B failed ({type(err).__name__}: {err}). The files above are written; "
              "run again with --wandb on to retry, or --wandb off", file=sys.stderr)
        return 1
    return 0


def _curves(folder: Path, summary: dict, args: argparse.Namespace, over: Sequence[str]) -> list[dict]:
    from rewardsds.eval.curves import DEFAULT_CURVES, write_curves

    keys = _keys(args.curves) if args.curves is not None else list(DEFAULT_CURVES)
    if keys == ["none"]:
        return []
    from rewardsds.eval.aggregate import replace_outputs

    written = write_curves(folder, summary["rows"], summary["group_by"], keys, over)
    replace_outputs(folder / "curves", [p for c in written for p in (c["png"], c["csv"])])
    return written


def _sheets(folder: Path, summary: dict, args: argparse.Namespace, metrics: Sequence[str]) -> list:
    from rewardsds.eval.sheets import write_sheets

    metric = args.sheet_metric
    if metric is None:
        metric = f"eval/{metrics[0]}" if metrics else ("final/reward" if "final/reward" in summary["metrics"] else None)
    elif metric != "none" and metric not in summary["metrics"]:
        raise UsageError(f"--sheet-metric {metric}: no run has it; use one of {', '.join(summary['metrics'])} or none")
    from rewardsds.eval.aggregate import replace_outputs

    sheets = write_sheets(folder, summary["rows"], summary["group_by"], metric=None if metric == "none" else metric,
                          tile=args.tile, digits=args.digits)
    replace_outputs(folder / "sheets", [s.path for s in sheets])
    return sheets


def score_runs(runs: list[dict], configs: dict, args: argparse.Namespace) -> None:
    """Score every run with every evaluator (one model in memory at a time) and record the results per run."""
    from omegaconf import OmegaConf

    from rewardsds.eval.evaluators import evaluate, load, record

    for name, (ev, cfg) in configs.items():
        reward = load(ev, cfg, args.device)
        source = OmegaConf.to_container(cfg)
        for run in runs:
            value, values = evaluate(ev, reward, run["info"]["prompt"], run["paths"], args.batch_size)
            per_image = {str(p.relative_to(run["path"])): v for p, v in zip(run["paths"], values)}
            record(run["path"], ev, value, per_image, run["views"], source)
        del reward
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


def sweep_group(folder: Path) -> str:
    """The W&B group of a sweep folder: ``<date>/<time>`` for ``outputs/sweeps/<date>/<time>``, else its name."""
    parent = folder.parent.name
    return f"{parent}/{folder.name}" if len(parent) == 10 and parent[4] == "-" and parent[7] == "-" else folder.name


def _push_wandb(folder: Path, runs: list, summary: dict, curves: list, sheets: list, args: argparse.Namespace) -> None:
    """Eval results into each W&B run's summary; the sweep's tables and figures as one eval run."""
    from rewardsds.eval.aggregate import STAT_COLUMNS, metric_slug
    from rewardsds.eval.sheets import tile_image
    from rewardsds.loggers import log_eval_tables, push_eval_summary, resolve_wandb_mode, run_tags

    records = [r for r in runs if isinstance(r.info.get("wandb"), dict) and r.info["wandb"].get("id")]
    if args.wandb == "off" or (args.wandb == "auto" and not records):
        return
    pushed = [i for i in (push_eval_summary(r.path) for r in records) if i]
    first = records[0].info["wandb"] if records else {}
    mode = first.get("mode") or resolve_wandb_mode("auto")[0]
    keys, metrics = summary["group_by"], summary["metrics"]
    run_rows = []
    for r in runs:
        image = tile_image(r.path)
        record = r.info.get("wandb") if isinstance(r.info.get("wandb"), dict) else {}
        run_rows.append([str(r.path.relative_to(folder)) or ".", record.get("id"), *(r.settings.get(k) for k in keys),
                         r.info.get("prompt"), r.info.get("seed"), *(r.values.get(m) for m in metrics),
                         {"image": image} if image else None])
    tables = {
        "eval/runs": (["run", "wandb_id", *keys, "prompt", "seed", *metrics, "image"], run_rows),
        "eval/summary": ([*keys, "runs", *(f"{m}/{s}" for m in metrics for s in STAT_COLUMNS)],
                         [[row[k] for k in keys] + [row["runs"]] + [row[f"{m}/{s}"] for m in metrics for s in STAT_COLUMNS]
                          for row in summary["rows"]]),
    }
    if summary["paired"]:
        from rewardsds.eval.aggregate import PAIRED_COLUMNS

        tables["eval/paired"] = ([*keys, *PAIRED_COLUMNS], [[p[k] for k in keys] + [p[c] for c in PAIRED_COLUMNS]
                                                           for p in summary["paired"]])
    images = {f"eval/curves/{metric_slug(c['key'])}": c["png"] for c in curves}
    images.update({f"eval/sheets/{s.path.stem}": s.path for s in sheets})
    common = set.intersection(*(set(run_tags(r.info)) for r in runs)) if runs else set()
    group = first.get("group") or sweep_group(folder)
    eval_id = log_eval_tables(tables, project=first.get("project") or args.wandb_project, entity=first.get("entity"),
                              group=group, mode=mode, save_dir=folder, name=f"eval {group}",
                              tags=sorted(common) + ["eval"], images=images,
                              config={"folder": str(folder), "group_by": keys, "baseline": summary["baseline"]})
    print(f"W&B: eval results in the summaries of {len(pushed)} runs; tables of the sweep in run {eval_id} "
          f"(group {group}, {mode})")


if __name__ == "__main__":
    sys.exit(main())
