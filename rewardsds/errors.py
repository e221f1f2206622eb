"""Errors that name the offending key, its value and the fix."""

from __future__ import annotations

from typing import Any


class RewardSDSError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RewardSDSError, ValueError):
    """A configuration value is invalid.

    The message always has the form ``<key> = <value>: <problem>. Fix: <fix>`` so a user can act on
    it without reading code.
    """

    def __init__(self, key: str, value: Any, problem: str, fix: str):
        self.key, self.value, self.problem, self.fix = key, value, problem, fix
        super().__init__(f"{key} = {value!r}: {problem}. Fix: {fix}")


class ModelLoadError(RewardSDSError, OSError):
    """A pretrained model (prior, reward head, checkpoint) could not be found or loaded."""


class TrainingAborted(RewardSDSError, RuntimeError):
    """The run stopped on purpose (too many non-finite gradients, ...); outputs so far are kept."""


def model_load_message(what: str, source: str, cause: BaseException | str, local_hint: str) -> str:
    """The one wording used for every model that cannot be loaded.

    Args:
        what: human name of the model ("Stable Diffusion prior").
        source: the Hub id, URL or path that was tried.
        cause: the underlying exception or a short reason.
        local_hint: the config key that takes a local path (``prior.pretrained``).
    """
    return (
        f"could not load the {what} from {source!r} ({type(cause).__name__ if isinstance(cause, BaseException) else 'reason'}: "
        f"{cause}). This machine may have no Hub access: download the files elsewhere and set "
        f"{local_hint}=/path/to/local/folder, or fill the Hugging Face cache and set HF_HUB_OFFLINE=1. "
        f"To try the framework without any weights, run the offline demo: rewardsds experiment=demo"
    )
