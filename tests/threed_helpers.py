"""Helpers shared by the 3D tests: the CUDA guard and the schema/constructor check."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch


def requires_cuda():
    """Skip (with the reason shown by ``-ra``) when no CUDA device is visible; use on ``gpu`` tests."""
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def assert_built_from_schema(target_cls, cfg) -> None:
    """The class's only setting is its schema: the constructor takes one ``cfg`` of that schema (no keyword defaults
    repeating the schema's), and an instance built from ``cfg`` reads its settings from that very object."""
    import typing

    params = [k for k in inspect.signature(target_cls.__init__).parameters if k != "self"]
    assert params == ["cfg"], params
    assert typing.get_type_hints(target_cls.__init__)["cfg"] is type(cfg)
    assert dataclasses.is_dataclass(cfg)
    assert target_cls(cfg).cfg is cfg
