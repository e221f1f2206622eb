"""Helpers shared by the 3D tests: the CUDA guard and the schema/constructor check."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from rewardsds.schedules import Schedule


def requires_cuda():
    """Skip (with the reason shown by ``-ra``) when no CUDA device is visible; use on ``gpu`` tests."""
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _plain(v):
    if hasattr(v, "value"):
        return v.value
    if isinstance(v, (list, tuple)):
        return list(v)
    return v


def assert_schema_matches_constructor(schema_cls, target_cls) -> None:
    """The schema's fields (minus ``_target_``) are the constructor's keyword arguments, same defaults."""
    fields = [f.name for f in dataclasses.fields(schema_cls) if f.name != "_target_"]
    params = {k: v for k, v in inspect.signature(target_cls.__init__).parameters.items() if k != "self"}
    assert set(fields) == set(params)
    cfg = schema_cls()
    for name, p in params.items():
        got, want = getattr(cfg, name), p.default
        if isinstance(got, Schedule):
            assert Schedule.from_any(want) == got, name
        else:
            assert _plain(got) == _plain(want), name
