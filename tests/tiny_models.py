"""Tiny random-init models of the real classes, saved with ``save_pretrained`` so tests load them through
the same ``from_pretrained`` paths users hit with real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_clip_tokenizer(folder: Path, model_max_length: int = 16) -> Path:
    """A small byte-level-free CLIP BPE vocabulary (letters, digits, a few merges) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-")
    tokens = ["!"] + chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "n</w>"), ("i", "n"), ("e", "r</w>")]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length, pad_token="!")
    tok.save_pretrained(folder)
    return folder


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", latent_size: int = 8, seed: int = 0) -> Path:
    """Save a tiny SD-2.1-like pipeline (UNet, VAE, CLIP text encoder, tokenizer, DDIM scheduler) to ``folder``.

    Shapes: latents 4 x latent_size x latent_size, images 4 x latent_size (two VAE down blocks).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    folder = Path(folder)
    tok_dir = write_clip_tokenizer(folder / "tokenizer")
    vocab_size = len(json.loads((tok_dir / "vocab.json").read_text()))
    text_cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=32, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=0,
    )
    CLIPTextModel(text_cfg).save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8, sample_size=latent_size * 2, scaling_factor=0.18215,
    ).save_pretrained(folder / "vae")
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, prediction_type=prediction_type, num_train_timesteps=1000,
    ).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }))
    return folder
