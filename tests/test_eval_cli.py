"""``rewardsds-eval`` on a fake sweep of finished 2D and 3D runs, with tiny metric models given as sources."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rewardsds.eval import cli
from rewardsds.rewards.aesthetic import AestheticReward
from rewardsds.rewards.clip import CLIPScore
from rewardsds.rewards.image_reward import ImageReward
from rewardsds.rewards.random_init import random_aesthetic_head, save_random_clip, save_random_image_reward


def _png(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _run(folder, info, images):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(info))
    for i, (sub, h, w) in enumerate(images):
        _png(folder / sub / f"{i:03d}.png", h, w, seed=hash((str(folder), i)) % 1000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    clip = save_random_clip(root / "models" / "clip", "tiny")
    torch.save(random_aesthetic_head("linear", dim=16), root / "models" / "head.pth")
    ckpt, tok = save_random_image_reward(root / "models" / "ir", "tiny", words=["a", "red", "fox", "blue", "car"])
    sweep = root / "sweep"
    _run(sweep / "min_max_s0", {"prompt": "a red fox", "status": "complete", "strategy": "min_max", "n_noises": 4,
                                "seed": 0, "reward_best": 0.5}, [("final", 64, 48)])
    _run(sweep / "3d" / "none_s1", {"prompt": "a blue car", "status": "complete", "strategy": "none", "n_noises": 1,
                                    "seed": 1}, [("eval", 40, 40), ("eval", 40, 40), ("eval", 40, 40), ("final", 40, 40)])
    _run(sweep / "running", {"prompt": "a fox", "status": "running", "strategy": "best", "seed": 2}, [("final", 32, 32)])
    (root / "sources.yaml").write_text(
        f"aesthetic:\n  pretrained: {clip}\n  head: {root / 'models' / 'head.pth'}\n  local_files_only: true\n")
    overrides = [f"clip.pretrained={clip}", "clip.local_files_only=true",
                 f"reward.image_reward.checkpoint={ckpt}", f"image_reward.tokenizer={tok}",
                 "image_reward.local_files_only=true"]
    argv = [str(sweep), "--metrics", "clip,aesthetic,image_reward", "--device", "cpu", "--batch-size", "2",
            "--sources", str(root / "sources.yaml")] + [a for o in overrides for a in ("--override", o)]
    assert cli.main(argv) == 0
    return {"sweep": sweep, "clip": clip, "head": root / "models" / "head.pth", "ckpt": ckpt, "tok": tok}


def test_csv_has_one_row_per_finished_run(setup):
    with open(setup["sweep"] / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["3d/none_s1", "min_max_s0"]
    header = list(rows[0])
    assert header[:5] == ["run", "prompt", "strategy", "n_noises", "seed"]
    assert header[-3:] == ["eval/clip", "eval/aesthetic", "eval/image_reward"]
    assert "reward_best" in header and "status" not in header
    assert rows[0]["images"] == "3" and rows[1]["strategy"] == "min_max" and rows[0]["reward_best"] == ""
    assert not (setup["sweep"] / "running" / "eval_metrics.json").exists()


def test_scores_equal_direct_evaluation(setup):
    """Per-run values are the means of the same rewards applied directly (PIL-exact, fp32) to the PNGs."""
    run = setup["sweep"] / "3d" / "none_s1"
    result = json.loads((run / "eval_metrics.json").read_text())
    assert result["images"] == "eval" and result["n_images"] == 3
    assert sorted(result["per_image"]["clip"]) == ["eval/000.png", "eval/001.png", "eval/002.png"]
    views = torch.cat([cli.load_png(run / "eval" / f"{i:03d}.png") for i in range(3)])
    rewards = {
        "clip": CLIPScore(pretrained=str(setup["clip"]), dtype="fp32", pil_exact=True, local_files_only=True),
        "aesthetic": AestheticReward(pretrained=str(setup["clip"]), head=str(setup["head"]), dtype="fp32",
                                     pil_exact=True, local_files_only=True),
        "image_reward": ImageReward(checkpoint=str(setup["ckpt"]), tokenizer=str(setup["tok"]), dtype="fp32",
                                    pil_exact=True, local_files_only=True),
    }
    for name, reward in rewards.items():
        direct = reward(views, "a blue car")
        assert result["metrics"][name] == pytest.approx(direct.mean().item(), abs=1e-5), name
        assert result["per_image"][name]["eval/001.png"] == pytest.approx(direct[1].item(), abs=1e-5)
    assert result["sources"]["clip"]["pretrained"] == str(setup["clip"])
    assert result["sources"]["clip"]["pil_exact"] is True and result["sources"]["clip"]["dtype"] == "fp32"


def test_rerun_with_one_metric_keeps_the_others(setup):
    before = json.loads((setup["sweep"] / "min_max_s0" / "eval_metrics.json").read_text())["metrics"]
    argv = [str(setup["sweep"]), "--metrics", "clip", "--device", "cpu", "--override", f"clip.pretrained={setup['clip']}",
            "--override", "clip.local_files_only=true"]
    assert cli.main(argv) == 0
    after = json.loads((setup["sweep"] / "min_max_s0" / "eval_metrics.json").read_text())["metrics"]
    assert after == pytest.approx(before)


@pytest.mark.parametrize("argv_tail, match", [
    (["--metrics", "clip", "--override", "checkpoint=/x"], "expected <metric>.<field>=<value>"),
    (["--metrics", "clip", "--override", "pickscore.pretrained=/x"], "not in --metrics"),
    (["--metrics", "sharpness"], "unknown metric 'sharpness'"),
    (["--metrics", "clip", "--batch-size", "0"], "--batch-size"),
])
def test_bad_arguments_say_what_to_do(setup, argv_tail, match):
    with pytest.raises(SystemExit, match=match):
        cli.main([str(setup["sweep"]), *argv_tail])


def test_invalid_field_value_is_a_config_error(setup):
    from rewardsds.errors import ConfigError

    with pytest.raises(ConfigError, match="reward.pil_exact"):
        cli.main([str(setup["sweep"]), "--metrics", "clip", "--override", "clip.differentiable=true"])
