"""A NeRF for text-to-3D score distillation: grid-encoded density + colour field rendered with nerfacc.

The field follows threestudio's ``implicit-volume`` (as used by the RewardSDS 3D reference): a
multi-resolution grid encoding of the point, two small MLPs for raw density and colour features, a
Magic3D density blob added before a softplus (``sigma = softplus(h(x) + 10 (1 - |x| / 0.5))``) so that
optimisation starts from a soft ball at the origin, and a background that is either a small MLP on the
view direction (neural environment map) or a solid colour, randomly replaced by a solid random colour
with probability ``random_background_prob`` during training (threestudio ``random_aug``). The MLPs run in fp32
or, with ``mlp_dtype: bf16``, with bf16 matmuls (threestudio's tiny-cuda-nn MLPs run in half precision), which
also halves their saved activations; the encoding and the volume rendering stay fp32.

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
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.cameras import Cameras
from rewardsds.errors import ConfigError, check_choices, option_value, settings_checker
from rewardsds.representations._grid import HASH_BACKENDS, DenseGridEncoding, GridEncoding, HashGridEncoding, TriplaneEncoding
from rewardsds.representations._mesh import marching_cubes
from rewardsds.representations.base import ExportOptions, Representation
from rewardsds.schedules import Schedule, Streams, seed_for

log = logging.getLogger(__name__)

_CHOICES = {
    "encoding": ("hash", "dense", "triplane"),
    "hash_backend": HASH_BACKENDS,
    "mlp_dtype": ("fp32", "bf16"),
    "density_activation": ("softplus", "exp"),
    "density_bias": ("blob_magic3d", "blob_dreamfusion", "none"),
    "estimator": ("auto", "occgrid", "uniform"),
    "background": ("neural", "solid"),
    "normal": ("none", "analytic", "finite_difference"),
    "shading": ("none", "diffuse"),
}


# Level count, features per level, coarsest resolution and growth per encoding, used where the settings
# leave them null. hash: threestudio's implicit-volume grid (the RewardSDS 3D reference, 16 -> 4096);
# dense: 16 -> 256 volumes; triplane: 32 -> 546 planes.
ENCODING_DEFAULTS = {
    "hash": {"n_levels": 16, "n_features_per_level": 2, "base_resolution": 16, "per_level_scale": 1.447269237440378},
    "dense": {"n_levels": 8, "n_features_per_level": 4, "base_resolution": 16, "per_level_scale": 1.4859},
    "triplane": {"n_levels": 8, "n_features_per_level": 4, "base_resolution": 32, "per_level_scale": 1.5},
}


def encoding_sizes(s: Any) -> dict[str, Any]:
    """``n_levels``, ``n_features_per_level``, ``base_resolution``, ``per_level_scale`` of settings ``s``, each
    null one replaced by the encoding's default (:data:`ENCODING_DEFAULTS`)."""
    defaults = ENCODING_DEFAULTS[option_value(s.encoding)]
    return {k: d if getattr(s, k) is None else getattr(s, k) for k, d in defaults.items()}


def check_nerf_settings(s: Any, prefix: str = "representation") -> None:
    """Raise ConfigError for impossible NeRF settings (used by the schema and the constructor)."""

    check = settings_checker(prefix)
    check_choices(s, _CHOICES, check)
    check(s.radius > 0, "radius", s.radius, "must be > 0 (half the side of the scene box)", "use e.g. 1.0")
    z = encoding_sizes(s)
    check(z["n_levels"] >= 1, "n_levels", z["n_levels"], "must be >= 1",
          "use 16 (hash) or 8 (dense/triplane), or null for the encoding's default")
    check(z["n_features_per_level"] >= 1, "n_features_per_level", z["n_features_per_level"], "must be >= 1",
          "use 2 (hash) or 4, or null for the encoding's default")
    check(10 <= s.log2_hashmap_size <= 24, "log2_hashmap_size", s.log2_hashmap_size, "must be in [10, 24]", "use 19")
    check(z["base_resolution"] >= 2, "base_resolution", z["base_resolution"], "must be >= 2",
          "use 16 (hash/dense) or 32 (triplane), or null for the encoding's default")
    check(z["per_level_scale"] >= 1.0, "per_level_scale", z["per_level_scale"], "must be >= 1",
          "use e.g. 1.447 (hash) or 1.5, or null for the encoding's default")
    if option_value(s.encoding) == "dense":
        finest = z["base_resolution"] * z["per_level_scale"] ** (z["n_levels"] - 1)
        check(finest <= 512, "per_level_scale", z["per_level_scale"],
              f"makes the finest dense level {finest:.0f}^3 cells, too large for memory",
              "keep base_resolution * per_level_scale^(n_levels-1) <= 512, or use encoding=hash/triplane")
    check(s.hidden_dim >= 1, "hidden_dim", s.hidden_dim, "must be >= 1", "use 64")
    check(s.hidden_layers >= 1, "hidden_layers", s.hidden_layers, "must be >= 1", "use 1")
    check(s.density_blob_std > 0, "density_blob_std", s.density_blob_std, "must be > 0", "use 0.5 (Magic3D)")
    check(s.num_samples_per_ray >= 1, "num_samples_per_ray", s.num_samples_per_ray, "must be >= 1", "use 512 (occgrid) or 64 (uniform)")
    check(s.occ_grid_resolution >= 4, "occ_grid_resolution", s.occ_grid_resolution, "must be >= 4", "use 32")
    check(s.occ_update_every >= 1, "occ_update_every", s.occ_update_every, "must be >= 1", "use 16")
    check(0 <= s.occ_ema_decay < 1, "occ_ema_decay", s.occ_ema_decay, "must be in [0, 1)", "use 0.95")
    check(0 <= s.alpha_threshold < 1, "alpha_threshold", s.alpha_threshold, "must be in [0, 1)", "use 0.01")
    check(len(s.background_color) == 3, "background_color", list(s.background_color), "needs 3 values", "use [1.0, 1.0, 1.0]")
    check(0 <= s.random_background_prob <= 1, "random_background_prob", s.random_background_prob, "must be in [0, 1]", "use 0.5")
    check(s.finite_difference_eps > 0, "finite_difference_eps", s.finite_difference_eps, "must be > 0", "use 0.01")
    check(option_value(s.shading) == "none" or option_value(s.normal) != "none", "normal", option_value(s.normal),
          "is none but representation.shading=diffuse needs normals", "set representation.normal=analytic")
    for key in ("diffuse_prob", "textureless_prob"):
        check(0 <= getattr(s, key) <= 1, key, getattr(s, key), "must be in [0, 1]", "use 0.75 / 0.5")
    for key in ("lr_encoding", "lr_network", "lr_background"):
        check(getattr(s, key) > 0, key, getattr(s, key), "must be > 0", "use 0.01 (encoding) or 0.001")
    check(len(s.betas) == 2, "betas", list(s.betas), "needs two values", "use [0.9, 0.99]")
    check(s.mesh_resolution >= 8, "mesh_resolution", s.mesh_resolution, "must be >= 8", "use 256")
    check(16 <= s.texture_size <= 8192, "texture_size", s.texture_size, "must be in [16, 8192]", "use 1024")
    check(s.eval_chunk_rays >= 1, "eval_chunk_rays", s.eval_chunk_rays, "must be >= 1", "use 65536")


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

    Constructor arguments equal :class:`rewardsds.config.NeRFConfig`'s fields; see that schema and
    ``conf/representation/nerf.yaml`` for their meaning and defaults.
    """

    needs_cameras = True
    outputs_latents = False

    def __init__(
        self,
        radius: float = 1.0,
        encoding: Any = "triplane",
        n_levels: Optional[int] = None,
        n_features_per_level: Optional[int] = None,
        log2_hashmap_size: int = 19,
        base_resolution: Optional[int] = None,
        per_level_scale: Optional[float] = None,
        hash_backend: Any = "auto",
        grid_resolution: Any = None,
        hidden_dim: int = 64,
        hidden_layers: int = 1,
        mlp_dtype: Any = "fp32",
        density_activation: Any = "softplus",
        density_bias: Any = "blob_magic3d",
        density_blob_scale: float = 10.0,
        density_blob_std: float = 0.5,
        estimator: Any = "auto",
        num_samples_per_ray: int = 512,
        occ_grid_resolution: int = 32,
        occ_update_every: int = 16,
        occ_threshold: float = 0.01,
        occ_ema_decay: float = 0.95,
        occ_warmup_steps: int = 256,
        alpha_threshold: float = 0.01,
        stratified: bool = True,
        background: Any = "neural",
        background_color: Sequence[float] = (1.0, 1.0, 1.0),
        random_background_prob: float = 0.5,
        normal: Any = "none",
        finite_difference_eps: float = 0.01,
        shading: Any = "none",
        ambient_only_steps: int = 1000,
        diffuse_prob: float = 0.75,
        textureless_prob: float = 0.5,
        ambient_light: float = 0.1,
        diffuse_light: float = 0.9,
        soft_shading: bool = False,
        lambda_sparsity: Any = 0.0,
        lambda_opaque: Any = 0.0,
        lambda_orient: Any = 0.0,
        lambda_z_variance: Any = 0.0,
        lr_encoding: float = 0.01,
        lr_network: float = 0.001,
        lr_background: float = 0.001,
        betas: Sequence[float] = (0.9, 0.99),
        eps: float = 1e-15,
        weight_decay: float = 0.0,
        mesh_resolution: int = 256,
        mesh_threshold: float = 25.0,
        texture_size: int = 1024,
        eval_chunk_rays: int = 65536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        args = dict(locals())
        args.pop("self")
        args.pop("__class__", None)
        ns = type("NeRFSettings", (), args)
        check_nerf_settings(ns)
        self.radius = float(radius)
        self.encoding_type = option_value(encoding)
        self.grid_resolution = None if grid_resolution is None else Schedule.from_any(grid_resolution)
        self.mlp_dtype = option_value(mlp_dtype)
        self.density_activation = option_value(density_activation)
        self.density_bias = option_value(density_bias)
        self.density_blob_scale = float(density_blob_scale)
        self.density_blob_std = float(density_blob_std)
        self.estimator_type = option_value(estimator)
        self.num_samples_per_ray = int(num_samples_per_ray)
        self.render_step_size = 1.732 * 2.0 * self.radius / self.num_samples_per_ray
        self.occ_update_every = int(occ_update_every)
        self.occ_threshold = float(occ_threshold)
        self.occ_ema_decay = float(occ_ema_decay)
        self.occ_warmup_steps = int(occ_warmup_steps)
        self.alpha_threshold = float(alpha_threshold)
        self.stratified = bool(stratified)
        self.background_type = option_value(background)
        self.random_background_prob = float(random_background_prob)
        self.normal_type = option_value(normal)
        self.finite_difference_eps = float(finite_difference_eps)
        self.shading = option_value(shading)
        self.ambient_only_steps = int(ambient_only_steps)
        self.diffuse_prob = float(diffuse_prob)
        self.textureless_prob = float(textureless_prob)
        self.ambient_light = float(ambient_light)
        self.diffuse_light = float(diffuse_light)
        self.soft_shading = bool(soft_shading)
        self.lambda_sparsity = Schedule.from_any(lambda_sparsity)
        self.lambda_opaque = Schedule.from_any(lambda_opaque)
        self.lambda_orient = Schedule.from_any(lambda_orient)
        self.lambda_z_variance = Schedule.from_any(lambda_z_variance)
        self.lr_encoding, self.lr_network, self.lr_background = float(lr_encoding), float(lr_network), float(lr_background)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.mesh_resolution = int(mesh_resolution)
        self.mesh_threshold = float(mesh_threshold)
        self.texture_size = int(texture_size)
        self.eval_chunk_rays = int(eval_chunk_rays)
        self.seed = int(seed)
        self._notice_shown = False
        self._occ_checked = False  # occ_ready read once (it lives on the device)

        z = encoding_sizes(ns)
        sizes = (z["n_levels"], z["n_features_per_level"], z["base_resolution"], z["per_level_scale"])
        self.encoding: GridEncoding
        if self.encoding_type == "hash":
            levels, features, base, growth = sizes
            self.encoding = HashGridEncoding(levels, features, log2_hashmap_size, base, growth, backend=option_value(hash_backend))
        elif self.encoding_type == "dense":
            self.encoding = DenseGridEncoding(*sizes)
        else:
            self.encoding = TriplaneEncoding(*sizes)
        self.density_net = _mlp(self.encoding.n_output_dims, 1, hidden_dim, hidden_layers)
        self.feature_net = _mlp(self.encoding.n_output_dims, 3, hidden_dim, hidden_layers)
        self.background_net = EnvironmentBackground() if self.background_type == "neural" else None
        self.register_buffer("background_color", torch.tensor([float(c) for c in background_color]), persistent=False)

        self.estimator = None
        if self.estimator_type in ("auto", "occgrid"):
            from nerfacc import OccGridEstimator

            r = self.radius
            self.estimator = OccGridEstimator(roi_aabb=[-r, -r, -r, r, r, r], resolution=occ_grid_resolution, levels=1)
        # Whether the occupancy grid has been filled once (saved, so a resumed run does not refill it).
        self.register_buffer("occ_ready", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ field
    def _max_grid_resolution(self, step: int) -> Optional[float]:
        return None if self.grid_resolution is None else self.grid_resolution.value(step)

    def _bias(self, x: Tensor) -> Tensor:
        if self.density_bias == "blob_magic3d":
            return self.density_blob_scale * (1.0 - x.norm(dim=-1) / self.density_blob_std)
        if self.density_bias == "blob_dreamfusion":
            return self.density_blob_scale * torch.exp(-0.5 * x.square().sum(-1) / self.density_blob_std**2)
        return torch.zeros_like(x[..., 0])

    def _activate(self, raw: Tensor) -> Tensor:
        if self.density_activation == "exp":
            return torch.exp(raw.clamp(max=15.0))
        return F.softplus(raw)

    def _encode(self, x: Tensor, step: int) -> Tensor:
        return self.encoding((x / self.radius + 1.0) * 0.5, self._max_grid_resolution(step))

    def _mlp_input(self, enc: Tensor) -> Tensor:
        """The encoding as the MLPs read it: with ``mlp_dtype=bf16`` one bf16 copy shared by both MLPs (autocast
        would cast it per MLP and keep both copies for the backward); the fp32 encoding is then not kept."""
        return enc.to(torch.bfloat16) if self.mlp_dtype == "bf16" else enc

    def _mlp(self, net: nn.Module, h: Tensor) -> Tensor:
        """``net(h)`` in fp32, or with ``mlp_dtype=bf16`` its matmuls in bf16 (autocast: the fp32 weights are cast
        per call and get fp32 gradients) and the output cast back to fp32."""
        if self.mlp_dtype == "bf16":
            with torch.autocast(h.device.type, dtype=torch.bfloat16):
                return net(h).float()
        return net(h)

    def density(self, x: Float[Tensor, "n 3"], step: int = 10**9) -> Float[Tensor, "n"]:
        """Activated density at world points [N, 3] (the blob bias included)."""
        h = self._mlp(self.density_net, self._mlp_input(self._encode(x, step)))[..., 0]
        return self._activate(h + self._bias(x))

    def field(self, x: Float[Tensor, "n 3"], step: int) -> tuple[Tensor, Tensor]:
        """(density [N], albedo/colour in [0,1] [N, 3]) at world points."""
        enc = self._mlp_input(self._encode(x, step))
        sigma = self._activate(self._mlp(self.density_net, enc)[..., 0] + self._bias(x))
        return sigma, torch.sigmoid(self._mlp(self.feature_net, enc))

    def _normals(self, x: Tensor, step: int, kind: str) -> tuple[Tensor, Tensor, Tensor]:
        """(density, colour, outward unit normal = -grad density / |grad density|) at points."""
        if kind == "finite_difference":
            sigma, color = self.field(x, step)
            e = self.finite_difference_eps
            offsets = torch.eye(3, device=x.device, dtype=x.dtype) * e
            pts = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1).clamp(-self.radius, self.radius)
            d = self.density(pts.reshape(-1, 3), step).view(-1, 6)
            grad = (d[:, :3] - d[:, 3:]) / (2 * e)
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                sigma, color = self.field(xg, step)
                (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=torch.is_grad_enabled() and self.training)
                # The loss's backward needs no gradient for these points: released, they drop it (and the hash
                # grid's kernels skip computing it).
                xg.requires_grad_(False)
        return sigma, color, F.normalize(-grad, dim=-1)

    # ------------------------------------------------------------------ rendering
    def _resolve_estimator(self, device: torch.device) -> str:
        if self.estimator_type == "uniform":
            return "uniform"
        if device.type == "cuda":
            return "occgrid"
        if self.estimator_type == "occgrid":
            raise ConfigError(
                "representation.estimator", "occgrid",
                f"needs CUDA (nerfacc's occupancy-grid marching has no CPU kernel) but the NeRF is on {device}",
                "use representation.estimator=auto (uniform samples on the CPU) or run on a GPU",
            )
        if not self._notice_shown:
            log.info("NeRF on %s: occupancy-grid marching needs CUDA; rendering with %d uniform samples per ray.",
                     device, self.num_samples_per_ray)
            self._notice_shown = True
        return "uniform"

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed_for(self.seed, step, Streams.AUX, 0x3D))

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
                occ_thre=self.occ_threshold,
                ema_decay=self.occ_ema_decay,
                warmup_steps=self.occ_warmup_steps,
                n=1 if force else self.occ_update_every,
            )
        finally:
            self.estimator.train(was_training)
        self.occ_ready.fill_(True)

    def _background(self, dirs: Tensor, gen: torch.Generator) -> Tensor:
        u, color = torch.rand(1, generator=gen).item(), torch.rand(3, generator=gen)
        if self.training and u < self.random_background_prob:
            # One random solid colour for the whole batch (threestudio random_aug, share_aug_bg).
            return color.to(dirs).expand(dirs.shape[0], 3)
        if self.background_net is not None:
            return self._mlp(self.background_net, dirs)
        return self.background_color.to(dirs).expand(dirs.shape[0], 3)

    def _shading_mode(self, step: int, gen: torch.Generator) -> tuple[str, float, float]:
        u1, u2, u3 = torch.rand(3, generator=gen).tolist()
        if self.shading == "none" or step < self.ambient_only_steps:
            return "albedo", 0.0, 0.0
        if self.training and self.soft_shading:
            diffuse = u3
            ambient = 1.0 - diffuse
        else:
            ambient, diffuse = self.ambient_light, self.diffuse_light
        if not self.training:
            return "diffuse", ambient, diffuse
        if u1 > self.diffuse_prob:
            return "albedo", ambient, diffuse
        return ("textureless" if u2 < self.textureless_prob else "diffuse"), ambient, diffuse

    def render(self, cameras: Optional[Cameras], step: int) -> dict[str, Tensor]:
        """Render the views of ``cameras`` at their resolution.

        Returns:
            ``rgb`` [b,3,H,W] in [0,1], ``opacity`` [b,1,H,W], ``depth`` [b,1,H,W], and ``normal``
            [b,3,H,W] when normals are computed (see the module docstring).
        """
        if cameras is None:
            raise ValueError("the NeRF renders cameras: pass the sampled Cameras")
        device = self.density_net[0].weight.device
        cameras = cameras.to(device)
        mode = self._resolve_estimator(device)
        if mode == "occgrid" and not self._occ_checked:
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
        jitter = torch.rand(n_rays, generator=gen).to(device) if (self.training and self.stratified) else None
        background = self._background(dirs, gen)
        need_normals = (self.shading != "none" and shading[0] != "albedo") or not self.training
        need_normals = need_normals or (self.training and self.normal_type != "none" and self.lambda_orient.value(step) > 0)
        want_zvar = self.training and self.lambda_z_variance.value(step) > 0

        if self.training:
            chunks = [(0, n_rays)]
        else:
            c = self.eval_chunk_rays
            chunks = [(s, min(s + c, n_rays)) for s in range(0, n_rays, c)]
        parts = [
            self._render_rays(
                origins[s:e], dirs[s:e], light, (torch.arange(s, e, device=device) // (H * W)),
                None if jitter is None else jitter[s:e], step, mode, shading, need_normals, want_zvar,
            )
            for s, e in chunks
        ]
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
        mode: str,
        shading: tuple[str, float, float],
        need_normals: bool,
        want_zvar: bool,
    ) -> dict[str, Tensor]:
        import nerfacc

        n_rays = origins.shape[0]
        device = origins.device
        if mode == "occgrid":
            def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_idx: Tensor) -> Tensor:
                p = origins[ray_idx] + dirs[ray_idx] * ((t_starts + t_ends) * 0.5)[:, None]
                return self.density(p, step)

            t_min = None if jitter is None else jitter * self.render_step_size
            ray_idx, t_starts, t_ends = self.estimator.sampling(
                origins, dirs, sigma_fn=sigma_fn, near_plane=0.0, t_min=t_min,
                render_step_size=self.render_step_size, alpha_thre=self.alpha_threshold,
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
            S = self.num_samples_per_ray
            near, far = ray_box_intersect(origins, dirs, self.radius)
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
            kind = self.normal_type if self.normal_type != "none" else "analytic"
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
        common = {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}
        groups = [
            {"params": list(self.encoding.parameters()), "lr": self.lr_encoding, "name": "nerf.encoding", **common},
            {"params": list(self.density_net.parameters()), "lr": self.lr_network, "name": "nerf.density", **common},
            {"params": list(self.feature_net.parameters()), "lr": self.lr_network, "name": "nerf.feature", **common},
        ]
        if self.background_net is not None:
            groups.append(
                {"params": list(self.background_net.parameters()), "lr": self.lr_background, "name": "nerf.background", **common}
            )
        return groups

    host_post_step = True

    def on_after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Refresh the occupancy grid for the next step (threestudio updates every 16 steps)."""
        device = self.density_net[0].weight.device
        if self.estimator is not None and self._resolve_estimator(device) == "occgrid":
            self.update_occupancy(step + 1)

    def regularizers(self, outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """threestudio's NeRF regularisers, each times its scheduled weight (only active ones)."""
        losses: dict[str, Tensor] = {}
        opacity = outputs["opacity"]
        lam = self.lambda_sparsity.value(step)
        if lam > 0:
            losses["loss_sparsity"] = lam * (opacity.square() + 0.01).sqrt().mean()
        lam = self.lambda_opaque.value(step)
        if lam > 0:
            o = opacity.clamp(1e-3, 1.0 - 1e-3)
            losses["loss_opaque"] = lam * F.binary_cross_entropy(o, o)
        lam = self.lambda_orient.value(step)
        if lam > 0:
            if "orient" not in outputs:
                raise ConfigError(
                    "representation.lambda_orient", lam, "needs normals but representation.normal=none",
                    "set representation.normal=analytic (or finite_difference)",
                )
            losses["loss_orient"] = lam * outputs["orient"]
        lam = self.lambda_z_variance.value(step)
        if lam > 0 and "z_variance" in outputs:
            zv = outputs["z_variance"][opacity > 0.5]
            losses["loss_z_variance"] = lam * (zv.mean() if zv.numel() else opacity.sum() * 0.0)
        return losses

    # ------------------------------------------------------------------ export
    export_formats = ("mesh", "textured")

    @torch.no_grad()
    def density_grid(self, resolution: Optional[int] = None, chunk: int = 262144, step: int = 10**9) -> Float[Tensor, "x y z"]:
        """Densities on a regular grid of ``resolution^3`` points spanning the scene box (on the CPU)."""
        res = self.mesh_resolution if resolution is None else int(resolution)
        device = self.density_net[0].weight.device
        g = torch.linspace(-self.radius, self.radius, res, device=device)
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
        res = self.mesh_resolution if resolution is None else int(resolution)
        if res < 8:
            raise ConfigError(resolution_key, res, "must be >= 8 grid points per axis", f"use e.g. {resolution_key}=256")
        level = self.mesh_threshold if threshold is None else float(threshold)
        grid = self.density_grid(res, step=step)
        lo, hi = float(grid.min()), float(grid.max())
        if not lo < level < hi:
            raise ConfigError(
                threshold_key, level,
                f"is not crossed by the density field (its range on the {res}^3 grid is [{lo:.3g}, {hi:.3g}])",
                f"pick a level inside that range, e.g. {threshold_key}={0.5 * (lo + hi):.3g}",
            )
        r = self.radius
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
        size = self.texture_size if opts.texture_size is None else int(opts.texture_size)
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
