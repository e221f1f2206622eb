"""Selection agreement of faster lookaheads on the analytic prior (CPU, exact noise prediction, no weights).

Runs ``experiment=analytic`` (N = 8, 15-step lookahead, min_max) for each seed with the exact path and, at
every step, records the state the run is in (scene latents, t, the step's candidate noises). Each fast path
then scores the same candidates at the same states, and :mod:`rewardsds.eval.agreement` reports how often
its min_max top-2 and bottom-2 sets equal the exact path's. Paths: fewer lookahead steps (8, 4, 1, 0 = the
one-step x0 estimate), pruning to N/2 by the one-step reward, the reference's lookahead start (the grid point
below t, a different algorithm rather than a faster one), and bf16-rounded noise predictions (the analytic
prior computes in fp32; rounding its inputs and outputs to bf16 emulates a bf16 model's precision), alone and
with the candidates of steps below t = 250 ranked unrounded (``lookahead.fp32_below=250``).

    python scripts/agreement_analytic.py [--seeds 0,1,2,3] [--steps 50] [--out agreement_analytic.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from rewardsds.priors.analytic import AnalyticPrior  # noqa: E402


class BF16RoundedAnalyticPrior(AnalyticPrior):
    """The analytic prior with inputs and predictions rounded to bf16 (an emulation of a bf16 model's precision)."""

    exact: AnalyticPrior  # the unrounded prior (set after the copy)

    def predict_noise(self, x_t, t, text, camera=None):
        return super().predict_noise(x_t.to(torch.bfloat16).float(), t, text, camera).to(torch.bfloat16).float()

    def fp32_view(self) -> AnalyticPrior:
        """The unrounded prior: what ``lookahead.fp32_below`` ranks with (the emulated model's fp32 copy)."""
        return self.exact


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=50, help="steps of each exact run (each step is one draw)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("agreement_analytic.json"))
    ap.add_argument("--overrides", nargs="*", default=[])
    args = ap.parse_args(argv)

    import benchmark as B
    from rewardsds.candidates import CandidateEngine
    from rewardsds.config import validate
    from rewardsds.eval.agreement import Draw, collect_rewards, compare_selections, engine_selector
    from rewardsds.system import DistillationSystem
    from rewardsds.train import build_components

    tmp = Path(tempfile.mkdtemp(prefix="agreement_analytic_"))
    seeds = [int(s) for s in args.seeds.split(",")]
    over = ["experiment=analytic", f"n_noises={args.n}", f"steps={args.steps}", "output.image_every=0", "output.video=false",
            "output.checkpoint_every=0", *args.overrides]
    draws_by_seed, exact_by_seed, systems = {}, {}, {}
    t0 = time.perf_counter()
    for seed in seeds:
        cfg = B.compose([*over, f"seed={seed}"])
        typed = validate(cfg)
        system = DistillationSystem(typed, run_dir=tmp / f"seed{seed}", **build_components(typed))
        system.prepare(torch.device("cpu"))
        opt = system.configure_optimizers()
        draws, exact = [], []
        for step in range(args.steps):
            _, _, latents = system.scene_latents(step)
            draws.append(Draw(seed=seed, step=step, t=system.timesteps.sample(step, seed), latents=latents.detach().clone()))
            res = system.run_step(step, opt)  # the exact path itself moves the scene
            exact.append(res.loss.candidates.rewards.detach().float().cpu())
        draws_by_seed[seed], exact_by_seed[seed], systems[seed] = draws, exact, system
    cfg0 = validate(B.compose([*over, f"seed={seeds[0]}"]))
    la = cfg0.lookahead
    base = dict(lookahead_steps=la.steps, lookahead_guidance=la.guidance_scale, lookahead_grid=la.grid, lookahead_start=la.start)
    prior, reward = systems[seeds[0]].prior, systems[seeds[0]].reward
    rounded = copy.copy(prior)
    rounded.__class__ = BF16RoundedAnalyticPrior
    rounded.exact = prior
    paths = {
        "lookahead_8_steps": (prior, dict(base, lookahead_steps=8)),
        "lookahead_4_steps": (prior, dict(base, lookahead_steps=4)),
        "lookahead_1_step": (prior, dict(base, lookahead_steps=1)),
        "one_step_x0 (K=0)": (prior, dict(base, lookahead_steps=0)),
        f"prune_to_{args.n // 2}": (prior, dict(base, prune_to=args.n // 2)),
        "reference_start (grid point <= t)": (prior, dict(base, lookahead_start="grid")),
        "bf16_rounded_predictions (emulated)": (rounded, base),
        # the same, with the candidates of steps below t = 250 ranked on the unrounded prior (lookahead.fp32_below)
        "bf16_rounded, fp32 ranking below t=250 (emulated)": (rounded, dict(base, fp32_below=250)),
        # chunks of 2 candidates (4 inputs per call) decoded and scored beside the next chunk's lookahead
        "lookahead.overlap, chunks of 2": (prior, dict(base, overlap=True, chunk_size=4)),
    }
    text = prior.text_cond([cfg0.prompt], cfg0.negative_prompt)
    all_draws = [d for s in seeds for d in draws_by_seed[s]]
    all_exact = [r for s in seeds for r in exact_by_seed[s]]
    # the recorded rewards are the run's own; re-scoring with the run's engine reproduces them (a check of the setup)
    check = collect_rewards(engine_selector(systems[seeds[0]].engine, text, [cfg0.prompt], args.n), draws_by_seed[seeds[0]][:5])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(check, exact_by_seed[seeds[0]][:5])), "exact path not reproducible"
    out = {"experiment": "analytic", "overrides": over, "seeds": seeds, "steps_per_seed": args.steps, "n_noises": args.n,
           "lookahead": {k: str(getattr(v, "value", v)) for k, v in base.items()}, "paths": {}}
    rows = []
    collected = {}
    for name, (p, kw) in paths.items():
        kw = dict(kw)
        chunk = kw.pop("chunk_size", 0)
        eng = CandidateEngine(p, reward, B.lookahead_config(**kw), chunk_size=chunk, seed=0)
        collected[name] = collect_rewards(engine_selector(eng, text, [cfg0.prompt], args.n), all_draws)
    # Pruning mixes two estimators (full-lookahead rewards for the kept candidates, one-step rewards for the others),
    # which are not on one scale. This ranking puts every kept candidate above every pruned one (kept by their full
    # reward, pruned by their one-step reward), built here from the exact run's full rewards; the engine ranks pruned
    # candidates the same way (rewardsds.candidates.band_above), so this row and the prune_to row select alike.
    keep_n = args.n // 2
    ranked = []
    for full, one in zip(all_exact, collected["one_step_x0 (K=0)"]):
        keep = torch.sort(one, descending=True, stable=True).indices[:keep_n]
        r = one.clone()
        r[keep] = full[keep] + (one.max() - full[keep].min()).abs() + 1.0
        ranked.append(r)
    collected[f"prune_to_{keep_n}, kept above pruned, rebuilt from the exact run (check)"] = ranked
    for name, fast in collected.items():
        rep = compare_selections(all_exact, fast, 2, 2, all_draws)
        out["paths"][name] = rep.to_json(per_draw=False)
        low = [r["match"] for r in rep.per_draw if r["t"] < 250]
        high = [r["match"] for r in rep.per_draw if r["t"] >= 250]
        out["paths"][name]["agreement_t_below_250"] = sum(low) / len(low) if low else None
        out["paths"][name]["agreement_t_from_250"] = sum(high) / len(high) if high else None
        out["paths"][name]["mismatched_draws"] = [{k: r[k] for k in ("seed", "step", "t", "exact_top", "fast_top", "exact_bottom", "fast_bottom",
                                                                       "reward_spread", "regret")} for r in rep.per_draw if not r["match"]]
        lo, hi = rep.agreement_ci95
        rows.append(f"| {name} | {rep.agreement:.1%} ({lo:.0%}-{hi:.0%}) | {rep.top_agreement:.1%} | {rep.bottom_agreement:.1%} | "
                    f"{sum(low) / max(1, len(low)):.1%} ({len(low)}) | {sum(high) / max(1, len(high)):.1%} ({len(high)}) | {rep.rank_correlation:.3f} | "
                    f"{rep.reward_abs_err_over_spread:.3f} | {rep.regret_mean:.3f} / {rep.regret_max:.3f} |")
    out["seconds"] = time.perf_counter() - t0
    md = "\n".join([f"({len(seeds)} seeds x {args.steps} steps of an exact run, N = {args.n}, 15-step lookahead, min_max top-2 / bottom-2)", "",
                    "| fast path | both sets (95% interval) | top-2 | bottom-2 | both, t < 250 (draws) | both, t >= 250 (draws) | rank corr | "
                    "reward error / spread (median) | regret mean / max |", "|---|---|---|---|---|---|---|---|---|", *rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
