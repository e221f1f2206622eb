"""ImageReward-v1.0 (Xu et al., NeurIPS 2023) hosted on transformers' maintained BLIP modules.

The original package (``image-reward`` 1.5) does not import with transformers 5, so the official
checkpoint (``ImageReward.pt`` + ``med_config.json``, Hub repo ``THUDM/ImageReward``) is loaded into:

- ``BlipVisionModel``: the BLIP ViT-L/16 at 224 (LayerNorm eps 1e-6, 16 heads; all 197 tokens used),
- ``BlipTextModel`` built with ``is_decoder=True`` (that creates the cross-attention layers) and run with
  ``is_decoder=False`` (bidirectional self-attention, as the original ``mode='multimodal'`` call),
- the reward head: five stacked linear layers on the [CLS] text feature, no activations,
- the normalisation ``(head(x) - 0.16717362830052426) / 1.0333394966054072``.

``score = (mlp(BERT_xattn(tokens, ViT(image))[:, 0]) - mean) / std`` reproduces the original
``ImageReward.score`` to ~1e-6 on the parity fixture (tests/test_image_reward_parity.py).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from rewardsds.rewards.base import Reward
from rewardsds.rewards.common import (
    StackedLinearHead,
    compile_for_scoring,
    freeze,
    load_pretrained,
    load_state_dict_file,
    materialize_position_ids,
    resolve_file,
    unusable_file_error,
)
from rewardsds.rewards.config import AttentionKernel, ImageRewardConfig
from rewardsds.rewards.preprocess import ImageTransform
from rewardsds.utils.cache import LRUCache
from rewardsds.utils.dtypes import resolve_dtype
from rewardsds.utils.text import report_truncation

#: reward normalisation of ImageReward-v1.0 (Python attributes of the original class, not in the state dict)
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: ``score()`` tokenises with padding="max_length", truncation, max_length=35
MAX_TEXT_LENGTH = 35
#: original preprocessing: Resize(224, bicubic) on the shorter side, CenterCrop(224) (torchvision rounding)
IMAGE_REWARD_TRANSFORM = ImageTransform(size=224, crop=224, crop_rounding="round")


def image_reward_transform(image_size: int = 224) -> ImageTransform:
    """The original preprocessing at the vision tower's input size (224 for ImageReward-v1.0)."""
    return ImageTransform(size=image_size, crop=image_size, crop_rounding="round")

_VISION_PREFIX = "blip.visual_encoder."
_TEXT_PREFIX = "blip.text_encoder."
_HEAD_PREFIX = "mlp."
# Present in the original state dict but unused by score(): the ITC projections and a buffer that is
# non-persistent in transformers 5.
_UNUSED_KEYS = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


# ----------------------------------------------------------------------------------------- key map
def _vision_key(key: str) -> str:
    """Original (timm-style BLIP ViT) name -> ``BlipVisionModel`` name."""
    simple = {
        "cls_token": "embeddings.class_embedding",
        "pos_embed": "embeddings.position_embedding",
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
        "norm.weight": "post_layernorm.weight",
        "norm.bias": "post_layernorm.bias",
    }
    if key in simple:
        return simple[key]
    if key.startswith("blocks."):
        _, idx, rest = key.split(".", 2)
        blocks = {
            "norm1.": "layer_norm1.",
            "norm2.": "layer_norm2.",
            "attn.qkv.": "self_attn.qkv.",  # same fused [q; k; v] row layout
            "attn.proj.": "self_attn.projection.",
            "mlp.fc1.": "mlp.fc1.",
            "mlp.fc2.": "mlp.fc2.",
        }
        for src, dst in blocks.items():
            if rest.startswith(src) and rest[len(src):] in ("weight", "bias"):
                return f"encoder.layers.{idx}.{dst}{rest[len(src):]}"
    raise KeyError(key)


def convert_image_reward_state_dict(
    state_dict: dict[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Split and rename an original ``ImageReward.pt`` state dict.

    Mapping (N = layer index):

    ================================================  =====================================================
    original                                          here
    ================================================  =====================================================
    ``blip.visual_encoder.cls_token``                 vision ``embeddings.class_embedding``
    ``blip.visual_encoder.pos_embed``                 vision ``embeddings.position_embedding``
    ``blip.visual_encoder.patch_embed.proj.*``        vision ``embeddings.patch_embedding.*``
    ``blip.visual_encoder.blocks.N.norm1/norm2.*``    vision ``encoder.layers.N.layer_norm1/layer_norm2.*``
    ``blip.visual_encoder.blocks.N.attn.qkv.*``       vision ``encoder.layers.N.self_attn.qkv.*``
    ``blip.visual_encoder.blocks.N.attn.proj.*``      vision ``encoder.layers.N.self_attn.projection.*``
    ``blip.visual_encoder.blocks.N.mlp.fc1/fc2.*``    vision ``encoder.layers.N.mlp.fc1/fc2.*``
    ``blip.visual_encoder.norm.*``                    vision ``post_layernorm.*``
    ``blip.text_encoder.*``                           text, same names
    ``mlp.layers.{0,2,4,6,7}.*``                      head ``layers.{0,2,4,6,7}.*``
    ``blip.vision_proj.*``, ``blip.text_proj.*``,     dropped (unused by ``score()``; position_ids is a
    ``blip.text_encoder.embeddings.position_ids``     non-persistent buffer in transformers 5)
    ================================================  =====================================================

    Returns:
        (vision, text, head) state dicts. Keys outside the table raise ``KeyError``.
    """
    vision, text, head, unknown = {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(_UNUSED_KEYS):
            continue
        if key.startswith(_VISION_PREFIX):
            try:
                vision[_vision_key(key[len(_VISION_PREFIX):])] = value
            except KeyError:
                unknown.append(key)
        elif key.startswith(_TEXT_PREFIX):
            text[key[len(_TEXT_PREFIX):]] = value
        elif key.startswith(_HEAD_PREFIX):
            head[key[len(_HEAD_PREFIX):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} keys are not part of an ImageReward checkpoint, e.g. {unknown[:5]}")
    return vision, text, head


def image_reward_configs(state_dict: dict[str, Tensor], med_config: dict):
    """Build the BLIP vision and text configs of a checkpoint.

    The vision tower is the BLIP ViT of the original (``vit='large'`` for v1.0); its size is read from
    the tensor shapes, with heads = width / 64 (BLIP's ViT-B and ViT-L both use 64-dim heads). The text
    tower comes from ``med_config.json``. Values that differ from transformers' defaults and matter:
    vision LayerNorm eps 1e-6 (default 1e-5), 12 text heads (default 8), ``is_decoder=True`` (creates
    the cross-attention; the forward pass is still bidirectional).
    """
    from transformers import BlipTextConfig, BlipVisionConfig

    p = _VISION_PREFIX
    width = state_dict[p + "cls_token"].shape[-1]
    patch = state_dict[p + "patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state_dict[p + "pos_embed"].shape[1] - 1)
    depth = sum(1 for k in state_dict if k.startswith(p + "blocks.") and k.endswith(".norm1.weight"))
    if width % 64 != 0:
        raise ValueError(f"vision width {width} is not a multiple of the 64-dim heads of BLIP's ViT")
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=state_dict[p + "blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=width // 64,
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )
    encoder_width = int(med_config.get("encoder_width", width))
    if encoder_width != width:
        raise ValueError(f"med_config encoder_width = {encoder_width} does not match the vision width {width}")
    text = BlipTextConfig(
        vocab_size=int(med_config["vocab_size"]),
        hidden_size=int(med_config["hidden_size"]),
        encoder_hidden_size=encoder_width,
        intermediate_size=int(med_config["intermediate_size"]),
        num_hidden_layers=int(med_config["num_hidden_layers"]),
        num_attention_heads=int(med_config["num_attention_heads"]),
        max_position_embeddings=int(med_config["max_position_embeddings"]),
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(med_config.get("pad_token_id", 0)),
        bos_token_id=int(med_config["vocab_size"]) - 2,  # BLIP's added [DEC] token (30522 for v1.0)
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,
    )
    return vision, text


# ----------------------------------------------------------------------------------------- SDPA attention
def _sdpa_vision_attention(self, hidden_states: Tensor, **kwargs) -> tuple[Tensor, None]:
    b, n, c = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(out.transpose(1, 2).reshape(b, n, c)), None


def _sdpa_text_attention(
    self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None,
    encoder_hidden_states: Optional[Tensor] = None, encoder_attention_mask: Optional[Tensor] = None,
    past_key_values=None, **kwargs,
) -> tuple[Tensor, None]:
    if past_key_values is not None:  # generation with a cache: not used by a reward
        raise NotImplementedError("the SDPA path of the BLIP text encoder has no KV cache")
    cross = encoder_hidden_states is not None
    mask = encoder_attention_mask if cross else attention_mask
    kv = encoder_hidden_states if cross else hidden_states
    b, q_len, _ = hidden_states.shape
    d = self.attention_head_size
    q = self.query(hidden_states).view(b, q_len, -1, d).transpose(1, 2)
    k = self.key(kv).view(b, kv.shape[1], -1, d).transpose(1, 2)
    v = self.value(kv).view(b, kv.shape[1], -1, d).transpose(1, 2)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, q_len, self.all_head_size), None


def set_blip_attention(module: nn.Module, impl: AttentionKernel) -> None:
    """Switch every BLIP attention in ``module`` between the transformers code (``eager``) and SDPA.

    transformers' BLIP classes only have the eager matmul-softmax attention. The SDPA path computes the
    same function with ``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA) and
    is tested against eager on CPU.
    """
    from transformers.models.blip.modeling_blip import BlipAttention
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    for m in module.modules():
        if isinstance(m, (BlipAttention, BlipTextSelfAttention)):
            if impl is AttentionKernel.eager:
                m.__dict__.pop("forward", None)  # back to the class method
            else:
                fn = _sdpa_vision_attention if isinstance(m, BlipAttention) else _sdpa_text_attention
                m.forward = fn.__get__(m)


# ----------------------------------------------------------------------------------------- model
class ImageRewardModel(nn.Module):
    """BLIP ViT + cross-attention BERT + linear-stack head, returning normalised ImageReward scores."""

    def __init__(self, vision_config, text_config, mean: float = REWARD_MEAN, std: float = REWARD_STD):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = StackedLinearHead(text_config.hidden_size)
        self.mean, self.std = mean, std

    def encode_image(self, pixel_values: Float[Tensor, "b 3 s s"]) -> Float[Tensor, "b n w"]:
        """All ViT tokens after the final LayerNorm (``last_hidden_state``; the pooler would norm twice)."""
        return self.vision(pixel_values=pixel_values).last_hidden_state

    def text_features(
        self, input_ids: Int[Tensor, "b l"], attention_mask: Int[Tensor, "b l"], image_embeds: Float[Tensor, "b n w"]
    ) -> Float[Tensor, "b d"]:
        """[CLS] output of the multimodal text encoder (bidirectional self-attention + cross-attention)."""
        out = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, is_decoder=False
        )
        return out.last_hidden_state[:, 0]

    def forward(
        self, pixel_values: Float[Tensor, "b 3 s s"], input_ids: Int[Tensor, "b l"], attention_mask: Int[Tensor, "b l"]
    ) -> Float[Tensor, "b"]:
        """Normalised rewards; the head runs in the head's dtype (kept fp32 by :class:`ImageReward`)."""
        dtype = self.vision.embeddings.patch_embedding.weight.dtype
        feats = self.text_features(input_ids, attention_mask, self.encode_image(pixel_values.to(dtype)))
        raw = self.head(feats.to(self.head.layers[0].weight.dtype)).squeeze(-1)
        return (raw - self.mean) / self.std


def _fp32(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def build_image_reward_model(state_dict: dict[str, Tensor], med_config: dict) -> ImageRewardModel:
    """Instantiate :class:`ImageRewardModel` from an original state dict (tensors are used in place)."""
    vision_cfg, text_cfg = image_reward_configs(state_dict, med_config)
    vision_sd, text_sd, head_sd = convert_image_reward_state_dict(state_dict)
    with torch.device("meta"):  # skip random init of ~450M parameters; every tensor is assigned below
        model = ImageRewardModel(vision_cfg, text_cfg)
    model.vision.load_state_dict(_fp32(vision_sd), strict=True, assign=True)
    model.text.load_state_dict(_fp32(text_sd), strict=True, assign=True)
    model.head.load_state_dict(_fp32(head_sd), strict=True, assign=True)
    materialize_position_ids(model)
    return freeze(model)


def load_image_reward_model(
    checkpoint: str = "THUDM/ImageReward", med_config: Optional[str] = None, *, local_files_only: bool = False
) -> ImageRewardModel:
    """Load the official checkpoint (Hub repo, folder with both files, or path of ``ImageReward.pt``).

    Args:
        checkpoint: Hub repo id, a local folder holding ``ImageReward.pt`` and ``med_config.json``, or a
            local ``.pt`` file.
        med_config: path / folder / repo of ``med_config.json``; default: next to the checkpoint.
        local_files_only: use only local files and the Hub cache.
    """
    key = "reward.checkpoint"
    ckpt = resolve_file(checkpoint, "ImageReward.pt", what="ImageReward checkpoint", key=key,
                        local_files_only=local_files_only)
    if med_config is None:
        med_config = str(ckpt.parent) if Path(checkpoint).expanduser().exists() else checkpoint
    med_path = resolve_file(med_config, "med_config.json", what="ImageReward med_config.json",
                            key="reward.med_config", local_files_only=local_files_only)
    try:
        med = json.loads(Path(med_path).read_text())
    except (OSError, ValueError) as err:
        raise unusable_file_error("ImageReward med_config.json", med_path, err, "reward.med_config") from err
    state_dict = load_state_dict_file(ckpt, what="ImageReward checkpoint", key=key)
    extra = [k for k in state_dict if not k.startswith((_VISION_PREFIX, _TEXT_PREFIX, _HEAD_PREFIX, *_UNUSED_KEYS))]
    if extra:
        # The original loads with strict=False; keys it never reads are ignored there too, but say so.
        warnings.warn(f"ImageReward checkpoint {ckpt}: ignoring {len(extra)} keys unused by score(): {extra[:5]}")
        state_dict = {k: v for k, v in state_dict.items() if k not in set(extra)}
    try:
        return build_image_reward_model(state_dict, med)
    except (KeyError, RuntimeError, ValueError) as err:
        raise unusable_file_error("ImageReward checkpoint", ckpt, err, key) from err


def load_image_reward_tokenizer(source: str = "bert-base-uncased", *, local_files_only: bool = False):
    """BERT uncased WordPiece tokenizer with BLIP's added tokens ``[DEC]`` (bos) and ``[ENC]``.

    ``source`` is a Hub id or a folder with ``vocab.txt`` (or ``tokenizer.json``). The ids of the added
    tokens (30522, 30523 with the bert-base-uncased vocab) index the checkpoint's 30524-row embedding.
    """
    from transformers import BertTokenizer

    tok = load_pretrained(BertTokenizer.from_pretrained, source, what="ImageReward (BERT) tokenizer",
                          key="reward.tokenizer", local_files_only=local_files_only)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


# ----------------------------------------------------------------------------------------- reward
class ImageReward(Reward):
    """ImageReward-v1.0 score of (image, prompt) pairs, batched on the run's device.

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.ImageRewardConfig`): where the checkpoint,
            ``med_config.json`` and the bert-base-uncased tokenizer come from; the backbone ``dtype`` (``auto``: bf16
            on CUDA, fp32 on CPU; the head always runs in fp32); ``differentiable`` (gradients flow to the images,
            tensor path only); ``pil_exact`` (the original package's uint8 Pillow preprocessing, not
            differentiable); ``attention`` (``sdpa`` or transformers' ``eager`` code); ``compile`` (CUDA graphs
            for scoring, see :func:`~rewardsds.rewards.common.compile_for_scoring`).
    """

    name = "image_reward"
    uses_prompt = True

    def __init__(self, cfg: ImageRewardConfig):
        model = load_image_reward_model(cfg.checkpoint, cfg.med_config, local_files_only=cfg.local_files_only)
        tok = load_image_reward_tokenizer(cfg.tokenizer, local_files_only=cfg.local_files_only)
        self._setup(cfg, model, tok)

    @classmethod
    def from_parts(cls, cfg: ImageRewardConfig, model: ImageRewardModel, tokenizer) -> "ImageReward":
        """Wrap an already built model and tokenizer (benchmarks); ``cfg`` gives the options (its sources are unused)."""
        self = cls.__new__(cls)
        self._setup(cfg, model, tokenizer)
        return self

    def _setup(self, cfg: ImageRewardConfig, model: ImageRewardModel, tokenizer) -> None:
        Reward.__init__(self)
        if len(tokenizer) != model.text.config.vocab_size:
            raise unusable_file_error(
                "ImageReward (BERT) tokenizer", getattr(tokenizer, "name_or_path", "?"),
                ValueError(f"{len(tokenizer)} tokens (with [DEC], [ENC]) but the checkpoint embeds "
                           f"{model.text.config.vocab_size}; use the bert-base-uncased vocabulary"),
                "reward.tokenizer")
        self.cfg = cfg
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.transform = image_reward_transform(model.vision.config.image_size)
        set_blip_attention(self.model, cfg.attention)
        self._forward = compile_for_scoring(self.model) if cfg.compile else self.model
        self._tokens = LRUCache()
        self.dtype = torch.float32
        self.to("cpu")

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """Whether ``grad=True`` is allowed (``reward.differentiable``)."""
        return self.cfg.differentiable

    def to(self, device: torch.device | str) -> "ImageReward":
        self.device = torch.device(device)
        self.dtype = resolve_dtype(self.cfg.dtype, self.device)
        self.model.to(device=self.device)
        self.model.vision.to(dtype=self.dtype)
        self.model.text.to(dtype=self.dtype)
        self.model.head.to(dtype=torch.float32)
        self._tokens.clear()
        return self

    def tokenize(self, prompts: Sequence[str]) -> tuple[Int[Tensor, "b l"], Int[Tensor, "b l"]]:
        """Token ids and attention masks exactly as ``score()`` makes them (cached per prompt)."""

        def make(p: str):
            report_truncation(self.tokenizer, p, MAX_TEXT_LENGTH, "the reward's text encoder (ImageReward)")
            enc = self.tokenizer(p, padding="max_length", truncation=True, max_length=MAX_TEXT_LENGTH,
                                 return_tensors="pt")
            return enc["input_ids"][0].to(self.device), enc["attention_mask"][0].to(self.device)

        pairs = [self._tokens.get(p, lambda p=p: make(p)) for p in prompts]
        return torch.stack([a for a, _ in pairs]), torch.stack([m for _, m in pairs])

    def preprocess(self, images: Float[Tensor, "b 3 H W"]) -> Float[Tensor, "b 3 224 224"]:
        """Model pixels: through Pillow with ``pil_exact``, else on tensors, on the original's uint8 levels unless
        gradients must flow (``differentiable``)."""
        return self.transform.pil(images) if self.cfg.pil_exact else self.transform(images, uint8=not self.cfg.differentiable)

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        ids, mask = self.tokenize(prompts)
        return self._forward(self.preprocess(images).to(self.device), ids, mask).float()
