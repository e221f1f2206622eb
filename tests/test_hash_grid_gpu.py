"""The hash grid's Triton kernels on CUDA against the PyTorch version, at the paper's size (marker ``gpu``).

Paper grid: 16 levels x 2 features, 2^19 rows per hashed level, 16 -> 4096 (threestudio's tcnn grid).
Checked: forward, gradients to the table and the points, the double backward of analytic normals, level
masks, strided inputs, reduced-precision storage, every launch shape the benchmark sweeps, table gradients
with run sums and with plain atomics, peak memory (no per-corner intermediates), a NeRF render + backward
(with and without analytic normals) through both backends, and the NeRF's bf16 MLPs against fp32.

    python -m pytest -m gpu tests/test_hash_grid_gpu.py -ra -s

Each test prints one ``HASH_GPU {...}`` line with its largest differences.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import gpu_test
from rewardsds.representations._grid import HashGridEncoding
from rewardsds.utils.dtypes import tf32

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
    with tf32(matmul=False, cudnn=False):
        yield


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
    """2^21 points, forward + backward of sum(y^2). The test's own graph holds the output, its square's gradient
    and the output's gradient (about four [N, 32] fp32 tensors at once); the bound is what the same graph takes
    with a stand-in encoding that does no work of its own (an [N, 32] output depending on the table through a
    broadcast add, so that its backward also makes a table-sized gradient), plus one fp32 table (the kernels'
    gradient buffer). The PyTorch path's [N, L, 8] indices and [N, L, 8, F] gathers take gigabytes more."""
    n = 1 << 21
    x = ray_points(n, seed=5)
    enc = paper_grid()
    ref = twin(enc)
    peaks = {}
    cases = (("standin", enc, lambda: x.new_zeros(n, 32) + enc.params.view(-1)[:32]), ("triton", enc, lambda: enc(x)),
             ("torch", ref, lambda: ref(x)))
    for name, e, fn in cases:
        e.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn().square().sum().backward()
        torch.cuda.synchronize()
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        e.zero_grad(set_to_none=True)
    out_mb = n * 32 * 4 / 2**20
    table_mb = enc.params.numel() * 4 / 2**20
    _report("peak_memory", n=n, standin_mb=peaks["standin"], triton_mb=peaks["triton"], torch_mb=peaks["torch"], output_mb=out_mb,
            table_mb=table_mb)
    assert peaks["standin"] >= 2 * out_mb  # the stand-in's graph is the test's graph, not an empty one
    assert peaks["triton"] <= peaks["standin"] + table_mb + 8
    assert peaks["torch"] > 4 * peaks["triton"]


@gpu_test
def test_run_sums_equal_plain_atomics():
    """The table-gradient scatters with run sums (the default) and with one atomic per point, level and corner,
    on ray-ordered points whose coarse levels have long runs: both equal the PyTorch gradients, the first
    backward's and the double backward's (analytic normals)."""
    from dataclasses import replace

    from rewardsds.representations import _hash_triton as H

    enc = paper_grid(init_scale=0.1)
    ref = twin(enc)
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False), torch.nn.Softplus(), torch.nn.Linear(64, 1, bias=False)).to(DEVICE)
    x0 = ray_points(N_LARGE, seed=6)
    up = torch.randn(x0.shape[0], 32, device=DEVICE)
    expected_first = torch.autograd.grad((ref(x0) * up).sum(), ref.params)[0]
    expected_normals = _normals_loss(ref, mlp, x0)[2]
    saved = dict(H.KERNEL_CONFIGS)
    got = {}
    try:
        for reduce in (True, False):
            for kind in ("backward", "double_backward"):
                H.KERNEL_CONFIGS[kind] = replace(saved[kind], reduce_runs=reduce)
            first = torch.autograd.grad((enc(x0) * up).sum(), enc.params)[0]
            got[reduce] = (first, _normals_loss(enc, mlp, x0)[2])
    finally:
        H.KERNEL_CONFIGS.update(saved)
    errs = {f"{'run_sums' if reduce else 'plain'}_{what}": rel(g, e)
            for reduce, pair in got.items() for what, g, e in zip(("dtable", "normals_dtable"), pair, (expected_first, expected_normals))}
    errs["run_sums_vs_plain"] = max(rel(a, b) for a, b in zip(got[True], got[False]))
    _report("run_sums", **errs)
    assert all(e < GRAD_TOL for e in errs.values()), errs


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
    """Same NeRF, same cameras and samples (uniform estimator): Triton and PyTorch renders and gradients agree.
    With analytic normals the loss's backward computes no gradient for the (released) points: the first
    backward of the render's encoding computes the table's gradient alone, the double backward no d/dx."""
    from rewardsds.cameras import CameraSampler
    from rewardsds.config import CameraConfig
    from rewardsds.representations import _hash_triton as H

    kw = dict(normal="analytic", shading="diffuse", ambient_only_steps=0, lambda_orient=10.0) if normals else {}
    nerfs = _nerf_pair(**kw)
    sampler = CameraSampler(CameraConfig(resolution=NERF_RES, batch_size=4, views_per_object=4))
    cams = sampler.sample(torch.Generator().manual_seed(0)).to(DEVICE)
    outs, grads = [], []
    calls: dict[str, list] = {"backward": [], "double_backward": []}
    real = H.hash_backward, H.hash_double_backward

    def spy_backward(*args):
        calls["backward"].append(list(args[-2:]))  # need_x, need_table
        return real[0](*args)

    def spy_double_backward(*args):
        calls["double_backward"].append(list(args[7:10]))  # need_x, need_table, need_grad
        return real[1](*args)

    H.hash_backward, H.hash_double_backward = spy_backward, spy_double_backward
    try:
        for n in nerfs:
            out = n.render(cams, step=3)
            loss = out["rgb"].square().mean() + out["opacity"].mean() + sum(n.regularizers(out, 3).values())
            loss.backward()
            outs.append(out)
            grads.append({k: p.grad for k, p in n.named_parameters() if p.grad is not None})
    finally:
        H.hash_backward, H.hash_double_backward = real
    _report("nerf_flags", normals=normals, **calls)
    if normals:
        assert calls == {"backward": [[True, False], [False, True]], "double_backward": [[False, True, True]]}, calls
    else:
        assert calls == {"backward": [[False, True]], "double_backward": []}, calls
    errs = {"rgb": rel(outs[0]["rgb"], outs[1]["rgb"])}
    if normals:
        assert "orient" in outs[0]
        errs["normal"] = rel(outs[0]["normal"], outs[1]["normal"])
    errs.update({k: rel(grads[0][k], grads[1][k]) for k in grads[1]})
    _report("nerf", normals=normals, **errs)
    assert set(grads[0]) == set(grads[1]) and "encoding.params" in grads[0]
    assert all(e < GRAD_TOL for e in errs.values()), errs


@gpu_test
@pytest.mark.parametrize("normals", [False, True])
def test_nerf_bf16_mlps_on_cuda(normals):
    """mlp_dtype=bf16 on CUDA (autocast's CUDA kernels) against fp32, same weights, cameras and samples. How far
    bf16 may move the results depends on the field: here (random features of scale 0.3 on all 16 levels) the
    density gradient sums levels scaled up to 4096 with cancellation, so analytic normals are ill-conditioned.
    The bound is measured on the same render: fp32 MLPs with the encoding perturbed by one bf16 rounding (a
    relative 2^-9); bf16 may differ from fp32 by at most four times that, or by 2e-2 (ten bf16 roundings of
    2^-9: the MLPs' own matmuls, which the perturbation does not touch) where that is larger. In a CPU run
    of this configuration bf16 differed by about 1.5 times the perturbation (normals 3.5e-2 against 2.4e-2,
    the table's gradient 0.11 against 0.075, relative L2) and by at most 4e-3 elsewhere."""
    from rewardsds.cameras import CameraSampler
    from rewardsds.config import CameraConfig

    kw = dict(normal="analytic", shading="diffuse", ambient_only_steps=0, lambda_orient=10.0) if normals else {}
    fp32, _ = _nerf_pair(**kw)
    bf16, _ = _nerf_pair(mlp_dtype="bf16", **kw)
    perturbed, _ = _nerf_pair(**kw)
    for n in (bf16, perturbed):
        n.load_state_dict(fp32.state_dict())
    gen = torch.Generator().manual_seed(3)
    # one bf16 rounding of the encoding: a fixed relative perturbation in [-2^-9, 2^-9] (a constant of the graph)
    perturbed._mlp_input = lambda e: e * (1 + 2.0**-9 * (2 * torch.rand(e.shape, generator=gen) - 1)).to(e.device)
    cams = CameraSampler(CameraConfig(resolution=NERF_RES, batch_size=4, views_per_object=4)).sample(torch.Generator().manual_seed(0)).to(DEVICE)
    outs, grads = [], []
    for n in (fp32, bf16, perturbed):
        out = n.render(cams, step=3)
        (out["rgb"].square().mean() + out["opacity"].mean() + sum(n.regularizers(out, 3).values())).backward()
        outs.append(out)
        grads.append({k: p.grad for k, p in n.named_parameters() if p.grad is not None})

    def rel_l2(p, q):
        p, q = p.detach().float().flatten(), q.detach().float().flatten()
        return float((p - q).norm() / q.norm())

    keys = ["rgb", "opacity", "depth"] + (["normal"] if normals else [])
    errs = {k: (rel_l2(outs[1][k], outs[0][k]), rel_l2(outs[2][k], outs[0][k])) for k in keys}
    errs.update({k: (rel_l2(grads[1][k], grads[0][k]), rel_l2(grads[2][k], grads[0][k])) for k in grads[0]})
    _report("nerf_bf16", normals=normals, **{k: {"bf16": a, "one_rounding": b} for k, (a, b) in errs.items()})
    assert set(grads[0]) == set(grads[1])
    assert all(a <= max(4 * b, 2e-2) and a < 0.5 for a, b in errs.values()), errs
    assert errs["rgb"][0] > 1e-6  # the bf16 path ran
