"""The NeRF on the CPU: grid encodings, compositing, shading, regularisers, optimisation, resume, mesh."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import trimesh
from omegaconf import OmegaConf

from conftest import compose
from rewardsds.cameras import CameraSampler, orbit_cameras
from rewardsds.config import CameraConfig, validate
from rewardsds.representations.config import GridEncodingType, MLPDType, NeRFConfig, NormalType
from rewardsds.errors import ConfigError
from rewardsds.representations._grid import (DenseGridEncoding, HashGridEncoding, TriplaneEncoding, hash_grid_reference, sample_planes,
                                             sample_volume)
from rewardsds.representations._mesh import marching_tetrahedra
from rewardsds.representations.base import ExportOptions
from rewardsds.representations.nerf import NeRF
from rewardsds.representations.views import render_views, turntable_frames
from rewardsds.schedules import Schedule
from rewardsds.schema import build
from tests.threed_helpers import assert_built_from_schema

SMALL = dict(n_levels=4, n_features_per_level=4, base_resolution=16, per_level_scale=1.5, num_samples_per_ray=32)


def cams(n: int = 4, res: int = 16, seed: int = 0):
    return CameraSampler(CameraConfig(resolution=res, batch_size=n, views_per_object=1)).sample(torch.Generator().manual_seed(seed))


def small_nerf(**kw) -> NeRF:
    torch.manual_seed(kw.pop("init_seed", 0))
    return NeRF(NeRFConfig(**{**SMALL, **kw}))


# ------------------------------------------------------------------------------------- encodings
def test_hash_grid_matches_the_loop_reference_dense_and_hashed_levels():
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0, init_scale=1.0)
    assert 0 < enc.n_dense_levels < 6  # both kinds of level are exercised
    x = torch.rand(300, 3)
    assert torch.allclose(enc(x), hash_grid_reference(enc, x), atol=1e-6)


def test_hash_grid_is_trilinear_and_differentiable_in_position():
    torch.manual_seed(1)
    enc = HashGridEncoding(n_levels=3, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0, init_scale=1.0).double()
    x = (torch.rand(20, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: enc(y), (x,), eps=1e-6, atol=1e-5)


def test_gather_samplers_equal_grid_sample_with_gradients():
    """The twice-differentiable samplers compute grid_sample (bilinear, border, align_corners) and its gradients."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(5)
    planes = torch.randn(3, 4, 7, 9, generator=g, requires_grad=True)
    pts = (torch.rand(3, 50, 2, generator=g) * 2.4 - 1.2).requires_grad_(True)  # some outside [-1, 1]: border
    ref = F.grid_sample(planes, pts[:, :, None], mode="bilinear", padding_mode="border", align_corners=True)[..., 0]
    out = sample_planes(planes, pts)
    assert torch.allclose(out, ref, atol=1e-6)
    w = torch.randn_like(ref)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(torch.autograd.grad((out * w).sum(), (planes, pts)),
                                                                 torch.autograd.grad((ref * w).sum(), (planes, pts))))
    vol = torch.randn(1, 3, 5, 6, 8, generator=g, requires_grad=True)
    p3 = (torch.rand(40, 3, generator=g) * 2.2 - 1.1).requires_grad_(True)
    ref3 = F.grid_sample(vol, p3.view(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border", align_corners=True).view(3, -1)
    out3 = sample_volume(vol, p3)
    assert torch.allclose(out3, ref3, atol=1e-6)
    w3 = torch.randn_like(ref3)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(torch.autograd.grad((out3 * w3).sum(), (vol, p3)),
                                                                 torch.autograd.grad((ref3 * w3).sum(), (vol, p3))))


@pytest.mark.parametrize("cls", [DenseGridEncoding, TriplaneEncoding])
def test_grid_encodings_are_twice_differentiable_in_position(cls, monkeypatch):
    """Analytic normals train through d(density)/dx: the encodings' second derivatives match finite differences,
    without grid_sample (whose backward has no derivative on CUDA)."""
    def no_grid_sample(*a, **k):
        raise AssertionError("grid_sample used for points that carry a gradient")

    monkeypatch.setattr(torch.nn.functional, "grid_sample", no_grid_sample)
    torch.manual_seed(3)
    enc = cls(n_levels=2, n_features_per_level=2, base_resolution=4, per_level_scale=2.0, init_scale=1.0).double()
    x = (torch.rand(12, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    params = list(enc.parameters())

    def grad_norm(*ps):  # a scalar of d(features)/dx, as the orientation loss is, as a function of the parameters
        saved = [p.data for p in params]
        for p, q in zip(params, ps):
            p.data = q
        try:
            out = torch.func.functional_call(enc, {n: q for (n, _), q in zip(enc.named_parameters(), ps)}, (x,))
            (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
            return gx.square().sum()
        finally:
            for p, d in zip(params, saved):
                p.data = d

    assert torch.autograd.gradcheck(grad_norm, tuple(p.detach().clone().requires_grad_(True) for p in params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", [HashGridEncoding, DenseGridEncoding, TriplaneEncoding])
def test_masked_levels_get_no_gradient(cls):
    torch.manual_seed(2)
    enc = cls(n_levels=4, n_features_per_level=2, base_resolution=4, per_level_scale=2.0)
    out = enc(torch.rand(256, 3), max_resolution=8.0)  # levels at 4 and 8 stay on, 16 and 32 off
    assert out.shape == (256, enc.n_output_dims)
    assert torch.all(out.view(256, 4, 2)[:, 2:] == 0)
    out.square().sum().backward()
    if cls is HashGridEncoding:
        grad = enc.params.grad
        offsets = enc._offsets.tolist() + [grad.shape[0]]
        per_level = [grad[offsets[i] : offsets[i + 1]].abs().sum().item() for i in range(4)]
    else:
        per_level = [p.grad.abs().sum().item() if p.grad is not None else 0.0 for p in enc.parameters()]
    assert per_level[0] > 0 and per_level[1] > 0 and per_level[2] == 0 and per_level[3] == 0


def test_shape_annotations_hold_under_beartype():
    from beartype import beartype
    from jaxtyping import TypeCheckError, jaxtyped

    def checked(f):
        return jaxtyped(typechecker=beartype)(f)

    enc = HashGridEncoding(n_levels=3, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    assert checked(enc.forward)(torch.rand(10, 3)).shape == (10, 6)
    with pytest.raises(TypeCheckError):
        checked(enc.forward)(torch.rand(10, 2))
    v, f = checked(marching_tetrahedra)(torch.rand(6, 6, 6), 0.5, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    assert v.shape[1] == 3 and f.shape[1] == 3
    c = cams(2, 6)
    o, d = checked(type(c).rays)(c)
    assert o.shape == (2, 6, 6, 3)
    nerf = small_nerf()
    assert checked(nerf.density)(torch.rand(7, 3)).shape == (7,)


# ------------------------------------------------------------------------------------- rendering
def test_cpu_render_shapes_ranges_and_gradients_reach_the_grid():
    nerf = small_nerf()
    nerf.train()
    out = nerf.render(cams(4, 16), step=0)
    assert out["rgb"].shape == (4, 3, 16, 16)
    assert out["opacity"].shape == (4, 1, 16, 16) and out["depth"].shape == (4, 1, 16, 16)
    assert 0.0 <= out["opacity"].min() and out["opacity"].max() <= 1.0
    assert 0.0 <= out["rgb"].min() and out["rgb"].max() <= 1.0
    assert out["opacity"].max() > 0.9 and out["opacity"].min() < 0.05  # the blob covers the centre only
    (out["rgb"].square().mean() + out["opacity"].mean()).backward()
    for name, p in nerf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_uniform_compositing_matches_the_analytic_opacity_of_the_blob():
    # Zero MLPs leave sigma = softplus(1 - |x| / 0.5): integrate it along the central ray by quadrature.
    nerf = small_nerf(density_blob_scale=1.0, num_samples_per_ray=1024, background="solid", random_background_prob=0.0)
    for p in nerf.density_net.parameters():
        torch.nn.init.zeros_(p)
    nerf.eval()
    # A 1x1 image: its only pixel centre (0.5, 0.5) is the image centre, so its ray hits the origin.
    c = orbit_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([3.0]), torch.tensor([0.6]), 1, 1)
    with torch.no_grad():
        out = nerf.render(c, 0)
    s = torch.linspace(-1.0, 1.0, 200001, dtype=torch.float64)
    # The central ray crosses the box [-1, 1]^3 between the two faces it hits; walk along it exactly.
    d = -c.position[0].double() / 3.0
    near, far = [((sgn * 1.0 - c.position[0].double()) / d) for sgn in (-1, 1)]
    t0, t1 = torch.minimum(near, far).max(), torch.maximum(near, far).min()
    t = t0 + (t1 - t0) * (s + 1) / 2
    pts = c.position[0].double() + t[:, None] * d
    tau = torch.trapezoid(torch.nn.functional.softplus(1.0 - pts.norm(dim=-1) / 0.5), t)
    expected = 1.0 - torch.exp(-tau)
    assert out["opacity"][0, 0, 0, 0].item() == pytest.approx(expected.item(), abs=2e-3)
    # Expected depth lies inside the box crossing and before its middle (density peaks at the centre).
    depth = out["depth"][0, 0, 0, 0].item()
    assert t0.item() < depth < 0.5 * (t0 + t1).item()


def test_background_is_composited_behind_the_object():
    nerf = small_nerf(background="solid", background_color=[0.2, 0.4, 0.6], random_background_prob=0.0)
    nerf.eval()
    with torch.no_grad():
        out = nerf.render(cams(2, 16), 0)
    empty = out["opacity"][:, 0] < 1e-4
    assert empty.any()
    rgb = out["rgb"].permute(0, 2, 3, 1)[empty]
    assert torch.allclose(rgb, torch.tensor([0.2, 0.4, 0.6]).expand_as(rgb), atol=1e-3)


def test_random_background_is_reproducible_per_step():
    nerf = small_nerf(background="solid", random_background_prob=1.0)
    nerf.train()
    c = cams(2, 8)
    a, b = nerf.render(c, 5)["rgb"], nerf.render(c, 5)["rgb"]
    other = nerf.render(c, 6)["rgb"]
    assert torch.equal(a, b) and not torch.allclose(a, other)


def test_estimator_choice_on_the_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="rewardsds.representations.nerf"):
        nerf = small_nerf(estimator="auto")
        nerf.render(cams(1, 8), 0)
    assert any("uniform samples" in r.getMessage() for r in caplog.records)
    forced = small_nerf(estimator="occgrid")
    with pytest.raises(ConfigError) as err:
        forced.render(cams(1, 8), 0)
    assert err.value.key == "representation.estimator" and "CUDA" in str(err.value)


def test_shading_modes_and_normals():
    nerf = small_nerf(normal="analytic", shading="diffuse", ambient_only_steps=10, diffuse_prob=1.0, textureless_prob=1.0,
                      background="solid", random_background_prob=0.0)
    nerf.train()
    c = cams(2, 16)
    albedo_phase = nerf.render(c, 0)
    assert "normal" not in albedo_phase  # albedo only before ambient_only_steps: no normals needed
    textureless = nerf.render(c, 10)
    rgb = textureless["rgb"]
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-6) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-6)
    assert textureless["normal"].shape == (2, 3, 16, 16)
    # Normals of the blob point outwards: towards the camera where the object is seen (the central
    # ray meets the blob head-on; grazing rays average normals over a soft chord).
    head_on = orbit_cameras(torch.tensor([10.0]), torch.tensor([40.0]), torch.tensor([3.0]), torch.tensor([0.6]), 17, 17)
    out = nerf.render(head_on, 10)
    n = torch.nn.functional.normalize(out["normal"], dim=1).permute(0, 2, 3, 1)
    _, dirs = head_on.rays()
    facing = (n * dirs).sum(-1)
    assert facing[0, 8, 8] < -0.99
    assert facing[out["opacity"][:, 0] > 0.5].mean() < -0.3


def test_finite_difference_normals_agree_with_analytic_ones():
    nerf = small_nerf()
    x = (torch.rand(500, 3) - 0.5) * 0.8
    x = x[x.norm(dim=-1) > 0.1]
    _, _, na = nerf._normals(x, 0, NormalType.analytic)
    _, _, nf = nerf._normals(x, 0, NormalType.finite_difference)
    assert (na * nf).sum(-1).mean() > 0.99
    # Outward for the blob: along +x.
    assert (na * torch.nn.functional.normalize(x, dim=-1)).sum(-1).mean() > 0.95


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("normals", [False, True])
def test_bf16_mlps_agree_with_fp32(normals):
    """mlp_dtype=bf16 against fp32 with the same weights, cameras and samples. bf16 keeps 8 significant bits (a
    rounding of up to 2^-9 relative per value), and the matmuls round their 16- and 64-term sums: renders within
    2e-3 and normals within 5e-3 in relative L2; parameter gradients (three bf16 matmuls deep, and for the
    orientation loss through the MLP's own derivative) within 3e-2 and 8e-2. Weights and their gradients stay
    fp32, and the bf16 path really runs (its results differ from fp32)."""
    kw = dict(normal="analytic", shading="diffuse", ambient_only_steps=0, lambda_orient=10.0) if normals else {}
    nerfs = [small_nerf(encoding="hash", mlp_dtype=d, **kw).train() for d in ("fp32", "bf16")]
    nerfs[1].load_state_dict(nerfs[0].state_dict())
    with torch.no_grad():  # features of a trained scale, so that the grid matters in the render
        for n in nerfs:
            n.encoding.params.copy_(torch.randn(n.encoding.params.shape, generator=torch.Generator().manual_seed(7)) * 0.3)
    outs, grads = [], []
    for n in nerfs:
        out = n.render(cams(4, 16), 3)
        (out["rgb"].square().mean() + out["opacity"].mean() + sum(n.regularizers(out, 3).values())).backward()
        outs.append(out)
        grads.append({k: p.grad for k, p in n.named_parameters()})
    keys = ["rgb", "opacity", "depth"] + (["normal"] if normals else [])
    render_errs = {k: _rel_l2(outs[1][k], outs[0][k]) for k in keys}
    grad_errs = {k: _rel_l2(grads[1][k], grads[0][k]) for k in grads[0]}
    assert all(e < (5e-3 if k == "normal" else 2e-3) for k, e in render_errs.items()), render_errs
    assert max(grad_errs.values()) < (8e-2 if normals else 3e-2), grad_errs
    assert render_errs["rgb"] > 1e-6 and grad_errs["density_net.0.weight"] > 1e-6
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in nerfs[1].parameters())


def test_auto_mlp_dtype_is_bf16_for_large_cuda_renders_only():
    """mlp_dtype=auto (the paper experiments' setting): on the CPU bit for bit the fp32 render and gradients; bf16
    only for CUDA renders of at least AUTO_BF16_MIN_RAYS rays (256 px x 4 views), and only during the render."""
    from rewardsds.representations.nerf import AUTO_BF16_MIN_RAYS, auto_bf16_mlps

    nerfs = [small_nerf(encoding="hash", mlp_dtype=d).train() for d in ("fp32", "auto")]
    nerfs[1].load_state_dict(nerfs[0].state_dict())
    outs, grads = [], []
    for n in nerfs:
        out = n.render(cams(2, 8), 3)
        (out["rgb"].square().mean() + out["opacity"].mean()).backward()
        outs.append(out["rgb"])
        grads.append(torch.cat([p.grad.flatten() for p in n.parameters() if p.grad is not None]))
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert AUTO_BF16_MIN_RAYS == 4 * 128 * 128
    assert auto_bf16_mlps(torch.device("cuda"), 4 * 256 * 256) and auto_bf16_mlps("cuda:0", AUTO_BF16_MIN_RAYS)
    assert not auto_bf16_mlps(torch.device("cuda"), 4 * 64 * 64) and not auto_bf16_mlps(torch.device("cpu"), 4 * 256 * 256)
    assert not nerfs[1]._bf16_mlps(torch.zeros(1))  # outside a render (export, density grids): fp32
    assert small_nerf(encoding="hash", mlp_dtype="bf16")._bf16_mlps(torch.zeros(1))
    for name in ("mvdream_nerf", "dreamfusion_nerf", "dreamdpo_mvdream_nerf"):
        cfg = validate(compose([f"experiment={name}", "prompt=a cat"]))
        assert cfg.representation.mlp_dtype == MLPDType.auto and cfg.representation.encoding == GridEncodingType.hash, name


def test_bf16_mlps_keep_half_the_activations_for_backward():
    """What autograd saves for the backward of the MLPs, by storage (the encoding replaced by a linear map that
    saves only the points): with bf16 MLPs the hidden activations are bf16 and the fp32 encoding is not kept
    (one bf16 copy serves both MLPs)."""
    saved = {}
    for dtype in ("fp32", "bf16"):
        nerf = small_nerf(encoding="hash", mlp_dtype=dtype)
        proj = torch.randn(3, 16, requires_grad=True)
        nerf._encode = lambda x, step, second_order=None: x @ proj
        x = (torch.rand(4096, 3) - 0.5) * 0.8
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.numel() >= x.shape[0]:  # per-point tensors (not the weights)
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sigma, color = nerf.field(x, 0)
        saved[dtype] = sum(storages.values()) / x.shape[0]
        (sigma.sum() + color.sum()).backward()  # the saved graph is complete and differentiable
        assert proj.grad is not None
    # fp32: the encoding (16 values) and two hidden layers (64 each), 4 bytes each, plus a few values per point;
    # bf16: half of that but for the fp32 points and outputs
    assert saved["fp32"] >= 4 * (16 + 2 * 64)
    assert saved["bf16"] <= 2 * (16 + 2 * 64) + 40, saved


def test_regularizers_are_named_weighted_and_differentiable():
    nerf = small_nerf(normal="analytic", lambda_sparsity=2.0, lambda_opaque=1.0, lambda_orient=Schedule(start=0.0, end=3.0, start_step=0, end_step=10),
                      lambda_z_variance=1.0)
    nerf.train()
    out = nerf.render(cams(2, 16), step=5)
    regs = nerf.regularizers(out, step=5)
    assert set(regs) == {"loss_sparsity", "loss_opaque", "loss_orient", "loss_z_variance"}
    op = out["opacity"]
    assert regs["loss_sparsity"].item() == pytest.approx(2.0 * (op.square() + 0.01).sqrt().mean().item(), rel=1e-5)
    assert regs["loss_orient"].item() == pytest.approx(1.5 * out["orient"].item(), rel=1e-5)
    assert all(torch.isfinite(v) and v >= 0 for v in regs.values())
    sum(regs.values()).backward()
    assert nerf.encoding.planes[0].grad.abs().sum() > 0
    # Inactive weights give no entries.
    assert small_nerf().regularizers(out, 0) == {}


def test_orientation_weight_without_normals_is_an_error():
    nerf = small_nerf(lambda_orient=1.0)
    nerf.train()
    out = nerf.render(cams(1, 8), 0)
    with pytest.raises(ConfigError, match="representation.lambda_orient"):
        nerf.regularizers(out, 0)


def test_coarse_to_fine_grid_resolution_schedule():
    nerf = small_nerf(grid_resolution=Schedule(start=16, end=200, start_step=0, end_step=100))
    nerf.train()
    c = cams(2, 8)
    nerf.render(c, 0)["rgb"].mean().backward()
    grads = [p.grad.abs().sum().item() for p in nerf.encoding.planes]
    assert grads[0] > 0 and all(g == 0 for g in grads[1:])  # only the 16-cell level at step 0
    nerf.zero_grad()
    nerf.render(c, 100)["rgb"].mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in nerf.encoding.planes)


def test_fifty_steps_of_mse_fit_target_renders():
    views = cams(4, 12, seed=3)
    fast = dict(num_samples_per_ray=16, hidden_dim=32, background="solid", random_background_prob=0.0)
    teacher = small_nerf(init_seed=1, density_blob_std=0.35, **fast)
    with torch.no_grad():
        last = teacher.feature_net[-1]
        last.weight.normal_(0, 3.0)
        for p in teacher.encoding.parameters():
            p.uniform_(-0.5, 0.5)
        teacher.eval()
        target = teacher.render(views, 0)["rgb"]
    student = small_nerf(init_seed=2, lr_encoding=0.05, lr_network=0.01, stratified=False, **fast)
    student.train()
    opt = torch.optim.AdamW(student.param_groups())
    losses = []
    for step in range(50):
        loss = (student.render(views, step)["rgb"] - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        student.on_after_optimizer_step(step, opt)
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


# ------------------------------------------------------------------------------------- optimiser / resume
def test_param_groups_are_named_and_cover_every_parameter():
    nerf = small_nerf()
    groups = nerf.param_groups()
    assert [g["name"] for g in groups] == ["nerf.encoding", "nerf.density", "nerf.feature", "nerf.background"]
    assert [g["lr"] for g in groups] == [0.01, 0.001, 0.001, 0.001]
    assert all(g["betas"] == (0.9, 0.99) and g["eps"] == 1e-15 and g["weight_decay"] == 0.0 for g in groups)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in nerf.parameters()}
    assert "nerf.background" not in [g["name"] for g in small_nerf(background="solid").param_groups()]


def test_state_dict_round_trip_with_occupancy_grid():
    a = small_nerf(init_seed=0)
    a.train()
    a.update_occupancy(0, force=True)  # plain PyTorch, also on the CPU
    assert bool(a.occ_ready) and a.estimator.binaries.any()
    sd = a.state_dict()
    assert {"estimator.occs", "estimator.binaries", "occ_ready"} <= set(sd)
    b = small_nerf(init_seed=7)
    assert not torch.equal(b.encoding.planes[0], a.encoding.planes[0])
    b.load_state_dict(sd)
    assert torch.equal(b.estimator.binaries, a.estimator.binaries) and bool(b.occ_ready)
    c = cams(2, 12)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a.render(c, 3)["rgb"], b.render(c, 3)["rgb"])


# ------------------------------------------------------------------------------------- outputs
def test_turntable_and_eval_views():
    nerf = small_nerf()
    sampler = CameraSampler(CameraConfig(eval_resolution=12))
    frames = turntable_frames(nerf, sampler.turntable(5), step=0)
    assert set(frames) == {"rgb", "normal", "opacity"}
    for f in frames.values():
        assert f.shape == (5, 12, 12, 3) and f.dtype.name == "uint8"
    assert nerf.training  # the mode is restored
    views = render_views(nerf, sampler.eval_cameras(3), step=0, views_per_call=2)
    assert views["rgb"].shape == (3, 3, 12, 12) and views["normal"].shape == (3, 3, 12, 12)


def test_marching_tetrahedra_on_a_sphere():
    g = torch.linspace(-1, 1, 48)
    X, Y, Z = torch.meshgrid(g, g, g, indexing="ij")
    field = 1.0 - torch.sqrt(X**2 + Y**2 + Z**2)  # inside where > 0.4: a sphere of radius 0.6
    v, f = marching_tetrahedra(field, 0.4, (-1, -1, -1), (1, 1, 1))
    r = v.norm(dim=-1)
    assert r.min() > 0.59 and r.max() < 0.601
    m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.01)  # positive: faces wound outward
    v0, f0 = marching_tetrahedra(field, 5.0, (-1, -1, -1), (1, 1, 1))
    assert v0.shape == (0, 3) and f0.shape == (0, 3)


def test_mesh_export_loads_back_with_colours(tmp_path):
    nerf = small_nerf(mesh_resolution=40, mesh_threshold=5.0)
    paths = nerf.export(tmp_path, ExportOptions(formats=("mesh",)))
    assert [p.name for p in paths] == ["mesh.ply", "mesh.obj"]
    meshes = [trimesh.load(p, process=False) for p in paths]
    for m in meshes:
        assert len(m.vertices) > 100 and len(m.faces) > 100
    ply = meshes[0]
    assert ply.is_watertight
    # The blob's density is 5 where 10 (1 - |x| / 0.5) = softplus^-1(5): |x| ~ 0.25.
    r = torch.from_numpy(ply.vertices).norm(dim=-1)
    assert abs(r.mean().item() - 0.5 * (1 - math.log(math.expm1(5.0)) / 10)) < 0.03
    assert ply.visual.vertex_colors.shape == (len(ply.vertices), 4)
    with pytest.raises(ConfigError, match="representation.mesh_threshold"):
        small_nerf(mesh_resolution=16, mesh_threshold=1e4).extract_mesh()


# ------------------------------------------------------------------------------------- config
# ------------------------------------------------------------------------------------- evaluation memory
def test_ray_chunks_bound_the_samples_and_cover_every_ray():
    from rewardsds.representations.nerf import max_samples_per_ray, ray_chunks

    assert max_samples_per_ray(512) == 513
    for n_rays, per_ray, bound in ((16384, 513, 262144), (10, 65, 64 * 65), (7, 33, 33), (1, 513, 10**9)):
        chunks = ray_chunks(n_rays, per_ray, bound)
        assert chunks[0][0] == 0 and chunks[-1][1] == n_rays and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        assert all((e - s) * per_ray <= bound for s, e in chunks), chunks


def test_eval_render_is_split_into_chunks_of_bounded_samples():
    """Memory of an evaluation render grows with the samples evaluated at once: each chunk holds at most
    eval_chunk_samples of them, whatever the resolution (a chunk of rays alone allowed rays x 512 samples).
    The chunked render equals the one-chunk render."""
    nerf = small_nerf(num_samples_per_ray=16, eval_chunk_samples=1000, background="solid", random_background_prob=0.0)
    nerf.eval()
    seen: list[int] = []
    original = nerf._render_rays

    def spy(origins, *args, **kwargs):
        out = original(origins, *args, **kwargs)
        seen.append(origins.shape[0] * nerf.cfg.num_samples_per_ray)  # uniform: every ray gets num_samples_per_ray samples
        return out

    c = cams(2, 12)
    with torch.no_grad():
        nerf._render_rays = spy
        chunked = nerf.render(c, 0)
        del nerf._render_rays
        assert sum(seen) == 2 * 12 * 12 * 16 and len(seen) == math.ceil(2 * 12 * 12 / (1000 // 17))
        assert max(seen) <= 1000
        nerf.cfg.eval_chunk_samples = 10**9
        whole = nerf.render(c, 0)
    for key in ("rgb", "opacity", "depth", "normal"):
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoding", ["triplane", "dense", "hash"])
def test_first_order_normals_equal_the_twice_differentiable_path(encoding):
    """Evaluation normals sample with grid_sample (first order, fused backward); training keeps the gather path
    whose normals can be differentiated again. Both give the same normals."""
    nerf = small_nerf(encoding=encoding, density_blob_scale=1.0)
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    nerf.eval()
    with torch.no_grad():
        sigma_e, color_e, normal_e = nerf._normals(x, 0, NormalType.analytic)
    nerf.train()
    sigma_t, color_t, normal_t = nerf._normals(x, 0, NormalType.analytic)
    assert normal_t.requires_grad and not normal_e.requires_grad
    torch.testing.assert_close(normal_e, normal_t.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sigma_e, sigma_t.detach())


def test_eval_render_skips_normals_it_is_not_asked_for():
    nerf = small_nerf(background="solid", random_background_prob=0.0).eval()
    c = cams(2, 12)
    with torch.no_grad():
        full = nerf.render(c, 0)
        rgb_only = nerf.render(c, 0, outputs=["rgb"])
    assert "normal" in full and "normal" not in rgb_only
    torch.testing.assert_close(rgb_only["rgb"], full["rgb"])
    shaded = small_nerf(normal="analytic", shading="diffuse", ambient_only_steps=0).eval()
    with torch.no_grad():  # diffuse shading needs the normals for the colour itself
        assert "normal" in shaded.render(c, 5, outputs=["rgb"])


def test_eval_chunk_must_hold_one_ray():
    with pytest.raises(ConfigError, match=r"representation\.eval_chunk_samples = 100: must hold the samples of at least one ray \(513"):
        NeRFConfig(eval_chunk_samples=100)


def test_a_choice_in_an_error_reads_as_the_user_wrote_it():
    err = ConfigError("representation.encoding", GridEncodingType.hash, "is wrong here", "use triplane")
    assert str(err) == "representation.encoding = 'hash': is wrong here. Fix: use triplane" and err.value is GridEncodingType.hash


def test_the_schema_is_the_constructor_argument():
    assert_built_from_schema(NeRF, NeRFConfig(**SMALL))


@pytest.mark.parametrize(
    "override,key",
    [
        ({"radius": -1.0}, "representation.radius"),
        ({"num_samples_per_ray": 0}, "representation.num_samples_per_ray"),
        ({"shading": "diffuse"}, "representation.normal"),
        ({"encoding": "tcnn"}, "representation.encoding"),
        ({"encoding": "dense", "n_levels": 16, "per_level_scale": 1.5}, "representation.per_level_scale"),
        ({"density_blob_std": 0.0}, "representation.density_blob_std"),
        ({"lambda_orient": "strong"}, "representation.lambda_orient"),
        ({"grid_resolution": Schedule(start=0.0)}, "representation.grid_resolution"),
    ],
)
def test_impossible_nerf_settings_raise_config_error(override, key):
    with pytest.raises(ConfigError) as err:
        NeRFConfig(**override)
    assert err.value.key == key
    if "encoding" not in override or override.get("encoding") != "tcnn":
        with pytest.raises(ConfigError):
            NeRF(NeRFConfig(**override))


def test_conf_file_composes_to_the_schema():
    import os

    from hydra import compose, initialize_config_dir

    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base=None):
        cfg = compose(config_name="representation/nerf").representation
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, NeRFConfig) and typed == NeRFConfig(_target_="rewardsds.representations.nerf.NeRF")
    cfg.num_samples_per_ray = 16
    cfg.n_levels = 2
    rep = build(OmegaConf.to_object(cfg))
    assert isinstance(rep, NeRF) and rep.cfg.num_samples_per_ray == 16
