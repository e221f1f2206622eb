"""Prompt sets (conf/prompts/), prompt files and their expansion into sweep jobs (in process, no training)."""

from __future__ import annotations

import hashlib
import re

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose
from rewardsds.config import job_dirname, validate
from rewardsds.errors import ConfigError
from rewardsds.prompts import PromptSet, prompt_list, slugify, sweep_params

SETS = sorted(p.stem for p in (CONF_DIR / "prompts").glob("*.yaml"))
SIZES = {"analytic": 2, "nerf22": 22, "drawbench": 200, "drawbench25": 25, "drawbench50": 50, "coco50": 50, "dreamfusion30": 30}


def _items(name: str) -> list[str]:
    return list(OmegaConf.load(CONF_DIR / "prompts" / f"{name}.yaml")["items"])


def test_the_paper_sets_are_all_there():
    assert set(SIZES) <= set(SETS)


@pytest.mark.parametrize("name", SETS)
def test_every_set_composes_and_selects_by_index(name):
    items = _items(name)
    assert len(items) == SIZES.get(name, len(items)) and len(set(items)) == len(items)
    assert all(isinstance(p, str) and p == p.strip() and p for p in items)
    last = len(items) - 1
    cfg = compose(["experiment=analytic", f"prompts={name}", f"prompt_index={last}"])
    typed = validate(cfg)
    assert typed.prompt == items[last] and cfg.prompt == items[last]
    assert typed.prompts.name == name


@pytest.mark.parametrize("name", SETS)
def test_every_set_records_its_source(name):
    text = (CONF_DIR / "prompts" / f"{name}.yaml").read_text()
    header = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    assert OmegaConf.load(CONF_DIR / "prompts" / f"{name}.yaml")["source"]
    if name in ("drawbench25", "drawbench50", "coco50", "dreamfusion30"):
        # the paper's subsets are unpublished: the file says so and gives the rule, seed and source file
        assert "NOT the paper's list" in header and "seed 0" in header
        assert re.search(r"@ [0-9a-f]{40}", header) and re.search(r"sha256 of that file [0-9a-f]{64}", header)
    if name == "nerf22":
        assert "Table 8" in header and "arXiv:2503.09601" in header


def test_nerf22_is_the_papers_table_8():
    items = _items("nerf22")
    assert items[0] == "A basketball player dunking a basketball"
    assert items[7] == "A penguin with a brown bag in the snow"
    assert items[21] == "World cup trophy, high quality, realistic, HD"


def test_drawbench_subsets_follow_the_recorded_rule():
    """drawbench25/50 are the prompts of the full list with the smallest sha256("0:<prompt>"), in list order."""
    full = _items("drawbench")
    ranked = sorted(range(len(full)), key=lambda i: (hashlib.sha256(f"0:{full[i]}".encode()).hexdigest(), i))
    for k in (25, 50):
        assert _items(f"drawbench{k}") == [full[i] for i in sorted(ranked[:k])]
    assert set(_items("drawbench25")) < set(_items("drawbench50")) < set(full)


def test_dreamfusion30_holds_the_prompts_of_the_papers_figure_12():
    items = _items("dreamfusion30")
    for p in ["a DSLR photo of a bagel filled with cream cheese and lox", "a silver platter piled high with fruits",
              "a zoomed out DSLR photo of a colorful camping tent in a patch of grass", "a palm tree, low poly 3d model"]:
        assert p in items


def test_prompts_file(tmp_path):
    f = tmp_path / "my prompts.txt"
    f.write_text("# a comment line\na red fox\n\n  a blue car  \n")
    cfg = compose(["experiment=analytic", f"prompts_file='{f}'", "prompt_index=1"])
    assert validate(cfg).prompt == "a blue car"
    prompts, key, _ = prompt_list(cfg)
    assert prompts.items == ["a red fox", "a blue car"] and key == "prompts_file" and prompts.name == "my prompts"


@pytest.mark.parametrize("overrides, key, fix", [
    (["prompts=analytic"], "prompts", "prompt_index=<0..1>"),
    (["prompts=analytic", "prompt_index=2"], "prompt_index", "use 0..1"),
    (["prompt_index=0"], "prompt_index", "prompts=<set>"),
    (["prompts_file=/no/such/file.txt", "prompt_index=0"], "prompts_file", "one prompt a line"),
    (["prompts=analytic", "prompts_file=/x.txt", "prompt_index=0"], "prompts_file", "choose one prompt list"),
])
def test_prompt_list_errors_name_key_and_fix(overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        validate(compose(["experiment=analytic", *overrides]))
    assert str(err.value).startswith(key) and fix in str(err.value), str(err.value)


def test_empty_prompts_file_is_an_error(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        validate(compose(["experiment=analytic", f"prompts_file={f}", "prompt_index=0"]))


def test_prompts_file_that_is_a_folder_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(compose(["experiment=analytic", f"prompts_file={tmp_path}", "prompt_index=0"]))
    assert str(err.value).startswith("prompts_file = ") and "is a folder, not a file" in str(err.value), str(err.value)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a red fox\na cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        validate(compose(["experiment=analytic", f"prompts_file={latin1}", "prompt_index=0"]))
    msg = str(err.value)
    assert msg.startswith("prompts_file = ") and "is not UTF-8 text (byte 0xe8 on line 2)" in msg and "save it as UTF-8" in msg, msg


def test_prompts_file_with_a_byte_order_mark(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_text("a red fox\na blue car\n", encoding="utf-8-sig")
    assert validate(compose(["experiment=analytic", f"prompts_file={f}", "prompt_index=0"])).prompt == "a red fox"


def test_sweep_params_expand_a_list_into_one_job_per_prompt(tmp_path):
    assert sweep_params(compose(["experiment=analytic", "prompts=drawbench25"])) == {"prompt_index": "range(0,25)"}
    f = tmp_path / "p.txt"
    f.write_text("a\nb\nc\n")
    assert sweep_params(compose(["experiment=analytic", f"prompts_file={f}"])) == {"prompt_index": "range(0,3)"}
    assert sweep_params(compose(["experiment=analytic"])) == {}


def test_job_folder_names_carry_index_and_slug():
    cfg = compose(["experiment=analytic", "prompts=drawbench25"])
    name = job_dirname(["prompt_index=3", "prompts=drawbench25", "strategy=min_max", "n_noises=8", "logger=none"], _root_=cfg)
    assert name == "n_noises=8,prompt=03-an_elephant_under_the_sea,strategy=min_max"
    # without the config (or an unknown index) the override stays as it is
    assert job_dirname(["prompt_index=3", "strategy=none"]) == "prompt_index=3,strategy=none"
    assert job_dirname(["prompt_index=99"], _root_=cfg) == "prompt_index=99"


def test_slug_and_label():
    assert slugify("A sign that says 'Hello World'.") == "a_sign_that_says_hello_world"
    assert slugify("Painting of the orange cat Otto von Garfield, Count of Bismarck") == "painting_of_the_orange_cat_otto_von"
    assert len(slugify("x" * 100)) == 40 and slugify("!!!") == "prompt"
    assert PromptSet("s", [f"p {i}" for i in range(12)]).label(3) == "03-p_3"


def test_command_line_prompt_index_wins_over_the_set():
    """The basic sweeper keeps the last value of a key: prompt_index=0,2 on the command line replaces range(0,N)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = sweep_params(compose(["experiment=analytic", "prompts=drawbench25"]))
    parsed = OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in params.items()] + ["prompt_index=0,2", "strategy=none,min_max"])
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    assert jobs == [["prompt_index=0", "strategy=none"], ["prompt_index=0", "strategy=min_max"],
                    ["prompt_index=2", "strategy=none"], ["prompt_index=2", "strategy=min_max"]]
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    assert len(BasicSweeper.split_arguments(parsed, None)[0]) == 25


def test_a_swept_setup_key_names_the_job_folder(monkeypatch):
    """Setup keys (experiment, trainer, ...) stay out of job folder names unless the sweep varies them: two
    experiments of one sweep must not share a folder (the second would be skipped as complete)."""
    from rewardsds.overrides import SWEPT_KEYS_ENV, swept_keys

    assert swept_keys(["-m", "experiment=analytic,demo", "steps=2", "+x=range(1,3)"]) == ["experiment", "x"]
    assert swept_keys(["experiment=analytic", "steps=2"]) == []
    job = ["experiment=demo", "steps=2", "logger=none"]
    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)
    assert job_dirname(job) == "steps=2"
    monkeypatch.setenv(SWEPT_KEYS_ENV, "experiment")
    assert job_dirname(job) == "experiment=demo,steps=2"
