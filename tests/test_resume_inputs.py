"""A resumed run reads the input files of the run it continues (prompts file, init image), from the folder that run
was started in, whatever folder the resume is started from and wherever the run folder was copied to; a resume whose
overrides Hydra cannot compose is one message and leaves the run as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from conftest import run_cli

RUN = ["experiment=analytic", "trainer=cpu", "logger=none", "output.video=false", "output.image_every=0",
       "lookahead.steps=2", "output.checkpoint_every=2"]


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _elsewhere(tmp_path: Path, run: Path) -> tuple[Path, Path]:
    """A copy of ``run`` in another folder, and the folder above it (where the resume is started)."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    copy = other / "P"
    shutil.copytree(run, copy)
    return copy, other


def test_resume_reads_a_relative_prompts_file_from_the_folder_the_run_started_in(tmp_path):
    start = tmp_path / "U"
    start.mkdir()
    (start / "my_prompts.txt").write_text("a blue square\n")
    r = run_cli(["-m", *RUN, "prompts_file=my_prompts.txt", "steps=4", f"hydra.sweep.dir={start}/sweep"], start)
    assert r.returncode == 0, r.stderr[-3000:]
    (job,) = [p.parent for p in (start / "sweep").glob("*/metrics.json")]
    assert _metrics(job)["prompt"] == "a blue square"
    copy, other = _elsewhere(tmp_path, job)

    # the folder the resume starts in has no prompts file: the run's own is read
    r = run_cli([f"resume={copy}", "steps=6"], other)
    assert r.returncode == 0, r.stderr[-3000:]
    m = _metrics(copy)
    assert m["status"] == "complete" and m["iterations"] == 6 and m["prompt"] == "a blue square", m
    # recorded absolute, so any later resume reads the same file
    assert f"prompts_file={start / 'my_prompts.txt'}" in m["overrides"], m["overrides"]

    # another my_prompts.txt where the resume starts is not the run's and is not read; and the run's prompt is the one
    # it recorded: its prompts file edited (here) or gone (below) since it started changes nothing
    (other / "my_prompts.txt").write_text("a red square\n")
    (start / "my_prompts.txt").write_text("a green square\n")
    r = run_cli([f"resume={copy}", "steps=8"], other)
    assert r.returncode == 0, r.stderr[-3000:]
    m = _metrics(copy)
    assert m["iterations"] == 8 and m["prompt"] == "a blue square" and "changes" not in m["sessions"][-1], m
    (start / "my_prompts.txt").unlink()
    r = run_cli([f"resume={copy}", "steps=10"], other)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _metrics(copy)["iterations"] == 10 and _metrics(copy)["prompt"] == "a blue square"
    # choosing another prompt of the list is another experiment (read from the list, then refused)
    (start / "my_prompts.txt").write_text("a blue square\na red square\n")
    r = run_cli([f"resume={copy}", "steps=11", "prompt_index=1"], other)
    assert r.returncode == 2 and "prompt: 'a blue square' -> 'a red square'" in r.stderr, r.stderr[-3000:]


def test_resume_reads_a_relative_init_image_from_the_folder_the_run_started_in(tmp_path):
    from PIL import Image

    start = tmp_path / "U"
    (start / "inputs").mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype("uint8")).save(start / "inputs" / "img.png")
    run = start / "run"
    r = run_cli([*RUN, "representation.init=image", "representation.init_image=inputs/img.png", "steps=4",
                 f"hydra.run.dir={run}"], start)
    assert r.returncode == 0, r.stderr[-3000:]
    copy, other = _elsewhere(tmp_path, run)

    r = run_cli([f"resume={copy}", "steps=6"], other)
    assert r.returncode == 0, r.stderr[-3000:]
    m = _metrics(copy)
    assert m["status"] == "complete" and m["iterations"] == 6 and "changes" not in m["sessions"][-1], m
    assert f"representation.init_image={start / 'inputs' / 'img.png'}" in m["overrides"], m["overrides"]

    # a different image of the same name where the resume starts would be another experiment's input: not read
    (other / "inputs").mkdir()
    (other / "inputs" / "img.png").write_bytes(b"not an image")
    r = run_cli([f"resume={copy}", "steps=8"], other)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _metrics(copy)["iterations"] == 8


def test_input_paths_of_a_resume(tmp_path):
    from rewardsds.resume import absolute_input_paths

    base = tmp_path / "a b"
    assert absolute_input_paths(["prompts_file=p.txt", "loss.image=/abs/x.png", "+representation.init_path=pts.ply",
                                 "prompt=p.txt", "representation.init_image='my img.png'"], base) == [
        f"prompts_file='{base}/p.txt'",  # quoted for Hydra: the path holds a space
        "loss.image=/abs/x.png",
        f"+representation.init_path='{base}/pts.ply'",
        "prompt=p.txt",
        f"representation.init_image='{base}/my img.png'",
    ]


def test_resume_with_a_group_option_that_lacks_a_key_the_run_sets_leaves_the_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    r = run_cli([*RUN, "steps=2", f"hydra.run.dir={run}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    before = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    r = run_cli([f"resume={run}", "steps=4", "reward=clip"], tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.startswith("rewardsds: error: reward = 'clip': experiment=analytic sets reward.preferred, which "
                               "reward=clip (CLIPScoreConfig) does not have. Fix: use reward=analytic"), r.stderr
    assert "nothing in" in r.stderr and "HYDRA_FULL_ERROR" not in r.stderr
    assert {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_a_local_model_folder_is_read_from_the_start_folder_and_a_hub_id_is_left_alone(tmp_path):
    """``prior.pretrained=./sd`` names a folder under the folder the run was started in (from_pretrained's rule: a
    relative value is a path only where it exists); ``org/name`` that exists nowhere there stays a Hub id."""
    from omegaconf import OmegaConf

    from rewardsds.resume import absolute_input_paths, saved_config

    start = tmp_path / "start"
    (start / "sd").mkdir(parents=True)
    (start / "ir.pt").write_bytes(b"")
    overrides = ["prior.pretrained=sd", "reward.checkpoint=ir.pt", "reward.pretrained=openai/clip-vit-large-patch14",
                 "reward.processor=missing_folder", "steps=3"]
    assert absolute_input_paths(overrides, start) == [
        f"prior.pretrained={start / 'sd'}", f"reward.checkpoint={start / 'ir.pt'}",
        "reward.pretrained=openai/clip-vit-large-patch14", "reward.processor=missing_folder", "steps=3"]

    run = tmp_path / "elsewhere" / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"cwd": str(start)}}}), run / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create({"prior": {"pretrained": "sd"}, "reward": {"pretrained": "org/name"}}),
                   run / "config_resolved.yaml")
    cfg = saved_config(run)
    assert cfg.prior.pretrained == str(start / "sd") and cfg.reward.pretrained == "org/name"


def test_a_combined_rewards_component_model_paths_are_read_from_the_start_folder(tmp_path):
    """``reward=combo``: each component names its own model (``reward.components.image_reward.checkpoint=ir.pt``, at any
    depth of nesting); a relative local one is read from the folder the run was started in, in the overrides of a
    resume and in the saved config alike; a Hub id, and a key that is not a model field, stay as written."""
    from omegaconf import OmegaConf

    from rewardsds.resume import absolute_input_paths, is_model_source, saved_config

    assert is_model_source("reward.components.image_reward.checkpoint")
    assert is_model_source("reward.components.mix.components.clip.pretrained")
    assert not is_model_source("reward.components.image_reward.dtype") and not is_model_source("reward.weights.checkpoint")
    start = tmp_path / "start"
    (start / "ckpts").mkdir(parents=True)
    (start / "ckpts" / "ir.pt").write_bytes(b"")
    (start / "clip").mkdir()
    overrides = ["reward=combo", "reward.components.image_reward.checkpoint=ckpts/ir.pt",
                 "+reward.components.mix.components.clip.pretrained=clip",
                 "reward.components.aesthetic.pretrained=openai/clip-vit-large-patch14", "reward.components.image_reward.dtype=bf16"]
    assert absolute_input_paths(overrides, start) == [
        "reward=combo", f"reward.components.image_reward.checkpoint={start / 'ckpts' / 'ir.pt'}",
        f"+reward.components.mix.components.clip.pretrained={start / 'clip'}",
        "reward.components.aesthetic.pretrained=openai/clip-vit-large-patch14", "reward.components.image_reward.dtype=bf16"]

    run = tmp_path / "elsewhere" / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"cwd": str(start)}}}), run / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create({"reward": {"components": {
        "image_reward": {"checkpoint": "ckpts/ir.pt", "med_config": "org/med", "dtype": "fp32"},
        "mix": {"components": {"clip": {"pretrained": "clip"}}}}}}), run / "config_resolved.yaml")
    cfg = saved_config(run)
    assert cfg.reward.components.image_reward.checkpoint == str(start / "ckpts" / "ir.pt")
    assert cfg.reward.components.mix.components.clip.pretrained == str(start / "clip")
    assert cfg.reward.components.image_reward.med_config == "org/med" and cfg.reward.components.image_reward.dtype == "fp32"
