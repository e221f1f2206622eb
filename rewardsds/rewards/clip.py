"""CLIP score (Radford et al. 2021; Hessel et al. 2021) and the CLIP machinery shared by the CLIP-based rewards.

``CLIPScore`` is the cosine similarity of L2-normalised CLIP image and text embeddings (the RewardSDS
evaluation uses ViT-L/14 and reports it x100). :class:`ClipReward` holds what the aesthetic predictor,
PickScore and HPSv2 share: a transformers ``CLIPModel`` (or its vision tower), the tokenizer, the image
transform read from the checkpoint's ``preprocessor_config.json``, per-prompt text-embedding caching,
dtype and device handling.
"""

from __future__ import annotations

import json
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.rewards.base import Reward
from rewardsds.rewards.common import compile_for_scoring, freeze, load_pretrained, resolve_file, unusable_file_error
from rewardsds.rewards.config import AttentionKernel, CLIPScoreConfig, LearnedRewardConfig
from rewardsds.rewards.preprocess import ImageTransform
from rewardsds.utils.cache import LRUCache
from rewardsds.utils.dtypes import resolve_dtype
from rewardsds.utils.text import report_truncation


def load_image_transform(source: str, *, what: str, key: str, local_files_only: bool,
                         crop_rounding: str = "floor") -> ImageTransform:
    """The resize / crop / normalisation of a transformers image processor (``preprocessor_config.json``)."""
    path = resolve_file(source, "preprocessor_config.json", what=f"{what} image processor", key=key,
                        local_files_only=local_files_only)
    try:
        cfg = json.loads(path.read_text())
        return ImageTransform.from_processor_config(cfg, crop_rounding=crop_rounding)
    except (OSError, ValueError) as err:
        raise unusable_file_error(f"{what} image processor", path, err, key) from err


def load_clip_tokenizer(source: str, *, what: str, key: str, local_files_only: bool):
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer.from_pretrained, source, what=f"{what} tokenizer", key=key,
                           local_files_only=local_files_only)


class CLIPImageTower(nn.Module):
    """The image half of a ``CLIPModel`` (vision transformer + projection), for prompt-free rewards."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.config = clip.config
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection


def load_clip_model(source: str, *, what: str, key: str, local_files_only: bool,
                    attention: AttentionKernel = AttentionKernel.sdpa, vision_only: bool = False) -> nn.Module:
    """``CLIPModel`` in fp32 from a Hub id or a local folder (only its image tower with ``vision_only``)."""
    from transformers import CLIPModel

    model = load_pretrained(CLIPModel.from_pretrained, source, what=what, key=key, local_files_only=local_files_only,
                            dtype=torch.float32, attn_implementation=attention.value)
    return freeze(CLIPImageTower(model) if vision_only else model)


class ClipReward(Reward):
    """Base of the CLIP-based rewards: embeddings in, a score per image out.

    Subclasses call :meth:`_setup` with their settings and the model parts and implement ``_score`` with
    :meth:`image_embeds` / :meth:`text_embeds`.
    """

    #: the CLIP model (``CLIPModel`` or ``CLIPVisionModelWithProjection``)
    model: nn.Module
    #: the validated settings (dtype, differentiable, pil_exact, compile and where the weights come from)
    cfg: LearnedRewardConfig

    def _setup(self, cfg: LearnedRewardConfig, model: nn.Module, tokenizer, transform: ImageTransform) -> None:
        Reward.__init__(self)
        self.cfg = cfg
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.transform = transform
        self._image_fn = compile_for_scoring(self._image_embeds_impl) if cfg.compile else self._image_embeds_impl
        self._text_cache = LRUCache()
        self.dtype = torch.float32
        self.to("cpu")

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """Whether ``grad=True`` is allowed (``reward.differentiable``)."""
        return self.cfg.differentiable

    def to(self, device: torch.device | str) -> "ClipReward":
        self.device = torch.device(device)
        self.dtype = resolve_dtype(self.cfg.dtype, self.device)
        self.model.to(device=self.device, dtype=self.dtype)
        self._text_cache.clear()
        return self

    def preprocess(self, images: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b 3 s s"]:
        """Model pixels, fp32 on the reward's device: through Pillow with ``pil_exact``, else on tensors, on the
        reference's uint8 levels unless gradients must flow (``differentiable``)."""
        pixels = self.transform.pil(images) if self.cfg.pil_exact else self.transform(images, uint8=not self.cfg.differentiable)
        return pixels.to(self.device)

    def _image_embeds_impl(self, pixels: Tensor) -> Tensor:
        pooled = self.model.vision_model(pixel_values=pixels.to(self.dtype)).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def image_embeds(self, images: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b d"]:
        """L2-normalised projected image embeddings, fp32 (differentiable on the tensor path)."""
        return self._image_fn(self.preprocess(images))

    def text_embeds(self, prompts: Sequence[str]) -> Float[Tensor, "b d"]:
        """L2-normalised projected text embeddings, fp32, computed once per prompt (never part of a graph)."""

        def make(p: str) -> Tensor:
            max_len = self.model.config.text_config.max_position_embeddings
            report_truncation(self.tokenizer, p, max_len, f"the reward's text encoder ({type(self).__name__})")
            enc = self.tokenizer([p], padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
            with torch.no_grad():
                out = self.model.text_model(input_ids=enc["input_ids"].to(self.device),
                                            attention_mask=enc["attention_mask"].to(self.device))
                return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)[0]

        return torch.stack([self._text_cache.get(p, lambda p=p: make(p)) for p in prompts])


class CLIPScore(ClipReward):
    """Cosine similarity of CLIP image and prompt embeddings (in [-1, 1]; papers report x100).

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.CLIPScoreConfig`): the CLIP checkpoint
            (``pretrained``) and the source of its tokenizer and image processor (``processor``, default:
            ``pretrained``); the model ``dtype`` (similarities are computed in fp32); ``differentiable``;
            ``pil_exact`` (Pillow on uint8 images, as transformers' PIL image processor); ``attention``;
            ``compile`` (the image tower with CUDA graphs for scoring, about 30 s once per shape).
    """

    name = "clip"

    def __init__(self, cfg: CLIPScoreConfig):
        what, key = "CLIP model", "reward.pretrained"
        proc = cfg.processor or cfg.pretrained
        pkey = "reward.processor" if cfg.processor else key
        local = cfg.local_files_only
        model = load_clip_model(cfg.pretrained, what=what, key=key, local_files_only=local, attention=cfg.attention)
        tok = load_clip_tokenizer(proc, what=what, key=pkey, local_files_only=local)
        transform = load_image_transform(proc, what=what, key=pkey, local_files_only=local)
        self._setup(cfg, model, tok, transform)

    @classmethod
    def from_parts(cls, cfg: LearnedRewardConfig, model: nn.Module, tokenizer, transform: ImageTransform) -> "CLIPScore":
        """Wrap already built parts (benchmarks); ``cfg`` gives the options (its sources are unused)."""
        self = cls.__new__(cls)
        self._setup(cfg, model, tokenizer, transform)
        return self

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
