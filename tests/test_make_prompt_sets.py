"""scripts/make_prompt_sets.py writes prompt-set YAMLs in the layout of the shipped ones: rewriting each shipped set
from its own header, source and items gives the shipped file byte for byte (tests/test_prompts.py composes them)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETS = ("drawbench", "drawbench25", "drawbench50", "coco50", "dreamfusion30")  # the sets the script writes


def _script():
    spec = importlib.util.spec_from_file_location("make_prompt_sets", ROOT / "scripts" / "make_prompt_sets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _parts(text: str):
    """(header lines, source, rows) of a written set: what ``write_set`` takes."""
    lines = text.splitlines()
    header = [ln[2:] if ln.startswith("# ") else "" for ln in lines[: lines.index("defaults:")]]
    source = json.loads(next(ln for ln in lines if ln.startswith("source: "))[len("source: "):])
    rows = []
    for ln in lines[lines.index("items:") + 1:]:
        m = re.fullmatch(r'  - (".*")  # (\d+)(?: (.*))?', ln)
        assert m, ln
        rows.append((int(m.group(2)), json.loads(m.group(1)), m.group(3) or ""))
    return header, source, rows


@pytest.mark.parametrize("name", SETS)
def test_written_sets_match_the_shipped_ones(name, tmp_path, capsys):
    shipped = (ROOT / "rewardsds" / "conf" / "prompts" / f"{name}.yaml").read_text(encoding="utf-8")
    header, source, rows = _parts(shipped)
    _script().write_set(tmp_path, name, header, source, rows)
    assert (tmp_path / f"{name}.yaml").read_text(encoding="utf-8") == shipped

