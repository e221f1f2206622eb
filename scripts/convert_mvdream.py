#!/usr/bin/env python
"""Convert the original MVDream checkpoint once into a diffusers folder for fast loading.

    python scripts/convert_mvdream.py MVDream/MVDream /data/mvdream-sd21-4view            # from the Hub
    python scripts/convert_mvdream.py ~/ckpt/sd-v2.1-base-4view.pt /data/mvdream --dtype fp16
    rewardsds ... prior=mvdream prior.pretrained=/data/mvdream-sd21-4view

Writes ``<out>/unet/`` (config.json + diffusion_pytorch_model.safetensors) and
``<out>/mvdream_conversion.json`` (source, key counts, conventions). With ``--vae-text BASE`` it also
converts the checkpoint's VAE and text encoder (architecture from BASE's configs) into ``vae/`` and
``text_encoder/``, for ``prior.vae_text_from_checkpoint=true``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rewardsds, not an installed one

from rewardsds.priors.mvdream_convert import convert_to_folder

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint file, folder holding --filename, or Hub repo id (MVDream/MVDream)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--filename", default="sd-v2.1-base-4view.pt", help="checkpoint name inside a folder or Hub repo")
    parser.add_argument("--original-config", default=None, help="ldm yaml of a non-default checkpoint")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="storage dtype (fp16 halves the size)")
    parser.add_argument("--vae-text", metavar="BASE", default=None,
                        help="also convert VAE and text encoder, with the configs of this SD 2.1-base id/folder")
    parser.add_argument("--local-files-only", action="store_true", help="never touch the network")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = convert_to_folder(args.checkpoint, args.out, args.filename, args.original_config, DTYPES[args.dtype],
                            args.vae_text, args.local_files_only)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s; use prior.pretrained={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
