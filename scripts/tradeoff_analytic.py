"""Reward gain against step time for cheaper lookaheads, on the analytic prior (CPU, no weights).

Runs experiment=analytic for each variant over a few seeds and reports the mean final analytic reward, its gain
over plain SDS (N = 1), the log-density of the result, the median step time and the UNet evaluations per step.

    python scripts/tradeoff_analytic.py [--seeds 0,1,2,3] [--steps 150] [--out tradeoff.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "SDS (N=1)": ["strategy=none", "n_noises=1"],
    "RewardSDS N=8, K=15": ["strategy=min_max", "n_noises=8", "lookahead.steps=15"],
    "RewardSDS N=8, K=4": ["strategy=min_max", "n_noises=8", "lookahead.steps=4"],
    "RewardSDS N=8, K=1": ["strategy=min_max", "n_noises=8", "lookahead.steps=1"],
    "RewardSDS N=8, K=0 (one-step x0)": ["strategy=min_max", "n_noises=8", "lookahead.steps=0"],
    "RewardSDS N=8, K=15, prune to 4": ["strategy=min_max", "n_noises=8", "lookahead.steps=15", "lookahead.prune_to=4"],
    "RewardSDS N=4, K=15": ["strategy=min_max", "n_noises=4", "lookahead.steps=15"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import rewardsds.config  # noqa: F401
    from rewardsds.train import quiet_lightning, train

    quiet_lightning()
    seeds = [int(s) for s in args.seeds.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="tradeoff_"))
    rows = []
    for name, overrides in VARIANTS.items():
        runs = []
        for seed in seeds:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="config", overrides=["experiment=analytic", f"seed={seed}", f"steps={args.steps}", "logger=none",
                                                               "output.image_every=0", "output.video=false", "output.checkpoint_every=0",
                                                               "trainer.enable_progress_bar=false", *overrides])
            runs.append(train(cfg, tmp / f"{len(rows)}_{seed}"))
        rows.append((name, statistics.fmean(m["final/reward"] for m in runs), statistics.fmean(m["final/log_prob"] for m in runs),
                     statistics.fmean(m["step_time_median_s"] for m in runs) * 1000, statistics.fmean(m["evals_per_step_mean"] for m in runs),
                     sum(m["final/modes"] == ["blue_disk"] for m in runs)))
        print(f"{name}: done", flush=True)
    base = rows[0][1]
    lines = [f"analytic prior, prompt 'a disk', reward prefers blue; {args.steps} steps, seeds {seeds}, CPU", "",
             "| variant | final reward | gain over SDS | log-density / pixel | step (ms) | UNet evals / step | blue disk |",
             "|---|---|---|---|---|---|---|"]
    for name, r, lp, ms, ev, blue in rows:
        lines.append(f"| {name} | {r:.4f} | {r - base:+.4f} | {lp:.3f} | {ms:.1f} | {ev:.1f} | {blue}/{len(seeds)} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
