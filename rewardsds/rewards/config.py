"""Config schemas of the reward models (``conf/reward/*.yaml``), beside the classes they configure. Torch-free."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from rewardsds.priors.config import AnalyticMode, check_modes, mode_keywords, modes_or_default
from rewardsds.schema import DType, check, enum_option


@dataclass
class RewardConfig:
    _target_: str = MISSING


@dataclass
class JPEGRewardConfig(RewardConfig):
    """DDPO's JPEG (in)compressibility: -/+ JPEG size in kB at quality 95."""

    quality: int = 95
    sign: float = -1.0  # -1: compressibility (smaller file is better), +1: incompressibility

    def __post_init__(self) -> None:
        check(1 <= self.quality <= 100, "reward.quality", self.quality, "must be in [1, 100]", "use 95 (DDPO)")
        check(self.sign in (-1.0, 1.0), "reward.sign", self.sign, "must be -1 or +1", "use -1 (compressibility) or +1")


@dataclass
class AnalyticRewardConfig(RewardConfig):
    """Closeness to preferred modes of the analytic prior (negative mean squared distance in [0,1])."""

    # mode names or keywords: preferred=[blue] selects every mode with the keyword "blue"
    preferred: List[str] = field(default_factory=lambda: ["blue"])
    modes: List[AnalyticMode] = field(default_factory=list)  # empty = the analytic prior's built-in modes
    image_size: int = 16  # resolution at which images are compared with the modes' mean images

    def __post_init__(self) -> None:
        check(len(self.preferred) >= 1, "reward.preferred", list(self.preferred), "is empty",
               "name at least one mode or keyword, e.g. reward.preferred=[blue]")
        check(self.image_size >= 1, "reward.image_size", self.image_size, "must be >= 1", "use the prior's image size, e.g. 16")
        check_modes("reward.modes", self.modes)
        modes = modes_or_default(self.modes)
        check(bool(preferred_modes(self.preferred, modes)), "reward.preferred", list(self.preferred),
               "matches no mode name or keyword", f"choose among the modes {[m.name for m in modes]} or their keywords")


def preferred_modes(preferred: List[str], modes: List[AnalyticMode]) -> list[AnalyticMode]:
    """The modes whose name, or one of whose keywords, is in ``preferred`` (case-insensitive), in ``modes`` order."""
    pref = {p.lower() for p in preferred}
    return [m for m in modes if str(m.name).lower() in pref or set(mode_keywords(m)) & pref]


class AttentionKernel(str, Enum):
    """Attention kernel of a reward backbone (``sdpa`` is the fast path; ``eager`` is the plain reference)."""

    sdpa = "sdpa"  # torch scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)
    eager = "eager"  # the plain matmul-softmax reference (transformers' own attention code)


class AestheticHeadType(str, Enum):
    linear = "linear"  # LAION aesthetic predictor v1, sa_0_4_vit_l_14_linear.pth (RewardSDS reference)
    mlp = "mlp"  # improved aesthetic predictor, sac+logos+ava1-l14-linearMSE.pth (DDPO)


def _learned_reward_checks(cfg: Any) -> None:
    cfg.dtype = enum_option(DType, cfg.dtype, "reward.dtype")
    cfg.attention = enum_option(AttentionKernel, cfg.attention, "reward.attention")
    check(not (cfg.pil_exact and cfg.differentiable), "reward.pil_exact", cfg.pil_exact,
           "quantises images to uint8 through PIL, which has no gradient, but reward.differentiable=true",
           "set reward.pil_exact=false (the tensor path is differentiable)")


@dataclass
class LearnedRewardConfig(RewardConfig):
    """Options every learned reward model takes (the subclasses add where its weights come from).

    dtype: fp32 by default on every device: a reward ranks candidates whose scores are often within bf16's rounding
    of each other: on an H200 the compiled default's selected sets differed from the exact path's in 44% of 36
    draws with a bf16 backbone and in 14% (the bf16 prior's share) with fp32, which costs about 24 ms a paper_2d
    step; ``auto`` or ``bf16`` for bf16 on
    CUDA (heads and similarities stay fp32 either way). differentiable: allow gradients
    to the images (reward-feedback methods). pil_exact: the reference code's uint8 PIL preprocessing instead
    of the tensor path (not differentiable). attention: sdpa or eager. compile: torch.compile with CUDA graphs
    on the scoring path.
    """

    dtype: DType = DType.fp32  # the backbone's precision (auto: bf16 on CUDA); heads and similarities stay fp32
    differentiable: bool = False  # allow grad=True: gradients flow to the images (tensor path only)
    pil_exact: bool = False  # the reference's uint8 PIL preprocessing (not differentiable, CPU-bound)
    local_files_only: bool = False  # never download
    attention: AttentionKernel = AttentionKernel.sdpa
    compile: bool = False  # torch.compile the scoring path with CUDA graphs (about 30 s once per batch shape)

    def __post_init__(self) -> None:
        _learned_reward_checks(self)


@dataclass
class ImageRewardConfig(LearnedRewardConfig):
    """ImageReward-v1.0 on transformers' BLIP modules (checkpoint: Hub repo, folder or ImageReward.pt)."""

    checkpoint: str = "THUDM/ImageReward"  # Hub repo, a folder with ImageReward.pt and med_config.json, or the .pt file
    med_config: Optional[str] = None  # default: med_config.json next to the checkpoint
    tokenizer: str = "bert-base-uncased"  # Hub id or a folder with vocab.txt


@dataclass
class AestheticRewardConfig(LearnedRewardConfig):
    """LAION aesthetic predictor on L2-normalised CLIP ViT-L/14 image embeddings (prompt-free)."""

    pretrained: str = "openai/clip-vit-large-patch14"  # the CLIP model whose image tower the head was trained on
    head_type: AestheticHeadType = AestheticHeadType.linear
    # head file: local path or URL; None = the published URL of head_type (cached under $TORCH_HOME/hub/checkpoints)
    head: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.head_type = enum_option(AestheticHeadType, self.head_type, "reward.head_type")


@dataclass
class CLIPScoreConfig(LearnedRewardConfig):
    """Cosine similarity of CLIP image and prompt embeddings (any transformers CLIP checkpoint)."""

    pretrained: str = "openai/clip-vit-large-patch14"  # Hub id or local folder
    processor: Optional[str] = None  # tokenizer + image processor source; default: pretrained


@dataclass
class PickScoreConfig(CLIPScoreConfig):
    """PickScore: exp(logit_scale) * cosine of a CLIP-H/14 fine-tuned on Pick-a-Pic (a CLIP score with its own weights)."""

    pretrained: str = "yuvalkirstain/PickScore_v1"  # Hub id or local folder
    processor: Optional[str] = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # tokenizer + image processor (the model ships none)


@dataclass
class HPSv2Config(LearnedRewardConfig):
    """HPSv2.1 (open_clip ViT-H-14 checkpoint converted to transformers' CLIPModel): cosine score."""

    checkpoint: str = "xswu/HPSv2"  # Hub repo with HPS_v2.1_compressed.pt, a folder, or the .pt file
    processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # config, tokenizer, image processor


@dataclass
class ComboRewardConfig(RewardConfig):
    """Weighted sum of rewards; each component is a full reward config under components.<name>."""

    # name -> a reward config (with its _target_); the name is the component's log key: train/reward_<name>
    components: Dict[str, Any] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)  # name -> weight, one per component (scores are not rescaled)

    def __post_init__(self) -> None:
        names = sorted(self.components)
        check(len(names) >= 1, "reward.components", names, "is empty",
               "nest at least one reward config, e.g. - /reward@components.image_reward: image_reward")
        check(sorted(self.weights) == names, "reward.weights", dict(self.weights),
               f"must have one weight per component {names}", "set reward.weights.<name>=<float> for each")
        for name in names:
            check(bool(_LOG_NAME.match(name)), f"reward.components.{name}", name, "is not a log-friendly name",
                   "use a lowercase identifier such as image_reward or aesthetic")
            component = self.components[name]
            check(isinstance(component, RewardConfig), f"reward.components.{name}", component,
                   "is not a reward config", "nest a reward option under reward.components, e.g. "
                   f"'+reward@reward.components.{name}=clip'")


#: a component name: a lowercase identifier (it becomes the metric key train/reward_<name>)
_LOG_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
