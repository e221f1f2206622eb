"""The prior interface: a frozen diffusion model in the space the distillation loss works in.

Every prior exposes the same small surface so that losses, the candidate engine and the lookahead
never special-case a model:

- ``encode_text`` / ``text_cond``: prompt embeddings (cached per string).
- ``encode_images`` / ``decode_latents``: [0,1] RGB <-> model space (identity-like for pixel priors).
- ``predict_noise``: one raw epsilon prediction (no guidance), fp32 out, any model dtype inside.
- ``add_noise``, ``predict_x0``, ``alpha_sigma``: schedule arithmetic in fp32 on ``alphas_cumprod``.
- ``predict_noise_pair``: conditional and unconditional predictions in one batched call, chunked.

Frozen weights live in plain attributes of a plain Python object (a Prior is not an ``nn.Module``), so
they never enter a LightningModule's ``state_dict`` or an optimiser.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds.errors import ConfigError
from rewardsds.utils.cache import LRUCache
from rewardsds.utils.chunks import call_ranges, rows_per_call


@dataclass
class TextCond:
    """Per-sample text conditioning for classifier-free guidance.

    Attributes:
        cond: embeddings of the (view-dependent) prompts, [b, l, d].
        uncond: embeddings of the unconditional branch (negative prompt or ""), [b, l, d].
    """

    cond: Float[Tensor, "b l d"]
    uncond: Float[Tensor, "b l d"]

    def __len__(self) -> int:
        return self.cond.shape[0]

    def repeat(self, n: int) -> "TextCond":
        """Tile for n candidates: candidate-major, i.e. index = candidate * b + view."""
        return TextCond(self.cond.repeat(n, 1, 1), self.uncond.repeat(n, 1, 1))

    def index(self, idx: Tensor | slice) -> "TextCond":
        return TextCond(self.cond[idx], self.uncond[idx])

    def detach(self) -> "TextCond":
        return TextCond(self.cond.detach(), self.uncond.detach())


def guide(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance ``eps_u + s (eps_c - eps_u)`` in fp32 (ALGORITHMS.md section 0).

    This is the standard form used by RewardSDS, MVDream and SDS-Bridge (threestudio's SD guidance uses
    ``eps_c + s (eps_c - eps_u)``, i.e. one more unit of guidance; use ``scale + 1`` to match it).
    """
    eps_cond, eps_uncond = eps_cond.float(), eps_uncond.float()
    return eps_uncond + scale * (eps_cond - eps_uncond)


class Prior(abc.ABC):
    """A frozen epsilon-predicting diffusion prior.

    Subclasses set ``num_train_timesteps``, ``latent_channels``, ``latent_size``, ``image_size`` and
    ``num_frames`` and implement the abstract methods. ``alphas_cumprod`` is an fp32 tensor [T] on the
    prior's device.
    """

    #: number of discrete training timesteps T
    num_train_timesteps: int = 1000
    #: channels of the space the loss works in (4 for SD latents, 3 for pixel priors)
    latent_channels: int = 4
    #: spatial size of that space (64 for SD2.1-base, 32 for MVDream)
    latent_size: int = 64
    #: RGB resolution the encoder expects (renders are resized to it)
    image_size: int = 512
    #: views denoised jointly as one object (4 for MVDream, 1 otherwise)
    num_frames: int = 1
    #: whether predict_noise uses camera conditioning
    uses_camera: bool = False
    #: a short name for logs
    name: str = "prior"

    def __init__(self) -> None:
        self._text_cache: dict[str, Tensor] = {}
        self._cond_cache = LRUCache(capacity=64)  # (device, prompts, negatives) -> TextCond: no stacking per step
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ required
    @property
    @abc.abstractmethod
    def alphas_cumprod(self) -> Float[Tensor, "T"]:
        """Cumulative product of (1 - beta), fp32, on the prior's device."""

    @abc.abstractmethod
    def _encode_text_uncached(self, prompts: Sequence[str]) -> Float[Tensor, "b l d"]:
        """Embed prompts (no cache)."""

    @abc.abstractmethod
    def encode_images(self, images: Float[Tensor, "b 3 H W"], generator: Optional[torch.Generator] = None) -> Float[Tensor, "b c h w"]:
        """Map RGB in [0,1] to the prior's space (resizing to ``image_size``), differentiably, fp32 out.

        ``generator`` drives any sampling in the encoder (a VAE posterior sample); the system passes one seeded
        per step so resumed runs and compared strategies encode identically."""

    @abc.abstractmethod
    def decode_latents(self, latents: Float[Tensor, "b c h w"]) -> Float[Tensor, "b 3 H W"]:
        """Map the prior's space back to RGB in [0,1] (clamped), fp32 out."""

    def decode_candidates(self, latents: Float[Tensor, "b c h w"], tiny: bool = False) -> Float[Tensor, "b 3 H W"]:
        """The candidates' decode for scoring: the decode a step repeats at one batch shape (a prior may run a
        compiled decoder here). ``tiny``: the prior's cheap lookahead decoder (``lookahead.decode=tiny``)."""
        if tiny:
            raise ConfigError("lookahead.decode", "tiny", f"needs a tiny decoder, which {type(self).__name__} does not have",
                              "use lookahead.decode=full, or prior=sd with prior.tiny_vae=madebyollin/taesd")
        return self.decode_latents(latents)

    @abc.abstractmethod
    def predict_noise(
        self,
        x_t: Float[Tensor, "b c h w"],
        t: Int[Tensor, "b"],
        text: Float[Tensor, "b l d"],
        camera: Optional[Float[Tensor, "b 4 4"]] = None,
    ) -> Float[Tensor, "b c h w"]:
        """Raw epsilon prediction (no guidance) in fp32. ``b`` must be a multiple of ``num_frames``."""

    @abc.abstractmethod
    def to(self, device: torch.device | str) -> "Prior":
        """Move weights and buffers to ``device`` and return self."""

    # ------------------------------------------------------------------ provided
    def encode_text(self, prompts: Sequence[str]) -> Float[Tensor, "b l d"]:
        """Embed prompts, caching each distinct string (the cache follows the prior's device)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                emb = self._encode_text_uncached(missing)
            for p, e in zip(missing, emb):
                self._text_cache[p] = e.detach()
        return torch.stack([self._text_cache[p].to(self.device) for p in prompts])

    def text_cond(self, prompts: Sequence[str], negative: str | Sequence[str] = "") -> TextCond:
        """Conditional and unconditional embeddings for one sample per prompt."""
        negs = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if len(negs) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negs)} negative prompts")
        key = (str(self.device), tuple(prompts), tuple(negs))
        return self._cond_cache.get(key, lambda: TextCond(self.encode_text(list(prompts)), self.encode_text(negs)))

    def clear_text_cache(self) -> None:
        self._text_cache.clear()
        self._cond_cache.clear()

    def alpha_sigma(self, t: Int[Tensor, "b"] | int) -> tuple[Tensor, Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) in fp32, shaped [b, 1, 1, 1] (or scalars for an int t)."""
        ac = self.alphas_cumprod
        if isinstance(t, int):
            a = ac[t]
        else:
            a = ac[t.to(ac.device).long()].view(-1, 1, 1, 1)
        return a.sqrt(), (1 - a).sqrt()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Int[Tensor, "b"] | int) -> Tensor:
        """Forward process ``x_t = alpha_t x0 + sigma_t eps`` in fp32."""
        a, s = self.alpha_sigma(t)
        return a * x0.float() + s * noise.float()

    def predict_x0(self, x_t: Tensor, t: Int[Tensor, "b"] | int, eps: Tensor) -> Tensor:
        """One-step clean estimate ``(x_t - sigma_t eps) / alpha_t`` in fp32."""
        a, s = self.alpha_sigma(t)
        return (x_t.float() - s * eps.float()) / a

    def predict_noise_pair(
        self,
        x_t: Float[Tensor, "b c h w"],
        t: Int[Tensor, "b"] | int,
        text: TextCond,
        camera: Optional[Float[Tensor, "b 4 4"]] = None,
        chunk_size: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional predictions from batched calls on [x; x] (cond first).

        Args:
            x_t: noisy inputs [b, c, h, w]; b a multiple of ``num_frames``.
            t: one timestep for all (int) or per sample [b].
            text: conditioning with ``len(text) == b``.
            camera: c2w matrices [b, 4, 4] for camera-conditioned priors.
            chunk_size: the most samples per call (0 = all). Rounded down to whole view groups; the
                doubled CFG batch counts, so a call sees at most ``chunk_size`` inputs.

        Returns:
            (eps_cond, eps_uncond), each fp32 [b, c, h, w].
        """
        b = x_t.shape[0]
        if b % self.num_frames:
            raise ValueError(f"batch {b} is not a multiple of num_frames = {self.num_frames}")
        if isinstance(t, int):
            t = torch.full((b,), t, dtype=torch.long, device=x_t.device)
        conds, unconds = [], []
        for s, e in call_ranges(b, rows_per_call(b, chunk_size, self.num_frames, inputs_per_row=2)):
            x = x_t[s:e]
            cam = None if camera is None else camera[s:e]
            eps = self.predict_noise(
                torch.cat([x, x]),
                torch.cat([t[s:e], t[s:e]]),
                torch.cat([text.cond[s:e], text.uncond[s:e]]),
                None if cam is None else torch.cat([cam, cam]),
            )
            c, u = eps.chunk(2)
            conds.append(c)
            unconds.append(u)
        return torch.cat(conds), torch.cat(unconds)

    def predict_noise_cfg(
        self,
        x_t: Tensor,
        t: Int[Tensor, "b"] | int,
        text: TextCond,
        scale: float,
        camera: Optional[Tensor] = None,
        chunk_size: int = 0,
    ) -> Tensor:
        """Guided prediction ``eps_u + scale (eps_c - eps_u)`` in fp32."""
        c, u = self.predict_noise_pair(x_t, t, text, camera, chunk_size)
        return guide(c, u, scale)

    def ranking_prior(self) -> "Prior":
        """The prior the lookahead calls to rank candidates (this one, unless a cheaper view is configured).

        A ranking prior may trade precision for speed (the Stable Diffusion prior's float8 view,
        ``prior.lookahead_quantize``); its predictions only decide which candidates are selected and never
        enter a loss. The prediction at t that a loss mode uses always comes from the prior itself.
        """
        return self

    def keep_fp32_view(self) -> None:
        """Ask, before :meth:`to`, for the weights as loaded to stay available to :meth:`fp32_view` (a prior that casts
        them on placement keeps fp32 copies). Priors that always compute in fp32 need nothing."""

    def fp32_view(self) -> "Prior":
        """This prior computing in fp32, eager: what the lookahead ranks with below ``lookahead.fp32_below``, where
        bf16 rounding flips near-ties. Priors that always compute in fp32 (the analytic one, any prior on the CPU)
        return themselves."""
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def trainable_copy(self):  # pragma: no cover - overridden where supported
        """A UNet copy that a loss mode may adapt (VSD's LoRA). Priors without one raise."""
        raise NotImplementedError(
            f"prior {self.name!r} has no trainable copy path (needed by loss=vsd); use prior=sd"
        )
