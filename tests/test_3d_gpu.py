"""CUDA paths of the 3D representations (marker ``gpu``): nerfacc occupancy-grid marching, gsplat
rasterisation against the dense PyTorch twin, gsplat densification through the shared optimiser.

Run on a GPU machine: ``python -m pytest -m gpu tests/test_3d_gpu.py -ra``. gsplat and nerfacc
compile their CUDA extensions on first use (about a minute each).
"""

from __future__ import annotations

import math

import pytest
import torch

from rewardsds.cameras import CameraSampler
from rewardsds.config import CameraConfig
from rewardsds.representations._raster import rasterize_dense
from rewardsds.representations.config import GaussiansConfig, NeRFConfig
from rewardsds.representations.gaussians import Gaussians
from rewardsds.representations.nerf import NeRF
from tests.threed_helpers import requires_cuda

pytestmark = [pytest.mark.gpu, requires_cuda()]

HASH = dict(encoding="hash", n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
            per_level_scale=1.447269237440378)


def cams(n: int, res: int, seed: int = 0, views_per_object: int = 4):
    s = CameraSampler(CameraConfig(resolution=res, batch_size=n, views_per_object=views_per_object))
    return s.sample(torch.Generator().manual_seed(seed)).to("cuda")


@pytest.mark.parametrize("encoding", ["triplane", "hash"])
def test_occgrid_nerf_renders_and_backpropagates(encoding):
    """Occupancy-grid marching on CUDA: shapes, ranges, a non-empty grid, gradients into the grid."""
    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig(estimator="occgrid", **(HASH if encoding == "hash" else {}))).cuda().train()
    out = nerf.render(cams(4, 64), step=0)
    assert bool(nerf.occ_ready) and 0 < int(nerf.estimator.binaries.sum()) < nerf.estimator.binaries.numel()
    assert out["rgb"].shape == (4, 3, 64, 64) and out["opacity"].shape == (4, 1, 64, 64)
    assert torch.isfinite(out["rgb"]).all() and 0 <= out["opacity"].min() and out["opacity"].max() <= 1 + 1e-5
    assert out["opacity"].max() > 0.9  # the density blob is seen
    (out["rgb"].square().mean() + out["opacity"].mean()).backward()
    grads = [p.grad for p in nerf.encoding.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    opt = torch.optim.AdamW(nerf.param_groups())
    opt.step()
    nerf.on_after_optimizer_step(15, opt)  # step 16 refreshes the grid
    nerf.render(cams(4, 64, seed=1), step=16)["rgb"].mean().backward()


@pytest.mark.parametrize("culling", [False, True])
def test_occgrid_render_matches_uniform_sampling(culling):
    """The packed occupancy-grid path and the dense uniform path agree on the same field (eval mode).

    Without culling (alpha and occupancy thresholds 0) both are midpoint quadratures of the same integral at
    about the same step. With the default thresholds the marcher drops samples of alpha < 0.01, whose sum over
    the blob's soft shell is the (small, known) price of the speed; it is bounded separately (H100: exact
    2.6e-6 mean opacity difference; culling 0.0095 mean, 0.109 max)."""
    torch.manual_seed(1)
    thresholds = {} if culling else dict(alpha_threshold=0.0, occ_threshold=0.0)
    occ = NeRF(NeRFConfig(estimator="occgrid", background="solid", random_background_prob=0.0, **thresholds)).cuda()
    uni = NeRF(NeRFConfig(estimator="uniform", background="solid", random_background_prob=0.0)).cuda()
    uni.load_state_dict(occ.state_dict(), strict=False)
    occ.update_occupancy(0, force=True)
    occ.eval(), uni.eval()
    c = CameraSampler(CameraConfig(eval_resolution=64)).eval_cameras(4).to("cuda")
    with torch.no_grad():
        a, b = occ.render(c, 0), uni.render(c, 0)
    mean_tol, max_tol = (2e-2, 0.15) if culling else (5e-3, 0.05)
    err = {k: float((a[k] - b[k]).abs().mean()) for k in ("opacity", "rgb")}
    print("occgrid vs uniform mean abs differences", "culling" if culling else "exact", err)
    assert err["opacity"] < mean_tol and err["rgb"] < mean_tol, err
    assert (a["opacity"] - b["opacity"]).abs().max() < max_tol


def _random_scene(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.9
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.06 + 0.01
    opacities = torch.rand(n, generator=g) * 0.85 + 0.1
    sh = torch.randn(n, 9, 3, generator=g) * 0.3
    return [t.cuda().requires_grad_(True) for t in (means, quats, scales, opacities, sh)]


def test_gsplat_matches_the_dense_twin_images_and_gradients():
    """gsplat.rasterization vs rasterize_dense: same images (RGB, alpha, expected depth) and gradients."""
    from gsplat import rasterization

    c = cams(3, 40, seed=2, views_per_object=1).with_resolution(48, 40)
    viewmats, Ks = c.w2c_opencv(), c.intrinsics()
    bg = torch.tensor([[0.2, 0.5, 0.9]], device="cuda").expand(3, 3).contiguous()
    weights = torch.rand(3, 40, 48, 4, generator=torch.Generator().manual_seed(3)).cuda()

    results = []
    for impl in ("gsplat", "dense"):
        params = _random_scene(300, seed=4)
        means, quats, scales, opac, sh = params
        kw = dict(sh_degree=2, backgrounds=bg)
        if impl == "gsplat":
            render, alpha, _ = rasterization(means, quats, scales, opac, sh, viewmats, Ks, 48, 40, packed=False,
                                             render_mode="RGB+ED", **kw)
        else:
            render, alpha, _ = rasterize_dense(means, quats, scales, opac, sh, viewmats, Ks, 48, 40, **kw)
        loss = (render * weights).sum() + alpha.sum()
        loss.backward()
        results.append((render.detach(), alpha.detach(), [p.grad.detach() for p in params]))

    (r_g, a_g, g_g), (r_d, a_d, g_d) = results
    assert a_d.max() > 0.5  # a non-trivial scene
    assert (r_g[..., :3] - r_d[..., :3]).abs().max() < 2e-3 and (r_g[..., :3] - r_d[..., :3]).abs().mean() < 1e-4
    assert (a_g - a_d).abs().max() < 2e-3
    seen = a_d[..., 0] > 0.1
    assert (r_g[..., 3][seen] - r_d[..., 3][seen]).abs().max() < 1e-2  # expected depth where something renders
    for name, gg, gd in zip(("means", "quats", "scales", "opacities", "sh"), g_g, g_d):
        rel = (gg - gd).norm() / gd.norm().clamp_min(1e-12)
        assert rel < 2e-2, (name, rel.item())


def test_gaussians_200k_render_backward_and_densify_through_the_shared_optimizer():
    """200k Gaussians at 4 x 256^2 on gsplat, then one DefaultStrategy refinement on the shared optimiser."""
    torch.manual_seed(5)
    cfg = GaussiansConfig(num_points=200_000, refine_start_step=0, refine_every=2, grow_grad2d=1e-7, prune_opacity=0.05)
    gs = Gaussians(cfg).cuda().train()
    opt = torch.optim.Adam(gs.param_groups())
    c = cams(4, 256, seed=5)
    target = torch.rand(4, 3, 256, 256, device="cuda")
    n0 = gs.num_gaussians
    for step in range(3):
        out = gs.render(c, step)
        assert out["rgb"].shape == (4, 3, 256, 256) and torch.isfinite(out["rgb"]).all()
        loss = (out["rgb"] - target).square().mean()
        gs.on_before_backward(step, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        gs.on_after_optimizer_step(step, opt)
    assert gs.num_gaussians != n0  # refined at step 2
    for key, p in gs.params.items():
        group = next(g for g in opt.param_groups if g["name"] == f"gaussians.{key}")
        assert group["params"][0] is p and opt.state[p]["exp_avg"].shape == p.shape
    assert gs.strategy_state["grad2d"].shape == (gs.num_gaussians,)


def test_mcmc_strategy_relocates_and_adds_through_the_shared_optimizer():
    torch.manual_seed(6)
    gs = Gaussians(GaussiansConfig(num_points=5000, strategy="mcmc", refine_start_step=0, refine_every=2, cap_max=6000,
                                   opacity_reg=0.01, scale_reg=0.01)).cuda().train()
    with torch.no_grad():
        gs.params["opacities"][:500] = -10.0  # dead: relocated
    opt = torch.optim.Adam(gs.param_groups())
    c = cams(4, 64, seed=6)
    target = torch.rand(4, 3, 64, 64, device="cuda")
    for step in range(3):
        out = gs.render(c, step)
        regs = gs.regularizers(out, step)
        assert set(regs) == {"loss_opacity_reg", "loss_scale_reg"}
        loss = (out["rgb"] - target).square().mean() + sum(regs.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        gs.on_after_optimizer_step(step, opt)
    assert gs.num_gaussians == math.floor(1.05 * 5000)  # one growth step of 5% at step 2
    assert torch.sigmoid(gs.params["opacities"][:500]).min() >= 0.005 - 1e-6  # the dead ones were relocated
    for key, p in gs.params.items():
        group = next(g for g in opt.param_groups if g["name"] == f"gaussians.{key}")
        assert group["params"][0] is p and opt.state[p]["exp_avg"].shape == p.shape
