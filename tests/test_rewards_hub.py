"""The real reward checkpoints (needs Hub access or a filled cache): ``python -m pytest -m hub tests/test_rewards_hub.py``.

Checks that each published checkpoint loads through the project's loaders and behaves like the model it
is: a matching caption scores higher than an unrelated one, the aesthetic score is on its 1-10 scale, and
the tensor path stays close to the PIL-exact path. Runs on CUDA when available, else CPU (slow).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.hub

MATCH, OTHER = "a red circle on a white background", "a photo of a crowded city street at night"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _red_disk(size: int = 512) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disk = (yy**2 + xx**2 < 0.35).float()
    img = torch.ones(1, 3, size, size)
    img[:, 1:] -= disk  # white background, red disk
    return img


def _build(name: str, **kw):
    from rewardsds.rewards.clip import CLIPScore
    from rewardsds.rewards.config import CLIPScoreConfig, HPSv2Config, ImageRewardConfig, PickScoreConfig
    from rewardsds.rewards.hpsv2 import HPSv2
    from rewardsds.rewards.image_reward import ImageReward
    from rewardsds.rewards.pickscore import PickScore

    cls, schema = {"image_reward": (ImageReward, ImageRewardConfig), "clip": (CLIPScore, CLIPScoreConfig),
                   "pickscore": (PickScore, PickScoreConfig), "hpsv2": (HPSv2, HPSv2Config)}[name]
    return cls(schema(dtype="fp32", **kw)).to(DEVICE)


@pytest.mark.parametrize("name", ["image_reward", "clip", "pickscore", "hpsv2"])
def test_matching_caption_scores_higher(name):
    reward = _build(name)
    x = _red_disk().expand(2, -1, -1, -1)
    scores = reward(x, [MATCH, OTHER])
    assert scores[0] > scores[1], scores
    exact = _build(name, pil_exact=True)(x, [MATCH, OTHER])
    assert torch.allclose(scores, exact, atol=0.02 * exact.abs().max().item() + 1e-3), (scores, exact)


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_aesthetic_scale(head_type):
    from rewardsds.rewards.aesthetic import AestheticReward
    from rewardsds.rewards.config import AestheticRewardConfig

    reward = AestheticReward(AestheticRewardConfig(head_type=head_type, dtype="fp32")).to(DEVICE)
    score = reward(_red_disk(), "ignored").item()
    assert 1.0 < score < 10.0, score
