"""The hash grid's Triton kernels on CUDA against the PyTorch version, at the paper's size (marker ``gpu``).

Paper grid: 16 levels x 2 features, 2^19 rows per hashed level, 16 -> 4096 (threestudio's tcnn grid).
Checked: forward, gradients to the table and the points, the double backward of analytic normals, level
masks, strided inputs, reduced-precision storage, every launch shape the benchmark sweeps, peak memory
(no per-corner intermediates), and a NeRF render + backward (with and without analytic normals) through
both backends.

    python -m pytest -m gpu tests/test_hash_grid_gpu.py -ra -s

Each test prints one ``HASH_GPU {...}`` line with its largest differences.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import gpu_test
from rewardsds.representations._grid import HashGridEncoding

PAPER = (16, 2, 19, 16, 1.447269237440378)
DEVICE = "cuda"
# Point counts: realistic sizes (a 64 px NeRF step from the initial density blob encodes about 2^18 samples
# with gradient, by a count of the occupancy-grid samples on the CPU).
N_LARGE, N_MEDIUM, N_SMALL = 1 << 18, 1 << 16, 40_000
NERF_RES, NERF_SAMPLES = 32, 96  # 4 views x 32^2 rays x 96 uniform samples
# Relative tolerances (of the largest magnitude of the PyTorch result). The forward agrees to the order of
# the 8-term sums; table gradients are sums of thousands of atomic fp32 additions in no fixed order.
FWD_TOL, GRAD_TOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """The PyTorch reference sums corners with a batched matmul: TF32 would make it the less exact side."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _report(name: str, **vals) -> None:
    print("HASH_GPU", json.dumps({"test": name, **vals}))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def paper_grid(backend: str = "triton", init_scale: float = 1.0, seed: int = 0) -> HashGridEncoding:
    torch.manual_seed(seed)
    return HashGridEncoding(*PAPER, init_scale=init_scale, backend=backend).to(DEVICE)


def twin(enc: HashGridEncoding) -> HashGridEncoding:
    """The same grid (same table) on the PyTorch path."""
    other = HashGridEncoding(*PAPER, backend="torch").to(DEVICE)
    other.load_state_dict(enc.state_dict())
    return other


def ray_points(n: int, seed: int = 0) -> torch.Tensor:
    """Points ordered along rays through a ball (as a NeRF's samples are), plus faces and cell boundaries."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    per_ray = 128
    rays = (n + per_ray - 1) // per_ray
    o = torch.nn.functional.normalize(torch.randn(rays, 3, generator=g), dim=-1) * 0.45
    d = torch.nn.functional.normalize(-o + 0.2 * torch.randn(rays, 3, generator=g), dim=-1)
    t = torch.arange(per_ray) * (0.9 / per_ray)
    x = (o[:, None] + d[:, None] * t[None, :, None]).reshape(-1, 3)[:n] + 0.5
    x[:4] = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.25, 0.125, 0.75], [-0.3, 1.2, 0.5]])
    return x.to(DEVICE)


@gpu_test
def test_forward_equals_pytorch_at_the_paper_size():
    enc = paper_grid()
    ref = twin(enc)
    x = ray_points(N_LARGE)
    with torch.no_grad():
        y, y_ref = enc(x), ref(x)
    err = rel(y, y_ref)
    per_level = y.view(-1, 16, 2).abs().amax(dim=(0, 2))
    _report("forward", rel_err=err)
    assert y.shape == (x.shape[0], 32) and y.dtype == torch.float32
    assert err < FWD_TOL and bool((per_level > 0).all())


@gpu_test
def test_gradients_equal_pytorch_at_the_paper_size():
    enc = paper_grid()
    ref = twin(enc)
    x0 = ray_points(N_LARGE)
    up = torch.randn(x0.shape[0], 32, device=DEVICE)
    out = []
    for e in (enc, ref):
        x = x0.clone().requires_grad_(True)
        (e(x) * up).sum().backward()
        out.append((x.grad, e.params.grad))
    ex, et = rel(out[0][0], out[1][0]), rel(out[0][1], out[1][1])
    _report("gradients", dx_rel_err=ex, dtable_rel_err=et)
    assert ex < GRAD_TOL and et < GRAD_TOL
    assert float(out[0][0][3, :2].abs().sum()) == 0.0  # coordinates outside the cube: zero gradient, as clamp's


def _normals_loss(enc, mlp, x0, max_res=None):
    """threestudio-style analytic normals: sigma = softplus(MLP(enc(x))), n = -grad sigma, a loss on n."""
    for p in [*enc.parameters(), *mlp.parameters()]:
        p.grad = None
    x = x0.clone().requires_grad_(True)
    sigma = torch.nn.functional.softplus(mlp(enc(x, max_res))[:, 0])
    (g,) = torch.autograd.grad(sigma.sum(), x, create_graph=True)
    n = torch.nn.functional.normalize(-g, dim=-1)
    loss = (n * torch.tensor([0.3, -0.7, 1.1], device=DEVICE)).sum(-1).clamp_min(0).square().mean() + sigma.mean()
    loss.backward()
    return g.detach(), x.grad, enc.params.grad, torch.cat([p.grad.flatten() for p in mlp.parameters()])


@gpu_test
@pytest.mark.parametrize("max_res", [None, 200.0])
def test_analytic_normal_double_backward_equals_pytorch(max_res):
    enc = paper_grid(init_scale=0.1)
    ref = twin(enc)
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False), torch.nn.Softplus(), torch.nn.Linear(64, 1, bias=False)).to(DEVICE)
    x0 = ray_points(N_MEDIUM, seed=2)
    a, b = _normals_loss(enc, mlp, x0, max_res), _normals_loss(ref, mlp, x0, max_res)
    errs = {k: rel(p, q) for k, p, q in zip(["grad_sigma", "dx", "dtable", "dmlp"], a, b)}
    _report("double_backward", max_res=max_res, **errs)
    assert all(e < GRAD_TOL for e in errs.values()), errs
    if max_res is not None:
        n_active = enc.n_active_levels(max_res)
        assert 1 < n_active < 16 and float(a[2][int(enc._offsets[n_active]):].abs().sum()) == 0.0


@gpu_test
def test_every_swept_launch_shape_gives_the_same_results():
    """The benchmark's sweep may pick any of these shapes as the default: each must be exact."""
    from rewardsds.representations import _hash_triton as H

    saved = dict(H.KERNEL_CONFIGS)
    enc = paper_grid(init_scale=0.1)
    ref = twin(enc)
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Softplus(), torch.nn.Linear(16, 1)).to(DEVICE)
    x0 = ray_points(N_SMALL, seed=3)
    expected = _normals_loss(ref, mlp, x0, 300.0)
    worst = 0.0
    try:
        for cfg in H.sweep_configs():
            for kind in H.KERNEL_CONFIGS:
                H.KERNEL_CONFIGS[kind] = cfg
            with torch.no_grad():
                assert rel(enc(x0, 300.0), ref(x0, 300.0)) < FWD_TOL, cfg
            got = _normals_loss(enc, mlp, x0, 300.0)
            errs = [rel(p, q) for p, q in zip(got, expected)]
            worst = max(worst, *errs)
            assert max(errs) < GRAD_TOL, (cfg, errs)
    finally:
        H.KERNEL_CONFIGS.update(saved)
    _report("launch_shapes", configs=len(H.sweep_configs()), worst_rel_err=worst)


@gpu_test
def test_strided_points_and_expanded_gradients():
    enc = paper_grid()
    ref = twin(enc)
    base = torch.rand(N_SMALL, 4, device=DEVICE)
    x = base[:, 1:]  # row stride 4
    assert not x.is_contiguous()
    with torch.no_grad():
        assert rel(enc(x), ref(x)) < FWD_TOL
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    for e, xi in zip((enc, ref), xs):
        e(xi).sum().backward()  # the gradient of sum() reaches the encoding as an expanded (stride 0) tensor
    assert rel(xs[0].grad, xs[1].grad) < GRAD_TOL and rel(enc.params.grad, ref.params.grad) < GRAD_TOL


@gpu_test
def test_reduced_precision_storage():
    """bf16/fp16 points and an fp16/bf16 table: fp32 arithmetic, output in the table's dtype."""
    enc = paper_grid()
    ref = twin(enc)
    x = ray_points(N_MEDIUM, seed=4)
    with torch.no_grad():
        for dt in (torch.bfloat16, torch.float16):
            y = enc(x.to(dt))
            assert y.dtype == torch.float32 and rel(y, ref(x.to(dt).float())) < FWD_TOL
        from rewardsds.representations._hash_triton import hash_grid_triton

        for dt in (torch.float16, torch.bfloat16):
            table = enc.params.detach().to(dt)
            ref.params.data.copy_(table.float())
            y = hash_grid_triton(x, table, enc.layout(x.device), 16)
            assert y.dtype == dt and rel(y, ref(x)) < 1e-2
    table = enc.params.detach().half().requires_grad_(True)
    hash_grid_triton(x, table, enc.layout(x.device), 16).float().square().sum().backward()
    assert table.grad.dtype == torch.float16 and torch.isfinite(table.grad).all()


@gpu_test
def test_peak_memory_has_no_per_corner_intermediates():
    """2^21 points, forward + backward: the Triton path needs the output, its gradient and the table's
    gradient; the PyTorch path's [N, L, 8] indices and [N, L, 8, F] gathers take gigabytes."""
    n = 1 << 21
    x = ray_points(n, seed=5)
    enc = paper_grid()
    peaks = {}
    for name, e in (("triton", enc), ("torch", twin(enc))):
        e.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        e(x).square().sum().backward()
        torch.cuda.synchronize()
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        e.zero_grad(set_to_none=True)
    out_mb = n * 32 * 4 / 2**20
    table_mb = enc.params.numel() * 4 / 2**20
    _report("peak_memory", n=n, triton_mb=peaks["triton"], torch_mb=peaks["torch"], output_mb=out_mb, table_mb=table_mb)
    assert peaks["triton"] < 2.5 * out_mb + 2 * table_mb
    assert peaks["torch"] > 4 * peaks["triton"]


def _nerf_pair(**kw):
    from rewardsds.representations.config import NeRFConfig
    from rewardsds.representations.nerf import NeRF

    torch.manual_seed(0)
    a, b = (NeRF(NeRFConfig(encoding="hash", hash_backend=backend, estimator="uniform", num_samples_per_ray=NERF_SAMPLES, **kw))
            .to(DEVICE).train() for backend in ("triton", "torch"))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():  # features of a trained scale, so that the grid matters in the render
        for n in (a, b):
            n.encoding.params.copy_(torch.randn(n.encoding.params.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE) * 0.3)
    return a, b


@gpu_test
@pytest.mark.parametrize("normals", [False, True])
def test_nerf_render_and_backward_through_both_backends(normals):
    """Same NeRF, same cameras and samples (uniform estimator): Triton and PyTorch renders and gradients agree."""
    from rewardsds.cameras import CameraSampler
    from rewardsds.config import CameraConfig

    kw = dict(normal="analytic", shading="diffuse", ambient_only_steps=0, lambda_orient=10.0) if normals else {}
    nerfs = _nerf_pair(**kw)
    sampler = CameraSampler(CameraConfig(resolution=NERF_RES, batch_size=4, views_per_object=4))
    cams = sampler.sample(torch.Generator().manual_seed(0)).to(DEVICE)
    outs, grads = [], []
    for n in nerfs:
        out = n.render(cams, step=3)
        loss = out["rgb"].square().mean() + out["opacity"].mean() + sum(n.regularizers(out, 3).values())
        loss.backward()
        outs.append(out)
        grads.append({k: p.grad for k, p in n.named_parameters() if p.grad is not None})
    errs = {"rgb": rel(outs[0]["rgb"], outs[1]["rgb"])}
    if normals:
        assert "orient" in outs[0]
        errs["normal"] = rel(outs[0]["normal"], outs[1]["normal"])
    errs.update({k: rel(grads[0][k], grads[1][k]) for k in grads[1]})
    _report("nerf", normals=normals, **errs)
    assert set(grads[0]) == set(grads[1]) and "encoding.params" in grads[0]
    assert all(e < GRAD_TOL for e in errs.values()), errs
