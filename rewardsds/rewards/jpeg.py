"""JPEG (in)compressibility reward of DDPO (Black et al. 2023): -/+ JPEG file size in kB at quality 95."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from rewardsds.rewards.base import Reward
from rewardsds.rewards.config import JPEGRewardConfig


class JPEGCompressibility(Reward):
    """``sign * (JPEG size in kB)``: sign -1 rewards compressible images, +1 incompressible ones.

    The encoder is libjpeg through Pillow on the host, so this reward costs one device->host copy of
    the uint8 images per call; it is non-differentiable and ignores the prompt.

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.JPEGRewardConfig`): the JPEG quality (DDPO: 95)
            and the sign (-1 for compressibility, +1 for incompressibility).
    """

    differentiable = False
    uses_prompt = False

    def __init__(self, cfg: JPEGRewardConfig):
        super().__init__()
        self.cfg = cfg
        self.name = "jpeg_compressibility" if cfg.sign < 0 else "jpeg_incompressibility"

    @staticmethod
    def jpeg_kb(images: Tensor, quality: int) -> list[float]:
        """JPEG sizes in kB (1 kB = 1000 bytes, as DDPO) of images [b, 3, H, W] in [0, 1]."""
        arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        sizes = []
        for img in arr:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=quality)
            sizes.append(buf.tell() / 1000.0)
        return sizes

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.cfg.sign * torch.tensor(self.jpeg_kb(images, self.cfg.quality), device=images.device)
