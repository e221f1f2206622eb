"""Speed and memory of the NeRF grid encodings; the hash grid's Triton kernels next to its PyTorch version.

Sections (``--sections``; all of them by default on CUDA, ``encoding`` alone on the CPU):

- ``sweep`` (CUDA): every launch shape of each Triton kernel (``_hash_triton.sweep_configs()``: block
  size, warps, levels on the grid or looped) timed on 2^21 ray-ordered points of the paper's grid,
  each checked against the default shape's result. Prints every shape and the fastest per kernel.
- ``encoding``: for ``--points`` (2^18 and 2^21 on CUDA) and each encoding: forward alone, forward +
  backward into the encoding's parameters (what a NeRF step does per sample), and the analytic-normals
  pass (forward, d(sigma)/dx with create_graph, a loss on it, backward) through a 32-64-1 MLP. Median
  ms and peak MB. Encodings: ``triplane`` (8 x 4, 32 -> 546), ``dense`` (8 x 4, 16 -> 256),
  ``hash-torch`` and ``hash-triton`` (the paper's grid: 16 x 2, 2^19 rows, 16 -> 4096).
- ``nerf`` (CUDA, nerfacc): ``scripts/bench_3d.py``'s render + backward of 4 views at ``--resolutions``
  (64 and 256 px) for the triplane, the hash grid through PyTorch and through Triton, and the Triton
  hash grid with analytic normals (``--nerf-cases``; ``case@64`` restricts a case to one resolution).

- ``profile`` (CUDA): one render + backward of each ``--profile`` case (``nerf-hash`` at 64 and 256 px) under
  torch.profiler: the kernels that take the GPU time (printed, and the top rows in the JSON).

When the sweep finds shapes faster than the defaults (``_hash_triton.KERNEL_CONFIGS``), the Triton rows
of the later sections are measured again with them (``hash-triton-tuned``, ``nerf-hash-tuned``), so one
run answers both. A case that fails (e.g. out of memory) is recorded with its error and the run goes on;
the exit status is 1 if any failed. Results go to ``--out`` as JSON (device, versions, every row).

    python scripts/bench_grid_encoding.py --out grid_gpu.json                  # everything, ~2 minutes on an H200
    python scripts/bench_grid_encoding.py --sections sweep encoding --points 262144 --out k.json
    python scripts/bench_grid_encoding.py --sections nerf --nerf-cases nerf-hash nerf-triplane --out n.json
    python scripts/bench_grid_encoding.py --device cpu --points 65536 262144 --out grid_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rewardsds, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_3d beside this file

from rewardsds.representations._grid import DenseGridEncoding, HashGridEncoding, TriplaneEncoding  # noqa: E402

PAPER_HASH = (16, 2, 19, 16, 1.447269237440378)
ENCODINGS: dict[str, Callable[[], torch.nn.Module]] = {
    "triplane": lambda: TriplaneEncoding(8, 4, 32, 1.5),
    "dense": lambda: DenseGridEncoding(8, 4, 16, 1.4859),
    "hash-torch": lambda: HashGridEncoding(*PAPER_HASH, backend="torch"),
    "hash-triton": lambda: HashGridEncoding(*PAPER_HASH, backend="triton"),
}
NERF_DEFAULT = ["nerf-triplane", "nerf-hash-torch", "nerf-hash", "nerf-hash-normals", "nerf-hash-torch-normals@64"]
FAILURES: list[str] = []


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ray_points(n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """[n, 3] points in [0, 1]^3 ordered along rays through a ball of radius 0.45 (as a NeRF's samples)."""
    g = torch.Generator().manual_seed(seed)
    per_ray = 128
    rays = (n + per_ray - 1) // per_ray
    o = torch.nn.functional.normalize(torch.randn(rays, 3, generator=g), dim=-1) * 0.45
    d = torch.nn.functional.normalize(-o + 0.2 * torch.randn(rays, 3, generator=g), dim=-1)
    t = torch.arange(per_ray) * (0.9 / per_ray)
    return ((o[:, None] + d[:, None] * t[None, :, None]).reshape(-1, 3)[:n] + 0.5).to(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, slow_ms: float = 150.0) -> dict:
    """Median / min ms of ``fn`` after ``warmup`` calls, and the peak memory above the starting point. Calls
    slower than ``slow_ms`` (after the first, which compiles) are repeated 3 times only, to keep the run short."""
    times, warm = [], []
    sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(max(warmup, 2)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        warm.append((time.perf_counter() - t0) * 1e3)
    for _ in range(repeats if warm[-1] < slow_ms else min(repeats, 3)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    out = {"ms_median": statistics.median(times), "ms_min": min(times), "repeats": len(times)}
    if device.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return out


def guarded(label: str, fn: Callable[[], dict]) -> dict:
    """Run one case; record an error (out of memory, compile failure) instead of stopping the run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported and makes the exit status 1
        FAILURES.append(f"{label}: {type(e).__name__}: {e}")
        traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {str(e)[:500]}"}


# ----------------------------------------------------------------------------------------- sweep
def sweep(device: torch.device, n: int, warmup: int, repeats: int) -> tuple[list[dict], dict]:
    """Time every launch shape of every kernel; returns (rows, fastest shape per kernel)."""
    from rewardsds.representations import _hash_triton as H

    torch.manual_seed(0)
    enc = HashGridEncoding(*PAPER_HASH, init_scale=0.1, backend="triton").to(device)
    layout, table = enc.layout(device), enc.params.detach()
    x = ray_points(n, device)
    g = torch.randn(n, 32, device=device)
    u = torch.randn(n, 3, device=device)
    L = PAPER_HASH[0]
    ops: dict[str, Callable[[], tuple]] = {
        "forward": lambda: (H.hash_forward(x, table, layout, L),),
        "backward": lambda: H.hash_backward(x, table, g, layout, L, need_x=False, need_table=True),
        "backward_x": lambda: H.hash_backward(x, table, g, layout, L, need_x=True, need_table=False),
        "double_backward": lambda: H.hash_double_backward(x, table, g, u, None, layout, L, need_x=True, need_table=True,
                                                          need_grad=True),
    }
    defaults = dict(H.KERNEL_CONFIGS)
    rows, best = [], {}
    try:
        for kind, op in ops.items():
            H.KERNEL_CONFIGS[kind] = defaults[kind]
            reference = [t.float() for t in op() if t is not None]
            for cfg in H.sweep_configs():
                H.KERNEL_CONFIGS[kind] = cfg
                label = f"sweep {kind} block={cfg.block} warps={cfg.num_warps} level_loop={cfg.level_loop}"

                def run(op=op, reference=reference) -> dict:
                    got = [t.float() for t in op() if t is not None]
                    err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(got, reference))
                    return {**timed(op, device, warmup, repeats), "rel_err_vs_default": err}

                r = {"kernel": kind, "block": cfg.block, "num_warps": cfg.num_warps, "level_loop": cfg.level_loop,
                     "default": cfg == defaults[kind], "points": n, **guarded(label, run)}
                rows.append(r)
                if "ms_median" in r:
                    print(f"{label:70s} {r['ms_median']:8.3f} ms  (rel. diff to default {r['rel_err_vs_default']:.1e})", flush=True)
                    if r["rel_err_vs_default"] > 1e-4:
                        FAILURES.append(f"{label}: result differs from the default shape's by {r['rel_err_vs_default']:.2e}")
                    elif kind not in best or r["ms_median"] < best[kind][1]:
                        best[kind] = (cfg, r["ms_median"])
            H.KERNEL_CONFIGS[kind] = defaults[kind]
    finally:
        H.KERNEL_CONFIGS.update(defaults)
    fastest = {k: c for k, (c, _) in best.items()}
    for kind, cfg in fastest.items():
        d = [r for r in rows if r["kernel"] == kind and r["default"] and "ms_median" in r]
        dflt = f"{d[0]['ms_median']:.3f} ms" if d else "n/a"
        print(f"fastest {kind:16s} block={cfg.block} warps={cfg.num_warps} level_loop={cfg.level_loop}  "
              f"{best[kind][1]:.3f} ms (default {dflt})", flush=True)
    return rows, fastest


# ----------------------------------------------------------------------------------------- encodings alone
def encoding_rows(name: str, n: int, device: torch.device, warmup: int, repeats: int, label: Optional[str] = None) -> list[dict]:
    torch.manual_seed(0)
    enc = ENCODINGS[name]().to(device)
    mlp = torch.nn.Sequential(torch.nn.Linear(enc.n_output_dims, 64, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(64, 1, bias=False)).to(device)
    x = ray_points(n, device)
    rows = []

    def forward():
        with torch.no_grad():
            enc(x)

    def forward_backward():
        enc.zero_grad(set_to_none=True)
        enc(x).square().sum().backward()

    def normals():
        enc.zero_grad(set_to_none=True)
        mlp.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_(True)
        sigma = torch.nn.functional.softplus(mlp(enc(xg))[:, 0])
        (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=True)
        (torch.nn.functional.normalize(-grad, dim=-1)[:, 2].clamp_min(0).square().mean() + sigma.mean()).backward()

    for what, fn in (("forward", forward), ("forward_backward", forward_backward), ("normals", normals)):
        lab = label or name
        r = {"encoding": lab, "what": what, "points": n, "features": enc.n_output_dims,
             "params": sum(p.numel() for p in enc.parameters()),
             **guarded(f"{lab} {what} N={n}", lambda: timed(fn, device, warmup, repeats))}
        rows.append(r)
        if "ms_median" in r:
            mem = f"  peak {r['peak_mb']:8.0f} MB" if "peak_mb" in r else ""
            print(f"{lab:18s} {what:16s} N={n:8d}  {r['ms_median']:9.2f} ms (median){mem}", flush=True)
    del enc, mlp
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------- NeRF
def nerf_rows(cases: list[str], resolutions: list[int], device: torch.device, warmup: int, repeats: int,
              suffix: str = "") -> list[dict]:
    from bench_3d import bench_case

    rows = []
    for spec in cases:
        case, _, only = spec.partition("@")
        for res in ([int(only)] if only else resolutions):
            label = f"{case}{suffix} 4x{res}^2"
            # The PyTorch hash grid takes about a second per call at 256 px: fewer calls.
            w, n = (min(warmup, 2), min(repeats, 4)) if "torch" in case and res > 128 else (warmup, repeats)
            r = guarded(label, lambda: bench_case(case, res, device, w, n))
            r.update({"case": case + suffix, "resolution": res})
            rows.append(r)
            if "ms_median" in r:
                print(f"{case + suffix:28s} 4x{res:3d}^2  render+backward {r['ms_median']:8.2f} ms (median)  peak "
                      f"{r['peak_mem_mb'] / 1024:6.2f} GB  points {r.get('points_with_grad_last_step', 0):>9d} with grad / "
                      f"{r.get('points_encoded_last_step', 0):>9d} encoded", flush=True)
            torch.cuda.empty_cache()
    return rows


def profile_rows(spec: str, device: torch.device, warmup: int, top: int = 25) -> dict:
    """GPU time per kernel of one NeRF render + backward (torch.profiler), the ``top`` largest."""
    from torch.profiler import ProfilerActivity, profile

    from bench_3d import build
    from rewardsds.cameras import CameraSampler
    from rewardsds.config import CameraConfig

    case, _, res = spec.partition("@")
    torch.manual_seed(0)
    rep = build(case, device)
    rep.update_occupancy(0, force=True)
    sampler = CameraSampler(CameraConfig(resolution=int(res or 256), batch_size=4, views_per_object=4))
    gen = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        rep.zero_grad(set_to_none=True)
        out = rep.render(sampler.sample(gen, i).to(device), i)
        (out["rgb"].square().mean() + out["opacity"].mean() + sum(rep.regularizers(out, i).values())).backward()

    for i in range(warmup):
        step(i)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        step(warmup)
        sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    print(f"profile {spec}: GPU time per kernel / op (self), top {top}")
    print(events.table(sort_by=key, row_limit=top), flush=True)
    rows = sorted(({"name": e.key, "calls": e.count, "self_gpu_ms": getattr(e, key) / 1e3, "self_cpu_ms": e.self_cpu_time_total / 1e3}
                   for e in events), key=lambda r: -r["self_gpu_ms"])
    del rep
    torch.cuda.empty_cache()
    gpu_ms = sum(r["self_gpu_ms"] for r in rows)
    print(f"profile {spec}: {wall_ms:.1f} ms wall under the profiler, {gpu_ms:.1f} ms of GPU time", flush=True)
    return {"case": spec, "wall_ms_profiled": wall_ms, "gpu_ms_total": gpu_ms, "top": rows[:top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sections", nargs="+", default=None, choices=["sweep", "encoding", "nerf", "profile"],
                    help="default: all on CUDA, encoding on the CPU")
    ap.add_argument("--points", type=int, nargs="+", default=None, help="encoding section (default 2^18 2^21 on CUDA, 65536 on the CPU)")
    ap.add_argument("--encodings", nargs="+", default=None, choices=list(ENCODINGS), help="default: all but dense (CPU: no hash-triton)")
    ap.add_argument("--sweep-points", type=int, default=1 << 21)
    ap.add_argument("--nerf-cases", nargs="+", default=NERF_DEFAULT, help="bench_3d.py cases; case@RES runs one resolution")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--profile", nargs="+", default=["nerf-hash@64", "nerf-hash@256"], help="cases of the profile section (case@RES)")
    ap.add_argument("--warmup", type=int, default=2, help="at least 2 (the first call compiles)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--nerf-warmup", type=int, default=3)
    ap.add_argument("--nerf-repeats", type=int, default=10)
    ap.add_argument("--no-tuned", action="store_true", help="do not re-measure the Triton rows with the sweep's fastest shapes")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sections = args.sections or (["sweep", "encoding", "nerf", "profile"] if cuda else ["encoding"])
    if not cuda and ({"sweep", "nerf", "profile"} & set(sections)):
        raise SystemExit("the sweep, nerf and profile sections measure CUDA paths: run them on a GPU (or pass --sections encoding)")
    points = args.points or ([1 << 18, 1 << 21] if cuda else [65536])
    encodings = args.encodings or [e for e in ENCODINGS if e != "dense" and (cuda or e != "hash-triton")]

    report: dict = {"device": device_name(device), "torch": torch.__version__, "sections": sections}
    if cuda:
        import triton

        from rewardsds.representations import _hash_triton as H

        report.update({"cuda": torch.version.cuda, "triton": triton.__version__,
                       "kernel_configs_default": {k: vars(c) for k, c in H.KERNEL_CONFIGS.items()}})
    t_start = time.perf_counter()
    tuned: dict = {}
    if "sweep" in sections:
        report["sweep"], tuned = sweep(device, args.sweep_points, args.warmup, args.repeats)
        report["kernel_configs_fastest"] = {k: vars(c) for k, c in tuned.items()}
    if cuda:
        from rewardsds.representations import _hash_triton as H

        tuned = {k: c for k, c in tuned.items() if c != H.KERNEL_CONFIGS[k]}
    if tuned and not args.no_tuned:
        print("the sweep found faster shapes for: " + ", ".join(tuned) + " (rows marked -tuned use them)", flush=True)

    if "encoding" in sections:
        rows = []
        for n in points:
            for name in encodings:
                rows += encoding_rows(name, n, device, args.warmup, args.repeats)
                if name == "hash-triton" and tuned and not args.no_tuned:
                    with tuned_configs(tuned):
                        rows += encoding_rows(name, n, device, args.warmup, args.repeats, label="hash-triton-tuned")
        report["encoding"] = rows

    if "nerf" in sections:
        rows = nerf_rows(args.nerf_cases, args.resolutions, device, args.nerf_warmup, args.nerf_repeats)
        triton_cases = [c for c in args.nerf_cases if c.partition("@")[0] in ("nerf-hash", "nerf-hash-normals")]
        if tuned and not args.no_tuned and triton_cases:
            with tuned_configs(tuned):
                rows += nerf_rows(triton_cases, args.resolutions, device, args.nerf_warmup, args.nerf_repeats, suffix="-tuned")
        report["nerf"] = rows

    if "profile" in sections:
        report["profile"] = [guarded(f"profile {spec}", lambda: profile_rows(spec, device, args.nerf_warmup)) for spec in args.profile]

    report["wall_s"] = time.perf_counter() - t_start
    report["failures"] = FAILURES
    print(f"total {report['wall_s']:.0f} s", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    if FAILURES:
        print("FAILED:\n  " + "\n  ".join(FAILURES), file=sys.stderr)
        raise SystemExit(1)


class tuned_configs:
    """Temporarily use the given launch shapes for the Triton kernels."""

    def __init__(self, configs: dict) -> None:
        self.configs = configs

    def __enter__(self) -> None:
        from rewardsds.representations import _hash_triton as H

        self.saved = dict(H.KERNEL_CONFIGS)
        H.KERNEL_CONFIGS.update(self.configs)

    def __exit__(self, *exc) -> None:
        from rewardsds.representations import _hash_triton as H

        H.KERNEL_CONFIGS.clear()
        H.KERNEL_CONFIGS.update(self.saved)


if __name__ == "__main__":
    main()
