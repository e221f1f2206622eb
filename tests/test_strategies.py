"""Strategies against hand-computed weights, including ties and N = 1."""

import math

import pytest
import torch

from rewardsds.errors import ConfigError
from rewardsds.strategies import BestStrategy, MinMaxStrategy, NoStrategy, RandomStrategy, WeightedStrategy, weight_entropy
from rewardsds.strategies.config import BestStrategyConfig, MinMaxStrategyConfig, WeightedStrategyConfig


def test_min_max_reference_scale():
    r = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.1, 1.5])
    w = MinMaxStrategy(MinMaxStrategyConfig())(r)
    # top-2: indices 2 (2.0), 5 (1.5) -> 0.9/2; bottom-2: 1 (-1.0), 4 (0.1) -> -0.1/2
    expected = torch.tensor([0.0, -0.05, 0.45, 0.0, -0.05, 0.45])
    assert torch.allclose(w, expected)
    assert math.isclose(float(w.sum()), 0.8, abs_tol=1e-6)


def test_min_max_paper_scale_is_proportional():
    r = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.1, 1.5])
    wp = MinMaxStrategy(MinMaxStrategyConfig(scale="paper"))(r)
    assert torch.allclose(wp, torch.tensor([0.0, -0.1, 0.9, 0.0, -0.1, 0.9]) / 6)
    wm = MinMaxStrategy(MinMaxStrategyConfig())(r)
    assert torch.allclose(wp / wp.abs().max(), wm / wm.abs().max())


def test_min_max_ties_prefer_lower_index():
    r = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    w = MinMaxStrategy(MinMaxStrategyConfig(n_max=2, n_min=2))(r)
    assert torch.allclose(w, torch.tensor([0.45, 0.45, 0.0, -0.05, -0.05]))


def test_min_max_exactly_n_max_plus_n_min_and_too_few():
    w = MinMaxStrategy(MinMaxStrategyConfig())(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    assert torch.allclose(w, torch.tensor([0.45, 0.45, -0.05, -0.05]))
    with pytest.raises(ConfigError, match="n_noises"):
        MinMaxStrategy(MinMaxStrategyConfig())(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ConfigError, match="n_noises = 1"):
        MinMaxStrategy(MinMaxStrategyConfig())(torch.tensor([1.0]))


def test_min_max_without_push_away():
    w = MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=0))(torch.tensor([0.0, 3.0, 1.0]))
    assert torch.allclose(w, torch.tensor([0.0, 0.9, 0.0]))


def test_best_and_ties():
    assert torch.equal(BestStrategy(BestStrategyConfig())(torch.tensor([0.1, 0.7, 0.3])), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(BestStrategy(BestStrategyConfig(n_best=2))(torch.tensor([0.1, 0.7, 0.3])), torch.tensor([0.0, 0.5, 0.5]))
    assert torch.equal(BestStrategy(BestStrategyConfig())(torch.tensor([0.5, 0.5])), torch.tensor([1.0, 0.0]))
    assert torch.equal(BestStrategy(BestStrategyConfig())(torch.tensor([-3.0])), torch.tensor([1.0]))


def test_weighted_softmax_by_hand():
    r = torch.tensor([0.0, 1.0, 2.0])
    e = [math.exp(x) for x in (0.0, 1.0, 2.0)]
    assert torch.allclose(WeightedStrategy(WeightedStrategyConfig())(r), torch.tensor([x / sum(e) for x in e]))
    e2 = [math.exp(x / 0.5) for x in (0.0, 1.0, 2.0)]
    assert torch.allclose(WeightedStrategy(WeightedStrategyConfig(temperature=0.5))(r), torch.tensor([x / sum(e2) for x in e2]))
    assert torch.allclose(WeightedStrategy(WeightedStrategyConfig())(torch.tensor([3.0, 3.0])), torch.tensor([0.5, 0.5]))
    assert torch.allclose(WeightedStrategy(WeightedStrategyConfig())(torch.tensor([7.0])), torch.tensor([1.0]))


def test_weighted_standardize_removes_scale():
    r = torch.tensor([0.01, 0.02, 0.05])
    a = WeightedStrategy(WeightedStrategyConfig(standardize=True))(r)
    b = WeightedStrategy(WeightedStrategyConfig(standardize=True))(r * 100 + 3)
    assert torch.allclose(a, b, atol=1e-6)
    assert float(a.max()) > 0.6  # without standardising, 0.01-scale rewards would be almost uniform
    assert float(WeightedStrategy(WeightedStrategyConfig())(r).max()) < 0.35


def test_none_and_random():
    assert torch.allclose(NoStrategy()(torch.zeros(4)), torch.full((4,), 0.25))
    assert torch.equal(NoStrategy()(torch.zeros(1)), torch.ones(1))
    g = torch.Generator().manual_seed(3)
    w = RandomStrategy()(torch.zeros(5), g)
    assert float(w.sum()) == 1.0 and int((w > 0).sum()) == 1
    g2 = torch.Generator().manual_seed(3)
    assert torch.equal(RandomStrategy()(torch.zeros(5), g2), w)


def test_entropy():
    assert float(weight_entropy(torch.tensor([1.0, 0, 0]))) == pytest.approx(0.0, abs=1e-6)
    assert float(weight_entropy(torch.full((4,), 0.25))) == pytest.approx(math.log(4))
    assert float(weight_entropy(torch.tensor([0.45, 0.45, -0.05, -0.05]))) > 0


def test_bad_rewards_shape():
    with pytest.raises(ValueError, match="1-D"):
        MinMaxStrategy(MinMaxStrategyConfig())(torch.zeros(2, 2))
