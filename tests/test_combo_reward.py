"""Weighted-sum rewards, built directly and through Hydra from the conf/reward options."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import rewardsds.config as config
from rewardsds.errors import ConfigError
from rewardsds.rewards.aesthetic import AestheticReward
from rewardsds.rewards.base import RewardInputError
from rewardsds.rewards.clip import CLIPScore
from rewardsds.rewards.combo import ComboReward
from rewardsds.rewards.image_reward import ImageReward
from rewardsds.testing import random_aesthetic_head, save_random_clip, save_random_image_reward

CONF = Path(__file__).resolve().parents[1] / "conf"
PROMPTS = ["a red fox", "a cat"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("combo")
    clip = save_random_clip(root / "clip", "tiny")
    torch.save(random_aesthetic_head("linear", dim=16), root / "head.pth")
    ckpt, tok = save_random_image_reward(root / "ir", "tiny", words=["a", "red", "fox", "cat"])
    return {"clip": clip, "head": root / "head.pth", "ckpt": ckpt, "tok": tok}


@pytest.fixture(scope="module")
def root_conf(tmp_path_factory):
    """A minimal primary config that selects a reward option from the project's conf/reward group."""
    d = tmp_path_factory.mktemp("conf")
    (d / "reward").symlink_to(CONF / "reward", target_is_directory=True)
    (d / "root.yaml").write_text("defaults:\n  - _self_\n  - reward: combo\n")
    return d


def test_weighted_sum_and_component_logs(sources):
    clip = CLIPScore(pretrained=str(sources["clip"]), dtype="fp32", local_files_only=True)
    aes = AestheticReward(pretrained=str(sources["clip"]), head=str(sources["head"]), dtype="fp32",
                          local_files_only=True)
    combo = ComboReward({"clip": clip, "aesthetic": aes}, {"clip": 2.0, "aesthetic": -0.5})
    x = torch.rand(2, 3, 40, 40)
    expected = 2.0 * clip(x, PROMPTS) - 0.5 * aes(x, PROMPTS)
    assert torch.allclose(combo(x, PROMPTS), expected, atol=1e-6)
    assert set(combo.last_components) == {"clip", "aesthetic"}
    assert torch.allclose(combo.last_components["clip"], clip(x, PROMPTS))
    assert combo.uses_prompt and not combo.differentiable
    with pytest.raises(RewardInputError, match="not differentiable"):
        combo(x, PROMPTS, grad=True)
    with pytest.raises(RewardInputError, match="prompts"):
        combo(x, ["one"] * 3)


def test_differentiable_combo_passes_gradients(sources):
    clip = CLIPScore(pretrained=str(sources["clip"]), dtype="fp32", differentiable=True, local_files_only=True)
    aes = AestheticReward(pretrained=str(sources["clip"]), head=str(sources["head"]), dtype="fp32",
                          differentiable=True, local_files_only=True)
    combo = ComboReward({"clip": clip, "aesthetic": aes}, {"clip": 1.0, "aesthetic": 1.0})
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    combo(x, PROMPTS, grad=True).sum().backward()
    assert combo.differentiable and x.grad.abs().sum() > 0


def test_constructor_errors(sources):
    clip = CLIPScore(pretrained=str(sources["clip"]), local_files_only=True)
    with pytest.raises(ConfigError, match="reward.weights"):
        ComboReward({"clip": clip}, {"clip": 1.0, "other": 1.0})
    with pytest.raises(ConfigError, match="log-friendly"):
        ComboReward({"Clip Score": clip}, {"Clip Score": 1.0})
    with pytest.raises(ConfigError, match="is not a reward"):
        ComboReward({"clip": "openai/clip"}, {"clip": 1.0})


def test_hydra_composes_and_instantiates_nested_components(root_conf, sources):
    overrides = [
        f"reward.components.image_reward.checkpoint={sources['ckpt']}",
        f"reward.components.image_reward.tokenizer={sources['tok']}",
        "reward.components.image_reward.local_files_only=true",
        f"reward.components.aesthetic.pretrained={sources['clip']}",
        f"reward.components.aesthetic.head={sources['head']}",
        "reward.components.aesthetic.local_files_only=true",
        "+reward@reward.components.clip=clip",
        f"reward.components.clip.pretrained={sources['clip']}",
        "reward.components.clip.local_files_only=true",
        "+reward.weights.clip=0.25",
    ]
    with initialize_config_dir(config_dir=str(root_conf), version_base="1.3"):
        cfg = compose(config_name="root", overrides=overrides)
    typed = OmegaConf.to_object(cfg)["reward"]
    assert isinstance(typed, config.ComboRewardConfig)
    assert isinstance(typed.components["image_reward"], config.ImageRewardConfig)
    reward = instantiate(cfg.reward)
    assert isinstance(reward, ComboReward)
    assert isinstance(reward.components["image_reward"], ImageReward)
    assert reward.weights == {"image_reward": 1.0, "aesthetic": 0.1, "clip": 0.25}
    x = torch.rand(2, 3, 40, 40)
    parts = {k: c(x, PROMPTS) for k, c in reward.components.items()}
    expected = parts["image_reward"] + 0.1 * parts["aesthetic"] + 0.25 * parts["clip"]
    assert torch.allclose(reward(x, PROMPTS), expected, atol=1e-5)


@pytest.mark.parametrize("option", sorted(config.REWARD_MODEL_SCHEMAS))
def test_every_option_composes_and_validates(root_conf, option):
    with initialize_config_dir(config_dir=str(root_conf), version_base="1.3"):
        cfg = compose(config_name="root", overrides=[f"reward={option}"])
    typed = OmegaConf.to_object(cfg)["reward"]
    assert isinstance(typed, config.REWARD_MODEL_SCHEMAS[option])
    module, cls = cfg.reward._target_.rsplit(".", 1)
    assert module.startswith("rewardsds.rewards.")  # the mapping rule: conf/reward/* -> rewardsds.rewards.*
    klass = getattr(importlib.import_module(module), cls)
    params = {k: p.default for k, p in inspect.signature(klass.__init__).parameters.items() if k != "self"}
    fields = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(config.REWARD_MODEL_SCHEMAS[option])).items()
              if k != "_target_"}
    assert set(params) == set(fields), (option, set(params) ^ set(fields))
    for key, default in fields.items():
        if key in ("components", "weights"):
            continue
        assert getattr(params[key], "value", params[key]) == getattr(default, "value", default), (option, key)


@pytest.mark.parametrize("overrides, match", [
    (["reward=image_reward", "reward.pil_exact=true", "reward.differentiable=true"], "reward.pil_exact"),
    (["~reward.weights.aesthetic"], "reward.weights"),
])
def test_config_errors_name_the_key(root_conf, overrides, match):
    with initialize_config_dir(config_dir=str(root_conf), version_base="1.3"):
        cfg = compose(config_name="root", overrides=overrides)
    with pytest.raises(ConfigError, match=match):
        OmegaConf.to_object(cfg)


def test_flat_batches_of_views_score_like_single_views(sources):
    """3D: the candidate engine scores n candidates x b views as one flat candidate-major batch and averages
    per candidate (aggregate_views); every reward must score each view independently of its batch mates."""
    from rewardsds.rewards.base import aggregate_views

    rewards = [
        CLIPScore(pretrained=str(sources["clip"]), dtype="fp32", local_files_only=True),
        AestheticReward(pretrained=str(sources["clip"]), head=str(sources["head"]), dtype="fp32", local_files_only=True),
        ImageReward(checkpoint=str(sources["ckpt"]), tokenizer=str(sources["tok"]), dtype="fp32", local_files_only=True),
    ]
    n, b = 2, 3
    views = torch.rand(n * b, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    for reward in rewards:
        flat = reward(views, "a red fox")
        single = torch.cat([reward(views[i : i + 1], "a red fox") for i in range(n * b)])
        assert torch.allclose(flat, single, atol=1e-5), reward.name
        assert torch.allclose(aggregate_views(flat, n, "mean"), single.view(n, b).mean(1), atol=1e-5)
        assert aggregate_views(flat, n, "per_view").shape == (n, b)
