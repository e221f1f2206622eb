"""The plain reference of one RewardSDS step: candidates one by one, no batching, no reuse.

This is the readable twin of :class:`rewardsds.candidates.CandidateEngine` + :class:`rewardsds.losses.sds.SDSLoss`
(DESIGN.md rule 11): tests check that the fast path computes the same rewards, weights, loss and gradient,
and ``scripts/benchmark.py`` times it (fp32, candidates one at a time, the reward's PIL preprocessing when it
has one) to report the speed-up of the fast path as a ratio measured in one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from rewardsds.candidates import candidate_noise, ddim_grid, lookahead_calls
from rewardsds.priors.base import Prior, TextCond, guide
from rewardsds.strategies import Strategy


@dataclass
class PlainStepResult:
    loss: Tensor  # scalar, differentiable w.r.t. the latents passed in
    rewards: Tensor  # [n]
    weights: Tensor  # [n]
    evals: int  # single-sample UNet evaluations (a CFG pair counts 2)


def plain_rewardsds_step(
    prior: Prior,
    reward: Optional[Callable[[Tensor, list[str]], Tensor]],
    strategy: Strategy,
    latents: Tensor,
    t: int,
    n: int,
    step: int,
    seed: int,
    text: TextCond,
    prompt: str,
    guidance_scale: float = 100.0,
    lookahead_steps: int = 15,
    lookahead_guidance: float = 7.5,
    lookahead_grid: str = "leading",
    lookahead_start: str = "exact_t",
    weighting_fn: Callable[[Tensor], Tensor] = lambda abar: 1 - abar,
) -> PlainStepResult:
    """One RewardSDS step on ``latents`` [1, c, h, w], written as plainly as possible.

    For each candidate i: x_t = a_t z + s_t eps_i; one CFG pair at t (SDS field); the DDIM lookahead one
    call at a time; decode; reward. Then strategy weights and ``sum_i w_i * 0.5 |z - sg(z - g_i)|^2``.
    """
    ac = prior.alphas_cumprod
    noise = candidate_noise(n, latents.shape, seed, step, latents.device)
    grid = ddim_grid(lookahead_grid, lookahead_steps, prior.num_train_timesteps)
    rewards, fields, evals = [], [], 0
    for i in range(n):
        with torch.no_grad():
            x_t = prior.add_noise(latents.detach(), noise[i], t)
            c, u = prior.predict_noise_pair(x_t, t, text)
            evals += 2 * x_t.shape[0]
            fields.append(weighting_fn(ac[t]) * (guide(c, u, guidance_scale) - noise[i]))
            if strategy.uses_reward:
                x = x_t
                if lookahead_steps == 0:
                    x = prior.predict_x0(x_t, t, guide(c, u, lookahead_guidance))
                else:
                    calls = lookahead_calls(t, grid, lookahead_start)
                    for k, tau in enumerate(calls):
                        cc, uu = prior.predict_noise_pair(x, tau, text)
                        evals += 2 * x.shape[0]
                        eps = guide(cc, uu, lookahead_guidance)
                        nxt = calls[k + 1] if k + 1 < len(calls) else 0
                        x0 = (x - (1 - ac[tau]).sqrt() * eps) / ac[tau].sqrt()
                        x = ac[nxt].sqrt() * x0 + (1 - ac[nxt]).sqrt() * eps
                image = prior.decode_latents(x)
                rewards.append(reward(image, [prompt])[0].float())
    r = torch.stack(rewards) if rewards else torch.zeros(n, device=latents.device)
    w = strategy(r).to(latents.device)
    loss = sum(w[i] * 0.5 * ((latents.float() - (latents.detach().float() - torch.nan_to_num(fields[i]))) ** 2).sum() / latents.shape[0] for i in range(n))
    return PlainStepResult(loss=loss, rewards=r, weights=w, evals=evals)
