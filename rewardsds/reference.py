"""Plain references of one RewardSDS step, for tests and for the benchmark's baseline.

- :func:`plain_rewardsds_step`: the readable twin of :class:`rewardsds.candidates.CandidateEngine` +
  :class:`rewardsds.losses.sds.SDSLoss` (DESIGN.md rule 11): candidates one by one, no batching, no reuse.
  Tests check that the fast path computes the same rewards, weights, loss and gradient. It is NOT a speed
  baseline: evaluating candidates one at a time is slower than the public reference code, which batches them.
- :func:`reference_structure_step`: one step with the structure of the public RewardSDS 2D code
  (itaychachy/RewardSDS, ``2D_experiments/guidance.py``, ``sds_loss`` with ``explore_direction``; written
  here from its description in ALGORITHMS.md 5.3, no code copied): the model in whatever dtype it is given
  (fp32 in the benchmark), all N candidates x the CFG pair in ONE lookahead batch per DDIM step starting at the
  grid point below t, one VAE decode of the N results, the reward called once per image (the original
  ImageReward package scores a list one image at a time, through PIL), top-n_max / bottom-n_min by
  ``topk``, one CFG call at t for the M = n_max + n_min kept candidates only, and the reference's loss
  ``lambda_max mean(L_top) - lambda_min mean(L_bottom)`` with ``L_i = 0.5 |z - sg(z - g_i)|^2 / M``.
  ``scripts/benchmark.py`` times it as THE baseline of its speed-ups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from rewardsds import ddim
from rewardsds.priors.base import Prior, TextCond, guide
from rewardsds.rng import candidate_noise
from rewardsds.strategies import Strategy

RewardFn = Callable[..., Tensor]


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
    grid = ddim.grid(lookahead_grid, lookahead_steps, prior.num_train_timesteps)
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
                    calls = ddim.lookahead_calls(t, grid, lookahead_start)
                    for k, tau in enumerate(calls):
                        cc, uu = prior.predict_noise_pair(x, tau, text)
                        evals += 2 * x.shape[0]
                        eps = guide(cc, uu, lookahead_guidance)
                        nxt = calls[k + 1] if k + 1 < len(calls) else 0
                        x, _ = ddim.step(x, eps, ac[tau], ac[nxt])
                image = prior.decode_latents(x)
                rewards.append(reward(image, [prompt])[0].float())
    r = torch.stack(rewards) if rewards else torch.zeros(n, device=latents.device)
    w = strategy(r).to(latents.device)
    loss = sum(w[i] * 0.5 * ((latents.float() - (latents.detach().float() - torch.nan_to_num(fields[i]))) ** 2).sum() / latents.shape[0] for i in range(n))
    return PlainStepResult(loss=loss, rewards=r, weights=w, evals=evals)


# ----------------------------------------------------------------------------------------- reference structure
@dataclass
class ReferenceStepResult:
    """One step computed with the public reference code's structure.

    Attributes:
        loss: scalar in the reference's scale (each kept candidate's loss divided by M = n_max + n_min),
            differentiable w.r.t. the latents passed in.
        rewards: [n] rewards of all candidates.
        top: [n_max] indices of the highest rewards, best first (``torch.topk``).
        bottom: [n_min] indices of the lowest rewards, worst first.
        weights: [n] the weight of each candidate's ``0.5 |z - sg(z - g_i)|^2`` in ``loss``:
            ``lambda_max / (n_max M)`` on top, ``-lambda_min / (n_min M)`` on bottom, 0 elsewhere. Our
            ``min_max`` strategy (``scale=mean``) gives the same weights times M: the reference divides each
            kept candidate's loss by the number kept, we do not.
        evals: single-sample UNet evaluations (a CFG pair counts 2).
        lookahead_calls: the timesteps of the lookahead's model calls, descending.
    """

    loss: Tensor
    rewards: Tensor
    top: Tensor
    bottom: Tensor
    weights: Tensor
    evals: int
    lookahead_calls: list[int]


def reference_structure_step(
    prior: Prior,
    reward: RewardFn,
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
    lookahead_start: str = "grid",
    lambda_max: float = 0.9,
    lambda_min: float = 0.1,
    n_max: int = 2,
    n_min: int = 2,
    weighting_fn: Callable[[Tensor], Tensor] = lambda abar: 1 - abar,
) -> ReferenceStepResult:
    """One RewardSDS (min_max) step on ``latents`` [1, c, h, w] the way the public reference code computes it.

    Model calls (ALGORITHMS.md 5.3): per lookahead timestep one call on ``[x; x]`` for all N candidates with
    ``[cond] * N + [uncond] * N``; one decode of the N final latents; the reward once per image; one call on
    the 2M kept candidates at t. Noises come from :func:`rewardsds.candidates.candidate_noise` (the reference
    draws ``randn_like``; same cost) so tests can compare with the fast path on equal candidates.

    Args:
        prior: the frozen prior (its dtype is used as is: the benchmark passes an fp32 one).
        reward: called as ``reward(image [1, 3, H, W], [prompt], check=False)``, one image per call.
        latents: the scene latents [1, c, h, w] (with gradient).
        t: the shared timestep.
        n: number of candidates (>= n_max + n_min).
        step, seed: key the candidate noises.
        text: conditioning of one view (cond and uncond [1, l, d]).
        prompt: the reward's prompt.
        guidance_scale: CFG scale of the SDS prediction at t (100 in the 2D reference).
        lookahead_steps: points of the DDIM grid (>= 1: the reference always runs a lookahead).
        lookahead_guidance: CFG scale of the lookahead (7.5).
        lookahead_grid, lookahead_start: ``leading`` / ``grid`` reproduce the reference (first call at the
            largest grid point <= t, no re-noising).
        lambda_max, lambda_min, n_max, n_min: the min-max strategy (0.9 / 0.1, 2 / 2).
        weighting_fn: w(t) from abar_t.

    Returns:
        :class:`ReferenceStepResult`.
    """
    if latents.shape[0] != 1:
        raise ValueError(f"the 2D reference optimises one latent image, got a batch of {latents.shape[0]}")
    if n < n_max + n_min:
        raise ValueError(f"min-max needs n >= n_max + n_min = {n_max + n_min}, got n = {n}")
    if lookahead_steps < 1:
        raise ValueError(f"the reference's lookahead runs at least one DDIM step, got lookahead_steps = {lookahead_steps}")
    ac = prior.alphas_cumprod
    dev = latents.device
    noise = candidate_noise(n, latents.shape, seed, step, dev).reshape(n, *latents.shape[1:])
    calls = ddim.lookahead_calls(t, ddim.grid(lookahead_grid, lookahead_steps, prior.num_train_timesteps), lookahead_start)
    evals = 0
    with torch.no_grad():
        z = latents.detach().float().expand(n, *latents.shape[1:])
        x_t = prior.add_noise(z, noise, t)
        cond, uncond = text.cond[:1], text.uncond[:1]
        emb_all = torch.cat([cond.expand(n, -1, -1), uncond.expand(n, -1, -1)])
        x = x_t
        for k, tau in enumerate(calls):
            eps_c, eps_u = prior.predict_noise(torch.cat([x, x]), torch.full((2 * n,), tau, device=dev, dtype=torch.long), emb_all).chunk(2)
            evals += 2 * n
            eps = guide(eps_c, eps_u, lookahead_guidance)
            nxt = calls[k + 1] if k + 1 < len(calls) else 0
            # DDIM, eta = 0 (diffusers DDIMScheduler.step with set_alpha_to_one=False: the last step targets abar_0)
            x, _ = ddim.step(x, eps, ac[tau], ac[nxt])
        images = prior.decode_latents(x)
        rewards = torch.stack([reward(images[i : i + 1], [prompt], check=False).reshape(()).float() for i in range(n)])
        top = torch.topk(rewards, k=n_max, largest=True).indices
        bottom = torch.topk(rewards, k=n_min, largest=False).indices
        keep = torch.cat([top, bottom])
        m = keep.numel()
        x_keep, noise_keep = x_t[keep], noise[keep]
        emb_keep = torch.cat([cond.expand(m, -1, -1), uncond.expand(m, -1, -1)])
        eps_c, eps_u = prior.predict_noise(torch.cat([x_keep, x_keep]), torch.full((2 * m,), t, device=dev, dtype=torch.long), emb_keep).chunk(2)
        evals += 2 * m
        grad = torch.nan_to_num(weighting_fn(ac[t]) * (guide(eps_c, eps_u, guidance_scale) - noise_keep))
    im = latents.float().expand(m, *latents.shape[1:])
    target = (im - grad).detach()
    losses = (0.5 * (im - target) ** 2 / m).flatten(1).sum(1)  # [m]: the reference's per-candidate losses
    loss = lambda_max * losses[:n_max].mean() - lambda_min * losses[n_max:].mean()
    weights = torch.zeros(n, device=dev)
    weights.index_add_(0, top, torch.full((n_max,), lambda_max / (n_max * m), device=dev))
    weights.index_add_(0, bottom, torch.full((n_min,), -lambda_min / (n_min * m), device=dev))
    return ReferenceStepResult(loss=loss, rewards=rewards, top=top, bottom=bottom, weights=weights, evals=evals, lookahead_calls=calls)
