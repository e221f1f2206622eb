"""Preference pairs of a step, shared by DreamDPO and PSD: preview every candidate, score it, pick win and lose.

Per view (``ranking: per_view``), or for whole candidates by the reward averaged over their views: the win is the
candidate with the highest reward, the lose the one with the lowest (ties: the lower index wins, the other loses).
The previews are the one-step x0 estimate with CFG (DreamDPO) or the engine's DDIM lookahead (RewardSDS's).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.errors import ConfigError
from rewardsds.losses.config import PreviewKind
from rewardsds.priors.base import TextCond, guide
from rewardsds.utils.chunks import call_ranges, rows_per_call

if TYPE_CHECKING:  # pragma: no cover
    from rewardsds.candidates import CandidateEngine, Candidates
    from rewardsds.losses.base import StepContext


@dataclass
class Pair:
    """The win and lose candidate of each view.

    Attributes:
        win, lose: candidate indices [b] (long).
        gap: reward gap r_win - r_lose >= 0, [b].
        reward_win, reward_lose: [b].
    """

    win: Tensor
    lose: Tensor
    gap: Tensor
    reward_win: Tensor
    reward_lose: Tensor

    def masks(self, n: int) -> tuple[Tensor, Tensor]:
        """Boolean [n, b] masks of the (candidate, view) cells that are the win and the lose."""
        idx = torch.arange(n, device=self.win.device)[:, None]
        return idx == self.win[None], idx == self.lose[None]


def rank_pair(rewards: Float[Tensor, "n *v"], b: int) -> Pair:
    """Win = highest, lose = lowest reward per view (ties: lower index wins, the other loses).

    Args:
        rewards: [n] (one per candidate, shared by its views) or [n, b] (per view), n >= 2.
        b: views per candidate.
    """
    r = (rewards if rewards.dim() == 2 else rewards[:, None].expand(-1, b)).float()
    order = torch.sort(r, dim=0, descending=True, stable=True).indices
    win, lose = order[0], order[-1]
    rw, rl = r.gather(0, win[None])[0], r.gather(0, lose[None])[0]
    return Pair(win=win, lose=lose, gap=rw - rl, reward_win=rw, reward_lose=rl)


def preview_and_score(
    engine: "CandidateEngine", step: "StepContext", cands: "Candidates", text: TextCond, preview: PreviewKind,
    guidance: float,
) -> tuple[Tensor, Tensor]:
    """Score every candidate's preview of x0 and attach rewards (and images) to ``cands``.

    ``one_step``: ``x0 = (x_t - s_t eps_cfg) / a_t`` with CFG ``guidance`` (DreamDPO); ``lookahead``: the engine's
    DDIM lookahead (RewardSDS; its own steps and guidance), reusing the predictions at t.

    Returns:
        (the rewards by the engine's ``reward_views`` rule, [n] or [n, b]; the previews x0 [n * b, c, h, w]).
    """
    eps_cond, eps_uncond = cands.eps_cond, cands.eps_uncond
    with torch.no_grad():
        if PreviewKind(preview) is PreviewKind.one_step:
            x0 = engine.prior.predict_x0(cands.noisy, cands.t, guide(eps_cond, eps_uncond, guidance))
        else:
            x0 = engine.lookahead(cands, text, step.camera, first=(eps_cond, eps_uncond))
    images = engine.decode(x0)
    cands.view_rewards, cands.rewards = engine.score(images, step.reward_prompts, cands.n)
    if step.keep_images:
        cands.images = images
    return cands.rewards, x0


def pair_logs(pair: Pair, active: Tensor) -> dict[str, Tensor]:
    return {
        "pair_gap": pair.gap.mean().detach(),
        "pair_active": active.float().mean().detach(),
        "reward_win": pair.reward_win.mean().detach(),
        "reward_lose": pair.reward_lose.mean().detach(),
    }


def candidates_needed(step: "StepContext", loss: str) -> int:
    """Candidates this step: the run's n_noises inside the reward window (checked >= 2), else 1 (plain SDS)."""
    if not step.reward_active:
        return 1
    if step.n_noises < 2:
        raise ConfigError("n_noises", step.n_noises, f"loss={loss} compares a win and a lose candidate and needs at least 2",
                          "set n_noises=2")
    return step.n_noises


def predict_unguided(
    engine: "CandidateEngine",
    cands: "Candidates",
    emb: Float[Tensor, "b l d"],
    camera: Optional[Tensor] = None,
    which: Optional[Sequence[int]] = None,
    x_t: Optional[Tensor] = None,
    grad: bool = False,
) -> Tensor:
    """One unguided prediction eps(x_t; emb) for all candidates (or the candidates ``which``), chunked.

    Used where one branch of CFG needs its own pass, e.g. with gradient to a learnable negative text embedding
    (PSD). Chunks hold whole view groups of whole candidates.

    Args:
        emb: embeddings of the b views [b, l, d] (tiled over candidates here; may require grad).
        camera: c2w [b, 4, 4] for camera-conditioned priors.
        which: candidate indices to predict (default all), in the returned order.
        x_t: inputs [n * b, c, h, w] (default ``cands.noisy``).
        grad: keep the graph to ``emb`` and ``x_t``.

    Returns:
        fp32 predictions [len(which) * b, c, h, w]; counts one evaluation per row.
    """
    prior = engine.prior
    x = cands.noisy if x_t is None else x_t
    b = emb.shape[0]
    idx = list(range(x.shape[0] // b)) if which is None else [int(i) for i in which]
    if which is not None:
        x = x.view(-1, b, *x.shape[1:])[idx].reshape(len(idx) * b, *x.shape[1:])
    k = len(idx)
    cam = None if camera is None else camera.repeat(k, 1, 1)
    text = emb.repeat(k, 1, 1)
    t = torch.full((x.shape[0],), cands.t, dtype=torch.long, device=x.device)
    per_call = rows_per_call(x.shape[0], engine.chunk_size(x), prior.num_frames)
    outs = []
    with (contextlib.nullcontext() if grad else torch.no_grad()):
        for s, e in call_ranges(x.shape[0], per_call):
            outs.append(prior.predict_noise(x[s:e], t[s:e], text[s:e], None if cam is None else cam[s:e]))
    cands.evals += x.shape[0]
    return torch.cat(outs).float()
