"""Random-init Stable Diffusion pipelines saved like real checkpoints (tests and benchmarks; no downloads).

``build_sd_pipeline(folder, preset)`` saves a Stable Diffusion pipeline folder with ``save_pretrained`` so it
loads through the same ``from_pretrained`` path as a real checkpoint (``prior.pretrained=<folder>``):

- ``tiny``: latents 4x8x8, images 16x16, a 2-layer text encoder (CPU tests, seconds).
- ``sd21_base``: the full-size Stable Diffusion 2.1-base architecture (UNet 865.9M params, VAE 83.7M, OpenCLIP-H
  text encoder with 23 layers) for honest speed and memory figures on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rewardsds.utils.quiet import quiet_empty_fp32_keep_list

quiet_empty_fp32_keep_list()  # the random models are saved cast to a dtype; they keep nothing in fp32

SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=False,
)
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
    scaling_factor=0.18215,
)
SD21_BASE_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
)

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.18215,
)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16, projection_dim=32)

PRESETS = {
    "tiny": (TINY_UNET, TINY_VAE, TINY_TEXT, 16),
    "sd21_base": (SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_TEXT, 77),
}


def write_clip_tokenizer(folder: Path, model_max_length: int = 16) -> Path:
    """A small CLIP BPE vocabulary (letters, digits, a few merges) saved as a CLIPTokenizer folder.

    Real SD checkpoints ship a 49408-token vocabulary; the random models here only need valid ids.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-")
    tokens = ["!"] + chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "n</w>"), ("i", "n"), ("e", "r</w>")]
    tokens += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length, pad_token="!")
    tok.save_pretrained(folder)
    return folder


def save_in_dtype(module, folder: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` ``module`` into ``folder`` with its weights cast to ``dtype``."""
    module.to(dtype).save_pretrained(folder)


def build_sd_pipeline(folder: str | Path, preset: str = "tiny", prediction_type: str = "epsilon", seed: int = 0,
                      device: str = "cpu", dtype: torch.dtype = torch.float32) -> Path:
    """Save a random-init SD pipeline (UNet, VAE, CLIP text encoder, tokenizer, DDIM scheduler) to ``folder``.

    ``device="cuda"`` draws the random weights on the GPU (seconds instead of a minute for sd21_base);
    ``dtype=torch.float16`` halves the files (the prior casts to its own dtype on load).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
    unet_kw, vae_kw, text_kw, max_len = PRESETS[preset]
    torch.manual_seed(seed)
    folder = Path(folder)
    tok_dir = write_clip_tokenizer(folder / "tokenizer", model_max_length=max_len)
    n_tok = len(json.loads((tok_dir / "vocab.json").read_text()))
    text_kw = dict(text_kw)
    vocab_size = text_kw.pop("vocab_size", n_tok)
    text_cfg = CLIPTextConfig(vocab_size=vocab_size, bos_token_id=n_tok - 2, eos_token_id=n_tok - 1, pad_token_id=0, **text_kw)
    with torch.device(device):
        save_in_dtype(CLIPTextModel(text_cfg), folder / "text_encoder", dtype)
        save_in_dtype(UNet2DConditionModel(**unet_kw), folder / "unet", dtype)
        save_in_dtype(AutoencoderKL(**vae_kw), folder / "vae", dtype)
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
