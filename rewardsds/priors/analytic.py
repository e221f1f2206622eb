"""The analytic prior: a Gaussian mixture over small images whose noise prediction is exact.

Data model (pixel space, values in [-1, 1], D = 3 * size * size):

    x0 ~ sum_k pi_k(y) N(mu_k, s^2 I),     x_t = a_t x0 + sigma_t eps,   a_t = sqrt(abar_t)

so ``x_t ~ sum_k pi_k N(a_t mu_k, v_t I)`` with ``v_t = a_t^2 s^2 + sigma_t^2`` and the MMSE noise
prediction is exact:

    eps_hat(x_t) = -sigma_t grad log p_t(x_t) = sigma_t / v_t * sum_k gamma_k(x_t) (x_t - a_t mu_k),
    gamma_k = softmax_k(log pi_k - |x_t - a_t mu_k|^2 / (2 v_t)).

The prompt selects the mixture weights: each mode has keywords (default: its name split at "_"), and
``log pi_k = sharpness * (#keywords of mode k in the prompt)`` normalised; a prompt matching nothing
(and the empty/negative prompt) gives the uniform mixture, which is the unconditional branch of CFG.
The "text embedding" is therefore the vector of log-weights, shaped [b, 1, K].
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds.priors.base import Prior
from rewardsds.priors.config import DEFAULT_MODES, AnalyticMode, AnalyticPriorConfig, mode_keywords, modes_or_default

__all__ = ["DEFAULT_MODES", "mode_keywords", "mode_image", "prompt_log_weights", "scaled_linear_alphas_cumprod",
           "AnalyticPrior"]


def _pattern_mask(pattern: str, xx: Tensor, yy: Tensor) -> Tensor:
    """1 where ``pattern`` is on at pixel centres (xx, yy) in [-0.5, 0.5], else 0."""
    if pattern == "solid":
        return torch.ones_like(xx)
    if pattern == "disk":
        return ((xx**2 + yy**2) <= 0.3**2).float()
    if pattern == "square":
        return ((xx.abs() <= 0.3) & (yy.abs() <= 0.3)).float()
    if pattern == "stripes":
        return (torch.floor((xx + 0.5) * 4) % 2 == 0).float()
    if pattern == "checker":
        return ((torch.floor((xx + 0.5) * 4) + torch.floor((yy + 0.5) * 4)) % 2 == 0).float()
    # the schema's check_modes admits only the patterns above (PATTERNS)
    raise ValueError(f"unknown pattern {pattern!r}")


def mode_image(mode: AnalyticMode, size: int) -> Float[Tensor, "3 h w"]:
    """The mean image of a mode in [0, 1]: ``color`` where the pattern is on, ``background`` elsewhere."""
    color = torch.tensor(list(mode.color), dtype=torch.float32).view(3, 1, 1)
    bg = torch.tensor(list(mode.background), dtype=torch.float32).view(3, 1, 1)
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # pixel centres in [-0.5, 0.5]
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    on = _pattern_mask(mode.pattern, xx, yy)
    return on * color + (1 - on) * bg


def prompt_log_weights(prompt: str, modes: Sequence[AnalyticMode], sharpness: float) -> Float[Tensor, "k"]:
    """log pi_k(y) from keyword matches (uniform for the empty prompt or no match)."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    matches = torch.tensor([sum(k in words for k in mode_keywords(m)) for m in modes], dtype=torch.float32)
    logits = sharpness * matches
    return logits - torch.logsumexp(logits, 0)


def scaled_linear_alphas_cumprod(beta_start: float, beta_end: float, T: int) -> Tensor:
    """SD's "scaled_linear" schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2 (float64 -> float32)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class AnalyticPrior(Prior):
    """A Gaussian mixture over ``3 x image_size x image_size`` images with an exact noise prediction.

    Args:
        cfg: the validated settings (:class:`~rewardsds.priors.config.AnalyticPriorConfig`): ``image_size``, the
            per-pixel std of each component, the log-weight per matched keyword, the modes (empty = :data:`DEFAULT_MODES`)
            and the "scaled_linear" schedule of SD 2.1.
    """

    name = "analytic"
    latent_channels = 3

    def __init__(self, cfg: AnalyticPriorConfig):
        super().__init__()
        self.cfg = cfg
        self.modes = modes_or_default(cfg.modes)
        self.mode_names = [str(m.name) for m in self.modes]
        self._means = torch.stack([mode_image(m, cfg.image_size) for m in self.modes]) * 2 - 1  # [K,3,h,w] in [-1,1]
        self._ac = scaled_linear_alphas_cumprod(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps)

    @property
    def image_size(self) -> int:  # the prior's "latent" is the image itself
        return self.cfg.image_size

    @property
    def latent_size(self) -> int:
        return self.cfg.image_size

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    # ------------------------------------------------------------------ interface
    @property
    def alphas_cumprod(self) -> Tensor:
        return self._ac

    @property
    def means(self) -> Float[Tensor, "k 3 h w"]:
        return self._means

    def to(self, device: torch.device | str) -> "AnalyticPrior":
        self.device = torch.device(device)
        self._means = self._means.to(self.device)
        self._ac = self._ac.to(self.device)
        return self

    def _encode_text_uncached(self, prompts: Sequence[str]) -> Tensor:
        return torch.stack([prompt_log_weights(p, self.modes, self.cfg.prompt_sharpness) for p in prompts]).unsqueeze(1).to(self.device)

    def encode_images(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        return images.float() * 2 - 1

    def decode_latents(self, latents: Tensor) -> Tensor:
        return ((latents.float() + 1) / 2).clamp(0, 1)

    def predict_noise(
        self,
        x_t: Float[Tensor, "b c h w"],
        t: Int[Tensor, "b"],
        text: Float[Tensor, "b l k"],
        camera: Optional[Tensor] = None,
    ) -> Float[Tensor, "b c h w"]:
        b = x_t.shape[0]
        x = x_t.float().reshape(b, -1)  # [b, D]
        a, s = self.alpha_sigma(t.to(self.device).long())
        a, s = a.view(b, 1), s.view(b, 1)
        v = a**2 * self.cfg.component_std**2 + s**2  # [b, 1]
        mu = self._means.reshape(len(self.modes), -1)  # [K, D]
        # |x - a mu_k|^2 = |x|^2 - 2a x.mu_k + a^2 |mu_k|^2, batched over k
        d2 = (x**2).sum(1, keepdim=True) - 2 * a * (x @ mu.T) + a**2 * (mu**2).sum(1)[None]
        logits = text[:, 0, :].float() - d2 / (2 * v)
        gamma = torch.softmax(logits, dim=1)  # [b, K]
        mean = a * (gamma @ mu)  # E[a mu_k | x_t]
        eps = s / v * (x - mean)
        return eps.view_as(x_t)

    # ------------------------------------------------------------------ ground truth helpers
    def log_prob_t(self, x_t: Tensor, t: int, log_weights: Tensor) -> Tensor:
        """log p_t(x_t) of the noised mixture (exact), [b]; ``log_weights`` [K] or [b, K]."""
        b = x_t.shape[0]
        dt = torch.promote_types(x_t.dtype, torch.float32)  # keep float64 for finite-difference checks
        x = x_t.to(dt).reshape(b, -1)
        D = x.shape[1]
        a, s = (v.to(dt) for v in self.alpha_sigma(t))
        v = a**2 * self.cfg.component_std**2 + s**2
        mu = self._means.reshape(len(self.modes), -1).to(dt)
        d2 = ((x[:, None, :] - a * mu[None]) ** 2).sum(-1)
        lw = log_weights if log_weights.dim() == 2 else log_weights[None].expand(b, -1)
        return torch.logsumexp(lw - d2 / (2 * v), dim=1) - 0.5 * D * torch.log(2 * math.pi * v)

    def log_prob(self, x0: Tensor, prompt: str) -> Tensor:
        """log density of clean images [b, 3, h, w] in [-1, 1] under the prompt's mixture (per pixel), [b]."""
        lw = prompt_log_weights(prompt, self.modes, self.cfg.prompt_sharpness).to(x0.device)
        b = x0.shape[0]
        x = x0.float().reshape(b, -1)
        D = x.shape[1]
        mu = self._means.reshape(len(self.modes), -1)
        v = self.cfg.component_std**2
        d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        return (torch.logsumexp(lw - d2 / (2 * v), dim=1) - 0.5 * D * math.log(2 * math.pi * v)) / D

    def nearest_mode(self, x0: Tensor) -> list[str]:
        """Name of the closest mode mean for each image [b, 3, h, w] in [-1, 1]."""
        d = ((x0.float().reshape(x0.shape[0], 1, -1) - self._means.reshape(1, len(self.modes), -1)) ** 2).mean(-1)
        return [self.mode_names[i] for i in d.argmin(1).tolist()]
