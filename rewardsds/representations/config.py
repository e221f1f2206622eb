"""Config schemas of the scene representations (``conf/representation/*.yaml``), beside their classes. Torch-free.

Each schema is the one home of its settings: defaults here, every check in ``__post_init__`` (naming the key, the
value and the fix), choices turned into their Enum and schedules into :class:`Schedule` there too. The classes take
the validated schema object (``NeRF(cfg)``) and read ``cfg.<field>``; they do not check again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import MISSING

from rewardsds.errors import ConfigError, check_betas, check_seed
from rewardsds.schedules import Schedule
from rewardsds.schema import check, enum_option


class ExportFormat(str, Enum):
    all = "all"  # every format of the representation (none for 2D runs)
    mesh = "mesh"  # NeRF: mesh.ply + mesh.obj, marching cubes with albedo vertex colours
    textured = "textured"  # NeRF: mesh_textured.obj/.mtl/.png + mesh.glb, xatlas UVs and a baked texture
    gaussians = "gaussians"  # Gaussians: gaussians.ply in the 3DGS layout


@dataclass
class RepresentationConfig:
    _target_: str = MISSING


def _schedule(value: Any, key: str) -> Schedule:
    """``value`` as a :class:`Schedule` (a number is a constant; a mapping names its fields)."""
    try:
        return Schedule.from_any(value)
    except TypeError:
        raise ConfigError(key, value, "is not a schedule",
                          "give a number or {start: ..., end: ..., start_step: ..., end_step: ...}") from None


def _check_weights(prefix: str, schedules: dict[str, Schedule]) -> None:
    for key, sched in schedules.items():
        for v in (sched.start, sched.end):
            check(v is None or v >= 0, f"{prefix}.{key}", v, "must be >= 0 (a regulariser weight)", "use 0 (off) or a positive weight")


# ----------------------------------------------------------------------------------------- latent image
class LatentInit(str, Enum):
    randn = "randn"  # N(0, init_std^2) per element
    zeros = "zeros"
    image = "image"  # init_image encoded with the prior's VAE (posterior mean)


@dataclass
class LatentImageConfig(RepresentationConfig):
    """The 2D case: the prior-space latent itself is the parameter, optimised with AdamW as the 2D reference."""

    init: LatentInit = LatentInit.randn
    init_image: Optional[str] = None  # RGB file for init=image (PNG/JPEG; centre-cropped to a square and resized)
    init_std: float = 1.0  # std of the randn init
    lr: float = 0.01  # AdamW, as the 2D reference
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
    weight_decay: float = 0.0  # the reference's torch default 0.01 shrinks the latent; set 0.01 to match it
    batch_size: int = 1  # independent images optimised side by side (particles)

    def __post_init__(self) -> None:
        self.init = enum_option(LatentInit, self.init, "representation.init")
        check(self.init is not LatentInit.image or bool(self.init_image), "representation.init_image", self.init_image,
              "is required when representation.init=image", "set representation.init_image=/path/to/image.png")
        check(self.init_std >= 0, "representation.init_std", self.init_std, "must be >= 0 (std of the randn init)", "use 1.0")
        check(self.lr > 0, "representation.lr", self.lr, "must be > 0", "use e.g. 0.01")
        check_betas(check, "representation.betas", self.betas, "use [0.9, 0.99]")
        check(self.eps > 0, "representation.eps", self.eps, "must be > 0", "use 1e-15")
        check(self.weight_decay >= 0, "representation.weight_decay", self.weight_decay, "must be >= 0", "use 0")
        check(self.batch_size >= 1, "representation.batch_size", self.batch_size, "must be >= 1", "use 1")


# ----------------------------------------------------------------------------------------- NeRF
class GridEncodingType(str, Enum):
    hash = "hash"  # Instant-NGP hash grid (threestudio default): Triton kernels on CUDA, PyTorch on the CPU
    dense = "dense"  # multi-resolution dense volumes (grid_sample)
    triplane = "triplane"  # multi-resolution triplanes (grid_sample); fastest measured on the CPU


class HashBackend(str, Enum):
    auto = "auto"  # Triton kernels for CUDA tensors, the PyTorch gathers on the CPU
    triton = "triton"  # Triton kernels (CUDA tensors only)
    torch = "torch"  # the PyTorch gathers everywhere (the reference; slower, far more memory on CUDA)


class DensityActivation(str, Enum):
    softplus = "softplus"
    exp = "exp"


class DensityBias(str, Enum):
    blob_magic3d = "blob_magic3d"  # scale * (1 - |x| / std): + 10 (1 - |x| / 0.5) before the activation (Magic3D)
    blob_dreamfusion = "blob_dreamfusion"  # scale * exp(-|x|^2 / (2 std^2))
    none = "none"


class NeRFEstimator(str, Enum):
    auto = "auto"  # occupancy grid on CUDA, uniform samples on the CPU
    occgrid = "occgrid"  # nerfacc OccGridEstimator (CUDA only)
    uniform = "uniform"  # num_samples_per_ray evenly spaced samples in the scene box


class NeRFBackground(str, Enum):
    neural = "neural"  # MLP on the view direction (threestudio neural environment map)
    solid = "solid"  # background_color


class MLPDType(str, Enum):
    fp32 = "fp32"  # fp32 matmuls
    bf16 = "bf16"  # bf16 matmuls (autocast; fp32 weights and optimizer): threestudio's tcnn MLPs run in half precision
    auto = "auto"  # bf16 for CUDA renders of >= 65536 rays (256 px x 4 views), else fp32 (nerf.auto_bf16_mlps)


class NormalType(str, Enum):
    none = "none"
    analytic = "analytic"  # -grad(density) by autograd
    finite_difference = "finite_difference"  # central differences of the density


class ShadingType(str, Enum):
    none = "none"  # colour = albedo
    diffuse = "diffuse"  # threestudio diffuse-with-point-light: albedo / textureless / lambertian (needs normals)


#: Level count, features per level, coarsest resolution and growth per level of each encoding, used where the
#: settings leave them null. hash: threestudio's implicit-volume grid (the RewardSDS 3D reference, 16 -> 4096);
#: dense: 16 -> 256 volumes; triplane: 32 -> 546 planes.
ENCODING_DEFAULTS = {
    GridEncodingType.hash: {"n_levels": 16, "n_features_per_level": 2, "base_resolution": 16, "per_level_scale": 1.447269237440378},
    GridEncodingType.dense: {"n_levels": 8, "n_features_per_level": 4, "base_resolution": 16, "per_level_scale": 1.4859},
    GridEncodingType.triplane: {"n_levels": 8, "n_features_per_level": 4, "base_resolution": 32, "per_level_scale": 1.5},
}


def encoding_sizes(cfg: "NeRFConfig") -> dict[str, Any]:
    """``n_levels``, ``n_features_per_level``, ``base_resolution``, ``per_level_scale`` of ``cfg``, each null one
    replaced by the encoding's default (:data:`ENCODING_DEFAULTS`)."""
    defaults = ENCODING_DEFAULTS[GridEncodingType(cfg.encoding)]
    return {k: d if getattr(cfg, k) is None else getattr(cfg, k) for k, d in defaults.items()}


def max_samples_per_ray(num_samples_per_ray: int) -> int:
    """The most samples one ray can get (``n`` = ``num_samples_per_ray``): ``n + 1`` bounds both estimators.

    Uniform sampling takes exactly ``n``. The occupancy-grid step is ``1.732 * 2 * radius / n``, so a ray through
    the box diagonal (the longest chord, ``2 sqrt(3) radius``) takes at most ``n`` whole steps and one partial step.
    """
    return int(num_samples_per_ray) + 1


@dataclass
class NeRFConfig(RepresentationConfig):
    """Grid-encoded NeRF rendered with nerfacc (threestudio implicit-volume + nerf-volume-renderer).

    Encoding: ``hash`` is the paper's (threestudio's tiny-cuda-nn grid: 16 levels x 2 features, 2^19 rows per level,
    16 -> 4096), computed by Triton kernels on CUDA and by PyTorch gathers on the CPU; the paper's experiments
    (mvdream_nerf, dreamfusion_nerf) select it. ``triplane`` (the default) is the fastest on the CPU: forward +
    backward of 65k / 262k points on a 2-thread Xeon took triplane 0.73 / 1.03 s, dense 0.93 / 2.05 s, hash
    (PyTorch) 2.10 / 8.17 s (scripts/bench_grid_encoding.py).
    """

    radius: float = 1.0  # scene box [-radius, radius]^3
    encoding: GridEncodingType = GridEncodingType.triplane
    # Grid sizes; null: the encoding's default (ENCODING_DEFAULTS): hash 16 / 2 / 16 / 1.447269237440378 (16 -> 4096),
    # dense 8 / 4 / 16 / 1.4859 (16 -> 256), triplane 8 / 4 / 32 / 1.5 (32 -> 546)
    n_levels: Optional[int] = None
    n_features_per_level: Optional[int] = None
    log2_hashmap_size: int = 19  # hash only: 2^19 rows per level
    base_resolution: Optional[int] = None
    per_level_scale: Optional[float] = None
    hash_backend: HashBackend = HashBackend.auto  # hash only
    # coarse-to-fine: resolution of the finest active level, e.g. {start: 64, end: 546, start_step: 0, end_step: 5000};
    # null = every level from the start
    grid_resolution: Optional[Schedule] = None
    hidden_dim: int = 64  # density and colour MLPs (bias-free, ReLU): threestudio VanillaMLP
    hidden_layers: int = 1
    mlp_dtype: MLPDType = MLPDType.fp32  # bf16: bf16 matmuls, fp32 weights; encoding and rendering stay fp32; auto: bf16 for large CUDA renders
    density_activation: DensityActivation = DensityActivation.softplus
    density_bias: DensityBias = DensityBias.blob_magic3d
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    estimator: NeRFEstimator = NeRFEstimator.auto
    num_samples_per_ray: int = 512  # occgrid: step 1.732 * 2 * radius / n; uniform: samples per ray
    occ_grid_resolution: int = 32
    occ_update_every: int = 16
    occ_threshold: float = 0.01
    occ_ema_decay: float = 0.95
    occ_warmup_steps: int = 256
    alpha_threshold: float = 0.01
    stratified: bool = True
    background: NeRFBackground = NeRFBackground.neural
    background_color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    random_background_prob: float = 0.5  # a random solid colour per batch in training (threestudio random_aug)
    normal: NormalType = NormalType.none
    finite_difference_eps: float = 0.01
    shading: ShadingType = ShadingType.none
    ambient_only_steps: int = 1000
    diffuse_prob: float = 0.75
    textureless_prob: float = 0.5
    ambient_light: float = 0.1
    diffuse_light: float = 0.9
    soft_shading: bool = False
    lambda_sparsity: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    lambda_opaque: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    lambda_orient: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    lambda_z_variance: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    lr_encoding: float = 0.01  # AdamW groups of the reference: grid 1e-2, MLPs and background 1e-3
    lr_network: float = 0.001
    lr_background: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
    weight_decay: float = 0.0  # the reference (threestudio AdamW, no weight_decay given) gets torch's 0.01: set 0.01 to match
    mesh_resolution: int = 256  # marching-cubes grid points per axis of the exported meshes
    mesh_threshold: float = 25.0  # density level of the exported surface (threestudio isosurface_threshold)
    texture_size: int = 1024  # texels per side of the baked texture (mesh_textured.obj, mesh.glb)
    eval_chunk_samples: int = 262144  # evaluation renders: most ray samples (rays x samples per ray) at once; bounds memory
    seed: int = 0  # render randomness (jitter, backgrounds, shading); the YAML takes the run's seed

    def __post_init__(self) -> None:
        for key, enum_cls in (
            ("encoding", GridEncodingType), ("hash_backend", HashBackend), ("mlp_dtype", MLPDType), ("density_activation", DensityActivation),
            ("density_bias", DensityBias), ("estimator", NeRFEstimator), ("background", NeRFBackground),
            ("normal", NormalType), ("shading", ShadingType),
        ):
            setattr(self, key, enum_option(enum_cls, getattr(self, key), f"representation.{key}"))
        for key in ("lambda_sparsity", "lambda_opaque", "lambda_orient", "lambda_z_variance"):
            setattr(self, key, _schedule(getattr(self, key), f"representation.{key}"))
        if self.grid_resolution is not None:
            self.grid_resolution = _schedule(self.grid_resolution, "representation.grid_resolution")
        self._check()

    def _check(self) -> None:
        check(self.radius > 0, "representation.radius", self.radius, "must be > 0 (half the side of the scene box)", "use e.g. 1.0")
        z = encoding_sizes(self)
        check(z["n_levels"] >= 1, "representation.n_levels", z["n_levels"], "must be >= 1",
              "use 16 (hash) or 8 (dense/triplane), or null for the encoding's default")
        check(z["n_features_per_level"] >= 1, "representation.n_features_per_level", z["n_features_per_level"], "must be >= 1",
              "use 2 (hash) or 4, or null for the encoding's default")
        check(10 <= self.log2_hashmap_size <= 24, "representation.log2_hashmap_size", self.log2_hashmap_size, "must be in [10, 24]",
              "use 19")
        check(z["base_resolution"] >= 2, "representation.base_resolution", z["base_resolution"], "must be >= 2",
              "use 16 (hash/dense) or 32 (triplane), or null for the encoding's default")
        check(z["per_level_scale"] >= 1.0, "representation.per_level_scale", z["per_level_scale"], "must be >= 1",
              "use e.g. 1.447 (hash) or 1.5, or null for the encoding's default")
        if self.encoding is GridEncodingType.dense:
            finest = z["base_resolution"] * z["per_level_scale"] ** (z["n_levels"] - 1)
            check(finest <= 512, "representation.per_level_scale", z["per_level_scale"],
                  f"makes the finest dense level {finest:.0f}^3 cells, too large for memory",
                  "keep base_resolution * per_level_scale^(n_levels-1) <= 512, or use encoding=hash/triplane")
        check(self.hidden_dim >= 1, "representation.hidden_dim", self.hidden_dim, "must be >= 1", "use 64")
        check(self.hidden_layers >= 1, "representation.hidden_layers", self.hidden_layers, "must be >= 1", "use 1")
        check(self.density_blob_std > 0, "representation.density_blob_std", self.density_blob_std, "must be > 0", "use 0.5 (Magic3D)")
        check(self.num_samples_per_ray >= 1, "representation.num_samples_per_ray", self.num_samples_per_ray, "must be >= 1",
              "use 512 (occgrid) or 64 (uniform)")
        check(self.occ_grid_resolution >= 4, "representation.occ_grid_resolution", self.occ_grid_resolution, "must be >= 4", "use 32")
        check(self.occ_update_every >= 1, "representation.occ_update_every", self.occ_update_every, "must be >= 1", "use 16")
        check(0 <= self.occ_ema_decay < 1, "representation.occ_ema_decay", self.occ_ema_decay, "must be in [0, 1)", "use 0.95")
        check(0 <= self.alpha_threshold < 1, "representation.alpha_threshold", self.alpha_threshold, "must be in [0, 1)", "use 0.01")
        check(len(self.background_color) == 3, "representation.background_color", list(self.background_color), "needs 3 values",
              "use [1.0, 1.0, 1.0]")
        check(0 <= self.random_background_prob <= 1, "representation.random_background_prob", self.random_background_prob,
              "must be in [0, 1]", "use 0.5")
        check(self.finite_difference_eps > 0, "representation.finite_difference_eps", self.finite_difference_eps, "must be > 0",
              "use 0.01")
        check(self.shading is ShadingType.none or self.normal is not NormalType.none, "representation.normal", self.normal.value,
              "is none but representation.shading=diffuse needs normals", "set representation.normal=analytic")
        for key in ("diffuse_prob", "textureless_prob"):
            check(0 <= getattr(self, key) <= 1, f"representation.{key}", getattr(self, key), "must be in [0, 1]", "use 0.75 / 0.5")
        for key in ("lr_encoding", "lr_network", "lr_background"):
            check(getattr(self, key) > 0, f"representation.{key}", getattr(self, key), "must be > 0", "use 0.01 (encoding) or 0.001")
        check_betas(check, "representation.betas", self.betas, "use [0.9, 0.99]")
        check(self.eps > 0, "representation.eps", self.eps, "must be > 0", "use 1e-15")
        check(self.weight_decay >= 0, "representation.weight_decay", self.weight_decay, "must be >= 0", "use 0")
        check(self.density_blob_scale >= 0, "representation.density_blob_scale", self.density_blob_scale, "must be >= 0",
              "use 10 (Magic3D)")
        for key in ("occ_warmup_steps", "ambient_only_steps"):
            check(getattr(self, key) >= 0, f"representation.{key}", getattr(self, key), "must be >= 0 (a number of steps)",
                  "use the default")
        for key in ("ambient_light", "diffuse_light"):
            check(getattr(self, key) >= 0, f"representation.{key}", getattr(self, key), "must be >= 0",
                  "use 0.1 (ambient) and 0.9 (diffuse)")
        _check_weights("representation", {k: getattr(self, k) for k in
                                           ("lambda_sparsity", "lambda_opaque", "lambda_orient", "lambda_z_variance")})
        if self.grid_resolution is not None:
            for v in (self.grid_resolution.start, self.grid_resolution.end):
                check(v is None or v >= 1, "representation.grid_resolution", v, "must be >= 1 (cells of the finest active level)",
                      "use null (all levels)")
        check_seed(check, "representation.seed", self.seed)
        check(self.mesh_resolution >= 8, "representation.mesh_resolution", self.mesh_resolution, "must be >= 8", "use 256")
        check(16 <= self.texture_size <= 8192, "representation.texture_size", self.texture_size, "must be in [16, 8192]", "use 1024")
        per_ray = max_samples_per_ray(self.num_samples_per_ray)
        check(self.eval_chunk_samples >= per_ray, "representation.eval_chunk_samples", self.eval_chunk_samples,
              f"must hold the samples of at least one ray ({per_ray} with representation.num_samples_per_ray = "
              f"{self.num_samples_per_ray})", "use 262144")


# ----------------------------------------------------------------------------------------- Gaussians
class GaussianInit(str, Enum):
    sphere = "sphere"  # num_points uniform in a ball of radius init_radius
    ply = "ply"  # a 3DGS .ply (all parameters)
    points = "points"  # a point cloud .ply (x y z, optional red green blue)


class DensifyStrategy(str, Enum):
    default = "default"  # gsplat DefaultStrategy (3DGS clone / split / prune)
    mcmc = "mcmc"  # gsplat MCMCStrategy (3DGS as MCMC; CUDA only)
    none = "none"


class Rasterizer(str, Enum):
    auto = "auto"  # gsplat on CUDA, the dense PyTorch rasteriser on the CPU
    gsplat = "gsplat"  # CUDA only
    dense = "dense"  # the dense PyTorch rasteriser (rewardsds.representations._raster)


@dataclass
class GaussiansConfig(RepresentationConfig):
    """3D Gaussians rendered with gsplat, densified by gsplat's strategies; the usual 3DGS learning rates."""

    num_points: int = 4096  # init=sphere only (a .ply decides its own count)
    init: GaussianInit = GaussianInit.sphere
    init_path: Optional[str] = None  # the .ply of init=ply / init=points
    init_radius: float = 0.5
    init_opacity: float = 0.1
    init_color: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    init_scale: Optional[float] = None  # null: mean distance to the 3 nearest neighbours (3DGS)
    sh_degree: int = 0  # view-dependent colour bands (0..3); one more becomes active every sh_degree_interval steps
    sh_degree_interval: int = 1000
    scene_extent: float = 1.0  # scales the means learning rate and the strategy's 3D size thresholds
    # times scene_extent; a decay is e.g. {start: 1.6e-4, end: 1.6e-6, end_step: 10000}
    lr_means: Schedule = field(default_factory=lambda: Schedule(start=1.6e-4))
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 1.25e-4  # sh0 / 20
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-15
    strategy: DensifyStrategy = DensifyStrategy.default
    refine_start_step: int = 500
    refine_stop_step: int = 15000
    refine_every: int = 100
    reset_every: int = 3000  # opacity reset to 2 * prune_opacity (applied by the representation: gsplat 1.5 skips it)
    grow_grad2d: float = 2e-4
    grow_scale3d: float = 0.01
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1
    absgrad: bool = False
    cap_max: int = 1_000_000  # mcmc only
    noise_lr: float = 5e5  # mcmc only
    opacity_reg: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    scale_reg: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    rasterizer: Rasterizer = Rasterizer.auto
    background_color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    random_background_prob: float = 0.0
    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    seed: int = 0  # initial Gaussians and render randomness; the YAML takes the run's seed

    def __post_init__(self) -> None:
        for key, enum_cls in (("init", GaussianInit), ("strategy", DensifyStrategy), ("rasterizer", Rasterizer)):
            setattr(self, key, enum_option(enum_cls, getattr(self, key), f"representation.{key}"))
        for key in ("lr_means", "opacity_reg", "scale_reg"):
            setattr(self, key, _schedule(getattr(self, key), f"representation.{key}"))
        self._check()

    def _check(self) -> None:
        check(self.num_points >= 1, "representation.num_points", self.num_points, "must be >= 1", "use e.g. 4096")
        check(self.init is GaussianInit.sphere or bool(self.init_path), "representation.init_path", self.init_path,
              f"is required when representation.init={self.init.value}", "set representation.init_path=/path/to/points.ply")
        check(self.init_radius > 0, "representation.init_radius", self.init_radius, "must be > 0", "use e.g. 0.5")
        check(0 < self.init_opacity < 1, "representation.init_opacity", self.init_opacity, "must be in (0, 1)", "use 0.1")
        check(len(self.init_color) == 3 and all(0 <= c <= 1 for c in self.init_color), "representation.init_color",
              list(self.init_color), "needs 3 values in [0, 1]", "use [0.5, 0.5, 0.5]")
        check(self.init_scale is None or self.init_scale > 0, "representation.init_scale", self.init_scale, "must be > 0 or null",
              "use null (mean distance to the 3 nearest neighbours, as 3DGS)")
        check(0 <= self.sh_degree <= 3, "representation.sh_degree", self.sh_degree, "must be in [0, 3]",
              "use 0 (view-independent colour) to 3")
        check(self.sh_degree_interval >= 1, "representation.sh_degree_interval", self.sh_degree_interval, "must be >= 1", "use 1000")
        check(self.scene_extent > 0, "representation.scene_extent", self.scene_extent, "must be > 0",
              "use 1.0 for objects in the unit sphere")
        for key in ("lr_scales", "lr_quats", "lr_opacities", "lr_sh0", "lr_shN"):
            check(getattr(self, key) >= 0, f"representation.{key}", getattr(self, key), "must be >= 0", "use the 3DGS value")
        for v in (self.lr_means.start, self.lr_means.end):
            check(v is None or v >= 0, "representation.lr_means", v, "must be >= 0", "use 1.6e-4 (3DGS, times scene_extent)")
        check_betas(check, "representation.betas", self.betas, "use [0.9, 0.999]")
        check(self.eps > 0, "representation.eps", self.eps, "must be > 0", "use 1e-15")
        check(self.refine_start_step >= 0, "representation.refine_start_step", self.refine_start_step, "must be >= 0", "use 500")
        check(self.refine_stop_step >= self.refine_start_step, "representation.refine_stop_step", self.refine_stop_step,
              f"is before representation.refine_start_step = {self.refine_start_step}", "use 15000 (3DGS)")
        for key, fix in (("grow_grad2d", "use 2e-4"), ("grow_scale3d", "use 0.01"), ("prune_scale3d", "use 0.1")):
            check(getattr(self, key) > 0, f"representation.{key}", getattr(self, key), "must be > 0", fix)
        check(0 <= self.prune_opacity < 1, "representation.prune_opacity", self.prune_opacity, "must be in [0, 1)", "use 0.005")
        check(self.noise_lr >= 0, "representation.noise_lr", self.noise_lr, "must be >= 0", "use 5e5 (3DGS as MCMC)")
        _check_weights("representation", {"opacity_reg": self.opacity_reg, "scale_reg": self.scale_reg})
        check(self.refine_every >= 1, "representation.refine_every", self.refine_every, "must be >= 1", "use 100")
        check(self.reset_every >= 1, "representation.reset_every", self.reset_every, "must be >= 1", "use 3000")
        check(self.cap_max >= 1, "representation.cap_max", self.cap_max, "must be >= 1", "use e.g. 1000000")
        check(len(self.background_color) == 3, "representation.background_color", list(self.background_color), "needs 3 values",
              "use [1.0, 1.0, 1.0]")
        check(0 <= self.random_background_prob <= 1, "representation.random_background_prob", self.random_background_prob,
              "must be in [0, 1]", "use 0.5")
        check(0 < self.near_plane < self.far_plane, "representation.near_plane", self.near_plane,
              f"must be in (0, far_plane = {self.far_plane})", "use 0.01")
        check(self.eps2d >= 0, "representation.eps2d", self.eps2d, "must be >= 0", "use 0.3 (gsplat)")
        check_seed(check, "representation.seed", self.seed)
