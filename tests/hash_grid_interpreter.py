"""Run the hash-grid Triton kernels in Triton's CPU interpreter against the PyTorch version.

Started by tests/test_hash_grid_triton.py in a subprocess (TRITON_INTERPRET=1 must be set before Triton
is imported, and must not leak into other tests). Prints one JSON object: for every check, the largest
absolute difference between the Triton and the PyTorch result and the largest magnitude of the PyTorch
result, plus the flags the backward was launched with.

    TRITON_INTERPRET=1 python tests/hash_grid_interpreter.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("set TRITON_INTERPRET=1 (the kernels run in Triton's interpreter)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rewardsds.representations import _hash_triton as H  # noqa: E402
from rewardsds.representations._grid import HashGridEncoding  # noqa: E402

torch.set_num_threads(1)

# Grids: (levels, features, log2 table size, base resolution, per-level scale). "mixed": 2 dense levels and
# 2 hashed ones whose 35^3 corners collide in 1024 rows; "f3": 3 features (a pair and a single one) and hashed
# levels from the second one on; "rays": 4 -> 108, cells from 25 samples of a ray down to one.
GRIDS = {
    "mixed": (4, 2, 10, 4, 2.0),
    "f3": (3, 3, 10, 3, 3.0),
    "rays": (4, 2, 10, 4, 3.0),
}
# (name, grid, max_resolution, level_loop, points): random points, or (rays, samples per ray) ordered along
# rays (runs of points in one cell, which the table-gradient scatters sum before their atomics): 100 and 90
# samples in blocks of 64, a full block and a partial one, with runs across the block boundary and up to the
# last point.
# (The interpreter runs scans element by element: these cases take most of this script's time.)
CASES = [
    ("mixed", "mixed", None, False, "random"),
    ("mixed_loop_masked", "mixed", 8.0, True, "random"),
    ("f3_loop", "f3", None, True, "random"),
    ("rays", "rays", None, False, (2, 50)),
    ("rays_loop", "rays", None, True, (2, 45)),
]
BLOCK, RAY_BLOCK = 128, 64


def points(n: int, seed: int) -> torch.Tensor:
    """Random points in [-0.05, 1.05]^3 plus points on the faces of the cube and on cell boundaries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 1.1 - 0.05
    x[:4] = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.25, 0.125, 0.75], [-0.3, 1.2, 0.5]])
    return x


def ray_points(n_rays: int, per_ray: int, step: float, seed: int) -> torch.Tensor:
    """[n_rays * per_ray, 3] samples along rays (ray by ray, as a NeRF's packed samples), partly outside the cube."""
    g = torch.Generator().manual_seed(seed)
    o = torch.rand(n_rays, 3, generator=g) * 0.6 + 0.2
    d = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=g), dim=-1)
    t = torch.arange(per_ray) * step
    return (o[:, None] + d[:, None] * t[None, :, None]).reshape(-1, 3)


def merging_blocks(enc: HashGridEncoding, x: torch.Tensor, block: int) -> list[list[bool]]:
    """Per level and block of ``block`` points: whether the kernels sum runs there (at least one point in eight
    continues its predecessor's cell), by the kernels' cell arithmetic."""
    xc = x.clamp(0.0, 1.0)
    out = []
    for scale in enc._scales.tolist():
        cell = torch.floor(xc * torch.tensor(scale, dtype=torch.float32) + 0.5)
        cont = torch.zeros(x.shape[0], dtype=torch.bool)
        cont[1:] = (cell[1:] == cell[:-1]).all(dim=1)
        cont[::block] = False  # a block's first point starts a run
        out.append([bool(int(cont[s:s + block].sum()) * 8 >= min(block, x.shape[0] - s)) for s in range(0, x.shape[0], block)])
    return out


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"err": float((a.float() - b.float()).abs().max()), "scale": float(b.float().abs().max())}


def grads(enc: HashGridEncoding, mlp: torch.nn.Module, x0: torch.Tensor, max_res, forward, upstream: torch.Tensor) -> dict:
    """First and second derivatives through one encoding call, as analytic normals use them."""
    enc.zero_grad(set_to_none=True)
    mlp.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_(True)
    y = forward(x, max_res)
    (y * upstream).sum().backward()
    out = {"dx": x.grad.clone(), "dtable": enc.params.grad.clone()}
    enc.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_(True)
    sigma = mlp(forward(x, max_res))[:, 0]
    (n,) = torch.autograd.grad(sigma.sum(), x, create_graph=True)
    loss = (n * torch.tensor([0.3, -0.7, 1.1])).square().sum() + sigma.square().sum()
    loss.backward()
    out.update({"normal": n.detach(), "dd_x": x.grad.clone(), "dd_table": enc.params.grad.clone(),
                "dd_mlp": torch.cat([p.grad.flatten() for p in mlp.parameters()])})
    return out


def main() -> None:
    results: dict = {}
    for name, grid, max_res, loop, kind_of_points in CASES:
        block = BLOCK if kind_of_points == "random" else RAY_BLOCK
        for kind in H.KERNEL_CONFIGS:
            H.KERNEL_CONFIGS[kind] = H.KernelConfig(block=block, num_warps=4, level_loop=loop)
        torch.manual_seed(0)
        L, F, log2, base, scale = GRIDS[grid]
        enc = HashGridEncoding(L, F, log2, base, scale, init_scale=1.0, backend="triton")
        mlp = torch.nn.Sequential(torch.nn.Linear(L * F, 16), torch.nn.Softplus(), torch.nn.Linear(16, 1))
        x = points(120, 1) if kind_of_points == "random" else ray_points(*kind_of_points, 0.01, 1)
        r = {"n_dense": enc.n_dense_levels, "n_levels": L, "n_active": enc.n_active_levels(max_res),
             "merging_blocks": merging_blocks(enc, x, block)}
        with torch.no_grad():
            y = enc(x, max_res)
            r["forward"] = diff(y, enc.forward_torch(x, max_res))
            r["masked_levels_zero"] = bool((y.view(-1, L, F)[:, r["n_active"]:] == 0).all())
        upstream = torch.randn(x.shape[0], L * F, generator=torch.Generator().manual_seed(2))
        tri = grads(enc, mlp, x, max_res, enc.forward, upstream)
        ref = grads(enc, mlp, x, max_res, enc.forward_torch, upstream)
        for key in tri:
            r[key] = diff(tri[key], ref[key])
        results[name] = r
    for kind in H.KERNEL_CONFIGS:
        H.KERNEL_CONFIGS[kind] = H.KernelConfig(block=BLOCK, num_warps=4)

    # Reduced-precision storage: bf16 points, fp16 table (fp32 arithmetic inside the kernels).
    torch.manual_seed(0)
    enc = HashGridEncoding(*GRIDS["mixed"], init_scale=1.0, backend="triton")
    x = points(120, 3)
    with torch.no_grad():
        y = enc(x.bfloat16())
        results["bf16_points"] = {"forward": diff(y, enc.forward_torch(x.bfloat16().float())), "dtype": str(y.dtype)}
        ref16 = HashGridEncoding(*GRIDS["mixed"], backend="torch")
        ref16.params.data = enc.params.data.half().float()
        y = H.hash_forward(x, enc.params.data.half(), enc.layout(x.device), 4)
        results["fp16_table"] = {"forward": diff(y, ref16(x)), "dtype": str(y.dtype)}

    # Which gradients the first backward computes: d(features)/dx alone for autograd.grad(y, x).
    calls = []
    real = H.hash_backward

    def spy(*args):
        calls.append(list(args[-2:]))
        return real(*args)

    H.hash_backward = spy
    enc = HashGridEncoding(2, 2, 10, 4, 2.0, backend="triton")
    xs = points(16, 4).requires_grad_(True)
    torch.autograd.grad(enc(xs).sum(), xs, create_graph=True)
    torch.autograd.grad(enc(xs).sum(), enc.params)
    enc(xs).sum().backward()
    results["backward_flags"] = [list(c) for c in calls]  # [need_x, need_table] per call

    # Analytic normals on a leaf copy of the points, released after autograd.grad (as the NeRF does): the loss's
    # backward computes the table's gradient alone and the double backward no derivative for the points.
    dcalls = []
    real_dd = H.hash_double_backward

    def spy_dd(*args):
        dcalls.append(list(args[7:10]))  # need_x, need_table, need_grad
        return real_dd(*args)

    H.hash_double_backward = spy_dd
    enc = HashGridEncoding(2, 2, 10, 4, 2.0, init_scale=1.0, backend="triton")
    released = {}
    for release in (False, True):
        calls.clear()
        dcalls.clear()
        enc.zero_grad(set_to_none=True)
        xs = points(16, 4).requires_grad_(True)
        y = enc(xs)
        sigma = y.square().sum(-1)
        (g,) = torch.autograd.grad(sigma.sum(), xs, create_graph=True)
        if release:
            xs.requires_grad_(False)
        (g.square().sum() + sigma.sum()).backward()
        released[release] = {"backward": [list(c) for c in calls], "double_backward": [list(c) for c in dcalls],
                              "dtable": enc.params.grad.clone(), "x_grad": xs.grad is not None}
    H.hash_backward = real
    H.hash_double_backward = real_dd
    results["normals_release"] = {
        "kept": {k: v for k, v in released[False].items() if k != "dtable"},
        "released": {k: v for k, v in released[True].items() if k != "dtable"},
        "dtable": diff(released[True]["dtable"], released[False]["dtable"]),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
