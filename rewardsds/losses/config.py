"""Config schemas of the loss modes (``conf/loss/*.yaml``), beside the classes they configure. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from omegaconf import MISSING

from rewardsds.errors import check_betas, check_grad_clip
from rewardsds.schema import check, enum_option


class SDSTarget(str, Enum):
    eps = "eps"  # g = w(t) (eps_hat - eps)
    x0_recon = "x0_recon"  # MVDream x0-reconstruction target with std rescale


class SDSWeighting(str, Enum):
    sds = "sds"  # w(t) = 1 - abar_t
    uniform = "uniform"  # w(t) = 1
    fantasia = "fantasia"  # w(t) = sqrt(abar_t) (1 - abar_t)


@dataclass
class LossConfig:
    _target_: str = MISSING


@dataclass
class SDSLossConfig(LossConfig):
    """Score distillation sampling (DreamFusion), optionally with MVDream's x0-reconstruction target."""

    guidance_scale: float = 100.0
    weighting: SDSWeighting = SDSWeighting.sds
    target: SDSTarget = SDSTarget.eps
    recon_std_rescale: float = 0.5
    grad_clip: Optional[float] = None  # clamp the gradient field elementwise (threestudio grad_clip)

    def __post_init__(self) -> None:
        check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use e.g. 100 (2D) or 50 (MVDream)")
        self.weighting = enum_option(SDSWeighting, self.weighting, "loss.weighting")
        self.target = enum_option(SDSTarget, self.target, "loss.target")
        check(0 <= self.recon_std_rescale <= 1, "loss.recon_std_rescale", self.recon_std_rescale, "must be in [0, 1]", "use 0.5")
        check_grad_clip(check, "loss.grad_clip", self.grad_clip)


@dataclass
class VSDLossConfig(LossConfig):
    """Variational score distillation (ProlificDreamer) with a LoRA copy of the prior's UNet; RewardVSD with a strategy."""

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
        check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (VSD)")
        self.weighting = enum_option(SDSWeighting, self.weighting, "loss.weighting")
        check(self.lora_rank >= 1, "loss.lora_rank", self.lora_rank, "must be >= 1", "use 4 (reference)")
        check(self.lora_lr > 0, "loss.lora_lr", self.lora_lr, "must be > 0", "use 3e-4 (2D reference) or 1e-4 (threestudio)")
        check(self.lora_weight_decay >= 0, "loss.lora_weight_decay", self.lora_weight_decay, "must be >= 0", "use 0")
        check_betas(check, "loss.lora_betas", self.lora_betas, "use [0.9, 0.999]")
        check(self.lora_eps > 0, "loss.lora_eps", self.lora_eps, "must be > 0", "use 1e-8")
        check(self.lora_guidance_scale >= 0, "loss.lora_guidance_scale", self.lora_guidance_scale, "must be >= 0",
               "use 1.0 (one call with the camera)")
        check_grad_clip(check, "loss.grad_clip", self.grad_clip)
        check(0.0 <= self.camera_dropout <= 1.0, "loss.camera_dropout", self.camera_dropout, "must be in [0, 1]", "use 0.1")
        check(self.lora_base is None or bool(str(self.lora_base).strip()), "loss.lora_base", self.lora_base, "is empty",
               "leave it unset (null) for the single-model path, or give a Hub id or folder")


@dataclass
class SDSBridgeLossConfig(LossConfig):
    """SDS-Bridge: SDS, then from stage_two_start the bridge eps(y + target_suffix) - eps(y + source_suffix)."""

    guidance_scale: float = 40.0
    stage_two_start: float = 0.5  # fraction of the steps
    stage_two_scale: Optional[float] = None  # lambda_2; null = guidance_scale (2D reference); 3D reference uses 1
    weighting: SDSWeighting = SDSWeighting.sds
    source_suffix: str = ", oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"
    target_suffix: str = ", detailed high resolution, high quality, sharp"
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 40 (2D reference)")
        check(0.0 <= self.stage_two_start <= 1.0, "loss.stage_two_start", self.stage_two_start,
               "is a fraction of the steps and must be in [0, 1]", "use 0.5 (2D reference)")
        check(self.stage_two_scale is None or self.stage_two_scale >= 0, "loss.stage_two_scale", self.stage_two_scale,
               "must be >= 0 or null", "use null (= loss.guidance_scale, 2D reference) or 1 (3D reference)")
        check_grad_clip(check, "loss.grad_clip", self.grad_clip)
        self.weighting = enum_option(SDSWeighting, self.weighting, "loss.weighting")
        check(self.source_suffix != self.target_suffix, "loss.source_suffix", self.source_suffix,
               "equals loss.target_suffix, so stage two has no direction", "describe the current (source) images differently")


@dataclass
class DDSLossConfig(LossConfig):
    """Delta Denoising Score image editing (source image + source prompt -> the run's prompt); RewardDDS with a strategy."""

    image: Optional[str] = None  # the input image to edit (also the target's init in experiment=edit_dds)
    source_prompt: Optional[str] = None  # describes the input image; the run's `prompt` is the target
    guidance_scale: float = 7.5  # CFG of both branches
    weighting: SDSWeighting = SDSWeighting.uniform  # w(t) = 1 (official notebook)
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        check(bool(self.image), "loss.image", self.image, "DDS edits an input image and none is given",
               "set loss.image=/path/to/photo.png (experiment=edit_dds also starts the target from it)")
        check(bool(self.source_prompt and str(self.source_prompt).strip()), "loss.source_prompt", self.source_prompt,
               "DDS needs a description of the input image", 'set loss.source_prompt="a photo of a cat" (the run\'s prompt is the edit target)')
        check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (official notebook)")
        check_grad_clip(check, "loss.grad_clip", self.grad_clip)
        self.weighting = enum_option(SDSWeighting, self.weighting, "loss.weighting")


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
    check(0.0 <= value <= 1.0, key, value, "is a fraction of the steps and must be in [0, 1]", fix)


@dataclass
class DDPO3DLossConfig(LossConfig):
    """DDPO3D as interpreted here (ALGORITHMS.md 6.3): SDS plus a policy gradient on stochastic DDIM rollouts."""

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
        check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 100 (2D) or 50 (MVDream)")
        self.weighting = enum_option(SDSWeighting, self.weighting, "loss.weighting")
        self.target = enum_option(SDSTarget, self.target, "loss.target")
        self.pg_weighting = enum_option(SDSWeighting, self.pg_weighting, "loss.pg_weighting")
        self.sds_noises = enum_option(SDSNoises, self.sds_noises, "loss.sds_noises")
        self.estimator = enum_option(PGEstimator, self.estimator, "loss.estimator")
        self.advantage = enum_option(AdvantageNorm, self.advantage, "loss.advantage")
        check(0 <= self.recon_std_rescale <= 1, "loss.recon_std_rescale", self.recon_std_rescale, "must be in [0, 1]", "use 0.5")
        check_grad_clip(check, "loss.grad_clip", self.grad_clip)
        check(self.lambda_sds >= 0, "loss.lambda_sds", self.lambda_sds, "must be >= 0", "use 1.0")
        check(self.lambda_pg >= 0, "loss.lambda_pg", self.lambda_pg, "must be >= 0", "use 0.1")
        _check_fraction("loss.pg_start", self.pg_start, "use 0.3 (after an SDS warm-up) or 0 (from the start)")
        _check_fraction("loss.sds_end", self.sds_end, "use 1.0 (keep SDS to the end)")
        check(self.rollout_steps >= 1, "loss.rollout_steps", self.rollout_steps,
               "must be >= 1: the policy gradient scores the end of a rollout of at least one DDIM step", "use 10 (DDPO's default)")
        check(self.rollout_guidance >= 0, "loss.rollout_guidance", self.rollout_guidance, "must be >= 0", "use 7.5")
        check(0 <= self.eta <= 1, "loss.eta", self.eta, "must be in [0, 1]", "use 1.0 (DDPO)")
        check(self.estimator is not PGEstimator.first_transition or self.eta > 0, "loss.eta", self.eta,
               "must be > 0 with loss.estimator=first_transition (a deterministic transition has no log-density)",
               "use loss.eta=1.0, or loss.estimator=noising")
        check(self.advantage_clip > 0, "loss.advantage_clip", self.advantage_clip, "must be > 0", "use 5.0")
        check(self.buffer_size >= 2, "loss.buffer_size", self.buffer_size, "must be >= 2", "use 16 (DDPO)")
        check(1 <= self.min_count <= self.buffer_size, "loss.min_count", self.min_count,
               f"must be in [1, loss.buffer_size = {self.buffer_size}]", "use 16 with buffer_size 16 (DDPO)")


@dataclass
class DreamDPOLossConfig(LossConfig):
    """DreamDPO (ALGORITHMS.md 8.2): win/lose residual difference with a reward-gap threshold."""

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
        check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (MVDream) or 100 (2D)")
        self.ranking = enum_option(PairRanking, self.ranking, "loss.ranking")
        check(self.lose_guidance_scale >= 0, "loss.lose_guidance_scale", self.lose_guidance_scale, "must be >= 0", "use 1.0")
        check(self.threshold >= 0, "loss.threshold", self.threshold, "must be >= 0", "use 0.01 (or 0 to always pull and push)")
        check(self.preview_guidance is None or self.preview_guidance >= 0, "loss.preview_guidance", self.preview_guidance,
               "must be >= 0", "use 7.5 or null")
        check_grad_clip(check, "loss.grad_clip", self.grad_clip)
        self.weighting = enum_option(SDSWeighting, self.weighting, "loss.weighting")
        self.below_threshold = enum_option(BelowThreshold, self.below_threshold, "loss.below_threshold")
        self.preview = enum_option(PreviewKind, self.preview, "loss.preview")


@dataclass
class PSDLossConfig(LossConfig):
    """PSD as interpreted here (ALGORITHMS.md 7.2): preference guidance with a co-optimised negative embedding."""

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
        check(self.guidance_scale >= 0, "loss.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5")
        check(self.threshold >= 0, "loss.threshold", self.threshold, "must be >= 0", "use 0.01")
        check(self.lose_scale >= 0, "loss.lose_scale", self.lose_scale, "must be >= 0", "use 1.0")
        check(self.gap_ref is None or self.gap_ref > 0, "loss.gap_ref", self.gap_ref, "must be > 0 or null", "use 0.05 or null")
        check(self.preview_guidance is None or self.preview_guidance >= 0, "loss.preview_guidance", self.preview_guidance,
               "must be >= 0", "use 7.5 or null")
        self.weighting = enum_option(SDSWeighting, self.weighting, "loss.weighting")
        self.preview = enum_option(PreviewKind, self.preview, "loss.preview")
        self.negative_update = enum_option(NegativeUpdate, self.negative_update, "loss.negative_update")
        self.dpo_pairs = enum_option(DPOPairs, self.dpo_pairs, "loss.dpo_pairs")
        check(self.negative_lr > 0, "loss.negative_lr", self.negative_lr, "must be > 0", "use 1e-3")
        check_betas(check, "loss.negative_betas", self.negative_betas, "use [0.9, 0.999]")
        check(self.negative_eps > 0, "loss.negative_eps", self.negative_eps, "must be > 0", "use 1e-8")
        check_grad_clip(check, "loss.grad_clip", self.grad_clip)
        check(self.negative_weight_decay >= 0, "loss.negative_weight_decay", self.negative_weight_decay, "must be >= 0", "use 0")
        _check_fraction("loss.negative_start", self.negative_start, "use 0.1 (a 10% warm-up)")
        check(self.dpo_beta > 0, "loss.dpo_beta", self.dpo_beta, "must be > 0", "use 2500 (Diffusion-DPO's 5000 with its factor 1/2)")
        check(self.feedback_weight > 0, "loss.feedback_weight", self.feedback_weight, "must be > 0", "use 1.0")
        check(self.anchor_weight >= 0, "loss.anchor_weight", self.anchor_weight, "must be >= 0", "use 1.0 (0 disables the anchor)")
