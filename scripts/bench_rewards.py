"""Time the reward models on the GPU at full size with random weights (no downloads).

For each reward the full architecture is built directly on CUDA (ImageReward: BLIP ViT-L/16 + BERT with
cross-attention; CLIP score and aesthetic: CLIP ViT-L/14; PickScore and HPSv2.1: CLIP ViT-H/14), then a
batch of ``--batch`` RGB images of ``--size``^2 in [0, 1] is scored the way the training loop does it
(``reward(images, prompt, check=False)``: tensor preprocessing, cached prompt) and timed with CUDA events
after warm-up: median, 10th and 90th percentile of ``--iters`` calls.

Usage::

    python scripts/bench_rewards.py bench_rewards.json [--rewards image_reward,clip,aesthetic,pickscore,hpsv2]
        [--dtypes bf16,fp32] [--attention sdpa,eager] [--compile] [--batch 8] [--size 512] [--iters 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewardsds.rewards.aesthetic import AestheticReward  # noqa: E402
from rewardsds.rewards.clip import CLIPImageTower, CLIPScore  # noqa: E402
from rewardsds.rewards.config import (  # noqa: E402
    AestheticRewardConfig,
    CLIPScoreConfig,
    HPSv2Config,
    ImageRewardConfig,
    PickScoreConfig,
)
from rewardsds.rewards.hpsv2 import HPSv2  # noqa: E402
from rewardsds.rewards.image_reward import ImageReward, load_image_reward_tokenizer  # noqa: E402
from rewardsds.rewards.pickscore import PickScore  # noqa: E402
from rewardsds.rewards.preprocess import ImageTransform  # noqa: E402
from rewardsds.schema import DType  # noqa: E402
from rewardsds.testing import (  # noqa: E402
    build_random_clip_model,
    build_random_image_reward_model,
    clip_tokenizer,
    write_bert_vocab,
)

PROMPT = "a DSLR photo of a red fox sitting in the snow, highly detailed"
#: ImageReward bf16 on 8 images of 512x512 (with compile=true) must stay under this in a RewardSDS step, H100/H200
IMAGE_REWARD_BUDGET_MS = 15.0
REWARDS = ("image_reward", "clip", "aesthetic", "pickscore", "hpsv2")


def build(name: str, attention: str, compile: bool, tmp: Path):
    """A full-size random-weight reward on CUDA (fp32 master weights)."""
    opts = dict(dtype="fp32", attention=attention, compile=compile)  # the CLIP models get attention when built
    if name == "image_reward":
        model = build_random_image_reward_model("full", device="cuda")
        tok = load_image_reward_tokenizer(str(write_bert_vocab(tmp / "bert", 30522, PROMPT.lower().split())),
                                          local_files_only=True)
        return ImageReward.from_parts(ImageRewardConfig(**opts), model, tok)
    arch = "vit-l-14" if name in ("clip", "aesthetic") else "vit-h-14"
    model = build_random_clip_model(arch, device="cuda", attention=attention)
    floor = ImageTransform(size=224, crop=224, crop_rounding="floor")
    if name == "clip":
        return CLIPScore.from_parts(CLIPScoreConfig(**opts), model, clip_tokenizer(), floor)
    if name == "aesthetic":
        head = torch.nn.Linear(model.config.projection_dim, 1)  # the LAION linear head (the MLP head costs ~0.1 ms more)
        return AestheticReward.from_parts(AestheticRewardConfig(**opts), CLIPImageTower(model), head, floor)
    if name == "pickscore":
        return PickScore.from_parts(PickScoreConfig(**opts), model, clip_tokenizer(), floor)
    return HPSv2.from_parts(HPSv2Config(**opts), model, clip_tokenizer(), ImageTransform(size=224, crop=224))


def time_calls(reward, images: torch.Tensor, prompts: list[str], warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        reward(images, prompts, check=False)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        reward(images, prompts, check=False)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="JSON file to write")
    p.add_argument("--rewards", default=",".join(REWARDS))
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--attention", default="sdpa", help="comma-separated: sdpa, eager")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_rewards.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True  # as in training; fp32 timings use TF32 tensor cores
    torch.backends.cudnn.allow_tf32 = True

    images = torch.rand(args.batch, 3, args.size, args.size, device="cuda")
    prompts = [PROMPT] * args.batch
    results = []
    variants = [(a, c) for a in args.attention.split(",") for c in ([False, True] if args.compile else [False])]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rewards.split(","):
            for attention, compiled in variants:
                torch.cuda.empty_cache()
                reward = build(name, attention, compiled, Path(tmp))
                n_params = sum(p.numel() for p in reward.model.parameters())
                for dtype in args.dtypes.split(","):  # fp32 master weights are cast down once per dtype
                    reward.cfg.dtype = DType(dtype)
                    reward.to("cuda")
                    torch.cuda.reset_peak_memory_stats()
                    t0 = time.perf_counter()
                    reward(images, prompts, check=False)
                    torch.cuda.synchronize()
                    first_ms = (time.perf_counter() - t0) * 1e3
                    times = time_calls(reward, images, prompts, args.warmup, args.iters)
                    q = statistics.quantiles(times, n=10)
                    results.append(dict(reward=name, dtype=dtype, attention=attention, compile=compiled,
                                        median_ms=statistics.median(times), p10_ms=q[0], p90_ms=q[-1],
                                        first_call_ms=first_ms, params_m=n_params / 1e6,
                                        peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20))
                    r = results[-1]
                    if name == "image_reward" and dtype == "bf16" and compiled and args.batch == 8 and args.size == 512:
                        # the reward's share of a RewardSDS step (README's targets), stated for compile=true
                        r.update(target_ms=IMAGE_REWARD_BUDGET_MS, meets_target=r["median_ms"] < IMAGE_REWARD_BUDGET_MS)
                    print(f"{name:>12} {dtype:>5} {attention:>5} compile={str(compiled):<5} "
                          f"median {r['median_ms']:7.2f} ms  p10 {r['p10_ms']:7.2f}  p90 {r['p90_ms']:7.2f}  "
                          f"first {first_ms:8.1f} ms  peak {r['peak_mem_mb']:7.0f} MiB", flush=True)
                del reward
    import transformers

    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, transformers=transformers.__version__,
                  batch=args.batch, size=args.size, iters=args.iters, warmup=args.warmup, results=results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nReward scoring of {args.batch} images of {args.size}x{args.size} on {report['device']} "
          f"(torch {torch.__version__}, transformers {transformers.__version__}); median of {args.iters} calls, ms")
    print("| reward | dtype | attention | compile | median ms | p90 ms | params (M) | peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['reward']} | {r['dtype']} | {r['attention']} | {r['compile']} | {r['median_ms']:.2f} | "
              f"{r['p90_ms']:.2f} | {r['params_m']:.0f} | {r['peak_mem_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
