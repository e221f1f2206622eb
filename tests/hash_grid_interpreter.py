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
# levels from the second one on.
GRIDS = {
    "mixed": (4, 2, 10, 4, 2.0),
    "f3": (3, 3, 10, 3, 3.0),
}
# (name, grid, max_resolution, level_loop)
CASES = [
    ("mixed", "mixed", None, False),
    ("mixed_loop_masked", "mixed", 8.0, True),
    ("f3_loop", "f3", None, True),
]


def points(n: int, seed: int) -> torch.Tensor:
    """Random points in [-0.05, 1.05]^3 plus points on the faces of the cube and on cell boundaries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 1.1 - 0.05
    x[:4] = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.25, 0.125, 0.75], [-0.3, 1.2, 0.5]])
    return x


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
    for name, grid, max_res, loop in CASES:
        for kind in H.KERNEL_CONFIGS:
            H.KERNEL_CONFIGS[kind] = H.KernelConfig(block=128, num_warps=4, level_loop=loop)
        torch.manual_seed(0)
        L, F, log2, base, scale = GRIDS[grid]
        enc = HashGridEncoding(L, F, log2, base, scale, init_scale=1.0, backend="triton")
        mlp = torch.nn.Sequential(torch.nn.Linear(L * F, 16), torch.nn.Softplus(), torch.nn.Linear(16, 1))
        x = points(120, 1)
        r = {"n_dense": enc.n_dense_levels, "n_levels": L, "n_active": enc.n_active_levels(max_res)}
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
    H.hash_backward = real
    results["backward_flags"] = calls  # [need_x, need_table] per call
    print(json.dumps(results))


if __name__ == "__main__":
    main()
