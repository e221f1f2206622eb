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
MVDream's own :func:`get_camera` puts azimuth 0 on +y: its azimuth equals the project's + 90 degrees.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds.priors.base import guide

__all__ = [
    "normalize_camera", "convert_opengl_to_blender", "get_camera", "camera_condition",
    "MultiViewAttnProcessor", "set_multiview_attention", "multiview_num_frames", "multiview_unet_forward",
    "ldm_linear_alphas_cumprod", "x0_recon_target",
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
) -> Float[Tensor, "b c h w"]:
    """One MVDream UNet evaluation (``apply_model``), in the UNet's dtype.

    Args:
        unet: a ``UNet2DConditionModel`` with :func:`set_multiview_attention` applied.
        x_t: noisy latents [b, c, h, w]; b a multiple of the processor's num_frames, object-major.
        t: per-sample timesteps [b].
        context: text embeddings [b, l, d].
        camera: the 16-float conditioning [b, 16] (:func:`camera_condition`), or None to skip the camera
            MLP (MVDream's ``camera=None``).

    Returns:
        epsilon prediction [b, c, h, w] in the UNet's dtype.
    """
    dtype = unet.dtype
    x_t, context = x_t.to(dtype), context.to(dtype)
    if camera is None:
        with _without_class_embedding(unet):
            return unet(x_t, t, encoder_hidden_states=context, return_dict=False)[0]
    return unet(x_t, t, encoder_hidden_states=context, class_labels=camera.to(dtype), return_dict=False)[0]


# ----------------------------------------------------------------------------------------- schedule / guidance
def ldm_linear_alphas_cumprod(
    linear_start: float = 0.00085, linear_end: float = 0.012, num_timesteps: int = 1000
) -> Float[Tensor, "T"]:
    """The ldm "linear" schedule MVDream was trained with, computed in float64 and returned as float32.

    ``betas = linspace(sqrt(start), sqrt(end), T) ** 2`` (diffusers' "scaled_linear"); diffusers builds it
    in float32, which moves alphas_cumprod by up to 5e-7, so the original float64 route is kept.
    """
    betas = torch.linspace(math.sqrt(linear_start), math.sqrt(linear_end), num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def x0_recon_target(
    prior,
    latents_noisy: Float[Tensor, "b c h w"],
    t: Int[Tensor, "b"] | int,
    eps_cond: Float[Tensor, "b c h w"],
    eps_uncond: Float[Tensor, "b c h w"],
    scale: float,
    rescale: float = 0.5,
    num_frames: Optional[int] = None,
) -> Float[Tensor, "b c h w"]:
    """MVDream's x0-reconstruction SDS target with std rescaling (threestudio-mvdream, ``recon_loss=True``).

    ``x0 = x0(eps_u + s (eps_c - eps_u))``, ``x0_nc = x0(eps_c)``; per object (groups of ``num_frames``
    consecutive views) ``f = (std(x0_nc) + 1e-8) / (std(x0) + 1e-8)`` with the unbiased std over (views,
    c, h, w); target = ``rescale * f * x0 + (1 - rescale) * x0``. The loss
    ``0.5 * sum((z - sg(target))**2) / b`` then has gradient ``(z - target) / b`` (ALGORITHMS.md 1.1).

    Args:
        prior: a Prior (its ``predict_x0`` and fp32 ``alphas_cumprod`` are used).
        latents_noisy: x_t [b, c, h, w], object-major.
        t: timesteps [b] or one int.
        eps_cond, eps_uncond: raw predictions [b, c, h, w] (the uncond branch is the negative prompt).
        scale: CFG scale (MVDream: 50).
        rescale: weight of the std-rescaled estimate (MVDream: 0.5; 0 = plain x0 of the CFG prediction).
        num_frames: views per object (default ``prior.num_frames``).

    Returns:
        fp32 target [b, c, h, w] (no gradient is tracked through it by callers: detach it in the loss).
    """
    frames = prior.num_frames if num_frames is None else num_frames
    b = latents_noisy.shape[0]
    if frames < 1 or b % frames:
        raise ValueError(f"batch {b} is not a multiple of num_frames = {frames}: the x0-recon std is taken per "
                         "object over its num_frames consecutive views")
    x0 = prior.predict_x0(latents_noisy, t, guide(eps_cond, eps_uncond, scale))
    if rescale == 0:
        return x0
    x0_nocfg = prior.predict_x0(latents_noisy, t, eps_cond)
    std_cfg = x0.reshape(b // frames, -1).std(dim=1)  # unbiased, as torch.std in threestudio
    std_nocfg = x0_nocfg.reshape(b // frames, -1).std(dim=1)
    factor = ((std_nocfg + 1e-8) / (std_cfg + 1e-8)).repeat_interleave(frames).view(b, 1, 1, 1)
    return rescale * (x0 * factor) + (1.0 - rescale) * x0
