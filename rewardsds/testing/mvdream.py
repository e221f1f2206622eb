"""A random-init MVDream prior (converted-folder layout) and its SD 2.1-layout base folder (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rewardsds.testing.sd import SD21_BASE_TEXT, SD21_BASE_UNET, SD21_BASE_VAE, TINY_TEXT, save_in_dtype, write_clip_tokenizer


def build_mvdream(folder: str | Path, preset: str = "tiny", seed: int = 0, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """Random-init MVDream (converted-folder layout) + its SD-2.1-layout base folder.

    Returns ``(mvdream_folder, base_folder)`` for ``prior=mvdream prior.pretrained=<mvdream_folder>
    prior.base_model=<base_folder>``. ``sd21_base`` gives the full-size 4-view UNet (867,572,164 params: the
    SD2.1 UNet plus the camera MLP) for GPU timings; ``tiny`` a small one for CPU tests (latents 4x32x32,
    images 256x256 as the real model, so renders are resized exactly as in real runs).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rewardsds.priors.mvdream_convert import save_converted

    folder = Path(folder)
    base = folder / "base"
    torch.manual_seed(seed)
    if preset == "sd21_base":
        unet_kw = dict(SD21_BASE_UNET, sample_size=32)
        vae_kw, text_kw = SD21_BASE_VAE, dict(SD21_BASE_TEXT)
    elif preset == "tiny":
        unet_kw = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                       cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True)
        vae_kw = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                      block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=256,
                      scaling_factor=0.18215)
        text_kw = dict(TINY_TEXT, max_position_embeddings=77)
    else:
        raise ValueError(f"unknown preset {preset!r}; use tiny or sd21_base")
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_kw, class_embed_type="projection", projection_class_embeddings_input_dim=16).to(dtype)
    save_converted(unet, folder / "mvdream", source=f"random init ({preset})")
    del unet
    tok_dir = write_clip_tokenizer(base / "tokenizer", model_max_length=77)
    n_tok = len(json.loads((tok_dir / "vocab.json").read_text()))
    vocab_size = text_kw.pop("vocab_size", n_tok)
    with torch.device(device):
        save_in_dtype(CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=n_tok - 2, eos_token_id=n_tok - 1, pad_token_id=0, **text_kw)),
               base / "text_encoder", dtype)
        save_in_dtype(AutoencoderKL(**vae_kw), base / "vae", dtype)
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(base / "scheduler")
    return folder / "mvdream", base
