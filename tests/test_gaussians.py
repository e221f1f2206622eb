"""3D Gaussians on the CPU: the dense rasteriser against references, densification through the shared
optimiser, resume after densification, .ply export/import, optimisation, config."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rewardsds.cameras import CameraSampler, orbit_cameras
from rewardsds.config import CameraConfig
from rewardsds.representations.config import GaussiansConfig
from rewardsds.errors import ConfigError
from rewardsds.representations._raster import (
    ALPHA_THRESHOLD,
    composite_dense,
    eval_sh,
    project_gaussians,
    rasterize_dense,
)
from rewardsds.representations.gaussians import (
    Gaussians,
    ParamGroupOptimizer,
    gaussian_ply_fields,
    read_gaussian_ply,
    read_ply,
    write_ply,
)
from rewardsds.representations.views import render_views, save_pngs, turntable_frames
from rewardsds.schedules import Schedule
from rewardsds.schema import build
from tests.threed_helpers import assert_built_from_schema


def cams(n: int = 4, res: int = 24, seed: int = 0):
    return CameraSampler(CameraConfig(resolution=res, batch_size=n, views_per_object=1)).sample(torch.Generator().manual_seed(seed))


def random_gaussians(n: int, seed: int = 0, opacity=(0.2, 0.95)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.02
    opac = torch.rand(n, generator=g) * (opacity[1] - opacity[0]) + opacity[0]
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opac, colors


# ------------------------------------------------------------------------------------- references
def brute_force_composite(means2d, conics, colors, opacities, depths, radii, W, H, bg):
    """gsplat's per-pixel forward loop, literally (no tiles, no vectorisation)."""
    C = depths.shape[0]
    out = torch.zeros(C, H, W, colors.shape[-1], dtype=torch.float64)
    alpha_out = torch.zeros(C, H, W, dtype=torch.float64)
    for c in range(C):
        order = [int(i) for i in torch.argsort(depths[c]) if (radii[c, i] > 0).all()]
        for v in range(H):
            for u in range(W):
                px, py = u + 0.5, v + 0.5
                T, pix = 1.0, torch.zeros(colors.shape[-1], dtype=torch.float64)
                for g in order:
                    dx, dy = float(means2d[c, g, 0]) - px, float(means2d[c, g, 1]) - py
                    a, b, cc = (float(x) for x in conics[c, g])
                    sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
                    alpha = min(0.999, float(opacities[g]) * math.exp(-sigma))
                    if sigma < 0 or alpha < 1.0 / 255.0:
                        continue
                    next_t = T * (1 - alpha)
                    if next_t <= 1e-4:
                        break
                    pix += colors[c, g].double() * alpha * T
                    T = next_t
                out[c, v, u] = pix + T * bg[c].double()
                alpha_out[c, v, u] = 1 - T
    return out, alpha_out


def test_dense_compositing_matches_the_per_pixel_loop():
    means, quats, scales, opac, colors = random_gaussians(12, seed=1)
    c = cams(2, 10, seed=1)
    proj = project_gaussians(means, quats, scales, opac, c.w2c_opencv(), c.intrinsics(), 10, 10)
    assert (proj["radii"] > 0).all(-1).sum() > 10
    bg = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])
    cols = colors[None].expand(2, -1, -1)
    rgb, alpha, _ = composite_dense(proj["means2d"], proj["conics"], cols, opac, proj["depths"], proj["radii"], 10, 10, bg)
    ref_rgb, ref_alpha = brute_force_composite(proj["means2d"].detach(), proj["conics"].detach(), cols, opac, proj["depths"].detach(), proj["radii"], 10, 10, bg)
    assert torch.allclose(rgb.double(), ref_rgb, atol=1e-5)
    assert torch.allclose(alpha[..., 0].double(), ref_alpha, atol=1e-5)


def test_early_termination_and_alpha_threshold_follow_gsplat():
    # Three nearly opaque Gaussians on the optical axis: the pixel stops before the one that would take
    # the transmittance to <= 1e-4, so the third (blue) never contributes.
    c = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([0.5]), 9, 9)
    means = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [-0.5, 0.0, 0.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1)
    scales = torch.full((3, 3), 0.3)
    opac = torch.tensor([0.99, 0.9, 0.99])  # T: 1 -> 0.01 -> 0.001 -> (1e-5 <= 1e-4: stop)
    colors = torch.eye(3)
    proj = project_gaussians(means, quats, scales, opac, c.w2c_opencv(), c.intrinsics(), 9, 9)
    rgb, alpha, _ = composite_dense(proj["means2d"], proj["conics"], colors[None], opac, proj["depths"], proj["radii"], 9, 9)
    ref_rgb, ref_alpha = brute_force_composite(proj["means2d"].detach(), proj["conics"].detach(), colors[None], opac, proj["depths"].detach(), proj["radii"], 9, 9, torch.zeros(1, 3))
    centre = rgb[0, 4, 4]
    assert centre[2].item() == 0.0 and centre[1].item() > 0.0  # the third one is blocked
    assert torch.allclose(rgb.double(), ref_rgb, atol=1e-5) and torch.allclose(alpha[..., 0].double(), ref_alpha, atol=1e-5)
    # A faint Gaussian (opacity < 1/255) is culled entirely.
    faint = project_gaussians(means[:1], quats[:1], scales[:1], torch.tensor([ALPHA_THRESHOLD * 0.9]), c.w2c_opencv(), c.intrinsics(), 9, 9)
    assert (faint["radii"] == 0).all()


def test_single_isotropic_gaussian_has_the_analytic_footprint():
    W = H = 33
    fovy = torch.tensor([0.8])
    c = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), fovy, W, H)
    s, o = 0.1, 0.8
    render, alpha, info = rasterize_dense(
        torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s), torch.tensor([o]), torch.ones(1, 3),
        c.w2c_opencv(), c.intrinsics(), W, H,
    )
    f = 0.5 * H / math.tan(0.4)
    var = (f * s / 3.0) ** 2 + 0.3  # EWA footprint plus gsplat's 0.3 px^2 dilation
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    r2 = (u - W / 2) ** 2 + (v - H / 2) ** 2
    expected = o * torch.exp(-0.5 * r2 / var)
    expected = torch.where(expected < ALPHA_THRESHOLD, torch.zeros_like(expected), expected)
    assert torch.allclose(alpha[0, ..., 0], expected, atol=1e-5)
    assert info["radii"][0, 0, 0].item() == math.ceil(math.sqrt(2 * math.log(o * 255)) * math.sqrt(var))
    assert render[0, 16, 16, 3].item() == pytest.approx(3.0, abs=1e-4)  # expected depth


def test_projection_matches_gsplat_cpu_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    means, quats, scales, opac, _ = random_gaussians(200, seed=2)
    c = cams(3, 40, seed=2).with_resolution(48, 40)
    viewmats, Ks = c.w2c_opencv(), c.intrinsics()
    ours = project_gaussians(means, quats, scales, opac, viewmats, Ks, 48, 40)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, 48, 40)
    both = (ours["radii"] > 0).all(-1) & (radii > 0).all(-1)
    assert both.sum() > 300
    assert torch.allclose(ours["means2d"][both], means2d[both], atol=1e-3)
    assert torch.allclose(ours["conics"][both], conics[both], rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours["depths"], depths, atol=1e-5)
    # gsplat's reference uses the 3.33-sigma box; ours is opacity-aware (the CUDA kernel), never larger.
    assert (ours["radii"][both] <= radii[both]).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_reference(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(50, 16, 3, generator=g)
    dirs = torch.randn(50, 3, generator=g)
    assert torch.allclose(eval_sh(degree, coeffs, dirs), _spherical_harmonics(degree, dirs, coeffs), atol=1e-5)


def test_shape_annotations_hold_under_beartype():
    from beartype import beartype
    from jaxtyping import TypeCheckError, jaxtyped

    def checked(f):
        return jaxtyped(typechecker=beartype)(f)

    means, quats, scales, opac, colors = random_gaussians(20, seed=9)
    c = cams(2, 8, seed=9)
    proj = checked(project_gaussians)(means, quats, scales, opac, c.w2c_opencv(), c.intrinsics(), 8, 8)
    checked(composite_dense)(proj["means2d"], proj["conics"], colors[None].expand(2, -1, -1), opac, proj["depths"], proj["radii"], 8, 8)
    checked(rasterize_dense)(means, quats, scales, opac, colors, c.w2c_opencv(), c.intrinsics(), 8, 8)
    checked(eval_sh)(1, torch.randn(20, 4, 3), torch.randn(20, 3))
    with pytest.raises(TypeCheckError):
        checked(eval_sh)(1, torch.randn(20, 4, 3), torch.randn(19, 3))
    with pytest.raises(TypeCheckError):
        checked(project_gaussians)(means, quats[:10], scales, opac, c.w2c_opencv(), c.intrinsics(), 8, 8)


# ------------------------------------------------------------------------------------- the representation
def test_cpu_render_shapes_and_gradients():
    gs = Gaussians(GaussiansConfig(num_points=200, sh_degree=1))
    with torch.no_grad():  # anisotropic: with equal axes a rotation changes nothing (zero quaternion gradient)
        gs.params["scales"] += torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    gs.train()
    out = gs.render(cams(2, 16), step=0)
    assert out["rgb"].shape == (2, 3, 16, 16) and out["opacity"].shape == (2, 1, 16, 16) and out["depth"].shape == (2, 1, 16, 16)
    assert 0 <= out["opacity"].min() and out["opacity"].max() <= 1
    assert out["opacity"].max() > 0.5
    out["rgb"].mean().backward()
    for key in ("means", "scales", "quats", "opacities", "sh0"):
        assert gs.params[key].grad is not None and gs.params[key].grad.abs().sum() > 0, key


def test_sh_degree_grows_with_steps():
    gs = Gaussians(GaussiansConfig(num_points=10, sh_degree=3, sh_degree_interval=100))
    assert [gs.active_sh_degree(s) for s in (0, 99, 100, 250, 10_000)] == [0, 0, 1, 2, 3]
    assert gs.params["shN"].shape == (10, 15, 3)


def test_init_in_a_sphere_with_knn_scales_and_seeded():
    a, b, c = (Gaussians(GaussiansConfig(num_points=500, seed=seed)) for seed in (1, 1, 2))
    assert torch.equal(a.params["means"], b.params["means"]) and not torch.equal(a.params["means"], c.params["means"])
    r = a.params["means"].norm(dim=-1)
    assert r.max() <= 0.5 and (r < 0.5 * 0.5 ** (1 / 3)).float().mean() == pytest.approx(0.5, abs=0.07)  # uniform in volume
    assert torch.allclose(torch.sigmoid(a.params["opacities"]), torch.full((500,), 0.1))
    s = torch.exp(a.params["scales"][:, 0])
    assert 0.01 < s.median() < 0.1  # ~ the mean spacing of 500 points in a ball of radius 0.5
    assert torch.allclose(a.params["sh0"][:, 0] * 0.28209479177387814 + 0.5, torch.full((500, 3), 0.5))


def test_rasterizer_choice_on_the_cpu():
    gs = Gaussians(GaussiansConfig(num_points=10, rasterizer="gsplat"))
    with pytest.raises(ConfigError) as err:
        gs.render(cams(1, 8), 0)
    assert err.value.key == "representation.rasterizer"
    mcmc = Gaussians(GaussiansConfig(num_points=10, strategy="mcmc"))
    with pytest.raises(ConfigError, match="representation.strategy"):
        mcmc.render(cams(1, 8), 0)


def _train_steps(gs, opt, c, target, steps, start=0):
    for step in range(start, start + steps):
        out = gs.render(c, step)
        loss = (out["rgb"] - target).square().mean()
        gs.on_before_backward(step, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        gs.on_after_optimizer_step(step, opt)
    return loss.item()


def test_densification_keeps_the_shared_optimizer_consistent():
    gs = Gaussians(GaussiansConfig(num_points=80, refine_start_step=0, refine_every=3, grow_grad2d=1e-12, grow_scale3d=100.0, seed=3))
    gs.train()
    opt = torch.optim.Adam(gs.param_groups())
    c, target = cams(2, 12), torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    _train_steps(gs, opt, c, target, 3)  # steps 0..2: statistics only (refinement needs step > 0, % 3)
    n0 = gs.num_gaussians
    out = gs.render(c, 3)
    gs.on_before_backward(3, out)
    opt.zero_grad()
    (out["rgb"] - target).square().mean().backward()
    opt.step()
    after_step = {k: (p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()) for k, p in gs.params.items()}
    gs.on_after_optimizer_step(3, opt)  # every Gaussian is "small" with a high gradient: all duplicated
    assert gs.num_gaussians == 2 * n0
    for key, p in gs.params.items():
        group = next(g for g in opt.param_groups if g["name"] == f"gaussians.{key}")
        assert group["params"] == [p]
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
        old_p, old_m, old_v = after_step[key]
        assert torch.equal(p.detach()[:n0], old_p) and torch.equal(p.detach()[n0:], old_p)  # clones
        assert torch.equal(st["exp_avg"][:n0], old_m) and (st["exp_avg"][n0:] == 0).all()
        assert torch.equal(st["exp_avg_sq"][:n0], old_v) and (st["exp_avg_sq"][n0:] == 0).all()
    assert len(opt.state) == len(gs.params)  # no stale entries for the replaced tensors
    assert gs.strategy_state["grad2d"].shape == (2 * n0,)
    # The optimiser keeps stepping the new tensors.
    loss = _train_steps(gs, opt, c, target, 2, start=4)
    assert math.isfinite(loss) and all(int(opt.state[p]["step"]) >= 1 for p in gs.params.values())


def test_pruning_removes_the_same_rows_from_parameters_and_state():
    gs = Gaussians(GaussiansConfig(num_points=100, refine_start_step=0, refine_every=2, grow_grad2d=1e9, prune_opacity=0.2, seed=4))
    with torch.no_grad():
        gs.params["opacities"][:30] = -4.0  # sigmoid ~ 0.018 < 0.2: pruned
        gs.params["opacities"][30:] = 1.0
    gs.train()
    opt = torch.optim.Adam(gs.param_groups())
    c, target = cams(2, 16), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    _train_steps(gs, opt, c, target, 2)
    out = gs.render(c, 2)
    gs.on_before_backward(2, out)
    opt.zero_grad()
    (out["rgb"] - target).square().mean().backward()
    opt.step()
    kept = {k: (p.detach()[30:].clone(), opt.state[p]["exp_avg"][30:].clone()) for k, p in gs.params.items()}
    gs.on_after_optimizer_step(2, opt)
    assert gs.num_gaussians == 70
    for key, p in gs.params.items():
        assert torch.equal(p.detach(), kept[key][0]) and torch.equal(opt.state[p]["exp_avg"], kept[key][1])


def test_opacity_reset_every_reset_every_steps():
    gs = Gaussians(GaussiansConfig(num_points=40, refine_start_step=1000, reset_every=2, prune_opacity=0.005, init_opacity=0.6, seed=8))
    gs.train()
    opt = torch.optim.Adam(gs.param_groups())
    c, target = cams(1, 8), torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    _train_steps(gs, opt, c, target, 2)  # steps 0, 1: no reset
    assert torch.sigmoid(gs.params["opacities"]).min() > 0.5
    _train_steps(gs, opt, c, target, 1, start=2)  # step 2: reset to 2 * prune_opacity
    op = gs.params["opacities"]
    assert torch.sigmoid(op).max().item() == pytest.approx(0.01, rel=1e-4)
    assert (opt.state[op]["exp_avg"] == 0).all() and (opt.state[op]["exp_avg_sq"] == 0).all()
    assert next(g for g in opt.param_groups if g["name"] == "gaussians.opacities")["params"] == [op]


def test_optimizer_view_is_the_shared_group():
    gs = Gaussians(GaussiansConfig(num_points=5))
    opt = torch.optim.Adam(gs.param_groups())
    views = gs.optimizer_views(opt)
    assert set(views) == set(gs.params)
    assert isinstance(views["means"], ParamGroupOptimizer)
    assert views["means"].param_groups[0] is next(g for g in opt.param_groups if g["name"] == "gaussians.means")
    assert views["means"].state is opt.state
    with pytest.raises(ConfigError, match="optimizer"):
        gs.optimizer_views(torch.optim.Adam([{"params": [gs.params["means"]]}]))


def test_means_learning_rate_follows_its_schedule_and_extent():
    gs = Gaussians(GaussiansConfig(num_points=5, scene_extent=2.0, lr_means=Schedule(start=1e-3, end=1e-5, start_step=0, end_step=10),
                                   strategy="none"))
    opt = torch.optim.Adam(gs.param_groups())
    means_group = next(g for g in opt.param_groups if g["name"] == "gaussians.means")
    assert means_group["lr"] == pytest.approx(2e-3)
    gs.on_after_optimizer_step(4, opt)
    assert means_group["lr"] == pytest.approx(2.0 * (1e-3 + (1e-5 - 1e-3) * 0.5))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["gaussians.scales"] == 5e-3 and lrs["gaussians.quats"] == 1e-3 and lrs["gaussians.opacities"] == 5e-2
    assert lrs["gaussians.sh0"] == 2.5e-3
    assert all(g["eps"] == 1e-15 and g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert Gaussians(GaussiansConfig(num_points=5, sh_degree=1)).param_groups()[-1]["lr"] == pytest.approx(2.5e-3 / 20)


def test_resume_after_densification_resizes_parameters():
    gs = Gaussians(GaussiansConfig(num_points=120, refine_start_step=0, refine_every=2, grow_grad2d=1e-12, grow_scale3d=100.0, seed=5))
    gs.train()
    opt = torch.optim.Adam(gs.param_groups())
    c, target = cams(2, 16), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    _train_steps(gs, opt, c, target, 3)
    assert gs.num_gaussians == 240
    # Through bytes, as a checkpoint file (an in-memory optimiser state dict would alias its tensors).
    buf = io.BytesIO()
    torch.save({"model": gs.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    sd, opt_sd = ckpt["model"], ckpt["optimizer"]

    fresh = Gaussians(GaussiansConfig(num_points=120, refine_start_step=0, refine_every=2, grow_grad2d=1e-12, grow_scale3d=100.0, seed=99))
    fresh.load_state_dict(sd)
    assert fresh.num_gaussians == 240
    for k in gs.params:
        assert torch.equal(fresh.params[k], gs.params[k])
    assert torch.equal(fresh.strategy_state["grad2d"], gs.strategy_state["grad2d"])
    fresh_opt = torch.optim.Adam(fresh.param_groups())  # built after loading, as on resume
    fresh_opt.load_state_dict(opt_sd)
    gs.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(gs.render(c, 3)["rgb"], fresh.render(c, 3)["rgb"])
    # Both continue identically.
    gs.train(), fresh.train()
    a = _train_steps(gs, opt, c, target, 2, start=3)
    b = _train_steps(fresh, fresh_opt, c, target, 2, start=3)
    assert a == pytest.approx(b, rel=1e-6) and gs.num_gaussians == fresh.num_gaussians


def test_optimizer_built_before_a_resize_is_reported():
    gs = Gaussians(GaussiansConfig(num_points=10))
    opt = torch.optim.Adam(gs.param_groups())
    bigger = Gaussians(GaussiansConfig(num_points=20))
    gs.load_state_dict(bigger.state_dict())
    with pytest.raises(RuntimeError, match="build the optimizer after load_state_dict"):
        gs.optimizer_views(opt)


def test_fifty_steps_of_mse_fit_target_renders():
    c = cams(4, 16, seed=6)
    teacher = Gaussians(GaussiansConfig(num_points=100, init_color=[0.9, 0.2, 0.1], init_opacity=0.6, init_radius=0.35, seed=10,
                                        strategy="none"))
    teacher.eval()
    with torch.no_grad():
        target = teacher.render(c, 0)["rgb"]
    student = Gaussians(GaussiansConfig(num_points=100, seed=11, strategy="none", lr_means=5e-3, lr_sh0=5e-2, lr_opacities=5e-2,
                                        lr_scales=1e-2))
    student.train()
    opt = torch.optim.Adam(student.param_groups())
    first = (student.render(c, 0)["rgb"] - target).square().mean().item()
    last = _train_steps(student, opt, c, target, 50)
    assert last < 0.3 * first, (first, last)


# ------------------------------------------------------------------------------------- .ply
def _struct_read(path):
    raw = open(path, "rb").read()
    head, body = raw.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    assert lines[1] == "format binary_little_endian 1.0"
    n = int(next(l for l in lines if l.startswith("element vertex")).split()[-1])
    names = [l.split()[-1] for l in lines if l.startswith("property float")]
    assert len(names) == len([l for l in lines if l.startswith("property")])  # all float32
    return names, np.frombuffer(body, dtype="<f4", count=n * len(names)).reshape(n, len(names))


def test_ply_export_layout_and_round_trip(tmp_path):
    gs = Gaussians(GaussiansConfig(num_points=64, sh_degree=1, seed=7))
    with torch.no_grad():
        gs.params["shN"].normal_()
        gs.params["quats"].normal_()
    (path,) = gs.export(tmp_path)
    assert path.name == "gaussians.ply"
    names, table = _struct_read(path)
    assert names == gaussian_ply_fields(1)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] and names[-8:] == [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    col = {n: table[:, i] for i, n in enumerate(names)}
    p = {k: v.detach().numpy() for k, v in gs.params.items()}
    assert np.array_equal(col["x"], p["means"][:, 0]) and np.array_equal(col["rot_3"], p["quats"][:, 3])
    assert np.array_equal(col["f_rest_0"], p["shN"][:, 0, 0]) and np.array_equal(col["f_rest_1"], p["shN"][:, 1, 0])
    assert np.array_equal(col["f_rest_3"], p["shN"][:, 0, 1])  # channel-major, as 3DGS writes it
    assert np.array_equal(col["opacity"], p["opacities"]) and (table[:, 3:6] == 0).all()
    back = read_gaussian_ply(path)
    for k in gs.params:
        assert torch.equal(back[k], gs.params[k].detach()), k
    # Initialising from the file reproduces the model.
    again = Gaussians(GaussiansConfig(init="ply", init_path=str(path), sh_degree=1))
    for k in gs.params:
        assert torch.equal(again.params[k], gs.params[k]), k


def test_ply_missing_fields_are_named(tmp_path):
    gs = Gaussians(GaussiansConfig(num_points=8))
    fields = gs.ply_fields()
    del fields["opacity"], fields["rot_3"]
    path = write_ply(tmp_path / "broken.ply", fields)
    with pytest.raises(ConfigError) as err:
        read_gaussian_ply(path)
    msg = str(err.value)
    assert err.value.key == "representation.init_path" and "opacity" in msg and "rot_3" in msg and "scale_0" not in msg.split("Fix")[0]
    with pytest.raises(ConfigError, match="missing the 3D Gaussian fields"):
        Gaussians(GaussiansConfig(init="ply", init_path=str(path)))
    with pytest.raises(ConfigError, match="is not a file"):
        read_ply(tmp_path / "nope.ply")


def test_point_cloud_init_from_an_ascii_ply(tmp_path):
    path = tmp_path / "points.ply"
    path.write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
        "0 0 0 255 0 0\n0.1 0 0 0 255 0\n0 0.2 0 0 0 255\n"
    )
    gs = Gaussians(GaussiansConfig(init="points", init_path=str(path)))
    assert gs.num_gaussians == 3
    assert torch.allclose(gs.params["means"][1], torch.tensor([0.1, 0.0, 0.0]))
    rgb = gs.params["sh0"][:, 0] * 0.28209479177387814 + 0.5
    assert torch.allclose(rgb, torch.eye(3), atol=1e-6)
    no_xyz = tmp_path / "bad.ply"
    no_xyz.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nend_header\n0 0\n")
    with pytest.raises(ConfigError, match="z"):
        Gaussians(GaussiansConfig(init="points", init_path=str(no_xyz)))


def test_turntable_frames_and_final_view_pngs(tmp_path):
    from PIL import Image

    gs = Gaussians(GaussiansConfig(num_points=50))
    sampler = CameraSampler(CameraConfig(eval_resolution=12))
    frames = turntable_frames(gs, sampler.turntable(4), step=0)
    # normals from the rendered depth: the Gaussians render none of their own
    assert set(frames) == {"rgb", "normal", "opacity"} and frames["rgb"].shape == (4, 12, 12, 3)
    views = render_views(gs, sampler.eval_cameras(3), step=0)
    paths = save_pngs(views["rgb"], tmp_path / "final", prefix="eval")
    assert [p.name for p in paths] == ["eval_000.png", "eval_001.png", "eval_002.png"]
    back = np.asarray(Image.open(paths[1]))
    assert back.shape == (12, 12, 3)
    expected = (views["rgb"][1].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(back, expected)


# ------------------------------------------------------------------------------------- config
def test_the_schema_is_the_constructor_argument():
    assert_built_from_schema(Gaussians, GaussiansConfig(num_points=8))


@pytest.mark.parametrize(
    "override,key",
    [
        ({"init_radius": -0.5}, "representation.init_radius"),
        ({"init": "ply"}, "representation.init_path"),
        ({"sh_degree": 4}, "representation.sh_degree"),
        ({"init_opacity": 1.0}, "representation.init_opacity"),
        ({"strategy": "adc"}, "representation.strategy"),
        ({"near_plane": 0.0}, "representation.near_plane"),
    ],
)
def test_impossible_gaussian_settings_raise_config_error(override, key):
    with pytest.raises(ConfigError) as err:
        GaussiansConfig(**override)
    assert err.value.key == key


def test_conf_file_composes_to_the_schema():
    from hydra import compose, initialize_config_dir

    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base=None):
        cfg = compose(config_name="representation/gaussians").representation
    assert OmegaConf.to_object(cfg) == GaussiansConfig(_target_="rewardsds.representations.gaussians.Gaussians")
    cfg.num_points = 16
    rep = build(OmegaConf.to_object(cfg))
    assert isinstance(rep, Gaussians) and rep.num_gaussians == 16
