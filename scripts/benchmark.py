"""Benchmark one optimisation step of SDS and RewardSDS, against our own plain implementation, in one run.

Builds the full-size Stable Diffusion 2.1-base architecture and the ImageReward architecture with random
weights (no downloads), runs a fixed seeded sequence of timesteps through the very code of a training run
(``DistillationSystem.run_step``: render -> candidates -> lookahead -> decode -> reward -> weights -> loss ->
backward -> AdamW), and reports per configuration the step time (median, min, max), the peak memory and the
prior evaluations per step (single-sample UNet calls; a CFG pair counts 2):

- ``sds``: strategy none, N = 1 (plain SDS), timed interleaved with a bare UNet call at batch 2 for the 1.2x target;
- ``reward_image_reward``: ImageReward alone on a batch of 8 images of 512x512 (the 15 ms target);
- ``rewardsds``: min_max over N in --n and lookahead grid K in --k (K = 0: one-step x0 estimate);
- ``plain``: rewardsds.reference.plain_rewardsds_step, fp32, candidates one by one, the reward's PIL path,
  on the same timesteps (the speed-up of the fast path is a ratio measured in the same process);
- ``lookahead_mfu``: the lookahead's UNet calls alone at N = 8 from t = 979 (16 calls of 2N inputs), with
  model FLOPs counted once for the SD2.1 UNet at 64x64 (torch.utils.flop_counter) and the device's peak;
- cheaper lookaheads: tiny decode (a random AutoencoderTiny), candidate pruning;
- ``mvdream`` (--mvdream): one RewardSDS step with N = 7, 4 views, the 15-point 3D lookahead, batched vs
  candidates one at a time as the 3D reference does.

Usage (GPU, about 6 minutes on an H100)::

    python scripts/benchmark.py --out bench.json [--compile [--compile-mode reduce-overhead]] [--mvdream] [--n 4,8,10] [--k 0,1,4,15]

With ``--compile`` the UNet is ``torch.compile``-d (``--compile-mode``; reduce-overhead replays CUDA graphs of the
fixed-shape lookahead) and so is the reward; ``compile_s_unet`` is the first call at batch 2 and every config's
``warmup_ms`` holds its warm-up steps, where the compiles and graph captures of its own shapes happen, so the
measured steps are steady-state.

``--preset tiny --device cpu --steps 2 --warmup 1`` runs the same code on small random models (a smoke test).
Results go to ``--out`` (JSON) and a markdown table on stdout (and ``--out`` with ``.md``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a photo of a red fox sitting in the snow"
# Dense bf16 tensor-core peaks (no sparsity), for MFU.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(name: str) -> Optional[float]:
    for key, v in PEAK_BF16.items():
        if key in name:
            return v
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def stats(times: list[float]) -> dict[str, float]:
    ms = [1000 * t for t in times]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


# ----------------------------------------------------------------------------------------- building
def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import rewardsds.config  # noqa: F401  (registers the schemas)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


def build_reward(preset: str, device: torch.device, fast: bool, compile: bool, tmp: Path):
    """ImageReward at full size (or tiny) with random weights; fast = bf16 tensor path, else fp32 + PIL path."""
    from rewardsds.rewards.image_reward import ImageReward, load_image_reward_tokenizer
    from rewardsds.rewards.random_init import build_random_image_reward_model, write_bert_vocab

    size = "full" if preset == "sd21_base" else "tiny"
    model = build_random_image_reward_model(size, device=device)
    vocab = model.text.config.vocab_size - 2
    tok = load_image_reward_tokenizer(str(write_bert_vocab(tmp / f"bert_{size}", vocab, PROMPT.lower().split())), local_files_only=True)
    dtype = "bf16" if (fast and device.type == "cuda") else "fp32"
    r = ImageReward.from_parts(model, tok, dtype=dtype, pil_exact=not fast, compile=compile and fast)
    return r.to(device)


def build_system(cfg, prior, reward, device, run_dir: Path):
    from hydra.utils import instantiate

    from rewardsds.config import validate
    from rewardsds.system import DistillationSystem

    typed = validate(cfg)
    sys_ = DistillationSystem(typed, prior=prior, reward=reward, strategy=instantiate(cfg.strategy), loss=instantiate(cfg.loss),
                              representation=instantiate(cfg.representation), run_dir=run_dir)
    sys_.prepare(device)
    sys_.to(device)
    opt = sys_.configure_optimizers()
    return sys_, opt


def run_steps(system, opt, steps: int, warmup: int, device: torch.device, paired: Optional[Callable[[], Any]] = None) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` ones. With ``paired``, that call is timed right after each
    step too (interleaved, so both see the same machine state; host-bound eager timings drift between runs)."""
    times, evals, warm, paired_times = [], [], [], []
    for step in range(warmup + steps):
        res = None

        def one():
            nonlocal res
            res = system.run_step(step, opt)

        dt = timed(one, device)
        if step < warmup:
            warm.append(1000 * dt)  # the first one holds any compile / CUDA-graph capture of this config's shapes
        else:
            times.append(dt)
            c = res.loss.candidates
            evals.append(int(c.evals) if c is not None else 0)
            if paired is not None:
                paired_times.append(timed(paired, device))
    extra = {"paired_bare_unet_batch2": stats(paired_times)} if paired_times else {}
    if any(evals):  # per-step time over UNet evaluations: comparable across timestep sets (K > 0 varies with t)
        extra["ms_per_eval_median"] = statistics.median(1000 * t / e for t, e in zip(times, evals) if e)
    return {**stats(times), **extra, "warmup_ms": warm, "evals_per_step": statistics.fmean(evals), "timesteps": [system.timesteps.sample(s, system.cfg.seed) for s in range(warmup, warmup + steps)]}


# ----------------------------------------------------------------------------------------- sections
def bench_fast(args, prior, reward, device, tmp, results, save: Callable[[], None] = lambda: None):
    base = [f"prompt={PROMPT}", f"prior.pretrained={args.sd_folder}", "logger=none", "reward=image_reward", "seed=0",
            f"steps={args.warmup + args.steps}", f"chunk_size={args.chunk_size}"]
    configs = [("sds", 1, None, ["strategy=none", "n_noises=1"])]
    for n in args.n:
        for k in args.k:
            configs.append((f"rewardsds_n{n}_k{k}", n, k, ["strategy=min_max", f"n_noises={n}", f"lookahead.steps={k}"]))
    n_ref = 8 if 8 in args.n else args.n[0]
    if not args.no_prune:
        configs.append((f"rewardsds_n{n_ref}_k15_prune{n_ref // 2}", n_ref, 15, ["strategy=min_max", f"n_noises={n_ref}", "lookahead.steps=15",
                                                                              f"lookahead.prune_to={n_ref // 2}"]))
    if args.tiny_vae:
        configs.append((f"rewardsds_n{n_ref}_k15_tinydecode", n_ref, 15, ["strategy=min_max", f"n_noises={n_ref}", "lookahead.steps=15",
                                                                          "lookahead.decode=tiny", f"prior.tiny_vae={args.tiny_vae_path}"]))
    for name, n, k, extra in configs:
        reset_peak(device)
        system, opt = build_system(compose(base + extra + ([f"steps={args.warmup + 4 * args.steps}"] if name == "sds" else [])),
                                   prior, reward, device, tmp / name)
        # SDS against a bare UNet call at batch 2, interleaved and with more samples (both are short and host-bound in eager mode)
        r = (run_steps(system, opt, 4 * args.steps, args.warmup, device, paired=bare_unet_call(prior, device)) if name == "sds"
             else run_steps(system, opt, args.steps, args.warmup, device))
        r.update({"n_noises": n, "lookahead_steps": k, "peak_memory_gb": peak_gb(device), "chunk_size": system.engine.chunk_size(system.representation.latents)})
        results["configs"][name] = r
        print(f"{name:32s} {r['median_ms']:9.1f} ms  evals {r['evals_per_step']:6.1f}  peak {r['peak_memory_gb'] or 0:.2f} GB", flush=True)
        save()  # partial results survive a time limit
        del system, opt
        gc.collect()


def bare_unet_call(prior, device) -> Callable[[], Any]:
    """One CFG-sized UNet call (batch 2, the prior's dtype and layout) with nothing around it."""
    x = torch.randn(2, *prior.latent_shape, device=device)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    emb = prior.encode_text([PROMPT, ""])

    def call():
        with torch.no_grad():
            return prior.predict_noise(x, t, emb)

    return call


def bench_bare_unet(prior, device, results, iters: int):
    call = bare_unet_call(prior, device)
    for _ in range(3):
        call()
    results["bare_unet_batch2"] = stats([timed(call, device) for _ in range(iters)])


def bench_reward(reward, device, results, batch: int = 8, size: int = 512, iters: int = 20):
    """The reward alone: ``batch`` images of ``size``^2 scored as the training loop does (tensor path, cached prompt)."""
    images = torch.rand(batch, 3, size, size, device=device)
    prompts = [PROMPT] * batch
    for _ in range(3):
        reward(images, prompts, check=False)
    times = [timed(lambda: reward(images, prompts, check=False), device) for _ in range(iters)]
    results["reward_image_reward"] = {**stats(times), "batch": batch, "size": size,
                                      "dtype": str(getattr(reward, "dtype_option", "")), "compile": bool(getattr(reward, "_forward", None) is not getattr(reward, "model", None))}


def unet_flops_per_sample(prior, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *prior.latent_shape, device=device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)
    emb = prior.encode_text([PROMPT])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        prior.predict_noise(x, t, emb)
    return float(fc.get_total_flops())


def bench_lookahead_mfu(prior, device, results, n: int = 8, t: int = 979, iters: int = 3):
    from rewardsds.candidates import CandidateEngine

    eng = CandidateEngine(prior, None, lookahead_steps=15, lookahead_guidance=7.5, lookahead_grid="leading", lookahead_start="exact_t")
    text = prior.text_cond([PROMPT], "")
    z = torch.randn(1, *prior.latent_shape, device=device)
    cands = eng.draw(z, t, n, step=0)
    eng.lookahead(cands, text)  # warm-up
    before = cands.evals
    times = [timed(lambda: eng.lookahead(cands, text), device) for _ in range(iters)]
    evals = (cands.evals - before) // iters
    flops = unet_flops_per_sample(prior, device)
    med = statistics.median(times)
    achieved = evals * flops / med
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name)
    results["lookahead_mfu"] = {
        "n_noises": n, "t": t, "unet_inputs": evals, "median_ms": 1000 * med, "unet_gflops_per_sample": flops / 1e9,
        "achieved_tflops": achieved / 1e12, "peak_tflops": peak / 1e12 if peak else None, "mfu": achieved / peak if peak else None,
    }


def bench_plain(args, prior_fp32, reward_plain, device, results, n: int, k: int):
    from rewardsds.reference import plain_rewardsds_step
    from rewardsds.schedules import Schedule, TimestepSampler
    from rewardsds.strategies import MinMaxStrategy

    sampler = TimestepSampler(Schedule(0.02), Schedule(0.98), prior_fp32.num_train_timesteps)
    z = torch.nn.Parameter(torch.randn(1, *prior_fp32.latent_shape, device=device))
    opt = torch.optim.AdamW([z], lr=0.01, betas=(0.9, 0.99), eps=1e-15, weight_decay=0.0)
    text = prior_fp32.text_cond([PROMPT], "")
    times, evals = [], []
    for step in range(args.warmup + args.plain_steps):
        out = {}

        def one():
            res = plain_rewardsds_step(prior_fp32, reward_plain, MinMaxStrategy(), z, sampler.sample(step, 0), n, step, 0, text, PROMPT,
                                       guidance_scale=100.0, lookahead_steps=k, lookahead_guidance=7.5)
            opt.zero_grad()
            res.loss.backward()
            opt.step()
            out["evals"] = res.evals

        dt = timed(one, device)
        if step >= args.warmup:
            times.append(dt)
            evals.append(out["evals"])
    results["configs"][f"plain_n{n}_k{k}"] = {**stats(times), "evals_per_step": statistics.fmean(evals), "n_noises": n, "lookahead_steps": k,
                                              "ms_per_eval_median": statistics.median(1000 * t / e for t, e in zip(times, evals) if e),
                                              "precision": "fp32", "reward_preprocessing": "PIL"}
    print(f"plain_n{n}_k{k:<24d} {statistics.median(times) * 1000:9.1f} ms  evals {statistics.fmean(evals):6.1f}", flush=True)


def bench_mvdream(args, device, tmp, results, reward_fast):
    """RewardSDS with MVDream: N = 7 candidates of 4 views, 15-point linspace lookahead from exactly t (CFG 50),
    rewards averaged over views; all candidates batched vs one candidate at a time (3D reference)."""
    from rewardsds.candidates import CandidateEngine
    from rewardsds.cameras import orbit_cameras
    from rewardsds.losses.sds import x0_recon_target
    from rewardsds.priors.mvdream import MVDreamPrior
    from rewardsds.strategies import MinMaxStrategy
    from rewardsds.testing import build_mvdream

    import math

    mv, base = build_mvdream(tmp / "mvdream", args.preset)
    prior = MVDreamPrior(pretrained=str(mv), base_model=str(base), dtype="bf16" if device.type == "cuda" else "fp32",
                         local_files_only=True).to(device)
    views, n = 4, 7
    cams = orbit_cameras(torch.full((views,), 15.0), torch.arange(views) * 90.0, torch.full((views,), 2.0),
                         torch.full((views,), math.radians(40)), 256, 256).to(device)
    text = prior.text_cond([PROMPT] * views, "blurry")
    latents = torch.randn(views, *prior.latent_shape, device=device, requires_grad=True)
    strategy = MinMaxStrategy()

    def step(batched: bool, s: int):
        eng = CandidateEngine(prior, reward_fast, 15, 50.0, "linspace", "exact_t", chunk_size=args.chunk_size, seed=0)
        t = 980 - 40 * (s % 20)
        if batched:
            c = eng.evaluate(latents, t, n, s, text, strategy, [PROMPT] * views, cams.c2w)
            tgt = x0_recon_target(prior, c.noisy, t, c.eps_cond, c.eps_uncond, 50.0, 0.5, views)
            evals = c.evals
        else:  # the reference's loop: one candidate (4 views) at a time, SDS target for each
            rewards, tgts, evals = [], [], 0
            for i in range(n):
                c = eng.evaluate(latents, t, 1, s * 1000 + i, text, strategy_none, [PROMPT] * views, cams.c2w)
                final = eng.lookahead(c, text, cams.c2w, first=(c.eps_cond, c.eps_uncond))
                imgs = eng.decode(final)
                rewards.append(reward_fast(imgs, [PROMPT] * views, check=False).mean())
                tgts.append(x0_recon_target(prior, c.noisy, t, c.eps_cond, c.eps_uncond, 50.0, 0.5, views))
                evals += c.evals
            strategy(torch.stack(rewards))
            tgt = torch.cat(tgts)
        loss = 0.5 * ((latents[None] - tgt.view(n, views, *latents.shape[1:])) ** 2).sum() / views
        loss.backward()
        return evals

    from rewardsds.strategies import NoStrategy

    strategy_none = NoStrategy()
    out = {}
    for mode in ("batched", "sequential"):
        reset_peak(device)
        times, evals = [], 0
        for s in range(args.warmup + args.mv_steps):
            box = {}
            dt = timed(lambda: box.setdefault("e", step(mode == "batched", s)), device)
            if s >= args.warmup:
                times.append(dt)
                evals = box["e"]
        out[mode] = {**stats(times), "evals_per_step": evals, "peak_memory_gb": peak_gb(device)}
        print(f"mvdream_{mode:24s} {statistics.median(times) * 1000:9.1f} ms  evals {evals}", flush=True)
    out["speedup"] = out["sequential"]["median_ms"] / out["batched"]["median_ms"]
    out.update({"n_noises": n, "views": views, "lookahead": "linspace 15 from t, CFG 50", "resolution": 256})
    results["mvdream"] = out
    del prior
    gc.collect()


def build_tiny_vae(folder: Path, preset: str) -> Path:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    kw = {} if preset == "sd21_base" else dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                               num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    if preset != "sd21_base":
        kw.update(upsampling_scaling_factor=2)
    AutoencoderTiny(**kw).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------- main
def table(results: dict) -> str:
    lines = [f"device: {results['device']}; torch {results['torch']}; timesteps seeded (seed 0); {results['steps']} measured steps after "
             f"{results['warmup']} warm-up",
             "", "| config | N | K | ms/step median (min-max) | UNet evals/step | ms/eval median | peak GB |", "|---|---|---|---|---|---|---|"]
    for name, r in results["configs"].items():
        lines.append(f"| {name} | {r.get('n_noises', '')} | {r.get('lookahead_steps', '')} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | "
                     f"{r['evals_per_step']:.1f} | {r.get('ms_per_eval_median', float('nan')):.2f} | {r.get('peak_memory_gb') or 0:.2f} |")
    d = results.get("derived", {})
    if d:
        lines += ["", "| derived | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in d.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench.json"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="sd21_base", choices=["sd21_base", "tiny"])
    ap.add_argument("--sd-folder", type=Path, default=None, help="an existing random (or real) SD folder to reuse")
    ap.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 10])
    ap.add_argument("--k", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 4, 15])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--plain-steps", type=int, default=3)
    ap.add_argument("--mv-steps", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet and the reward (compile time reported separately)")
    ap.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode of the UNet with --compile "
                    "(reduce-overhead: CUDA graphs, one per candidate-batch shape; default; max-autotune)")
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--no-prune", action="store_true", help="skip the candidate-pruning config")
    ap.add_argument("--mvdream", action="store_true")
    ap.add_argument("--tiny-vae", action="store_true", help="also time decode=tiny with a random AutoencoderTiny")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from rewardsds.priors.sd import StableDiffusionPrior
    from rewardsds.testing import build_sd_pipeline

    tmp = Path(tempfile.mkdtemp(prefix="rewardsds_bench_"))
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
                               "preset": args.preset, "steps": args.steps, "warmup": args.warmup, "compile": args.compile,
                               "compile_mode": args.compile_mode if args.compile else None, "configs": {}}
    t0 = time.perf_counter()
    if args.sd_folder is None:
        args.sd_folder = build_sd_pipeline(tmp / "sd", args.preset)
    results["build_s"] = time.perf_counter() - t0
    tiny_vae = build_tiny_vae(tmp / "taesd", args.preset) if args.tiny_vae else None
    args.tiny_vae_path = tiny_vae  # the config of the tiny-decode run names it (lookahead.decode=tiny needs prior.tiny_vae)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    prior = StableDiffusionPrior(str(args.sd_folder), dtype=dtype, compile=args.compile, compile_mode=args.compile_mode if args.compile else "default", tiny_vae=str(tiny_vae) if tiny_vae else None,
                                 local_files_only=True).to(device)
    reward = build_reward(args.preset, device, fast=True, compile=args.compile, tmp=tmp)
    if args.compile:
        t0 = time.perf_counter()
        bench_bare_unet(prior, device, {}, 1)
        results["compile_s_unet"] = time.perf_counter() - t0
    bench_bare_unet(prior, device, results, iters=20)
    bench_reward(reward, device, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        tmp_out = args.out.with_suffix(".json.partial")
        tmp_out.write_text(json.dumps(results, indent=2) + "\n")
        tmp_out.replace(args.out)

    save()
    bench_fast(args, prior, reward, device, tmp, results, save)
    bench_lookahead_mfu(prior, device, results)
    if not args.no_plain:
        prior32 = StableDiffusionPrior(str(args.sd_folder), dtype="fp32", channels_last=False, local_files_only=True).to(device)
        reward32 = build_reward(args.preset, device, fast=False, compile=False, tmp=tmp)
        n_ref = 8 if 8 in args.n else args.n[0]
        bench_plain(args, prior32, reward32, device, results, n_ref, 15)
        del prior32, reward32
        gc.collect()
    if args.mvdream:
        bench_mvdream(args, device, tmp, results, reward)
    c = results["configs"]
    derived = {}
    n_ref = 8 if 8 in args.n else args.n[0]
    if f"plain_n{n_ref}_k15" in c and f"rewardsds_n{n_ref}_k15" in c:
        derived[f"speedup_rewardsds_n{n_ref}_k15_vs_plain (target >= 5)"] = c[f"plain_n{n_ref}_k15"]["median_ms"] / c[f"rewardsds_n{n_ref}_k15"]["median_ms"]
    derived["image_reward_batch8_512px_ms (target < 15)"] = results["reward_image_reward"]["median_ms"]
    bare = c["sds"].get("paired_bare_unet_batch2", results["bare_unet_batch2"])
    derived["sds_step_over_bare_unet_batch2 (target <= 1.2)"] = c["sds"]["median_ms"] / bare["median_ms"]
    if results["lookahead_mfu"]["mfu"] is not None:
        derived["lookahead_mfu"] = results["lookahead_mfu"]["mfu"]
    if "mvdream" in results:
        derived["mvdream_batched_speedup (target >= 3)"] = results["mvdream"]["speedup"]
    for name in ("rewardsds_n10_k15",):
        if name in c and c[name].get("peak_memory_gb") is not None:
            derived["peak_gb_n10_k15_512px (target < 24)"] = c[name]["peak_memory_gb"]
    if "mvdream" in results and results["mvdream"]["batched"]["peak_memory_gb"] is not None:
        derived["peak_gb_mvdream_n7_4views_256px (target < 40)"] = results["mvdream"]["batched"]["peak_memory_gb"]
    results["derived"] = derived
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    args.out.with_suffix(".md").write_text(md + "\n")
    print("\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
