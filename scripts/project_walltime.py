"""Project the wall time of a whole run (paper_2d: 1000 steps; mvdream_nerf: 10000 steps) from measured steps.

Builds the experiment exactly as the CLI does (``rewardsds experiment=<name>``: the same config defaults, so on
CUDA the UNet is compiled with CUDA graphs and cached), with random full-size models (SD2.1-base or MVDream +
ImageReward; no downloads), then:

1. splits the run's steps into stages with one shape each: (reward on or off, render resolution, views per
   step). paper_2d has one stage; mvdream_nerf two (steps < 5000: RewardSDS N = 7 on 8 views at 64 px;
   then plain SDS on 4 views at 256 px);
2. per stage, runs ``--warmup`` steps at its first step index (compiles and CUDA-graph captures happen there;
   their excess over a steady step is reported as ``compile_s``) and times ``--samples`` steps spread evenly
   over the stage (their timesteps follow the run's schedule);
3. fits ``ms = a + b L`` per stage, with L the number of lookahead model calls at the step's timestep (it is
   what varies: t decides how many DDIM grid points lie below it), and sums that over every step of the stage;
4. names the samples far above a line that a few outliers cannot pull (``stalled_steps``: a one-off stall, which
   a least-squares fit would count as 1/samples of the stage) and projects the stage again without them
   (``projected_s_without_stalls``, ``projected_total_s_without_stalls``).

The projection is the time inside ``run_step`` (render, candidates, lookahead, decode, reward, loss, backward,
optimiser). It excludes Lightning's per-step logging, checkpoints, image/video writing and the final exports
(``train/step_time`` in a CLI run includes them: compare the two). Startup (model load and moving to the GPU)
is measured and reported apart, as is the compile time, which depends on the compile cache: run this twice to
see the cold and the warm figure.

    python scripts/project_walltime.py --experiment paper_2d --out walltime_paper_2d.json [--sd-folder DIR] [--image-reward-dir DIR]
    python scripts/project_walltime.py --experiment mvdream_nerf --out walltime_mvdream_nerf.json [--mvdream-dir DIR] [--image-reward-dir DIR]
    python scripts/project_walltime.py --experiment paper_2d --preset tiny --device cpu --samples 2 --warmup 1 --steps 20   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from rewardsds.utils.quiet import quiet_progress_bars  # noqa: E402

PROMPT = "a photo of a red fox sitting in the snow"
TARGETS = {"paper_2d": 180.0}  # the goal: at most 3 minutes on one H200


def lookahead_calls_at(system, step: int) -> int:
    """Model calls of the lookahead at ``step`` (0 when the reward is off or the strategy needs no lookahead)."""
    from rewardsds.ddim import lookahead_calls

    eng = system.engine
    if step >= system.reward_steps or not system.strategy.uses_reward:
        return 0
    if eng.lookahead_steps == 0:
        return 1
    return len(lookahead_calls(system.timesteps.sample(step, system.cfg.seed), eng.grid, eng.lookahead_cfg.start))


def stage_key(system, step: int) -> tuple:
    """What fixes a step's shapes: reward on/off and, for 3D, the render resolution and the views per step."""
    cams = system.camera_sampler
    if cams is None:
        return (step < system.reward_steps,)
    return (step < system.reward_steps, cams.resolution_at(step), cams.batch_size_at(step))


def stages(system, total: int) -> list[dict]:
    out: list[dict] = []
    for s in range(total):
        k = stage_key(system, s)
        if not out or out[-1]["key"] != k:
            out.append({"key": k, "start": s, "end": s + 1})
        else:
            out[-1]["end"] = s + 1
    return out


def overrides_for(args) -> list[str]:
    ckpt, tok = args.image_reward
    common = [f"experiment={args.experiment}", f"prompt={PROMPT}", "prior.local_files_only=true", f"reward.checkpoint={ckpt}",
              f"reward.tokenizer={tok}", "reward.local_files_only=true", "logger=none", "output.video=false"]
    if args.experiment == "mvdream_nerf":
        return common + [f"prior.pretrained={args.mvdream[0]}", f"prior.base_model={args.mvdream[1]}"]
    return common + [f"prior.pretrained={args.sd_folder}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True, choices=["paper_2d", "mvdream_nerf"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="sd21_base", choices=["sd21_base", "tiny"])
    ap.add_argument("--sd-folder", type=Path, default=None)
    ap.add_argument("--mvdream-dir", type=Path, default=None, help="a folder from rewardsds.testing.build_mvdream (mvdream/ and base/)")
    ap.add_argument("--image-reward-dir", type=Path, default=None)
    ap.add_argument("--samples", type=int, default=12, help="timed steps per stage")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each stage (compile, capture)")
    ap.add_argument("--steps", type=int, default=None, help="project a run of this many steps instead of the experiment's")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra config overrides (e.g. prior.compile=false)")
    args = ap.parse_args(argv)
    quiet_progress_bars()  # a device log holds the benchmark's lines, not a "Loading weights" bar per model load
    device = torch.device(args.device)

    import benchmark as B

    from rewardsds.config import validate
    from rewardsds.priors.compiled import compile_seconds
    from rewardsds.system import DistillationSystem
    from rewardsds.testing import build_mvdream, build_sd_pipeline
    from rewardsds.train import build_components

    tmp = Path(tempfile.mkdtemp(prefix="rewardsds_walltime_"))
    files = dict(device=args.device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
    if args.experiment == "mvdream_nerf":
        folder = args.mvdream_dir or tmp / "mvdream"
        if (folder / "mvdream" / "unet" / "config.json").is_file():
            args.mvdream = (folder / "mvdream", folder / "base")
        else:
            args.mvdream = build_mvdream(folder, args.preset, **files)
    elif args.sd_folder is None or not (args.sd_folder / "unet" / "config.json").is_file():
        args.sd_folder = build_sd_pipeline(args.sd_folder or tmp / "sd", args.preset, **files)
    args.image_reward = B.image_reward_files(args.image_reward_dir or tmp / "image_reward", args.preset)
    over = overrides_for(args) + (["trainer=gpu"] if device.type == "cuda" else ["trainer=cpu"]) + list(args.overrides)
    if args.steps:
        over.append(f"steps={args.steps}")
    cfg = B.compose(over)
    typed = validate(cfg)

    t0 = time.perf_counter()
    parts = build_components(typed)
    system = DistillationSystem(typed, run_dir=tmp / "run", **parts)
    system.prepare(device)
    system.to(device)
    opt = system.configure_optimizers()
    B.sync(device)
    startup_s = time.perf_counter() - t0
    total = int(typed.steps)
    prior = system.prior
    result: dict[str, Any] = {
        "experiment": args.experiment, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "preset": args.preset, "overrides": over, "steps": total, "startup_s": startup_s,
        "prior_compiled": type(getattr(prior, "_unet_call", None)).__name__ == "CompiledModule",
        "compile_mode": getattr(getattr(prior, "_unet_call", None), "mode", None),
        "compile_cache": str(getattr(getattr(prior, "_unet_call", None), "cache_dir", None)), "stages": []}
    print(f"{args.experiment}: {total} steps; startup {startup_s:.1f} s; compiled: {result['prior_compiled']}", flush=True)

    projected = projected_steady = 0.0
    for st in stages(system, total):
        a_, b_ = st["start"], st["end"]
        warm, compiled_before = [], compile_seconds()
        for s in range(a_, min(b_, a_ + args.warmup)):
            warm.append(B.timed(lambda: system.run_step(s, opt), device))
            print(f"  warm-up step {s}: {warm[-1]:.1f} s", flush=True)  # the first one compiles: say how long it took
        torch_compile_s = compile_seconds() - compiled_before  # Dynamo's own account of the warm-up's compiling
        n_samples = min(args.samples, b_ - a_)
        idx = sorted({int(round(a_ + (b_ - 1 - a_) * i / max(1, n_samples - 1))) for i in range(n_samples)})
        rows = []
        for s in idx:
            box = {}
            dt = B.timed(lambda: box.setdefault("res", system.run_step(s, opt)), device)
            c = box["res"].loss.candidates
            rows.append({"step": s, "t": int(box["res"].ctx.t), "lookahead_calls": lookahead_calls_at(system, s), "ms": 1000 * dt,
                         "evals": int(c.evals) if c is not None else 0})
        a, b = B.fit_line([r["lookahead_calls"] for r in rows], [r["ms"] for r in rows])
        calls = [lookahead_calls_at(system, s) for s in range(a_, b_)]
        stage_ms = sum(a + b * L for L in calls)
        # A one-off stall in a sample counts as 1/samples of the stage in the fit above: also project without stalls
        stalls = B.stalled_samples([r["lookahead_calls"] for r in rows], [r["ms"] for r in rows])
        kept = [r for i, r in enumerate(rows) if i not in stalls]
        a2, b2 = B.fit_line([r["lookahead_calls"] for r in kept], [r["ms"] for r in kept]) if stalls else (a, b)
        stage_ms_steady = sum(a2 + b2 * L for L in calls)
        steady = statistics.median(r["ms"] for r in rows)
        key = dict(zip(("reward_on", "resolution", "views_per_step"), st["key"]))
        rec = {**key, "start": a_, "end": b_, "steps": b_ - a_, "fit_ms": {"a": a, "b_per_lookahead_call": b}, "mean_lookahead_calls": statistics.fmean(calls),
               "projected_s": stage_ms / 1000, "stalled_steps": [rows[i]["step"] for i in stalls],
               "fit_ms_without_stalls": {"a": a2, "b_per_lookahead_call": b2}, "projected_s_without_stalls": stage_ms_steady / 1000,
               "sampled_median_ms": steady, "mean_sampled_x_steps_s": statistics.fmean(r["ms"] for r in rows) * (b_ - a_) / 1000,
               "warmup_ms": [1000 * w for w in warm], "samples": rows,
               # the first step's excess over a steady step at its timestep (the fit without stalls): compile and
               # CUDA-graph capture
               "compile_s": max(0.0, warm[0] - (a2 + b2 * calls[0]) / 1000) if warm else 0.0, "torch_compile_s": torch_compile_s}
        result["stages"].append(rec)
        projected += stage_ms / 1000
        projected_steady += stage_ms_steady / 1000
        print(f"  stage {key} steps {a_}..{b_ - 1}: {a:.1f} ms + {b:.1f} ms per lookahead call (mean {rec['mean_lookahead_calls']:.1f}) "
              f"-> {rec['projected_s']:.0f} s; first step {1000 * warm[0] if warm else float('nan'):.0f} ms", flush=True)
        if stalls:
            print(f"    stalled samples at steps {rec['stalled_steps']} ({', '.join('%.0f' % rows[i]['ms'] for i in stalls)} ms); "
                  f"without them: {a2:.1f} ms + {b2:.1f} ms per call -> {stage_ms_steady / 1000:.0f} s", flush=True)
    compile_s = sum(s["compile_s"] for s in result["stages"])
    result.update({"projected_steps_s": projected, "compile_s": compile_s, "projected_total_s": projected + startup_s + compile_s,
                   "projected_total_s_without_stalls": projected_steady + startup_s + compile_s,
                   "excluded": "per-step logging, checkpoints, image/video writing, final exports (see the CLI's train/step_time)"})
    target: Optional[float] = TARGETS.get(args.experiment) if total == {"paper_2d": 1000}.get(args.experiment) else None
    if target is not None:
        result["target_s"] = target
        result["meets_target"] = result["projected_total_s"] <= target
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{args.experiment}: steps {projected:.0f} s + startup {startup_s:.0f} s + compile {compile_s:.0f} s = "
          f"{result['projected_total_s']:.0f} s ({result['projected_total_s'] / 60:.1f} min)"
          + (f"; without stalled samples {result['projected_total_s_without_stalls'] / 60:.1f} min"
             if result["projected_total_s_without_stalls"] != result["projected_total_s"] else "")
          + (f"; target {target:.0f} s: {'met' if result['meets_target'] else 'missed'}" if target else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
