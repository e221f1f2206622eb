"""``prior.attention``: which fused kernel torch's ``scaled_dot_product_attention`` tries first in the UNet.

torch picks the first enabled kernel in its priority order that takes a call's shapes, dtype and device
(FlashAttention, then memory-efficient, math and cuDNN's). ``prior.attention`` moves one kernel to the front of
that order for the prior's UNet calls (enabling it), and keeps the kernels the user left enabled behind it, so a
call the chosen kernel cannot take still runs, on the next one.

Under ``torch.compile`` the kernel is chosen while the graph is traced (the calls run inside this context) and
kept in the graph. The compile caches do not key on torch's kernel settings (AOTAutograd's key is the graph
before the kernel is chosen), so a graph traced with one choice would be loaded for another from a warm
``prior.compile_cache``; the context therefore also tags the cache key with the choice
(``torch.compiler.config.cache_key_tag``).
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
    return kernel_first(choice)


@contextlib.contextmanager
def kernel_first(choice: AttentionKernel):
    """``choice`` first in torch's SDPA order, then the kernels enabled now in their current order; compile cache
    keys tagged with the choice. Torch's order, enabled kernels and tag are restored on exit."""
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends, sdpa_kernel

    kernels = {AttentionKernel.flash: SDPBackend.FLASH_ATTENTION, AttentionKernel.efficient: SDPBackend.EFFICIENT_ATTENTION,
               AttentionKernel.cudnn: SDPBackend.CUDNN_ATTENTION, AttentionKernel.math: SDPBackend.MATH}
    first = kernels[choice]
    order = [first] + [k for k in _cur_sdpa_kernel_backends(with_priority=True) if k != first]
    if hasattr(torch.compiler.config, "cache_key_tag"):
        keyed = torch.compiler.config.patch(cache_key_tag=f"{torch.compiler.config.cache_key_tag}|prior.attention={choice.value}")
    else:  # a torch without the tag: skip AOTAutograd's cache (Inductor's FX-graph key holds the chosen kernel's op)
        import torch._functorch.config as functorch_config

        keyed = functorch_config.patch(enable_autograd_cache=False)
    with sdpa_kernel(order, set_priority=True), keyed:
        yield
