"""``prior.attention``: which fused kernel torch's ``scaled_dot_product_attention`` tries first in the UNet.

torch picks the first kernel in its priority order that takes a call's shapes, dtype and device (FlashAttention,
then memory-efficient, math and cuDNN's). ``prior.attention`` moves one kernel to the front of that order for the
prior's UNet calls, so a call the kernel cannot take still runs, on the next one. Under ``torch.compile`` the kernel
is chosen while the graph is traced (the calls run inside this context), and kept in the graph.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from rewardsds.priors.config import AttentionKernel


def attention_kernels(choice: AttentionKernel, device: torch.device) -> ContextManager:
    """A context in which ``choice`` is torch's first SDPA kernel on a CUDA ``device`` (a no-op for ``auto`` or
    off CUDA, where torch's CPU kernels run)."""
    if choice is AttentionKernel.auto or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {AttentionKernel.flash: SDPBackend.FLASH_ATTENTION, AttentionKernel.efficient: SDPBackend.EFFICIENT_ATTENTION,
               AttentionKernel.cudnn: SDPBackend.CUDNN_ATTENTION, AttentionKernel.math: SDPBackend.MATH}
    first = kernels[choice]
    order = [first] + [k for k in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
                                   SDPBackend.CUDNN_ATTENTION) if k != first]
    return sdpa_kernel(order, set_priority=True)
