"""The torch dtype of a ``dtype`` setting (priors and rewards share one policy)."""

from __future__ import annotations

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
