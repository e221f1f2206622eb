"""The torch dtype of a ``dtype`` setting (priors and rewards share one policy), and TF32 switches for a block."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from rewardsds.schema import DType

_TORCH_DTYPES = {DType.fp32: torch.float32, DType.fp16: torch.float16, DType.bf16: torch.bfloat16}


def resolve_dtype(dtype: DType, device: torch.device | str) -> torch.dtype:
    """The torch dtype that ``dtype`` means on ``device``.

    ``auto`` is bf16 on CUDA (fp16 on a GPU without bf16) and fp32 elsewhere; the other choices name their dtype.

    Args:
        dtype: a validated ``dtype`` setting (``prior.dtype``, ``reward.dtype``).
        device: where the model runs.
    """
    if dtype is DType.auto:
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _TORCH_DTYPES[dtype]


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
