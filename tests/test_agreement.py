"""Selection agreement (rewardsds.eval.agreement): identical paths agree, permuted rewards give the expected rate."""

import pytest
import torch

from rewardsds.eval.agreement import (Draw, collect_rewards, compare_selections, engine_selector, pool_reports, selection_agreement,
                                      selection_regret, selection_sets, wilson_interval)
from step_helpers import make_engine


def _rewards(k: int = 8, n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g).float() + 0.01 * torch.rand(n, generator=g) for _ in range(k)]


def _swap(r: torch.Tensor, rank_a: int, rank_b: int) -> torch.Tensor:
    """Exchange the rewards of the candidates ranked ``rank_a`` and ``rank_b`` (0 = best)."""
    order = torch.argsort(r, descending=True)
    out = r.clone()
    out[order[rank_a]], out[order[rank_b]] = r[order[rank_b]], r[order[rank_a]]
    return out


def test_selection_sets_follow_min_max():
    top, bottom = selection_sets(torch.tensor([0.3, 0.9, -1.0, 0.5, 0.0, 2.0]), n_max=2, n_min=2)
    assert top == {5, 1} and bottom == {2, 4}


def test_identical_paths_agree_everywhere():
    r = _rewards()
    rep = compare_selections(r, [x.clone() for x in r])
    assert rep.agreement == rep.top_agreement == rep.bottom_agreement == 1.0
    assert rep.n_draws == 8 and rep.rank_correlation == pytest.approx(1.0) and rep.reward_abs_err_over_spread == 0.0
    assert rep.regret_mean == rep.regret_max == 0.0
    assert rep.agreement_ci95[1] == 1.0 and rep.agreement_ci95[0] == pytest.approx(8 / (8 + 1.959964**2))  # 8 of 8: >= 68% only


def test_swapping_best_and_worst_in_half_the_draws_halves_the_rate():
    r = _rewards()
    fast = [_swap(x, 0, 7) if i % 2 == 0 else x for i, x in enumerate(r)]
    rep = compare_selections(r, fast)
    assert rep.agreement == 0.5 and rep.top_agreement == 0.5 and rep.bottom_agreement == 0.5
    assert [row["match"] for row in rep.per_draw] == [False, True] * 4
    # the fast top set holds the exact worst: its exact mean is (6 + 0) / 2 instead of (7 + 6) / 2, over a spread of 7
    assert [row["regret"] for row in rep.per_draw][1::2] == [0.0] * 4
    assert rep.regret_max == pytest.approx(3.5 / 7, abs=0.01) and rep.regret_mean == pytest.approx(0.25, abs=0.01)


def test_orders_inside_a_set_do_not_matter_but_crossing_a_boundary_does():
    r = _rewards()
    inside = [_swap(x, 0, 1) for x in r]  # best and second best exchange: the same top set
    rep = compare_selections(r, inside)
    assert rep.agreement == 1.0 and rep.rank_correlation < 1.0
    across = [_swap(x, 1, 2) if i < 3 else x for i, x in enumerate(r)]  # second and third exchange in 3 of 8 draws
    rep = compare_selections(r, across)
    assert rep.top_agreement == pytest.approx(5 / 8) and rep.bottom_agreement == 1.0 and rep.agreement == pytest.approx(5 / 8)
    assert rep.regret_max == pytest.approx(0.5 / 7, abs=0.005)  # a neighbour swap costs one rank step of 7, halved by the set


def test_wilson_interval_says_what_a_number_of_draws_can_show():
    lo, hi = wilson_interval(6, 8)  # the benchmark's quick agreement: 75% of 8 draws
    assert lo == pytest.approx(0.409, abs=1e-3) and hi == pytest.approx(0.929, abs=1e-3)
    assert wilson_interval(72, 72)[0] < 0.95 <= wilson_interval(73, 73)[0]  # 95% needs at least 73 agreeing draws
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_selection_regret_is_zero_for_ties_and_scales_with_what_was_lost():
    r = torch.tensor([5.0, 4.0, 4.0, 1.0, 0.0])
    top, bottom = selection_sets(r)
    assert selection_regret(r, top, bottom, top, bottom) == 0.0
    tied = frozenset({0, 2})  # the exact top is {0, 1}; candidate 2 ties candidate 1
    assert selection_regret(r, top, bottom, tied, bottom) == 0.0
    assert selection_regret(r, top, bottom, frozenset({0, 3}), bottom) == pytest.approx(1.5 / 5)
    assert selection_regret(r, top, bottom, top, frozenset({0, 4})) == pytest.approx(2.0 / 5)  # the best one among the worst
    assert selection_regret(torch.ones(4), *selection_sets(torch.ones(4)), frozenset({2, 3}), frozenset({0, 1})) == 0.0


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="same draws"):
        compare_selections(_rewards(3), _rewards(2))
    with pytest.raises(ValueError, match="no draws"):
        compare_selections([], [])


def test_engine_paths_on_the_analytic_prior(analytic_prior):
    """Two engines that compute the same thing (one chunked) agree on every draw; the selector keys noises on the
    draw's seed, so different seeds give different candidates."""
    from rewardsds.rewards.analytic import AnalyticReward
    from rewardsds.rewards.config import AnalyticRewardConfig

    p = analytic_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["blue"]))
    text = p.text_cond(["a disk"], "")
    g = torch.Generator().manual_seed(0)
    draws = [Draw(seed=s, step=k, t=int(t), latents=torch.randn(1, 3, 16, 16, generator=g) * 0.5)
             for s in range(2) for k, t in enumerate([900, 600, 300])]
    exact = engine_selector(make_engine(p, reward, 15, 7.5, seed=99), text, ["a disk"], 8)
    chunked = engine_selector(make_engine(p, reward, 15, 7.5, chunk_size=4, seed=5), text, ["a disk"], 8)
    rep = selection_agreement(exact, chunked, draws)
    assert rep.agreement == 1.0 and rep.n_draws == 6
    a = collect_rewards(exact, draws)
    b = collect_rewards(chunked, draws)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
    other_seed = [Draw(seed=d.seed + 10, step=d.step, t=d.t, latents=d.latents) for d in draws]
    assert not torch.allclose(collect_rewards(exact, other_seed)[0], a[0])
    # a one-step lookahead is a different path: its report is well-formed and its rewards differ
    one_step = engine_selector(make_engine(p, reward, 0, 7.5), text, ["a disk"], 8)
    rep1 = selection_agreement(exact, one_step, draws)
    assert 0.0 <= rep1.agreement <= 1.0 and rep1.reward_abs_err_over_spread > 0
    assert {"seed", "step", "t", "match", "exact_top", "fast_top"} <= set(rep1.per_draw[0])
    assert rep1.by_t == {"250<=t<500": {"n": 2, "agreement": rep1.by_t["250<=t<500"]["agreement"]},
                         "500<=t<750": {"n": 2, "agreement": rep1.by_t["500<=t<750"]["agreement"]},
                         "750<=t<1000": {"n": 2, "agreement": rep1.by_t["750<=t<1000"]["agreement"]}}


@pytest.mark.parametrize("prune_to", [0, 3])
def test_engine_selector_scores_what_the_training_step_ranks(analytic_prior, prune_to):
    """The selector's rewards are the ones a ranked training step (``distill``) gives the strategy for the same seed,
    step, t and scene, with and without pruning (where pruned candidates rank below the kept ones)."""
    from rewardsds.losses.config import SDSLossConfig
    from rewardsds.losses.sds import SDSLoss
    from rewardsds.rewards.analytic import AnalyticReward
    from rewardsds.rewards.config import AnalyticRewardConfig
    from rewardsds.strategies import MinMaxStrategy
    from rewardsds.strategies.config import MinMaxStrategyConfig
    from step_helpers import step_loss

    p = analytic_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["blue"]))
    z = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.5
    eng = make_engine(p, reward, 15, 7.5, prune_to=prune_to, seed=7)
    out = step_loss(SDSLoss(SDSLossConfig()), p, eng, z.clone().requires_grad_(True), 600, 8,
                    MinMaxStrategy(MinMaxStrategyConfig()), step=4, prompt="a disk")
    draw = Draw(seed=7, step=4, t=600, latents=z)
    selected = engine_selector(make_engine(p, reward, 15, 7.5, prune_to=prune_to, seed=0), p.text_cond(["a disk"], ""), ["a disk"], 8)(draw)
    assert out.candidates.rewards.shape == (8,)
    assert torch.allclose(selected, out.candidates.rewards, atol=1e-6)
    assert float(selected.max() - selected.min()) > 1e-4


def _draws(k: int, first_seed: int = 0) -> list[Draw]:
    return [Draw(seed=first_seed + i // 4, step=i % 4, t=60 * i + 5, latents=torch.zeros(1)) for i in range(k)]


def test_pooling_two_halves_gives_the_whole_measurement():
    """Two runs of disjoint draws (as two device calls with different --first-seed) pool to exactly what one run of all
    the draws reports: rates, interval, regret, rank correlation, by-t bins."""
    r = _rewards(k=16, seed=3)
    fast = [_swap(x, 1, 2) if i % 3 == 0 else x for i, x in enumerate(r)]
    draws = _draws(16)
    whole = compare_selections(r, fast, draws=draws)
    a = compare_selections(r[:8], fast[:8], draws=draws[:8]).to_json()
    b = compare_selections(r[8:], fast[8:], draws=draws[8:]).to_json()
    pooled = pool_reports([a, b])
    assert 0 < whole.agreement < 1
    assert pooled.to_json() == whole.to_json()
    # rows written before they kept their rank correlation take their part's mean
    old = [{**a, "per_draw": [{k: v for k, v in row.items() if k != "rank_corr"} for row in a["per_draw"]]}, b]
    assert pool_reports(old).rank_correlation == pytest.approx(whole.rank_correlation)


def test_the_on_by_default_bar_is_met_by_the_rate_and_shown_by_its_interval():
    r = _rewards(k=80)
    assert compare_selections(r, r).bar() == {"default_ok": True, "default_shown": True}  # 80 of 80: lower end 95.4%
    assert compare_selections(r[:36], r[:36]).bar() == {"default_ok": True, "default_shown": False}  # 36 of 36: 90.4%
    fast = [_swap(x, 0, 7) if i < 5 else x for i, x in enumerate(r[:72])]
    assert compare_selections(r[:72], fast).bar() == {"default_ok": False, "default_shown": False}  # 67 of 72


def test_pooling_refuses_a_draw_measured_twice_and_parts_without_rows():
    r = _rewards(k=8)
    part = compare_selections(r, r, draws=_draws(8)).to_json()
    with pytest.raises(ValueError, match=r"seed=0 step=0 is in part 0 and part 1.*--first-seed"):
        pool_reports([part, part])
    with pytest.raises(ValueError, match="no per-draw rows.*--per-draw"):
        pool_reports([compare_selections(r, r, draws=_draws(8)).to_json(per_draw=False)])
