"""``compare.runs``: labelled variants of one setup on the same seeds, then a table and a side-by-side image.

Used by ``experiment=demo`` (analytic prior, CPU): for a given seed every variant sees the same
timesteps and the same first noises, so differences come from the variants alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from rewardsds.overrides import check_variant_overrides, compare_base, variant_overrides
from rewardsds.utils.io import write_image, write_json, write_text
from rewardsds.viz import side_by_side, upscale


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@contextlib.contextmanager
def _own_log_file(path: Path) -> Iterator[None]:
    """While a variant runs, what it logs also goes to its own folder's ``train.log`` (stamped like the run's log file),
    so the variant's folder, which can be resumed alone, holds its whole record; the compare run's log keeps all."""
    root = logging.getLogger()
    stamped = next((h.formatter for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(stamped or logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def run_compare(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from PIL import Image

    from rewardsds.train import job_overrides, train

    OmegaConf.to_object(cfg.compare)  # the variant labels and seeds (each sub-run validates the rest)
    variants = {str(k): str(v).split() for k, v in cfg.compare.runs.items()}
    strategies = list(variants)
    seeds = list(cfg.compare.seeds) or [int(cfg.seed)]
    base = compare_base(job_overrides())
    check_variant_overrides(base, variants)
    rows: list[dict[str, Any]] = []
    images: dict[tuple[str, int], np.ndarray] = {}
    for strategy in strategies:
        for seed in seeds:
            overrides = variant_overrides(base, variants[strategy], seed)
            sub = compose(config_name="config", overrides=overrides, return_hydra_config=True)  # its choices name the variant's options
            sub_dir = run_dir / f"{strategy}_seed{seed}"
            print(f"rewardsds compare: {strategy} ({' '.join(variants[strategy])}) seed={seed} -> {sub_dir}")
            # recorded with the variant's own overrides: its job command and its resume compose this variant alone
            with _own_log_file(sub_dir / "train.log"):
                m = train(sub, sub_dir, overrides=overrides)
            rows.append({"strategy": strategy, "seed": seed, **{k: m.get(k) for k in ("final/reward", "final/log_prob", "final/modes", "wall_time_s", "step_time_median_s", "evals_per_step_mean")}})
            finals = sorted((sub_dir / "final").glob("image_*.png"))
            if finals:
                images[(strategy, seed)] = upscale(np.asarray(Image.open(finals[0]).convert("RGB")), 128)

    summary = []
    for strategy in strategies:
        sel = [r for r in rows if r["strategy"] == strategy]
        rm, rs = _mean_std([r["final/reward"] for r in sel])
        lm, ls = _mean_std([r["final/log_prob"] for r in sel])
        tm, _ = _mean_std([r["step_time_median_s"] for r in sel])
        modes: dict[str, int] = {}
        for r in sel:
            for mname in r.get("final/modes") or []:
                modes[mname] = modes.get(mname, 0) + 1
        summary.append({"strategy": strategy, "reward_mean": rm, "reward_std": rs, "log_prob_mean": lm, "log_prob_std": ls,
                        "step_time_s": tm, "modes": modes, "seeds": len(sel)})

    lines = [
        f"prompt: {cfg.prompt!r}; seeds: {seeds}; steps: {cfg.steps} (each variant's own settings: compare.runs)",
        "",
        f"| variant | final reward{' (mean +- std over seeds)' if len(seeds) > 1 else ''} | log-density per pixel | step time (ms) | final modes |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        modes = ", ".join(f"{k} x{v}" for k, v in sorted(s["modes"].items()))
        spread = (lambda std, f: f" +- {std:{f}}") if s["seeds"] > 1 else (lambda std, f: "")  # one seed has no spread
        lines.append(f"| {s['strategy']} | {s['reward_mean']:.4f}{spread(s['reward_std'], '.4f')} | {s['log_prob_mean']:.3f}"
                     f"{spread(s['log_prob_std'], '.3f')} | {1000 * s['step_time_s']:.1f} | {modes} |")
    table = "\n".join(lines)
    print("\n" + table + "\n")
    write_text(run_dir / "compare.md", table + "\n")
    write_json(run_dir / "compare.json", {"rows": rows, "summary": summary})
    if images:
        cols = []
        for strategy in strategies:
            col = [images[(strategy, s)] for s in seeds if (strategy, s) in images]
            cols.append(np.concatenate([np.pad(c, ((0, 4), (0, 0), (0, 0)), constant_values=255) for c in col], axis=0))
        write_image(run_dir / "side_by_side.png", side_by_side(cols, labels=strategies))
        print(f"side-by-side image: {run_dir / 'side_by_side.png'}")
    return {"rows": rows, "summary": summary}
