"""PickScore (Kirstain et al., NeurIPS 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic human preferences.

``score = exp(logit_scale) * cos(image_embedding, text_embedding)`` with the checkpoint's own logit
scale, as in the PickScore reference code. Weights: ``yuvalkirstain/PickScore_v1``; tokenizer and image
processor: ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the checkpoint ships no processor).
"""

from __future__ import annotations

from typing import Sequence

from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.rewards.clip import CLIPScore
from rewardsds.rewards.config import PickScoreConfig
from rewardsds.rewards.preprocess import ImageTransform


class PickScore(CLIPScore):
    """PickScore of (image, prompt) pairs (about 18-24 for typical images).

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.PickScoreConfig`): the PickScore model
            (``pretrained``) and its tokenizer + image processor source (``processor``); the other options as for
            :class:`~rewardsds.rewards.clip.CLIPScore`.
    """

    name = "pickscore"

    def __init__(self, cfg: PickScoreConfig):
        super().__init__(cfg)

    def _setup(self, cfg: PickScoreConfig, model: nn.Module, tokenizer, transform: ImageTransform) -> None:
        # read in fp32 before the model may be cast to half precision
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        super()._setup(cfg, model, tokenizer, transform)

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        return self.logit_scale * (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
