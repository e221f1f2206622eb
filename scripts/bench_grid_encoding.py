"""Speed and memory of the NeRF grid encodings; the hash grid's Triton kernels next to its PyTorch version.

Sections (``--sections``; all of them by default on CUDA, ``encoding`` alone on the CPU):

- ``sweep`` (CUDA): every launch shape of each Triton kernel (``_hash_triton.sweep_configs()``: block
  size, warps, levels on the grid or looped, and plain per-point table atomics) timed on 2^21 ray-ordered
  points of the paper's grid, each checked against the default shape's result. Prints every shape and the
  fastest per kernel.
- ``scatter`` (CUDA): the table-gradient kernels before and after run reduction (``KernelConfig.reduce_runs``
  false / true): the backward to the table (as a NeRF step without normals), to the table and the points,
  and the double backward of analytic normals, on 2^21 ray-ordered points and on the samples a 256 px
  NeRF step encodes with gradient. Median ms of each, the speed-up, and the difference of the results.
- ``encoding``: for ``--points`` (2^18 and 2^21 on CUDA) and each encoding: forward alone, forward +
  backward into the encoding's parameters (what a NeRF step does per sample), and the analytic-normals
  pass (forward, d(sigma)/dx with create_graph, a loss on it, backward) through a 32-64-1 MLP. Median
  ms and peak MB. Encodings: ``triplane`` (8 x 4, 32 -> 546), ``dense`` (8 x 4, 16 -> 256),
  ``hash-torch`` and ``hash-triton`` (the paper's grid: 16 x 2, 2^19 rows, 16 -> 4096).
- ``nerf`` (CUDA, nerfacc): ``scripts/bench_3d.py``'s render + backward of 4 views at ``--resolutions``
  (64 and 256 px) side by side: the triplane, the hash grid through PyTorch, through Triton with fp32
  MLPs and with bf16 MLPs, each Triton case also with analytic normals (``--nerf-cases``; ``case@64``
  restricts a case to one resolution), and ``nerf-hash`` again with the plain table atomics
  (``-plain-atomics``). Median ms, peak GB over the calls (the cameras are redrawn every call and the
  number of samples varies with them: the peak comes from the call with the most samples) and bytes per
  sample with gradient at that peak.
- ``memory`` (CUDA): where the memory of one 256 px NeRF step goes (``--memory`` cases, fp32 and bf16
  MLPs): allocated and peak per stage (occupancy-grid sampling, the field and rendering, the backward)
  and the tensors autograd keeps for the backward, grouped by shape (N = samples with gradient) and dtype.
- ``profile`` (CUDA): one render + backward of each ``--profile`` case (``nerf-hash`` at 64 and 256 px,
  ``nerf-hash-bf16`` at 256 px) under torch.profiler: the kernels that take the GPU time (printed, and
  the top rows in the JSON).

When the sweep finds shapes faster than the defaults (``_hash_triton.KERNEL_CONFIGS``), the Triton rows
of the later sections are measured again with them (``hash-triton-tuned``, ``nerf-hash-tuned``), so one
run answers both. A case that fails (e.g. out of memory) is recorded with its error and the run goes on;
the exit status is 1 if any failed. The run ends with a summary of the NeRF rows against the targets (H200,
Triton hash grid: at most 15 ms at 64 px, 100 ms and 8 GB at 256 px). Results go to ``--out`` as JSON
(device, versions, every row).

    python scripts/bench_grid_encoding.py --out grid_gpu.json                  # everything, ~2-3 minutes on an H200
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
NERF_DEFAULT = ["nerf-triplane", "nerf-hash-torch", "nerf-hash", "nerf-hash-bf16", "nerf-hash-auto", "nerf-hash-normals", "nerf-hash-normals-bf16",
                "nerf-hash-torch-normals@64"]
TRITON_NERF = ("nerf-hash", "nerf-hash-bf16", "nerf-hash-auto", "nerf-hash-normals", "nerf-hash-normals-bf16")
SCATTER_KERNELS = ("backward", "double_backward")  # the kernels with table-gradient scatters
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
            for cfg in H.sweep_configs(kind):
                H.KERNEL_CONFIGS[kind] = cfg
                label = (f"sweep {kind} block={cfg.block} warps={cfg.num_warps} level_loop={cfg.level_loop}"
                         f"{'' if cfg.reduce_runs else ' plain-atomics'}")

                def run(op=op, reference=reference) -> dict:
                    got = [t.float() for t in op() if t is not None]
                    err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(got, reference))
                    return {**timed(op, device, warmup, repeats), "rel_err_vs_default": err}

                r = {"kernel": kind, "block": cfg.block, "num_warps": cfg.num_warps, "level_loop": cfg.level_loop,
                     "reduce_runs": cfg.reduce_runs, "default": cfg == defaults[kind], "points": n, **guarded(label, run)}
                rows.append(r)
                if "ms_median" in r:
                    print(f"{label:84s} {r['ms_median']:8.3f} ms  (rel. diff to default {r['rel_err_vs_default']:.1e})", flush=True)
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
        print(f"fastest {kind:16s} block={cfg.block} warps={cfg.num_warps} level_loop={cfg.level_loop} "
              f"reduce_runs={cfg.reduce_runs}  {best[kind][1]:.3f} ms (default {dflt})", flush=True)
    return rows, fastest


# ----------------------------------------------------------------------------------------- table scatters
def plain_atomics() -> dict:
    """The default launch shapes with one table atomic per point, level and corner (no run sums)."""
    from dataclasses import replace

    from rewardsds.representations import _hash_triton as H

    return {k: replace(H.KERNEL_CONFIGS[k], reduce_runs=False) for k in SCATTER_KERNELS}


def nerf_samples(case: str, res: int, device: torch.device) -> torch.Tensor:
    """[N, 3] the points in [0, 1]^3 that the first render of ``case`` at ``res`` px (bench_3d's cameras, seed 0)
    encodes with gradient: ray-ordered NeRF samples of the initial density blob."""
    from bench_3d import build
    from rewardsds.cameras import CameraSampler
    from rewardsds.config import CameraConfig

    torch.manual_seed(0)
    rep = build(case, device)
    rep.update_occupancy(0, force=True)
    captured = []
    hook = rep.encoding.register_forward_hook(lambda m, args, out: captured.append(args[0].detach()) if out.requires_grad else None)
    cams = CameraSampler(CameraConfig(resolution=res, batch_size=4, views_per_object=4)).sample(torch.Generator().manual_seed(0), 0)
    rep.render(cams.to(device), 0)
    hook.remove()
    del rep
    return captured[-1].contiguous()


def scatter_rows(device: torch.device, n: int, warmup: int, repeats: int) -> list[dict]:
    """The table-gradient kernels with plain atomics and with run sums, on synthetic rays and on NeRF samples."""
    from rewardsds.representations import _hash_triton as H

    torch.manual_seed(0)
    enc = HashGridEncoding(*PAPER_HASH, init_scale=0.1, backend="triton").to(device)
    layout, table, L = enc.layout(device), enc.params.detach(), PAPER_HASH[0]
    sources = {f"{n} ray points": lambda: ray_points(n, device), "nerf 256px samples": lambda: nerf_samples("nerf-hash", 256, device)}
    rows = []
    for source, make in sources.items():
        x = guarded(f"scatter points {source}", lambda: {"x": make()}).get("x")
        if x is None:
            continue
        g = torch.randn(x.shape[0], 32, device=device, generator=torch.Generator(device=device).manual_seed(1))
        u = torch.randn(x.shape[0], 3, device=device, generator=torch.Generator(device=device).manual_seed(2))
        ops = {
            # a NeRF step without normals: dL/dtable only
            "backward dtable": lambda: H.hash_backward(x, table, g, layout, L, need_x=False, need_table=True),
            "backward dtable+dx": lambda: H.hash_backward(x, table, g, layout, L, need_x=True, need_table=True),
            # analytic normals' loss with released points: d/dtable and d/dgrad of the backward's dx
            "double_backward": lambda: H.hash_double_backward(x, table, g, u, None, layout, L, need_x=False, need_table=True,
                                                              need_grad=True),
        }
        for name, op in ops.items():
            label = f"scatter {name} on {source} (N={x.shape[0]})"

            def run(op=op) -> dict:
                with tuned_configs(plain_atomics()):
                    plain = timed(op, device, warmup, repeats)
                    ref = [t.float() for t in op() if t is not None]
                reduced = timed(op, device, warmup, repeats)
                got = [t.float() for t in op() if t is not None]
                err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(got, ref))
                return {"plain_ms": plain["ms_median"], "reduced_ms": reduced["ms_median"],
                        "speedup": plain["ms_median"] / reduced["ms_median"], "rel_diff": err}

            r = {"op": name, "points": source, "n": x.shape[0], **guarded(label, run)}
            rows.append(r)
            if "plain_ms" in r:
                print(f"{label:64s} plain atomics {r['plain_ms']:8.3f} ms  run sums {r['reduced_ms']:8.3f} ms  "
                      f"x{r['speedup']:.2f}  (rel. diff {r['rel_diff']:.1e})", flush=True)
                if r["rel_diff"] > 1e-4:
                    FAILURES.append(f"{label}: run sums differ from the plain atomics by {r['rel_diff']:.2e}")
        del x, g, u
        torch.cuda.empty_cache()
    return rows


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
                most = max(r.get("per_step") or [{"points_with_grad": 0}], key=lambda p: p["points_with_grad"])
                print(f"{case + suffix:32s} 4x{res:3d}^2  render+backward {r['ms_median']:8.2f} ms (median)  peak "
                      f"{r['peak_mem_mb'] / 1024:6.2f} GB  points {r.get('points_with_grad_last_step', 0):>9d} with grad / "
                      f"{r.get('points_encoded_last_step', 0):>9d} encoded (last call), most with grad {most['points_with_grad']:>9d}"
                      f"  {r.get('bytes_per_grad_point', 0):6.0f} B per point with grad", flush=True)
            torch.cuda.empty_cache()
    return rows


def nerf_case(spec: str, device: torch.device):
    """(NeRF of bench_3d's ``case`` with its occupancy grid filled, a 4-view camera sampler at ``res`` (default 256),
    a seeded generator) for ``spec`` = ``case@res``."""
    from bench_3d import build
    from rewardsds.cameras import CameraSampler
    from rewardsds.config import CameraConfig

    case, _, res = spec.partition("@")
    torch.manual_seed(0)
    rep = build(case, device)
    rep.update_occupancy(0, force=True)
    sampler = CameraSampler(CameraConfig(resolution=int(res or 256), batch_size=4, views_per_object=4))
    return rep, sampler, torch.Generator().manual_seed(0)


def memory_breakdown(spec: str, device: torch.device) -> dict:
    """Where one render + backward of ``spec`` (``case@res``) keeps its memory, on the cameras of bench_3d's third
    call (seed 0), after two calls (compilation, caches).

    Returns allocated / peak MB per stage (above the memory held before the render: the model and its
    gradients) and the tensors saved for the backward by group (shape with N = samples with gradient,
    R = rays; dtype), counted once per storage.
    """
    rep, sampler, gen = nerf_case(spec, device)
    encoded: list[tuple[int, bool]] = []
    rep.encoding.register_forward_hook(lambda m, args, out: encoded.append((args[0].shape[0], out.requires_grad)))
    mb = 2**20
    stages: dict[str, dict] = {}
    base = [0]

    def mark(name: str) -> None:
        torch.cuda.synchronize(device)
        stages[name] = {"allocated_mb": (torch.cuda.memory_allocated(device) - base[0]) / mb,
                        "peak_mb": (torch.cuda.max_memory_allocated(device) - base[0]) / mb}
        torch.cuda.reset_peak_memory_stats(device)

    sampling = rep.estimator.sampling

    def timed_sampling(*args, **kwargs):
        mark("before sampling (rays, background)")
        out = sampling(*args, **kwargs)
        mark("occupancy-grid sampling (no-grad density of all candidate samples)")
        return out

    for step in range(3):
        rep.zero_grad(set_to_none=True)
        cams = sampler.sample(gen, step).to(device)
        if step < 2:
            out = rep.render(cams, step)
            (out["rgb"].square().mean() + out["opacity"].mean() + sum(rep.regularizers(out, step).values())).backward()
            continue
        del out
        encoded.clear()
        saved: dict[int, tuple[tuple, torch.dtype, int]] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            saved.setdefault(st.data_ptr(), (tuple(t.shape), t.dtype, st.nbytes()))
            return t

        torch.cuda.synchronize(device)
        base[0] = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        rep.estimator.sampling = timed_sampling
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = rep.render(cams, step)
                loss = out["rgb"].square().mean() + out["opacity"].mean() + sum(rep.regularizers(out, step).values())
        finally:
            rep.estimator.sampling = sampling
        mark("field + rendering with gradient (allocated: what the backward needs)")
        loss.backward()
        del out, loss
        mark("backward")
    n_grad = sum(n for n, g in encoded if g)
    n_rays = 4 * int(res or 256) ** 2
    groups: dict[str, int] = {}
    for shape, dtype, nbytes in saved.values():
        dims = ",".join("N" if d == n_grad else "R" if d == n_rays else str(d) for d in shape)
        key = f"[{dims}] {str(dtype).replace('torch.', '')}"
        groups[key] = groups.get(key, 0) + nbytes
    top = sorted(groups.items(), key=lambda kv: -kv[1])
    print(f"memory {spec}: {n_grad} samples with gradient, {sum(n for n, _ in encoded) - n_grad} without "
          f"(MB above the {base[0] / mb:.0f} MB held before the render)")
    for name, st in stages.items():
        print(f"  {name:72s} allocated {st['allocated_mb']:9.1f}  peak {st['peak_mb']:9.1f}")
    print(f"  saved for the backward: {sum(groups.values()) / mb:.1f} MB = {sum(groups.values()) / max(n_grad, 1):.0f} B per sample")
    for key, nbytes in top[:12]:
        print(f"    {key:28s} {nbytes / mb:9.1f} MB  {nbytes / max(n_grad, 1):7.1f} B per sample", flush=True)
    del rep
    torch.cuda.empty_cache()
    return {"case": spec, "points_with_grad": n_grad, "points_encoded": sum(n for n, _ in encoded), "held_before_mb": base[0] / mb,
            "stages": stages, "saved_mb": sum(groups.values()) / mb,
            "saved_groups_mb": {k: v / mb for k, v in top}}


def profile_rows(spec: str, device: torch.device, warmup: int, top: int = 25) -> dict:
    """GPU time per kernel of one NeRF render + backward (torch.profiler), the ``top`` largest."""
    from torch.profiler import ProfilerActivity, profile

    rep, sampler, gen = nerf_case(spec, device)

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
    # kernels only: the operator rows repeat the time of the kernels they launch
    gpu_ms = sum(getattr(e, key) for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA) / 1e3
    print(f"profile {spec}: {wall_ms:.1f} ms wall under the profiler, {gpu_ms:.1f} ms of GPU time", flush=True)
    return {"case": spec, "wall_ms_profiled": wall_ms, "gpu_ms_total": gpu_ms, "top": rows[:top]}


def summary(rows: list[dict]) -> list[str]:
    """One line per NeRF row: median ms and peak GB side by side, with the targets for the Triton hash grid."""
    lines = [f"{'case':34s} {'res':>5s} {'ms (median)':>12s} {'peak GB':>8s}  targets (H200: 15 ms at 64 px; 100 ms, 8 GB at 256 px)"]
    for r in rows:
        if "ms_median" not in r:
            lines.append(f"{r['case']:34s} {r['resolution']:5d}  failed: {r.get('error', '')[:80]}")
            continue
        gb = r["peak_mem_mb"] / 1024
        note = ""
        if r["case"].partition("-tuned")[0].partition("-plain-atomics")[0] in ("nerf-hash", "nerf-hash-bf16", "nerf-hash-auto"):
            if r["resolution"] == 64:
                note = f"time {'met' if r['ms_median'] <= 15 else 'MISSED'}"
            elif r["resolution"] == 256:
                note = (f"time {'met' if r['ms_median'] <= 100 else 'MISSED'}, memory {'met' if gb <= 8 else 'MISSED'}")
        lines.append(f"{r['case']:34s} {r['resolution']:5d} {r['ms_median']:12.2f} {gb:8.2f}  {note}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sections", nargs="+", default=None, choices=["sweep", "scatter", "encoding", "nerf", "memory", "profile"],
                    help="default: all on CUDA, encoding on the CPU")
    ap.add_argument("--points", type=int, nargs="+", default=None, help="encoding section (default 2^18 2^21 on CUDA, 65536 on the CPU)")
    ap.add_argument("--encodings", nargs="+", default=None, choices=list(ENCODINGS), help="default: all but dense (CPU: no hash-triton)")
    ap.add_argument("--sweep-points", type=int, default=1 << 21, help="points of the sweep and of the scatter section's synthetic rays")
    ap.add_argument("--nerf-cases", nargs="+", default=NERF_DEFAULT, help="bench_3d.py cases; case@RES runs one resolution")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--no-plain-atomics", action="store_true", help="do not measure nerf-hash again with the plain table atomics")
    ap.add_argument("--memory", nargs="+", default=["nerf-hash@256", "nerf-hash-bf16@256"], help="cases of the memory section (case@RES)")
    ap.add_argument("--profile", nargs="+", default=["nerf-hash@64", "nerf-hash@256", "nerf-hash-bf16@256"],
                    help="cases of the profile section (case@RES)")
    ap.add_argument("--warmup", type=int, default=2, help="at least 2 (the first call compiles)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--nerf-warmup", type=int, default=3)
    ap.add_argument("--nerf-repeats", type=int, default=10)
    ap.add_argument("--no-tuned", action="store_true", help="do not re-measure the Triton rows with the sweep's fastest shapes")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here (after every section)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sections = args.sections or (["sweep", "scatter", "encoding", "nerf", "memory", "profile"] if cuda else ["encoding"])
    if not cuda and (set(sections) - {"encoding"}):
        raise SystemExit("only the encoding section runs on the CPU (the others measure CUDA paths): run them on a GPU")
    points = args.points or ([1 << 18, 1 << 21] if cuda else [65536])
    encodings = args.encodings or [e for e in ENCODINGS if e != "dense" and (cuda or e != "hash-triton")]

    report: dict = {"device": device_name(device), "torch": torch.__version__, "sections": sections}
    if cuda:
        import triton

        from rewardsds.representations import _hash_triton as H

        report.update({"cuda": torch.version.cuda, "triton": triton.__version__,
                       "kernel_configs_default": {k: vars(c) for k, c in H.KERNEL_CONFIGS.items()}})
    t_start = time.perf_counter()

    def save() -> None:
        report["wall_s"] = time.perf_counter() - t_start
        report["failures"] = FAILURES
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))

    tuned: dict = {}
    if "sweep" in sections:
        report["sweep"], tuned = sweep(device, args.sweep_points, args.warmup, args.repeats)
        report["kernel_configs_fastest"] = {k: vars(c) for k, c in tuned.items()}
        save()
    if cuda:
        from rewardsds.representations import _hash_triton as H

        tuned = {k: c for k, c in tuned.items() if c != H.KERNEL_CONFIGS[k]}
    if tuned and not args.no_tuned:
        print("the sweep found faster shapes for: " + ", ".join(tuned) + " (rows marked -tuned use them)", flush=True)

    if "scatter" in sections:
        report["scatter"] = scatter_rows(device, args.sweep_points, args.warmup, args.repeats)
        save()

    if "encoding" in sections:
        rows = []
        for n in points:
            for name in encodings:
                rows += encoding_rows(name, n, device, args.warmup, args.repeats)
                if name == "hash-triton" and tuned and not args.no_tuned:
                    with tuned_configs(tuned):
                        rows += encoding_rows(name, n, device, args.warmup, args.repeats, label="hash-triton-tuned")
        report["encoding"] = rows
        save()

    if "nerf" in sections:
        rows = nerf_rows(args.nerf_cases, args.resolutions, device, args.nerf_warmup, args.nerf_repeats)
        report["nerf"] = rows
        save()
        if "nerf-hash" in args.nerf_cases and not args.no_plain_atomics:  # before run reduction
            with tuned_configs(plain_atomics()):
                rows += nerf_rows(["nerf-hash"], args.resolutions, device, args.nerf_warmup, args.nerf_repeats, suffix="-plain-atomics")
            save()
        triton_cases = [c for c in args.nerf_cases if c.partition("@")[0] in ("nerf-hash", "nerf-hash-bf16", "nerf-hash-auto")]
        if tuned and not args.no_tuned and triton_cases:
            with tuned_configs(tuned):
                rows += nerf_rows(triton_cases, args.resolutions, device, args.nerf_warmup, args.nerf_repeats, suffix="-tuned")
            save()

    if "memory" in sections:
        report["memory"] = [guarded(f"memory {spec}", lambda: memory_breakdown(spec, device)) for spec in args.memory]
        save()

    if "profile" in sections:
        report["profile"] = [guarded(f"profile {spec}", lambda: profile_rows(spec, device, args.nerf_warmup)) for spec in args.profile]
        save()

    if report.get("nerf"):
        report["summary"] = summary(report["nerf"])
        print("\n".join(report["summary"]), flush=True)
    save()
    print(f"total {report['wall_s']:.0f} s", flush=True)
    if args.out is not None:
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
