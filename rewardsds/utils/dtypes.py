"""The torch dtype of a ``dtype`` setting (priors and rewards share one policy), and TF32 switches for a block."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from rewardsds.schema import DType

_TORCH_DTYPES = {DType.fp32: torch.float32, DType.fp16: torch.float16, DType.bf16: torch.bfloat16}


def resolve_dtype(dtype: DType, device: torch.device | str, half: torch.dtype = torch.bfloat16) -> torch.dtype:
    """The torch dtype that ``dtype`` means on ``device``.

    ``auto`` is ``half`` on CUDA (bf16 unless the model says otherwise; fp16 on a GPU without bf16) and fp32
    elsewhere; the other choices name their dtype.

    Args:
        dtype: a validated ``dtype`` setting (``prior.dtype``, ``reward.dtype``).
        device: where the model runs.
        half: the model's half precision for ``auto`` on CUDA (the priors' is fp16, see
            ``StableDiffusionPrior.AUTO_HALF``, which ``MVDreamPrior`` inherits).
    """
    if dtype is DType.auto:
        if torch.device(device).type == "cuda":
            return half if half == torch.float16 or torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _TORCH_DTYPES[dtype]


def dtype_name(dtype: torch.dtype | str) -> str:
    """``float16`` for ``torch.float16``: how runs and benchmarks record a resolved dtype (``prior_dtype``)."""
    return str(dtype).removeprefix("torch.")


def grad_half(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype for a network that gradients flow through, next to a frozen model in ``dtype``: bf16 in place of fp16.

    fp16's range (smallest normal 6e-5) underflows a backward pass that has no loss scaling; bf16 keeps fp32's range.
    fp16 stays where the GPU has no bf16; fp32 and bf16 stay as they are.
    """
    if dtype != torch.float16:
        return dtype
    if torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def tf32(matmul: bool, cudnn: bool) -> Iterator[None]:
    """Set torch's TF32 switches for a block and restore them after (torch's defaults: matmul off, cuDNN on).

    fp32 matmuls and convolutions on TF32 tensor cores keep 10 mantissa bits; with both off they compute in full fp32,
    as the exact path does. The switches are read when a kernel is launched, so the block must launch the work.
    """
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
