"""Structured config schemas for every Hydra group, registered with the ConfigStore.

Each option ``conf/<group>/<option>.yaml`` starts with ``defaults: [/schema/<group>/<option>@_here_, _self_]``
so the composed node is typed by the dataclass below: unknown keys and wrong types fail at compose
time, and :func:`validate` (``OmegaConf.to_object``) runs every ``__post_init__``, where cross-field
checks name the key, the value and the fix. ``_target_`` is the only registry: it names the class that
``hydra.utils.instantiate`` builds, with the remaining fields as keyword arguments.

Choices are ``str`` Enums (hydra-core 1.3 has no ``Literal`` support in schemas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rewardsds.errors import ConfigError
from rewardsds.schedules import Schedule


# ----------------------------------------------------------------------------------------- enums
class DType(str, Enum):
    auto = "auto"  # bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class LookaheadQuantize(str, Enum):
    none = "none"
    float8 = "float8"


class LookaheadGrid(str, Enum):
    leading = "leading"  # diffusers DDIM "leading" spacing + offset 1 (2D reference: 925, 859, ..., 1)
    linspace = "linspace"  # floor(linspace(0, T-1, S)) (3D reference: 999, 927, ..., 0)


class LookaheadStart(str, Enum):
    exact_t = "exact_t"  # first call at exactly t (reuses the shared prediction at t)
    grid = "grid"  # 2D reference: first call at the largest grid point <= t, no re-noising


class TimestepGrid(str, Enum):
    uniform = "uniform"  # t ~ U{floor(T t_min), ..., floor(T t_max)}
    reference_2d = "reference_2d"  # RewardSDS/SDS-Bridge 2D code: odd t in {21, ..., 979}


class ViewAggregation(str, Enum):
    mean = "mean"  # one reward per candidate, averaged over its views (3D reference)
    per_view = "per_view"  # weights per (candidate, view)


class SDSTarget(str, Enum):
    eps = "eps"  # g = w(t) (eps_hat - eps)
    x0_recon = "x0_recon"  # MVDream x0-reconstruction target with std rescale


class SDSWeighting(str, Enum):
    sds = "sds"  # w(t) = 1 - abar_t
    uniform = "uniform"  # w(t) = 1
    fantasia = "fantasia"  # w(t) = sqrt(abar_t) (1 - abar_t)


class ExportFormat(str, Enum):
    all = "all"  # every format of the representation (none for 2D runs)
    mesh = "mesh"  # NeRF: mesh.ply + mesh.obj, marching cubes with albedo vertex colours
    textured = "textured"  # NeRF: mesh_textured.obj/.mtl/.png + mesh.glb, xatlas UVs and a baked texture
    gaussians = "gaussians"  # Gaussians: gaussians.ply in the 3DGS layout


class MinMaxScale(str, Enum):
    mean = "mean"  # reference code: lambda_max * mean(top) - lambda_min * mean(bottom)
    paper = "paper"  # paper text: +lambda_max each top, -lambda_min each bottom, then / N


# ----------------------------------------------------------------------------------------- helpers
def _check(cond: bool, key: str, value: Any, problem: str, fix: str) -> None:
    if not cond:
        raise ConfigError(key, value, problem, fix)


def _enum(enum_cls, value, key: str):
    try:
        return enum_cls(value.value if isinstance(value, Enum) else value)
    except ValueError:
        options = ", ".join(e.value for e in enum_cls)
        raise ConfigError(key, value, "is not a known option", f"use one of: {options}") from None


# ----------------------------------------------------------------------------------------- priors
@dataclass
class PriorConfig:
    _target_: str = MISSING


@dataclass
class SDPriorConfig(PriorConfig):
    """Stable Diffusion family through diffusers (SD 1.x/2.x; v- or epsilon-prediction)."""

    _target_: str = "rewardsds.priors.sd.StableDiffusionPrior"
    pretrained: str = "stabilityai/stable-diffusion-2-1-base"
    revision: Optional[str] = None
    variant: Optional[str] = None  # e.g. "fp16" to download the half-precision files
    dtype: DType = DType.auto
    scheduler: str = "ddim"  # ddim | ddpm: only the noise schedule is read from it
    local_files_only: bool = False
    channels_last: bool = True
    # torch.compile the UNet: auto (on for CUDA, off on CPU) | true | false
    compile: Any = "auto"
    compile_mode: str = "reduce-overhead"  # CUDA graphs of the candidate batches | default | max-autotune | max-autotune-no-cudagraphs
    # where compiled kernels persist across runs and sweep jobs: auto ($TORCHINDUCTOR_CACHE_DIR or
    # ~/.cache/rewardsds/torchinductor) | torch (torch's default under /tmp) | a folder
    compile_cache: str = "auto"
    # none | float8: the lookahead's ranking calls use a float8 copy of the UNet's linear layers (torchao, CUDA >= 8.9)
    lookahead_quantize: LookaheadQuantize = LookaheadQuantize.none
    tiny_vae: Optional[str] = None  # a taesd-style AutoencoderTiny id/path for cheap lookahead decodes
    vae_slicing: bool = False
    encode_sample: bool = False  # encode renders with a posterior sample (threestudio) instead of the mean

    def __post_init__(self) -> None:
        _check(bool(self.pretrained), "prior.pretrained", self.pretrained, "is empty",
               "give a Hub id such as stabilityai/stable-diffusion-2-1-base or a local folder")
        _check(self.scheduler in ("ddim", "ddpm"), "prior.scheduler", self.scheduler, "is not supported",
               "use ddim or ddpm (only the noise schedule is read)")
        self.dtype = _enum(DType, self.dtype, "prior.dtype")
        from rewardsds.priors.compiled import check_compile_mode, normalize_compile

        self.compile = normalize_compile(self.compile)
        check_compile_mode(self.compile_mode, self.compile)
        _check(bool(str(self.compile_cache).strip()), "prior.compile_cache", self.compile_cache, "is empty",
               "use auto, torch or a folder")
        self.lookahead_quantize = _enum(LookaheadQuantize, self.lookahead_quantize, "prior.lookahead_quantize")


@dataclass
class AnalyticMode:
    """One named mode of the analytic Gaussian-mixture prior: a mean image built from colour + pattern."""

    name: str = MISSING
    keywords: List[str] = field(default_factory=list)
    color: List[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])
    background: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    pattern: str = "solid"  # solid | disk | square | stripes | checker


@dataclass
class AnalyticPriorConfig(PriorConfig):
    """Gaussian mixture over small images with an exact noise prediction (offline demo, algorithm tests)."""

    _target_: str = "rewardsds.priors.analytic.AnalyticPrior"
    image_size: int = 16
    component_std: float = 0.15
    prompt_sharpness: float = 4.0
    modes: List[AnalyticMode] = field(default_factory=list)  # empty = the built-in modes (DEFAULT_MODES)
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        _check(self.image_size >= 4, "prior.image_size", self.image_size, "is too small", "use 8, 16 or 32")
        _check(self.component_std > 0, "prior.component_std", self.component_std, "must be > 0", "use e.g. 0.15")
        names = [m.name for m in self.modes]
        _check(len(set(names)) == len(names), "prior.modes", names, "has duplicate names", "give each mode a unique name")


# ----------------------------------------------------------------------------------------- representations
@dataclass
class RepresentationConfig:
    _target_: str = MISSING


@dataclass
class LatentImageConfig(RepresentationConfig):
    """The 2D case: the prior-space latent itself is the parameter."""

    _target_: str = "rewardsds.representations.latent_image.LatentImage"
    init: str = "randn"  # randn | zeros | image
    init_image: Optional[str] = None  # path of an RGB image (init: image)
    init_std: float = 1.0
    lr: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
    weight_decay: float = 0.0
    batch_size: int = 1  # independent images optimised side by side (particles)

    def __post_init__(self) -> None:
        _check(self.init in ("randn", "zeros", "image"), "representation.init", self.init, "is not a known init",
               "use randn, zeros or image")
        _check(self.init != "image" or bool(self.init_image), "representation.init_image", self.init_image,
               "is required when representation.init=image", "set representation.init_image=/path/to/image.png")
        _check(self.lr > 0, "representation.lr", self.lr, "must be > 0", "use e.g. 0.01")
        _check(len(self.betas) == 2, "representation.betas", list(self.betas), "needs two values", "use [0.9, 0.99]")
        _check(self.batch_size >= 1, "representation.batch_size", self.batch_size, "must be >= 1", "use 1")


# ----------------------------------------------------------------------------------------- losses
@dataclass
class LossConfig:
    _target_: str = MISSING


@dataclass
class SDSLossConfig(LossConfig):
    """Score distillation sampling (DreamFusion), optionally with MVDream's x0-reconstruction target."""

    _target_: str = "rewardsds.losses.sds.SDSLoss"
    guidance_scale: float = 100.0
    weighting: SDSWeighting = SDSWeighting.sds
    target: SDSTarget = SDSTarget.eps
    recon_std_rescale: float = 0.5
    grad_clip: Optional[float] = None  # clamp the gradient field elementwise (threestudio grad_clip)

    def __post_init__(self) -> None:
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use e.g. 100 (2D) or 50 (MVDream)")
        self.weighting = _enum(SDSWeighting, self.weighting, "loss.weighting")
        self.target = _enum(SDSTarget, self.target, "loss.target")
        _check(0 <= self.recon_std_rescale <= 1, "loss.recon_std_rescale", self.recon_std_rescale, "must be in [0, 1]", "use 0.5")


# ----------------------------------------------------------------------------------------- rewards
@dataclass
class RewardConfig:
    _target_: str = MISSING


@dataclass
class JPEGRewardConfig(RewardConfig):
    """DDPO's JPEG (in)compressibility: -/+ JPEG size in kB at quality 95."""

    _target_: str = "rewardsds.rewards.jpeg.JPEGCompressibility"
    quality: int = 95
    sign: float = -1.0  # -1: compressibility (smaller file is better), +1: incompressibility

    def __post_init__(self) -> None:
        _check(1 <= self.quality <= 100, "reward.quality", self.quality, "must be in [1, 100]", "use 95 (DDPO)")
        _check(self.sign in (-1.0, 1.0), "reward.sign", self.sign, "must be -1 or +1", "use -1 (compressibility) or +1")


@dataclass
class AnalyticRewardConfig(RewardConfig):
    """Closeness to preferred modes of the analytic prior (negative mean squared distance in [0,1])."""

    _target_: str = "rewardsds.rewards.analytic.AnalyticReward"
    preferred: List[str] = field(default_factory=lambda: ["blue"])
    modes: List[AnalyticMode] = field(default_factory=list)
    image_size: int = 16

    def __post_init__(self) -> None:
        _check(len(self.preferred) >= 1, "reward.preferred", list(self.preferred), "is empty",
               "name at least one mode or keyword, e.g. reward.preferred=[blue]")


# ----------------------------------------------------------------------------------------- strategies
@dataclass
class StrategyConfig:
    _target_: str = MISSING


@dataclass
class NoStrategyConfig(StrategyConfig):
    """Plain distillation: every candidate weighted 1/N, no lookahead or reward."""

    _target_: str = "rewardsds.strategies.NoStrategy"


@dataclass
class MinMaxStrategyConfig(StrategyConfig):
    """RewardSDS default: +lambda_max on the top n_max, -lambda_min on the bottom n_min candidates."""

    _target_: str = "rewardsds.strategies.MinMaxStrategy"
    lambda_max: float = 0.9
    lambda_min: float = 0.1
    n_max: int = 2
    n_min: int = 2
    scale: MinMaxScale = MinMaxScale.mean

    def __post_init__(self) -> None:
        _check(self.n_max >= 1, "strategy.n_max", self.n_max, "must be >= 1", "use 2")
        _check(self.n_min >= 0, "strategy.n_min", self.n_min, "must be >= 0", "use 2 (0 disables the push-away term)")
        self.scale = _enum(MinMaxScale, self.scale, "strategy.scale")


@dataclass
class BestStrategyConfig(StrategyConfig):
    """Winner(s) take all: weight 1/n_best on the n_best highest rewards."""

    _target_: str = "rewardsds.strategies.BestStrategy"
    n_best: int = 1

    def __post_init__(self) -> None:
        _check(self.n_best >= 1, "strategy.n_best", self.n_best, "must be >= 1", "use 1 or 2")


@dataclass
class WeightedStrategyConfig(StrategyConfig):
    """Softmax of rewards with a temperature (reference: temperature 1 on raw scores)."""

    _target_: str = "rewardsds.strategies.WeightedStrategy"
    temperature: float = 1.0
    standardize: bool = False  # z-score rewards within the candidate set before the softmax

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "strategy.temperature", self.temperature, "must be > 0", "use 1.0")


@dataclass
class RandomStrategyConfig(StrategyConfig):
    """Paper ablation (i): one candidate chosen uniformly at random (ignores rewards)."""

    _target_: str = "rewardsds.strategies.RandomStrategy"


# ----------------------------------------------------------------------------------------- logger / trainer
@dataclass
class LoggerConfig:
    _target_: str = MISSING


@dataclass
class WandbLoggerConfig(LoggerConfig):
    _target_: str = "rewardsds.loggers.wandb_logger"
    project: str = "rewardsds"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online if a key and network exist, else offline) | online | offline
    group: Optional[str] = None  # default: the sweep folder name for multiruns
    name: Optional[str] = None  # default: the job's overrides
    tags: List[str] = field(default_factory=list)
    log_model: bool = False

    def __post_init__(self) -> None:
        _check(self.mode in ("auto", "online", "offline"), "logger.mode", self.mode, "is not a known mode",
               "use auto, online or offline")


@dataclass
class CSVLoggerConfig(LoggerConfig):
    _target_: str = "rewardsds.loggers.csv_logger"
    name: str = "csv"


@dataclass
class NoLoggerConfig(LoggerConfig):
    _target_: str = "rewardsds.loggers.no_logger"


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` that users set (the system adds the rest)."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"  # auto | cpu | gpu | cuda
    devices: Any = 1
    precision: str = "32-true"  # the scene is fp32; the prior's dtype is prior.dtype
    enable_progress_bar: Optional[bool] = None  # null: when stdout is a terminal (plain progress lines otherwise)
    log_every_n_steps: int = 1
    deterministic: bool = False
    enable_model_summary: bool = False

    def __post_init__(self) -> None:
        _check(self.accelerator in ("auto", "cpu", "gpu", "cuda"), "trainer.accelerator", self.accelerator,
               "is not supported", "use auto, cpu or gpu")
        _check(self.precision in ("32-true", "32"), "trainer.precision", self.precision,
               "must be 32: the scene is optimised in fp32 and the prior's precision is prior.dtype",
               "set prior.dtype=bf16 (or fp16) for a half-precision prior")


# ----------------------------------------------------------------------------------------- MVDream prior
@dataclass
class MVDreamPriorConfig(PriorConfig):
    """MVDream sd-v2.1-base-4view: multi-view, camera-conditioned SD 2.1 on diffusers (needs 3D views)."""

    _target_: str = "rewardsds.priors.mvdream.MVDreamPrior"
    pretrained: str = "MVDream/MVDream"  # Hub repo, checkpoint file, folder with `filename`, or a converted folder
    filename: Optional[str] = "sd-v2.1-base-4view.pt"  # ignored for converted folders; null: a diffusers-layout Hub repo
    original_config: Optional[str] = None  # ldm yaml of a non-default checkpoint (null: sd-v2.1-base-4view)
    base_model: str = "stabilityai/stable-diffusion-2-1-base"  # tokenizer, text encoder and VAE
    vae_text_from_checkpoint: bool = False  # take text encoder + VAE weights from the MVDream checkpoint instead
    num_frames: int = 4
    dtype: DType = DType.auto
    encode_sample: bool = True  # VAE posterior sample (threestudio-mvdream) instead of the mean
    encode_seed: int = 0  # seed of the prior's own generator for that sample
    local_files_only: bool = False
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    compile_cache: str = "auto"  # where compiled kernels persist (see the Stable Diffusion prior)
    tiny_vae: Optional[str] = None
    vae_slicing: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.pretrained), "prior.pretrained", self.pretrained, "is empty",
               "give MVDream/MVDream, a checkpoint file, or a folder written by scripts/convert_mvdream.py")
        _check(bool(self.base_model), "prior.base_model", self.base_model, "is empty",
               "give stabilityai/stable-diffusion-2-1-base or a local SD 2.1-base diffusers folder")
        _check(self.filename is None or self.filename.endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors")),
               "prior.filename", self.filename, "is not a checkpoint file name",
               "use sd-v2.1-base-4view.pt, or null when prior.pretrained is a converted folder")
        _check(self.num_frames >= 1, "prior.num_frames", self.num_frames, "must be >= 1", "use 4 (the released model)")
        from rewardsds.priors.compiled import check_compile_mode

        check_compile_mode(self.compile_mode, self.compile, default="default")
        self.dtype = _enum(DType, self.dtype, "prior.dtype")


# ----------------------------------------------------------------------------------------- 3D: cameras, NeRF, Gaussians
class ElevationSampling(str, Enum):
    mixed = "mixed"  # threestudio: per group, p=0.5 uniform in degrees, else uniform in area on the band
    uniform = "uniform"  # uniform in degrees
    area = "area"  # uniform in area on the sphere band


class LightSampling(str, Enum):
    dreamfusion = "dreamfusion"  # light direction ~ camera direction + N(0, light_position_perturb)
    magic3d = "magic3d"  # 30..90 degrees above the camera's horizon


class GridEncodingType(str, Enum):
    hash = "hash"  # Instant-NGP hash grid (threestudio default): Triton kernels on CUDA, PyTorch on the CPU
    dense = "dense"  # multi-resolution dense volumes (grid_sample)
    triplane = "triplane"  # multi-resolution triplanes (grid_sample); fastest measured on the CPU


class HashBackend(str, Enum):
    auto = "auto"  # Triton kernels for CUDA tensors, the PyTorch gathers on the CPU
    triton = "triton"  # Triton kernels (CUDA tensors only)
    torch = "torch"  # the PyTorch gathers everywhere (the reference; slower, far more memory on CUDA)


class MLPDType(str, Enum):
    fp32 = "fp32"  # fp32 matmuls
    bf16 = "bf16"  # bf16 matmuls (autocast; fp32 weights and optimizer): threestudio's tcnn MLPs run in half precision


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
class Range:
    """A closed interval with named ends (degrees or scene units, as the field says)."""

    low: float = 0.0
    high: float = 1.0


@dataclass
class CameraConfig:
    """Random orbit cameras for 3D distillation (root node ``cameras``); defaults = RewardSDS/MVDream 3D.

    Views are object-major groups of ``views_per_object`` views sharing elevation, distance, field of
    view, perturbations and light; their azimuths are 360 / views_per_object apart with a random
    offset. ``resolution`` and ``batch_size`` are schedules (the reference: 8 views at 64 px, then 4
    views at 256 px from step 5000).
    """

    _target_: str = "rewardsds.cameras.CameraSampler"
    resolution: Schedule = field(default_factory=lambda: Schedule(start=64))
    batch_size: Schedule = field(default_factory=lambda: Schedule(start=4))
    views_per_object: int = 4
    elevation: Range = field(default_factory=lambda: Range(0.0, 30.0))
    elevation_sampling: ElevationSampling = ElevationSampling.mixed
    azimuth: Range = field(default_factory=lambda: Range(-180.0, 180.0))
    distance: Range = field(default_factory=lambda: Range(0.8, 1.0))
    relative_distance: bool = True  # distance / tan(fovy / 2) (MVDream)
    fovy: Range = field(default_factory=lambda: Range(15.0, 60.0))  # degrees
    batch_uniform_azimuth: bool = True  # stratified azimuths when views_per_object == 1
    camera_perturb: float = 0.0
    center_perturb: float = 0.0
    up_perturb: float = 0.0
    light_sampling: LightSampling = LightSampling.dreamfusion
    light_position_perturb: float = 1.0
    light_distance: Range = field(default_factory=lambda: Range(0.8, 1.5))
    eval_elevation: float = 15.0
    eval_distance: float = 3.0
    eval_fovy: float = 40.0  # degrees
    eval_resolution: int = 512
    front_threshold: float = 45.0  # view-dependent prompts (threestudio prompt processor)
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0

    def __post_init__(self) -> None:
        from rewardsds.cameras import check_camera_settings

        self.elevation_sampling = _enum(ElevationSampling, self.elevation_sampling, "cameras.elevation_sampling")
        self.light_sampling = _enum(LightSampling, self.light_sampling, "cameras.light_sampling")
        check_camera_settings(self)


@dataclass
class NeRFConfig(RepresentationConfig):
    """Grid-encoded NeRF rendered with nerfacc (threestudio implicit-volume + nerf-volume-renderer)."""

    _target_: str = "rewardsds.representations.nerf.NeRF"
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
    # density, colour and background MLPs; the encoding and the volume rendering stay fp32
    mlp_dtype: MLPDType = MLPDType.fp32
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
    eval_chunk_rays: int = 65536
    seed: int = 0

    def __post_init__(self) -> None:
        from rewardsds.representations.nerf import check_nerf_settings

        for key, enum_cls in (
            ("encoding", GridEncodingType), ("hash_backend", HashBackend), ("mlp_dtype", MLPDType),
            ("density_activation", DensityActivation),
            ("density_bias", DensityBias),
            ("estimator", NeRFEstimator), ("background", NeRFBackground), ("normal", NormalType), ("shading", ShadingType),
        ):
            setattr(self, key, _enum(enum_cls, getattr(self, key), f"representation.{key}"))
        check_nerf_settings(self)


@dataclass
class GaussiansConfig(RepresentationConfig):
    """3D Gaussians rendered with gsplat, densified by gsplat's strategies."""

    _target_: str = "rewardsds.representations.gaussians.Gaussians"
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
            setattr(self, key, _enum(enum_cls, getattr(self, key), f"representation.{key}"))
        check_gaussians_settings(self)


# ----------------------------------------------------------------------------------------- learned rewards
class AttentionKernel(str, Enum):
    sdpa = "sdpa"  # torch scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)
    eager = "eager"  # the plain matmul-softmax reference


class AestheticHeadType(str, Enum):
    linear = "linear"  # LAION aesthetic predictor v1, sa_0_4_vit_l_14_linear.pth (RewardSDS reference)
    mlp = "mlp"  # improved aesthetic predictor, sac+logos+ava1-l14-linearMSE.pth (DDPO)


def _learned_reward_checks(cfg: Any) -> None:
    cfg.dtype = _enum(DType, cfg.dtype, "reward.dtype")
    cfg.attention = _enum(AttentionKernel, cfg.attention, "reward.attention")
    _check(not (cfg.pil_exact and cfg.differentiable), "reward.pil_exact", cfg.pil_exact,
           "quantises images to uint8 through PIL, which has no gradient, but reward.differentiable=true",
           "set reward.pil_exact=false (the tensor path is differentiable)")


@dataclass
class LearnedRewardConfig(RewardConfig):
    """Options every learned reward model takes (the subclasses add where its weights come from).

    dtype: auto = bf16 on CUDA, fp32 on CPU (heads and similarities stay fp32). differentiable: allow gradients
    to the images (reward-feedback methods). pil_exact: the reference code's uint8 PIL preprocessing instead
    of the tensor path (not differentiable). attention: sdpa or eager. compile: torch.compile with CUDA graphs
    on the scoring path.
    """

    dtype: DType = DType.auto
    differentiable: bool = False
    pil_exact: bool = False
    local_files_only: bool = False
    attention: AttentionKernel = AttentionKernel.sdpa
    compile: bool = False

    def __post_init__(self) -> None:
        _learned_reward_checks(self)


@dataclass
class ImageRewardConfig(LearnedRewardConfig):
    """ImageReward-v1.0 on transformers' BLIP modules (checkpoint: Hub repo, folder or ImageReward.pt)."""

    _target_: str = "rewardsds.rewards.image_reward.ImageReward"
    checkpoint: str = "THUDM/ImageReward"
    med_config: Optional[str] = None  # default: med_config.json next to the checkpoint
    tokenizer: str = "bert-base-uncased"  # Hub id or a folder with vocab.txt


@dataclass
class AestheticRewardConfig(LearnedRewardConfig):
    """LAION aesthetic predictor on L2-normalised CLIP ViT-L/14 image embeddings (prompt-free)."""

    _target_: str = "rewardsds.rewards.aesthetic.AestheticReward"
    pretrained: str = "openai/clip-vit-large-patch14"
    head_type: AestheticHeadType = AestheticHeadType.linear
    head: Optional[str] = None  # head file: local path or URL; None = the published URL of head_type

    def __post_init__(self) -> None:
        super().__post_init__()
        self.head_type = _enum(AestheticHeadType, self.head_type, "reward.head_type")


@dataclass
class CLIPScoreConfig(LearnedRewardConfig):
    """Cosine similarity of CLIP image and prompt embeddings (any transformers CLIP checkpoint)."""

    _target_: str = "rewardsds.rewards.clip.CLIPScore"
    pretrained: str = "openai/clip-vit-large-patch14"
    processor: Optional[str] = None  # tokenizer + image processor source; default: pretrained


@dataclass
class PickScoreConfig(LearnedRewardConfig):
    """PickScore: exp(logit_scale) * cosine of a CLIP-H/14 fine-tuned on Pick-a-Pic."""

    _target_: str = "rewardsds.rewards.pickscore.PickScore"
    pretrained: str = "yuvalkirstain/PickScore_v1"
    processor: Optional[str] = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass
class HPSv2Config(LearnedRewardConfig):
    """HPSv2.1 (open_clip ViT-H-14 checkpoint converted to transformers' CLIPModel): cosine score."""

    _target_: str = "rewardsds.rewards.hpsv2.HPSv2"
    checkpoint: str = "xswu/HPSv2"  # Hub repo with HPS_v2.1_compressed.pt, a folder, or the .pt file
    processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # config, tokenizer, image processor


@dataclass
class ComboRewardConfig(RewardConfig):
    """Weighted sum of rewards; each component is a full reward config under components.<name>."""

    _target_: str = "rewardsds.rewards.combo.ComboReward"
    components: Dict[str, Any] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = sorted(self.components)
        _check(len(names) >= 1, "reward.components", names, "is empty",
               "nest at least one reward config, e.g. - /reward@components.image_reward: image_reward")
        _check(sorted(self.weights) == names, "reward.weights", dict(self.weights),
               f"must have one weight per component {names}", "set reward.weights.<name>=<float> for each")
        for name in names:
            _check(name.isidentifier() and name.islower() and not name.startswith("_"), f"reward.components.{name}", name,
                   "is not a log-friendly name", "use a lowercase identifier such as image_reward")


REWARD_MODEL_SCHEMAS: dict[str, type] = {
    "image_reward": ImageRewardConfig,
    "aesthetic": AestheticRewardConfig,
    "clip": CLIPScoreConfig,
    "pickscore": PickScoreConfig,
    "hpsv2": HPSv2Config,
    "combo": ComboRewardConfig,
}


# ----------------------------------------------------------------------------------------- 2D loss modes
@dataclass
class VSDLossConfig(LossConfig):
    """Variational score distillation (ProlificDreamer) with a LoRA copy of the prior's UNet; RewardVSD with a strategy."""

    _target_: str = "rewardsds.losses.vsd.VSDLoss"
    guidance_scale: float = 7.5
    weighting: SDSWeighting = SDSWeighting.sds
    lora_rank: int = 4
    lora_lr: float = 3e-4
    lora_weight_decay: float = 0.0
    lora_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    lora_eps: float = 1e-8
    lora_guidance_scale: float = 1.0  # CFG over the LoRA's camera condition (1 = one call with the camera)
    camera_dropout: float = 0.1  # probability of a zero camera in a LoRA training step
    lora_base: Optional[str] = None  # None: LoRA on a copy of the prior's UNet; or a Hub id / folder (e.g. SD 2.1 768 v)
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (VSD)")
        self.weighting = _enum(SDSWeighting, self.weighting, "loss.weighting")
        _check(self.lora_rank >= 1, "loss.lora_rank", self.lora_rank, "must be >= 1", "use 4 (reference)")
        _check(self.lora_lr > 0, "loss.lora_lr", self.lora_lr, "must be > 0", "use 3e-4 (2D reference) or 1e-4 (threestudio)")
        _check(self.lora_weight_decay >= 0, "loss.lora_weight_decay", self.lora_weight_decay, "must be >= 0", "use 0")
        _check(len(self.lora_betas) == 2, "loss.lora_betas", list(self.lora_betas), "needs two values", "use [0.9, 0.999]")
        _check(self.lora_eps > 0, "loss.lora_eps", self.lora_eps, "must be > 0", "use 1e-8")
        _check(0.0 <= self.camera_dropout <= 1.0, "loss.camera_dropout", self.camera_dropout, "must be in [0, 1]", "use 0.1")
        _check(self.lora_base is None or bool(str(self.lora_base).strip()), "loss.lora_base", self.lora_base, "is empty",
               "leave it unset (null) for the single-model path, or give a Hub id or folder")


@dataclass
class SDSBridgeLossConfig(LossConfig):
    """SDS-Bridge: SDS, then from stage_two_start the bridge eps(y + target_suffix) - eps(y + source_suffix)."""

    _target_: str = "rewardsds.losses.bridge.SDSBridgeLoss"
    guidance_scale: float = 40.0
    stage_two_start: float = 0.5  # fraction of the steps
    stage_two_scale: Optional[float] = None  # lambda_2; null = guidance_scale (2D reference); 3D reference uses 1
    weighting: SDSWeighting = SDSWeighting.sds
    source_suffix: str = ", oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"
    target_suffix: str = ", detailed high resolution, high quality, sharp"
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 40 (2D reference)")
        _check(0.0 <= self.stage_two_start <= 1.0, "loss.stage_two_start", self.stage_two_start,
               "is a fraction of the steps and must be in [0, 1]", "use 0.5 (2D reference)")
        self.weighting = _enum(SDSWeighting, self.weighting, "loss.weighting")
        _check(self.source_suffix != self.target_suffix, "loss.source_suffix", self.source_suffix,
               "equals loss.target_suffix, so stage two has no direction", "describe the current (source) images differently")


@dataclass
class DDSLossConfig(LossConfig):
    """Delta Denoising Score image editing (source image + source prompt -> the run's prompt); RewardDDS with a strategy."""

    _target_: str = "rewardsds.losses.dds.DDSLoss"
    image: Optional[str] = None  # the input image to edit (also the target's init in experiment=edit_dds)
    source_prompt: Optional[str] = None  # describes the input image; the run's `prompt` is the target
    guidance_scale: float = 7.5  # CFG of both branches
    weighting: SDSWeighting = SDSWeighting.uniform  # w(t) = 1 (official notebook)
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        _check(bool(self.image), "loss.image", self.image, "DDS edits an input image and none is given",
               "set loss.image=/path/to/photo.png (experiment=edit_dds also starts the target from it)")
        _check(bool(self.source_prompt and str(self.source_prompt).strip()), "loss.source_prompt", self.source_prompt,
               "DDS needs a description of the input image", 'set loss.source_prompt="a photo of a cat" (the run\'s prompt is the edit target)')
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (official notebook)")
        self.weighting = _enum(SDSWeighting, self.weighting, "loss.weighting")


# ----------------------------------------------------------------------------------------- reward-aligned losses
class PGEstimator(str, Enum):
    noising = "noising"  # (a) REINFORCE on the forward noising q(x_t | z): field -A (a_t / s_t) eps, no model backward
    first_transition = "first_transition"  # (b) log-prob of the rollout's first transition, backward through the model input


class AdvantageNorm(str, Enum):
    batch = "batch"  # over the N rollouts of the step
    running = "running"  # DDPO's per-prompt buffer (batch statistics until min_count rewards are held)


class SDSNoises(str, Enum):
    all = "all"  # SDS averaged over the N start noises (predictions shared with the rollouts: free)
    first = "first"  # SDS on candidate 0 only (the same noise as plain SDS)


class PreviewKind(str, Enum):
    one_step = "one_step"  # x0 = (x_t - s_t eps_cfg) / a_t (DreamDPO)
    lookahead = "lookahead"  # the engine's DDIM lookahead (RewardSDS; lookahead.* options)


class PairRanking(str, Enum):
    per_view = "per_view"  # win and lose per view, each view's own pair (DreamDPO paper and code)
    mean = "mean"  # one win and one lose per candidate, by the reward averaged over its views


class BelowThreshold(str, Enum):
    win_sds = "win_sds"  # SDS on the win sample (DreamDPO paper)
    win_eps = "win_eps"  # w(t) eps_cfg(x_t^w) without the noise term (DreamDPO reference code)


class DPOPairs(str, Enum):
    previews = "previews"  # the win/lose previews re-noised at t with one shared noise (Diffusion-DPO's image pair)
    candidates = "candidates"  # the noisy candidates x_t^w, x_t^l with their own noises (ALGORITHMS.md 7.2 literally)


class NegativeUpdate(str, Enum):
    dpo = "dpo"  # Diffusion-DPO on the guided denoising errors of the win/lose pair (any reward)
    reward_feedback = "reward_feedback"  # back-propagate a differentiable reward of the win preview into e
    frozen = "frozen"  # keep the negative embedding fixed (ablation)


def _check_fraction(key: str, value: float, fix: str) -> None:
    _check(0.0 <= value <= 1.0, key, value, "is a fraction of the steps and must be in [0, 1]", fix)


@dataclass
class DDPO3DLossConfig(LossConfig):
    """DDPO3D as interpreted here (ALGORITHMS.md 6.3): SDS plus a policy gradient on stochastic DDIM rollouts."""

    _target_: str = "rewardsds.losses.ddpo3d.DDPO3DLoss"
    guidance_scale: float = 100.0  # CFG of the SDS term
    weighting: SDSWeighting = SDSWeighting.sds
    target: SDSTarget = SDSTarget.eps
    recon_std_rescale: float = 0.5
    grad_clip: Optional[float] = None
    lambda_sds: float = 1.0
    lambda_pg: float = 0.1
    pg_weighting: SDSWeighting = SDSWeighting.sds  # timestep weight of the PG term (uniform = plain REINFORCE)
    pg_start: float = 0.3  # PG term on from this fraction of the steps (until reward_duration ends)
    sds_end: float = 1.0  # SDS off from this fraction of the steps (1.0: kept to the end)
    sds_noises: SDSNoises = SDSNoises.all
    estimator: PGEstimator = PGEstimator.noising
    rollout_steps: int = 10  # K
    rollout_guidance: float = 7.5
    eta: float = 1.0
    advantage: AdvantageNorm = AdvantageNorm.batch
    advantage_clip: float = 5.0
    buffer_size: int = 16
    min_count: int = 16

    def __post_init__(self) -> None:
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 100 (2D) or 50 (MVDream)")
        self.weighting = _enum(SDSWeighting, self.weighting, "loss.weighting")
        self.target = _enum(SDSTarget, self.target, "loss.target")
        self.pg_weighting = _enum(SDSWeighting, self.pg_weighting, "loss.pg_weighting")
        self.sds_noises = _enum(SDSNoises, self.sds_noises, "loss.sds_noises")
        self.estimator = _enum(PGEstimator, self.estimator, "loss.estimator")
        self.advantage = _enum(AdvantageNorm, self.advantage, "loss.advantage")
        _check(0 <= self.recon_std_rescale <= 1, "loss.recon_std_rescale", self.recon_std_rescale, "must be in [0, 1]", "use 0.5")
        _check(self.lambda_sds >= 0, "loss.lambda_sds", self.lambda_sds, "must be >= 0", "use 1.0")
        _check(self.lambda_pg >= 0, "loss.lambda_pg", self.lambda_pg, "must be >= 0", "use 0.1")
        _check_fraction("loss.pg_start", self.pg_start, "use 0.3 (after an SDS warm-up) or 0 (from the start)")
        _check_fraction("loss.sds_end", self.sds_end, "use 1.0 (keep SDS to the end)")
        _check(self.rollout_steps >= 1, "loss.rollout_steps", self.rollout_steps,
               "must be >= 1: the policy gradient scores the end of a rollout of at least one DDIM step", "use 10 (DDPO's default)")
        _check(self.rollout_guidance >= 0, "loss.rollout_guidance", self.rollout_guidance, "must be >= 0", "use 7.5")
        _check(0 <= self.eta <= 1, "loss.eta", self.eta, "must be in [0, 1]", "use 1.0 (DDPO)")
        _check(self.estimator is not PGEstimator.first_transition or self.eta > 0, "loss.eta", self.eta,
               "must be > 0 with loss.estimator=first_transition (a deterministic transition has no log-density)",
               "use loss.eta=1.0, or loss.estimator=noising")
        _check(self.advantage_clip > 0, "loss.advantage_clip", self.advantage_clip, "must be > 0", "use 5.0")
        _check(self.buffer_size >= 2, "loss.buffer_size", self.buffer_size, "must be >= 2", "use 16 (DDPO)")
        _check(1 <= self.min_count <= self.buffer_size, "loss.min_count", self.min_count,
               f"must be in [1, loss.buffer_size = {self.buffer_size}]", "use 16 with buffer_size 16 (DDPO)")


@dataclass
class DreamDPOLossConfig(LossConfig):
    """DreamDPO (ALGORITHMS.md 8.2): win/lose residual difference with a reward-gap threshold."""

    _target_: str = "rewardsds.losses.dreamdpo.DreamDPOLoss"
    guidance_scale: float = 7.5
    lose_guidance_scale: float = 1.0  # 1 = the conditional prediction (reference code)
    weighting: SDSWeighting = SDSWeighting.sds
    threshold: float = 0.01
    below_threshold: BelowThreshold = BelowThreshold.win_sds
    preview: PreviewKind = PreviewKind.one_step
    preview_guidance: Optional[float] = None  # CFG of the one-step preview (null = guidance_scale)
    ranking: PairRanking = PairRanking.per_view  # win/lose per view (reference) or by the mean over views
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (MVDream) or 100 (2D)")
        self.ranking = _enum(PairRanking, self.ranking, "loss.ranking")
        _check(self.lose_guidance_scale >= 0, "loss.lose_guidance_scale", self.lose_guidance_scale, "must be >= 0", "use 1.0")
        _check(self.threshold >= 0, "loss.threshold", self.threshold, "must be >= 0", "use 0.01 (or 0 to always pull and push)")
        _check(self.preview_guidance is None or self.preview_guidance >= 0, "loss.preview_guidance", self.preview_guidance,
               "must be >= 0", "use 7.5 or null")
        self.weighting = _enum(SDSWeighting, self.weighting, "loss.weighting")
        self.below_threshold = _enum(BelowThreshold, self.below_threshold, "loss.below_threshold")
        self.preview = _enum(PreviewKind, self.preview, "loss.preview")


@dataclass
class PSDLossConfig(LossConfig):
    """PSD as interpreted here (ALGORITHMS.md 7.2): preference guidance with a co-optimised negative embedding."""

    _target_: str = "rewardsds.losses.psd.PSDLoss"
    guidance_scale: float = 7.5
    weighting: SDSWeighting = SDSWeighting.sds
    threshold: float = 0.01
    lose_scale: float = 1.0
    gap_ref: Optional[float] = 0.05
    preview: PreviewKind = PreviewKind.one_step
    preview_guidance: Optional[float] = None
    negative_update: NegativeUpdate = NegativeUpdate.dpo
    negative_init: str = ""  # conf/loss/psd.yaml sets ${negative_prompt}
    negative_lr: float = 1e-3
    negative_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    negative_eps: float = 1e-8
    negative_weight_decay: float = 0.0
    negative_start: float = 0.1
    dpo_beta: float = 2500.0
    dpo_pairs: DPOPairs = DPOPairs.previews
    feedback_weight: float = 1.0
    anchor_weight: float = 1.0
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5")
        _check(self.threshold >= 0, "loss.threshold", self.threshold, "must be >= 0", "use 0.01")
        _check(self.lose_scale >= 0, "loss.lose_scale", self.lose_scale, "must be >= 0", "use 1.0")
        _check(self.gap_ref is None or self.gap_ref > 0, "loss.gap_ref", self.gap_ref, "must be > 0 or null", "use 0.05 or null")
        _check(self.preview_guidance is None or self.preview_guidance >= 0, "loss.preview_guidance", self.preview_guidance,
               "must be >= 0", "use 7.5 or null")
        self.weighting = _enum(SDSWeighting, self.weighting, "loss.weighting")
        self.preview = _enum(PreviewKind, self.preview, "loss.preview")
        self.negative_update = _enum(NegativeUpdate, self.negative_update, "loss.negative_update")
        self.dpo_pairs = _enum(DPOPairs, self.dpo_pairs, "loss.dpo_pairs")
        _check(self.negative_lr > 0, "loss.negative_lr", self.negative_lr, "must be > 0", "use 1e-3")
        _check(len(self.negative_betas) == 2, "loss.negative_betas", list(self.negative_betas), "needs two values", "use [0.9, 0.999]")
        _check(self.negative_weight_decay >= 0, "loss.negative_weight_decay", self.negative_weight_decay, "must be >= 0", "use 0")
        _check_fraction("loss.negative_start", self.negative_start, "use 0.1 (a 10% warm-up)")
        _check(self.dpo_beta > 0, "loss.dpo_beta", self.dpo_beta, "must be > 0", "use 2500 (Diffusion-DPO's 5000 with its factor 1/2)")
        _check(self.feedback_weight > 0, "loss.feedback_weight", self.feedback_weight, "must be > 0", "use 1.0")
        _check(self.anchor_weight >= 0, "loss.anchor_weight", self.anchor_weight, "must be >= 0", "use 1.0 (0 disables the anchor)")


REWARD_ALIGNED_LOSSES = (DDPO3DLossConfig, DreamDPOLossConfig, PSDLossConfig)


def _loss_option(cfg_loss: Any) -> str:
    return {DDPO3DLossConfig: "ddpo3d", DreamDPOLossConfig: "dreamdpo", PSDLossConfig: "psd"}.get(type(cfg_loss), "?")


def _reward_is_differentiable(reward: Any) -> Optional[bool]:
    """The reward config's ``differentiable`` field if it has one, else its class's flag (None if unknown)."""
    if reward is None:
        return None
    if hasattr(reward, "differentiable"):
        return bool(reward.differentiable)
    try:
        from hydra.utils import get_class

        return bool(get_class(reward._target_).differentiable)
    except Exception:  # an unknown target fails later, at instantiation, with its own error
        return None


def check_reward_aligned_losses(cfg: Any) -> None:
    """DDPO3D, DreamDPO and PSD rank or normalise their own candidates' rewards: they need a reward, no
    strategy weights, enough candidates, and (PSD reward feedback) a differentiable reward. Registered as
    a cross-group check of the root config below."""
    loss = cfg.loss
    if not isinstance(loss, REWARD_ALIGNED_LOSSES):
        return
    option = _loss_option(loss)
    strategy = next((k for k, v in SCHEMAS["strategy"].items() if isinstance(cfg.strategy, v)), type(cfg.strategy).__name__)
    if not isinstance(cfg.strategy, NoStrategyConfig):
        raise ConfigError("strategy", strategy, f"does not apply to loss={option}, which weighs its own candidates "
                          "from their rewards", "set strategy=none")
    if cfg.reward is None:
        raise ConfigError("reward", None, f"is required by loss={option}", "choose a reward, e.g. reward=jpeg_compressibility")
    if isinstance(loss, (DreamDPOLossConfig, PSDLossConfig)) and cfg.n_noises < 2:
        raise ConfigError("n_noises", cfg.n_noises, f"loss={option} compares a win and a lose candidate and needs at least 2",
                          "set n_noises=2")
    if isinstance(loss, DDPO3DLossConfig) and loss.advantage is AdvantageNorm.batch and cfg.n_noises < 2:
        raise ConfigError("n_noises", cfg.n_noises, "loss.advantage=batch normalises rewards over the rollouts of one step "
                          "and needs at least 2", "set n_noises>=2 (4 or more recommended), or loss.advantage=running")
    if isinstance(loss, PSDLossConfig) and loss.negative_update is NegativeUpdate.reward_feedback:
        if _reward_is_differentiable(cfg.reward) is False:
            name = getattr(cfg.reward, "_target_", "?").rsplit(".", 1)[-1]
            raise ConfigError("loss.negative_update", "reward_feedback",
                              f"back-propagates the reward into the negative embedding, but the reward ({name}) is not "
                              "differentiable", "use loss.negative_update=dpo (works with any reward: it only uses the "
                              "win/lose ranking) or a differentiable reward")


# ----------------------------------------------------------------------------------------- prompt sets, GPU locks
@dataclass
class PromptSetConfig:
    """A named list of prompts (``conf/prompts/<name>.yaml``); a multirun runs one job per prompt."""

    _target_: str = "rewardsds.prompts.PromptSet"
    name: str = MISSING
    items: List[str] = field(default_factory=list)
    source: str = ""  # one-line citation, logged with the run (full provenance: the YAML header)

    def __post_init__(self) -> None:
        _check(len(self.items) > 0, "prompts.items", list(self.items), f"is empty in prompts={self.name}",
               "list at least one prompt under items:")


@dataclass
class GpuLockConfig:
    """One GPU per job when multirun jobs run side by side on one machine (on with ``hydra/launcher=gpus``).

    A job locks a free GPU of ``gpus`` for its lifetime (an exclusive ``flock`` on ``<dir>/gpu<i>.lock``, released
    when the job ends or its process dies) and runs on it; a job that finds every GPU taken waits for one.
    """

    enabled: Optional[bool] = None  # null: on with hydra/launcher=gpus, off otherwise; true/false force it
    gpus: Optional[List[int]] = None  # CUDA device indices to share out; null = every visible GPU
    dir: Optional[str] = None  # lock folder shared by the jobs of this machine; null = <tmp>/rewardsds-gpu-locks-<user>
    wait_s: float = 2.0  # poll interval while every GPU is taken

    def __post_init__(self) -> None:
        if self.gpus is not None:
            gpus = list(self.gpus)
            _check(len(gpus) > 0 and all(int(g) >= 0 for g in gpus) and len(set(gpus)) == len(gpus), "gpu_lock.gpus", gpus,
                   "must list distinct device indices >= 0", "use e.g. gpu_lock.gpus=[0,1], or null for every visible GPU")
        _check(self.wait_s > 0, "gpu_lock.wait_s", self.wait_s, "must be > 0", "use 2.0")


# ----------------------------------------------------------------------------------------- root nodes
@dataclass
class TimestepConfig:
    """Diffusion timestep sampling, as fractions of T with named schedules (threestudio annealing)."""

    t_min: Schedule = field(default_factory=lambda: Schedule(start=0.02))
    t_max: Schedule = field(default_factory=lambda: Schedule(start=0.98))
    grid: TimestepGrid = TimestepGrid.uniform

    def __post_init__(self) -> None:
        self.grid = _enum(TimestepGrid, self.grid, "timesteps.grid")
        for key, sched in (("timesteps.t_min", self.t_min), ("timesteps.t_max", self.t_max)):
            for v in (sched.start, sched.end):
                _check(v is None or 0.0 <= v <= 1.0, key, v, "is a fraction of T and must be in [0, 1]", "use e.g. 0.02 / 0.98")


@dataclass
class LookaheadConfig:
    """Deterministic DDIM lookahead from x_t to x_0 per candidate (paper's S)."""

    steps: int = 15  # points of the full DDIM grid; the chain visits those below t. 0 = one-step x0
    guidance_scale: float = 7.5
    grid: LookaheadGrid = LookaheadGrid.leading
    start: LookaheadStart = LookaheadStart.exact_t
    decode: str = "full"  # full VAE decode or "tiny" (prior.tiny_vae) for rewards
    prune_to: int = 0  # 0 = off; else full lookahead only for the prune_to best candidates by one-step reward

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "lookahead.steps", self.steps, "must be >= 0", "use 15 (reference) or 0 for one-step x0")
        _check(self.guidance_scale >= 0, "lookahead.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (2D) or 50 (MVDream)")
        self.grid = _enum(LookaheadGrid, self.grid, "lookahead.grid")
        self.start = _enum(LookaheadStart, self.start, "lookahead.start")
        _check(self.decode in ("full", "tiny"), "lookahead.decode", self.decode, "is not a known decoder", "use full or tiny")
        _check(self.prune_to >= 0, "lookahead.prune_to", self.prune_to, "must be >= 0", "use 0 (off) or fewer than n_noises")


@dataclass
class OutputConfig:
    image_every: int = 100  # save (and log) the current image every k steps; 0 = never
    candidates_every: int = 0  # log a table of candidate images with their rewards every k steps
    video: bool = True
    video_fps: int = 20
    video_frames: int = 100  # frames of the optimisation video (one every steps // video_frames steps)
    checkpoint_every: int = 100  # write last.ckpt every k steps (atomically); 0 = only at the end
    eval_views: int = 8  # fixed cameras rendered at the end for 3D metrics
    turntable_frames: int = 60
    final_reward: bool = True  # score the final image(s) with the run's reward for metrics.json
    progress_every: int = 0  # a progress line (log, and stdout without a TTY) every k steps; 0 = about 20 per run
    # assets written into export/ at the end (3D runs): [all] = every format of the representation, [] = none
    export_formats: List[ExportFormat] = field(default_factory=lambda: [ExportFormat.all])

    def __post_init__(self) -> None:
        self.export_formats = [_enum(ExportFormat, f, "output.export_formats") for f in self.export_formats]


@dataclass
class CompareConfig:
    """Run labelled variants of the same setup on the same seeds and write a comparison (offline demo).

    ``runs`` maps a label to space-separated overrides, e.g. ``{sds: "strategy=none n_noises=1"}``.
    """

    runs: Dict[str, str] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=list)


@dataclass
class Config:
    """Root schema. Groups are typed by their own schemas; the fields below are run-level settings."""

    representation: Any = MISSING
    prior: Any = MISSING
    loss: Any = MISSING
    reward: Any = MISSING
    strategy: Any = MISSING
    logger: Any = MISSING
    trainer: Any = MISSING
    cameras: Any = None  # training/eval cameras of 3D representations (ignored by 2D ones)

    prompt: str = MISSING
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 1000
    n_noises: int = 4
    reward_duration: float = 1.0  # fraction of steps that use the reward; later steps are plain SDS (N = 1)
    chunk_size: int = 0  # most UNet inputs per call (0 = automatic from free memory on CUDA, all on CPU)
    reward_views: ViewAggregation = ViewAggregation.mean
    view_dependent_prompts: bool = False
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    max_nonfinite_steps: int = 10
    resume: Optional[str] = None
    resume_allow_changes: bool = False  # let resume=<run> continue with experiment-changing overrides (recorded)
    name: Optional[str] = None  # appended to the run / sweep folder name (<time>_<name>)
    prompts: Any = None  # a prompt set (conf/prompts/); with prompt_index it sets `prompt`
    prompts_file: Optional[str] = None  # a text file of prompts, one a line; with prompt_index it sets `prompt`
    prompt_index: Optional[int] = None  # which prompt of the list (a multirun sweeps them all)
    gpu_lock: GpuLockConfig = field(default_factory=GpuLockConfig)

    def __post_init__(self) -> None:
        _check(isinstance(self.prompt, str) and self.prompt.strip() != "", "prompt", self.prompt, "is missing or empty",
               'pass a prompt, e.g. prompt="a photo of a red fox"')
        _check(self.steps >= 1, "steps", self.steps, "must be >= 1", "use e.g. 1000")
        _check(self.n_noises >= 1, "n_noises", self.n_noises, "must be >= 1", "use e.g. 4, 8 or 10")
        _check(0.0 <= self.reward_duration <= 1.0, "reward_duration", self.reward_duration, "must be in [0, 1]",
               "use 1.0 (2D), 0.5 (paper 3D) or 0.7 (reference 3D)")
        _check(self.chunk_size >= 0, "chunk_size", self.chunk_size, "must be >= 0", "use 0 (automatic)")
        _check(self.max_nonfinite_steps >= 0, "max_nonfinite_steps", self.max_nonfinite_steps, "must be >= 0", "use 10")
        _check(self.name is None or (self.name.strip() != "" and not any(c in self.name for c in "/\\") and ".." not in self.name),
               "name", self.name, "becomes part of the run folder's name and must be a plain name",
               "use letters, digits, '-' and '_' (e.g. name=fox_sweep)")
        _check(self.output.progress_every >= 0, "output.progress_every", self.output.progress_every, "must be >= 0",
               "use 0 (about 20 lines per run) or a number of steps")
        self.reward_views = _enum(ViewAggregation, self.reward_views, "reward_views")
        s = self.strategy
        if isinstance(s, MinMaxStrategyConfig):
            _check(self.n_noises >= s.n_max + s.n_min, "n_noises", self.n_noises,
                   f"is smaller than strategy.n_max + strategy.n_min = {s.n_max} + {s.n_min} = {s.n_max + s.n_min}",
                   f"set n_noises>={s.n_max + s.n_min} or lower strategy.n_max / strategy.n_min")
        _check(self.lookahead.prune_to < self.n_noises or self.lookahead.prune_to == 0, "lookahead.prune_to", self.lookahead.prune_to,
               f"must be smaller than n_noises = {self.n_noises} to prune anything", "use 0 (off) or a value below n_noises")
        if isinstance(s, BestStrategyConfig):
            _check(self.n_noises >= s.n_best, "n_noises", self.n_noises, f"is smaller than strategy.n_best = {s.n_best}",
                   f"set n_noises>={s.n_best} or lower strategy.n_best")
        _cross_group_checks(self)


# Checks between groups that are added by later modules (3D, MVDream, loss modes) register here, so
# the root schema stays one place that calls them all.
_CROSS_CHECKS: list = []


def register_cross_check(fn):
    """Decorator: ``fn(cfg: Config)`` raises ConfigError for an incompatible combination."""
    _CROSS_CHECKS.append(fn)
    return fn


def _cross_group_checks(cfg: Config) -> None:
    for fn in _CROSS_CHECKS:
        fn(cfg)


@register_cross_check
def _multiview_view_groups(cfg: Config) -> None:
    frames = getattr(cfg.prior, "num_frames", 1) or 1
    cams = cfg.cameras
    if frames > 1 and isinstance(cams, CameraConfig) and not isinstance(cfg.representation, LatentImageConfig):
        if cams.views_per_object != frames:
            raise ConfigError("cameras.views_per_object", cams.views_per_object,
                              f"must equal prior.num_frames = {frames}: the multi-view prior denoises {frames} views of one object jointly",
                              f"set cameras.views_per_object={frames} (cameras=multiview)")
        for v in (cams.batch_size.start, cams.batch_size.end):
            if v is not None and int(v) % frames:
                raise ConfigError("cameras.batch_size", v, f"is not a multiple of prior.num_frames = {frames}",
                                  f"use a multiple of {frames} views per step, e.g. {{start: 8, end: 4}}")


@register_cross_check
def _multiview_needs_views(cfg: Config) -> None:
    prior_target = getattr(cfg.prior, "_target_", "")
    rep = cfg.representation
    if "mvdream" in prior_target and isinstance(rep, LatentImageConfig):
        raise ConfigError(
            "representation", "latent_image",
            "cannot give the 4 camera-posed views per object that the multi-view prior (prior=mvdream) needs",
            "use representation=nerf or representation=gaussians with prior=mvdream",
        )


@register_cross_check
def _dds_edits_a_latent_image(cfg: Config) -> None:
    """DDS is a 2D editing method: the target is a latent image started from the source image (ALGORITHMS.md 4.1)."""
    loss, rep = cfg.loss, cfg.representation
    if not isinstance(loss, DDSLossConfig):
        return
    if not isinstance(rep, LatentImageConfig):
        raise ConfigError("representation", type(rep).__name__, "cannot be edited by loss=dds, an image-editing method",
                          "use representation=latent_image (experiment=edit_dds)")
    fix = f"set representation.init=image representation.init_image={loss.image} (experiment=edit_dds does both)"
    if rep.init != "image":
        raise ConfigError("representation.init", rep.init, "must be image: DDS starts the target from the source image", fix)
    if rep.init_image != loss.image:
        raise ConfigError("representation.init_image", rep.init_image,
                          f"differs from loss.image = {loss.image!r}: DDS starts the target from the source image", fix)
    if getattr(cfg.prior, "encode_sample", False):
        raise ConfigError("prior.encode_sample", True, "DDS encodes the source image with the VAE posterior mean, so source "
                          "and target start equal", "set prior.encode_sample=false")


register_cross_check(check_reward_aligned_losses)


@register_cross_check
def _export_formats_of_the_representation(cfg: Config) -> None:
    """``output.export_formats`` names only formats the representation writes (read from its class)."""
    from hydra.utils import get_class

    names = [f.value for f in cfg.output.export_formats if f != ExportFormat.all]
    target = getattr(cfg.representation, "_target_", None)
    if not names or not target:
        return
    available = tuple(getattr(get_class(target), "export_formats", ()))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError("output.export_formats", names, f"names {', '.join(unknown)}, which {target.rsplit('.', 1)[-1]} "
                          f"does not write (it writes: {', '.join(available) or 'nothing'})",
                          f"use [all], [] or a list of: {', '.join(available)}" if available else "use [all] or []")


# ----------------------------------------------------------------------------------------- registry
SCHEMAS: dict[str, dict[str, type]] = {
    "prior": {"sd": SDPriorConfig, "analytic": AnalyticPriorConfig, "mvdream": MVDreamPriorConfig},
    "representation": {"latent_image": LatentImageConfig, "nerf": NeRFConfig, "gaussians": GaussiansConfig},
    "loss": {"sds": SDSLossConfig, "vsd": VSDLossConfig, "sds_bridge": SDSBridgeLossConfig, "dds": DDSLossConfig,
             "ddpo3d": DDPO3DLossConfig, "dreamdpo": DreamDPOLossConfig, "psd": PSDLossConfig},
    "reward": {"jpeg": JPEGRewardConfig, "analytic": AnalyticRewardConfig, **REWARD_MODEL_SCHEMAS},
    "strategy": {
        "none": NoStrategyConfig,
        "min_max": MinMaxStrategyConfig,
        "best": BestStrategyConfig,
        "weighted": WeightedStrategyConfig,
        "random": RandomStrategyConfig,
    },
    "logger": {"wandb": WandbLoggerConfig, "csv": CSVLoggerConfig, "none": NoLoggerConfig},
    "trainer": {"default": TrainerConfig},
    "cameras": {"orbit": CameraConfig},
    "prompts": {"set": PromptSetConfig},
}


def _share_config_store() -> None:
    """Make copies of Hydra's ConfigStore singleton share it instead of duplicating every stored schema.

    Hydra deep-copies its config repository, and with it the ConfigStore, each time it composes or lists a group's
    options: with this package's schemas that is ~45 ms a copy, so ``--help`` (one copy per group option) took 7 s
    and every TAB of shell completion seconds. The store is only read through ``ConfigStore.load``, which already
    hands out a deep copy of the one node it returns, so sharing it is safe.
    """
    if "__deepcopy__" not in ConfigStore.__dict__:
        ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]


def register_schemas(extra: Optional[dict[str, dict[str, type]]] = None) -> None:
    """Store every schema as ``schema/<group>/<name>`` and the root as ``root_schema``."""
    _share_config_store()
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=Config)
    for group, options in {**SCHEMAS, **(extra or {})}.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


#: Override keys (or prefixes ending in ".") left out of sweep job folder names: they set the run up
#: rather than vary it, and would make every folder name long.
JOB_NAME_EXCLUDE = ("experiment", "debug", "trainer", "logger", "output.", "hydra.", "resume", "compare.", "name",
                    "prompts", "prompts_file", "gpu_lock.", "hparams_search")


def job_dirname(overrides: Any, max_len: int = 200, _root_: Any = None) -> str:
    """Readable job folder name: the job's overrides minus setup keys, sorted, ``k=v`` joined by ``,``.

    Registered as the ``rewardsds_jobname`` resolver and used by ``hydra.sweep.subdir``, so every launcher
    (basic, joblib, submitit) names the folders the same way. Falls back to ``job`` for no overrides.
    ``prompt_index=i`` of a prompt list (read from the job's config ``_root_``) becomes ``prompt=<i>-<slug>``.
    """
    items = []
    for o in list(overrides or []):
        key = str(o).split("=", 1)[0].lstrip("+~")
        if any(key == e or (e.endswith(".") and key.startswith(e)) for e in JOB_NAME_EXCLUDE):
            continue
        item = str(o).lstrip("+~").replace("/", "_")
        if key == "prompt_index" and _root_ is not None:
            item = _prompt_item(_root_, item)
        items.append(item)
    name = ",".join(sorted(items)) or "job"
    import zlib

    return name if len(name) <= max_len else name[: max_len - 9] + "-" + format(zlib.crc32(name.encode()), "08x")


def _prompt_item(root: Any, item: str) -> str:
    from rewardsds.prompts import prompt_list

    try:
        chosen = prompt_list(root)
        index = int(item.split("=", 1)[1])
    except (ConfigError, ValueError):
        return item  # the job itself reports the problem
    if chosen is None or not 0 <= index < len(chosen[0]):
        return item
    return f"prompt={chosen[0].label(index)}"


def _prompt_sweep(_root_: Any = None) -> dict:
    from rewardsds.prompts import sweep_params

    return sweep_params(_root_)


def _gpu_count(_root_: Any = None) -> int:
    from rewardsds.devices import launcher_jobs

    return launcher_jobs(_root_)


if not OmegaConf.has_resolver("rewardsds_jobname"):
    OmegaConf.register_new_resolver("rewardsds_jobname", job_dirname)
if not OmegaConf.has_resolver("rewardsds_prompt_sweep"):
    OmegaConf.register_new_resolver("rewardsds_prompt_sweep", _prompt_sweep)
if not OmegaConf.has_resolver("rewardsds_gpu_count"):
    OmegaConf.register_new_resolver("rewardsds_gpu_count", _gpu_count)


def if_set(value: Any, then: Any, otherwise: Any) -> Any:
    """``then`` if ``value`` is set (not None / empty), else ``otherwise``; the ``rewardsds_if_set`` resolver.

    experiment=edit_dds uses it for ``representation.init`` so that a missing ``loss.image`` is reported by the
    DDS schema under its own key rather than as a missing ``representation.init_image``.
    """
    return then if value not in (None, "") else otherwise


def name_suffix(name: Any = None) -> str:
    """``_<name>`` for a set ``name`` (run and sweep folders: ``<time>_<name>``), else nothing; the
    ``rewardsds_name_suffix`` resolver."""
    return f"_{name}" if name not in (None, "", "None") else ""


if not OmegaConf.has_resolver("rewardsds_name_suffix"):
    OmegaConf.register_new_resolver("rewardsds_name_suffix", name_suffix)
if not OmegaConf.has_resolver("rewardsds_if_set"):
    OmegaConf.register_new_resolver("rewardsds_if_set", if_set)


def validate(cfg: DictConfig) -> Config:
    """Build the typed config (runs every ``__post_init__``); raise ConfigError on the first problem.

    A prompt list (``prompts=<set>`` or ``prompts_file=<path>``) with ``prompt_index`` first sets ``cfg.prompt``.
    """
    from rewardsds.prompts import select_prompt

    select_prompt(cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


register_schemas()
