"""Narrow filters for known third-party noise that says nothing about a run (each names what it drops and why)."""

from __future__ import annotations

import enum
import logging
import os
import sys

#: the logger of torch's pytree registry and the start of its record for Enum classes given to register_constant
PYTREE_LOGGER = "torch.utils._pytree"
ENUM_CONSTANT_MESSAGE = "%s is an Enum subclass and is now natively supported by torch.compile"


class TorchaoEnumConstantFilter(logging.Filter):
    """Drops torch's "Enum subclass ... register_constant() ... deprecated" record for torchao's own Enums.

    torchao (imported by transformers' and diffusers' quantizer registries whenever it is installed, and by
    ``prior.lookahead_quantize=float8``) registers Enums such as ``KernelPreference`` and ``ScaleCalculationMode``
    as pytree constants at import; torch releases that support Enums natively log one warning per class for that,
    on every command that loads a model. Nothing here calls ``register_constant``; the same record for any class
    outside torchao still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(ENUM_CONSTANT_MESSAGE) and record.args):
            return True
        cls = record.args[0] if isinstance(record.args, tuple) else None
        third_party = (isinstance(cls, type) and issubclass(cls, enum.Enum)
                       and str(getattr(cls, "__module__", "")).split(".")[0] == "torchao")
        return not third_party


def quiet_torchao_enum_constants() -> None:
    """Install :class:`TorchaoEnumConstantFilter` on torch's pytree logger (once; call before torchao is imported)."""
    logger = logging.getLogger(PYTREE_LOGGER)
    if not any(isinstance(f, TorchaoEnumConstantFilter) for f in logger.filters):
        logger.addFilter(TorchaoEnumConstantFilter())


#: the environment switch that huggingface_hub reads at import, and transformers' bars follow
HUB_BARS_OFF = "HF_HUB_DISABLE_PROGRESS_BARS"


def quiet_progress_bars() -> bool:
    """Without a terminal on stderr, turn off the Hub libraries' tqdm bars (transformers' "Loading weights" at
    every model load, huggingface_hub's downloads): in a log file each is a run of carriage-return fragments that
    says nothing the command's own lines do not. With a terminal they stay, and so does a value the user set for
    ``HF_HUB_DISABLE_PROGRESS_BARS``. For the console scripts only (a notebook's stderr is no terminal either).

    The switch is the environment variable, read by huggingface_hub (and through it transformers) when imported;
    the libraries already imported are told directly. Returns whether the bars were turned off.
    """
    try:
        if sys.stderr.isatty():
            return False
    except (AttributeError, ValueError):
        pass
    if os.environ.get(HUB_BARS_OFF) is not None and os.environ[HUB_BARS_OFF].strip().lower() not in ("1", "true", "yes", "on"):
        return False  # the user asked for the bars
    os.environ.setdefault(HUB_BARS_OFF, "1")  # for libraries imported from here on (and child processes)
    # libraries already imported read the switch at their import: tell them directly
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        tf_logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as df_logging

        df_logging.disable_progress_bar()
    return True


#: the logger of diffusers' ModelMixin and the words of its record for a cast whose fp32 keep-list is empty
DIFFUSERS_MODELING_LOGGER = "diffusers.models.modeling_utils"
EMPTY_KEEP_LIST = "that should be kept in float32: []."


class EmptyFp32KeepListFilter(logging.Filter):
    """Drops diffusers' "There are modules in X that should be kept in float32: []" record.

    ``ModelMixin.to(dtype)`` logs it for every cast that names a dtype, also when the model keeps no module in fp32
    (the list it prints is empty, as for every SD and MVDream module): then no module is cast against the model's
    wish and the warning says nothing. Casts happen in VSD's trainable UNet copy, the MVDream checkpoint converter
    and the test models' writer. A record that lists modules still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and EMPTY_KEEP_LIST in record.msg)


def quiet_empty_fp32_keep_list() -> None:
    """Install :class:`EmptyFp32KeepListFilter` on diffusers' modeling logger (once; before or after its import)."""
    logger = logging.getLogger(DIFFUSERS_MODELING_LOGGER)
    if not any(isinstance(f, EmptyFp32KeepListFilter) for f in logger.filters):
        logger.addFilter(EmptyFp32KeepListFilter())


#: torch.compile's warning when it traces through diffusers' ``is_torch_version`` (an ``lru_cache`` of version strings)
DYNAMO_VERSION_CHECK_WARNING = (r"(?s)Dynamo detected a call to a `functools\.lru_cache`-wrapped function.*"
                                r"diffusers[/\\].*is_torch_version\(")


def quiet_dynamo_version_checks() -> None:
    """Ignore Dynamo's "call to a functools.lru_cache-wrapped function" warning where the function is diffusers'
    ``is_torch_version``.

    diffusers' up- and down-sampling blocks ask ``is_torch_version("<", "2.1")`` in bf16, so compiling a bf16 UNet or
    VAE (MVDream's default, ``prior.dtype=bf16``) printed two 8-line warnings. Tracing through the cache wrapper is
    exact here: the function compares two fixed version strings. The same warning about any other function still
    shows.
    """
    import warnings

    warnings.filterwarnings("ignore", message=DYNAMO_VERSION_CHECK_WARNING, category=UserWarning)


#: huggingface_hub's warning for an argument that diffusers' ``from_pretrained`` still passes to ``hf_hub_download``
HUB_SYMLINK_ARGUMENT_WARNING = r".*`local_dir_use_symlinks` argument is deprecated and ignored.*"


def quiet_hub_symlink_argument() -> None:
    """Ignore huggingface_hub's "`local_dir_use_symlinks` argument is deprecated and ignored" warning.

    diffusers' ``from_pretrained`` passes that argument on every Hub lookup, so loading a prior by Hub id warned about
    an argument no rewardsds code sets and no user can change (it showed in the CLI and in scripts alike).
    """
    import warnings

    warnings.filterwarnings("ignore", message=HUB_SYMLINK_ARGUMENT_WARNING, category=UserWarning)
