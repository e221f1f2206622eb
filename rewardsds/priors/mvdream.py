"""MVDream (Shi et al. 2023, arXiv 2308.16512): a multi-view, camera-conditioned SD 2.1 prior on diffusers.

The original ``MultiViewUNetModel`` is the SD 2.x UNet with two additions, both reproduced here on a
stock ``diffusers.UNet2DConditionModel``:

1. a camera MLP whose output is added to the timestep embedding: diffusers' ``"projection"`` class
   embedding, fed the 16-float camera as ``class_labels`` (:func:`camera_condition`);
2. self-attention (``attn1``) of every transformer block running jointly over the ``num_frames`` views
   of one object: :class:`MultiViewAttnProcessor`, installed on all ``attn1`` processors. Cross-
   attention (``attn2``) stays per view.

Batches are object-major: index = object * num_frames + view, so consecutive samples form one object.

Camera convention: MVDream's "blender" world is z-up with OpenGL camera axes, which is the project's
convention (rewardsds.cameras), so a project c2w is conditioning after :func:`normalize_camera`.
MVDream's own :func:`get_camera` puts azimuth 0 on -y: its azimuth equals the project's + 90 degrees.

The guidance step of threestudio-mvdream (CFG 50 with the negative prompt as the unconditional branch and
an x0-reconstruction target with std rescale per object) is ``loss=sds loss.target=x0_recon``, built on
:func:`rewardsds.losses.sds.x0_recon_target`; ``tests/test_mvdream.py`` checks it against the original.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds.errors import ConfigError, ModelLoadError
from rewardsds.priors import mvdream_convert as mvc
from rewardsds.priors.attention import attention_kernels
from rewardsds.priors.base import Prior
from rewardsds.priors.config import MVDreamPriorConfig
from rewardsds.priors.sd import StableDiffusionPrior, load_clip_tokenizer, load_pretrained

__all__ = [
    "normalize_camera", "convert_opengl_to_blender", "get_camera", "camera_condition",
    "MultiViewAttnProcessor", "set_multiview_attention", "multiview_num_frames", "multiview_unet_forward",
    "ldm_linear_alphas_cumprod", "MVDreamPrior",
]


# ----------------------------------------------------------------------------------------- cameras
def normalize_camera(c2w: Float[Tensor, "b 4 4"] | Float[Tensor, "b 16"]) -> Float[Tensor, "b 16"]:
    """Scale each camera's translation to unit length and flatten row-major (MVDream's ``normalize_camera``).

    Unlike the original, which writes the normalised translation back into its argument, this returns a
    new tensor and leaves ``c2w`` untouched. Rotation is kept as is; distance (and with it the field of
    view, which MVDream never sees) is dropped, which threestudio calls ``camera_condition_type="rotation"``.

    Args:
        c2w: camera-to-world matrices [b, 4, 4] (or already flattened [b, 16]), any float dtype.

    Returns:
        [b, 16] in the input's dtype.
    """
    m = c2w.reshape(-1, 4, 4)
    t = m[:, :3, 3:]
    t = t / (torch.linalg.vector_norm(t, dim=1, keepdim=True) + 1e-8)
    top = torch.cat([m[:, :3, :3], t], dim=2)
    return torch.cat([top, m[:, 3:, :]], dim=1).reshape(-1, 16)


def convert_opengl_to_blender(c2w: Float[Tensor, "*b 4 4"]) -> Float[Tensor, "*b 4 4"]:
    """Rotate a y-up (OpenGL) world to MVDream's z-up "blender" world: (x, y, z) -> (x, -z, y).

    Only the world frame changes; camera-local axes stay OpenGL.

    Args:
        c2w: [..., 4, 4].

    Returns:
        ``flip_yz @ c2w`` with the same shape and dtype.
    """
    flip_yz = torch.tensor(
        [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=c2w.dtype, device=c2w.device
    )
    return flip_yz @ c2w


def _opengl_orbit_c2w(elevation_deg: Tensor, azimuth_deg: Tensor) -> Float[Tensor, "n 4 4"]:
    """MVDream's ``create_camera_to_world_matrix``: unit-sphere cameras in a y-up world looking at the origin."""
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    pos = torch.stack([torch.cos(e) * torch.sin(a), torch.sin(e), torch.cos(e) * torch.cos(a)], -1)
    forward = F.normalize(-pos, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=pos.dtype).expand_as(pos)
    right = F.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    new_up = F.normalize(torch.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.eye(4, dtype=pos.dtype).repeat(pos.shape[0], 1, 1)
    c2w[:, :3, :3] = torch.stack([right, new_up, -forward], dim=-1)
    c2w[:, :3, 3] = pos
    return c2w


def get_camera(
    num_frames: int,
    elevation: float = 15.0,
    azimuth_start: float = 0.0,
    azimuth_span: float = 360.0,
    blender_coord: bool = True,
) -> Float[Tensor, "n 16"]:
    """MVDream's ``get_camera``: ``num_frames`` views evenly spaced in azimuth at one elevation.

    Computed in float64 like the original (numpy) and returned as float32. Azimuth 0 is on MVDream's
    +z (OpenGL) / -y (blender) axis, i.e. MVDream azimuth = project azimuth + 90 degrees.

    Args:
        num_frames: number of views.
        elevation: degrees above the horizon.
        azimuth_start: azimuth of the first view in degrees (MVDream's t2i uses 90).
        azimuth_span: the views cover [start, start + span).
        blender_coord: return the z-up "blender" world (what the UNet was trained on).

    Returns:
        Row-major flattened c2w [num_frames, 16], float32.
    """
    step = azimuth_span / num_frames
    azimuths = torch.tensor([azimuth_start + i * step for i in range(num_frames)], dtype=torch.float64)
    c2w = _opengl_orbit_c2w(torch.full_like(azimuths, float(elevation)), azimuths)
    if blender_coord:
        c2w = convert_opengl_to_blender(c2w)
    return c2w.reshape(num_frames, 16).float()


def camera_condition(c2w: Float[Tensor, "b 4 4"]) -> Float[Tensor, "b 16"]:
    """The MVDream conditioning vector of project cameras (rewardsds.cameras convention).

    The project's world is z-up with OpenGL camera axes and azimuth 0 on +x, which is threestudio's
    convention and MVDream's "blender" world, so no axis change is needed: the c2w is normalised
    (unit-length translation) and flattened row-major, as threestudio-mvdream does.

    Args:
        c2w: camera-to-world [b, 4, 4].

    Returns:
        float32 [b, 16].
    """
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(
            f"camera has shape {tuple(c2w.shape)}; the MVDream prior needs camera-to-world matrices [b, 4, 4] "
            "(Cameras.c2w), one per view"
        )
    return normalize_camera(c2w.float())


# ----------------------------------------------------------------------------------------- joint attention
class MultiViewAttnProcessor:
    """Self-attention over all views of an object: (b f) l c -> b (f l) c, fused SDPA, then back.

    MVDream's ``BasicTransformerBlock3D`` rearranges before ``attn1`` and back after it; norm1 and the
    residual act per token, so doing the rearrange inside the processor is exact. ``num_frames`` lives on
    the processor (not in ``cross_attention_kwargs``, which would also reach the attn2 processors).

    Args:
        num_frames: views per object; consecutive batch entries form one object.
    """

    def __init__(self, num_frames: int = 4) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames = {num_frames} must be >= 1")
        self.num_frames = num_frames

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None, **kwargs) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor is a self-attention (attn1) processor: it takes neither "
                             "encoder_hidden_states nor an attention mask")
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection \
                or hidden_states.dim() != 3:
            raise ValueError("MultiViewAttnProcessor supports the transformer-block attention of SD-style UNets "
                             "(3-D input, no group/spatial norm, no residual inside the attention)")
        bf, length, channels = hidden_states.shape
        f = self.num_frames
        if bf % f:
            raise ValueError(f"batch {bf} is not a multiple of num_frames = {f}: MVDream denoises the views of "
                             "an object together, so pass whole objects (index = object * num_frames + view)")
        x = hidden_states.reshape(bf // f, f * length, channels)
        b, heads = x.shape[0], attn.heads
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = k.shape[-1] // heads
        q, k, v = (y.view(b, -1, heads, head_dim).transpose(1, 2) for y in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False, scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, -1, heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out.reshape(bf, length, -1) / attn.rescale_output_factor


def set_multiview_attention(unet, num_frames: int) -> MultiViewAttnProcessor:
    """Install one shared :class:`MultiViewAttnProcessor` on every ``attn1`` of ``unet`` (attn2 untouched).

    Calling it again only changes ``num_frames`` of the processor already installed.

    Args:
        unet: a ``UNet2DConditionModel``.
        num_frames: views per object (1 = plain per-view SD self-attention with MVDream weights).

    Returns:
        The shared processor.
    """
    procs = unet.attn_processors
    self_attn = [n for n in procs if n.endswith("attn1.processor")]
    if not self_attn:
        raise ValueError("the UNet has no attn1 (self-attention) processors to make multi-view")
    current = {id(procs[n]) for n in self_attn}
    first = procs[self_attn[0]]
    if len(current) == 1 and isinstance(first, MultiViewAttnProcessor):
        first.num_frames = num_frames
        return first
    shared = MultiViewAttnProcessor(num_frames)
    unet.set_attn_processor({n: (shared if n in self_attn else p) for n, p in procs.items()})
    return shared


def multiview_num_frames(unet) -> int:
    """``num_frames`` of the installed multi-view processor (1 when none is installed)."""
    procs = [p for n, p in unet.attn_processors.items() if n.endswith("attn1.processor")]
    frames = {p.num_frames if isinstance(p, MultiViewAttnProcessor) else 1 for p in procs}
    if len(frames) != 1:
        raise RuntimeError(f"attn1 processors disagree on num_frames: {sorted(frames)}")
    return frames.pop()


@contextlib.contextmanager
def _without_class_embedding(unet) -> Iterator[None]:
    # diffusers raises when a class embedding exists but class_labels is None; MVDream's camera=None
    # path simply skips camera_embed, so detach the module for the duration of the call.
    saved = unet.class_embedding
    unet.class_embedding = None
    try:
        yield
    finally:
        unet.class_embedding = saved


def multiview_unet_forward(
    unet,
    x_t: Float[Tensor, "b c h w"],
    t: Int[Tensor, "b"],
    context: Float[Tensor, "b l d"],
    camera: Optional[Float[Tensor, "b 16"]] = None,
    call=None,
) -> Float[Tensor, "b c h w"]:
    """One MVDream UNet evaluation (the original ``apply_model``), in the UNet's dtype.

    Args:
        unet: a ``UNet2DConditionModel`` with :func:`set_multiview_attention` applied.
        x_t: noisy latents [b, c, h, w]; b a multiple of the processor's num_frames, object-major.
        t: per-sample timesteps [b].
        context: text embeddings [b, l, d].
        camera: the 16-float conditioning [b, 16] (:func:`camera_condition`), or None to skip the camera
            MLP (MVDream's ``camera=None``).
        call: what to call instead of ``unet`` (its ``torch.compile`` wrapper); ``unet`` itself is what the
            camera-free path modifies.

    Returns:
        epsilon prediction [b, c, h, w] in the UNet's dtype.
    """
    fn = unet if call is None else call
    dtype = unet.dtype
    x_t, context = x_t.to(dtype), context.to(dtype)
    if camera is None:
        with _without_class_embedding(unet):
            return fn(x_t, t, encoder_hidden_states=context, return_dict=False)[0]
    return fn(x_t, t, encoder_hidden_states=context, class_labels=camera.to(dtype), return_dict=False)[0]


# ----------------------------------------------------------------------------------------- schedule
def ldm_linear_alphas_cumprod(
    linear_start: float = 0.00085, linear_end: float = 0.012, num_timesteps: int = 1000
) -> Float[Tensor, "T"]:
    """The ldm "linear" schedule MVDream was trained with, computed in float64 and returned as float32.

    ``betas = linspace(sqrt(start), sqrt(end), T) ** 2`` (diffusers' "scaled_linear"); diffusers builds it
    in float32, which moves alphas_cumprod by up to 5e-7, so the original float64 route is kept.
    """
    betas = torch.linspace(math.sqrt(linear_start), math.sqrt(linear_end), num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


# ----------------------------------------------------------------------------------------- the prior
class MVDreamPrior(StableDiffusionPrior):
    """MVDream ``sd-v2.1-base-4view`` as a frozen multi-view, camera-conditioned prior.

    The UNet comes from the original checkpoint (converted on load) or from a folder written once by
    ``scripts/convert_mvdream.py`` (no conversion). Tokenizer, text encoder and VAE are SD 2.1-base's
    (``base_model``), which MVDream kept frozen in training, or on request the copies stored in the
    checkpoint. Everything else (text cache, VAE encode/decode, dtype and device handling, schedule
    arithmetic) is the Stable Diffusion prior's.

    ``predict_noise`` takes object-major batches (b a multiple of ``num_frames``) with the project's
    c2w cameras; the views of an object attend to each other in every self-attention layer.

    Args:
        cfg: the validated settings (:class:`~rewardsds.priors.config.MVDreamPriorConfig`): where the UNet comes from
            (``pretrained``: a converted folder, an original checkpoint file, a folder holding ``filename``, or a
            Hub repo; ``original_config`` for a non-default checkpoint), ``base_model`` for tokenizer, text encoder
            and VAE (or ``vae_text_from_checkpoint``), ``num_frames``, the weight ``dtype``, the VAE posterior
            sample and its ``encode_seed``, and the settings shared with the Stable Diffusion prior.
    """

    name = "mvdream"
    uses_camera = True

    def __init__(self, cfg: MVDreamPriorConfig):
        Prior.__init__(self)  # the Stable Diffusion constructor would load an SD UNet from base_model
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        self.cfg = cfg
        self.dtype = torch.float32  # resolved from cfg.dtype in to()
        base_model, from_checkpoint = cfg.base_model, cfg.vae_text_from_checkpoint
        base = dict(local_files_only=cfg.local_files_only)
        what, hint = "SD 2.1-base components of the MVDream prior", "prior.base_model"
        # The base model is read before the (5 GB) checkpoint so that a wrong base_model fails fast.
        self.tokenizer = load_clip_tokenizer(what, base_model, hint, **base)
        if not from_checkpoint:
            self.text_encoder = load_pretrained(what, base_model, hint, CLIPTextModel.from_pretrained, base_model,
                                                subfolder="text_encoder", **base)
            self.vae = load_pretrained(what, base_model, hint, AutoencoderKL.from_pretrained, base_model,
                                       subfolder="vae", **base)

        kind, location = mvc.resolve_source(cfg.pretrained, cfg.filename, cfg.local_files_only)
        state_dict = None
        if kind == "folder":
            self.unet = load_pretrained("MVDream prior", location, "prior.pretrained", UNet2DConditionModel.from_pretrained,
                                        location, subfolder="unet", **base)
            self.unet.eval().requires_grad_(False)
        else:
            state_dict = mvc.load_checkpoint(location)
            self.unet = mvc.unet_from_state_dict(state_dict, cfg.original_config, torch.float32, source=location)
        if self.unet.config.class_embed_type != "projection":
            raise ModelLoadError(f"the UNet from {location!r} has no camera embedding (class_embed_type = "
                                 f"{self.unet.config.class_embed_type!r}). Fix: point prior.pretrained at an MVDream "
                                 "checkpoint or a folder written by scripts/convert_mvdream.py")

        if from_checkpoint and state_dict is not None:
            text_cfg = load_pretrained(what, base_model, hint, CLIPTextConfig.from_pretrained, base_model,
                                       subfolder="text_encoder", **base)
            vae_cfg = load_pretrained(what, base_model, hint, AutoencoderKL.load_config, base_model, subfolder="vae", **base)
            self.vae = mvc.vae_from_state_dict(state_dict, vae_cfg)
            self.text_encoder = mvc.text_encoder_from_state_dict(state_dict, text_cfg)
        elif from_checkpoint:
            folder = Path(location)
            if not ((folder / "vae").is_dir() and (folder / "text_encoder").is_dir()):
                raise ConfigError("prior.vae_text_from_checkpoint", True,
                                  f"the converted folder {location!r} has no vae/ and text_encoder/",
                                  "convert with `scripts/convert_mvdream.py --vae-text BASE` or set "
                                  "prior.vae_text_from_checkpoint=false")
            self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **base)
            self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **base)
        del state_dict
        self._check_text_width(from_checkpoint)

        # MVDream ships no scheduler: the ldm training schedule (linear 0.00085..0.012, eps-prediction).
        self.scheduler = DDIMScheduler(
            num_train_timesteps=1000, beta_start=mvc.SD21_4VIEW_LINEAR_START, beta_end=mvc.SD21_4VIEW_LINEAR_END,
            beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
            steps_offset=1,
        )
        self.tiny_vae = self._load_tiny_vae(cfg.tiny_vae, cfg.local_files_only)
        self._setup_components()
        # exact float64 ldm schedule instead of diffusers' float32 one (they differ by up to 5e-7)
        self._ac = ldm_linear_alphas_cumprod(mvc.SD21_4VIEW_LINEAR_START, mvc.SD21_4VIEW_LINEAR_END,
                                             self.num_train_timesteps)
        set_multiview_attention(self.unet, self.num_frames)
        self._encode_generator = torch.Generator("cpu").manual_seed(cfg.encode_seed)

    @property
    def num_frames(self) -> int:
        """Views per object in the joint self-attention (``prior.num_frames``)."""
        return self.cfg.num_frames

    def _float8_ranking(self) -> bool:
        return False  # the float8 ranking view is built for the Stable Diffusion prior only (no lookahead_quantize)

    def _check_text_width(self, from_checkpoint: bool) -> None:
        """The text encoder's width must be the UNet's cross-attention width, or the first step fails in a matmul.

        Tokenizer and text encoder come from ``base_model`` (or the checkpoint), the UNet from ``pretrained``, so a
        base model of another family (SD 1.5: 768 wide; MVDream's UNet attends to 1024) is only caught here.
        """
        text = int(self.text_encoder.config.hidden_size)
        cross = self.unet.config.cross_attention_dim
        widths = {int(c) for c in cross} if isinstance(cross, (list, tuple)) else {int(cross)}
        if widths == {text}:
            return
        unet = "/".join(str(w) for w in sorted(widths))
        key, value = ("prior.pretrained", self.cfg.pretrained) if from_checkpoint else ("prior.base_model", self.cfg.base_model)
        raise ConfigError(
            key, value,
            f"gives a text encoder {text} wide, but the MVDream UNet from prior.pretrained = {self.cfg.pretrained!r} attends to "
            f"text embeddings {unet} wide",
            f"use the SD 2.1-base text encoder ({unet} wide for this UNet; 1024 for sd-v2.1-base-4view): "
            "prior.base_model=stabilityai/stable-diffusion-2-1-base (or its local folder), or take the checkpoint's own with "
            "prior.vae_text_from_checkpoint=true",
        )

    def to(self, device: torch.device | str) -> "MVDreamPrior":
        super().to(device)
        self._encode_generator = torch.Generator(self.device).manual_seed(self.cfg.encode_seed)
        return self

    def encode_images(self, images: Float[Tensor, "b 3 H W"], generator: Optional[torch.Generator] = None) -> Tensor:
        """RGB in [0,1] -> latents [b, 4, 32, 32] (bilinear resize to 256, with gradient), fp32.

        Args:
            images: renders [b, 3, H, W].
            generator: noise of the posterior sample (``encode_sample``); default: the prior's own generator.
        """
        return super().encode_images(images, self._encode_generator if generator is None else generator)

    def predict_noise(
        self,
        x_t: Float[Tensor, "b c h w"],
        t: Int[Tensor, "b"],
        text: Float[Tensor, "b l d"],
        camera: Optional[Float[Tensor, "b 4 4"]] = None,
    ) -> Float[Tensor, "b c h w"]:
        """Raw epsilon prediction of the b views, fp32.

        Args:
            x_t: noisy latents [b, 4, 32, 32], object-major (index = object * num_frames + view).
            t: timesteps [b] (MVDream shares one t across the views of an object).
            text: text embeddings [b, 77, 1024].
            camera: project c2w [b, 4, 4] (rewardsds.cameras convention); None skips the camera embedding
                (the original's ``camera=None``, an unconditioned-pose prediction).

        Returns:
            epsilon [b, 4, 32, 32], fp32.
        """
        b = x_t.shape[0]
        if b % self.num_frames:
            raise ValueError(
                f"batch of {b} views is not a multiple of num_frames = {self.num_frames}: MVDream denoises the "
                f"views of one object jointly; render whole objects of {self.num_frames} views (object-major) "
                "or set prior.num_frames"
            )
        cam = None
        if camera is not None:
            if tuple(camera.shape) != (b, 4, 4):
                raise ValueError(
                    f"camera has shape {tuple(camera.shape)} for {b} views; the MVDream prior needs camera-to-"
                    f"world matrices [{b}, 4, 4] (Cameras.c2w), one per view"
                )
            cam = camera_condition(camera).to(self.device)
        x = x_t.to(self.device, self.dtype)
        if self.device.type == "cuda" and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with attention_kernels(self.cfg.attention, self.device):
            out = multiview_unet_forward(self.unet, x, t.to(self.device), text.to(self.device), cam, call=self._unet_call)
        return out.float()
