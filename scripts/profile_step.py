"""Profile one kind of training step against a bare UNet call (torch.profiler), to see where step time goes.

    python scripts/profile_step.py --sd-folder /path/to/sd [--overrides strategy=none n_noises=1] [--steps 5] [--compile]

Builds the prior and the system exactly as ``scripts/benchmark.py`` does (random full-size SD2.1-base unless
``--sd-folder`` is given), warms up, then records ``--steps`` training steps and ``--steps`` bare UNet calls at
batch 2 and prints, for each, the wall time per call and the operators with the most CPU and CUDA time. The
trace of the steps is written to ``--trace`` (Chrome trace JSON) when given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as B  # noqa: E402  (the same builders as the benchmark)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd-folder", type=Path, default=None)
    ap.add_argument("--preset", default="sd21_base", choices=["sd21_base", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--overrides", nargs="*", default=["strategy=none", "n_noises=1"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--trace", type=Path, default=None)
    args = ap.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from rewardsds.priors.sd import StableDiffusionPrior
    from rewardsds.testing import build_sd_pipeline

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="rewardsds_profile_"))
    folder = args.sd_folder or build_sd_pipeline(tmp / "sd", args.preset)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    prior = StableDiffusionPrior(str(folder), dtype=dtype, compile=args.compile, compile_mode="reduce-overhead" if args.compile else "default",
                                 local_files_only=True).to(device)
    reward = B.build_reward(args.preset, device, fast=True, compile=args.compile, tmp=tmp)
    cfg = B.compose([f"prompt={B.PROMPT}", f"prior.pretrained={folder}", "logger=none", "reward=image_reward", "seed=0",
                     f"steps={3 * args.steps + 10}", *args.overrides])
    system, opt = B.build_system(cfg, prior, reward, device, tmp / "run")
    x = torch.randn(2, *prior.latent_shape, device=device)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    emb = prior.encode_text([B.PROMPT, ""])

    def bare():
        with torch.no_grad():
            prior.predict_noise(x, t, emb)

    for s in range(3):
        system.run_step(s, opt)
        bare()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in (("step", lambda s: system.run_step(s, opt)), ("bare_unet_b2", lambda s: bare())):
        B.sync(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            for s in range(args.steps):
                fn(3 + s)
            B.sync(device)
        ms = 1000 * (time.perf_counter() - t0) / args.steps
        ka = prof.key_averages()
        print(f"\n=== {name}: {ms:.1f} ms per call (profiled), {sum(e.count for e in ka) / args.steps:.0f} operator calls per call")
        print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows))
        if device.type == "cuda":
            print(ka.table(sort_by="self_cuda_time_total", row_limit=args.rows))
        if args.trace and name == "step":
            prof.export_chrome_trace(str(args.trace))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
