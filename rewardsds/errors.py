"""Errors that name the offending key, its value and the fix."""

from __future__ import annotations

from enum import Enum
from typing import Any


class RewardSDSError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RewardSDSError, ValueError):
    """A configuration value is invalid.

    The message always has the form ``<key> = <value>: <problem>. Fix: <fix>`` so a user can act on
    it without reading code. A choice (an Enum member) shows as the value the user wrote (``'randn'``).
    """

    def __init__(self, key: str, value: Any, problem: str, fix: str):
        self.key, self.value, self.problem, self.fix = key, value, problem, fix
        shown = value.value if isinstance(value, Enum) else value
        super().__init__(f"{key} = {shown!r}: {problem}. Fix: {fix}")


class ModelLoadError(RewardSDSError, OSError):
    """A pretrained model (prior, reward head, checkpoint) could not be found or loaded."""


class DiskFullError(RewardSDSError, OSError):
    """The disk filled up while a run wrote one of its files (the previous version of that file is kept)."""

    def __init__(self, path: Any):
        self.path = path
        super().__init__(f"no space left on the device while writing {path}; the previous version of that file and the "
                         "last checkpoint are kept. Fix: free space there (or point hydra.run.dir / hydra.sweep.dir at "
                         "another disk) and resume the run with resume=<run folder>")


class TrainingAborted(RewardSDSError, RuntimeError):
    """The run stopped on purpose (too many non-finite gradients, ...); outputs so far are kept."""


#: Seeds reach numpy (``lightning.seed_everything``), which takes 32-bit unsigned values only.
SEED_MAX = 2**32 - 1


def check_seed(check, key: str, seed: Any) -> None:
    """``check`` that ``seed`` is an integer in [0, 2**32 - 1] (numpy's range; Lightning replaces others with 0)."""
    check(isinstance(seed, int) and 0 <= seed <= SEED_MAX, key, seed, f"must be an integer in [0, 2**32 - 1 = {SEED_MAX}]",
          "use e.g. 0, 1, 2, ...")


def check_betas(check, key: str, betas: Any, fix: str) -> None:
    """``check`` that ``betas`` are Adam's two moment decay rates, each in [0, 1)."""
    values = list(betas)
    check(len(values) == 2, key, values, "needs two values", fix)
    check(all(0.0 <= float(b) < 1.0 for b in values), key, values,
          "must both be in [0, 1) (Adam's decay rates of the gradient's moments)", fix)


def check_grad_clip(check, key: str, value: Any) -> None:
    """``check`` that an elementwise gradient clamp is off (None) or a positive bound."""
    check(value is None or value > 0, key, value, "must be > 0 (the field is clamped to [-grad_clip, grad_clip]) or null",
          "use null (off) or e.g. 1.0")


def is_missing_local_path(source: Any) -> bool:
    """Whether ``source`` is written as a local path (absolute, relative with ./ or ../, ~, or more than one
    ``/``-separated part: a Hub id is ``org/name``) and nothing exists there."""
    import os
    from pathlib import Path

    text = str(source or "")
    if not text or "://" in text:
        return False
    local = text.startswith(("/", "./", "../", "~")) or len([p for p in text.split("/") if p]) > 2 or (os.sep != "/" and os.sep in text)
    return local and not Path(text).expanduser().exists()


def model_load_message(what: str, source: str, cause: BaseException | str, local_hint: str, hub: bool = False) -> str:
    """The one wording used for every model that cannot be loaded.

    Args:
        what: human name of the model ("Stable Diffusion prior").
        source: the Hub id, URL or path that was tried.
        cause: the underlying exception or a short reason.
        local_hint: the config key that takes a local path (``prior.pretrained``).
        hub: ``source`` names a file of a Hub repo (``org/name/file.pt``), which is never a missing local path.
    """
    if not hub and is_missing_local_path(source):
        return (f"could not load the {what} from {source!r} (no such file or folder on this machine: a local path, not a "
                f"Hub id). Fix: set {local_hint}=/path/to/local/folder to where the files are, or to a Hub id such as "
                f"org/name. To try the framework without any weights, run the offline demo: rewardsds experiment=demo")
    return (
        f"could not load the {what} from {source!r} ({type(cause).__name__ if isinstance(cause, BaseException) else 'reason'}: "
        f"{cause}). This machine may have no Hub access: download the files elsewhere and set "
        f"{local_hint}=/path/to/local/folder, or fill the Hugging Face cache and set HF_HUB_OFFLINE=1. "
        f"To try the framework without any weights, run the offline demo: rewardsds experiment=demo"
    )


class CheckpointError(RewardSDSError):
    """A checkpoint to resume from is missing, empty, corrupt or not a rewardsds run checkpoint."""

    def __init__(self, path: Any, problem: str, fix: str):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"checkpoint {path} {problem}. Fix: {fix}")


class RunInterrupted(RewardSDSError):
    """A run stopped on a signal after writing its checkpoint (status ``interrupted``)."""

    def __init__(self, signal_name: str, exit_code: int, step: int, total: int, run_dir: Any, checkpoint_step: Any = "this"):
        """``checkpoint_step``: the step of the run's last checkpoint, ``"this"`` (written at this stop), None (no
        checkpoint was ever written: a second Ctrl-C before the first periodic one) or ``"earlier"`` (unknown)."""
        self.exit_code, self.step, self.run_dir = exit_code, step, run_dir
        where = f"interrupted by {signal_name} at step {step} of {total}"
        if checkpoint_step is None:
            message = (f"{where}, before its first checkpoint: there is nothing to continue from (the outputs so far are "
                       f"in {run_dir}). Run the same command again to start over")
        elif checkpoint_step == "this" or checkpoint_step == step:
            message = f"{where}; the checkpoint and outputs so far are in {run_dir}. Continue with: rewardsds resume={run_dir}"
        else:
            of = f"of step {checkpoint_step}" if isinstance(checkpoint_step, int) else "of an earlier step"
            message = (f"{where}, at once: its last checkpoint is {of} (the steps after it are lost) and it is in {run_dir} "
                       f"with the outputs so far. Continue with: rewardsds resume={run_dir}")
        super().__init__(message)
