"""Config schemas of the priors (``conf/prior/*.yaml``), beside the classes they configure. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import MISSING

from rewardsds.errors import check_seed
from rewardsds.schema import DType, check, check_modes, enum_option


class LookaheadQuantize(str, Enum):
    none = "none"
    float8 = "float8"


@dataclass
class PriorConfig:
    _target_: str = MISSING


@dataclass
class SDPriorConfig(PriorConfig):
    """Stable Diffusion family through diffusers (SD 1.x/2.x; v- or epsilon-prediction)."""

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
        check(bool(self.pretrained), "prior.pretrained", self.pretrained, "is empty",
               "give a Hub id such as stabilityai/stable-diffusion-2-1-base or a local folder")
        check(self.scheduler in ("ddim", "ddpm"), "prior.scheduler", self.scheduler, "is not supported",
               "use ddim or ddpm (only the noise schedule is read)")
        self.dtype = enum_option(DType, self.dtype, "prior.dtype")
        from rewardsds.priors.compiled import check_compile_mode, normalize_compile

        self.compile = normalize_compile(self.compile)
        check_compile_mode(self.compile_mode, self.compile)
        check(bool(str(self.compile_cache).strip()), "prior.compile_cache", self.compile_cache, "is empty",
               "use auto, torch or a folder")
        self.lookahead_quantize = enum_option(LookaheadQuantize, self.lookahead_quantize, "prior.lookahead_quantize")


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

    image_size: int = 16
    component_std: float = 0.15
    prompt_sharpness: float = 4.0
    modes: List[AnalyticMode] = field(default_factory=list)  # empty = the built-in modes (DEFAULT_MODES)
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        check(self.image_size >= 4, "prior.image_size", self.image_size, "is too small", "use 8, 16 or 32")
        check(self.component_std > 0, "prior.component_std", self.component_std, "must be > 0", "use e.g. 0.15")
        check(self.prompt_sharpness >= 0, "prior.prompt_sharpness", self.prompt_sharpness,
               "must be >= 0 (log-weight added per matched keyword)", "use 4.0")
        check(0 < self.beta_start < self.beta_end < 1, "prior.beta_start", self.beta_start,
               f"must satisfy 0 < beta_start < prior.beta_end = {self.beta_end} < 1", "use 0.00085 and 0.012 (SD 2.1)")
        check(self.num_train_timesteps >= 2, "prior.num_train_timesteps", self.num_train_timesteps, "must be >= 2", "use 1000")
        check_modes("prior.modes", self.modes)


@dataclass
class MVDreamPriorConfig(PriorConfig):
    """MVDream sd-v2.1-base-4view: multi-view, camera-conditioned SD 2.1 on diffusers (needs 3D views)."""

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
        check(bool(self.pretrained), "prior.pretrained", self.pretrained, "is empty",
               "give MVDream/MVDream, a checkpoint file, or a folder written by scripts/convert_mvdream.py")
        check(bool(self.base_model), "prior.base_model", self.base_model, "is empty",
               "give stabilityai/stable-diffusion-2-1-base or a local SD 2.1-base diffusers folder")
        check(self.filename is None or self.filename.endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors")),
               "prior.filename", self.filename, "is not a checkpoint file name",
               "use sd-v2.1-base-4view.pt, or null when prior.pretrained is a converted folder")
        check(self.num_frames >= 1, "prior.num_frames", self.num_frames, "must be >= 1", "use 4 (the released model)")
        check_seed(check, "prior.encode_seed", self.encode_seed)
        from rewardsds.priors.compiled import check_compile_mode

        check_compile_mode(self.compile_mode, self.compile, default="default")
        self.dtype = enum_option(DType, self.dtype, "prior.dtype")
