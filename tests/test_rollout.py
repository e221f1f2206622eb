"""The candidate engine's general extensions: stochastic DDIM rollouts, one-branch predictions, gradients
through predict/decode/score. Each is checked against an independent reference (diffusers' DDIM step,
torch.distributions, a plain per-candidate loop, the engine's own deterministic lookahead)."""

import pytest
import torch

from rewardsds import ddim
from rewardsds.losses.preference import predict_unguided
from rewardsds.priors.base import guide
from rewardsds.rewards.analytic import AnalyticReward
from rewardsds.rng import Streams, candidate_noise, seed_for
from step_helpers import make_engine
from rewardsds.rewards.config import AnalyticRewardConfig


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("t", [501, 1])  # 1 -> the last step, to abar_0 (set_alpha_to_one = False)
def test_ddim_transition_matches_diffusers(eta, t):
    sched = _sd_scheduler()
    sched.set_timesteps(10)  # leading spacing + offset 1: 901, 801, ..., 1 (stride 100)
    ac = sched.alphas_cumprod.float()
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    ref = sched.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
    mean, std = ddim.step(x, eps, ac[t], ac[max(t - 100, 0)], eta)
    assert torch.allclose(mean + std * z, ref, atol=1e-5)
    assert (float(std) > 0) == (eta > 0)


def test_gaussian_log_prob_matches_normal_density():
    g = torch.Generator().manual_seed(1)
    x, mean = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    std = torch.tensor(0.37)
    ref = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(ddim.gaussian_log_prob(x, mean, std), ref, rtol=1e-6)


def test_uniform_calls():
    assert ddim.uniform_calls(980, 10) == [980, 882, 784, 686, 588, 490, 392, 294, 196, 98]
    assert ddim.uniform_calls(500, 1) == [500]
    assert ddim.uniform_calls(3, 10) == [3, 2, 1]  # fewer calls than steps only when t < steps
    with pytest.raises(ValueError):
        ddim.uniform_calls(500, 0)


def _engine(prior, **kw):
    return make_engine(prior, AnalyticReward(AnalyticRewardConfig(preferred=["blue"])), steps=15, guidance=7.5, seed=3, **kw)


def test_rollout_with_eta_zero_is_the_deterministic_lookahead(analytic_prior):
    p = analytic_prior
    eng = _engine(p)
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    text = p.text_cond(["a disk", "a disk"], "")
    cands = eng.draw(z, 640, 3, step=7)
    calls = ddim.lookahead_calls(640, ddim.grid("leading", 15), "exact_t")
    roll = eng.rollout(cands, text, calls, step=7, guidance=7.5, eta=0.0)
    assert torch.allclose(roll.final, eng.lookahead(cands, text), atol=1e-6)
    assert roll.log_probs is None and float(roll.first_std) == 0.0


def _plain_rollout(prior, z, noise, t, calls, text, guidance, eta, seed, step):
    """One candidate at a time, one prior call per transition, noises drawn by their documented keys."""
    ac = prior.alphas_cumprod
    finals, firsts = [], []
    for i in range(noise.shape[0]):
        x = prior.add_noise(z, noise[i], t)
        for k, tau in enumerate(calls):
            c, u = prior.predict_noise_pair(x, tau, text)
            nxt = calls[k + 1] if k + 1 < len(calls) else 0
            mean, std = ddim.step(x, guide(c, u, guidance), ac[tau], ac[nxt], eta)
            xi = candidate_noise(noise.shape[0], z.shape, seed_for(seed, k, Streams.LOOKAHEAD), step, "cpu")[i]
            x = mean + std * xi
            if k == 0:
                firsts.append((mean, x))
        finals.append(x)
    return torch.stack(finals), firsts


@pytest.mark.parametrize("chunk", [0, 4])
def test_rollout_batched_equals_plain_loop(analytic_prior, chunk):
    p = analytic_prior
    eng = _engine(p, chunk_size=chunk)
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))  # b = 2 views
    text = p.text_cond(["a disk", "a blue disk"], "")
    t, step, n = 700, 11, 3
    cands = eng.draw(z, t, n, step)
    calls = ddim.uniform_calls(t, 4)
    first = eng.predict(cands, text)
    roll = eng.rollout(cands, text, calls, step, guidance=7.5, eta=1.0, first=first)
    finals, firsts = _plain_rollout(p, z, cands.noise, t, calls, text, 7.5, 1.0, seed=3, step=step)
    assert torch.allclose(cands.per_candidate(roll.final), finals, atol=1e-5)
    assert torch.allclose(cands.per_candidate(roll.first_mean), torch.stack([m for m, _ in firsts]), atol=1e-5)
    assert torch.allclose(cands.per_candidate(roll.first_sample), torch.stack([s for _, s in firsts]), atol=1e-5)
    assert roll.log_probs.shape == (len(calls), n * 2)
    assert torch.allclose(roll.log_probs[0], ddim.gaussian_log_prob(roll.first_sample, roll.first_mean, roll.first_std))
    # 2 model evaluations per input at t (reused) + per later transition
    assert cands.evals == 2 * n * 2 * len(calls)


def test_rollout_noise_depends_only_on_seed_step_transition_candidate(analytic_prior):
    p = analytic_prior
    z = torch.zeros(1, 3, 16, 16)
    text = p.text_cond(["a disk"], "")
    rolls = {}
    for n in (2, 4):
        eng = _engine(p)
        c = eng.draw(z, 900, n, 5)
        rolls[n] = eng.rollout(c, text, ddim.uniform_calls(900, 3), 5, 7.5, 1.0)
    assert torch.equal(rolls[4].final[:2], rolls[2].final)
    eng = _engine(p)
    other = eng.rollout(eng.draw(z, 900, 2, 6), text, ddim.uniform_calls(900, 3), 6, 7.5, 1.0)
    assert not torch.allclose(other.final, rolls[2].final)


def test_predict_unguided_matches_the_pair_and_keeps_gradients(tiny_sd_prior):
    p = tiny_sd_prior
    eng = make_engine(p, None, chunk_size=2, seed=0)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = p.text_cond(["a cat", "a dog"], "blurry")
    cands = eng.draw(z, 400, 3, 0)
    c, u = eng.predict(cands, text)
    assert torch.allclose(predict_unguided(eng, cands, text.uncond), u, atol=1e-5)
    sub = predict_unguided(eng, cands, text.cond, which=[2, 0])
    assert torch.allclose(sub, torch.cat([cands.per_candidate(c)[2], cands.per_candidate(c)[0]]), atol=1e-5)
    emb = text.uncond.clone().requires_grad_(True)
    out = predict_unguided(eng, cands, emb, which=[1], grad=True)
    out.square().sum().backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0
    # the default stays gradient-free
    assert not predict_unguided(eng, cands, emb, which=[1]).requires_grad
    x = cands.noisy.clone().requires_grad_(True)
    cg, _ = eng.predict(cands, text, x_t=x, grad=True)
    assert cg.requires_grad and torch.allclose(cg.detach(), c, atol=1e-5)


def test_decode_and_score_keep_the_graph_only_when_asked(analytic_prior):
    p = analytic_prior
    eng = _engine(p)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).mul(0.3).requires_grad_(True)
    images = eng.decode(x, grad=True)
    view_r, r = eng.score(images, ["a disk", "a disk"], 2, grad=True)
    assert view_r.shape == (2, 2) and r.shape == (2,)
    r.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert not eng.score(eng.decode(x), ["a disk", "a disk"], 2)[1].requires_grad
