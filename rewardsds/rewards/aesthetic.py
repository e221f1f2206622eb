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

from enum import Enum
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.rewards.clip import ClipReward, load_clip_model, load_image_transform
from rewardsds.rewards.common import (
    AttentionImpl,
    StackedLinearHead,
    freeze,
    load_state_dict_file,
    resolve_file,
    unusable_file_error,
)
from rewardsds.rewards.preprocess import ImageTransform


class AestheticHead(str, Enum):
    linear = "linear"  # LAION aesthetic predictor v1 (RewardSDS reference)
    mlp = "mlp"  # improved aesthetic predictor (sac+logos+ava1, MSE)


HEAD_URLS = {
    AestheticHead.linear: "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
    AestheticHead.mlp: "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac+logos+ava1-l14-linearMSE.pth",
}


def build_aesthetic_head(state_dict: dict[str, Tensor], head: AestheticHead, dim: int) -> nn.Module:
    """The head module for ``head`` with ``state_dict`` loaded strictly (fp32)."""
    module = nn.Linear(dim, 1) if head is AestheticHead.linear else StackedLinearHead(dim)
    expected = set(module.state_dict())
    if set(state_dict) != expected:
        other = AestheticHead.mlp if head is AestheticHead.linear else AestheticHead.linear
        raise ValueError(f"keys {sorted(state_dict)[:6]} do not match a {head.value} head {sorted(expected)[:6]}; "
                         f"is this the {other.value} head file? set reward.head_type={other.value}")
    module.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return freeze(module)


def load_aesthetic_head(head: AestheticHead | str, source: Optional[str], dim: int, *,
                        local_files_only: bool) -> nn.Module:
    """Load a head file (``source``: path or URL; None = the published URL of ``head``)."""
    head = AestheticHead(getattr(head, "value", head))
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
        pretrained: CLIP checkpoint whose image tower the head was trained on (``openai/clip-vit-large-patch14``).
        head_type: ``linear`` (LAION v1, default) or ``mlp`` (improved predictor).
        head: head file, local path or URL; None = the published URL of ``head_type`` (cached by torch.hub).
        dtype: CLIP precision (``auto``: bf16 on CUDA, fp32 on CPU); the head runs in fp32.
        differentiable: allow ``grad=True`` (tensor path only).
        pil_exact: preprocess through Pillow on uint8 images, like the reference's CLIPProcessor.
        local_files_only: never download.
        attention: ``sdpa`` or ``eager``.
        compile: ``torch.compile`` the image tower with CUDA graphs for scoring (about 30 s once per shape).
    """

    name = "aesthetic"
    uses_prompt = False

    def __init__(
        self,
        pretrained: str = "openai/clip-vit-large-patch14",
        head_type: object = AestheticHead.linear,
        head: Optional[str] = None,
        dtype: object = "auto",
        differentiable: bool = False,
        pil_exact: bool = False,
        local_files_only: bool = False,
        attention: object = AttentionImpl.sdpa,
        compile: bool = False,
    ):
        key = "reward.pretrained"
        model = load_clip_model(pretrained, what="CLIP image tower", key=key, local_files_only=local_files_only,
                                attention=attention, vision_only=True)
        transform = load_image_transform(pretrained, what="CLIP", key=key, local_files_only=local_files_only)
        head_module = load_aesthetic_head(head_type, head, model.config.projection_dim,
                                          local_files_only=local_files_only)
        self._setup_aesthetic(model, head_module, transform, dtype=dtype, differentiable=differentiable,
                              pil_exact=pil_exact, compile=compile)

    @classmethod
    def from_parts(cls, model: nn.Module, head: nn.Module, transform: ImageTransform, **options) -> "AestheticReward":
        """Wrap already built parts (benchmarks); options as in the constructor."""
        self = cls.__new__(cls)
        self._setup_aesthetic(model, head, transform, **options)
        return self

    def _setup_aesthetic(self, model, head, transform, **options) -> None:
        self.head = freeze(head).float()
        self._setup(model, None, transform, **options)

    def to(self, device: torch.device | str) -> "AestheticReward":
        super().to(device)
        self.head.to(device=self.device, dtype=torch.float32)
        return self

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        return self.head(self.image_embeds(images)).squeeze(-1)
