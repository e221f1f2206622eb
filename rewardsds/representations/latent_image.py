"""The 2D representation: the prior-space latent is the parameter (RewardSDS 2D experiments)."""

from __future__ import annotations

from typing import Any, Collection, Optional

import torch
from torch import Tensor, nn

from rewardsds.representations.base import Representation
from rewardsds.representations.config import LatentImageConfig, LatentInit
from rewardsds.rng import Streams, seed_for
from rewardsds.utils.images import fit_image, load_image


class LatentImage(Representation):
    """A latent (or pixel) image optimised directly: [batch_size, c, h, w] in the prior's space.

    Args:
        cfg: the validated settings (:class:`rewardsds.representations.config.LatentImageConfig`: the init, the
            AdamW settings of the latent group and the batch size); kept as ``self.cfg``.
    """

    outputs_latents = True

    def __init__(self, cfg: LatentImageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.latents: Optional[nn.Parameter] = None

    def setup(self, prior, device: torch.device, seed: int = 0) -> None:
        """Allocate the latent of the prior's shape and initialise it (``randn`` from the run's ``seed``)."""
        cfg = self.cfg
        shape = (cfg.batch_size, *prior.latent_shape)
        if self.latents is not None and tuple(self.latents.shape) == shape:
            return
        if cfg.init is LatentInit.randn:
            g = torch.Generator().manual_seed(seed_for(seed, 0, Streams.AUX))
            z = torch.randn(shape, generator=g) * cfg.init_std
        elif cfg.init is LatentInit.zeros:
            z = torch.zeros(shape)
        else:
            img = fit_image(load_image(cfg.init_image), prior.image_size).to(device)
            with torch.no_grad():
                z = prior.encode_images(img).float().cpu().repeat(cfg.batch_size, 1, 1, 1)
        self.latents = nn.Parameter(z.to(device))

    def render(self, cameras=None, step: int = 0, outputs: Optional[Collection[str]] = None) -> dict[str, Tensor]:
        if self.latents is None:
            raise RuntimeError("LatentImage.setup(prior, device) must run before render()")
        return {"latents": self.latents}

    def param_groups(self) -> list[dict[str, Any]]:
        c = self.cfg
        return [{"params": [self.latents], "lr": c.lr, "betas": tuple(c.betas), "eps": c.eps, "weight_decay": c.weight_decay,
                 "name": "latents"}]
