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
    compile: bool = False  # torch.compile the UNet (GPU; compile time is reported separately)
    tiny_vae: Optional[str] = None  # a taesd-style AutoencoderTiny id/path for cheap lookahead decodes
    vae_slicing: bool = False
    encode_sample: bool = False  # encode renders with a posterior sample (threestudio) instead of the mean

    def __post_init__(self) -> None:
        _check(bool(self.pretrained), "prior.pretrained", self.pretrained, "is empty",
               "give a Hub id such as stabilityai/stable-diffusion-2-1-base or a local folder")
        _check(self.scheduler in ("ddim", "ddpm"), "prior.scheduler", self.scheduler, "is not supported",
               "use ddim or ddpm (only the noise schedule is read)")
        self.dtype = _enum(DType, self.dtype, "prior.dtype")


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
    enable_progress_bar: bool = True
    log_every_n_steps: int = 1
    deterministic: bool = False
    enable_model_summary: bool = False

    def __post_init__(self) -> None:
        _check(self.accelerator in ("auto", "cpu", "gpu", "cuda"), "trainer.accelerator", self.accelerator,
               "is not supported", "use auto, cpu or gpu")
        _check(self.precision in ("32-true", "32"), "trainer.precision", self.precision,
               "must be 32: the scene is optimised in fp32 and the prior's precision is prior.dtype",
               "set prior.dtype=bf16 (or fp16) for a half-precision prior")


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
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (MVDream) or 100 (2D)")
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

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "lookahead.steps", self.steps, "must be >= 0", "use 15 (reference) or 0 for one-step x0")
        _check(self.guidance_scale >= 0, "lookahead.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (2D) or 50 (MVDream)")
        self.grid = _enum(LookaheadGrid, self.grid, "lookahead.grid")
        self.start = _enum(LookaheadStart, self.start, "lookahead.start")
        _check(self.decode in ("full", "tiny"), "lookahead.decode", self.decode, "is not a known decoder", "use full or tiny")


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
    name: Optional[str] = None

    def __post_init__(self) -> None:
        _check(isinstance(self.prompt, str) and self.prompt.strip() != "", "prompt", self.prompt, "is missing or empty",
               'pass a prompt, e.g. prompt="a photo of a red fox"')
        _check(self.steps >= 1, "steps", self.steps, "must be >= 1", "use e.g. 1000")
        _check(self.n_noises >= 1, "n_noises", self.n_noises, "must be >= 1", "use e.g. 4, 8 or 10")
        _check(0.0 <= self.reward_duration <= 1.0, "reward_duration", self.reward_duration, "must be in [0, 1]",
               "use 1.0 (2D), 0.5 (paper 3D) or 0.7 (reference 3D)")
        _check(self.chunk_size >= 0, "chunk_size", self.chunk_size, "must be >= 0", "use 0 (automatic)")
        _check(self.max_nonfinite_steps >= 0, "max_nonfinite_steps", self.max_nonfinite_steps, "must be >= 0", "use 10")
        self.reward_views = _enum(ViewAggregation, self.reward_views, "reward_views")
        s = self.strategy
        if isinstance(s, MinMaxStrategyConfig):
            _check(self.n_noises >= s.n_max + s.n_min, "n_noises", self.n_noises,
                   f"is smaller than strategy.n_max + strategy.n_min = {s.n_max} + {s.n_min} = {s.n_max + s.n_min}",
                   f"set n_noises>={s.n_max + s.n_min} or lower strategy.n_max / strategy.n_min")
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
def _multiview_needs_views(cfg: Config) -> None:
    prior_target = getattr(cfg.prior, "_target_", "")
    rep = cfg.representation
    if "mvdream" in prior_target and isinstance(rep, LatentImageConfig):
        raise ConfigError(
            "representation", "latent_image",
            "cannot give the 4 camera-posed views per object that the multi-view prior (prior=mvdream) needs",
            "use representation=nerf or representation=gaussians with prior=mvdream",
        )


register_cross_check(check_reward_aligned_losses)


# ----------------------------------------------------------------------------------------- registry
SCHEMAS: dict[str, dict[str, type]] = {
    "prior": {"sd": SDPriorConfig, "analytic": AnalyticPriorConfig},
    "representation": {"latent_image": LatentImageConfig},
    "loss": {"sds": SDSLossConfig, "ddpo3d": DDPO3DLossConfig, "dreamdpo": DreamDPOLossConfig, "psd": PSDLossConfig},
    "reward": {"jpeg": JPEGRewardConfig, "analytic": AnalyticRewardConfig},
    "strategy": {
        "none": NoStrategyConfig,
        "min_max": MinMaxStrategyConfig,
        "best": BestStrategyConfig,
        "weighted": WeightedStrategyConfig,
        "random": RandomStrategyConfig,
    },
    "logger": {"wandb": WandbLoggerConfig, "csv": CSVLoggerConfig, "none": NoLoggerConfig},
    "trainer": {"default": TrainerConfig},
}


def register_schemas(extra: Optional[dict[str, dict[str, type]]] = None) -> None:
    """Store every schema as ``schema/<group>/<name>`` and the root as ``root_schema``."""
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=Config)
    for group, options in {**SCHEMAS, **(extra or {})}.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


#: Override keys (or prefixes ending in ".") left out of sweep job folder names: they set the run up
#: rather than vary it, and would make every folder name long.
JOB_NAME_EXCLUDE = ("experiment", "debug", "trainer", "logger", "output.", "hydra.", "resume", "compare.", "name")


def job_dirname(overrides: Any, max_len: int = 200) -> str:
    """Readable job folder name: the job's overrides minus setup keys, sorted, ``k=v`` joined by ``,``.

    Registered as the ``rewardsds_jobname`` resolver and used by ``hydra.sweep.subdir``, so every launcher
    (basic, joblib, submitit) names the folders the same way. Falls back to ``job`` for no overrides.
    """
    items = []
    for o in list(overrides or []):
        key = str(o).split("=", 1)[0].lstrip("+~")
        if any(key == e or (e.endswith(".") and key.startswith(e)) for e in JOB_NAME_EXCLUDE):
            continue
        items.append(str(o).lstrip("+~").replace("/", "_"))
    name = ",".join(sorted(items)) or "job"
    import zlib

    return name if len(name) <= max_len else name[: max_len - 9] + "-" + format(zlib.crc32(name.encode()), "08x")


if not OmegaConf.has_resolver("rewardsds_jobname"):
    OmegaConf.register_new_resolver("rewardsds_jobname", job_dirname)


def validate(cfg: DictConfig) -> Config:
    """Build the typed config (runs every ``__post_init__``); raise ConfigError on the first problem."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


register_schemas()
