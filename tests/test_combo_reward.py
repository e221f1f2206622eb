"""Weighted-sum rewards, built directly and through Hydra from the conf/reward options."""

from __future__ import annotations

import importlib
import inspect
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import rewardsds.config as config
from rewardsds.errors import ConfigError
from rewardsds.rewards.aesthetic import AestheticReward
from rewardsds.rewards.base import RewardInputError
from rewardsds.rewards.clip import CLIPScore
from rewardsds.rewards.combo import ComboReward
from rewardsds.rewards.config import AestheticRewardConfig, CLIPScoreConfig, ComboRewardConfig, ImageRewardConfig
from rewardsds.rewards.image_reward import ImageReward
from rewardsds.schema import build
from rewardsds.testing import random_aesthetic_head, save_random_clip, save_random_image_reward

CONF = Path(__file__).resolve().parents[1] / "conf"
PROMPTS = ["a red fox", "a cat"]
REWARD_OPTIONS = sorted(p.stem for p in (CONF / "reward").glob("*.yaml"))


def _target(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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


def _clip_config(sources, **options) -> CLIPScoreConfig:
    return CLIPScoreConfig(_target_=_target(CLIPScore), pretrained=str(sources["clip"]), dtype="fp32",
                           local_files_only=True, **options)


def _aesthetic_config(sources, **options) -> AestheticRewardConfig:
    return AestheticRewardConfig(_target_=_target(AestheticReward), pretrained=str(sources["clip"]),
                                 head=str(sources["head"]), dtype="fp32", local_files_only=True, **options)


def test_weighted_sum_and_component_logs(sources):
    clip = CLIPScore(_clip_config(sources))
    aes = AestheticReward(_aesthetic_config(sources))
    combo = ComboReward(ComboRewardConfig(
        components={"clip": _clip_config(sources), "aesthetic": _aesthetic_config(sources)},
        weights={"clip": 2.0, "aesthetic": -0.5}))
    assert isinstance(combo.components["clip"], CLIPScore)
    assert isinstance(combo.components["aesthetic"], AestheticReward)
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
    combo = ComboReward(ComboRewardConfig(
        components={"clip": _clip_config(sources, differentiable=True),
                    "aesthetic": _aesthetic_config(sources, differentiable=True)},
        weights={"clip": 1.0, "aesthetic": 1.0}))
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    combo(x, PROMPTS, grad=True).sum().backward()
    assert combo.differentiable and x.grad.abs().sum() > 0


def test_schema_errors(sources):
    clip = _clip_config(sources)
    with pytest.raises(ConfigError, match="reward.weights"):
        ComboRewardConfig(components={"clip": clip}, weights={"clip": 1.0, "other": 1.0})
    with pytest.raises(ConfigError, match="log-friendly"):
        ComboRewardConfig(components={"Clip Score": clip}, weights={"Clip Score": 1.0})
    with pytest.raises(ConfigError, match="is not a reward"):
        ComboRewardConfig(components={"clip": "openai/clip"}, weights={"clip": 1.0})


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
    assert isinstance(typed, ComboRewardConfig)
    assert isinstance(typed.components["image_reward"], ImageRewardConfig)
    reward = build(typed)
    assert isinstance(reward, ComboReward)
    assert isinstance(reward.components["image_reward"], ImageReward)
    assert reward.cfg.weights == {"image_reward": 1.0, "aesthetic": 0.1, "clip": 0.25}
    x = torch.rand(2, 3, 40, 40)
    parts = {k: c(x, PROMPTS) for k, c in reward.components.items()}
    expected = parts["image_reward"] + 0.1 * parts["aesthetic"] + 0.25 * parts["clip"]
    assert torch.allclose(reward(x, PROMPTS), expected, atol=1e-5)


@pytest.mark.parametrize("option", REWARD_OPTIONS)
def test_every_option_composes_and_builds_a_class_that_takes_its_schema(root_conf, option):
    """Each conf/reward option extends one reward schema, and its _target_ class takes that schema as its one
    constructor argument (so the option's validated settings are exactly what the class reads)."""
    declared = yaml.safe_load((CONF / "reward" / f"{option}.yaml").read_text())["defaults"][0]
    schema_name = declared.removeprefix("/schema/reward/").removesuffix("@_here_")
    with initialize_config_dir(config_dir=str(root_conf), version_base="1.3"):
        cfg = compose(config_name="root", overrides=[f"reward={option}"])
    typed = OmegaConf.to_object(cfg)["reward"]
    assert type(typed).__name__ == schema_name and type(typed) in config.GROUP_SCHEMAS["reward"], (option, type(typed))
    module, cls = typed._target_.rsplit(".", 1)
    assert module.startswith("rewardsds.rewards.")  # the mapping rule: conf/reward/* -> rewardsds.rewards.*
    klass = getattr(importlib.import_module(module), cls)
    assert list(inspect.signature(klass.__init__).parameters) == ["self", "cfg"], option
    assert typing.get_type_hints(klass.__init__)["cfg"] is type(typed), option


def test_every_reward_schema_has_an_option():
    used = {yaml.safe_load((CONF / "reward" / f"{o}.yaml").read_text())["defaults"][0] for o in REWARD_OPTIONS}
    assert {f"/schema/reward/{s.__name__}@_here_" for s in config.GROUP_SCHEMAS["reward"]} <= used


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
        CLIPScore(CLIPScoreConfig(pretrained=str(sources["clip"]), dtype="fp32", local_files_only=True)),
        AestheticReward(AestheticRewardConfig(pretrained=str(sources["clip"]), head=str(sources["head"]), dtype="fp32",
                                              local_files_only=True)),
        ImageReward(ImageRewardConfig(checkpoint=str(sources["ckpt"]), tokenizer=str(sources["tok"]), dtype="fp32",
                                      local_files_only=True)),
    ]
    n, b = 2, 3
    views = torch.rand(n * b, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    for reward in rewards:
        flat = reward(views, "a red fox")
        single = torch.cat([reward(views[i : i + 1], "a red fox") for i in range(n * b)])
        assert torch.allclose(flat, single, atol=1e-5), reward.name
        assert torch.allclose(aggregate_views(flat, n, "mean"), single.view(n, b).mean(1), atol=1e-5)
        assert aggregate_views(flat, n, "per_view").shape == (n, b)
