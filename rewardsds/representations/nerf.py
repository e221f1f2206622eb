"""A NeRF for text-to-3D score distillation: grid-encoded density + colour field rendered with nerfacc.

The field follows threestudio's ``implicit-volume`` (as used by the RewardSDS 3D reference): a
multi-resolution grid encoding of the point, two small MLPs for raw density and colour features, a
Magic3D density blob added before a softplus (``sigma = softplus(h(x) + 10 (1 - |x| / 0.5))``) so that
optimisation starts from a soft ball at the origin, and a background that is either a small MLP on the
view direction (neural environment map) or a solid colour, randomly replaced by a solid random colour
with probability ``random_background_prob`` during training (threestudio ``random_aug``). The MLPs run in fp32
or, with ``mlp_dtype: bf16``, with bf16 matmuls (threestudio's tiny-cuda-nn MLPs run in half precision), which
also halves their saved activations; the encoding and the volume rendering stay fp32. ``mlp_dtype: auto`` (the
paper experiments) uses bf16 for CUDA renders large enough to gain from it (:func:`auto_bf16_mlps`).

Rendering:

- On CUDA with ``estimator: occgrid`` (or ``auto``), rays are marched through nerfacc's
  ``OccGridEstimator`` (step ``1.732 * 2 * radius / num_samples_per_ray``, empty space and
  transparent samples skipped, packed samples), exactly the threestudio NeRF renderer.
- Elsewhere (``estimator: uniform``, or ``auto`` on the CPU) each ray gets ``num_samples_per_ray``
  evenly spaced samples inside the scene box and the same compositing runs on [rays, samples]
  tensors (nerfacc's ``render_weight_from_density`` and ``accumulate_along_rays`` are plain PyTorch in
  that layout).

Optional shading (``shading: diffuse``) uses normals from the density gradient (``normal: analytic``
or central finite differences) and threestudio's diffuse-with-point-light material: albedo only for
the first ``ambient_only_steps``, then per batch albedo / textureless / diffuse renders.

Render outputs (``b`` views, H x W from the cameras): ``rgb`` [b,3,H,W] in [0,1], ``opacity``
[b,1,H,W], ``depth`` [b,1,H,W] (expected distance along the ray over the visible part), ``normal``
[b,3,H,W] (opacity-weighted world normals, present when normals are computed: shaded training and
every evaluation render), plus the regulariser inputs ``orient`` (scalar) and ``z_variance``
[b,1,H,W] when their weights are active.

Export (:meth:`NeRF.export`): the density iso-surface at ``mesh_threshold`` on a ``mesh_resolution^3``
grid by marching cubes (scikit-image, :func:`rewardsds.representations._mesh.marching_cubes`), in the
z-up world coordinates of the scene box, as

- ``mesh``: ``mesh.ply`` and ``mesh.obj`` with per-vertex albedo colours;
- ``textured``: ``mesh_textured.obj`` + ``.mtl`` + ``.png`` and ``mesh.glb`` (y-up, texture embedded), UV
  charts by xatlas and a ``texture_size^2`` texture baked from the albedo field at each texel's 3D point.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Collection, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.cameras import Cameras
from rewardsds.errors import ConfigError
from rewardsds.representations._grid import DenseGridEncoding, GridEncoding, HashGridEncoding, TriplaneEncoding
from rewardsds.representations._mesh import marching_cubes
from rewardsds.representations.base import ExportOptions, Representation
from rewardsds.representations.config import (DensityActivation, DensityBias, GridEncodingType, MLPDType, NeRFBackground, NeRFConfig,
                                               NeRFEstimator, NormalType, ShadingType, encoding_sizes, max_samples_per_ray)
from rewardsds.rng import Streams, seed_for

log = logging.getLogger(__name__)


def ray_chunks(n_rays: int, samples_per_ray: int, max_samples: int) -> list[tuple[int, int]]:
    """Split ``n_rays`` into consecutive ``(start, end)`` ranges of at most ``max_samples // samples_per_ray`` rays.

    Rendering memory grows with the samples evaluated at once (field, normals and their autograd graph per
    sample), not with the rays, so evaluation renders are chunked by samples: each chunk holds at most
    ``max_samples`` samples whatever the resolution and ``num_samples_per_ray``.

    Args:
        n_rays: rays of the render (views x height x width).
        samples_per_ray: the most samples one ray can take (:func:`max_samples_per_ray`).
        max_samples: the bound per chunk (``representation.eval_chunk_samples``), >= ``samples_per_ray``.
    """
    per_chunk = max(1, int(max_samples) // max(1, int(samples_per_ray)))
    return [(s, min(s + per_chunk, n_rays)) for s in range(0, n_rays, per_chunk)]


# mlp_dtype=auto: bf16 MLPs for CUDA renders of at least this many rays. Measured on an H200 (4 views, Triton hash
# grid, scripts/bench_grid_encoding.py): at 256 px (262144 rays) bf16 halves the memory (7.3 against 13.9 GB) and
# takes 72 against 84 ms; at 64 px (16384 rays) autocast's casts cost more than they save (16-18 against 12 ms).
AUTO_BF16_MIN_RAYS = 65536


def auto_bf16_mlps(device: torch.device, n_rays: int) -> bool:
    """What ``mlp_dtype=auto`` picks for a render of ``n_rays`` rays on ``device``: bf16 on CUDA from
    :data:`AUTO_BF16_MIN_RAYS` rays up, fp32 otherwise (always fp32 on the CPU, where bf16 matmuls are slower)."""
    return torch.device(device).type == "cuda" and n_rays >= AUTO_BF16_MIN_RAYS


def _mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    """threestudio's VanillaMLP: bias-free linear layers with ReLU in between."""
    mods: list[nn.Module] = [nn.Linear(n_in, hidden, bias=False), nn.ReLU(inplace=True)]
    for _ in range(layers - 1):
        mods += [nn.Linear(hidden, hidden, bias=False), nn.ReLU(inplace=True)]
    mods.append(nn.Linear(hidden, n_out, bias=False))
    return nn.Sequential(*mods)


def sh_basis_deg3(d: Float[Tensor, "n 3"]) -> Float[Tensor, "n 9"]:
    """Real spherical-harmonic basis of bands l = 0..2 (9 values) at unit directions."""
    x, y, z = d.unbind(-1)
    return torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.4886025119029199 * y,
            0.4886025119029199 * z,
            -0.4886025119029199 * x,
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.31539156525252005 * (2.0 * z * z - x * x - y * y),
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (x * x - y * y),
        ],
        dim=-1,
    )


class EnvironmentBackground(nn.Module):
    """threestudio's neural environment map: sigmoid(MLP(SH_deg3(view direction)))."""

    def __init__(self, hidden: int = 16, layers: int = 2) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Linear(9, hidden), nn.ReLU(inplace=True)]
        for _ in range(layers - 1):
            mods += [nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
        mods.append(nn.Linear(hidden, 3))
        self.net = nn.Sequential(*mods)

    def forward(self, dirs: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
        return torch.sigmoid(self.net(sh_basis_deg3(dirs)).float())  # fp32 colours also under bf16 autocast


def ray_box_intersect(
    origins: Float[Tensor, "r 3"], dirs: Float[Tensor, "r 3"], radius: float
) -> tuple[Float[Tensor, "r"], Float[Tensor, "r"]]:
    """Entry/exit distances of rays through the box [-radius, radius]^3 (far <= near: miss)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-radius - origins) * inv
    t1 = (radius - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


class NeRF(Representation):
    """Grid-encoded NeRF rendered with nerfacc (occupancy grid on CUDA, uniform samples elsewhere).

    Args:
        cfg: the validated settings (:class:`rewardsds.representations.config.NeRFConfig`, which documents each);
            kept as ``self.cfg`` and read from there.
    """

    needs_cameras = True
    outputs_latents = False

    def __init__(self, cfg: NeRFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # occupancy-grid marching step: num_samples_per_ray steps cross the box diagonal (threestudio)
        self.render_step_size = 1.732 * 2.0 * cfg.radius / cfg.num_samples_per_ray
        self._notice_shown = False
        self._auto_bf16 = False  # mlp_dtype=auto: set for the length of a render (auto_bf16_mlps)
        self._occ_checked = False  # occ_ready read once (it lives on the device)

        z = encoding_sizes(cfg)
        sizes = (z["n_levels"], z["n_features_per_level"], z["base_resolution"], z["per_level_scale"])
        self.encoding: GridEncoding
        if cfg.encoding is GridEncodingType.hash:
            levels, features, base, growth = sizes
            self.encoding = HashGridEncoding(levels, features, cfg.log2_hashmap_size, base, growth, backend=cfg.hash_backend)
        elif cfg.encoding is GridEncodingType.dense:
            self.encoding = DenseGridEncoding(*sizes)
        else:
            self.encoding = TriplaneEncoding(*sizes)
        self.density_net = _mlp(self.encoding.n_output_dims, 1, cfg.hidden_dim, cfg.hidden_layers)
        self.feature_net = _mlp(self.encoding.n_output_dims, 3, cfg.hidden_dim, cfg.hidden_layers)
        self.background_net = EnvironmentBackground() if cfg.background is NeRFBackground.neural else None
        self.register_buffer("background_color", torch.tensor([float(c) for c in cfg.background_color]), persistent=False)

        self.estimator = None
        if cfg.estimator in (NeRFEstimator.auto, NeRFEstimator.occgrid):
            from nerfacc import OccGridEstimator

            r = cfg.radius
            self.estimator = OccGridEstimator(roi_aabb=[-r, -r, -r, r, r, r], resolution=cfg.occ_grid_resolution, levels=1)
        # Whether the occupancy grid has been filled once (saved, so a resumed run does not refill it).
        self.register_buffer("occ_ready", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ field
    def _max_grid_resolution(self, step: int) -> Optional[float]:
        return None if self.cfg.grid_resolution is None else self.cfg.grid_resolution.value(step)

    def _bias(self, x: Tensor) -> Tensor:
        if self.cfg.density_bias is DensityBias.blob_magic3d:
            return self.cfg.density_blob_scale * (1.0 - x.norm(dim=-1) / self.cfg.density_blob_std)
        if self.cfg.density_bias is DensityBias.blob_dreamfusion:
            return self.cfg.density_blob_scale * torch.exp(-0.5 * x.square().sum(-1) / self.cfg.density_blob_std**2)
        return torch.zeros_like(x[..., 0])

    def _activate(self, raw: Tensor) -> Tensor:
        if self.cfg.density_activation is DensityActivation.exp:
            return torch.exp(raw.clamp(max=15.0))
        return F.softplus(raw)

    def _encode(self, x: Tensor, step: int, second_order: Optional[bool] = None) -> Tensor:
        return self.encoding((x / self.cfg.radius + 1.0) * 0.5, self._max_grid_resolution(step), second_order)

    def _bf16_mlps(self, x: Tensor) -> bool:
        """Whether the MLPs run bf16 matmuls: ``mlp_dtype=bf16``, or ``auto`` inside a render that
        :func:`auto_bf16_mlps` picks (field queries outside a render, e.g. for export, stay fp32 with ``auto``)."""
        if self.cfg.mlp_dtype == MLPDType.auto:
            return self._auto_bf16
        return self.cfg.mlp_dtype == MLPDType.bf16

    def _mlp_input(self, enc: Tensor) -> Tensor:
        """The encoding as the MLPs read it: with bf16 MLPs one bf16 copy shared by both MLPs (autocast would cast
        it per MLP and keep both copies for the backward); the fp32 encoding is then not kept."""
        return enc.to(torch.bfloat16) if self._bf16_mlps(enc) else enc

    def _mlp(self, net: nn.Module, h: Tensor) -> Tensor:
        """``net(h)`` in fp32, or with ``mlp_dtype=bf16`` its matmuls in bf16 (autocast: the fp32 weights are cast
        per call and get fp32 gradients) and the output cast back to fp32."""
        if self._bf16_mlps(h):
            with torch.autocast(h.device.type, dtype=torch.bfloat16):
                return net(h).float()
        return net(h)

    def density(self, x: Float[Tensor, "n 3"], step: int = 10**9) -> Float[Tensor, "n"]:
        """Activated density at world points [N, 3] (the blob bias included)."""
        h = self._mlp(self.density_net, self._mlp_input(self._encode(x, step)))[..., 0]
        return self._activate(h + self._bias(x))

    def field(self, x: Float[Tensor, "n 3"], step: int, second_order: Optional[bool] = None) -> tuple[Tensor, Tensor]:
        """(density [N], albedo/colour in [0,1] [N, 3]) at world points (``second_order``: see the grid encodings)."""
        enc = self._mlp_input(self._encode(x, step, second_order))
        sigma = self._activate(self._mlp(self.density_net, enc)[..., 0] + self._bias(x))
        return sigma, torch.sigmoid(self._mlp(self.feature_net, enc))

    def _normals(self, x: Tensor, step: int, kind: NormalType) -> tuple[Tensor, Tensor, Tensor]:
        """(density, colour, outward unit normal = -grad density / |grad density|) at points."""
        if kind is NormalType.finite_difference:
            sigma, color = self.field(x, step)
            e = self.cfg.finite_difference_eps
            offsets = torch.eye(3, device=x.device, dtype=x.dtype) * e
            pts = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1).clamp(-self.cfg.radius, self.cfg.radius)
            d = self.density(pts.reshape(-1, 3), step).view(-1, 6)
            grad = (d[:, :3] - d[:, 3:]) / (2 * e)
        else:
            # the normals' own graph is kept (and differentiated again) only for a training loss on them
            create_graph = torch.is_grad_enabled() and self.training
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                sigma, color = self.field(xg, step, second_order=create_graph)
                (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=create_graph)
                # The loss's backward needs no gradient for these points: released, they drop it (and the hash
                # grid's kernels skip computing it).
                xg.requires_grad_(False)
        return sigma, color, F.normalize(-grad, dim=-1)

    # ------------------------------------------------------------------ rendering
    def _resolve_estimator(self, device: torch.device) -> NeRFEstimator:
        """The estimator ``auto`` stands for on ``device`` (occgrid on CUDA, uniform elsewhere)."""
        if self.cfg.estimator is NeRFEstimator.uniform:
            return NeRFEstimator.uniform
        if device.type == "cuda":
            return NeRFEstimator.occgrid
        if self.cfg.estimator is NeRFEstimator.occgrid:
            raise ConfigError(
                "representation.estimator", "occgrid",
                f"needs CUDA (nerfacc's occupancy-grid marching has no CPU kernel) but the NeRF is on {device}",
                "use representation.estimator=auto (uniform samples on the CPU) or run on a GPU",
            )
        if not self._notice_shown:
            log.info("NeRF on %s: occupancy-grid marching needs CUDA; rendering with %d uniform samples per ray.",
                     device, self.cfg.num_samples_per_ray)
            self._notice_shown = True
        return NeRFEstimator.uniform

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed_for(self.cfg.seed, step, Streams.AUX, 0x3D))

    @torch.no_grad()
    def update_occupancy(self, step: int, force: bool = False) -> None:
        """Refresh the occupancy grid from the density field (every ``occ_update_every`` steps)."""
        if self.estimator is None:
            return
        was_training = self.estimator.training
        self.estimator.train(True)  # nerfacc refuses updates in eval mode
        try:
            self.estimator.update_every_n_steps(
                step=step,
                occ_eval_fn=lambda x: self.density(x, step)[:, None] * self.render_step_size,
                occ_thre=self.cfg.occ_threshold,
                ema_decay=self.cfg.occ_ema_decay,
                warmup_steps=self.cfg.occ_warmup_steps,
                n=1 if force else self.cfg.occ_update_every,
            )
        finally:
            self.estimator.train(was_training)
        self.occ_ready.fill_(True)

    def _background(self, dirs: Tensor, gen: torch.Generator) -> Tensor:
        u, color = torch.rand(1, generator=gen).item(), torch.rand(3, generator=gen)
        if self.training and u < self.cfg.random_background_prob:
            # One random solid colour for the whole batch (threestudio random_aug, share_aug_bg).
            return color.to(dirs).expand(dirs.shape[0], 3)
        if self.background_net is not None:
            return self._mlp(self.background_net, dirs)
        return self.background_color.to(dirs).expand(dirs.shape[0], 3)

    def _shading_mode(self, step: int, gen: torch.Generator) -> tuple[str, float, float]:
        u1, u2, u3 = torch.rand(3, generator=gen).tolist()
        if self.cfg.shading is ShadingType.none or step < self.cfg.ambient_only_steps:
            return "albedo", 0.0, 0.0
        if self.training and self.cfg.soft_shading:
            diffuse = u3
            ambient = 1.0 - diffuse
        else:
            ambient, diffuse = self.cfg.ambient_light, self.cfg.diffuse_light
        if not self.training:
            return "diffuse", ambient, diffuse
        if u1 > self.cfg.diffuse_prob:
            return "albedo", ambient, diffuse
        return ("textureless" if u2 < self.cfg.textureless_prob else "diffuse"), ambient, diffuse

    def render(self, cameras: Optional[Cameras], step: int, outputs: Optional[Collection[str]] = None) -> dict[str, Tensor]:
        """Render the views of ``cameras`` at their resolution.

        Args:
            cameras: the views to render.
            step: the optimisation step (schedules, shading phase, render randomness).
            outputs: the outputs the caller uses (None: all). An evaluation render without ``normal`` skips the
                normals, most of its cost, unless the shading needs them.

        Returns:
            ``rgb`` [b,3,H,W] in [0,1], ``opacity`` [b,1,H,W], ``depth`` [b,1,H,W], and ``normal``
            [b,3,H,W] when normals are computed (see the module docstring).
        """
        if cameras is None:
            raise ValueError("the NeRF renders cameras: pass the sampled Cameras")
        device = self.density_net[0].weight.device
        cameras = cameras.to(device)
        mode = self._resolve_estimator(device)
        if mode is NeRFEstimator.occgrid and not self._occ_checked:
            if not bool(self.occ_ready):  # first render of a fresh run: fill the grid once
                self.update_occupancy(step, force=True)
            self._occ_checked = True
        gen = self._generator(step)
        b, H, W = len(cameras), cameras.height, cameras.width
        origins, dirs = cameras.rays()
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        n_rays = origins.shape[0]
        light = cameras.light_position if cameras.light_position is not None else cameras.position
        shading = self._shading_mode(step, gen)
        jitter = torch.rand(n_rays, generator=gen).to(device) if (self.training and self.cfg.stratified) else None
        background = self._background(dirs, gen)
        need_normals = (self.cfg.shading is not ShadingType.none and shading[0] != "albedo") or (
            not self.training and (outputs is None or "normal" in outputs))
        need_normals = need_normals or (self.training and self.cfg.normal is not NormalType.none and self.cfg.lambda_orient.value(step) > 0)
        want_zvar = self.training and self.cfg.lambda_z_variance.value(step) > 0

        if self.training:
            chunks = [(0, n_rays)]  # one graph for the backward pass
        else:
            chunks = ray_chunks(n_rays, max_samples_per_ray(self.cfg.num_samples_per_ray), self.cfg.eval_chunk_samples)
        self._auto_bf16 = auto_bf16_mlps(device, n_rays)  # one precision for every chunk of this render
        try:
            parts = [
                self._render_rays(
                    origins[s:e], dirs[s:e], light, (torch.arange(s, e, device=device) // (H * W)),
                    None if jitter is None else jitter[s:e], step, mode, shading, need_normals, want_zvar,
                )
                for s, e in chunks
            ]
        finally:
            self._auto_bf16 = False
        out = {k: torch.cat([p[k] for p in parts], 0) for k in parts[0] if k not in ("orient", "n_visible")}
        opacity = out["opacity"]
        rgb = out["rgb_fg"] + background * (1.0 - opacity)

        def img(x: Tensor) -> Tensor:
            return x.view(b, H, W, -1).permute(0, 3, 1, 2).contiguous()

        result = {"rgb": img(rgb), "opacity": img(opacity), "depth": img(out["depth"])}
        if "normal" in out:
            result["normal"] = img(out["normal"])
        if "z_variance" in out:
            result["z_variance"] = img(out["z_variance"])
        if "orient" in parts[0]:  # training renders are one chunk
            result["orient"] = parts[0]["orient"] / parts[0]["n_visible"].clamp_min(1)
        return result

    def _render_rays(
        self,
        origins: Tensor,
        dirs: Tensor,
        light: Tensor,
        view_index: Tensor,
        jitter: Optional[Tensor],
        step: int,
        mode: NeRFEstimator,
        shading: tuple[str, float, float],
        need_normals: bool,
        want_zvar: bool,
    ) -> dict[str, Tensor]:
        import nerfacc

        n_rays = origins.shape[0]
        device = origins.device
        if mode is NeRFEstimator.occgrid:
            def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_idx: Tensor) -> Tensor:
                p = origins[ray_idx] + dirs[ray_idx] * ((t_starts + t_ends) * 0.5)[:, None]
                return self.density(p, step)

            t_min = None if jitter is None else jitter * self.render_step_size
            ray_idx, t_starts, t_ends = self.estimator.sampling(
                origins, dirs, sigma_fn=sigma_fn, near_plane=0.0, t_min=t_min,
                render_step_size=self.render_step_size, alpha_thre=self.cfg.alpha_threshold,
                stratified=False, cone_angle=0.0, early_stop_eps=1e-4,
            )
            if ray_idx.numel() == 0:
                # Keep a (zero-weight) sample so that the loss stays connected to the field.
                ray_idx = torch.zeros(1, dtype=torch.long, device=device)
                t_starts = torch.zeros(1, device=device)
                t_ends = torch.zeros(1, device=device)
            ray_idx = ray_idx.long()
            batched = None
        else:
            S = self.cfg.num_samples_per_ray
            near, far = ray_box_intersect(origins, dirs, self.cfg.radius)
            length = (far - near).clamp_min(0.0)
            delta = length / S
            offset = torch.zeros(n_rays, 1, device=device) if jitter is None else jitter[:, None]
            t_starts2 = near[:, None] + delta[:, None] * (torch.arange(S, device=device)[None, :] + offset)
            t_ends2 = t_starts2 + delta[:, None]
            valid = ((t_starts2 + t_ends2) * 0.5 < far[:, None]).float()
            t_starts, t_ends = t_starts2.reshape(-1), t_ends2.reshape(-1)
            ray_idx = torch.arange(n_rays, device=device).repeat_interleave(S)
            batched = (n_rays, S, valid)

        mids = (t_starts + t_ends) * 0.5
        pts = origins[ray_idx] + dirs[ray_idx] * mids[:, None]
        if need_normals:
            kind = self.cfg.normal if self.cfg.normal is not NormalType.none else NormalType.analytic
            sigma, albedo, normal = self._normals(pts, step, kind)
        else:
            sigma, albedo = self.field(pts, step)
            normal = None

        kind, ambient, diffuse = shading
        if kind == "albedo" or normal is None:
            color = albedo
        else:
            lp = light[view_index][ray_idx]
            lambert = (normal * F.normalize(lp - pts, dim=-1)).sum(-1, keepdim=True).clamp_min(0.0) * diffuse
            textureless = lambert + ambient
            color = textureless.expand(-1, 3) if kind == "textureless" else albedo.clamp(0.0, 1.0) * textureless

        if batched is None:
            weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma, ray_indices=ray_idx, n_rays=n_rays)

            def acc(values: Optional[Tensor]) -> Tensor:
                return nerfacc.accumulate_along_rays(weights, values, ray_indices=ray_idx, n_rays=n_rays)
        else:
            R, S, valid = batched
            sigma2 = sigma.view(R, S) * valid
            weights2, _, _ = nerfacc.render_weight_from_density(t_starts.view(R, S), t_ends.view(R, S), sigma2)
            weights = weights2.reshape(-1)

            def acc(values: Optional[Tensor]) -> Tensor:
                v = None if values is None else values.view(R, S, -1)
                return nerfacc.accumulate_along_rays(weights2, v)

        opacity = acc(None)
        out = {"rgb_fg": acc(color), "opacity": opacity}
        depth_sum = acc(mids[:, None])
        out["depth"] = depth_sum / opacity.clamp_min(1e-6)
        if normal is not None:
            out["normal"] = acc(normal)
            if self.training:
                # DreamFusion orientation penalty: visible normals must not face away from the camera.
                facing_away = (normal * dirs[ray_idx]).sum(-1).clamp_min(0.0) ** 2
                out["orient"] = (weights.detach() * facing_away).sum()
                out["n_visible"] = (opacity > 0).sum()
        if want_zvar:
            # HiFA z-variance: spread of the sample distances around the expected depth.
            z_mean = out["depth"][ray_idx, 0]
            out["z_variance"] = acc(((mids - z_mean) ** 2)[:, None]) / opacity.clamp_min(1e-5)
        return out

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups as the RewardSDS 3D reference: grid 1e-2, MLPs and background 1e-3."""
        common = {"betas": tuple(self.cfg.betas), "eps": self.cfg.eps, "weight_decay": self.cfg.weight_decay}
        groups = [
            {"params": list(self.encoding.parameters()), "lr": self.cfg.lr_encoding, "name": "nerf.encoding", **common},
            {"params": list(self.density_net.parameters()), "lr": self.cfg.lr_network, "name": "nerf.density", **common},
            {"params": list(self.feature_net.parameters()), "lr": self.cfg.lr_network, "name": "nerf.feature", **common},
        ]
        if self.background_net is not None:
            groups.append(
                {"params": list(self.background_net.parameters()), "lr": self.cfg.lr_background, "name": "nerf.background", **common}
            )
        return groups

    host_post_step = True

    def on_after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Refresh the occupancy grid for the next step (threestudio updates every 16 steps)."""
        device = self.density_net[0].weight.device
        if self.estimator is not None and self._resolve_estimator(device) is NeRFEstimator.occgrid:
            self.update_occupancy(step + 1)

    def regularizers(self, outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """threestudio's NeRF regularisers, each times its scheduled weight (only active ones)."""
        losses: dict[str, Tensor] = {}
        opacity = outputs["opacity"]
        lam = self.cfg.lambda_sparsity.value(step)
        if lam > 0:
            losses["loss_sparsity"] = lam * (opacity.square() + 0.01).sqrt().mean()
        lam = self.cfg.lambda_opaque.value(step)
        if lam > 0:
            o = opacity.clamp(1e-3, 1.0 - 1e-3)
            losses["loss_opaque"] = lam * F.binary_cross_entropy(o, o)
        lam = self.cfg.lambda_orient.value(step)
        if lam > 0:
            if "orient" not in outputs:
                raise ConfigError(
                    "representation.lambda_orient", lam, "needs normals but representation.normal=none",
                    "set representation.normal=analytic (or finite_difference)",
                )
            losses["loss_orient"] = lam * outputs["orient"]
        lam = self.cfg.lambda_z_variance.value(step)
        if lam > 0 and "z_variance" in outputs:
            zv = outputs["z_variance"][opacity > 0.5]
            losses["loss_z_variance"] = lam * (zv.mean() if zv.numel() else opacity.sum() * 0.0)
        return losses

    # ------------------------------------------------------------------ export
    export_formats = ("mesh", "textured")

    @torch.no_grad()
    def density_grid(self, resolution: Optional[int] = None, chunk: int = 262144, step: int = 10**9) -> Float[Tensor, "x y z"]:
        """Densities on a regular grid of ``resolution^3`` points spanning the scene box (on the CPU)."""
        res = self.cfg.mesh_resolution if resolution is None else int(resolution)
        device = self.density_net[0].weight.device
        g = torch.linspace(-self.cfg.radius, self.cfg.radius, res, device=device)
        pts = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), dim=-1).reshape(-1, 3)
        vals = torch.cat([self.density(pts[s : s + chunk], step) for s in range(0, pts.shape[0], chunk)])
        return vals.view(res, res, res).float().cpu()

    @torch.no_grad()
    def albedo(self, points: Float[Tensor, "n 3"], step: int = 10**9, chunk: int = 65536) -> Float[Tensor, "n 3"]:
        """Albedo colours in [0, 1] at world points (on the points' device), evaluated in chunks."""
        device = self.density_net[0].weight.device
        parts = [self.field(points[s : s + chunk].to(device), step)[1] for s in range(0, points.shape[0], chunk)]
        return torch.cat(parts).to(points.device) if parts else points.new_zeros(0, 3)

    @torch.no_grad()
    def extract_surface(
        self,
        resolution: Optional[int] = None,
        threshold: Optional[float] = None,
        step: int = 10**9,
        resolution_key: str = "representation.mesh_resolution",
        threshold_key: str = "representation.mesh_threshold",
    ) -> tuple[Float[Tensor, "v 3"], Tensor]:
        """The density iso-surface by marching cubes, closed and wound outward.

        Args:
            resolution: grid points per axis (default ``mesh_resolution``).
            threshold: density level (default ``mesh_threshold``, threestudio's 25).
            step: the step whose coarse-to-fine grid levels apply.
            resolution_key, threshold_key: names of the two settings in error messages.

        Returns:
            (vertices [V, 3] float32, faces [F, 3] int64) on the CPU, in world coordinates.
        """
        res = self.cfg.mesh_resolution if resolution is None else int(resolution)
        if res < 8:
            raise ConfigError(resolution_key, res, "must be >= 8 grid points per axis", f"use e.g. {resolution_key}=256")
        level = self.cfg.mesh_threshold if threshold is None else float(threshold)
        grid = self.density_grid(res, step=step)
        lo, hi = float(grid.min()), float(grid.max())
        if not lo < level < hi:
            raise ConfigError(
                threshold_key, level,
                f"is not crossed by the density field (its range on the {res}^3 grid is [{lo:.3g}, {hi:.3g}])",
                f"pick a level inside that range, e.g. {threshold_key}={0.5 * (lo + hi):.3g}",
            )
        r = self.cfg.radius
        return marching_cubes(grid, level, (-r, -r, -r), (r, r, r))

    @torch.no_grad()
    def extract_mesh(self, resolution: Optional[int] = None, threshold: Optional[float] = None, step: int = 10**9):
        """The density iso-surface (:meth:`extract_surface`) as a ``trimesh.Trimesh`` with per-vertex albedo colours."""
        return self._vertex_color_mesh(*self.extract_surface(resolution, threshold, step), step)

    def _vertex_color_mesh(self, verts: Tensor, faces: Tensor, step: int):
        import trimesh

        rgba = torch.cat([self.albedo(verts, step), torch.ones(verts.shape[0], 1)], dim=1)
        return trimesh.Trimesh(
            vertices=verts.numpy(), faces=faces.numpy(), vertex_colors=(rgba * 255).round().byte().numpy(), process=False
        )

    @torch.no_grad()
    def export(self, out_dir: Path, options: Optional[ExportOptions] = None) -> list[Path]:
        """Write the ``mesh`` and/or ``textured`` assets (module docstring) into ``out_dir``.

        Returns:
            the written paths, in the order mesh.ply, mesh.obj, mesh_textured.obj/.mtl/.png, mesh.glb.
        """
        from rewardsds.representations._texture import bake_texture, write_glb, write_textured_obj

        opts = options or ExportOptions()
        formats = self.export_formats if opts.formats is None else opts.formats
        size = self.cfg.texture_size if opts.texture_size is None else int(opts.texture_size)
        if not formats:
            return []
        if "textured" in formats and not 16 <= size <= 8192:
            raise ConfigError(opts.texture_key, size, "must be in [16, 8192] texels per side", f"use e.g. {opts.texture_key}=1024")
        out_dir = Path(out_dir)
        verts, faces = self.extract_surface(opts.mesh_resolution, opts.mesh_threshold, opts.step, opts.resolution_key,
                                            opts.threshold_key)
        paths: list[Path] = []
        if "mesh" in formats:
            mesh = self._vertex_color_mesh(verts, faces, opts.step)
            for name in ("mesh.ply", "mesh.obj"):
                mesh.export(out_dir / name)
                paths.append(out_dir / name)
        if "textured" in formats:
            device = self.density_net[0].weight.device
            textured = bake_texture(verts.to(device), faces.to(device), lambda p: self.albedo(p, opts.step), size)
            paths += write_textured_obj(out_dir, "mesh_textured", textured)
            paths.append(write_glb(out_dir / "mesh.glb", textured))
        return paths
