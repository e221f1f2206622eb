"""Config schemas of the priors (``conf/prior/*.yaml``), beside the classes they configure. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import MISSING

from rewardsds.errors import ConfigError, check_seed
from rewardsds.schema import DType, check, enum_option


class AttentionKernel(str, Enum):
    """Which fused kernel torch's scaled_dot_product_attention tries first in the UNet's attention (CUDA)."""

    auto = "auto"  # torch's own order (flash, memory-efficient, math, cuDNN)
    flash = "flash"  # FlashAttention
    efficient = "efficient"  # memory-efficient attention
    cudnn = "cudnn"  # cuDNN's fused attention
    math = "math"  # the unfused reference (slow; for checking)


class LookaheadQuantize(str, Enum):
    none = "none"  # every lookahead call runs the prior's UNet in prior.dtype
    float8 = "float8"  # the lookahead's ranking calls use a float8 copy of the UNet's linear layers (torchao, CUDA >= 8.9)


# ----------------------------------------------------------------------------------------- torch.compile settings
#: accepted values of ``prior.compile_mode`` (torch.compile's modes)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: ``prior.compile_mode`` of the Stable Diffusion prior when nothing is set: CUDA graphs of the candidate batches
DEFAULT_COMPILE_MODE = "reduce-overhead"
#: accepted spellings of ``prior.compile``
_COMPILE_WORDS = {"auto": "auto", "true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}


def normalize_compile(value: Any, key: str = "prior.compile") -> bool | str:
    """``prior.compile`` as ``True``, ``False`` or ``"auto"``; anything else is a ConfigError naming ``key``."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _COMPILE_WORDS:
        return _COMPILE_WORDS[word]
    raise ConfigError(key, value, "is not a compile setting", "use auto (on for CUDA, off on CPU), true or false")


def check_compile_mode(mode: str, compile: Any = True) -> str:
    """Return ``mode`` if torch.compile knows it, else a ConfigError naming ``prior.compile_mode``.

    A mode other than the default (:data:`DEFAULT_COMPILE_MODE`) together with ``prior.compile=false`` is an error
    too: the mode would silently do nothing (with ``auto`` it applies whenever the device compiles).
    """
    if mode not in COMPILE_MODES:
        raise ConfigError("prior.compile_mode", mode, "is not a torch.compile mode",
                          f"use one of {', '.join(COMPILE_MODES)} (reduce-overhead replays CUDA graphs)")
    if mode != DEFAULT_COMPILE_MODE and normalize_compile(compile) is False:
        raise ConfigError("prior.compile_mode", mode, "has no effect while prior.compile=false",
                          "set prior.compile=auto or true (or drop prior.compile_mode)")
    return mode


@dataclass
class PriorConfig:
    _target_: str = MISSING


@dataclass
class SDPriorConfig(PriorConfig):
    """Stable Diffusion family through diffusers (SD 1.x/2.x; v- or epsilon-prediction)."""

    pretrained: str = "stabilityai/stable-diffusion-2-1-base"
    revision: Optional[str] = None
    variant: Optional[str] = None  # e.g. "fp16" to download the half-precision files
    # auto = fp16 on CUDA (bf16 with lookahead_quantize=float8; VSD's LoRA copy trains in bf16), fp32 on CPU;
    # guidance arithmetic is always fp32
    dtype: DType = DType.auto
    scheduler: str = "ddim"  # ddim | ddpm: only the noise schedule is read from it
    local_files_only: bool = False  # never touch the network (a filled cache or a local folder is required)
    channels_last: bool = True  # channels-last memory format for the UNet and VAE on CUDA
    # torch.compile the UNet on first use: auto (on for CUDA, off on CPU) | true | false
    compile: Any = "auto"
    # reduce-overhead: CUDA graphs of the fixed-shape candidate batches | default (Inductor kernels only) | max-autotune
    # | max-autotune-no-cudagraphs (see rewardsds.priors.compiled)
    compile_mode: str = DEFAULT_COMPILE_MODE
    # where compiled kernels persist across runs and sweep jobs: auto ($TORCHINDUCTOR_CACHE_DIR or
    # ~/.cache/rewardsds/torchinductor) | torch (torch's default under /tmp) | a folder
    compile_cache: str = "auto"
    # the UNet's attention kernel tried first on CUDA: auto (torch's order) | flash | efficient | cudnn | math; a kernel
    # that cannot take a call's shapes falls back to the next in torch's order
    attention: AttentionKernel = AttentionKernel.auto
    # none | float8: the lookahead ranks candidates with a float8 copy of the UNet's linear layers (torchao, GPU >= sm89);
    # the prediction at t that the loss uses stays in dtype (see rewardsds.priors.quantized)
    lookahead_quantize: LookaheadQuantize = LookaheadQuantize.none
    tiny_vae: Optional[str] = None  # a taesd-style AutoencoderTiny id/path for cheap lookahead decodes
    vae_slicing: bool = False  # decode one image at a time (bounds VAE memory for large candidate batches)
    encode_sample: bool = False  # encode renders with a posterior sample (threestudio) instead of the mean

    def __post_init__(self) -> None:
        check(bool(self.pretrained), "prior.pretrained", self.pretrained, "is empty",
               "give a Hub id such as stabilityai/stable-diffusion-2-1-base or a local folder")
        check(self.scheduler in ("ddim", "ddpm"), "prior.scheduler", self.scheduler, "is not supported",
               "use ddim or ddpm (only the noise schedule is read)")
        self.dtype = enum_option(DType, self.dtype, "prior.dtype")
        self.compile = normalize_compile(self.compile)
        check_compile_mode(self.compile_mode, self.compile)
        check(bool(str(self.compile_cache).strip()), "prior.compile_cache", self.compile_cache, "is empty",
               "use auto, torch or a folder")
        self.lookahead_quantize = enum_option(LookaheadQuantize, self.lookahead_quantize, "prior.lookahead_quantize")
        self.attention = enum_option(AttentionKernel, self.attention, "prior.attention")


#: the patterns a mode's mean image can have (drawn by :func:`rewardsds.priors.analytic.mode_image`)
PATTERNS = ("solid", "disk", "square", "stripes", "checker")


@dataclass
class AnalyticMode:
    """One named mode of the analytic Gaussian-mixture prior: a mean image built from colour + pattern."""

    name: str = MISSING
    keywords: List[str] = field(default_factory=list)  # empty = the name split at "_" (blue_disk: blue, disk)
    color: List[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])  # RGB in [0, 1] where the pattern is on
    background: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # RGB in [0, 1] elsewhere
    pattern: str = "solid"  # solid | disk | square | stripes | checker


#: The built-in modes of the analytic prior and reward (``modes: []``); conf/prior/analytic.yaml lists the same
#: modes so that users can see and edit them.
DEFAULT_MODES: tuple[AnalyticMode, ...] = (
    AnalyticMode(name="red_disk", color=[0.9, 0.1, 0.1], background=[0.1, 0.1, 0.1], pattern="disk"),
    AnalyticMode(name="blue_disk", color=[0.1, 0.2, 0.9], background=[0.1, 0.1, 0.1], pattern="disk"),
    AnalyticMode(name="green_square", color=[0.1, 0.8, 0.2], background=[0.1, 0.1, 0.1], pattern="square"),
    AnalyticMode(name="blue_square", color=[0.1, 0.2, 0.9], background=[0.9, 0.9, 0.9], pattern="square"),
    AnalyticMode(name="yellow_stripes", color=[0.9, 0.85, 0.1], background=[0.1, 0.1, 0.1], pattern="stripes"),
    AnalyticMode(name="purple_checker", color=[0.6, 0.1, 0.7], background=[0.9, 0.9, 0.9], pattern="checker"),
)


def mode_keywords(mode: AnalyticMode) -> list[str]:
    """The lower-case words of a prompt that select ``mode``: its ``keywords``, else its name split at "_"."""
    return [k.lower() for k in (list(mode.keywords) or str(mode.name).split("_"))]


def modes_or_default(modes: List[AnalyticMode]) -> list[AnalyticMode]:
    """``modes``, or :data:`DEFAULT_MODES` when the list is empty."""
    return list(modes) or list(DEFAULT_MODES)


def check_modes(key: str, modes: List[AnalyticMode]) -> None:
    """Unique names, colours of 3 values in [0, 1] and known patterns (``key``: the setting, e.g. ``prior.modes``)."""
    names = [m.name for m in modes]
    check(len(set(names)) == len(names), key, names, "has duplicate names", "give each mode a unique name")
    for m in modes:
        for part in ("color", "background"):
            rgb = list(getattr(m, part))
            check(len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb), f"{key}[{m.name}].{part}", rgb,
                   "needs 3 values in [0, 1] (red, green, blue)", "use e.g. [0.1, 0.2, 0.9]")
        check(m.pattern in PATTERNS, f"{key}[{m.name}].pattern", m.pattern, "is not a known pattern", "use one of: " + ", ".join(PATTERNS))


@dataclass
class AnalyticPriorConfig(PriorConfig):
    """Gaussian mixture over small images with an exact noise prediction (offline demo, algorithm tests)."""

    image_size: int = 16  # side of the images (the prior's "latent" is the image in [-1, 1])
    component_std: float = 0.15  # per-pixel std of each mixture component (in [-1, 1] units)
    prompt_sharpness: float = 4.0  # log-weight added per keyword of a mode found in the prompt
    modes: List[AnalyticMode] = field(default_factory=list)  # empty = the built-in modes (DEFAULT_MODES)
    # the "scaled_linear" noise schedule of SD 2.1
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

    # Hub repo, .pt/.safetensors file, folder holding `filename`, or a folder written by scripts/convert_mvdream.py
    pretrained: str = "MVDream/MVDream"
    # inside a Hub repo/folder; ignored for converted folders; null: a diffusers-layout Hub repo
    filename: Optional[str] = "sd-v2.1-base-4view.pt"
    original_config: Optional[str] = None  # ldm yaml of a non-default checkpoint (null: sd-v2.1-base-4view)
    base_model: str = "stabilityai/stable-diffusion-2-1-base"  # tokenizer, text encoder and VAE (MVDream kept them frozen)
    # true: text encoder + VAE weights from the MVDream checkpoint (or a converted folder's text_encoder/ and vae/),
    # architecture from base_model's configs
    vae_text_from_checkpoint: bool = False
    num_frames: int = 4  # views per object in the joint self-attention (4 for the released model)
    dtype: DType = DType.auto  # auto = fp16 on CUDA (StableDiffusionPrior.AUTO_HALF), fp32 on CPU; guidance arithmetic is always fp32
    encode_sample: bool = True  # VAE posterior sample as threestudio-mvdream (false: posterior mean)
    # seed of the prior's own generator for that sample (reset by to()), so the draw does not depend on how much of
    # the global random stream other components used: strategies compared on one seed see the same latents
    encode_seed: int = 0
    local_files_only: bool = False  # never touch the network
    channels_last: bool = True  # channels-last memory format for the UNet and VAE on CUDA
    # torch.compile the UNet and the candidates' decoder on first use: auto (on for CUDA, off on CPU) | true | false.
    # The first run on a machine compiles (about 2.5 minutes for mvdream_nerf on an H200), later runs load the cache
    compile: Any = "auto"
    # reduce-overhead: CUDA graphs of the fixed-shape candidate batches | default (Inductor kernels only) | max-autotune
    # | max-autotune-no-cudagraphs (see rewardsds.priors.compiled)
    compile_mode: str = DEFAULT_COMPILE_MODE
    # persistent kernels: auto ($TORCHINDUCTOR_CACHE_DIR or ~/.cache/rewardsds/torchinductor) | torch | a folder
    compile_cache: str = "auto"
    attention: AttentionKernel = AttentionKernel.auto  # the UNet's attention kernel tried first on CUDA (as prior=sd)
    tiny_vae: Optional[str] = None  # a taesd-style AutoencoderTiny id/path for cheap lookahead decodes
    vae_slicing: bool = False  # decode one image at a time

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
        self.compile = normalize_compile(self.compile)
        check_compile_mode(self.compile_mode, self.compile)
        self.dtype = enum_option(DType, self.dtype, "prior.dtype")
        self.attention = enum_option(AttentionKernel, self.attention, "prior.attention")
