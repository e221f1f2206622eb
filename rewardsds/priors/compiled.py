"""``torch.compile`` of a frozen UNet, with CUDA graphs for the fixed-shape lookahead when asked.

``mode`` is torch.compile's: ``default`` (Inductor kernels), ``reduce-overhead`` (Inductor kernels replayed
as CUDA graphs, one graph per input shape: the lookahead calls the UNet with the same candidate batch K
times per step, so the launch overhead of every kernel is paid once per shape instead of once per call),
``max-autotune`` (autotuned GEMMs + CUDA graphs) or ``max-autotune-no-cudagraphs``.

CUDA-graph outputs live in memory the next replay overwrites, so :class:`CompiledUNet` marks a new step
before each call and hands back a copy: a caller may keep the prediction at t while the lookahead runs.
"""

from __future__ import annotations

from typing import Any

import torch

from rewardsds.errors import ConfigError

#: accepted values of ``prior.compile_mode``
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes that replay CUDA graphs
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile_mode(mode: str, compile: bool = True) -> str:
    """Return ``mode`` if torch.compile knows it (and, for a non-default mode, ``compile`` is on), else a
    ConfigError naming ``prior.compile_mode``."""
    if mode not in COMPILE_MODES:
        raise ConfigError("prior.compile_mode", mode, "is not a torch.compile mode",
                          f"use one of {', '.join(COMPILE_MODES)} (reduce-overhead replays CUDA graphs)")
    if mode != "default" and not compile:
        raise ConfigError("prior.compile_mode", mode, "has no effect while prior.compile=false",
                          "add prior.compile=true (or drop prior.compile_mode)")
    return mode


def _own(out: Any) -> Any:
    """Copy tensors out of CUDA-graph memory (diffusers output dataclasses, tuples or a tensor)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_own(o) for o in out)
    if hasattr(out, "sample"):
        return type(out)(sample=out.sample.clone())
    return out


class CompiledUNet:
    """Call a ``torch.compile``-d module; static shapes under CUDA graphs, outputs the caller owns.

    Args:
        module: the frozen UNet (weights already on the GPU in their final dtype and memory format).
        mode: one of :data:`COMPILE_MODES`.
    """

    def __init__(self, module: torch.nn.Module, mode: str = "default"):
        self.module = module
        self.mode = check_compile_mode(mode)
        self.cudagraphs = mode in CUDAGRAPH_MODES
        # CUDA graphs need static shapes: one graph per (batch, size) seen, never a dynamic-shape kernel
        self._fn = torch.compile(module, mode=None if mode == "default" else mode, dynamic=False if self.cudagraphs else None)

    def __call__(self, *args, **kwargs):
        if not self.cudagraphs:
            return self._fn(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return _own(self._fn(*args, **kwargs))

    def __repr__(self) -> str:
        return f"CompiledUNet(mode={self.mode!r}, module={type(self.module).__name__})"
