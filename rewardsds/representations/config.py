"""Config schemas of the scene representations (``conf/representation/*.yaml``), beside their classes. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from omegaconf import MISSING

from rewardsds.errors import check_betas
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


@dataclass
class LatentImageConfig(RepresentationConfig):
    """The 2D case: the prior-space latent itself is the parameter."""

    init: str = "randn"  # randn | zeros | image
    init_image: Optional[str] = None  # path of an RGB image (init: image)
    init_std: float = 1.0
    lr: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
    weight_decay: float = 0.0
    batch_size: int = 1  # independent images optimised side by side (particles)

    def __post_init__(self) -> None:
        check(self.init in ("randn", "zeros", "image"), "representation.init", self.init, "is not a known init",
               "use randn, zeros or image")
        check(self.init != "image" or bool(self.init_image), "representation.init_image", self.init_image,
               "is required when representation.init=image", "set representation.init_image=/path/to/image.png")
        check(self.init_std >= 0, "representation.init_std", self.init_std, "must be >= 0 (std of the randn init)", "use 1.0")
        check(self.lr > 0, "representation.lr", self.lr, "must be > 0", "use e.g. 0.01")
        check_betas(check, "representation.betas", self.betas, "use [0.9, 0.99]")
        check(self.eps > 0, "representation.eps", self.eps, "must be > 0", "use 1e-15")
        check(self.weight_decay >= 0, "representation.weight_decay", self.weight_decay, "must be >= 0", "use 0")
        check(self.batch_size >= 1, "representation.batch_size", self.batch_size, "must be >= 1", "use 1")


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
    blob_magic3d = "blob_magic3d"  # scale * (1 - |x| / std)
    blob_dreamfusion = "blob_dreamfusion"  # scale * exp(-|x|^2 / (2 std^2))
    none = "none"


class NeRFEstimator(str, Enum):
    auto = "auto"  # occupancy grid on CUDA, uniform samples on the CPU
    occgrid = "occgrid"  # nerfacc OccGridEstimator (CUDA only)
    uniform = "uniform"  # num_samples_per_ray evenly spaced samples in the scene box


class NeRFBackground(str, Enum):
    neural = "neural"  # MLP on the view direction (threestudio neural environment map)
    solid = "solid"  # background_color


class NormalType(str, Enum):
    none = "none"
    analytic = "analytic"  # -grad(density) by autograd
    finite_difference = "finite_difference"  # central differences of the density


class ShadingType(str, Enum):
    none = "none"  # colour = albedo
    diffuse = "diffuse"  # threestudio diffuse-with-point-light: albedo / textureless / lambertian


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
    gsplat = "gsplat"
    dense = "dense"


@dataclass
class NeRFConfig(RepresentationConfig):
    """Grid-encoded NeRF rendered with nerfacc (threestudio implicit-volume + nerf-volume-renderer)."""

    radius: float = 1.0  # scene box [-radius, radius]^3
    encoding: GridEncodingType = GridEncodingType.triplane
    # null: the encoding's default (hash 16 / 2 / 16 / 1.447269237440378, dense 8 / 4 / 16 / 1.4859,
    # triplane 8 / 4 / 32 / 1.5; rewardsds.representations.nerf.ENCODING_DEFAULTS)
    n_levels: Optional[int] = None
    n_features_per_level: Optional[int] = None
    log2_hashmap_size: int = 19  # hash only
    base_resolution: Optional[int] = None
    per_level_scale: Optional[float] = None
    hash_backend: HashBackend = HashBackend.auto  # hash only
    grid_resolution: Optional[Schedule] = None  # coarse-to-fine: finest active level resolution; null = all
    hidden_dim: int = 64
    hidden_layers: int = 1
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
    random_background_prob: float = 0.5
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
    lr_encoding: float = 0.01
    lr_network: float = 0.001
    lr_background: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
    weight_decay: float = 0.0
    mesh_resolution: int = 256  # marching-cubes grid points per axis of the exported meshes
    mesh_threshold: float = 25.0  # density level of the exported surface
    texture_size: int = 1024  # texels per side of the baked texture (mesh_textured.obj, mesh.glb)
    eval_chunk_samples: int = 262144  # evaluation renders: most ray samples evaluated at once (bounds memory)
    seed: int = 0

    def __post_init__(self) -> None:
        from rewardsds.representations.nerf import check_nerf_settings

        for key, enum_cls in (
            ("encoding", GridEncodingType), ("hash_backend", HashBackend), ("density_activation", DensityActivation),
            ("density_bias", DensityBias),
            ("estimator", NeRFEstimator), ("background", NeRFBackground), ("normal", NormalType), ("shading", ShadingType),
        ):
            setattr(self, key, enum_option(enum_cls, getattr(self, key), f"representation.{key}"))
        check_nerf_settings(self)


@dataclass
class GaussiansConfig(RepresentationConfig):
    """3D Gaussians rendered with gsplat, densified by gsplat's strategies."""

    num_points: int = 4096  # init=sphere only (a .ply decides its own count)
    init: GaussianInit = GaussianInit.sphere
    init_path: Optional[str] = None
    init_radius: float = 0.5
    init_opacity: float = 0.1
    init_color: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    init_scale: Optional[float] = None  # null: mean distance to the 3 nearest neighbours (3DGS)
    sh_degree: int = 0
    sh_degree_interval: int = 1000
    scene_extent: float = 1.0
    lr_means: Schedule = field(default_factory=lambda: Schedule(start=1.6e-4))  # times scene_extent
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 1.25e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-15
    strategy: DensifyStrategy = DensifyStrategy.default
    refine_start_step: int = 500
    refine_stop_step: int = 15000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 2e-4
    grow_scale3d: float = 0.01
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1
    absgrad: bool = False
    cap_max: int = 1_000_000
    noise_lr: float = 5e5
    opacity_reg: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    scale_reg: Schedule = field(default_factory=lambda: Schedule(start=0.0))
    rasterizer: Rasterizer = Rasterizer.auto
    background_color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    random_background_prob: float = 0.0
    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        from rewardsds.representations.gaussians import check_gaussians_settings

        for key, enum_cls in (("init", GaussianInit), ("strategy", DensifyStrategy), ("rasterizer", Rasterizer)):
            setattr(self, key, enum_option(enum_cls, getattr(self, key), f"representation.{key}"))
        check_gaussians_settings(self)
