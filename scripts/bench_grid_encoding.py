"""Speed of the NeRF grid encodings (hash grid / dense grid / triplane): forward + backward.

Each encoding maps N points in [0, 1]^3 to 32 features (the NeRF default width); the timed call is
``enc(x)`` followed by ``backward`` of a scalar into the encoding's parameters, which is what one
NeRF step does per sample. Reports the median wall time after warm-up and, on CUDA, the peak memory.

    python scripts/bench_grid_encoding.py --device cpu --points 65536 262144 --out grid_cpu.json
    python scripts/bench_grid_encoding.py --device cuda --points 262144 1048576 --out grid_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rewardsds.representations._grid import DenseGridEncoding, HashGridEncoding, TriplaneEncoding

ENCODINGS = {
    # threestudio's implicit-volume hash grid: 16 levels x 2 features, T = 2^19, 16 -> 4096
    "hash": lambda: HashGridEncoding(16, 2, 19, 16, 1.447269237440378),
    # 8 levels x 4 features, 16 -> 256 dense volumes
    "dense": lambda: DenseGridEncoding(8, 4, 16, 1.4859),
    # 8 levels x 4 features, 32 -> 546 planes
    "triplane": lambda: TriplaneEncoding(8, 4, 32, 1.5),
}


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


def bench(name: str, n: int, device: torch.device, warmup: int, repeats: int) -> dict:
    enc = ENCODINGS[name]().to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(n, 3, generator=g).to(device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + repeats):
        enc.zero_grad(set_to_none=True)
        sync(device)
        t0 = time.perf_counter()
        out = enc(x)
        out.square().sum().backward()
        sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    result = {
        "encoding": name,
        "points": n,
        "features": enc.n_output_dims,
        "params": sum(p.numel() for p in enc.parameters()),
        "ms_median": statistics.median(times),
        "ms_min": min(times),
    }
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--points", type=int, nargs="+", default=[65536, 262144])
    ap.add_argument("--encodings", nargs="+", default=list(ENCODINGS), choices=list(ENCODINGS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for n in args.points:
        for name in args.encodings:
            r = bench(name, n, device, args.warmup, args.repeats)
            rows.append(r)
            mem = f"  peak {r['peak_mem_mb']:.0f} MB" if "peak_mem_mb" in r else ""
            print(f"{name:9s} N={n:8d}  {r['ms_median']:9.2f} ms (median){mem}", flush=True)
    report = {"device": device_name(device), "torch": torch.__version__, "results": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
