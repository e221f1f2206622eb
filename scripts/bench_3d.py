"""Speed and memory of the 3D representations: render + backward of 4 views at 64^2 and 256^2.

Cases (all on one CUDA device, fp32):

- ``nerf-triplane``, ``nerf-hash`` (the reference's grid, Triton kernels), ``nerf-hash-torch`` (the same
  grid through the PyTorch gathers): the NeRF with nerfacc's occupancy grid (filled once from the
  initial density blob, as at the start of a run), training mode (stratified samples, random background);
- ``nerf-hash-normals``, ``nerf-hash-torch-normals``: the hash grid with analytic normals, diffuse
  shading and the orientation loss (the double backward through the encoding);
- ``nerf-hash-bf16``, ``nerf-hash-normals-bf16``: the Triton hash grid with bf16 MLPs
  (``mlp_dtype=bf16``; the encoding and the rendering stay fp32);
- ``gaussians-200k``: 200k Gaussians initialised in a ball of radius 0.5, gsplat rasterisation.

For each case: median and min wall time of ``render`` + ``backward`` over ``--repeats`` calls after
``--warmup`` calls (the cameras are redrawn every call, so the number of samples varies from call to call),
and the peak allocated CUDA memory over all calls. Also a full step (render + backward + AdamW step +
hooks) median, and for the NeRF the points encoded in the last call (all, and those with gradient), and per
call the points with gradient and the peak memory of render + backward above what was allocated before it
(``per_step``), whose largest ratio is ``bytes_per_grad_point``. Targets on H100/H200: NeRF 4 x 64^2 under 30 ms, Gaussians
(200k) 4 x 256^2 under 10 ms; on an H200 the hash-grid NeRF (Triton) at most 15 ms at 4 x 64^2 and
100 ms / 8 GB at 4 x 256^2. scripts/bench_grid_encoding.py runs the NeRF cases next to the encodings
alone and the kernels' launch-shape sweep.

    python scripts/bench_3d.py --out bench_3d.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rewardsds, not an installed one

from rewardsds.cameras import CameraSampler
from rewardsds.config import CameraConfig
from rewardsds.representations.config import GaussiansConfig, NeRFConfig
from rewardsds.representations.gaussians import Gaussians
from rewardsds.representations.nerf import NeRF

HASH = dict(encoding="hash", n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
            per_level_scale=1.447269237440378)
NORMALS = dict(normal="analytic", shading="diffuse", ambient_only_steps=0, lambda_orient=10.0)
NERF_CASES = {
    "nerf-triplane": dict(encoding="triplane"),
    "nerf-hash": dict(**HASH, hash_backend="triton"),
    "nerf-hash-torch": dict(**HASH, hash_backend="torch"),
    "nerf-hash-normals": dict(**HASH, hash_backend="triton", **NORMALS),
    "nerf-hash-torch-normals": dict(**HASH, hash_backend="torch", **NORMALS),
    "nerf-hash-bf16": dict(**HASH, hash_backend="triton", mlp_dtype="bf16"),
    "nerf-hash-auto": dict(**HASH, hash_backend="triton", mlp_dtype="auto"),  # the paper experiments' setting
    "nerf-hash-normals-bf16": dict(**HASH, hash_backend="triton", mlp_dtype="bf16", **NORMALS),
}
CASES = [*NERF_CASES, "gaussians-200k"]


def build(case: str, device: torch.device):
    if case in NERF_CASES:
        rep = NeRF(NeRFConfig(estimator="occgrid", **NERF_CASES[case]))
    elif case == "gaussians-200k":
        rep = Gaussians(GaussiansConfig(num_points=200_000, strategy="none"))
    else:
        raise ValueError(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    return rep.to(device).train()


def bench_case(case: str, res: int, device: torch.device, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    rep = build(case, device)
    opt = torch.optim.AdamW(rep.param_groups())
    sampler = CameraSampler(CameraConfig(resolution=res, batch_size=4, views_per_object=4))
    gen = torch.Generator().manual_seed(0)
    encoded: list[tuple[int, bool]] = []  # (points, with gradient) per encoding call
    if isinstance(rep, NeRF):
        rep.update_occupancy(0, force=True)
        rep.encoding.register_forward_hook(lambda m, args, out: encoded.append((args[0].shape[0], out.requires_grad)))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)

    def render_backward(step: int):
        cams = sampler.sample(gen, step).to(device)
        encoded.clear()
        out = rep.render(cams, step)
        loss = out["rgb"].square().mean() + out["opacity"].mean()
        if isinstance(rep, NeRF):
            loss = loss + sum(rep.regularizers(out, step).values())  # the orientation loss of the normals cases
        rep.on_before_backward(step, out)
        loss.backward()
        return out

    times, step_times, per_step, peak = [], [], [], 0
    for i in range(warmup + repeats):
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out = render_backward(i)
        torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        render_peak = torch.cuda.max_memory_allocated(device)
        opt.step()
        rep.on_after_optimizer_step(i, opt)
        torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        peak = max(peak, torch.cuda.max_memory_allocated(device))
        if isinstance(rep, NeRF):
            per_step.append({"points_with_grad": sum(n for n, g in encoded if g), "points_encoded": sum(n for n, _ in encoded),
                             "peak_above_start_mb": (render_peak - base) / 2**20})
        if i >= warmup:
            times.append((t1 - t0) * 1e3)
            step_times.append((t2 - t0) * 1e3)
    result = {
        "case": case,
        "views": 4,
        "resolution": res,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "step_ms_median": statistics.median(step_times),
        "peak_mem_mb": peak / 2**20,
        "mean_opacity": float(out["opacity"].mean()),
    }
    if isinstance(rep, Gaussians):
        result["gaussians"] = rep.num_gaussians
    if isinstance(rep, NeRF):
        result["occupied_cells"] = int(rep.estimator.binaries.sum())
        result["points_encoded_last_step"] = sum(n for n, _ in encoded)
        result["points_with_grad_last_step"] = sum(n for n, g in encoded if g)
        result["per_step"] = per_step
        result["bytes_per_grad_point"] = max(s["peak_above_start_mb"] * 2**20 / max(s["points_with_grad"], 1) for s in per_step)
    del rep, opt
    torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["nerf-triplane", "nerf-hash", "gaussians-200k"], choices=CASES)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_3d.py measures the CUDA paths (occupancy grid, gsplat): run it on a GPU machine")
    device = torch.device("cuda")
    rows = []
    for case in args.cases:
        for res in args.resolutions:
            r = bench_case(case, res, device, args.warmup, args.repeats)
            rows.append(r)
            print(f"{case:15s} 4x{res:3d}^2  render+backward {r['ms_median']:8.2f} ms (median, min {r['ms_min']:.2f})"
                  f"  full step {r['step_ms_median']:8.2f} ms  peak {r['peak_mem_mb']:8.0f} MB", flush=True)
    report = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
