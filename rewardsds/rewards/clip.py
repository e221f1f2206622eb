"""CLIP score (Radford et al. 2021; Hessel et al. 2021) and the CLIP machinery shared by the CLIP-based rewards.

``CLIPScore`` is the cosine similarity of L2-normalised CLIP image and text embeddings (the RewardSDS
evaluation uses ViT-L/14 and reports it x100). :class:`ClipReward` holds what the aesthetic predictor,
PickScore and HPSv2 share: a transformers ``CLIPModel`` (or its vision tower), the tokenizer, the image
transform read from the checkpoint's ``preprocessor_config.json``, per-prompt text-embedding caching,
dtype and device handling.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.rewards.base import Reward
from rewardsds.rewards.common import (
    AttentionImpl,
    compile_for_scoring,
    freeze,
    load_pretrained,
    resolve_dtype,
    resolve_file,
    unusable_file_error,
)
from rewardsds.utils.cache import LRUCache
from rewardsds.utils.text import report_truncation
from rewardsds.rewards.preprocess import ImageTransform


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
                    attention: AttentionImpl | str = AttentionImpl.sdpa, vision_only: bool = False) -> nn.Module:
    """``CLIPModel`` in fp32 from a Hub id or a local folder (only its image tower with ``vision_only``)."""
    from transformers import CLIPModel

    impl = AttentionImpl(getattr(attention, "value", attention)).value
    model = load_pretrained(CLIPModel.from_pretrained, source, what=what, key=key, local_files_only=local_files_only,
                            dtype=torch.float32, attn_implementation=impl)
    return freeze(CLIPImageTower(model) if vision_only else model)


class ClipReward(Reward):
    """Base of the CLIP-based rewards: embeddings in, a score per image out.

    Subclasses call :meth:`_setup` with the model parts and implement ``_score`` with
    :meth:`image_embeds` / :meth:`text_embeds`.
    """

    #: the CLIP model (``CLIPModel`` or ``CLIPVisionModelWithProjection``)
    model: nn.Module

    def _setup(self, model: nn.Module, tokenizer, transform: ImageTransform, *, dtype="auto",
               differentiable: bool = False, pil_exact: bool = False, compile: bool = False) -> None:
        Reward.__init__(self)
        if pil_exact and differentiable:
            raise ValueError("pil_exact=True quantises to uint8 through PIL and cannot be differentiable")
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.transform = transform
        self.dtype_option = dtype
        self.differentiable = bool(differentiable)
        self.pil_exact = bool(pil_exact)
        self._image_fn = compile_for_scoring(self._image_embeds_impl) if compile else self._image_embeds_impl
        self._text_cache = LRUCache()
        self.dtype = torch.float32
        self.to("cpu")

    def to(self, device: torch.device | str) -> "ClipReward":
        self.device = torch.device(device)
        self.dtype = resolve_dtype(self.dtype_option, self.device)
        self.model.to(device=self.device, dtype=self.dtype)
        self._text_cache.clear()
        return self

    def preprocess(self, images: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b 3 s s"]:
        """Model pixels, fp32 on the reward's device (PIL path when ``pil_exact``)."""
        return (self.transform.pil(images) if self.pil_exact else self.transform(images)).to(self.device)

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
        pretrained: CLIP checkpoint, Hub id or local folder (``openai/clip-vit-large-patch14``).
        processor: source of tokenizer and image processor config (default: ``pretrained``).
        dtype: model precision (``auto``: bf16 on CUDA, fp32 on CPU); similarities are computed in fp32.
        differentiable: allow ``grad=True`` (tensor path only).
        pil_exact: preprocess through Pillow on uint8 images, as transformers' PIL image processor does.
        local_files_only: never download.
        attention: ``sdpa`` or ``eager``.
        compile: ``torch.compile`` the image tower with CUDA graphs for scoring (about 30 s once per shape).
    """

    name = "clip"

    def __init__(
        self,
        pretrained: str = "openai/clip-vit-large-patch14",
        processor: Optional[str] = None,
        dtype: object = "auto",
        differentiable: bool = False,
        pil_exact: bool = False,
        local_files_only: bool = False,
        attention: object = AttentionImpl.sdpa,
        compile: bool = False,
    ):
        what, key = "CLIP model", "reward.pretrained"
        proc = processor or pretrained
        pkey = "reward.processor" if processor else key
        model = load_clip_model(pretrained, what=what, key=key, local_files_only=local_files_only, attention=attention)
        tok = load_clip_tokenizer(proc, what=what, key=pkey, local_files_only=local_files_only)
        transform = load_image_transform(proc, what=what, key=pkey, local_files_only=local_files_only)
        self._setup(model, tok, transform, dtype=dtype, differentiable=differentiable, pil_exact=pil_exact,
                    compile=compile)

    @classmethod
    def from_parts(cls, model: nn.Module, tokenizer, transform: ImageTransform, **options) -> "CLIPScore":
        """Wrap already built parts (benchmarks); options as in the constructor."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, transform, **options)
        return self

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
