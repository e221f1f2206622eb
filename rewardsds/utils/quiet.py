"""Narrow filters for known third-party noise that says nothing about a run (each names what it drops and why)."""

from __future__ import annotations

import enum
import logging

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
