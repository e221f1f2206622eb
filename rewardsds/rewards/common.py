"""Shared plumbing of the learned rewards: file resolution with clear errors, state-dict loading, heads, compiling.

Every learned reward resolves its weights through :func:`resolve_file` (Hub id, local folder, local
file or URL) so a missing file always raises the same :class:`~rewardsds.errors.ModelLoadError` wording
(file, source, and the config key that takes a local path).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from rewardsds.errors import ModelLoadError, model_load_message


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def url_cache_path(url: str) -> Path:
    """Where a URL download is cached: ``$TORCH_HOME/hub/checkpoints/<file name>`` (torch.hub's cache)."""
    name = url.split("?")[0].rstrip("/").split("/")[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resolve_file(
    source: str,
    filename: str,
    *,
    what: str,
    key: str,
    local_files_only: bool = False,
    revision: Optional[str] = None,
) -> Path:
    """Find one file of a model: a local file, a file inside a local folder, a URL (cached) or a Hub repo.

    Args:
        source: local file path, local folder, ``http(s)://`` URL, or Hugging Face Hub repo id.
        filename: the file wanted inside a folder or repo (ignored when ``source`` is a file or URL).
        what: human name for errors ("ImageReward checkpoint").
        key: the config key that takes a local path ("reward.checkpoint").
        local_files_only: never touch the network (Hub cache or URL cache only).

    Returns:
        Path of the file on disk.
    """
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return path
    if path.is_dir():
        target = path / filename
        if target.is_file():
            return target
        raise ModelLoadError(model_load_message(
            what, str(target), FileNotFoundError(f"{filename} not found in folder {path}"), key))
    if _is_url(source):
        cached = url_cache_path(source)
        if cached.is_file():
            return cached
        if local_files_only:
            raise ModelLoadError(model_load_message(
                what, source, FileNotFoundError(f"not in the download cache {cached} and local_files_only=true"), key))
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(source, str(cached), progress=False)
        except Exception as err:  # network errors come in many types (URLError, HTTPError, OSError, ...)
            raise ModelLoadError(model_load_message(what, source, err, key)) from err
        return cached
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelLoadError(model_load_message(what, source, FileNotFoundError("no such file or folder"), key))
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, filename, revision=revision, local_files_only=local_files_only))
    except Exception as err:  # hub errors: offline, missing repo or file, auth
        raise ModelLoadError(model_load_message(what, f"{source}/{filename} (Hugging Face Hub)", err, key, hub=True)) from err


def load_pretrained(loader: Callable, source: str, *, what: str, key: str, local_files_only: bool, **kwargs):
    """``loader(source, local_files_only=..., **kwargs)`` (a ``from_pretrained``) with the project's error wording."""
    try:
        return loader(source, local_files_only=local_files_only, **kwargs)
    except Exception as err:  # transformers raises OSError / ValueError / hub errors for missing files
        raise ModelLoadError(model_load_message(what, source, err, key)) from err


def unusable_file_error(what: str, path: object, cause: BaseException, key: str) -> ModelLoadError:
    """A file was found but does not hold what it should (wrong file, wrong head type, foreign keys)."""
    return ModelLoadError(f"the {what} file {str(path)!r} cannot be used ({type(cause).__name__}: {cause}). "
                          f"Fix: point {key} at the published file (or leave it unset to use the default)")


def load_state_dict_file(path: Path, *, what: str, key: str) -> dict[str, Tensor]:
    """Read a ``.pt``/``.pth``/``.safetensors`` state dict (tensors only, memory-mapped where possible)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ModelLoadError(model_load_message(what, str(path), err, key)) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(model_load_message(
            what, str(path), TypeError("the file does not hold a state dict of tensors"), key))
    return dict(obj)


class StackedLinearHead(nn.Module):
    """The 768 -> 1024 -> 128 -> 64 -> 16 -> 1 linear stack of the improved aesthetic predictor and ImageReward.

    Both originals interleave dropout layers (state-dict indices 0, 2, 4, 6, 7) and, notably, no
    activations: the head is an affine map written as five layers. The identity slots keep the original
    indices so checkpoints load by name.
    """

    def __init__(self, in_features: int = 768, widths: tuple[int, ...] = (1024, 128, 64, 16, 1)):
        super().__init__()
        w = [in_features, *widths]
        self.layers = nn.Sequential(
            nn.Linear(w[0], w[1]), nn.Identity(), nn.Linear(w[1], w[2]), nn.Identity(),
            nn.Linear(w[2], w[3]), nn.Identity(), nn.Linear(w[3], w[4]), nn.Linear(w[4], w[5]),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: rewards are frozen; gradients (if any) flow to the images only."""
    module.eval()
    module.requires_grad_(False)
    return module


def materialize_position_ids(model: nn.Module) -> None:
    """Recreate the non-persistent ``position_ids`` buffers that a meta-device construction leaves empty.

    transformers' embedding modules keep ``position_ids = arange(num_positions)[None]`` as a buffer that
    is not saved in state dicts; after ``load_state_dict(assign=True)`` on a meta model they are the only
    tensors left without data.
    """
    for m in model.modules():
        buf = getattr(m, "position_ids", None)
        if isinstance(buf, Tensor) and buf.is_meta:
            tables = [getattr(m, a, None) for a in ("position_embedding", "position_embeddings")]
            tables = [t for t in tables if isinstance(t, nn.Embedding)]
            n = tables[0].num_embeddings if tables else buf.shape[-1]
            m.position_ids = torch.arange(n).expand((1, -1))
    left = [name for name, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"buffers left without data after loading: {left}")


def compile_for_scoring(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``torch.compile`` with CUDA graphs (``mode="reduce-overhead"``) for the no-grad scoring path.

    Reward models at batch 8 are launch-bound (hundreds of small kernels); replaying a CUDA graph per input
    shape removes the launch cost (ImageReward bf16 on an H100: 13.6 ms eager -> 4.7 ms). Each new input
    shape compiles once (10-30 s). Outputs live in the graph's memory pool and are cloned before they are
    returned. With gradients enabled, or on CPU inputs, the eager function runs: the differentiable path is
    unchanged and CPU runs never wait for a compiler.
    """
    compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)

    def run(*args: Tensor) -> Tensor:
        if torch.is_grad_enabled() or not args[0].is_cuda:
            return fn(*args)
        return compiled(*args).clone()

    return run
