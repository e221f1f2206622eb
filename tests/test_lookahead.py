"""The DDIM lookahead against diffusers' own DDIM sampler on the same model and timesteps."""

import pytest
import torch

from rewardsds import ddim
from rewardsds.priors.base import guide
from step_helpers import make_engine


def test_grids_match_reference_values():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False)
    s.set_timesteps(15)
    assert ddim.grid("leading", 15) == s.timesteps.tolist()
    assert ddim.grid("leading", 15) == [925, 859, 793, 727, 661, 595, 529, 463, 397, 331, 265, 199, 133, 67, 1]
    assert ddim.grid("linspace", 15) == [999, 927, 856, 784, 713, 642, 570, 499, 428, 356, 285, 214, 142, 71, 0]


def test_call_counts_match_reference_formulas():
    lead, lin = ddim.grid("leading", 15), ddim.grid("linspace", 15)
    for t in range(21, 980, 2):
        # 2D reference: K(t) = floor((t - 1) / 66) + 1 calls at grid points <= t
        assert len(ddim.lookahead_calls(t, lead, "grid")) == (t - 1) // 66 + 1
        # 3D reference: first call exactly at t, K(t) = #{s in F : s < t}
        calls = ddim.lookahead_calls(t, lin, "exact_t")
        assert calls[0] == t and len(calls) == sum(s < t for s in lin)


def _diffusers_ddim(prior, x, t_start, text, scale, steps=15):
    """The reference: diffusers DDIMScheduler.step over the leading grid from the largest point <= t."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(prior.scheduler.config)
    sched.set_timesteps(steps)
    for tau in sched.timesteps.tolist():
        if tau > t_start:
            continue
        c, u = prior.predict_noise_pair(x, tau, text)
        x = sched.step(guide(c, u, scale), tau, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("t", [500, 463, 30])
def test_lookahead_matches_diffusers_ddim(tiny_sd_prior, t):
    p = tiny_sd_prior
    eng = make_engine(p, None, steps=15, guidance=7.5, grid="leading", start="grid")
    text = p.text_cond(["a photo of the cat"], "")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cands = eng.draw(z, t, 3, step=7)
    ours = eng.lookahead(cands, text)
    ref = _diffusers_ddim(p, cands.noisy, t, text.repeat(3), 7.5)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    if t in ddim.grid("leading", 15):  # on the grid, exact_t and grid starts coincide
        eng2 = make_engine(p, None, 15, 7.5, "leading", "exact_t")
        assert torch.allclose(eng2.lookahead(cands, text), ref, atol=1e-5, rtol=1e-5)


def test_one_step_lookahead_is_x0_estimate(tiny_sd_prior):
    p = tiny_sd_prior
    eng = make_engine(p, None, steps=0, guidance=5.0)
    text = p.text_cond(["the cat"], "")
    cands = eng.draw(torch.randn(1, 4, 8, 8), 600, 2, step=0)
    c, u = p.predict_noise_pair(cands.noisy, 600, text.repeat(2))
    assert torch.allclose(eng.lookahead(cands, text), p.predict_x0(cands.noisy, 600, guide(c, u, 5.0)), atol=1e-6)


def test_reusing_the_prediction_at_t_changes_nothing(tiny_sd_prior):
    p = tiny_sd_prior
    eng = make_engine(p, None, 15, 7.5, "linspace", "exact_t")
    text = p.text_cond(["an onion"], "")
    cands = eng.draw(torch.randn(1, 4, 8, 8), 640, 3, step=2)
    first = eng.predict(cands, text)
    evals_before = cands.evals
    a = eng.lookahead(cands, text, first=first)
    saved = cands.evals - evals_before
    b = eng.lookahead(cands, text)
    assert torch.allclose(a, b, atol=1e-6)
    assert cands.evals - evals_before - saved == saved + 2 * 3  # the second run paid for the call at t
