"""``rewardsds-eval`` evaluators on a fake sweep of finished 2D and 3D runs, with tiny random models given as sources:
CLIP score against torchmetrics, ImageReward and aesthetic against the rewards, results in eval_metrics.json and
metrics.json, and the one message (exit 2) when a model cannot be loaded offline."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import gpu_test
from rewardsds.eval import cli
from rewardsds.eval.evaluators import EVALUATORS, load_png
from rewardsds.rewards.aesthetic import AestheticReward
from rewardsds.rewards.config import AestheticRewardConfig, ImageRewardConfig
from rewardsds.rewards.image_reward import ImageReward
from rewardsds.testing import random_aesthetic_head, save_random_clip, save_random_image_reward

#: with the tiny random CLIP (seed 0) and these images, "fox" scores a positive CLIP score, the others negative ones
PROMPTS = {"min_max_s0": "a red fox", "3d/none_s1": "fox", "3d/best_s2": "a red car"}


def _png(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _run(folder, info, images):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(info))
    for i, (sub, h, w) in enumerate(images):  # pixels seeded by the run's seed and the image index
        _png(folder / sub / f"{'view_' if sub == 'eval' else 'image_'}{i:03d}.png", h, w, seed=100 * info["seed"] + i)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    clip = save_random_clip(root / "clip", "tiny")
    torch.save(random_aesthetic_head("linear", dim=16), root / "head.pth")
    ckpt, tok = save_random_image_reward(root / "ir", "tiny", words=["a", "red", "fox", "blue", "car"])
    (root / "sources.yaml").write_text(
        f"aesthetic:\n  pretrained: {clip}\n  head: {root / 'head.pth'}\n  local_files_only: true\n")
    return {"clip": clip, "head": root / "head.pth", "ckpt": ckpt, "tok": tok, "sources": root / "sources.yaml"}


def _overrides(models):
    items = [f"clip_score.pretrained={models['clip']}", "clip_score.local_files_only=true",
             f"reward.image_reward.checkpoint={models['ckpt']}", f"image_reward.tokenizer={models['tok']}",
             "image_reward.local_files_only=true"]
    return [a for o in items for a in ("--override", o)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, models):
    sweep = tmp_path_factory.mktemp("eval") / "sweep"
    _run(sweep / "min_max_s0", {"prompt": PROMPTS["min_max_s0"], "status": "complete", "strategy": "min_max", "n_noises": 4,
                                "seed": 0, "reward_best": 0.5, "final/reward": 0.1}, [("final", 64, 48)])
    # 3D runs: the eval/view_*.png views written at the end of training are scored (final/*.png is not)
    _run(sweep / "3d" / "none_s1", {"prompt": PROMPTS["3d/none_s1"], "status": "complete", "strategy": "none", "n_noises": 1,
                                    "seed": 1, "representation": "nerf"},
         [("eval", 40, 40), ("eval", 40, 40), ("eval", 40, 40), ("final", 40, 40)])
    _run(sweep / "3d" / "best_s2", {"prompt": PROMPTS["3d/best_s2"], "status": "complete", "strategy": "best", "n_noises": 4,
                                    "seed": 2, "representation": "nerf"}, [("eval", 36, 44), ("eval", 36, 44)])
    _run(sweep / "running", {"prompt": "a fox", "status": "running", "strategy": "best", "seed": 2}, [("final", 32, 32)])
    argv = [str(sweep), "--metrics", "clip_score,aesthetic,image_reward", "--device", "cpu", "--batch-size", "2",
            "--sources", str(models["sources"]), "--bootstrap", "200", "--wandb", "off", *_overrides(models)]
    assert cli.main(argv) == 0
    return {"sweep": sweep, **models}


def test_csv_has_one_row_per_finished_run(setup):
    with open(setup["sweep"] / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["3d/best_s2", "3d/none_s1", "min_max_s0"]
    header = list(rows[0])
    assert header[:5] == ["run", "prompt", "strategy", "n_noises", "seed"]
    assert header[-3:] == ["eval/clip_score", "eval/aesthetic", "eval/image_reward"]
    assert "reward_best" in header and "status" not in header
    assert rows[1]["images"] == "3" and rows[2]["strategy"] == "min_max" and rows[1]["reward_best"] == ""
    assert not (setup["sweep"] / "running" / "eval_metrics.json").exists()


class _TorchmetricsCLIP(torch.nn.Module):
    """transformers 5's ``get_*_features`` return a ``BaseModelOutputWithPooling`` (its ``pooler_output`` is the
    projected embedding); torchmetrics 1.9 expects the tensor. This adapter changes only that return type."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


def _torchmetrics_parts(folder):
    """The model and processor torchmetrics' CLIPScore loads (``from_pretrained`` of the folder), with the PIL image
    processor that transformers 4 gave by default (transformers 5 defaults to a torchvision backend, 1/255 apart)."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(folder),
                         tokenizer=CLIPTokenizer.from_pretrained(folder))
    return _TorchmetricsCLIP(model), proc


def test_clip_score_is_torchmetrics_clip_score(setup):
    """Per image 100 * cos (torchmetrics' per-sample score); per run max(mean, 0) = torchmetrics' clip_score of the
    run's images (3D: its evaluation views)."""
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update, clip_score

    model, proc = _torchmetrics_parts(setup["clip"])
    signs = set()
    for name, prompt in PROMPTS.items():
        run = setup["sweep"] / name
        result = json.loads((run / "eval_metrics.json").read_text())
        files = sorted(result["per_image"]["clip_score"])
        assert files == sorted(f"{p.parent.name}/{p.name}" for p in (run / ("eval" if "3d" in name else "final")).glob("*.png"))
        images = [torch.from_numpy(np.array(Image.open(run / f).convert("RGB"))).permute(2, 0, 1) for f in files]
        with torch.no_grad():
            per_sample, n = _clip_score_update(images, [prompt] * len(images), model, proc)
            expected = clip_score(images, [prompt] * len(images), model_name_or_path=lambda: (model, proc))
        assert n == len(files)
        assert [result["per_image"]["clip_score"][f] for f in files] == pytest.approx(per_sample.tolist(), abs=2e-3)
        assert result["metrics"]["clip_score"] == pytest.approx(float(expected), abs=2e-3)
        signs.add(float(per_sample.mean()) > 0)
    assert signs == {True, False}  # both a positive mean and a clamped one were compared


def test_image_reward_and_aesthetic_equal_direct_evaluation(setup):
    """Per-run values are the means of the same rewards applied directly (PIL-exact, fp32) to the views."""
    run = setup["sweep"] / "3d" / "none_s1"
    result = json.loads((run / "eval_metrics.json").read_text())
    assert result["images"] == "eval" and result["n_images"] == 3
    views = torch.cat([load_png(run / "eval" / f"view_{i:03d}.png") for i in range(3)])
    rewards = {
        "aesthetic": AestheticReward(AestheticRewardConfig(pretrained=str(setup["clip"]), head=str(setup["head"]),
                                                           dtype="fp32", pil_exact=True, local_files_only=True)),
        "image_reward": ImageReward(ImageRewardConfig(checkpoint=str(setup["ckpt"]), tokenizer=str(setup["tok"]),
                                                      dtype="fp32", pil_exact=True, local_files_only=True)),
    }
    for name, reward in rewards.items():
        direct = reward(views, PROMPTS["3d/none_s1"])
        assert result["metrics"][name] == pytest.approx(direct.mean().item(), abs=1e-5), name
        assert result["per_image"][name]["eval/view_001.png"] == pytest.approx(direct[1].item(), abs=1e-5)
    assert result["sources"]["clip_score"]["pretrained"] == str(setup["clip"])
    assert result["sources"]["clip_score"]["pil_exact"] is True and result["sources"]["clip_score"]["dtype"] == "fp32"


def test_results_are_merged_into_metrics_json(setup):
    """eval/<metric> in metrics.json equals eval_metrics.json; every key the run wrote is kept; the tables use it."""
    run = setup["sweep"] / "min_max_s0"
    info = json.loads((run / "metrics.json").read_text())
    result = json.loads((run / "eval_metrics.json").read_text())["metrics"]
    assert {k: info[f"eval/{k}"] for k in EVALUATORS} == result
    assert info["reward_best"] == 0.5 and info["final/reward"] == 0.1 and info["status"] == "complete"
    with open(setup["sweep"] / "summary.csv") as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert float(rows["min_max"]["eval/clip_score/mean"]) == pytest.approx(result["clip_score"])


def test_rerun_with_one_metric_keeps_the_others(setup):
    before = json.loads((setup["sweep"] / "min_max_s0" / "eval_metrics.json").read_text())["metrics"]
    argv = [str(setup["sweep"]), "--metrics", "clip", "--device", "cpu", "--override", f"clip.pretrained={setup['clip']}",
            "--override", "clip.local_files_only=true", "--wandb", "off", "--no-plots"]
    assert cli.main(argv) == 0
    after = json.loads((setup["sweep"] / "min_max_s0" / "eval_metrics.json").read_text())["metrics"]
    assert {k: after[k] for k in before} == pytest.approx(before)
    # the raw reward option: the cosine itself, 100 times smaller than the CLIP score before its clamp
    per = json.loads((setup["sweep"] / "min_max_s0" / "eval_metrics.json").read_text())["per_image"]
    assert per["clip"]["final/image_000.png"] * 100 == pytest.approx(per["clip_score"]["final/image_000.png"], abs=1e-4)


@pytest.mark.parametrize("argv_tail, match", [
    (["--metrics", "clip", "--override", "checkpoint=/x"], "expected <metric>.<field>=<value>"),
    (["--metrics", "clip", "--override", "pickscore.pretrained=/x"], "not in --metrics"),
    (["--metrics", "sharpness"], "--metrics = 'sharpness': is not an evaluator or a reward option"),
    (["--metrics", "clip", "--batch-size", "0"], "--batch-size"),
    (["--metrics", "clip_score", "--override", "clip_score.differentiable=true"], "clip_score.pil_exact"),
    (["--metrics", "clip_score", "--override", "clip_score.pretrainedd=/x"],
     "clip_score.pretrainedd = '/x': is not a field of the clip_score metric's reward config (from --override). Fix: did you mean clip_score.pretrained?"),
    (["--metrics", "clip_score", "--override", "clip_score.pil_exact=maybe"], "clip_score.pil_exact = 'maybe': Value 'maybe' is not a valid bool"),
])
def test_bad_arguments_say_what_to_do(setup, capsys, argv_tail, match):
    assert cli.main([str(setup["sweep"]), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


# ------------------------------------------------------------------ offline: one message, exit 2
@pytest.mark.parametrize("metrics, model, key", [
    (None, "openai/clip-vit-large-patch14", "clip_score.pretrained"),  # the default metrics start with clip_score
    ("clip_score", "openai/clip-vit-large-patch14", "clip_score.pretrained"),
    ("image_reward", "THUDM/ImageReward", "image_reward.checkpoint"),
    ("aesthetic", "openai/clip-vit-large-patch14", "aesthetic.pretrained"),
])
def test_offline_model_gives_one_message_and_exit_2(setup, capsys, monkeypatch, tmp_path, metrics, model, key):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))  # an empty cache
    argv = [str(setup["sweep"]), "--device", "cpu", "--wandb", "off"] + (["--metrics", metrics] if metrics else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    name = key.split(".")[0]
    assert f"metric '{name}'" in err and model in err
    assert f"--override {key}=/path/to/local/copy" in err and "HF_HUB_OFFLINE=1" in err and "--metrics none" in err
    assert not re.search(r"(?<![\w])reward\.", err)  # no training key (reward.pretrained) in the advice
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 6


def test_a_local_model_path_that_is_not_there_gets_no_hub_advice(setup, capsys, tmp_path):
    """--override clip_score.pretrained=<a folder that does not exist>: the path is the problem, not the Hub."""
    missing = tmp_path / "no_clip_here"
    argv = [str(setup["sweep"]), "--device", "cpu", "--wandb", "off", "--metrics", "clip_score",
            "--override", f"clip_score.pretrained={missing}"]
    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("skipped ")]
    assert err[0].startswith(f"rewardsds-eval: metric 'clip_score' needs the CLIP model from '{missing}', which cannot be loaded "
                             "(no such file or folder on this machine: a local path, not a Hub id)")
    assert err[1:] == ["Fix: point --override clip_score.pretrained at an existing local copy (or a Hub id), or leave model "
                       "metrics out: --metrics none (tables of the metrics the runs wrote)"]


@gpu_test
def test_evaluators_on_cuda_match_the_cpu(setup, tmp_path):
    """The same evaluation with --device cuda (fp32) gives the CPU's values."""
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(setup["sweep"], sweep)
    argv = [str(sweep), "--metrics", "clip_score,aesthetic,image_reward", "--device", "cuda", "--sources",
            str(setup["sources"]), "--wandb", "off", "--no-plots", *_overrides(setup)]
    assert cli.main(argv) == 0
    for name in PROMPTS:
        cpu = json.loads((setup["sweep"] / name / "eval_metrics.json").read_text())["metrics"]
        gpu = json.loads((sweep / name / "eval_metrics.json").read_text())["metrics"]
        for metric in EVALUATORS:
            assert gpu[metric] == pytest.approx(cpu[metric], abs=2e-3 if metric == "clip_score" else 1e-4), (name, metric)


def test_evaluate_run_scores_a_3d_runs_views_and_records_them(setup, tmp_path):
    """The per-run API (for the end of a 3D run): the eval/view_*.png views averaged, recorded in both files."""
    import shutil

    from rewardsds.eval.evaluators import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(setup["sweep"] / "3d" / "none_s1", run)
    for f in ("eval_metrics.json",):
        (run / f).unlink()
    info = json.loads((run / "metrics.json").read_text())
    out = evaluate_run(run, ["clip_score"], overrides={"clip_score": [f"pretrained={setup['clip']}", "local_files_only=true"]})
    expected = json.loads((setup["sweep"] / "3d" / "none_s1" / "eval_metrics.json").read_text())["metrics"]["clip_score"]
    assert out == {"clip_score": pytest.approx(expected, abs=1e-4)}  # batch 8 here, 2 in the sweep: fp32 rounding
    after = json.loads((run / "metrics.json").read_text())
    assert after["eval/clip_score"] == out["clip_score"] and after["prompt"] == info["prompt"]
    assert json.loads((run / "eval_metrics.json").read_text())["n_images"] == 3


# ------------------------------------------------------------------ third-party noise on stderr
def test_torchao_enum_registration_notice_is_dropped_and_nothing_else(caplog):
    """torch logs one "Enum subclass ... register_constant() ... deprecated" record per torchao Enum when torchao is
    imported (by transformers' quantizer registry, on every model load); the filter drops those and only those."""
    import enum
    import logging

    from rewardsds.utils.quiet import ENUM_CONSTANT_MESSAGE, PYTREE_LOGGER, quiet_torchao_enum_constants

    ours = enum.Enum("Ours", "a b")
    theirs = enum.Enum("KernelPreference", "AUTO", module="torchao.quantization.quantize_.common.kernel_preference")
    quiet_torchao_enum_constants()
    quiet_torchao_enum_constants()  # idempotent: one filter
    logger = logging.getLogger(PYTREE_LOGGER)
    assert sum(type(f).__name__ == "TorchaoEnumConstantFilter" for f in logger.filters) == 1
    message = ENUM_CONSTANT_MESSAGE + " as an opaque value type. Calling register_constant() on Enum subclasses is deprecated"
    with caplog.at_level(logging.WARNING, logger=PYTREE_LOGGER):
        logger.warning(message, theirs)
        logger.warning(message, ours)
        logger.warning("something else about %s", theirs)
    assert [r.getMessage() for r in caplog.records] == [message % ours, f"something else about {theirs}"]


def test_the_eval_command_prints_no_torchao_enum_notices(tmp_path):
    """The real import: ``import torchao`` logs the notices (with this torch); rewardsds-eval loading a CLIP metric
    (transformers imports torchao) prints none of them, only its own message about the missing model."""
    import subprocess
    import sys

    pytest.importorskip("torchao", reason="torchao (the float8 extra) is not installed: nothing logs the notice")
    plain = subprocess.run([sys.executable, "-c", "import torchao"], capture_output=True, text=True, timeout=300)
    if "KernelPreference" not in plain.stderr:
        pytest.skip("this torch does not log the Enum register_constant notice for torchao")
    run = tmp_path / "sweep" / "run"
    _png(run / "final" / "image_000.png", 16, 16, 0)
    (run / "metrics.json").write_text(json.dumps({"status": "complete", "prompt": "a fox"}))
    r = subprocess.run([sys.executable, "-m", "rewardsds.eval.cli", str(tmp_path / "sweep"), "--metrics", "clip",
                        "--override", f"clip.pretrained={tmp_path / 'missing'}"], capture_output=True, text=True,
                       timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "rewardsds-eval: metric 'clip'" in r.stderr, r.stderr[-2000:]
    assert "register_constant" not in r.stderr and "KernelPreference" not in r.stderr, r.stderr[-2000:]
