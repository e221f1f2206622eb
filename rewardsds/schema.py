"""What every config schema shares: the dtype choice, the checks that name the key, the value and the fix, and
:func:`build`, which turns a validated schema into the object it configures.

Each component's schema lives beside its class, in its package's ``config`` module (``rewardsds/priors/config.py``
for ``rewardsds/priors/sd.py`` ...); an option YAML extends the schema by its class name and names the class it
builds in ``_target_``; the class's constructor takes the validated schema object, whose ``__post_init__`` holds
every default and every check. Schema modules are torch-free, so that composing a config (``rewardsds --help``,
shell completion) never imports torch.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from rewardsds.errors import ConfigError


class DType(str, Enum):
    auto = "auto"  # a half precision on CUDA (bf16, or the model's own: fp16 for the SD prior), fp32 on CPU
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def build(node: Any, **kwargs: Any) -> Any:
    """The object a validated config node describes: ``<node._target_>(node, **kwargs)`` (a class or a factory).

    Args:
        node: a schema instance (``OmegaConf.to_object`` of a composed group, or built in Python) whose
            ``_target_`` names the class.
        kwargs: run-time arguments that are not settings (e.g. a logger's ``save_dir``).
    """
    from hydra.utils import get_object

    target = getattr(node, "_target_", None)
    if not target or target == "???":
        raise ConfigError(f"{type(node).__name__}._target_", target, "names no class to build",
                          "give the option YAML a _target_ (the class the schema configures)")
    return get_object(target)(node, **kwargs)


def check(cond: bool, key: str, value: Any, problem: str, fix: str) -> None:
    """Raise :class:`ConfigError` naming ``key``, ``value``, the problem and the fix unless ``cond`` holds."""
    if not cond:
        raise ConfigError(key, value, problem, fix)


def check_name(key: str, value: Optional[str], fix: str) -> None:
    """A name that becomes part of a file or folder path must stay one path component (no '/', '\\', '.' or '..'),
    so that nothing is written outside the folder it names a child of."""
    if value is None:
        return
    v = str(value)
    check(v.strip() != "", key, value, "is empty", fix)
    check(not any(sep in v for sep in ("/", "\\")) and v.strip() not in (".", ".."), key, value,
           "is used as a file or folder name and would write outside its folder (no path separators, '.' or '..')", fix)


def enum_option(enum_cls, value, key: str):
    try:
        return enum_cls(value.value if isinstance(value, Enum) else value)
    except ValueError:
        options = ", ".join(e.value for e in enum_cls)
        raise ConfigError(key, value, "is not a known option", f"use one of: {options}") from None
