"""Stable Diffusion family prior on diffusers (SD 1.x / 2.x, epsilon- or v-prediction).

Loads the UNet, VAE, CLIP text encoder, tokenizer and the noise schedule from one Hub id or local folder
laid out like a diffusers pipeline (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``). Weights are
frozen, kept out of any ``nn.Module`` that the trainer sees, and run in ``dtype`` (fp16 by default on
CUDA, see :attr:`StableDiffusionPrior.AUTO_HALF`); guidance, schedule arithmetic and everything returned are fp32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds.errors import ConfigError, ModelLoadError, model_load_message
from rewardsds.priors.base import Prior
from rewardsds.priors.attention import attention_kernels
from rewardsds.priors.compiled import CompiledModule, resolve_compile
from rewardsds.priors.config import AttentionKernel, LookaheadQuantize, SDPriorConfig
from rewardsds.priors.quantized import check_float8_support, float8_copy
from rewardsds.utils.dtypes import grad_half, resolve_dtype
from rewardsds.utils.quiet import quiet_empty_fp32_keep_list, quiet_hub_symlink_argument
from rewardsds.utils.text import report_truncation

__all__ = ["load_pretrained", "load_clip_tokenizer", "resolve_dtype", "StableDiffusionPrior"]

log = logging.getLogger(__name__)
quiet_empty_fp32_keep_list()  # VSD's trainable UNet copy is cast to its dtype; SD modules keep nothing in fp32


def load_pretrained(what: str, source: str, key: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` (a ``from_pretrained``), with any failure to load turned into one actionable error.

    Missing repos, files and folders, an unreachable Hub and a cache without the files all raise a
    :class:`~rewardsds.errors.ModelLoadError` that names ``what`` is loaded, from ``source``, the cause, and the
    setting ``key`` that takes a local folder instead (with ``HF_HUB_OFFLINE=1`` for a filled cache).

    Args:
        what: the model in words ("Stable Diffusion prior").
        source: the Hub id or folder being read.
        key: the config key that takes a local path ("prior.pretrained").
        fn: the loader, e.g. ``UNet2DConditionModel.from_pretrained``.
        args, kwargs: passed to ``fn``.

    Returns:
        what ``fn`` returns.
    """
    quiet_hub_symlink_argument()  # diffusers' from_pretrained passes hf_hub_download an argument it ignores, and warns
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:  # HF raises OSError subclasses for missing repos/files
        raise ModelLoadError(model_load_message(what, source, err, key)) from err
    except Exception as err:  # network errors of huggingface_hub/httpx are not OSErrors
        if type(err).__module__.split(".")[0] in ("huggingface_hub", "requests", "httpx", "urllib3"):
            raise ModelLoadError(model_load_message(what, source, err, key)) from err
        raise


def load_clip_tokenizer(what: str, source: str, hint: str, **kwargs):
    """``CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")`` that refuses an empty vocabulary.

    transformers 5 returns a tokenizer holding only its special tokens (instead of raising) for a Hub id that
    is neither reachable nor cached; every prompt would then embed identically, silently.
    """
    from transformers import CLIPTokenizer

    tok = load_pretrained(what, source, hint, CLIPTokenizer.from_pretrained, source, subfolder="tokenizer", **kwargs)
    if set(tok.get_vocab()) <= set(tok.all_special_tokens):
        raise ModelLoadError(model_load_message(what, source, "its tokenizer has no vocabulary (not in the Hugging Face cache?)", hint))
    return tok


def _fp32_view_stays(device) -> None:
    raise RuntimeError("an fp32 view (Prior.fp32_view) moves with its prior: call to() on the prior, then ask it for the view again")


class StableDiffusionPrior(Prior):
    """A Stable Diffusion checkpoint as a frozen score-distillation prior.

    Args:
        cfg: the validated settings (:class:`~rewardsds.priors.config.SDPriorConfig`): where the weights come from
            (``pretrained``, ``revision``, ``variant``, ``local_files_only``), the weight ``dtype`` (resolved per
            device by :meth:`to`), the memory format, ``torch.compile`` and its cache, the float8 lookahead view,
            the tiny autoencoder, VAE slicing and posterior sampling.
    """

    name = "sd"
    #: what ``prior.dtype=auto`` means on CUDA. fp16, as SD's own half-precision releases run: its 10 mantissa bits
    #: keep the near-tied rewards of a step's candidates in the exact fp32 path's order more often than bf16's 7, at the
    #: same tensor-core rate (H100, 108 draws: both sets kept in 97.2% against 94.4%; ``scripts/benchmark.py --sections
    #: half``). A float8 lookahead keeps bf16 (:meth:`auto_half`), and a UNet that gradients flow through (VSD's LoRA)
    #: runs in bf16 beside an fp16 prior (:attr:`grad_dtype`). MVDream inherits it: its bf16 kept both sets in 88.9% of
    #: 36 draws (H100, one group of 4 views, ``--sections mvdream_agreement``), below the bar; its fp16 in 96.7% of 60
    #: draws with the stage's 8 views (H200).
    AUTO_HALF = torch.float16

    def __init__(self, cfg: SDPriorConfig):
        super().__init__()
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel

        self.cfg = cfg
        self.dtype = torch.float32  # resolved from cfg.dtype in to()
        source = cfg.pretrained
        common = dict(revision=cfg.revision, local_files_only=cfg.local_files_only)
        hint = "prior.pretrained"
        what = "Stable Diffusion prior"
        sched_cls = DDIMScheduler if cfg.scheduler == "ddim" else DDPMScheduler
        self.scheduler = load_pretrained(what, source, hint, sched_cls.from_pretrained, source, subfolder="scheduler", **common)
        self.tokenizer = load_clip_tokenizer(what, source, hint, **common)
        wkw = dict(common, variant=cfg.variant) if cfg.variant else common
        self.text_encoder = load_pretrained(what, source, hint, CLIPTextModel.from_pretrained, source, subfolder="text_encoder", **wkw)
        self.vae = load_pretrained(what, source, hint, AutoencoderKL.from_pretrained, source, subfolder="vae", **wkw)
        self.unet = load_pretrained(what, source, hint, UNet2DConditionModel.from_pretrained, source, subfolder="unet", **wkw)
        self.tiny_vae = self._load_tiny_vae(cfg.tiny_vae, cfg.local_files_only)
        self._setup_components()

    # ------------------------------------------------------------------ construction helpers
    def _setup_components(self) -> None:
        """Freeze modules and read shapes and the schedule (shared with subclasses such as MVDream)."""
        for m in self._modules():
            m.requires_grad_(False)
            m.eval()
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError("prior.pretrained", self.cfg.pretrained, f"has prediction_type {self.prediction_type!r}",
                              "use an epsilon- or v-prediction Stable Diffusion checkpoint")
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self._ac = self.scheduler.alphas_cumprod.detach().float().clone()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_channels = int(self.unet.config.in_channels)
        self.latent_size = int(self.unet.config.sample_size)
        self.image_size = self.latent_size * self.vae_scale_factor
        self._unet_call = self.unet
        self._decode_call = self._decode_eager  # decode_candidates without a gradient: compiled with the UNet
        self._ranking: Optional["StableDiffusionPrior"] = None
        self._fp32: Optional["StableDiffusionPrior"] = None  # the fp32 eager view (lookahead.fp32_below), built on first use
        self._fp32_modules: Optional[tuple] = None  # its UNet and VAE: fp32 copies of the weights as loaded
        self._wants_fp32 = False  # keep_fp32_view() was asked: to() keeps those copies before it casts
        self._rounded_to: Optional[torch.dtype] = None  # the dtype below fp32 the weights were cast to by a placement
        self._placed: Optional[tuple] = None  # (device, dtype) the UNet call and the ranking view were built for
        self._compile_here = False  # whether to() compiled the UNet and the decoder on the device it placed them on

    @staticmethod
    def _load_tiny_vae(source: Optional[str], local_files_only: bool):
        """The AutoencoderTiny (taesd) of ``prior.tiny_vae`` for cheap lookahead decodes, or None when unset."""
        if not source:
            return None
        from diffusers import AutoencoderTiny

        return load_pretrained("tiny autoencoder", source, "prior.tiny_vae", AutoencoderTiny.from_pretrained, source,
                               local_files_only=local_files_only)

    def _float8_ranking(self) -> bool:
        """Whether the lookahead ranks candidates with a float8 view of the UNet (``prior.lookahead_quantize``)."""
        return self.cfg.lookahead_quantize is LookaheadQuantize.float8

    def auto_half(self) -> torch.dtype:
        """The half precision that ``prior.dtype=auto`` resolves to on CUDA: :attr:`AUTO_HALF`, or bf16 for a float8
        lookahead (torchao quantises a bf16 UNet)."""
        return torch.bfloat16 if self._float8_ranking() else self.AUTO_HALF

    @property
    def grad_dtype(self) -> torch.dtype:
        """The dtype of a copy of this UNet that gradients flow through (VSD's LoRA): the prior's, with bf16 in place
        of fp16 (:func:`~rewardsds.utils.dtypes.grad_half`)."""
        return grad_half(self.dtype, self.device)

    def _modules(self) -> list[torch.nn.Module]:
        mods = [self.unet, self.vae, self.text_encoder]
        if self.tiny_vae is not None:
            mods.append(self.tiny_vae)
        return mods

    # ------------------------------------------------------------------ interface
    @property
    def alphas_cumprod(self) -> Tensor:
        return self._ac

    def to(self, device: torch.device | str) -> "StableDiffusionPrior":
        self.device = torch.device(device)
        self.dtype = resolve_dtype(self.cfg.dtype, self.device, half=self.auto_half())
        from diffusers.utils import logging as dlogging

        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()  # the whole frozen model is cast on purpose; no per-module fp32 keep-list applies
        try:
            if self._wants_fp32 and self._fp32_modules is None and self._needs_fp32_copies():
                self._take_fp32_copies()  # (before the cast below: the weights as loaded)
            for m in (self._fp32_modules or ()):
                m.to(self.device, torch.float32)
            for m in self._modules():
                # the text encoder runs once per prompt (cached): in fp32 its embeddings are the exact path's in any dtype
                m.to(self.device, torch.float32 if m is self.text_encoder else self.dtype)
        finally:
            dlogging.set_verbosity(level)
        if self.dtype != torch.float32:
            self._rounded_to = self.dtype
        if self.device.type == "cuda" and self.cfg.channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        self._ac = self._ac.to(self.device)
        placed = (self.device, self.dtype)
        if self._placed != placed:  # a second to() on the same device keeps the compiled graphs and the float8 view
            self._compile_here = self.compiles_on(self.device)  # decided (and warned about) once per placement
            if self.cfg.attention is not AttentionKernel.auto and self.device.type != "cuda":
                log.warning("prior.attention=%s on %s: torch's %s kernels run (the setting chooses among CUDA kernels)",
                            self.cfg.attention.value, self.device.type, self.device.type)
            self._unet_call = self._compiled(self.unet)
            self._decode_call = self._compiled(self._decode_eager, mode="default", static=True)
            self._fp32 = None  # (rebuilt on this device on first use; reset before the float8 view copies this prior)
            self._ranking = self._float8_view() if self._float8_ranking() else None
            self._placed = placed
        return self

    def compiles_on(self, device: torch.device | str) -> bool:
        """Whether the UNet is compiled on ``device`` (``auto``: CUDA only; the compiled path is CUDA graphs)."""
        device = torch.device(device)
        on = resolve_compile(self.cfg.compile, device)
        if on and device.type != "cuda":
            log.warning("prior.compile=true on %s: the UNet and the decoder stay eager (compiling is for CUDA); use prior.compile=auto",
                        device.type)
            return False
        return on

    def _compiled(self, module: Any, mode: Optional[str] = None, static: bool = False):
        """``module`` itself, or its :class:`CompiledModule` when this prior compiles on its device.

        Args:
            module: the UNet (or its float8 copy), or the VAE decode function.
            mode: torch.compile's mode; default ``prior.compile_mode``.
            static: one graph per input shape (see :class:`CompiledModule`).
        """
        if not self._compile_here:
            return module
        return CompiledModule(module, mode or self.cfg.compile_mode, self.cfg.compile_cache, static=static)

    def _float8_view(self) -> "StableDiffusionPrior":
        """A shallow copy of this prior whose UNet calls go to a float8 copy of the UNet (lookahead ranking only)."""
        check_float8_support(self.device, self.dtype)
        view = copy.copy(self)  # shares the text caches, the VAE, the schedule: only the UNet call differs
        view.unet_float8 = float8_copy(self.unet)
        view._unet_call = self._compiled(view.unet_float8)
        view._ranking = None
        return view

    def keep_fp32_view(self) -> None:
        """Keep the weights as loaded for :meth:`fp32_view`: asked before :meth:`to` casts them to ``prior.dtype``.

        :meth:`to` then keeps fp32 copies of the UNet and the VAE on the device beside the cast ones (SD2.1-base: about
        3.8 GB more), unless this prior runs eager in fp32 anyway.

        Asked after a placement that kept the weights in fp32 (a compiled fp32 prior), the copies are taken at once.

        Raises:
            RuntimeError: when a placement already cast the weights below fp32 (a copy of them would carry the rounding).
        """
        if self._fp32_modules is None and self._rounded_to is not None:
            raise RuntimeError(f"the {self.name} prior's weights were cast to {self._rounded_to} when it was placed: its fp32 "
                               "view (lookahead.fp32_below) needs them as loaded; call keep_fp32_view() before to()")
        self._wants_fp32 = True
        if self._placed is not None and self._fp32_modules is None and self._needs_fp32_copies():
            self._take_fp32_copies()
            for m in self._fp32_modules:
                m.to(self.device, torch.float32)

    def _take_fp32_copies(self) -> None:
        """fp32, channels-first copies of the UNet and the VAE as they are now (frozen, in eval mode)."""
        self._fp32_modules = tuple(copy.deepcopy(m).to(dtype=torch.float32, memory_format=torch.contiguous_format)
                                   for m in (self.unet, self.vae))
        self._fp32 = None

    def _needs_fp32_copies(self) -> bool:
        """Whether this placement computes in anything but eager fp32 (then the fp32 view needs its own modules)."""
        return self.dtype != torch.float32 or (resolve_compile(self.cfg.compile, self.device) and self.device.type == "cuda")

    def fp32_view(self) -> "StableDiffusionPrior":
        """This prior computing in fp32, eager and channels-first, with the weights as loaded: the exact path's
        arithmetic, for the lookahead calls and decodes of candidates that must rank as the exact path ranks them
        (``lookahead.fp32_below``).

        This prior itself where it already runs eager in fp32 (the CPU, or ``prior.dtype=fp32 prior.compile=false``);
        otherwise a shallow copy (sharing the text encoder, its caches and the schedule) whose UNet and VAE are the fp32
        copies :meth:`keep_fp32_view` asked :meth:`to` to keep.
        """
        if self.dtype == torch.float32 and not self._compile_here:
            return self
        if self._fp32 is None:
            if self._fp32_modules is None:
                raise RuntimeError(f"the {self.name} prior computes in {self.dtype} and kept no fp32 weights: call "
                                   "keep_fp32_view() before to() (the candidate engine does, for lookahead.fp32_below > 0)")
            view = copy.copy(self)
            view.unet, view.vae = self._fp32_modules
            view.dtype = torch.float32
            view.cfg = copy.copy(self.cfg)
            view.cfg.channels_last = False
            view._unet_call, view._decode_call = view.unet, view._decode_eager
            view._ranking, view._fp32, view._compile_here = None, view, False
            view.to = _fp32_view_stays  # its modules are this prior's copies: they move when this prior does
            self._fp32 = view
        return self._fp32

    def ranking_prior(self) -> "StableDiffusionPrior":
        """The prior whose predictions the lookahead uses to rank candidates: the float8 view or this prior."""
        return self if self._ranking is None else self._ranking

    def _encode_text_uncached(self, prompts: Sequence[str]) -> Tensor:
        for p in prompts:
            report_truncation(self.tokenizer, p, self.tokenizer.model_max_length, "the prior's text encoder")
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].float()

    def encode_images(self, images: Float[Tensor, "b 3 H W"], generator: Optional[torch.Generator] = None) -> Tensor:
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x * 2 - 1).to(self.dtype)
        if self.device.type == "cuda" and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if self.cfg.encode_sample else dist.mean
        return z.float().contiguous() * self.scaling_factor

    def decode_latents(self, latents: Float[Tensor, "b c h w"], tiny: bool = False) -> Tensor:
        return self._decode(latents, tiny, self._decode_eager)

    def decode_candidates(self, latents: Float[Tensor, "b c h w"], tiny: bool = False) -> Tensor:
        """The candidates' decode: through the compiled decoder (one graph per candidate batch) where the UNet is
        compiled and no gradient is taken; eager otherwise. Other decodes (logging, exports: other batch sizes,
        once in a while) stay eager, so they never wait for a compile."""
        return self._decode(latents, tiny, self._decode_eager if torch.is_grad_enabled() else self._decode_call)

    def _decode(self, latents: Tensor, tiny: bool, decode) -> Tensor:
        z = latents.float() / self.scaling_factor
        if tiny:
            if self.tiny_vae is None:
                raise ConfigError("lookahead.decode", "tiny", "needs a tiny autoencoder", "set prior.tiny_vae=madebyollin/taesd (or a local folder)")
            # taesd decodes unscaled latents to [0, 1] directly in diffusers' AutoencoderTiny ([-1, 1] output)
            img = self.tiny_vae.decode(latents.to(self.dtype)).sample.float()
            return ((img + 1) / 2).clamp(0, 1)
        z = z.to(self.dtype)
        if self.cfg.vae_slicing and z.shape[0] > 1:
            img = torch.cat([decode(zi[None]) for zi in z])
        else:
            img = decode(z)
        return ((img.float() + 1) / 2).clamp(0, 1).contiguous()

    def _decode_eager(self, z: Tensor) -> Tensor:
        """The VAE's decode of scaled-back latents in the prior's dtype to [-1, 1] images (what gets compiled)."""
        return self.vae.decode(z).sample

    def predict_noise(
        self,
        x_t: Float[Tensor, "b c h w"],
        t: Int[Tensor, "b"],
        text: Float[Tensor, "b l d"],
        camera: Optional[Tensor] = None,
    ) -> Float[Tensor, "b c h w"]:
        x = x_t.to(self.dtype)
        if self.device.type == "cuda" and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # fp32 in the standard (NCHW-contiguous) layout whatever the UNet ran in (channels_last on CUDA)
        with attention_kernels(self.cfg.attention, self.device):
            out = self._unet_call(x, t.to(self.device), encoder_hidden_states=text.to(self.dtype)).sample.float().contiguous()
        if self.prediction_type == "v_prediction":
            a, s = self.alpha_sigma(t)
            out = a * out + s * x_t.float()  # v = a eps - s x0  =>  eps = a v + s x_t
        return out

    def trainable_copy(self) -> torch.nn.Module:
        """A deep copy of the UNet on the prior's device in :attr:`grad_dtype`, frozen, sharing no tensor with the prior.

        A loss mode adapts the copy (VSD's LoRA) while the prior's own UNet stays the frozen pretrained model. Its
        backward pass runs in the copy's dtype: bf16 beside an fp16 prior, whose range would underflow it.
        """
        unet = copy.deepcopy(self.unet).to(dtype=self.grad_dtype)
        unet.requires_grad_(False)
        return unet

    @contextlib.contextmanager
    def inference(self):
        """No-grad context for frozen evaluations (kept as a method so subclasses can add autocast)."""
        with torch.no_grad():
            yield
