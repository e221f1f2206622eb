"""The analytic prior's noise prediction is the exact -sigma * score of the noised mixture."""


import pytest
import torch

from rewardsds.priors.analytic import prompt_log_weights


@pytest.mark.parametrize("t", [20, 300, 700, 980])
def test_noise_prediction_is_minus_sigma_score(analytic_prior, t):
    p = analytic_prior
    g = torch.Generator().manual_seed(t)
    lw = p.encode_text(["a red disk"])[0, 0]
    x0 = p.means[[0, 1, 2]] + 0.15 * torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64).float()
    x_t = p.add_noise(x0, torch.randn(x0.shape, generator=g), t).requires_grad_(True)
    logp = p.log_prob_t(x_t.double(), t, lw.double()).sum()
    (score,) = torch.autograd.grad(logp, x_t)
    _, s = p.alpha_sigma(t)
    eps = p.predict_noise(x_t.detach(), torch.full((3,), t), lw.expand(3, 1, -1))
    assert torch.allclose(eps, -s * score.float(), atol=2e-4, rtol=1e-4)


def test_score_matches_finite_differences(analytic_prior):
    p, t = analytic_prior, 400
    lw = p.encode_text(["stripes"])[0, 0].double()
    x = p.add_noise(p.means[4:5], torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), t).double()
    eps = p.predict_noise(x.float(), torch.tensor([t]), lw.float()[None, None]).double()
    _, s = p.alpha_sigma(t)
    h = 1e-4
    for idx in [(0, 0, 3, 4), (0, 2, 10, 1), (0, 1, 8, 8)]:
        xp, xm = x.clone(), x.clone()
        xp[idx] += h
        xm[idx] -= h
        fd = (p.log_prob_t(xp, t, lw) - p.log_prob_t(xm, t, lw)) / (2 * h)
        assert float(eps[idx]) == pytest.approx(float(-s * fd), rel=1e-3, abs=1e-5)


def test_prompt_selects_mixture_weights(analytic_prior):
    modes = analytic_prior.modes
    w = prompt_log_weights("a blue disk", modes, 4.0).exp()
    names = analytic_prior.mode_names
    assert names[int(w.argmax())] == "blue_disk"
    assert float(w[names.index("blue_disk")]) > 0.9
    uniform = prompt_log_weights("", modes, 4.0).exp()
    assert torch.allclose(uniform, torch.full((len(modes),), 1 / len(modes)))
    both = prompt_log_weights("a disk", modes, 4.0).exp()
    assert float(both[names.index("red_disk")]) == pytest.approx(float(both[names.index("blue_disk")]))


def test_denoising_from_pure_noise_reaches_a_mode(analytic_prior):
    """At t = T-1 with the exact predictor, DDIM lands near a mode mean (sanity of the schedule)."""
    from step_helpers import make_engine

    p = analytic_prior
    eng = make_engine(p, None, steps=50, guidance=1.0, grid="linspace")
    text = p.text_cond(["a blue square"], "")
    cands = eng.draw(torch.zeros(1, 3, 16, 16), 999, 4, step=0)
    x0 = eng.lookahead(cands, text)
    assert p.nearest_mode(x0) == ["blue_square"] * 4
    assert float((x0 - p.means[3]).abs().mean()) < 0.2


def test_log_prob_prefers_modes(analytic_prior):
    p = analytic_prior
    on = p.log_prob(p.means[:1], "a red disk")
    off = p.log_prob(torch.zeros(1, 3, 16, 16), "a red disk")
    assert float(on) > float(off) + 1.0
