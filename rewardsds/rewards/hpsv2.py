"""HPSv2.1 (Wu et al. 2023, Human Preference Score v2) hosted on transformers' ``CLIPModel``.

HPSv2.1 is an open_clip ViT-H-14 fine-tuned on HPDv2; its score is the cosine similarity of the
normalised image and text embeddings (``image_features @ text_features.T``, no logit scale). The
``hpsv2`` package pins old versions of its dependencies, so the checkpoint (``HPS_v2.1_compressed.pt``
from the Hub repo ``xswu/HPSv2``: ``{"state_dict": open_clip keys}``) is converted to the layout of a
transformers ``CLIPModel`` whose config, tokenizer and image processor are those of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (same architecture: GELU, 16 text heads, 80-dim vision heads).

Preprocessing follows the reference's ``preprocess_val``: ``ToTensor`` first, then torchvision's
float-tensor ``Resize(224, bicubic)`` (antialiased since torchvision 0.17), ``CenterCrop(224)``
(torchvision rounding), CLIP normalisation. Tokenisation uses transformers' CLIP tokenizer with the same
BPE vocabulary as open_clip's (open_clip also runs ``ftfy`` text repair, which only changes broken
unicode or HTML entities).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.rewards.clip import ClipReward, load_clip_tokenizer, load_image_transform
from rewardsds.rewards.common import (
    freeze,
    load_pretrained,
    load_state_dict_file,
    materialize_position_ids,
    resolve_file,
    unusable_file_error,
)
from rewardsds.rewards.config import HPSv2Config
from rewardsds.rewards.preprocess import ImageTransform

HPSV2_FILE = "HPS_v2.1_compressed.pt"

_BLOCK_MAP = {
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "attn.out_proj.": "self_attn.out_proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}


def _convert_block(prefix_in: str, prefix_out: str, key: str, value: Tensor, out: dict[str, Tensor]) -> bool:
    """One residual block key ``<prefix_in>N.<rest>`` -> HF encoder layer keys; False if not a block key."""
    if not key.startswith(prefix_in):
        return False
    idx, rest = key[len(prefix_in):].split(".", 1)
    base = f"{prefix_out}{idx}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        # nn.MultiheadAttention packs [W_q; W_k; W_v] along dim 0
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
            out[f"{base}self_attn.{name}.{kind}"] = part
        return True
    for src, dst in _BLOCK_MAP.items():
        if rest.startswith(src):
            out[base + dst + rest[len(src):]] = value
            return True
    raise KeyError(key)


def convert_open_clip_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an open_clip ``CLIP`` (ViT vision tower, standard text tower) state dict to ``CLIPModel`` keys.

    Layout (N = block index; ``w`` widths, ``e`` embedding dim):

    ==================================================  ==================================================
    open_clip                                           transformers ``CLIPModel``
    ==================================================  ==================================================
    ``token_embedding.weight``                          ``text_model.embeddings.token_embedding.weight``
    ``positional_embedding`` [77, w]                    ``text_model.embeddings.position_embedding.weight``
    ``transformer.resblocks.N.ln_1/ln_2.*``             ``text_model.encoder.layers.N.layer_norm1/2.*``
    ``transformer.resblocks.N.attn.in_proj_weight``     ``...self_attn.{q,k,v}_proj.weight`` (3 row blocks)
    ``transformer.resblocks.N.attn.in_proj_bias``       ``...self_attn.{q,k,v}_proj.bias``
    ``transformer.resblocks.N.attn.out_proj.*``         ``...self_attn.out_proj.*``
    ``transformer.resblocks.N.mlp.c_fc/c_proj.*``       ``...mlp.fc1/fc2.*``
    ``ln_final.*``                                      ``text_model.final_layer_norm.*``
    ``text_projection`` [w, e] (used as ``x @ P``)      ``text_projection.weight`` = P^T [e, w]
    ``visual.class_embedding`` [w]                      ``vision_model.embeddings.class_embedding``
    ``visual.positional_embedding`` [n+1, w]            ``vision_model.embeddings.position_embedding.weight``
    ``visual.conv1.weight`` (no bias)                   ``vision_model.embeddings.patch_embedding.weight``
    ``visual.ln_pre.*``                                 ``vision_model.pre_layrnorm.*``
    ``visual.transformer.resblocks.N.*``                ``vision_model.encoder.layers.N.*`` (as text)
    ``visual.ln_post.*``                                ``vision_model.post_layernorm.*``
    ``visual.proj`` [w, e] (used as ``x @ P``)          ``visual_projection.weight`` = P^T
    ``logit_scale``                                     ``logit_scale``
    ==================================================  ==================================================

    A ``module.`` prefix (DataParallel checkpoints) is removed. Unknown keys raise ``KeyError``.
    """
    out: dict[str, Tensor] = {}
    simple = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "logit_scale": "logit_scale",
    }
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in simple:
            out[simple[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif _convert_block("transformer.resblocks.", "text_model.encoder.layers.", key, value, out):
            pass
        elif _convert_block("visual.transformer.resblocks.", "vision_model.encoder.layers.", key, value, out):
            pass
        else:
            raise KeyError(key)
    return out


def build_hpsv2_model(state_dict: dict[str, Tensor], config) -> nn.Module:
    """``CLIPModel(config)`` holding the converted open_clip weights (fp32)."""
    from transformers import CLIPModel

    converted = {k: v.float() for k, v in convert_open_clip_state_dict(state_dict).items()}
    with torch.device("meta"):  # no random init of ~1B parameters; all tensors are assigned below
        model = CLIPModel(config)
    model.load_state_dict(converted, strict=True, assign=True)
    materialize_position_ids(model)
    return freeze(model)


class HPSv2(ClipReward):
    """HPSv2.1 human preference score of (image, prompt) pairs (about 0.2-0.35).

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.HPSv2Config`): the checkpoint (a Hub repo
            holding ``HPS_v2.1_compressed.pt``, a local folder with it, or the ``.pt`` file); the config, tokenizer
            and image processor source of the ViT-H-14 architecture (``processor``); the model ``dtype``
            (similarities are computed in fp32); ``differentiable``; ``pil_exact`` (a no-op here: images are
            quantised to uint8 unless the reward is differentiable, as the reference reads PIL images, and its
            resize is the float-tensor resize either way);
            ``attention``; ``compile`` (the image tower with CUDA graphs for scoring).
    """

    name = "hpsv2"

    def __init__(self, cfg: HPSv2Config):
        from transformers import CLIPConfig

        key, pkey = "reward.checkpoint", "reward.processor"
        what = "HPSv2.1 checkpoint"
        local = cfg.local_files_only
        path = resolve_file(cfg.checkpoint, HPSV2_FILE, what=what, key=key, local_files_only=local)
        config = load_pretrained(CLIPConfig.from_pretrained, cfg.processor, what="ViT-H-14 CLIP config", key=pkey,
                                 local_files_only=local)
        config._attn_implementation = cfg.attention.value
        try:
            model = build_hpsv2_model(load_state_dict_file(path, what=what, key=key), config)
        except (KeyError, RuntimeError, ValueError) as err:
            raise unusable_file_error(what, path, err, key) from err
        tok = load_clip_tokenizer(cfg.processor, what="ViT-H-14 CLIP", key=pkey, local_files_only=local)
        transform = load_image_transform(cfg.processor, what="ViT-H-14 CLIP", key=pkey, local_files_only=local,
                                         crop_rounding="round")
        self._setup(cfg, model, tok, transform)

    @classmethod
    def from_parts(cls, cfg: HPSv2Config, model: nn.Module, tokenizer, transform: ImageTransform) -> "HPSv2":
        """Wrap already built parts (benchmarks); ``cfg`` gives the options (its sources are unused)."""
        self = cls.__new__(cls)
        self._setup(cfg, model, tokenizer, transform)
        return self

    def _setup(self, cfg: HPSv2Config, model: nn.Module, tokenizer, transform: ImageTransform) -> None:
        # The reference resizes float tensors (ToTensor before Resize): one unclipped antialiased pass.
        transform = dataclasses.replace(transform, crop_rounding="round", float_resize=True)
        super()._setup(cfg, model, tokenizer, transform)

    def preprocess(self, images: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b 3 s s"]:
        # the reference's input is a PIL image (uint8 values), resized as a float tensor; with pil_exact as without,
        # unless gradients must flow (pil_exact and differentiable exclude each other)
        return self.transform(images, uint8=not self.cfg.differentiable).to(self.device)

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
