"""PickScore (Kirstain et al., NeurIPS 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic human preferences.

``score = exp(logit_scale) * cos(image_embedding, text_embedding)`` with the checkpoint's own logit
scale, as in the PickScore reference code. Weights: ``yuvalkirstain/PickScore_v1``; tokenizer and image
processor: ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the checkpoint ships no processor).
"""

from __future__ import annotations

from typing import Optional, Sequence

from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.rewards.clip import CLIPScore
from rewardsds.rewards.common import AttentionImpl
from rewardsds.rewards.preprocess import ImageTransform


class PickScore(CLIPScore):
    """PickScore of (image, prompt) pairs (about 18-24 for typical images).

    Args:
        pretrained: the PickScore model, Hub id or local folder.
        processor: tokenizer + image processor source (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
        dtype, differentiable, pil_exact, local_files_only, attention, compile: as for :class:`CLIPScore`.
    """

    name = "pickscore"

    def __init__(
        self,
        pretrained: str = "yuvalkirstain/PickScore_v1",
        processor: Optional[str] = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        dtype: object = "auto",
        differentiable: bool = False,
        pil_exact: bool = False,
        local_files_only: bool = False,
        attention: object = AttentionImpl.sdpa,
        compile: bool = False,
    ):
        super().__init__(pretrained=pretrained, processor=processor, dtype=dtype, differentiable=differentiable,
                         pil_exact=pil_exact, local_files_only=local_files_only, attention=attention, compile=compile)

    def _setup(self, model: nn.Module, tokenizer, transform: ImageTransform, **options) -> None:
        # read in fp32 before the model may be cast to half precision
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        super()._setup(model, tokenizer, transform, **options)

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        return self.logit_scale * (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
