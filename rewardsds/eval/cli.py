"""``rewardsds-eval``: score finished runs with reward metrics and aggregate a sweep into tables and plots, offline.

Usage::

    rewardsds-eval outputs/sweep --metrics clip,aesthetic,image_reward,pickscore [--device cuda] \\
        [--batch-size 8] [--dtype fp32] [--override image_reward.checkpoint=/models/ImageReward] \\
        [--sources sources.yaml]
    rewardsds-eval outputs/sweep --metrics none        # tables of the training-time metrics only

Every folder below ``outputs/sweep`` that holds a ``metrics.json`` is a run. Finished runs
(``"status": "complete"``) are scored on ``eval/*.png`` (3D: fixed evaluation cameras, averaged per run)
or else ``final/*.png`` (2D). Each run gets ``eval_metrics.json`` (per-run means and per-image scores,
merged with earlier results), and the given folder gets ``eval.csv`` with one row per run: its path, its
prompt, the scalar settings found in its ``metrics.json`` (strategy, n_noises, seed, ...) and one
``eval/<metric>`` column per metric.

Then the runs are aggregated (:mod:`rewardsds.eval.aggregate`): ``summary.csv`` and ``summary.md`` hold one row
per combination of the swept keys (the override keys that differ between runs, or ``--group-by``), averaged over
seeds and prompts (``--over``), with mean and sample std of every ``final/*`` and ``eval/*`` metric and of the
cost of a run (``wall_time_s``, ``step_time_median_s``, ``evals_per_step_mean``, ``peak_memory_gb``).
``plots/<metric>_vs_n_noises.png`` (one line per strategy) and ``plots/<metric>_vs_wall_time.png`` show the
quality metrics. ``--metrics none`` skips scoring and aggregates what the runs (and earlier evaluations) wrote.
Everything is read from the run folders; W&B is never needed.

Metric models are the reward options of ``conf/reward/<metric>.yaml``, so their sources are set the same
way as for training: ``--override <metric>.<field>=<value>`` (repeatable; a leading ``reward.`` is
accepted) or a YAML mapping ``{<metric>: {<field>: <value>}}`` passed with ``--sources``. Command-line
overrides win over the YAML file. Evaluation defaults to ``dtype=fp32`` and ``pil_exact=true`` (the
reference evaluation scripts' PIL preprocessing); both can be overridden per metric.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

FIRST_COLUMNS = ("strategy", "n_noises", "seed")
_SKIP_KEYS = ("prompt", "status")


def default_conf_dir() -> Path:
    """The project's ``conf/`` folder (next to the ``rewardsds`` package in a checkout or editable install)."""
    import rewardsds

    return Path(rewardsds.__file__).resolve().parent.parent / "conf"


# ----------------------------------------------------------------------------------------- runs
def find_runs(folder: Path) -> list[Path]:
    """Run folders (holding ``metrics.json``) below ``folder``, sorted."""
    from rewardsds.eval.aggregate import find_runs as _find

    return _find(folder)


def run_images(run: Path) -> tuple[str, list[Path]]:
    """(``"eval"`` or ``"final"``, PNG paths) of a run: evaluation views if any, else final images."""
    for sub in ("eval", "final"):
        files = sorted((run / sub).glob("*.png"))
        if files:
            return sub, files
    return "", []


def load_png(path: Path) -> torch.Tensor:
    """[1, 3, H, W] float in [0, 1] (uint8 / 255, so PIL-exact metrics see the file's exact values)."""
    from PIL import Image

    from rewardsds.rewards.preprocess import from_pil

    with Image.open(path) as im:
        return from_pil([im.convert("RGB")])


# ----------------------------------------------------------------------------------------- metric configs
def parse_overrides(items: Sequence[str], metrics: Sequence[str]) -> dict[str, list[str]]:
    """``<metric>.<field>=<value>`` strings -> {metric: ["<field>=<value>", ...]}."""
    out: dict[str, list[str]] = {m: [] for m in metrics}
    for item in items:
        key, sep, value = item.partition("=")
        if key.startswith("reward."):
            key = key[len("reward."):]
        metric, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise SystemExit(f"--override {item!r}: expected <metric>.<field>=<value>, "
                             "e.g. image_reward.checkpoint=/models/ImageReward")
        if metric not in out:
            raise SystemExit(f"--override {item!r}: metric {metric!r} is not in --metrics {','.join(metrics)}")
        out[metric].append(f"{field}={value}")
    return out


def metric_config(metric: str, conf_dir: Path, *, dtype: Optional[str], sources: dict, overrides: list[str]):
    """Compose ``conf/reward/<metric>.yaml`` and apply evaluation defaults, YAML sources and overrides.

    Returns:
        the ``reward`` config node (typed by its schema), validated.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import rewardsds.config as config  # registers the schemas

    if not (conf_dir / "reward" / f"{metric}.yaml").is_file():
        options = sorted(p.stem for p in (conf_dir / "reward").glob("*.yaml"))
        raise SystemExit(f"--metrics: unknown metric {metric!r}; options in {conf_dir / 'reward'}: {', '.join(options)}")
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name=f"reward/{metric}").reward
    defaults: dict[str, Any] = {}
    if "dtype" in cfg and dtype:
        defaults["dtype"] = dtype
    if "pil_exact" in cfg:
        defaults["pil_exact"] = True
    cfg = OmegaConf.merge(cfg, defaults, sources.get(metric) or {}, OmegaConf.from_dotlist(overrides))
    config.validate(cfg)  # runs __post_init__ checks (ConfigError names the key)
    return cfg


# ----------------------------------------------------------------------------------------- scoring
def score_run(reward, prompt: str, paths: list[Path], batch_size: int) -> list[float]:
    """Scores of the images at ``paths`` (batched by image size)."""
    images = [load_png(p) for p in paths]
    scores: list[Optional[float]] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
    for idx in by_size.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            batch = torch.cat([images[i] for i in chunk])
            out = reward(batch, prompt).tolist()
            for i, s in zip(chunk, out):
                scores[i] = float(s)
    return scores  # type: ignore[return-value]


def _scalar_settings(metrics: dict) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in _SKIP_KEYS and isinstance(v, (str, int, float, bool))}


def write_csv(path: Path, rows: list[dict], metric_names: Sequence[str]) -> None:
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
    p.add_argument("--metrics", default="clip,aesthetic,image_reward",
                   help="comma-separated reward options of conf/reward (clip, aesthetic, image_reward, pickscore, hpsv2), "
                        "or none to only aggregate the metrics the runs wrote")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="fp32", help="model precision for every metric (auto, fp32, fp16, bf16)")
    p.add_argument("--override", action="append", default=[], metavar="METRIC.FIELD=VALUE",
                   help="set a metric's config field, e.g. image_reward.checkpoint=/models/ImageReward")
    p.add_argument("--sources", type=Path, help="YAML mapping {metric: {field: value}} of model sources")
    p.add_argument("--include-incomplete", action="store_true", help="also score runs whose status is not complete")
    p.add_argument("--conf-dir", type=Path, default=None, help="the project's conf/ folder (default: next to the package)")
    p.add_argument("--group-by", default=None, metavar="KEY,KEY",
                   help="override keys that define a table row (default: every key whose value differs between runs)")
    p.add_argument("--over", default="seed,prompt,prompt_index", metavar="KEY,KEY",
                   help="keys averaged over rather than grouped by (default: seed,prompt,prompt_index)")
    p.add_argument("--digits", type=int, default=4, help="decimals in summary.md")
    p.add_argument("--no-plots", action="store_true", help="skip plots/*.png")
    return p


def _keys(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from omegaconf import OmegaConf

    from rewardsds.eval import aggregate

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise SystemExit("--metrics is empty; e.g. --metrics clip,aesthetic,image_reward (or none)")
    if metrics == ["none"]:
        metrics = []
    elif "none" in metrics:
        raise SystemExit(f"--metrics {args.metrics}: none cannot be combined with metrics")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size = {args.batch_size}: must be >= 1")
    if args.digits < 0:
        raise SystemExit(f"--digits = {args.digits}: must be >= 0")
    folder = args.folder.resolve()
    if not folder.is_dir():
        raise SystemExit(f"{args.folder}: no such folder")
    configs = {}
    if metrics:
        conf_dir = (args.conf_dir or default_conf_dir()).resolve()
        if not (conf_dir / "reward").is_dir():
            raise SystemExit(f"--conf-dir {conf_dir}: has no reward/ group; pass the project's conf/ folder")
        sources = OmegaConf.to_container(OmegaConf.load(args.sources)) if args.sources else {}
        unknown = sorted(set(sources) - set(metrics))
        if unknown:
            raise SystemExit(f"--sources {args.sources}: metrics {unknown} are not in --metrics {','.join(metrics)}")
        overrides = parse_overrides(args.override, metrics)
        configs = {m: metric_config(m, conf_dir, dtype=args.dtype, sources=sources, overrides=overrides[m])
                   for m in metrics}
    elif args.override or args.sources:
        raise SystemExit("--override/--sources configure metric models; they need --metrics <names>")

    runs, skipped = [], []
    for run in find_runs(folder):
        info = json.loads((run / "metrics.json").read_text())
        views, paths = run_images(run)
        if info.get("status") != "complete" and not args.include_incomplete:
            skipped.append((run, f"status {info.get('status')!r}"))
        elif metrics and not paths:
            skipped.append((run, "no eval/*.png or final/*.png"))
        elif metrics and not isinstance(info.get("prompt"), str):
            skipped.append((run, "metrics.json has no prompt"))
        else:
            runs.append({"path": run, "info": info, "views": views, "paths": paths, "scores": {}})
    for run, why in skipped:
        print(f"skipped {run.relative_to(folder)}: {why}", file=sys.stderr)
    if not runs:
        print(f"no finished runs{' with images' if metrics else ''} under {folder}", file=sys.stderr)
        return 1

    if metrics:
        score_runs(runs, metrics, configs, args)

    rows = []
    for run in runs:
        out_path = run["path"] / "eval_metrics.json"
        result = json.loads(out_path.read_text()) if out_path.is_file() else {}
        rows.append({"run": str(run["path"].relative_to(folder)) or ".", "prompt": run["info"].get("prompt", ""),
                     "settings": _scalar_settings(run["info"]), "images": len(run["paths"]),
                     "metrics": result.get("metrics", {})})
    metric_columns = list(metrics) + sorted({m for r in rows for m in r["metrics"]} - set(metrics))
    write_csv(folder / "eval.csv", rows, metric_columns)
    if metrics:
        width = max(len(r["run"]) for r in rows)
        print(f"{'run':<{width}}  " + "  ".join(f"{m:>12}" for m in metrics))
        for r in rows:
            print(f"{r['run']:<{width}}  " + "  ".join(f"{r['metrics'][m]:>12.4f}" for m in metrics))
    print(f"wrote {folder / 'eval.csv'} ({len(rows)} runs, {len(skipped)} skipped)")

    loaded = [aggregate.load_run(run["path"]) for run in runs]
    summary = aggregate.summarize(folder, loaded, group_by=_keys(args.group_by), over=_keys(args.over) or [],
                                  digits=args.digits, plots=not args.no_plots)
    print()
    print(summary["markdown"])
    print(f"wrote {folder / 'summary.csv'}, {folder / 'summary.md'}"
          + (f" and {len(summary['plots'])} plots in {folder / 'plots'}" if summary["plots"] else ""))
    return 0


def score_runs(runs: list[dict], metrics: Sequence[str], configs: dict, args: argparse.Namespace) -> None:
    """Score every run's images with every metric (one model in memory at a time); write ``eval_metrics.json``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for metric in metrics:
        reward = instantiate(configs[metric])
        reward.to(args.device)
        for run in runs:
            run["scores"][metric] = score_run(reward, run["info"]["prompt"], run["paths"], args.batch_size)
        del reward
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    for run in runs:
        out_path = run["path"] / "eval_metrics.json"
        previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
        means = {m: sum(s) / len(s) for m, s in run["scores"].items()}
        per_image = {m: {str(p.relative_to(run["path"])): s for p, s in zip(run["paths"], scores)}
                     for m, scores in run["scores"].items()}
        result = {
            "metrics": {**previous.get("metrics", {}), **means},
            "per_image": {**previous.get("per_image", {}), **per_image},
            "images": run["views"],
            "n_images": len(run["paths"]),
            "sources": {**previous.get("sources", {}),
                        **{m: OmegaConf.to_container(configs[m]) for m in metrics}},
        }
        out_path.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
