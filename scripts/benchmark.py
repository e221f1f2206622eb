"""Benchmark a RewardSDS step against the structure of the public reference code, with selection agreement.

Builds the full-size Stable Diffusion 2.1-base architecture and the ImageReward architecture with random
weights (no downloads) and reports, in one JSON:

- ``baseline``: THE speed baseline, :func:`rewardsds.reference.reference_structure_step`: the public RewardSDS
  2D code's structure (fp32 with torch's default TF32 settings, all N candidates x the CFG pair in one
  lookahead batch per DDIM step from the grid point below t, one decode, ImageReward one image per call
  through PIL, SDS only on the 4 kept candidates, AdamW), on the same timesteps as our configurations;
- ``configs``: our training step (``DistillationSystem.run_step``: candidates, lookahead, decode, reward,
  weights, loss, backward, AdamW) per prior variant: ``eager`` (``prior.dtype=auto``: fp16 on CUDA), ``compiled``
  (the same with torch.compile reduce-overhead: the default on CUDA), ``compiled_bf16``, ``compiled_float8`` / ``eager_float8`` (the lookahead's ranking calls
  in float8, ``prior.lookahead_quantize=float8``), plus pruning and tiny-decode variants. Per config: ms/step
  (median, min, max, and every step's t, ms and evals), UNet evaluations per step, ms per evaluation, MFU
  (UNet only, and UNet + decodes + rewards), peak GB, warm-up (compile) times;
- ``speedups``: baseline median / ours median at the same N, K and timesteps, and the median of the per-step
  ratios (paired on identical t);
- ``agreement``: for every fast path, the fraction of draws whose min_max top-2 and bottom-2 sets equal those
  of the exact fp32 path (eager, TF32 off, ImageReward fp32 through PIL) on the same candidate noises
  (:mod:`rewardsds.eval.agreement`); a path on by default needs at least 95%; with the ``attribution`` section,
  paths that change one component's precision at a time (the prior's, the reward's) say which moves a selection;
- ``fp32_ranking`` (``--sections fp32_ranking``): the compiled default with the candidates of steps below
  ``--fp32-below`` ranked on the prior's fp32 view (``lookahead.fp32_below``, full fp32 and with TF32): step rows, the
  extra ms per step below and above the threshold and per 1000-step paper_2d image, and both agreement paths;
- ``half`` (``--sections half``): the compiled default (fp16 for SD) beside the same prior in bf16 (the default
  until fp16 kept more selections at the same speed): step rows and both agreement paths;
- ``agreement_mvdream`` (``--sections mvdream_agreement``): MVDream's selection agreement in mvdream_nerf's RewardSDS
  stage (N = 7 candidates of 8 views in 2 groups, linspace 15 from t at CFG 50, rewards averaged over views, t as the experiment
  anneals it over the reward's steps): the exact fp32 path against the CUDA default (compiled, fp16) and the same
  compiled prior in bf16; pool runs with ``pool_agreement.py --section agreement_mvdream``;
- ``compile_cache``: the user's CLI (``python -m rewardsds experiment=paper_2d ...``) run twice in fresh processes
  against one empty compile cache folder: first-run vs second-run compile time (the first step's excess over
  the steady step) and process wall time;
- ``lookahead_mfu``: the lookahead's UNet calls alone (N = 10 from t = 979), eager and compiled;
- ``mvdream`` (``--mvdream``): batched vs one-candidate-at-a-time MVDream RewardSDS step.

Sections run in order of importance and the JSON is rewritten after each, so ``--time-limit`` (default 480 s;
a section that would start later is skipped and listed under ``skipped``) keeps partial results.

Usage (GPU; H200: about 8 minutes for the main set with a cold compile cache)::

    python scripts/benchmark.py --out bench.json --sd-folder /tmp/sd21 --image-reward-dir /tmp/ir
    python scripts/benchmark.py --out bench_quick.json --quick           # paper N=10 only, 8 agreement draws
    python scripts/benchmark.py --out cache.json --sections compile_cache  # first vs second run (about 4 min)
    python scripts/benchmark.py --out more.json --sections agreement --per-draw --draws 36 --first-seed 4  # new draws;
    python scripts/pool_agreement.py bench.json more.json      # with an earlier --per-draw run's: one rate over both
    python scripts/benchmark.py --out mv.json --sections mvdream_agreement --draws 16 --per-draw   # MVDream's default (8 views: 16 fill a call)
    python scripts/benchmark.py --preset tiny --device cpu --steps 2 --warmup 1 --draws 2   # smoke test

Results go to ``--out`` (JSON) and a markdown summary to stdout and ``--out`` with ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewardsds.candidates import CandidateEngine  # noqa: E402
from rewardsds.errors import RewardSDSError  # noqa: E402
from rewardsds.utils.dtypes import dtype_name, tf32  # noqa: E402  (the exact path turns both switches off)
from rewardsds.utils.quiet import quiet_progress_bars  # noqa: E402

PROMPT = "a photo of a red fox sitting in the snow"
# Dense bf16 tensor-core peaks (no sparsity), for MFU.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}
MAIN_SECTIONS = ("paper", "agreement", "float8", "reference_n8", "variants", "mfu")
#: levers not on by default, measured against the default compiled row: the reward compiled with CUDA graphs
#: (``reward.compile=true``), cuDNN's autotuner (``trainer.benchmark=true``: ``torch.backends.cudnn.benchmark``) under
#: the compiled prior, cuDNN's fused attention (``prior.attention=cudnn``), and the candidates in two chunks without
#: and with ``lookahead.overlap``
LEVER_SECTIONS = ("levers",)
#: which component's precision moved the bf16 path's selections: agreement paths that change one component at a time
#: against the exact path (the prior's UNet and VAE in bf16 with the exact reward; the exact prior with the fast
#: reward, and with the reward in fp32 on tensors); fp32 priors run with TF32 off, as the exact path does
ATTRIBUTION_PATHS = (("attribution: bf16 prior, exact reward", "eager_bf16", {}, "pil32"),
                     ("attribution: exact prior, bf16 reward", "fp32", {}, "bf16"),
                     ("attribution: exact prior, fp32 reward on tensors", "fp32", {}, "fast"),
                     # the default before the reward moved to fp32: the compiled bf16 prior with a bf16 reward
                     ("compiled, bf16 reward", "compiled_bf16", {}, "bf16"))
#: the agreement path of the CUDA defaults (compiled prior at prior.dtype=auto: fp16 for SD; fp32 reward)
DEFAULT_PATH = "compiled (default on CUDA)"
#: overrides that do not approximate the algorithm (they change how the step runs, or run part of it in fp32): rows with
#: them still count as the algorithm against the reference structure
EXACT_OVERRIDES = ("chunk_size", "lookahead.overlap", "lookahead.fp32_below", "lookahead.fp32_tf32")
#: the candidates of small-t steps ranked on the prior's fp32 view (``lookahead.fp32_below``, full fp32 and with TF32):
#: step rows beside the compiled default, what they add to a paper_2d image, and their agreement paths
FP32_SECTIONS = ("fp32_ranking",)
#: the prior's half precision: the compiled default (``prior.dtype=auto``: fp16 for SD on CUDA, 10 mantissa bits) beside
#: the same prior in bf16 (7 bits, the default until fp16 kept more selections at the same speed), as step rows and
#: agreement paths
HALF_SECTIONS = ("half",)
BF16_PATH = "compiled, bf16 prior (the default before)"
#: MVDream's selection agreement in mvdream_nerf's RewardSDS stage (JSON ``agreement_mvdream``): the exact fp32 path
#: against the CUDA default (compiled, ``prior.dtype=auto``: fp16, as for SD) and the same compiled prior in bf16
MVDREAM_AGREEMENT_SECTIONS = ("mvdream_agreement",)
MVDREAM_DEFAULT_PATH = "compiled (default on CUDA: fp16)"
MVDREAM_BF16_PATH = "compiled, bf16 prior"
ALL_SECTIONS = (MAIN_SECTIONS + ("compile_cache", "mvdream", "attribution") + LEVER_SECTIONS + FP32_SECTIONS
                + HALF_SECTIONS + MVDREAM_AGREEMENT_SECTIONS)
QUICK_SECTIONS = ("paper", "agreement")


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


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """Set ``torch.backends.cudnn.benchmark`` for a block (CUDA graphs keep the algorithms chosen at capture)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def autotunes(variant: str) -> bool:
    """Whether a prior variant runs under cuDNN's autotuner (``compiled_cudnn``: its own compiled prior)."""
    return variant.endswith("_cudnn") or torch.backends.cudnn.benchmark


class Deadline:
    """Wall-clock budget of the whole benchmark; sections that would start past it are skipped and listed."""

    def __init__(self, seconds: float, results: dict):
        self.end = time.perf_counter() + seconds
        self.results = results

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, name: str, needs_s: float = 0.0) -> bool:
        if self.left() > needs_s:
            return True
        self.results.setdefault("skipped", []).append({"what": name, "reason": f"time limit ({self.left():.0f} s left, needs ~{needs_s:.0f} s)"})
        print(f"skipped {name}: time limit", flush=True)
        return False


# ----------------------------------------------------------------------------------------- building
def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import rewardsds.config  # noqa: F401  (registers the schemas)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


def image_reward_files(folder: Path, preset: str) -> tuple[Path, Path]:
    """A random ImageReward checkpoint + BERT vocab in the published layout (built once into ``folder``)."""
    from rewardsds.testing import save_random_image_reward

    paths = folder / "paths.json"
    if not paths.is_file():
        ckpt, tok = save_random_image_reward(folder, "full" if preset == "sd21_base" else "tiny", words=PROMPT.lower().split())
        paths.write_text(json.dumps({"ckpt": str(ckpt), "tok": str(tok)}))
    p = json.loads(paths.read_text())
    return Path(p["ckpt"]), Path(p["tok"])


class Models:
    """Priors and rewards under test, built on first use and shared by the sections.

    Prior variants: ``eager`` (``prior.dtype=auto``: fp16 on CUDA), ``compiled`` (the same, reduce-overhead: the CUDA
    default), ``eager_bf16`` and ``compiled_bf16`` (the same in bf16, also on the CPU), ``compiled_cudnn``
    (the same, a separate instance run and captured under cuDNN's autotuner), ``compiled_cudnn_sdpa`` (the same
    with ``prior.attention=cudnn``: cuDNN's fused attention first), ``eager_float8``,
    ``compiled_float8`` (float8 ranking view), ``fp32`` (eager, NCHW: the reference and the exact path).
    Reward variants: ``fast`` (the config's default: fp32, batched tensor preprocessing), ``fast_compiled`` (the
    same with ``reward.compile=true``), ``bf16`` (the backbone in bf16 on CUDA, tensor preprocessing),
    ``pil32`` (fp32, PIL preprocessing: the reference's and the exact path's).
    """

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.priors: dict[str, Any] = {}
        self.rewards: dict[str, Any] = {}
        self.build_s: dict[str, float] = {}

    def prior(self, variant: str):
        if variant not in self.priors:
            from rewardsds.priors.config import SDPriorConfig
            from rewardsds.priors.sd import StableDiffusionPrior

            kw: dict[str, Any] = dict(local_files_only=True, compile_cache=self.args.compile_cache,
                                      tiny_vae=str(self.args.tiny_vae) if self.args.tiny_vae else None)
            if variant == "fp32":
                kw.update(dtype="fp32", channels_last=False, compile=False)
            else:
                # (bf16 runs on the CPU as well: the tiny CPU runs check that the bf16 rows and paths compute in bf16;
                # auto is fp32 there)
                kw.update(dtype="bf16" if variant.endswith("_bf16") else "auto", compile="compiled" in variant, compile_mode="reduce-overhead",
                          lookahead_quantize="float8" if "float8" in variant else "none",
                          attention="cudnn" if variant.endswith("_cudnn_sdpa") else "auto")
            t0 = time.perf_counter()
            prior = StableDiffusionPrior(SDPriorConfig(pretrained=str(self.args.sd_folder), **kw))
            if variant == "compiled" and self.args.fp32_view:
                prior.keep_fp32_view()  # (lookahead.fp32_below rows and paths rank small-t candidates on its fp32 view)
            self.priors[variant] = prior.to(self.device)
            self.build_s[f"prior_{variant}"] = time.perf_counter() - t0
        return self.priors[variant]

    def reward(self, variant: str = "fast"):
        if variant not in self.rewards:
            from rewardsds.rewards.config import ImageRewardConfig
            from rewardsds.rewards.image_reward import ImageReward

            ckpt, tok = self.args.image_reward
            dtype = ("bf16" if self.device.type == "cuda" else "fp32") if variant == "bf16" else ImageRewardConfig.dtype.value
            self.rewards[variant] = ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), dtype=dtype,
                                                                  pil_exact=variant == "pil32",
                                                                  compile=variant == "fast_compiled" or (variant == "fast" and self.args.reward_compile),
                                                                  local_files_only=True)).to(self.device)
        return self.rewards[variant]

    def float8_supported(self) -> Optional[str]:
        """None if the float8 lookahead can run here, else why not."""
        from rewardsds.errors import ConfigError
        from rewardsds.priors.quantized import check_float8_support

        try:
            check_float8_support(self.device, torch.bfloat16)
        except ConfigError as err:
            return str(err)
        return None


def build_reward(preset: str, device: torch.device, fast: bool, compile: bool, tmp: Path):
    """ImageReward at full size (or tiny) with random weights; fast = bf16 tensor path, else fp32 + PIL path
    (used by scripts/profile_step.py)."""
    from rewardsds.rewards.config import ImageRewardConfig
    from rewardsds.rewards.image_reward import ImageReward, load_image_reward_tokenizer
    from rewardsds.testing import build_random_image_reward_model, write_bert_vocab

    size = "full" if preset == "sd21_base" else "tiny"
    model = build_random_image_reward_model(size, device=device)
    vocab = model.text.config.vocab_size - 2
    tok = load_image_reward_tokenizer(str(write_bert_vocab(tmp / f"bert_{size}", vocab, PROMPT.lower().split())), local_files_only=True)
    dtype = "bf16" if (fast and device.type == "cuda") else "fp32"
    cfg = ImageRewardConfig(dtype=dtype, pil_exact=not fast, compile=compile and fast)
    return ImageReward.from_parts(cfg, model, tok).to(device)


def base_overrides(args) -> list[str]:
    ckpt, tok = args.image_reward
    return [f"prompt={PROMPT}", f"prior.pretrained={args.sd_folder}", "logger=none", "reward=image_reward", f"reward.checkpoint={ckpt}",
            f"reward.tokenizer={tok}", "seed=0", f"chunk_size={args.chunk_size}", "representation.weight_decay=0.0"]


def build_system(cfg, prior, reward, device, run_dir: Path):
    """The training system of a composed config around an already built prior and reward (the benchmark shares them
    between configurations); the strategy, loss mode and representation are built from their schemas."""
    from rewardsds.config import validate
    from rewardsds.schema import build
    from rewardsds.system import DistillationSystem

    typed = validate(cfg)
    sys_ = DistillationSystem(typed, prior=prior, reward=reward, strategy=build(typed.strategy), loss=build(typed.loss),
                              representation=build(typed.representation), run_dir=run_dir)
    sys_.prepare(device)
    sys_.to(device)
    opt = sys_.configure_optimizers()
    return sys_, opt


def lookahead_config(lookahead_steps: int = 15, lookahead_guidance: float = 7.5, lookahead_grid: str = "leading",
                     lookahead_start: str = "exact_t", lookahead_decode: str = "full", prune_to: int = 0, overlap: bool = False,
                     fp32_below: int = 0, fp32_tf32: bool = False):
    """The engine's lookahead settings (``rewardsds.config.LookaheadConfig``, validated) from the benchmark's keywords,
    which the JSON records as they are (``agreement.paths.<name>.engine``)."""
    from rewardsds.config import LookaheadConfig

    return LookaheadConfig(steps=lookahead_steps, guidance_scale=lookahead_guidance, grid=lookahead_grid, start=lookahead_start,
                           decode=lookahead_decode, prune_to=prune_to, overlap=overlap, fp32_below=fp32_below, fp32_tf32=fp32_tf32)


def measured_steps(args) -> list[int]:
    """Step indices timed by every configuration and the baseline (so all see the same timesteps)."""
    return list(range(args.warmup, args.warmup + args.steps))


def timesteps_of(steps: list[int]) -> list[int]:
    """The timesteps a run with seed 0 draws at ``steps`` (the config's uniform 0.02..0.98 sampler)."""
    from rewardsds.schedules import Schedule, TimestepSampler

    sampler = TimestepSampler(Schedule(0.02), Schedule(0.98), 1000)
    return [sampler.sample(s, 0) for s in steps]


# ----------------------------------------------------------------------------------------- FLOPs
class Flops:
    """Model FLOPs of one UNet evaluation (64x64), one VAE decode (512x512), one tiny decode and one reward image."""

    def __init__(self):
        self.values: dict[str, float] = {}

    def get(self, name: str, fn: Callable[[], Any]) -> float:
        if name not in self.values:
            from torch.utils.flop_counter import FlopCounterMode

            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                fn()
            self.values[name] = float(fc.get_total_flops())
        return self.values[name]

    def unet(self, prior, device) -> float:
        x = torch.randn(1, *prior.latent_shape, device=device)
        t = torch.full((1,), 500, device=device, dtype=torch.long)
        emb = prior.encode_text([PROMPT])
        return self.get("unet", lambda: prior.unet(x.to(prior.dtype), t, encoder_hidden_states=emb.to(prior.dtype)))

    def decode(self, prior, device, tiny: bool = False) -> float:
        z = torch.randn(1, *prior.latent_shape, device=device)
        return self.get("tiny_decode" if tiny else "decode", lambda: prior.decode_latents(z, tiny=tiny) if tiny else prior.decode_latents(z))

    def reward(self, reward, device, size: int) -> float:
        x = torch.rand(1, 3, size, size, device=device)
        return self.get("reward", lambda: reward(x, [PROMPT], check=False))


# ----------------------------------------------------------------------------------------- our step
def run_steps(system, opt, steps: list[int], warmup: int, device: torch.device) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` ones (step indices 0..warmup-1, where compiles and CUDA-graph
    captures of this config's shapes happen)."""
    warm, rows = [], []
    for step in range(warmup):
        warm.append(1000 * timed(lambda: system.run_step(step, opt), device))
    for step in steps:
        box = {}
        dt = timed(lambda: box.setdefault("res", system.run_step(step, opt)), device)
        c = box["res"].loss.candidates
        rows.append({"step": step, "t": int(box["res"].ctx.t), "ms": 1000 * dt, "evals": int(c.evals) if c is not None else 0})
    out = {**stats([r["ms"] / 1000 for r in rows]), "warmup_ms": warm, "per_step": rows,
           "evals_per_step": statistics.fmean(r["evals"] for r in rows)}
    if any(r["evals"] for r in rows):  # time per UNet evaluation does not depend on which timesteps were drawn
        out["ms_per_eval_median"] = statistics.median(r["ms"] / r["evals"] for r in rows if r["evals"])
    out["fit_ms"] = step_fit([r["evals"] for r in rows], [r["ms"] for r in rows])
    return out


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b x; b = 0 when x does not vary."""
    if len(set(xs)) < 2:
        return statistics.fmean(ys), 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def stalled_samples(xs: list[float], ys: list[float], factor: float = 5.0, floor: float = 0.2) -> list[int]:
    """Indices of samples far slower than the line through the others (a one-off stall: a collection, an allocator
    flush, a recompile), judged against a fit a few stalls cannot pull: the median of the pairwise slopes (Theil-Sen)
    and the median intercept. A sample is a stall where it lies above that line by more than ``factor`` robust
    standard deviations of the residuals and by more than ``floor`` of the line's value. Faster samples are kept."""
    pairs = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    b = statistics.median(pairs) if pairs else 0.0
    a = statistics.median(y - b * x for x, y in zip(xs, ys))
    res = [y - (a + b * x) for x, y in zip(xs, ys)]
    sd = 1.4826 * statistics.median(abs(r) for r in res)
    return [i for i, (x, r) in enumerate(zip(xs, res)) if r > factor * sd and r > floor * abs(a + b * x)]


def step_fit(evals: list[int], ms: list[float]) -> dict[str, float]:
    """``ms = fixed + per_eval * evals`` by least squares: the per-step cost that does not scale with the lookahead
    (the prediction at t, decode, reward, loss, optimiser, logging) apart from the cost of each UNet evaluation."""
    a, b = fit_line([float(e) for e in evals], list(ms))
    return {"fixed_ms": a, "ms_per_eval": b}


def cli_vs_benchmark(cli_fit: dict[str, float], bench_row: dict[str, Any]) -> dict[str, Any]:
    """The CLI's step time (its fit) at the evaluations of the benchmark's own steps, over the benchmark's times:
    what the CLI adds to the same step (logging, media, checkpoints, Lightning), as a median ratio and a total."""
    steps = bench_row["per_step"]
    pred = [cli_fit["fixed_ms"] + cli_fit["ms_per_eval"] * r["evals"] for r in steps]
    ratios = [p / r["ms"] for p, r in zip(pred, steps)]
    return {"median_ratio": statistics.median(ratios), "total_ratio": sum(pred) / sum(r["ms"] for r in steps),
            "benchmark_fit_ms": bench_row.get("fit_ms") or step_fit([r["evals"] for r in steps], [r["ms"] for r in steps]),
            "cli_fit_ms": cli_fit, "benchmark_steps": len(steps)}


def bench_config(args, models: Models, flops: Flops, device, tmp: Path, results: dict, name: str, variant: str, n: int, k: int,
                 extra: Optional[list[str]] = None, reward_variant: str = "fast") -> Optional[dict]:
    """One of our configurations through the training step; recorded under ``results['configs'][name]``."""
    prior, reward = models.prior(variant), models.reward(reward_variant)
    over = base_overrides(args) + [f"steps={args.warmup + args.steps + 1}"]
    over += (["strategy=none", "n_noises=1"] if n == 1 else ["strategy=min_max", f"n_noises={n}", f"lookahead.steps={k}", "lookahead.guidance_scale=7.5",
                                                              "lookahead.grid=leading", "lookahead.start=exact_t"]) + list(extra or [])
    reset_peak(device)
    system, opt = build_system(compose(over), prior, reward, device, tmp / name)
    with cudnn_benchmark(autotunes(variant)):
        r = run_steps(system, opt, measured_steps(args), args.warmup, device)
    decodes = 0 if n == 1 else n + next((int(o.split("=")[1]) for o in (extra or []) if o.startswith("lookahead.prune_to=")), 0)
    tiny = any(o == "lookahead.decode=tiny" for o in (extra or []))
    r.update({"variant": variant, "n_noises": n, "lookahead_steps": k, "overrides": extra or [], "peak_memory_gb": peak_gb(device),
              "chunk_size": system.engine.chunk_size(system.representation.latents), "decodes_per_step": decodes,
              "compile": getattr(prior._unet_call, "mode", None), "lookahead_quantize": prior.cfg.lookahead_quantize.value,
              "attention": prior.cfg.attention.value, "prior_dtype": dtype_name(prior.dtype),
              "reward_variant": reward_variant, "cudnn_benchmark": autotunes(variant)})
    add_mfu(r, models, flops, device, prior, decodes, tiny)
    results["configs"][name] = r
    print(f"{name:36s} {r['median_ms']:9.1f} ms  evals {r['evals_per_step']:6.1f}  warm-up {['%.0f' % w for w in r['warmup_ms']]} ms", flush=True)
    del system, opt
    gc.collect()
    return r


def add_mfu(r: dict, models: Models, flops: Flops, device, prior, decodes: int, tiny: bool) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name)
    f_unet = flops.unet(prior, device)
    f_img = (flops.decode(prior, device, tiny) if decodes else 0.0) + (flops.reward(models.reward("fast"), device, prior.image_size) if decodes else 0.0)
    per_step = r["evals_per_step"] * f_unet + decodes * f_img
    r["model_tflop_per_step"] = per_step / 1e12
    if peak:
        sec = r["median_ms"] / 1000
        r["mfu_unet"] = r["evals_per_step"] * f_unet / sec / peak
        r["mfu_model"] = per_step / sec / peak


# ----------------------------------------------------------------------------------------- the baseline
def bench_baseline(args, models: Models, device, results: dict, n: int, k: int = 15) -> dict:
    """The reference structure (fp32, torch's default TF32 switches: the reference code changes none) on the same
    step indices and timesteps as our configs, with the reference's optimiser on one latent."""
    from rewardsds.reference import reference_structure_step

    prior, reward = models.prior("fp32"), models.reward("pil32")
    steps = measured_steps(args)
    ts = timesteps_of([0] + steps)
    g = torch.Generator().manual_seed(0)
    z = torch.nn.Parameter(torch.randn(1, *prior.latent_shape, generator=g).to(device))
    opt = torch.optim.AdamW([z], lr=0.01, betas=(0.9, 0.99), eps=1e-15)  # the reference's (weight decay 0.01)
    text = prior.text_cond([PROMPT], "")
    rows = []
    with tf32(matmul=False, cudnn=True):
        for i, (step, t) in enumerate(zip([0] + steps, ts)):
            box = {}

            def one():
                res = reference_structure_step(prior, reward, z, t, n, step, 0, text, PROMPT, guidance_scale=100.0, lookahead_steps=k,
                                               lookahead_guidance=7.5)
                opt.zero_grad()
                res.loss.backward()
                opt.step()
                box["evals"] = res.evals

            dt = timed(one, device)
            if i > 0:  # step 0 warms up (cuDNN algorithm choice, allocator)
                rows.append({"step": step, "t": t, "ms": 1000 * dt, "evals": box["evals"]})
    r = {**stats([x["ms"] / 1000 for x in rows]), "per_step": rows, "evals_per_step": statistics.fmean(x["evals"] for x in rows),
         "ms_per_eval_median": statistics.median(x["ms"] / x["evals"] for x in rows), "n_noises": n, "lookahead_steps": k,
         "structure": "public RewardSDS 2D code: fp32, all N x CFG per lookahead call from the grid point <= t, one decode, "
                      "ImageReward one image per call via PIL, SDS on the 4 kept, loss / 4, AdamW",
         "tf32": {"matmul": False, "cudnn": True}}
    results["baseline"][f"reference_n{n}_k{k}"] = r
    print(f"{'reference_n%d_k%d (baseline)' % (n, k):36s} {r['median_ms']:9.1f} ms  evals {r['evals_per_step']:6.1f}", flush=True)
    return r


def speedup(results: dict, n: int, k: int = 15) -> None:
    """Baseline over ours at the same N, K and step indices (identical timesteps)."""
    base = results["baseline"].get(f"reference_n{n}_k{k}")
    if base is None:
        return
    by_step = {r["step"]: r["ms"] for r in base["per_step"]}
    for name, c in results["configs"].items():
        approximations = [o for o in c.get("overrides") or [] if o.split("=", 1)[0] not in EXACT_OVERRIDES]
        if c.get("n_noises") != n or c.get("lookahead_steps") != k or approximations:
            continue
        paired = [by_step[r["step"]] / r["ms"] for r in c["per_step"] if r["step"] in by_step]
        results["speedups"][f"{name}_vs_reference"] = {
            "median_ratio": base["median_ms"] / c["median_ms"], "paired_median_ratio": statistics.median(paired) if paired else None,
            "baseline_ms": base["median_ms"], "ours_ms": c["median_ms"], "n_noises": n, "lookahead_steps": k,
            "target": ">= 8 (issue goal, paper_2d)"}


def fp32_ranking_cost(results: dict, below: int, default: str = "rewardsds_n10_k15_compiled") -> None:
    """What ranking small-t candidates in fp32 adds to the compiled default: per timed step (same step indices, so the
    same t), the mean extra ms below and above ``below``, and per 1000-step paper_2d image (seed 0's timesteps)."""
    base = results["configs"].get(default)
    if base is None:
        return
    by_step = {r["step"]: r["ms"] for r in base["per_step"]}
    share = sum(t < below for t in timesteps_of(list(range(1000)))) / 1000
    out = {"fp32_below": below, "paper_2d_share_of_steps_below": share, "rows": {}}
    for name, c in results["configs"].items():
        if not any(o.startswith("lookahead.fp32_below=") for o in c.get("overrides") or []):
            continue
        low = [r["ms"] - by_step[r["step"]] for r in c["per_step"] if r["step"] in by_step and r["t"] < below]
        high = [r["ms"] - by_step[r["step"]] for r in c["per_step"] if r["step"] in by_step and r["t"] >= below]
        extra_low = statistics.fmean(low) if low else None
        out["rows"][name] = {"extra_ms_below": extra_low, "extra_ms_above": statistics.fmean(high) if high else None,
                             "steps_below": len(low), "steps_above": len(high),
                             "extra_s_per_1000_steps": None if extra_low is None else extra_low * share}
    results["fp32_ranking"] = out


# ----------------------------------------------------------------------------------------- agreement
class FP32DecodeOnlyEngine(CandidateEngine):
    """Attribution of ``lookahead.fp32_below``: below the threshold only the candidates' decode runs on the fp32 view
    (full fp32, TF32 off); the lookahead's calls stay on the bf16 prior and reuse its prediction at t. Which of the two
    halves the small-t misses need tells what the lever must cost."""

    def ranks_in_fp32(self, t: int) -> bool:
        return False

    def decode(self, latents, grad: bool = False, t: Optional[int] = None):
        if t is None or t >= self.lookahead_cfg.fp32_below or self.lookahead_cfg.decode == "tiny":
            return super().decode(latents, grad, t)
        with tf32(matmul=False, cudnn=False), (contextlib.nullcontext() if grad else torch.no_grad()):
            return self.prior.fp32_view().decode_candidates(latents)


def agreement_draws(args, prior_shape: tuple[int, ...], views: int = 1, sampler=None, step_stride: int = 1):
    """``--draws`` draws: 4 seeds from ``--first-seed`` x steps 0, ``step_stride``, ... with the timesteps ``sampler`` gives
    there (default: paper_2d's, uniform in [0.02, 0.98] T) and a seeded randn scene of ``views`` latents (the latent-image
    init); a later ``--first-seed`` gives new draws that add to an earlier run's."""
    from rewardsds.eval.agreement import Draw
    from rewardsds.schedules import Schedule, TimestepSampler

    sampler = sampler or TimestepSampler(Schedule(0.02), Schedule(0.98), 1000)
    per_seed = max(1, args.draws // 4)
    draws = []
    for i in range(args.draws):
        seed, step = args.first_seed + i // per_seed, (i % per_seed) * step_stride
        g = torch.Generator().manual_seed(1000 + seed)
        draws.append(Draw(seed=seed, step=step, t=sampler.sample(step, seed), latents=torch.randn(views, *prior_shape, generator=g)))
    return draws


def bench_agreement(args, models: Models, device, results: dict, deadline: Deadline, variants: list[tuple[str, str, dict, str]]) -> None:
    """Selection agreement of each fast path with the exact fp32 path (N = ``--agreement-n``, K = 15)."""
    from rewardsds.eval.agreement import collect_rewards, compare_selections, engine_selector

    n = args.agreement_n
    draws = agreement_draws(args, models.prior("fp32").latent_shape)
    sec = results["agreement"]
    sec.update({"n_noises": n, "lookahead_steps": 15, "n_max": 2, "n_min": 2, "draws": [{"seed": d.seed, "step": d.step, "t": d.t} for d in draws],
                "exact": "fp32 prior, eager, TF32 off, full decode, 15-step lookahead from t, ImageReward fp32 via PIL"})

    def path(variant: str, reward_variant: str, chunk_size: Optional[int] = None, decode_only: bool = False, **engine_kw):
        prior = models.prior(variant)
        eng = (FP32DecodeOnlyEngine if decode_only else CandidateEngine)(
            prior, models.reward(reward_variant), lookahead_config(**engine_kw), chunk_size=args.chunk_size if chunk_size is None else chunk_size)
        return engine_selector(eng, prior.text_cond([PROMPT], ""), [PROMPT], n)

    t0 = time.perf_counter()
    with tf32(matmul=False, cudnn=False):
        exact = collect_rewards(path("fp32", "pil32"), draws)
    sec["exact_s"] = time.perf_counter() - t0
    print(f"agreement: exact fp32 path on {len(draws)} draws in {sec['exact_s']:.0f} s", flush=True)
    for name, variant, engine_kw, reward_variant in variants:
        if not deadline.allows(f"agreement:{name}", 10):
            continue
        t0 = time.perf_counter()
        exact_prior = variant == "fp32"  # a path that keeps the exact prior keeps its TF32 settings too
        with cudnn_benchmark(autotunes(variant)), (tf32(matmul=False, cudnn=False) if exact_prior else contextlib.nullcontext()):
            fast = collect_rewards(path(variant, reward_variant, **engine_kw), draws)
        rep = compare_selections(exact, fast, 2, 2, draws)
        sec["paths"][name] = {**rep.to_json(per_draw=args.per_draw), "prior": variant,
                              "prior_dtype": dtype_name(models.prior(variant).dtype), "reward": reward_variant, "engine": engine_kw,
                              "seconds": time.perf_counter() - t0, **rep.bar()}
        lo, hi = rep.agreement_ci95
        print(f"agreement {name:28s} {rep.agreement:6.1%}  (95% interval {lo:.0%}-{hi:.0%}; top {rep.top_agreement:.0%}, "
              f"bottom {rep.bottom_agreement:.0%}, rank corr {rep.rank_correlation:.3f}, regret mean {rep.regret_mean:.3f} "
              f"max {rep.regret_max:.3f})", flush=True)


# ----------------------------------------------------------------------------------------- compile cache
#: the benchmark row the CLI's steps are compared with (``--against``): the CUDA default
AGAINST_ROW = "rewardsds_n10_k15_compiled"


def bench_compile_cache(args, device, results: dict) -> None:
    """Run the user's CLI twice in fresh processes against one empty compile cache: what the first run on a machine
    pays for compiling and what a later run (or a sweep job) still pays."""
    cache = Path(args.compile_cache_probe or tempfile.mkdtemp(prefix="rewardsds_inductor_"))
    cache.mkdir(parents=True, exist_ok=True)
    ckpt, tok = args.image_reward
    out = {"cache_dir": str(cache), "cache_was_empty": not any(cache.iterdir()), "runs": []}
    for run in (1, 2):
        run_dir = Path(tempfile.mkdtemp(prefix=f"rewardsds_probe{run}_"))
        cmd = [sys.executable, "-m", "rewardsds", "experiment=paper_2d", f"prompt={PROMPT}", f"prior.pretrained={args.sd_folder}",
               "prior.local_files_only=true", f"prior.compile_cache={cache}", f"reward.checkpoint={ckpt}", f"reward.tokenizer={tok}",
               "reward.local_files_only=true", f"steps={args.probe_steps}", f"logger={args.probe_logger}", "output.video=false", "output.image_every=0",
               "output.candidates_every=0", f"output.checkpoint_every={args.probe_steps}", f"hydra.run.dir={run_dir}",
               *(["trainer=gpu"] if device.type == "cuda" else ["trainer=cpu"])]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        log_path = run_dir.parent / f"{run_dir.name}.log"  # beside the run folder: the CLI writes its own
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                returncode = subprocess.run(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                                            timeout=args.probe_timeout).returncode
            except subprocess.TimeoutExpired:
                returncode = None  # killed: its checkpoint, if any, still says how far it got
        wall = time.perf_counter() - t0
        tail = log_path.read_text(errors="replace")[-3000:]
        row: dict[str, Any] = {"run": run, "returncode": returncode, "process_wall_s": wall, "log": str(log_path)}
        if returncode != 0:
            row["log_tail"] = tail
        try:
            state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["rewardsds"]
            times, evals = state["step_times"], state["evals_per_step"]
            metrics = json.loads((run_dir / "metrics.json").read_text())
            steady = statistics.median(times[1:]) if len(times) > 1 else float("nan")
            row.update({"first_step_s": times[0], "steady_step_s": steady, "compile_s": times[0] - steady,
                        "step_times_s": times, "evals_per_step": evals, "run_wall_time_s": metrics.get("wall_time_s"),
                        # the CLI's own account: torch.compile seconds of the session (tracing, compiling or cache loads)
                        "torch_compile_s": metrics.get("compile_s")})
            if len(times) > 2:  # steady steps only: the first one compiles
                row["fit_ms"] = step_fit(evals[1:len(times)], [1000 * x for x in times[1:]])
        except (OSError, KeyError, ValueError) as err:
            row["error"] = f"{type(err).__name__}: {err}"
            row["log_tail"] = tail
        out["runs"].append(row)
        print(f"compile cache run {run}: process {wall:.0f} s, first step {row.get('first_step_s', float('nan')):.1f} s "
              f"(torch.compile {row.get('torch_compile_s') or float('nan'):.1f} s), steady {row.get('steady_step_s', float('nan')):.2f} s", flush=True)
    out["cache_mb"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20
    results["compile_cache"] = out
    if args.against:  # the same step inside the benchmark (an earlier run's compiled row) vs through the CLI
        compare_cli(results, json.loads(Path(args.against).read_text())["configs"], str(args.against))


def compare_cli(results: dict, rows: dict, against: str) -> None:
    """The compile_cache section's second CLI run against the benchmark's compiled row (``rows``: the configs of an
    earlier JSON, or of this run, measured on the same machine right after the CLI)."""
    cc, bench = results.get("compile_cache"), rows.get(AGAINST_ROW)
    last = cc["runs"][-1] if cc and cc.get("runs") else {}
    if bench and "fit_ms" in last:
        cc["cli_vs_benchmark"] = {"against": against, "row": AGAINST_ROW, **cli_vs_benchmark(last["fit_ms"], bench)}


# ----------------------------------------------------------------------------------------- lookahead MFU
def bench_lookahead_mfu(models: Models, flops: Flops, device, results: dict, variant: str, n: int = 10, t: int = 979, iters: int = 3):

    prior = models.prior(variant)
    eng = CandidateEngine(prior, None, lookahead_config(), chunk_size=models.args.chunk_size)
    text = prior.text_cond([PROMPT], "")
    z = torch.randn(1, *prior.latent_shape, device=device)
    cands = eng.draw(z, t, n, step=0)
    eng.lookahead(cands, text)  # warm-up (compile / capture)
    before = cands.evals
    times = [timed(lambda: eng.lookahead(cands, text), device) for _ in range(iters)]
    evals = (cands.evals - before) // iters
    f = flops.unet(prior, device)
    med = statistics.median(times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name)
    results["lookahead_mfu"][variant] = {
        "n_noises": n, "t": t, "unet_inputs": evals, "median_ms": 1000 * med, "unet_gflops_per_sample": f / 1e9,
        "achieved_tflops": evals * f / med / 1e12, "peak_tflops": peak / 1e12 if peak else None, "mfu": evals * f / med / peak if peak else None}


def bench_bare(models: Models, device, results: dict) -> None:
    """A bare CFG-sized UNet call (batch 2, eager, the default dtype) and ImageReward on 8 images of 512^2."""
    prior, reward = models.prior("eager"), models.reward("fast")
    x = torch.randn(2, *prior.latent_shape, device=device)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    emb = prior.encode_text([PROMPT, ""])

    def call():
        with torch.no_grad():
            return prior.predict_noise(x, t, emb)

    for _ in range(3):
        call()
    results["bare_unet_batch2"] = stats([timed(call, device) for _ in range(10)])
    images = torch.rand(8, 3, prior.image_size, prior.image_size, device=device)
    for _ in range(2):
        reward(images, [PROMPT] * 8, check=False)
    results["reward_image_reward_batch8"] = stats([timed(lambda: reward(images, [PROMPT] * 8, check=False), device) for _ in range(10)])


def bench_attention(models: Models, device, results: dict, batch: int = 20) -> None:
    """One eager UNet call at the paper's lookahead batch (N = 10 CFG pairs) with torch's default attention kernel
    and with cuDNN's first (``prior.attention=cudnn``): the attention lever alone, without compiling."""
    out = results.setdefault("unet_attention_batch20", {})
    for variant, name in (("eager", "auto"), ("eager_cudnn_sdpa", "cudnn")):
        prior = models.prior(variant)
        x = torch.randn(batch, *prior.latent_shape, device=device)
        t = torch.full((batch,), 500, device=device, dtype=torch.long)
        emb = prior.encode_text([PROMPT] * (batch // 2) + [""] * (batch // 2))

        def call():
            with torch.no_grad():
                return prior.predict_noise(x, t, emb)

        for _ in range(3):
            call()
        out[name] = stats([timed(call, device) for _ in range(10)])
    if out["auto"]["median_ms"] > 0:
        out["cudnn_speedup"] = out["auto"]["median_ms"] / out["cudnn"]["median_ms"]


def mvdream_views(views: int, device) -> Any:
    """The MVDream step benchmark's cameras: ``views`` orthogonal views at elevation 15 degrees, distance 2, fovy 40
    degrees, 256 px (MVDream's own resolution)."""
    import math

    from rewardsds.cameras import orbit_cameras

    return orbit_cameras(torch.full((views,), 15.0), torch.arange(views) * 90.0, torch.full((views,), 2.0),
                         torch.full((views,), math.radians(40)), 256, 256).to(device)


def bench_mvdream(args, device, tmp, results, reward_fast):
    """RewardSDS with MVDream: N = 7 candidates of 4 views, 15-point linspace lookahead from exactly t (CFG 50),
    rewards averaged over views, x0-reconstruction target (std rescale 0.5); all candidates batched (the training
    step's :func:`rewardsds.system.distill`) vs one candidate at a time (3D reference)."""

    from rewardsds.losses.base import StepContext
    from rewardsds.losses.config import SDSLossConfig
    from rewardsds.losses.sds import SDSLoss, x0_recon_target
    from rewardsds.priors.config import MVDreamPriorConfig
    from rewardsds.priors.mvdream import MVDreamPrior
    from rewardsds.strategies import MinMaxStrategy
    from rewardsds.strategies.config import MinMaxStrategyConfig
    from rewardsds.system import distill
    from rewardsds.testing import build_mvdream

    mv, base = build_mvdream(tmp / "mvdream", args.preset)
    prior = MVDreamPrior(MVDreamPriorConfig(pretrained=str(mv), base_model=str(base),
                                            dtype="bf16" if device.type == "cuda" else "fp32",
                                            local_files_only=True)).to(device)
    views, n = 4, 7
    cams = mvdream_views(views, device)
    negative = "blurry"
    text = prior.text_cond([PROMPT] * views, negative)
    latents = torch.randn(views, *prior.latent_shape, device=device, requires_grad=True)
    strategy = MinMaxStrategy(MinMaxStrategyConfig())
    eng = CandidateEngine(prior, reward_fast, lookahead_config(15, 50.0, "linspace", "exact_t"), chunk_size=args.chunk_size, seed=0)
    loss = SDSLoss(SDSLossConfig(guidance_scale=50.0, target="x0_recon", recon_std_rescale=0.5))
    loss.setup(prior, reward_fast, device, args.warmup + args.mv_steps, engine=eng)

    def step(batched: bool, s: int):
        t = 980 - 40 * (s % 20)
        if batched:  # the training step: N candidates in batched calls, lookahead, rewards, min_max weights, loss
            ctx = StepContext(latents=latents, t=t, step=s, progress=0.0, text=text, prompts=[PROMPT] * views, base_prompt=PROMPT,
                              negative_prompt=negative, camera=cams.c2w, reward_active=True, n_noises=n, ranked=True)
            out = distill(ctx, loss, eng, strategy)
            out.total().backward()
            return out.candidates.evals
        # the reference's loop: one candidate (4 views) at a time, its lookahead, reward and target
        rewards, tgts, evals = [], [], 0
        for i in range(n):
            c = eng.draw(latents, t, 1, s * 1000 + i)
            c.eps_cond, c.eps_uncond = eng.predict(c, text, cams.c2w)
            final = eng.lookahead(c, text, cams.c2w, first=(c.eps_cond, c.eps_uncond))
            imgs = eng.decode(final)
            rewards.append(reward_fast(imgs, [PROMPT] * views, check=False).mean())
            tgts.append(x0_recon_target(prior, c.noisy, t, c.eps_cond, c.eps_uncond, 50.0, 0.5, views))
            evals += c.evals
        w = strategy(torch.stack(rewards))
        per_candidate = 0.5 * ((latents[None] - torch.cat(tgts).view(n, views, *latents.shape[1:])) ** 2).flatten(1).sum(1) / views
        (w.to(per_candidate) * per_candidate).sum().backward()
        return evals

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
        print(f"mvdream_{mode:27s} {statistics.median(times) * 1000:9.1f} ms  evals {evals}", flush=True)
    out["speedup"] = out["sequential"]["median_ms"] / out["batched"]["median_ms"]
    out.update({"n_noises": n, "views": views, "lookahead": "linspace 15 from t, CFG 50", "resolution": 256})
    results["mvdream"] = out
    del prior
    gc.collect()


def bench_mvdream_agreement(args, models: Models, device, tmp: Path, results: dict, deadline: Deadline,
                            save: Callable[[], None] = lambda: None) -> None:
    """Selection agreement of MVDream's fast paths with its exact fp32 path, in mvdream_nerf's RewardSDS stage as the
    composed experiment sets it: N = 7 candidates of the stage's 8 views (2 groups of 4 orthogonal views, drawn by the
    run's camera sampler for the draw's seed and step), the 15-point linspace lookahead from t at CFG 50 with the
    experiment's negative prompt, ImageReward averaged over a candidate's views, min_max top-2 / bottom-2; t drawn as
    the experiment draws it over the reward's steps (0-4999 of its annealing schedule, t from about 380 to 980). Paths: the CUDA default (compiled, ``prior.dtype=auto``: fp16) and the same
    compiled prior in bf16, the default until it missed the bar in an earlier version of this section that rendered one
    group of 4 views (88.9% of 36 draws on an H100, ``scripts/measurements/2026-12-05_h100``; such runs do not pool
    with these, as their ``views`` differ)."""

    from rewardsds.config import validate
    from rewardsds.eval.agreement import collect_rewards, compare_selections, engine_selector
    from rewardsds.priors.config import MVDreamPriorConfig
    from rewardsds.priors.mvdream import MVDreamPrior
    from rewardsds.rng import Streams, seed_for
    from rewardsds.schedules import Schedule, TimestepSampler
    from rewardsds.schema import build
    from rewardsds.testing import build_mvdream

    names = (MVDREAM_DEFAULT_PATH, MVDREAM_BF16_PATH)
    if args.only_path and not set(args.only_path) & set(names):
        results["agreement_mvdream"] = {"paths": {}, "skipped": f"--only-path names none of its paths ({'; '.join(names)})"}
        print(f"agreement (MVDream): skipped, --only-path names none of its paths: {'; '.join(names)}", flush=True)
        return
    # the experiment as a run composes and validates it: N, lookahead, negative prompt, timestep annealing, cameras
    exp = validate(compose(["experiment=mvdream_nerf", f"prompt={PROMPT!r}"]))
    cameras = build(exp.cameras)
    n, views, look, strat = exp.n_noises, cameras.batch_size_at(0), exp.lookahead, exp.strategy
    sampler = TimestepSampler(Schedule.from_any(exp.timesteps.t_min), Schedule.from_any(exp.timesteps.t_max), 1000,
                              exp.timesteps.grid.value)
    reward_steps = int(exp.steps * exp.reward_duration)
    mv, base = build_mvdream(tmp / "mvdream_agreement", args.preset)

    def prior(dtype: str, compiled: bool):
        return MVDreamPrior(MVDreamPriorConfig(pretrained=str(mv), base_model=str(base), dtype=dtype, compile=compiled,
                                               compile_mode="reduce-overhead", compile_cache=args.compile_cache,
                                               channels_last=dtype != "fp32", local_files_only=True)).to(device)

    exact_prior = prior("fp32", False)
    per_seed = max(1, args.draws // 4)  # each seed's draws spread over the reward's steps
    draws = agreement_draws(args, exact_prior.latent_shape, views, sampler, max(1, reward_steps // per_seed))
    # each draw's cameras as a run with the draw's seed samples them at its step (2 groups of 4 orthogonal views)
    c2w = {(d.seed, d.step): cameras.sample(torch.Generator().manual_seed(seed_for(d.seed, d.step, Streams.CAMERA)), d.step).c2w
           for d in draws}
    sec = results.setdefault("agreement_mvdream", {"paths": {}})
    sec.update({"n_noises": n, "views": views, "lookahead_steps": look.steps, "lookahead": f"{look.grid.value} {look.steps} from "
                f"{look.start.value}, CFG {look.guidance_scale:g}", "n_max": strat.n_max, "n_min": strat.n_min,
                "reward_views": exp.reward_views.value, "draws": [{"seed": d.seed, "step": d.step, "t": d.t} for d in draws],
                "exact": "MVDream fp32, eager, TF32 off, full decode, ImageReward fp32 via PIL"})

    def path(p, reward_variant: str):
        eng = CandidateEngine(p, models.reward(reward_variant), look, chunk_size=args.chunk_size, reward_views=exp.reward_views)
        text = p.text_cond([PROMPT] * views, exp.negative_prompt)
        return lambda d: engine_selector(eng, text, [PROMPT] * views, n, camera=c2w[d.seed, d.step].to(device))(d)

    t0 = time.perf_counter()
    with tf32(matmul=False, cudnn=False):
        exact = collect_rewards(path(exact_prior, "pil32"), draws)
    del exact_prior
    gc.collect()
    sec["exact_s"] = time.perf_counter() - t0
    print(f"agreement (MVDream): exact fp32 path on {len(draws)} draws in {sec['exact_s']:.0f} s", flush=True)
    save()
    cuda = device.type == "cuda"
    for name, dtype in zip(names, ("auto", "bf16")):
        # a compiled path first compiles (about 150 s for the full-size model on a fresh machine): start it only with time for that
        if (args.only_path and name not in args.only_path) or not deadline.allows(f"agreement_mvdream:{name}", 200 if cuda else 10):
            continue
        t0 = time.perf_counter()
        p = prior(dtype, cuda)
        fast = collect_rewards(path(p, "fast"), draws)
        rep = compare_selections(exact, fast, strat.n_max, strat.n_min, draws)
        sec["paths"][name] = {**rep.to_json(per_draw=args.per_draw), "prior": f"mvdream_{'compiled' if cuda else 'eager'}_{dtype}",
                              "prior_dtype": dtype_name(p.dtype), "reward": "fast", "engine": {}, "seconds": time.perf_counter() - t0,
                              **rep.bar()}
        del p
        gc.collect()
        save()
        lo, hi = rep.agreement_ci95
        print(f"agreement (MVDream) {name:32s} {rep.agreement:6.1%}  (95% interval {lo:.0%}-{hi:.0%}; top {rep.top_agreement:.0%}, "
              f"bottom {rep.bottom_agreement:.0%}, rank corr {rep.rank_correlation:.3f}, regret mean {rep.regret_mean:.3f} "
              f"max {rep.regret_max:.3f})", flush=True)


def build_tiny_vae(folder: Path, preset: str) -> Path:
    """A random AutoencoderTiny (taesd architecture at full size): its cost is real, its images are not the VAE's."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    kw = {} if preset == "sd21_base" else dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                               num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), upsampling_scaling_factor=2)
    AutoencoderTiny(**kw).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------- main
def table(results: dict) -> str:
    rows = {**{f"{k} (baseline)": dict(v, variant="fp32 reference") for k, v in results["baseline"].items()}, **results["configs"]}
    lines = [f"device: {results['device']}; torch {results['torch']}"]
    if rows:  # the step rows' timesteps; the agreement tables name their draws
        lines[0] += f"; timesteps (seed 0, steps {results['measured_steps'][0]}..{results['measured_steps'][-1]}): {results['timesteps']}"
        lines += ["", "| config | prior | N | K | ms/step median (min-max) | UNet evals/step | ms/eval | fit: fixed + per eval (ms) | "
                  "MFU (UNet / all) | peak GB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        mfu = f"{r['mfu_unet']:.0%} / {r['mfu_model']:.0%}" if r.get("mfu_unet") is not None else "-"
        fit = f"{r['fit_ms']['fixed_ms']:.0f} + {r['fit_ms']['ms_per_eval']:.2f} x" if r.get("fit_ms") else "-"
        lines.append(f"| {name} | {r.get('variant', '')} | {r.get('n_noises', '')} | {r.get('lookahead_steps', '')} | {r['median_ms']:.1f} "
                     f"({r['min_ms']:.1f}-{r['max_ms']:.1f}) | {r['evals_per_step']:.1f} | {r.get('ms_per_eval_median', float('nan')):.2f} | {fit} | {mfu} | "
                     f"{r.get('peak_memory_gb') or 0:.2f} |")
    if results["speedups"]:
        lines += ["", "| speed-up over the reference structure (same N, K, t) | median ratio | paired median |", "|---|---|---|"]
        for k, v in results["speedups"].items():
            lines.append(f"| {k} | {v['median_ratio']:.2f}x | {v['paired_median_ratio']:.2f}x |")
    for key, what in (("agreement", ""), ("agreement_mvdream", "MVDream, ")):
        sec = results.get(key, {})
        if not sec.get("paths"):
            continue
        views = f", {sec['views']} views" if sec.get("views") else ""
        lines += ["", f"| selection agreement with the exact fp32 path ({what}N={sec['n_noises']}{views}, {len(sec['draws'])} draws) "
                  "| both sets (95% interval) | top | bottom | rank corr | regret mean / max | on-by-default bar (95%) |",
                  "|---|---|---|---|---|---|---|"]
        for k, v in sec["paths"].items():
            lo, hi = v.get("agreement_ci95", (float("nan"), float("nan")))
            lines.append(f"| {k} | {v['agreement']:.1%} ({lo:.0%}-{hi:.0%}) | {v['top_agreement']:.0%} | {v['bottom_agreement']:.0%} | "
                         f"{v['rank_correlation']:.3f} | {v.get('regret_mean', float('nan')):.3f} / {v.get('regret_max', float('nan')):.3f} | "
                         f"{'meets' if v['default_ok'] else 'misses'} |")
    att = results.get("unet_attention_batch20")
    if att:
        lines += ["", f"UNet at batch 20, eager: {att['auto']['median_ms']:.1f} ms with torch's attention kernel, "
                  f"{att['cudnn']['median_ms']:.1f} ms with cuDNN's first ({att.get('cudnn_speedup', float('nan')):.2f}x)"]
    cc = results.get("compile_cache")
    if cc:
        lines += ["", "| compile cache | process s | first step s | steady step s | first - steady s | torch.compile s |", "|---|---|---|---|---|---|"]
        for r in cc["runs"]:
            lines.append(f"| run {r['run']} | {r['process_wall_s']:.0f} | {r.get('first_step_s', float('nan')):.1f} | "
                         f"{r.get('steady_step_s', float('nan')):.3f} | {r.get('compile_s', float('nan')):.1f} | "
                         f"{r.get('torch_compile_s') or float('nan'):.1f} |")
        vs = cc.get("cli_vs_benchmark")
        if vs:
            cf, bf = vs["cli_fit_ms"], vs["benchmark_fit_ms"]
            lines += ["", f"CLI vs benchmark ({vs['row']}, {vs['benchmark_steps']} steps): median ratio {vs['median_ratio']:.3f}, "
                      f"total {vs['total_ratio']:.3f}; ms = fixed + per eval x evals: CLI {cf['fixed_ms']:.1f} + {cf['ms_per_eval']:.2f} x, "
                      f"benchmark {bf['fixed_ms']:.1f} + {bf['ms_per_eval']:.2f} x"]
    for s in results.get("skipped", []):
        lines.append(f"\nskipped: {s['what']} ({s['reason']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench.json"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="sd21_base", choices=["sd21_base", "tiny"])
    ap.add_argument("--sd-folder", type=Path, default=None, help="a random (or real) SD folder to reuse; a random one is built there if missing")
    ap.add_argument("--image-reward-dir", type=Path, default=None, help="a folder for (or with) the random ImageReward files")
    ap.add_argument("--sections", default=None, help=f"comma list of {', '.join(ALL_SECTIONS)} (default: {','.join(MAIN_SECTIONS)}; "
                    f"with --quick: {','.join(QUICK_SECTIONS)})")
    ap.add_argument("--quick", action="store_true", help="at most 8 agreement draws, and by default only the paper_2d rows (N=10: "
                    "baseline, eager, compiled) and their agreement")
    ap.add_argument("--full", action="store_true", help="also N in 4,8,10 x K in 0,1,4,15 (compiled), SDS compiled, MVDream")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--draws", type=int, default=16, help="agreement draws (4 seeds x draws/4 steps)")
    ap.add_argument("--agreement-n", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0, help="agreement draws from this seed on (4 seeds), so a second run adds new draws")
    ap.add_argument("--per-draw", action="store_true", help="keep every draw's sets in the JSON")
    ap.add_argument("--only-path", action="append", default=None, metavar="NAME",
                    help="measure only this agreement path (its name as printed; repeat for more), e.g. to spend a "
                         "device call's time on more draws of the default")
    ap.add_argument("--mv-steps", type=int, default=3)
    # 64 inputs per UNet call (N <= 32 in one call, as the automatic size gives on an H200); 0 = automatic, whose memory
    # probe calls the UNet at batch 2 and so compiles one more CUDA graph per compiled prior (the compile_cache
    # section runs the CLI, automatic size included)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--compile-cache", default="auto", help="prior.compile_cache of the compiled variants (auto: ~/.cache/rewardsds/torchinductor)")
    ap.add_argument("--compile-cache-probe", default=None, help="an EMPTY folder for the compile_cache section (default: a new temp folder)")
    ap.add_argument("--probe-steps", type=int, default=5)
    ap.add_argument("--probe-timeout", type=int, default=300, help="seconds per CLI run of the compile_cache section")
    ap.add_argument("--probe-logger", default="csv", choices=["csv", "none", "wandb"], help="logger of the compile_cache section's CLI runs")
    ap.add_argument("--against", type=Path, default=None,
                    help=f"an earlier benchmark JSON (same GPU): compare the compile_cache section's second CLI run with its {AGAINST_ROW} "
                         "row (default: this run's row, with --sections compile_cache,paper)")
    ap.add_argument("--reward-compile", action="store_true", help="torch.compile the fast reward too (reward.compile=true; default off as in the config)")
    ap.add_argument("--tiny-vae", action="store_true", help="time and measure decode=tiny with a random AutoencoderTiny")
    ap.add_argument("--fp32-below", type=int, default=250, help="lookahead.fp32_below of the fp32_ranking section's rows and paths")
    ap.add_argument("--mvdream", action="store_true")
    ap.add_argument("--time-limit", type=float, default=480.0, help="seconds; later sections are skipped, partial JSON kept")
    args = ap.parse_args(argv)
    quiet_progress_bars()  # a device log holds the benchmark's lines, not a "Loading weights" bar per model load
    device = torch.device(args.device)
    chosen = args.sections if args.sections is not None else ",".join(QUICK_SECTIONS if args.quick else MAIN_SECTIONS)
    sections = set(s.strip() for s in chosen.split(",") if s.strip())
    unknown = sections - set(ALL_SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; use {', '.join(ALL_SECTIONS)}")
    if args.mvdream:
        sections.add("mvdream")
    if args.quick:
        args.draws = min(args.draws, 8)
    args.fp32_view = bool(sections & set(FP32_SECTIONS))

    from rewardsds.testing import build_sd_pipeline

    tmp = Path(tempfile.mkdtemp(prefix="rewardsds_bench_"))
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
                               "preset": args.preset, "steps": args.steps, "warmup": args.warmup, "measured_steps": measured_steps(args),
                               "timesteps": timesteps_of(measured_steps(args)), "sections": sorted(sections), "quick": args.quick,
                               "configs": {}, "baseline": {}, "speedups": {}, "agreement": {"paths": {}}, "lookahead_mfu": {},
                               "tf32_for_our_configs": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}
    deadline = Deadline(args.time_limit, results)
    t0 = time.perf_counter()
    needs_sd = bool(sections - {"mvdream", "mvdream_agreement"})  # the MVDream sections build their own models
    if needs_sd and (args.sd_folder is None or not (args.sd_folder / "unet" / "config.json").is_file()):  # built once into --sd-folder
        args.sd_folder = build_sd_pipeline(args.sd_folder or tmp / "sd", args.preset, device=args.device,
                                           dtype=torch.float16 if device.type == "cuda" else torch.float32)
    args.image_reward = image_reward_files(args.image_reward_dir or tmp / "image_reward", args.preset)
    args.tiny_vae = build_tiny_vae(tmp / "taesd", args.preset) if (args.tiny_vae or args.full) else None
    results["build_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - t0
        tmp_out = args.out.with_suffix(".json.partial")
        tmp_out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        tmp_out.replace(args.out)

    models, flops = Models(args, device), Flops()
    cfg = lambda *a, **k: bench_config(args, models, flops, device, tmp, results, *a, **k)  # noqa: E731
    cuda = device.type == "cuda"
    f8_reason = models.float8_supported()
    results["float8_supported"] = f8_reason is None
    if f8_reason:
        results["float8_unsupported_reason"] = f8_reason

    if "compile_cache" in sections and deadline.allows("compile_cache", 60):
        bench_compile_cache(args, device, results)  # first: its CLI processes need the GPU to themselves
        save()
    if sections & set(MAIN_SECTIONS):
        bench_bare(models, device, results)
        save()
    if "paper" in sections and deadline.allows("paper (N=10, K=15)", 30):
        bench_baseline(args, models, device, results, 10)
        save()
        cfg("rewardsds_n10_k15_eager", "eager", 10, 15)
        save()
        if cuda and deadline.allows("rewardsds_n10_k15_compiled", 60):
            cfg("rewardsds_n10_k15_compiled", "compiled", 10, 15)
        speedup(results, 10)
        if "compile_cache" in sections and not args.against:  # the CLI's steps against this run's row, same machine
            compare_cli(results, results["configs"], "this run")
        save()
    if "levers" in sections:  # (on a CPU the "compiled" priors stay eager: the rows then only check the plumbing)
        bench_attention(models, device, results)
        save()
        # in the order of what each may win (measured or estimated on the H200): the reward's 21 ms eager at batch 8,
        # the attention kernels, the overlap of decode and reward, cuDNN's autotuner. Each row with its own prior
        # compiles its UNet again (the FX graph cache serves a repeated graph, not the cuDNN-attention one).
        # The candidates in two chunks of 5 (chunk_size=10 UNet inputs), without and with the decode and reward of
        # each chunk on a second stream beside the next chunk's lookahead: what splitting costs, what overlap wins.
        for name, variant, extra, reward_variant in (
                ("rewardsds_n10_k15_compiled_reward_compiled", "compiled", None, "fast_compiled"),
                ("rewardsds_n10_k15_compiled_cudnn_attention", "compiled_cudnn_sdpa", None, "fast"),
                ("rewardsds_n10_k15_compiled_2chunks", "compiled", ["chunk_size=10"], "fast"),
                ("rewardsds_n10_k15_compiled_2chunks_overlap", "compiled", ["chunk_size=10", "lookahead.overlap=true"], "fast"),
                ("rewardsds_n10_k15_compiled_cudnn_benchmark", "compiled_cudnn", None, "fast")):
            if deadline.allows(name, 60):
                cfg(name, variant, 10, 15, extra, reward_variant=reward_variant)
                save()
        speedup(results, 10)
        save()
    if "fp32_ranking" in sections:
        if "rewardsds_n10_k15_compiled" not in results["configs"] and deadline.allows("rewardsds_n10_k15_compiled", 60):
            cfg("rewardsds_n10_k15_compiled", "compiled", 10, 15)  # (on a CPU eager fp32: the rows check the plumbing)
        b = args.fp32_below
        for name, extra in ((f"rewardsds_n10_k15_compiled_fp32_below{b}", [f"lookahead.fp32_below={b}"]),
                            (f"rewardsds_n10_k15_compiled_fp32_below{b}_tf32", [f"lookahead.fp32_below={b}", "lookahead.fp32_tf32=true"])):
            if deadline.allows(name, 40):
                cfg(name, "compiled", 10, 15, extra)
                save()
        fp32_ranking_cost(results, b)
        speedup(results, 10)
        save()
    if "half" in sections:
        for name, variant in (("rewardsds_n10_k15_compiled", "compiled"), ("rewardsds_n10_k15_compiled_bf16", "compiled_bf16")):
            if name in results["configs"] or not deadline.allows(name, 60):
                continue
            try:
                cfg(name, variant, 10, 15)
            except RewardSDSError as err:  # a half precision's range can overflow: the row says so, the call goes on
                results["configs"][name] = {"error": f"{type(err).__name__}: {err}", "variant": variant}
                print(f"{name}: {err}", flush=True)
            save()
        speedup(results, 10)
        save()
    if "attribution" in sections and deadline.allows("rewardsds_n10_k15_compiled_bf16_reward", 60):
        # what the fp32 reward costs: the default's row (if the paper section did not time it) and a bf16 reward's
        if cuda and "rewardsds_n10_k15_compiled" not in results["configs"]:
            cfg("rewardsds_n10_k15_compiled", "compiled", 10, 15)
        cfg("rewardsds_n10_k15_compiled_bf16_reward", "compiled" if cuda else "eager", 10, 15, None, reward_variant="bf16")
        speedup(results, 10)
        save()
    if sections & {"agreement", "attribution", *FP32_SECTIONS, *HALF_SECTIONS} and deadline.allows("agreement", 90):
        variants = [("eager", "eager", {}, "fast")]
        if cuda:
            variants.append((DEFAULT_PATH, "compiled", {}, "fast"))
        if "levers" in sections:
            variants += [("compiled, compiled reward", "compiled", {}, "fast_compiled"),
                         ("compiled, cuDNN attention", "compiled_cudnn_sdpa", {}, "fast"),
                         # two chunks of half the candidates, overlapped (chunk_size = N UNet inputs)
                         ("compiled, 2 chunks overlapped", "compiled", {"overlap": True, "chunk_size": args.agreement_n}, "fast"),
                         ("compiled, cudnn.benchmark", "compiled_cudnn", {}, "fast")]
        if cuda and f8_reason is None and "float8" in sections:
            variants.append(("compiled_float8_lookahead", "compiled_float8", {}, "fast"))
        if not args.quick:
            variants += [("prune_to_5", "eager", {"prune_to": 5}, "fast"),
                         ("lookahead_8_steps", "eager", {"lookahead_steps": 8}, "fast"),
                         ("lookahead_4_steps", "eager", {"lookahead_steps": 4}, "fast"),
                         ("lookahead_1_step", "eager", {"lookahead_steps": 1}, "fast"),
                         ("one_step_x0 (K=0)", "eager", {"lookahead_steps": 0}, "fast")]
            if args.tiny_vae:
                variants.append(("tiny_decode (random taesd)", "eager", {"lookahead_decode": "tiny"}, "fast"))
        if "attribution" in sections:
            variants += list(ATTRIBUTION_PATHS)
        if "fp32_ranking" in sections:
            b = args.fp32_below
            variants += [(f"compiled, fp32 ranking below t={b}", "compiled", {"fp32_below": b}, "fast"),
                         (f"compiled, fp32 ranking below t={b}, TF32", "compiled", {"fp32_below": b, "fp32_tf32": True}, "fast"),
                         (f"attribution: compiled, fp32 decode only below t={b}", "compiled", {"fp32_below": b, "decode_only": True}, "fast")]
        if "half" in sections:
            variants.append((BF16_PATH, "compiled_bf16", {}, "fast"))
        if args.only_path:
            unknown = sorted(set(args.only_path) - {v[0] for v in variants})
            if unknown:
                raise SystemExit(f"--only-path {unknown[0]!r}: no such agreement path with these sections; they are: "
                                 + "; ".join(v[0] for v in variants))
            variants = [v for v in variants if v[0] in args.only_path]
        bench_agreement(args, models, device, results, deadline, variants)
        save()
    if "float8" in sections and f8_reason is None:
        if deadline.allows("rewardsds_n10_k15_compiled_float8", 90):
            cfg("rewardsds_n10_k15_compiled_float8", "compiled_float8", 10, 15)
            save()
        if deadline.allows("rewardsds_n10_k15_eager_float8", 30):
            cfg("rewardsds_n10_k15_eager_float8", "eager_float8", 10, 15)
            save()
    elif "float8" in sections:
        results.setdefault("skipped", []).append({"what": "float8", "reason": f8_reason})
    if "reference_n8" in sections and deadline.allows("reference N=8 (the issue's measured reference)", 40):
        bench_baseline(args, models, device, results, 8)
        cfg("rewardsds_n8_k15_eager", "eager", 8, 15)
        if cuda and deadline.allows("rewardsds_n8_k15_compiled", 60):
            cfg("rewardsds_n8_k15_compiled", "compiled", 8, 15)
        speedup(results, 8)
        save()
    if "variants" in sections:
        if deadline.allows("sds_eager", 10):
            cfg("sds_eager", "eager", 1, 0)
        if deadline.allows("prune", 20):
            cfg("rewardsds_n10_k15_prune5_eager", "eager", 10, 15, ["lookahead.prune_to=5"])
        if args.tiny_vae and deadline.allows("tiny decode", 20):
            cfg("rewardsds_n10_k15_tinydecode_eager", "eager", 10, 15, ["lookahead.decode=tiny", f"prior.tiny_vae={args.tiny_vae}"])
        if args.full and cuda:
            for n in (4, 8, 10):
                for k in (0, 1, 4, 15):
                    name = f"rewardsds_n{n}_k{k}_compiled"
                    if name not in results["configs"] and deadline.allows(name, 60):
                        cfg(name, "compiled", n, k)
                        save()
            if deadline.allows("sds_compiled", 60):
                cfg("sds_compiled", "compiled", 1, 0)
        save()
    if "mfu" in sections and deadline.allows("lookahead_mfu", 20):
        bench_lookahead_mfu(models, flops, device, results, "eager")
        if cuda:
            bench_lookahead_mfu(models, flops, device, results, "compiled")
        save()
    if "mvdream" in sections and deadline.allows("mvdream", 60):
        bench_mvdream(args, device, tmp, results, models.reward("fast"))
    if "mvdream_agreement" in sections and deadline.allows("agreement_mvdream", 90):
        bench_mvdream_agreement(args, models, device, tmp, results, deadline, save)
        save()
    results["flops"] = {k: v / 1e9 for k, v in flops.values.items()}
    results["flops_unit"] = "GFLOP per sample (unet: one 64x64 evaluation; decode: one 512x512 image; reward: one image)"
    results["model_build_s"] = models.build_s
    save()
    md = table(results)
    args.out.with_suffix(".md").write_text(md + "\n")
    print("\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
