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
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds.errors import ConfigError
from rewardsds.priors.base import Prior

#: The default modes (also listed in conf/prior/analytic.yaml so users can see and edit them).
DEFAULT_MODES: list[dict[str, Any]] = [
    {"name": "red_disk", "color": [0.9, 0.1, 0.1], "background": [0.1, 0.1, 0.1], "pattern": "disk"},
    {"name": "blue_disk", "color": [0.1, 0.2, 0.9], "background": [0.1, 0.1, 0.1], "pattern": "disk"},
    {"name": "green_square", "color": [0.1, 0.8, 0.2], "background": [0.1, 0.1, 0.1], "pattern": "square"},
    {"name": "blue_square", "color": [0.1, 0.2, 0.9], "background": [0.9, 0.9, 0.9], "pattern": "square"},
    {"name": "yellow_stripes", "color": [0.9, 0.85, 0.1], "background": [0.1, 0.1, 0.1], "pattern": "stripes"},
    {"name": "purple_checker", "color": [0.6, 0.1, 0.7], "background": [0.9, 0.9, 0.9], "pattern": "checker"},
]

PATTERNS = ("solid", "disk", "square", "stripes", "checker")


def _field(mode: Any, key: str, default: Any = None) -> Any:
    if isinstance(mode, dict):
        return mode.get(key, default)
    return getattr(mode, key, default)


def mode_keywords(mode: Any) -> list[str]:
    kws = list(_field(mode, "keywords", None) or [])
    return [k.lower() for k in (kws or str(_field(mode, "name")).split("_"))]


def mode_image(mode: Any, size: int) -> Float[Tensor, "3 h w"]:
    """The mean image of a mode in [0, 1]: ``color`` where the pattern is on, ``background`` elsewhere."""
    pattern = _field(mode, "pattern", "solid")
    if pattern not in PATTERNS:
        raise ConfigError(f"prior.modes[{_field(mode, 'name')}].pattern", pattern, "is not a known pattern", f"use one of {PATTERNS}")
    color = torch.tensor(list(_field(mode, "color")), dtype=torch.float32).view(3, 1, 1)
    bg = torch.tensor(list(_field(mode, "background", [0.0, 0.0, 0.0])), dtype=torch.float32).view(3, 1, 1)
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # pixel centres in [-0.5, 0.5]
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    if pattern == "solid":
        on = torch.ones_like(xx)
    elif pattern == "disk":
        on = ((xx**2 + yy**2) <= 0.3**2).float()
    elif pattern == "square":
        on = ((xx.abs() <= 0.3) & (yy.abs() <= 0.3)).float()
    elif pattern == "stripes":
        on = (torch.floor((xx + 0.5) * 4) % 2 == 0).float()
    else:  # checker
        on = ((torch.floor((xx + 0.5) * 4) + torch.floor((yy + 0.5) * 4)) % 2 == 0).float()
    return on * color + (1 - on) * bg


def prompt_log_weights(prompt: str, modes: Sequence[Any], sharpness: float) -> Float[Tensor, "k"]:
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
        image_size: side of the images (the prior's "latent" is the image in [-1, 1]).
        component_std: per-pixel std s of each mixture component (in [-1, 1] units).
        prompt_sharpness: log-weight per matched keyword.
        modes: list of {name, keywords?, color, background, pattern}; empty = :data:`DEFAULT_MODES`.
        beta_start, beta_end, num_train_timesteps: the "scaled_linear" schedule of SD 2.1.
    """

    name = "analytic"

    def __init__(
        self,
        image_size: int = 16,
        component_std: float = 0.15,
        prompt_sharpness: float = 4.0,
        modes: Optional[Sequence[Any]] = None,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        self.modes = list(modes) if modes else [dict(m) for m in DEFAULT_MODES]
        self.mode_names = [str(_field(m, "name")) for m in self.modes]
        self.image_size = self.latent_size = int(image_size)
        self.latent_channels = 3
        self.num_train_timesteps = int(num_train_timesteps)
        self.component_std = float(component_std)
        self.prompt_sharpness = float(prompt_sharpness)
        means = torch.stack([mode_image(m, self.image_size) for m in self.modes]) * 2 - 1  # [K,3,h,w] in [-1,1]
        self._means = means
        self._ac = scaled_linear_alphas_cumprod(beta_start, beta_end, self.num_train_timesteps)

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
        return torch.stack([prompt_log_weights(p, self.modes, self.prompt_sharpness) for p in prompts]).unsqueeze(1).to(self.device)

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
        v = a**2 * self.component_std**2 + s**2  # [b, 1]
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
        v = a**2 * self.component_std**2 + s**2
        mu = self._means.reshape(len(self.modes), -1).to(dt)
        d2 = ((x[:, None, :] - a * mu[None]) ** 2).sum(-1)
        lw = log_weights if log_weights.dim() == 2 else log_weights[None].expand(b, -1)
        return torch.logsumexp(lw - d2 / (2 * v), dim=1) - 0.5 * D * torch.log(2 * math.pi * v)

    def log_prob(self, x0: Tensor, prompt: str) -> Tensor:
        """log density of clean images [b, 3, h, w] in [-1, 1] under the prompt's mixture (per pixel), [b]."""
        lw = prompt_log_weights(prompt, self.modes, self.prompt_sharpness).to(x0.device)
        b = x0.shape[0]
        x = x0.float().reshape(b, -1)
        D = x.shape[1]
        mu = self._means.reshape(len(self.modes), -1)
        v = self.component_std**2
        d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        return (torch.logsumexp(lw - d2 / (2 * v), dim=1) - 0.5 * D * math.log(2 * math.pi * v)) / D

    def nearest_mode(self, x0: Tensor) -> list[str]:
        """Name of the closest mode mean for each image [b, 3, h, w] in [-1, 1]."""
        d = ((x0.float().reshape(x0.shape[0], 1, -1) - self._means.reshape(1, len(self.modes), -1)) ** 2).mean(-1)
        return [self.mode_names[i] for i in d.argmin(1).tolist()]
