"""The 2D representation: the prior-space latent is the parameter (RewardSDS 2D experiments)."""

from __future__ import annotations

from typing import Any, Collection, Optional, Sequence

import torch
from torch import Tensor, nn

from rewardsds.representations.base import Representation
from rewardsds.schedules import Streams, seed_for
from rewardsds.utils.images import fit_image, load_image


class LatentImage(Representation):
    """A latent (or pixel) image optimised directly: [batch_size, c, h, w] in the prior's space.

    Args:
        init: ``randn`` (std ``init_std``), ``zeros`` or ``image`` (encoded with the prior, posterior mean).
        init_image: image path for ``init=image``.
        init_std: std of the ``randn`` init.
        lr, betas, eps, weight_decay: AdamW settings of the latent group (reference: 0.01, (0.9, 0.99), 1e-15).
        batch_size: independent images optimised side by side.
    """

    outputs_latents = True

    def __init__(
        self,
        init: str = "randn",
        init_image: Optional[str] = None,
        init_std: float = 1.0,
        lr: float = 0.01,
        betas: Sequence[float] = (0.9, 0.99),
        eps: float = 1e-15,
        weight_decay: float = 0.0,
        batch_size: int = 1,
    ):
        super().__init__()
        self.init, self.init_image, self.init_std = init, init_image, float(init_std)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(betas), float(eps), float(weight_decay)
        self.batch_size = int(batch_size)
        self.latents: Optional[nn.Parameter] = None

    def setup(self, prior, device: torch.device, seed: int = 0) -> None:
        shape = (self.batch_size, *prior.latent_shape)
        if self.latents is not None and tuple(self.latents.shape) == shape:
            return
        if self.init == "randn":
            g = torch.Generator().manual_seed(seed_for(seed, 0, Streams.AUX))
            z = torch.randn(shape, generator=g) * self.init_std
        elif self.init == "zeros":
            z = torch.zeros(shape)
        else:
            img = fit_image(load_image(self.init_image), prior.image_size).to(device)
            with torch.no_grad():
                z = prior.encode_images(img).float().cpu().repeat(self.batch_size, 1, 1, 1)
        self.latents = nn.Parameter(z.to(device))

    def render(self, cameras=None, step: int = 0, outputs: Optional[Collection[str]] = None) -> dict[str, Tensor]:
        if self.latents is None:
            raise RuntimeError("LatentImage.setup(prior, device) must run before render()")
        return {"latents": self.latents}

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.latents], "lr": self.lr, "betas": self.betas, "eps": self.eps,
                 "weight_decay": self.weight_decay, "name": "latents"}]
