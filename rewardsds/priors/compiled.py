"""``torch.compile`` of a frozen UNet (with CUDA graphs for the fixed-shape lookahead) and VAE decoder, and their cache.

``mode`` is torch.compile's: ``default`` (Inductor kernels), ``reduce-overhead`` (Inductor kernels replayed
as CUDA graphs, one graph per input shape: the lookahead calls the UNet with the same candidate batch K
times per step, so the launch overhead of every kernel is paid once per shape instead of once per call),
``max-autotune`` (autotuned GEMMs + CUDA graphs) or ``max-autotune-no-cudagraphs``.

CUDA-graph outputs live in memory the next replay overwrites, so :class:`CompiledModule` marks a new step
before each call and hands back a copy: a caller may keep the prediction at t while the lookahead runs.

The VAE decoder of the candidates (no gradient) is compiled too, in ``default`` mode with static shapes (one
graph per candidate batch): Inductor fuses its normalisations and activations, and no CUDA-graph pool holds
its large activations between steps.

``prior.compile`` is ``auto`` (on for CUDA, off elsewhere), ``true`` or ``false``. Compiling the full SD UNet
takes minutes on a fresh machine, so the Inductor FX-graph and AOTAutograd caches are pointed at a persistent
per-user folder before the first compile (``prior.compile_cache``, default ``~/.cache/rewardsds/torchinductor``):
the first run on a machine pays the compile, later runs and the jobs of a sweep load the compiled kernels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from rewardsds.errors import ConfigError
from rewardsds.priors.config import DEFAULT_COMPILE_MODE
from rewardsds.utils.quiet import quiet_dynamo_version_checks

#: the modes that replay CUDA graphs
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def resolve_compile(compile: bool | str, device: torch.device | str) -> bool:
    """Whether to compile on ``device``: ``auto`` compiles on CUDA only (CPU runs stay eager and start at once).

    Args:
        compile: a validated ``prior.compile`` (``True``, ``False`` or ``"auto"``).
        device: where the prior runs.
    """
    if compile == "auto":
        return torch.device(device).type == "cuda"
    return bool(compile)


# ----------------------------------------------------------------------------------------- persistent cache
def default_compile_cache() -> Path:
    """``$XDG_CACHE_HOME/rewardsds/torchinductor`` (``~/.cache/rewardsds/torchinductor``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rewardsds" / "torchinductor"


def configure_compile_cache(setting: Optional[str] = "auto") -> Optional[Path]:
    """Point torch's compile caches at a persistent folder; call before the first compile.

    Inductor keeps compiled graphs (FX-graph cache, with the Triton kernels under ``<dir>/triton``) and
    AOTAutograd keeps traced joint graphs (autograd cache) under ``$TORCHINDUCTOR_CACHE_DIR``, default
    ``/tmp/torchinductor_<user>``, which a reboot or a tmp cleaner empties. Both caches are switched on
    explicitly (they are on by default in torch >= 2.5, but a user's config may have turned them off in code;
    the ``TORCHINDUCTOR_FX_GRAPH_CACHE`` / ``TORCHINDUCTOR_AUTOGRAD_CACHE`` environment variables still win,
    as torch reads them as overrides).

    Args:
        setting: ``auto``: ``$TORCHINDUCTOR_CACHE_DIR`` if the user set it, else :func:`default_compile_cache`;
            ``torch``: leave torch's own default; any other string: that folder (``~`` expanded).

    Returns:
        the folder now in ``$TORCHINDUCTOR_CACHE_DIR`` (created), or None for ``torch``.
    """
    setting = "auto" if setting is None else str(setting)
    if setting == "torch":
        return None
    if setting == "auto":
        folder = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) if os.environ.get("TORCHINDUCTOR_CACHE_DIR") else default_compile_cache()
    else:
        folder = Path(setting).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("prior.compile_cache", setting, f"cannot be created ({err})",
                          "give a writable folder, or prior.compile_cache=torch for torch's default") from err
    # Inductor reads the variable whenever it needs the folder, so setting it before the first compile suffices.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder.resolve())
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return folder


def compile_seconds() -> float:
    """Seconds ``torch.compile`` has spent in this process so far: Dynamo's tracing and the backend's compile (or
    its cache loads), all frames together; CUDA-graph capture happens when a graph first runs and is not counted.

    0.0 when nothing was compiled (Dynamo not even imported) or when this torch keeps no such record.
    """
    import sys

    utils = sys.modules.get("torch._dynamo.utils")
    metrics = getattr(utils, "compilation_time_metrics", None) if utils is not None else None
    if not metrics:
        return 0.0
    return float(sum(metrics.get("_compile.compile_inner", ())))


def _own(out: Any) -> Any:
    """Copy tensors out of CUDA-graph memory (diffusers output dataclasses, tuples or a tensor)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_own(o) for o in out)
    if hasattr(out, "sample"):
        return type(out)(sample=out.sample.clone())
    return out


class CompiledModule:
    """Call a ``torch.compile``-d module; static shapes under CUDA graphs, outputs the caller owns.

    Args:
        module: the frozen module or function (weights already on the GPU in their final dtype and memory format).
        mode: a validated ``prior.compile_mode`` (one of :data:`rewardsds.priors.config.COMPILE_MODES`).
        cache: the compile cache setting (:func:`configure_compile_cache`), applied before compiling.
        static: compile one graph per input shape even without CUDA graphs (which always need static shapes).
    """

    def __init__(self, module: Any, mode: str = DEFAULT_COMPILE_MODE, cache: Optional[str] = "auto", static: bool = False):
        self.module = module
        self.mode = mode
        self.cudagraphs = mode in CUDAGRAPH_MODES
        self.static = static or self.cudagraphs
        self.cache_dir = configure_compile_cache(cache)
        quiet_dynamo_version_checks()
        # static: one graph per (batch, size) seen, never a dynamic-shape kernel
        self._fn = torch.compile(module, mode=None if mode == "default" else mode, dynamic=False if self.static else None)

    def __call__(self, *args, **kwargs):
        if not self.cudagraphs:
            return self._fn(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return _own(self._fn(*args, **kwargs))

    def __repr__(self) -> str:
        name = getattr(self.module, "__qualname__", type(self.module).__name__)
        return f"CompiledModule(mode={self.mode!r}, module={name}, cache={str(self.cache_dir) if self.cache_dir else 'torch'!r})"
