"""A float8 copy of a frozen UNet for the lookahead's ranking calls (torchao dynamic float8 quantisation).

The lookahead's model calls only rank candidates (their rewards decide which noises the SDS update listens
to); they never enter a gradient. ``prior.lookahead_quantize=float8`` builds a second view of the UNet whose
linear layers run in float8 (e4m3 weights quantised once per output row, activations quantised per row at
run time, torchao ``Float8DynamicActivationFloat8WeightConfig`` with ``PerRow`` granularity) and gives it to
the lookahead only; the prediction at t that the SDS gradient uses stays in the prior's dtype.

Linear layers are about a third of an SD2.1 UNet call's FLOPs at 64x64 (convolutions half, attention
matmuls the rest), so float8 saves at most about a sixth of a call, and only compiled: eager torchao float8
was measured three times slower than bf16 (it quantises activations in separate kernels). How often the
float8 lookahead selects the same candidates as the exact one is measured by
:mod:`rewardsds.eval.agreement` (``scripts/benchmark.py`` reports it).
"""

from __future__ import annotations

import copy

import torch

from rewardsds.errors import ConfigError

#: float8 tensor-core matmuls (torch._scaled_mm) need Ada (8.9) or Hopper (9.0) and later
FLOAT8_MIN_CAPABILITY = (8, 9)
KEY = "prior.lookahead_quantize"


def check_float8_support(device: torch.device | str, dtype: torch.dtype) -> None:
    """Raise a ConfigError unless float8 lookahead can run: CUDA, compute capability >= 8.9, bf16 weights, torchao."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ConfigError(KEY, "float8", f"needs a CUDA GPU with compute capability >= 8.9, but the prior runs on {device.type}",
                          f"use {KEY}=none on this device")
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < FLOAT8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise ConfigError(KEY, "float8", f"needs compute capability >= 8.9 (Ada, Hopper or later); {name} has {cap[0]}.{cap[1]}",
                          f"use {KEY}=none on this GPU")
    if dtype != torch.bfloat16:
        raise ConfigError(KEY, "float8", f"quantises a bf16 UNet, but prior.dtype resolved to {dtype}",
                          "set prior.dtype=bf16 (or auto on a bf16-capable GPU)")
    try:
        import torchao  # noqa: F401
    except ImportError as err:
        raise ConfigError(KEY, "float8", "needs torchao, which is not installed",
                          "pip install 'rewardsds[float8]' (torchao==0.18.0), or use prior.lookahead_quantize=none") from err


def float8_linear_filter(module: torch.nn.Module, fqn: str) -> bool:
    """Quantise a linear layer only if float8 matmuls accept its shape (both sides multiples of 16)."""
    return isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def float8_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``unet`` (on its CUDA device, bf16) whose linear layers run dynamic float8 (per row).

    The original module is untouched. ``set_inductor_config=False``: torchao would otherwise change global
    Inductor settings (and the fp32 matmul precision) for every model in the process.

    Returns:
        the quantised copy, frozen, in eval mode.
    """
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    q = copy.deepcopy(unet)
    quantize_(q, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
              filter_fn=float8_linear_filter)
    q.requires_grad_(False)
    return q.eval()


def count_float8_linears(module: torch.nn.Module) -> tuple[int, int]:
    """(linear layers with float8 weights, all linear layers) of ``module``."""
    total = quantized = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            total += 1
            w = m.weight
            inner = getattr(w, "qdata", None)
            if inner is not None and inner.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                quantized += 1
    return quantized, total
