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
    from torch.profiler import ProfilerActivity, profile, record_function

    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior
    from rewardsds.testing import build_sd_pipeline

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="rewardsds_profile_"))
    folder = args.sd_folder or build_sd_pipeline(tmp / "sd", args.preset)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    prior = StableDiffusionPrior(SDPriorConfig(pretrained=str(folder), dtype=dtype, compile=args.compile,
                                               compile_mode="reduce-overhead", local_files_only=True)).to(device)
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
    # Unprofiled wall time per call (the profiler itself adds host time per operator).
    walls = {}
    for name, fn in (("step", lambda s: system.run_step(s, opt)), ("bare_unet_b2", lambda s: bare())):
        times = [B.timed(lambda: fn(3 + s), device) for s in range(3 * args.steps)]
        walls[name] = 1000 * sorted(times)[len(times) // 2]
    print(f"unprofiled median: step {walls['step']:.2f} ms, bare UNet b2 {walls['bare_unet_b2']:.2f} ms, "
          f"ratio {walls['step'] / walls['bare_unet_b2']:.3f}")
    if device.type == "cuda":
        report_syncs(lambda: system.run_step(3, opt))
    label_stages(system, opt)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in (("step", lambda s: system.run_step(s, opt)), ("bare_unet_b2", lambda s: bare())):
        B.sync(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            for s in range(args.steps):
                with record_function("call"):  # one range per call, closed after the device is done
                    fn(3 + s)
                    B.sync(device)
        ms = 1000 * (time.perf_counter() - t0) / args.steps
        ka = prof.key_averages()
        print(f"\n=== {name}: {ms:.1f} ms per call (profiled), {sum(e.count for e in ka) / args.steps:.0f} operator calls per call")
        stage_table(ka, args.steps)
        if device.type == "cuda":
            trace = Path(tempfile.mkdtemp(prefix="rewardsds_trace_")) / f"{name}.json"
            prof.export_chrome_trace(str(trace))
            timeline(trace)
            if args.trace and name == "step":
                args.trace.write_bytes(trace.read_bytes())
        print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows))
        if device.type == "cuda":
            print(ka.table(sort_by="self_cuda_time_total", row_limit=args.rows))
    return 0


STAGES = ("render", "context", "draw", "predict", "look_and_score", "weigh", "loss_rest", "regularizers", "backward",
          "grad_norm", "optimizer_step")


def label_stages(system, opt) -> None:
    """Wrap the step's stages in profiler ranges named ``stage/<name>`` (this script only; the product is untouched).

    ``loss_rest`` is the whole of :func:`rewardsds.system.distill` (the engine's stages nest inside it); ``predict`` is
    the prediction at t (and a mode's own predictions), ``look_and_score`` the lookahead, its decode and the reward
    (:meth:`~rewardsds.candidates.CandidateEngine.look_ahead_and_score` where pruning applies). An engine stage that
    another one calls (the lookahead's model calls, the pruned path's decodes) stays in its caller's range, so the
    ranges do not count one call twice.
    """
    import rewardsds.system
    from torch.profiler import record_function

    inside_engine = [False]

    def wrap(obj, attr: str, label: str, engine_stage: bool = False) -> None:
        fn = getattr(obj, attr)

        def wrapped(*a, **k):
            if engine_stage and inside_engine[0]:
                return fn(*a, **k)
            with record_function(f"stage/{label}"):
                if not engine_stage:
                    return fn(*a, **k)
                inside_engine[0] = True
                try:
                    return fn(*a, **k)
                finally:
                    inside_engine[0] = False

        setattr(obj, attr, wrapped)

    engine = system.engine
    wrap(system, "scene_latents", "render")
    wrap(system, "make_context", "context")
    wrap(engine, "draw", "draw", engine_stage=True)
    wrap(engine, "predict", "predict", engine_stage=True)
    for attr in ("look_ahead_and_score", "lookahead", "decode", "score"):
        wrap(engine, attr, "look_and_score", engine_stage=True)
    wrap(engine, "weigh", "weigh", engine_stage=True)
    wrap(system.representation, "regularizers", "regularizers")
    wrap(torch.autograd, "backward", "backward")
    wrap(torch.nn.utils, "get_total_norm", "grad_norm")
    wrap(opt, "step", "optimizer_step")
    wrap(rewardsds.system, "distill", "loss_rest")  # run_step calls the module's distill: the loss mode's whole range


def report_syncs(fn) -> None:
    """Run ``fn`` with CUDA sync debugging on and print where it made the host wait for the device."""
    import traceback
    import warnings

    seen: dict[str, int] = {}
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message) or "prototype" in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "rewardsds" in f.filename or "scripts" in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-3:])) or f"{filename}:{lineno}"
        seen[where] = seen.get(where, 0) + 1

    warnings.showwarning = show
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old
    print(f"host syncs in one step: {sum(seen.values())}")
    for where, count in seen.items():
        print(f"  {count} x {where}")


def stage_table(ka, steps: int) -> None:
    """Host time (the CPU side of each ``stage/`` range) and device time (kernels inside it) per step."""
    host, dev = {}, {}
    for e in ka:
        if e.key.startswith("stage/"):
            name = e.key[len("stage/"):]
            host[name] = max(host.get(name, 0.0), e.cpu_time_total)
            dev[name] = max(dev.get(name, 0.0), getattr(e, "device_time_total", 0.0))
    if not host:
        return
    print(f"{'stage':16s} {'host ms/step':>12s} {'device ms/step':>15s}  (ranges nest: loss_rest holds draw .. weigh)")
    for name in STAGES:
        if name in host:
            print(f"{name:16s} {host[name] / 1000 / steps:12.2f} {dev[name] / 1000 / steps:15.2f}")


def timeline(trace: Path, gap_us: float = 50.0) -> None:
    """From a Chrome trace of calls wrapped in ``call`` ranges: per call, when the device was busy, and every device
    idle gap of at least ``gap_us`` with the host range (stage or runtime call) that was running when it began."""
    import json

    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    calls = sorted((e for e in events if e.get("name") == "call" and e.get("cat") == "user_annotation"), key=lambda e: e["ts"])
    device = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    host = [e for e in events if e.get("cat") in ("user_annotation", "cuda_runtime", "cuda_driver") and e.get("name") != "call"]
    rows = []
    for c in calls:
        lo, hi = c["ts"], c["ts"] + c["dur"]
        ks = [k for k in device if lo <= k["ts"] <= hi]
        if not ks:
            continue
        busy, gaps, end = 0.0, [], ks[0]["ts"]
        for k in ks:
            if k["ts"] - end >= gap_us:
                gaps.append((end, k["ts"] - end))
            busy += max(0.0, k["ts"] + k["dur"] - max(end, k["ts"]))
            end = max(end, k["ts"] + k["dur"])
        rows.append((c["dur"], ks[0]["ts"] - lo, busy, end - lo, gaps, lo))
    if not rows:
        return
    rows.sort(key=lambda r: r[0])
    dur, first, busy, last, gaps, lo = rows[len(rows) // 2]  # the median call
    print(f"timeline of the median call: {dur / 1000:.2f} ms; device busy {busy / 1000:.2f} ms; first kernel at "
          f"{first / 1000:.2f} ms, last done at {last / 1000:.2f} ms; idle gaps >= {gap_us:.0f} us:")
    for start, length in gaps:
        active = [h for h in host if h["ts"] <= start <= h["ts"] + h["dur"]]
        what = ", ".join(sorted({h["name"][:40] for h in active})) or "-"
        print(f"  at {(start - lo) / 1000:7.2f} ms for {length / 1000:6.2f} ms, host in: {what}")


if __name__ == "__main__":
    raise SystemExit(main())
