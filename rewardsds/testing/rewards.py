"""Random-weight reward checkpoints in the published file layouts (tests and benchmarks; no downloads).

Everything here writes or builds files exactly as the real loaders expect them (``ImageReward.pt`` +
``med_config.json`` + a BERT ``vocab.txt``; ``save_pretrained`` CLIP folders with tokenizer and image
processor; open_clip-layout HPSv2 state dicts; aesthetic head files), so tests exercise the same
loading code users hit. ``tiny`` sizes keep CPU tests fast; ``full`` sizes give honest GPU timings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------- ImageReward
IMAGE_REWARD_SIZES = {
    # BLIP ViT-L/16 at 224 + bert-base text encoder: the ImageReward-v1.0 architecture
    "full": dict(vision_width=1024, vision_depth=24, vision_mlp=4096, patch=16, image_size=224, text_hidden=768,
                 text_layers=12, text_heads=12, text_intermediate=3072, vocab=30524, max_positions=512),
    "tiny": dict(vision_width=64, vision_depth=2, vision_mlp=128, patch=16, image_size=64, text_hidden=32,
                 text_layers=2, text_heads=4, text_intermediate=64, vocab=256, max_positions=40),
}


def image_reward_original_shapes(size: str = "full") -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of the original ``ImageReward`` module (BLIP_Pretrain + mlp) at ``size``."""
    s = IMAGE_REWARD_SIZES[size]
    vw, tw = s["vision_width"], s["text_hidden"]
    shapes: dict[str, tuple[int, ...]] = {}
    v = "blip.visual_encoder."
    shapes[v + "cls_token"] = (1, 1, vw)
    shapes[v + "pos_embed"] = (1, (s["image_size"] // s["patch"]) ** 2 + 1, vw)
    shapes[v + "patch_embed.proj.weight"] = (vw, 3, s["patch"], s["patch"])
    shapes[v + "patch_embed.proj.bias"] = (vw,)
    for i in range(s["vision_depth"]):
        b = f"{v}blocks.{i}."
        for n in ("norm1", "norm2"):
            shapes[b + n + ".weight"] = shapes[b + n + ".bias"] = (vw,)
        shapes[b + "attn.qkv.weight"], shapes[b + "attn.qkv.bias"] = (3 * vw, vw), (3 * vw,)
        shapes[b + "attn.proj.weight"], shapes[b + "attn.proj.bias"] = (vw, vw), (vw,)
        shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (s["vision_mlp"], vw), (s["vision_mlp"],)
        shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (vw, s["vision_mlp"]), (vw,)
    shapes[v + "norm.weight"] = shapes[v + "norm.bias"] = (vw,)
    t = "blip.text_encoder."
    shapes[t + "embeddings.word_embeddings.weight"] = (s["vocab"], tw)
    shapes[t + "embeddings.position_embeddings.weight"] = (s["max_positions"], tw)
    shapes[t + "embeddings.position_ids"] = (1, s["max_positions"])
    shapes[t + "embeddings.LayerNorm.weight"] = shapes[t + "embeddings.LayerNorm.bias"] = (tw,)
    for i in range(s["text_layers"]):
        b = f"{t}encoder.layer.{i}."
        for part, kv_in in (("attention", tw), ("crossattention", vw)):
            shapes[f"{b}{part}.self.query.weight"], shapes[f"{b}{part}.self.query.bias"] = (tw, tw), (tw,)
            for n in ("key", "value"):
                shapes[f"{b}{part}.self.{n}.weight"], shapes[f"{b}{part}.self.{n}.bias"] = (tw, kv_in), (tw,)
            shapes[f"{b}{part}.output.dense.weight"], shapes[f"{b}{part}.output.dense.bias"] = (tw, tw), (tw,)
            shapes[f"{b}{part}.output.LayerNorm.weight"] = shapes[f"{b}{part}.output.LayerNorm.bias"] = (tw,)
        ti = s["text_intermediate"]
        shapes[b + "intermediate.dense.weight"], shapes[b + "intermediate.dense.bias"] = (ti, tw), (ti,)
        shapes[b + "output.dense.weight"], shapes[b + "output.dense.bias"] = (tw, ti), (tw,)
        shapes[b + "output.LayerNorm.weight"] = shapes[b + "output.LayerNorm.bias"] = (tw,)
    shapes["blip.vision_proj.weight"], shapes["blip.vision_proj.bias"] = (256, vw), (256,)
    shapes["blip.text_proj.weight"], shapes["blip.text_proj.bias"] = (256, tw), (256,)
    widths = [tw, 1024, 128, 64, 16, 1]
    for idx, (fin, fout) in zip((0, 2, 4, 6, 7), zip(widths[:-1], widths[1:])):
        shapes[f"mlp.layers.{idx}.weight"], shapes[f"mlp.layers.{idx}.bias"] = (fout, fin), (fout,)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0,
                      device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Seeded random tensors: LayerNorm weights 1 + 0.1 z, linear-stack head weights z / sqrt(fan_in), else 0.02 z.

    The head scaling keeps the five-layer affine head from collapsing the score range (see the parity
    fixture's README); ``position_ids`` buffers get their arange values.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            out[key] = torch.arange(shape[-1], device=device).expand(shape).clone()
            continue
        z = torch.randn(shape, generator=g).to(device)
        last = key.rsplit(".", 2)[-2] if key.count(".") >= 1 else key
        if key.endswith(".weight") and ("norm" in last.lower() or last.startswith("ln")):
            out[key] = 1 + 0.1 * z
        elif "layers." in key and key.startswith(("mlp.", "layers.")) and key.endswith(".weight"):
            out[key] = z / shape[1] ** 0.5
        else:
            out[key] = 0.02 * z
    return out


def image_reward_med_config(size: str = "full") -> dict:
    """``med_config.json`` content for ``size`` (the full one equals the published file's model fields)."""
    s = IMAGE_REWARD_SIZES[size]
    return {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": s["text_hidden"], "initializer_range": 0.02,
        "intermediate_size": s["text_intermediate"], "layer_norm_eps": 1e-12,
        "max_position_embeddings": s["max_positions"], "model_type": "bert",
        "num_attention_heads": s["text_heads"], "num_hidden_layers": s["text_layers"], "pad_token_id": 0,
        "type_vocab_size": 2, "vocab_size": s["vocab"], "encoder_width": s["vision_width"], "add_cross_attention": True,
    }


def write_bert_vocab(folder: Path, size: int, words: Iterable[str] = ()) -> Path:
    """A WordPiece ``vocab.txt`` of exactly ``size`` entries (BERT's special tokens, ``words``, ASCII characters
    and ``##`` continuations, then ``[unusedN]`` filler), so that ``size + 2`` ids fit an ImageReward
    embedding of ``size + 2`` rows after BLIP adds ``[DEC]`` and ``[ENC]``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for tok in [*words, *chars, *("##" + c for c in chars)]:
        if tok not in tokens:
            tokens.append(tok)
    if len(tokens) > size:
        raise ValueError(f"vocab needs {len(tokens)} entries but size is {size}")
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return folder


def save_random_image_reward(folder: Path, size: str = "tiny", seed: int = 0, words: Iterable[str] = ()) -> tuple[Path, Path]:
    """Write ``<folder>/ckpt/{ImageReward.pt, med_config.json}`` and ``<folder>/tokenizer/vocab.txt``.

    Returns:
        (checkpoint folder, tokenizer folder).
    """
    folder = Path(folder)
    ckpt = folder / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(image_reward_original_shapes(size), seed), ckpt / "ImageReward.pt")
    med = image_reward_med_config(size)
    (ckpt / "med_config.json").write_text(json.dumps(med, indent=2))
    tok = write_bert_vocab(folder / "tokenizer", med["vocab_size"] - 2, words)
    return ckpt, tok


def build_random_image_reward_model(size: str = "full", seed: int = 0, device: torch.device | str = "cpu"):
    """An :class:`~rewardsds.rewards.image_reward.ImageRewardModel` with random weights, built in memory."""
    from rewardsds.rewards.image_reward import build_image_reward_model

    return build_image_reward_model(random_state_dict(image_reward_original_shapes(size), seed, device),
                                    image_reward_med_config(size))


# ----------------------------------------------------------------------------------------- CLIP
CLIP_SIZES = {
    # openai/clip-vit-large-patch14 (CLIP score, aesthetic predictor)
    "vit-l-14": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                 image_size=224, patch_size=14, hidden_act="quick_gelu"),
                     text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu"),
                     projection_dim=768),
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K (PickScore, HPSv2.1)
    "vit-h-14": dict(vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                                 image_size=224, patch_size=14, hidden_act="gelu"),
                     text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               vocab_size=49408, max_position_embeddings=77, hidden_act="gelu"),
                     projection_dim=1024),
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8, hidden_act="gelu"),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           vocab_size=600, max_position_embeddings=77, hidden_act="gelu"),
                 projection_dim=16),
}


def clip_tokenizer():
    """A byte-level CLIP BPE tokenizer with no merges (every character is a token; ids < 514).

    The vocabulary layout is CLIP's (256 byte symbols, the same with ``</w>``, then specials), so it
    tokenises like the real one, only without merged sub-words.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": i + len(alphabet) for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_config(size: str = "tiny", tokenizer=None):
    """``CLIPConfig`` for ``size``; with a tokenizer, its bos/eos/pad ids are written into the text config."""
    from transformers import CLIPConfig

    s = CLIP_SIZES[size]
    text = dict(s["text"])
    if tokenizer is not None:
        text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    return CLIPConfig(text_config=text, vision_config=dict(s["vision"]), projection_dim=s["projection_dim"])


def clip_image_processor(size: int = 224):
    """transformers' CLIP image processor settings (shortest edge, centre crop, bicubic, OpenAI mean/std)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def save_random_clip(folder: Path, size: str = "tiny", seed: int = 0, logit_scale: Optional[float] = None) -> Path:
    """``save_pretrained`` a random ``CLIPModel`` with tokenizer and image processor into ``folder``."""
    from transformers import CLIPModel

    folder = Path(folder)
    tok = clip_tokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(clip_config(size, tok))
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    clip_image_processor(CLIP_SIZES[size]["vision"]["image_size"]).save_pretrained(folder)
    return folder


def build_random_clip_model(size: str = "vit-l-14", device: torch.device | str = "cpu", attention: str = "sdpa"):
    """A ``CLIPModel`` with transformers' random init, built directly on ``device``."""
    from transformers import CLIPModel

    config = clip_config(size, clip_tokenizer())
    config._attn_implementation = attention
    with torch.device(device):
        return CLIPModel(config).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------- open_clip / HPSv2
def open_clip_shapes(size: str = "tiny") -> dict[str, tuple[int, ...]]:
    """Keys and shapes of an open_clip ``CLIP`` state dict (ViT vision tower, standard text tower)."""
    s = CLIP_SIZES[size]
    v, t, e = s["vision"], s["text"], s["projection_dim"]
    shapes: dict[str, tuple[int, ...]] = {}

    def blocks(prefix: str, width: int, mlp: int, layers: int) -> None:
        for i in range(layers):
            b = f"{prefix}{i}."
            for n in ("ln_1", "ln_2"):
                shapes[f"{b}{n}.weight"] = shapes[f"{b}{n}.bias"] = (width,)
            shapes[b + "attn.in_proj_weight"], shapes[b + "attn.in_proj_bias"] = (3 * width, width), (3 * width,)
            shapes[b + "attn.out_proj.weight"], shapes[b + "attn.out_proj.bias"] = (width, width), (width,)
            shapes[b + "mlp.c_fc.weight"], shapes[b + "mlp.c_fc.bias"] = (mlp, width), (mlp,)
            shapes[b + "mlp.c_proj.weight"], shapes[b + "mlp.c_proj.bias"] = (width, mlp), (width,)

    tw = t["hidden_size"]
    shapes["positional_embedding"] = (t["max_position_embeddings"], tw)
    shapes["text_projection"] = (tw, e)
    shapes["logit_scale"] = ()
    shapes["token_embedding.weight"] = (t["vocab_size"], tw)
    shapes["ln_final.weight"] = shapes["ln_final.bias"] = (tw,)
    blocks("transformer.resblocks.", tw, t["intermediate_size"], t["num_hidden_layers"])
    vw, p = v["hidden_size"], v["patch_size"]
    shapes["visual.class_embedding"] = (vw,)
    shapes["visual.positional_embedding"] = ((v["image_size"] // p) ** 2 + 1, vw)
    shapes["visual.proj"] = (vw, e)
    shapes["visual.conv1.weight"] = (vw, 3, p, p)
    for n in ("ln_pre", "ln_post"):
        shapes[f"visual.{n}.weight"] = shapes[f"visual.{n}.bias"] = (vw,)
    blocks("visual.transformer.resblocks.", vw, v["intermediate_size"], v["num_hidden_layers"])
    return shapes


def random_open_clip_state_dict(size: str = "tiny", seed: int = 0) -> dict[str, Tensor]:
    sd = random_state_dict(open_clip_shapes(size), seed)
    sd["logit_scale"] = torch.tensor(4.6052)  # log(100), as trained CLIP models end up
    return sd


# ----------------------------------------------------------------------------------------- aesthetic heads
def random_aesthetic_head(head_type: str = "linear", dim: int = 768, seed: int = 0) -> dict[str, Tensor]:
    """A state dict in the layout of the published ``linear`` or ``mlp`` aesthetic head file."""
    if head_type == "linear":
        shapes = {"weight": (1, dim), "bias": (1,)}
    else:
        widths = [dim, 1024, 128, 64, 16, 1]
        shapes = {}
        for idx, (fin, fout) in zip((0, 2, 4, 6, 7), zip(widths[:-1], widths[1:])):
            shapes[f"layers.{idx}.weight"], shapes[f"layers.{idx}.bias"] = (fout, fin), (fout,)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) / (s[1] ** 0.5 if len(s) == 2 else 1.0) for k, s in shapes.items()}
