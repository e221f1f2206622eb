"""LAION aesthetic predictor: a head on L2-normalised CLIP ViT-L/14 image embeddings (prompt-free).

Two heads exist, both trained on ``openai/clip-vit-large-patch14`` image embeddings normalised to unit
length:

- ``linear`` (default, as in the RewardSDS reference code): LAION-AI/aesthetic-predictor
  ``sa_0_4_vit_l_14_linear.pth``, one ``Linear(768, 1)`` (state-dict keys ``weight``, ``bias``).
- ``mlp``: christophschuhmann/improved-aesthetic-predictor ``sac+logos+ava1-l14-linearMSE.pth``, the
  768-1024-128-64-16-1 linear stack (keys ``layers.{0,2,4,6,7}.*``), used by DDPO.

Head files come from a local path or a URL, downloaded once into torch.hub's cache.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.rewards.clip import ClipReward, load_clip_model, load_image_transform
from rewardsds.rewards.common import StackedLinearHead, freeze, load_state_dict_file, resolve_file, unusable_file_error
from rewardsds.rewards.config import AestheticHeadType, AestheticRewardConfig
from rewardsds.rewards.preprocess import ImageTransform

HEAD_URLS = {
    AestheticHeadType.linear: "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
    AestheticHeadType.mlp: "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac+logos+ava1-l14-linearMSE.pth",
}


def build_aesthetic_head(state_dict: dict[str, Tensor], head: AestheticHeadType, dim: int) -> nn.Module:
    """The head module for ``head`` with ``state_dict`` loaded strictly (fp32)."""
    module = nn.Linear(dim, 1) if head is AestheticHeadType.linear else StackedLinearHead(dim)
    expected = set(module.state_dict())
    if set(state_dict) != expected:
        other = AestheticHeadType.mlp if head is AestheticHeadType.linear else AestheticHeadType.linear
        raise ValueError(f"keys {sorted(state_dict)[:6]} do not match a {head.value} head {sorted(expected)[:6]}; "
                         f"is this the {other.value} head file? set reward.head_type={other.value}")
    module.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return freeze(module)


def load_aesthetic_head(head: AestheticHeadType, source: Optional[str], dim: int, *, local_files_only: bool) -> nn.Module:
    """Load a head file (``source``: path or URL; None = the published URL of ``head``)."""
    src = source or HEAD_URLS[head]
    what = f"aesthetic predictor {head.value} head"
    path = resolve_file(src, HEAD_URLS[head].rsplit("/", 1)[-1], what=what, key="reward.head",
                        local_files_only=local_files_only)
    try:
        return build_aesthetic_head(load_state_dict_file(path, what=what, key="reward.head"), head, dim)
    except (ValueError, RuntimeError) as err:
        raise unusable_file_error(what, path, err, "reward.head") from err


class AestheticReward(ClipReward):
    """Predicted aesthetic rating (about 1-10) of each image; the prompt is ignored.

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.AestheticRewardConfig`): the CLIP checkpoint
            whose image tower the head was trained on (``pretrained``); ``head_type`` (``linear``: LAION v1,
            default; ``mlp``: the improved predictor) and the head file (``head``: local path or URL; None = the
            published URL of ``head_type``, cached by torch.hub); the CLIP ``dtype`` (the head runs in fp32);
            ``differentiable``; ``pil_exact`` (Pillow on uint8 images, like the reference's CLIPProcessor);
            ``attention``; ``compile`` (the image tower with CUDA graphs for scoring).
    """

    name = "aesthetic"
    uses_prompt = False

    def __init__(self, cfg: AestheticRewardConfig):
        key, local = "reward.pretrained", cfg.local_files_only
        model = load_clip_model(cfg.pretrained, what="CLIP image tower", key=key, local_files_only=local,
                                attention=cfg.attention, vision_only=True)
        transform = load_image_transform(cfg.pretrained, what="CLIP", key=key, local_files_only=local)
        head = load_aesthetic_head(cfg.head_type, cfg.head, model.config.projection_dim, local_files_only=local)
        self._setup_aesthetic(cfg, model, head, transform)

    @classmethod
    def from_parts(cls, cfg: AestheticRewardConfig, model: nn.Module, head: nn.Module,
                   transform: ImageTransform) -> "AestheticReward":
        """Wrap already built parts (benchmarks); ``cfg`` gives the options (its sources are unused)."""
        self = cls.__new__(cls)
        self._setup_aesthetic(cfg, model, head, transform)
        return self

    def _setup_aesthetic(self, cfg: AestheticRewardConfig, model: nn.Module, head: nn.Module,
                         transform: ImageTransform) -> None:
        self.head = freeze(head).float()
        self._setup(cfg, model, None, transform)

    def to(self, device: torch.device | str) -> "AestheticReward":
        super().to(device)
        self.head.to(device=self.device, dtype=torch.float32)
        return self

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        return self.head(self.image_embeds(images)).squeeze(-1)
