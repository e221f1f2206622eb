"""Candidate machinery shared by every loss mode: noises, the prediction at t, lookahead, rewards, weights.

One step of RewardSDS (paper Eq. 4, ALGORITHMS.md 5) on ``b`` views of the current scene:

    noises eps_i ~ N(0, I), i = 1..N               (explicit per-step generator: strategies see equal noises)
    x_t^i = a_t z + s_t eps_i                      (no grad)
    (eps_c, eps_u)(x_t^i) in ONE batched call      (chunked; reused by the loss AND the lookahead's first step)
    x_0^i = DDIM_lookahead(x_t^i)                  (deterministic, its own guidance scale, batched over i)
    r_i = reward(decode(x_0^i), prompt)            (views of a candidate averaged, or kept per view)
    w = strategy(r)                                (none / min_max / best / weighted / random)

Candidates are laid out candidate-major: flat index = i * b + view, so multi-view priors see whole
view groups in every chunk.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds.priors.base import Prior, TextCond, guide
from rewardsds.rewards.base import Reward, aggregate_views
from rewardsds.schedules import Streams, seed_for
from rewardsds.strategies import Strategy

if TYPE_CHECKING:  # pragma: no cover
    pass


# ----------------------------------------------------------------------------------------- noise
_GENERATORS: dict[str, torch.Generator] = {}


def seeded_randn(shape: Sequence[int], seed: int, device: torch.device | str, dtype=torch.float32) -> Tensor:
    """Standard normal draw from a generator seeded with ``seed`` on ``device`` (one cached generator per device)."""
    device = torch.device(device)
    key = str(device)
    g = _GENERATORS.get(key)
    if g is None:
        g = _GENERATORS[key] = torch.Generator(device=device)
    g.manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, device=device, dtype=dtype)


def candidate_noise(n: int, shape: Sequence[int], seed: int, step: int, device, stream: int = Streams.NOISE) -> Tensor:
    """Noises [n, *shape]; candidate i's noise depends only on (seed, step, i), never on n.

    So ``n_noises=4`` and ``n_noises=8`` share their first four candidates, and any two strategies run with
    the same seed see identical noises.
    """
    return torch.stack([seeded_randn(shape, seed_for(seed, step, stream, i), device) for i in range(n)])


# ----------------------------------------------------------------------------------------- lookahead schedule
def ddim_grid(kind: str, steps: int, T: int = 1000) -> list[int]:
    """The full DDIM grid, descending.

    ``leading``: diffusers DDIM "leading" spacing with steps_offset 1 (2D reference, 15 steps:
    925, 859, ..., 67, 1). ``linspace``: floor(linspace(0, T-1, steps)) (3D reference: 999, 927, ..., 71, 0).
    """
    kind = getattr(kind, "value", kind)
    if steps <= 0:
        return []
    if kind == "leading":
        ratio = T // steps
        return sorted({i * ratio + 1 for i in range(steps)}, reverse=True)
    if kind == "linspace":
        return sorted({int(math.floor(v)) for v in torch.linspace(0, T - 1, steps, dtype=torch.float64).tolist()}, reverse=True)
    raise ValueError(f"unknown lookahead grid {kind!r}; use leading or linspace")


def lookahead_calls(t: int, grid: list[int], start: str = "exact_t") -> list[int]:
    """Timesteps at which the lookahead calls the model, descending; the last call steps to abar_0.

    ``exact_t`` starts at t itself (then visits the grid points below t); ``grid`` starts at the largest
    grid point <= t without re-noising (2D reference; the latent is at level t but is treated as tau).
    Grid point 0 is only a target, never a call.
    """
    start = getattr(start, "value", start)
    pts = [g for g in grid if g > 0]
    if start == "exact_t":
        return [t] + [g for g in pts if g < t]
    if start == "grid":
        calls = [g for g in pts if g <= t]
        return calls if calls else [t]
    raise ValueError(f"unknown lookahead start {start!r}; use exact_t or grid")


def uniform_calls(t: int, steps: int) -> list[int]:
    """Model-call timesteps of a ``steps``-step chain from t to 0 on an even grid, descending and distinct.

    ``[round(t (steps - k) / steps) for k < steps]`` without repeats or zeros: the chain starts exactly at t
    and its last transition targets abar_0. Fewer calls than ``steps`` only when t < steps.
    """
    if steps < 1:
        raise ValueError(f"a rollout needs at least one step, got {steps}")
    calls = [int(round(t * (steps - k) / steps)) for k in range(steps)]
    return [c for c in dict.fromkeys(calls) if c > 0] or [max(1, int(t))]


def ddim_transition(
    x: Tensor, eps: Tensor, abar_from: Tensor, abar_to: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    """One DDIM step from level tau to tau' < tau as a Gaussian (Song et al. 2021, Eq. 12).

    ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)``, ``s = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``,
    ``mean = sqrt(a') x0 + sqrt(1 - a' - s^2) eps`` with a = abar_tau, a' = abar_tau'. eta = 0 is the
    deterministic DDIM step, eta = 1 the DDPM posterior variance (DDPO's policy, Black et al. 2023).

    Args:
        x: the sample at tau [m, c, h, w].
        eps: the (guided) noise prediction at (x, tau) [m, c, h, w].
        abar_from, abar_to: scalar tensors abar_tau, abar_tau'.
        eta: stochasticity in [0, 1].

    Returns:
        (mean [m, c, h, w], std as a scalar tensor); differentiable in x and eps.
    """
    a, a_next = abar_from.to(x.dtype), abar_to.to(x.dtype)
    var = (1 - a_next) / (1 - a) * (1 - a / a_next)
    std = eta * var.clamp_min(0).sqrt()
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    mean = a_next.sqrt() * x0 + (1 - a_next - std**2).clamp_min(0).sqrt() * eps
    return mean, std


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2 I) summed over all but the first axis, [m] (needs std > 0)."""
    d = (x.float() - mean.float()) / std
    per_elem = -0.5 * d**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return per_elem.flatten(1).sum(1)


# ----------------------------------------------------------------------------------------- containers
@dataclass
class Candidates:
    """N candidates of b views at one timestep t.

    Attributes:
        latents: the clean scene latents [b, c, h, w] (they carry the scene's gradient).
        noise: [n, b, c, h, w].
        t: the shared timestep.
        noisy: x_t for all candidates, flat [n * b, c, h, w], no grad.
        eps_cond, eps_uncond: fp32 predictions at (x_t, t) [n * b, c, h, w] (None until predicted).
        view_rewards: rewards per candidate and view [n, b] (None without a lookahead).
        rewards: rewards used by the strategy, [n] (views averaged) or [n, b] (per view).
        weights: strategy weights [n] or [n, b].
        images: decoded lookahead images [n * b, 3, H, W] (kept only when asked, for logging).
        evals: model evaluations spent (single-sample UNet calls; a CFG pair counts 2).
    """

    latents: Tensor
    noise: Tensor
    t: int
    noisy: Tensor
    eps_cond: Optional[Tensor] = None
    eps_uncond: Optional[Tensor] = None
    view_rewards: Optional[Tensor] = None
    rewards: Optional[Tensor] = None
    weights: Optional[Tensor] = None
    images: Optional[Tensor] = None
    evals: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.noise.shape[0]

    @property
    def b(self) -> int:
        return self.noise.shape[1]

    def flat_noise(self) -> Tensor:
        return self.noise.reshape(self.n * self.b, *self.noise.shape[2:])

    def per_candidate(self, x: Tensor) -> Tensor:
        """Reshape a flat [n * b, ...] tensor to [n, b, ...]."""
        return x.reshape(self.n, self.b, *x.shape[1:])

    def flat_index(self, idx: Tensor) -> Tensor:
        """Flat [len(idx) * b] indices of the views of candidates ``idx``."""
        return (idx.to(self.noisy.device)[:, None] * self.b + torch.arange(self.b, device=self.noisy.device)[None]).reshape(-1)

    def subset(self, idx: Tensor) -> "Candidates":
        """The candidates ``idx`` (a 1-D index tensor), sharing latents and t."""
        flat = self.flat_index(idx)
        pick = lambda x: None if x is None else x[flat]  # noqa: E731
        return Candidates(latents=self.latents, noise=self.noise[idx.to(self.noise.device)], t=self.t, noisy=self.noisy[flat],
                          eps_cond=pick(self.eps_cond), eps_uncond=pick(self.eps_uncond))

    def active(self) -> Int[Tensor, "k"]:
        """Indices of the candidates whose weight is non-zero in any view (all of them before weighting).

        Terms with weight zero do not change the step, so modes skip their extra model calls (RewardVSD's
        LoRA estimate, RewardDDS's source branch), as the reference code does for unselected candidates.
        """
        if self.weights is None:
            return torch.arange(self.n, device=self.noise.device)
        w = self.weights if self.weights.dim() == 2 else self.weights[:, None]
        return torch.nonzero((w != 0).any(dim=1)).flatten().to(self.noise.device)

    def scatter(self, values: Float[Tensor, "kb ..."], idx: Int[Tensor, "k"]) -> Float[Tensor, "nb ..."]:
        """Place per-row values of the candidates ``idx`` into a zero tensor of all n * b rows."""
        out = values.new_zeros((self.n * self.b, *values.shape[1:]))
        return out.index_copy_(0, self.flat_index(idx), values)


@dataclass
class Rollout:
    """A stochastic DDIM chain from every candidate's x_t to abar_0 (candidate-major, flat [n * b, ...]).

    Attributes:
        final: the chain's last sample [n * b, c, h, w] (fp32, no grad).
        calls: the timesteps of the model calls, descending (calls[0] = t); the last step targets 0.
        first_mean: mean of the first transition x_t -> x_{calls[1]} [n * b, c, h, w].
        first_std: its standard deviation (scalar tensor; 0 for eta = 0).
        first_sample: the sample the first transition drew [n * b, c, h, w].
        log_probs: log-density of each transition's sample under its Gaussian, summed over elements,
            [K, n * b] (None for eta = 0, where the transitions are deterministic).
    """

    final: Tensor
    calls: list[int]
    first_mean: Tensor
    first_std: Tensor
    first_sample: Tensor
    log_probs: Optional[Tensor] = None


# ----------------------------------------------------------------------------------------- engine
class CandidateEngine:
    """Draws, predicts, looks ahead, scores and weights candidates for every loss mode.

    Args:
        prior: the frozen prior.
        reward: the reward model (may be unused when the strategy ignores rewards).
        lookahead_steps: points of the DDIM grid (0 = one-step x0 estimate).
        lookahead_guidance: CFG scale of the lookahead (2D reference 7.5; 3D reference 50).
        lookahead_grid: ``leading`` or ``linspace``.
        lookahead_start: ``exact_t`` or ``grid``.
        lookahead_decode: ``full`` or ``tiny`` (prior's tiny autoencoder).
        chunk_size: most model inputs per call (0 = automatic: all on CPU, from free memory on CUDA).
        reward_views: ``mean`` or ``per_view``.
        seed: run seed (noises are drawn from ``seed_for(seed, step, NOISE, i)``).
        decode_chunk: most images per VAE decode / reward call (0 = all at once).
        prune_to: 0 = off; else score all candidates on their one-step x0 estimate (free: the prediction at t)
            and run the full lookahead only for the ``prune_to`` best; pruned candidates keep their one-step
            reward (an explicit approximation that trades reward accuracy for lookahead cost).
    """

    def __init__(
        self,
        prior: Prior,
        reward: Optional[Reward],
        lookahead_steps: int = 15,
        lookahead_guidance: float = 7.5,
        lookahead_grid: str = "leading",
        lookahead_start: str = "exact_t",
        lookahead_decode: str = "full",
        chunk_size: int = 0,
        reward_views: str = "mean",
        seed: int = 0,
        decode_chunk: int = 0,
        prune_to: int = 0,
    ):
        self.prior = prior
        self.reward = reward
        self.lookahead_steps = int(lookahead_steps)
        self.lookahead_guidance = float(lookahead_guidance)
        self.lookahead_grid = getattr(lookahead_grid, "value", lookahead_grid)
        self.lookahead_start = getattr(lookahead_start, "value", lookahead_start)
        self.lookahead_decode = getattr(lookahead_decode, "value", lookahead_decode)
        self.requested_chunk = int(chunk_size)
        self.reward_views = getattr(reward_views, "value", reward_views)
        self.seed = int(seed)
        self.decode_chunk = int(decode_chunk)
        self.prune_to = int(prune_to)
        self._auto_chunk: Optional[int] = None
        self.grid = ddim_grid(self.lookahead_grid, self.lookahead_steps, prior.num_train_timesteps)

    # ------------------------------------------------------------------ chunking
    def chunk_size(self, example: Tensor) -> int:
        """Model inputs per call: the requested size, or (CUDA) the most that fits in 70% of free memory."""
        if self.requested_chunk > 0:
            return self.requested_chunk
        if example.device.type != "cuda":
            return 0
        if self._auto_chunk is None:
            self._auto_chunk = auto_chunk_size(self.prior, example)
        return self._auto_chunk

    # ------------------------------------------------------------------ stages
    def draw(self, latents: Float[Tensor, "b c h w"], t: int, n: int, step: int) -> Candidates:
        """N noises for the b views at t and the noisy inputs (no grad)."""
        noise = candidate_noise(n, latents.shape, self.seed, step, latents.device)
        with torch.no_grad():
            z = latents.detach().float()
            noisy = self.prior.add_noise(z[None].expand(n, *z.shape).reshape(-1, *z.shape[1:]), noise.reshape(-1, *z.shape[1:]), t)
        return Candidates(latents=latents, noise=noise, t=int(t), noisy=noisy)

    def predict(
        self,
        cands: Candidates,
        text: TextCond,
        camera: Optional[Tensor] = None,
        x_t: Optional[Tensor] = None,
        grad: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """(eps_cond, eps_uncond) at (x_t, t) for all candidates in batched, chunked calls.

        Args:
            cands: the candidates (their ``noisy`` unless ``x_t`` is given, e.g. DDS's source branch).
            text: conditioning for the b views (tiled over candidates here).
            camera: c2w [b, 4, 4] for camera-conditioned priors.
            grad: keep the graph to ``x_t`` and the text embeddings (policy gradients through the model
                input, DDPO3D's first-transition estimator). Chunking then bounds only the forward peak.
        """
        x = cands.noisy if x_t is None else x_t
        n = x.shape[0] // len(text)
        cam = None if camera is None else camera.repeat(n, 1, 1)
        with _grad_mode(grad):
            c, u = self.prior.predict_noise_pair(x, cands.t, text.repeat(n), cam, self.chunk_size(x))
        cands.evals += 2 * x.shape[0]
        return c, u

    def predict_unguided(
        self,
        cands: Candidates,
        emb: Float[Tensor, "b l d"],
        camera: Optional[Tensor] = None,
        which: Optional[Sequence[int]] = None,
        x_t: Optional[Tensor] = None,
        grad: bool = False,
    ) -> Tensor:
        """One unguided prediction eps(x_t; emb) for all candidates (or the candidates ``which``), chunked.

        Used where one branch of CFG needs its own pass, e.g. with gradient to a learnable negative text
        embedding (PSD). Chunks hold whole view groups of whole candidates.

        Args:
            emb: embeddings of the b views [b, l, d] (tiled over candidates here; may require grad).
            camera: c2w [b, 4, 4] for camera-conditioned priors.
            which: candidate indices to predict (default all), in the returned order.
            x_t: inputs [n * b, c, h, w] (default ``cands.noisy``).
            grad: keep the graph to ``emb`` and ``x_t``.

        Returns:
            fp32 predictions [len(which) * b, c, h, w].
        """
        x = cands.noisy if x_t is None else x_t
        b = emb.shape[0]
        idx = list(range(x.shape[0] // b)) if which is None else [int(i) for i in which]
        if which is not None:
            x = x.view(-1, b, *x.shape[1:])[idx].reshape(len(idx) * b, *x.shape[1:])
        k = len(idx)
        cam = None if camera is None else camera.repeat(k, 1, 1)
        text = emb.repeat(k, 1, 1)
        t = torch.full((x.shape[0],), cands.t, dtype=torch.long, device=x.device)
        chunk = self.chunk_size(x)
        frames = self.prior.num_frames
        per_call = x.shape[0] if chunk <= 0 else max(frames, chunk // frames * frames)
        outs = []
        with _grad_mode(grad):
            for s in range(0, x.shape[0], per_call):
                e = min(x.shape[0], s + per_call)
                outs.append(self.prior.predict_noise(x[s:e], t[s:e], text[s:e], None if cam is None else cam[s:e]))
        cands.evals += x.shape[0]
        return torch.cat(outs).float()

    @torch.no_grad()
    def renoise(
        self, cands: Candidates, latents: Float[Tensor, "b c h w"], idx: Optional[Tensor] = None
    ) -> Float[Tensor, "kb c h w"]:
        """Other clean latents noised with the candidates' noises at their t: a second branch of the same step.

        DDS (ALGORITHMS.md 4.1) needs the source image at exactly the noise and t of the target branch, so the
        eps terms cancel; any mode that compares two branches uses this instead of drawing new noise.

        Args:
            cands: the step's candidates.
            latents: the second branch's clean latents, [b, c, h, w] or [1, c, h, w] (shared by the b views).
            idx: candidate indices [k] to noise (default: all n).

        Returns:
            x_t of the branch, flat candidate-major [k * b, c, h, w], fp32, no grad.
        """
        noise = cands.noise if idx is None else cands.noise[idx.to(cands.noise.device)]
        k, b = noise.shape[0], cands.b
        z = latents.detach().float()
        if z.shape[0] not in (1, b) or z.shape[1:] != noise.shape[2:]:
            raise ValueError(f"branch latents {tuple(z.shape)} do not match the candidates' views {(b, *noise.shape[2:])}")
        z = z.expand(b, *z.shape[1:])
        flat = z[None].expand(k, *z.shape).reshape(k * b, *z.shape[1:])
        return self.prior.add_noise(flat, noise.reshape(k * b, *z.shape[1:]), cands.t)

    @torch.no_grad()
    def predict_with_branch(
        self,
        cands: Candidates,
        text: TextCond,
        latents: Float[Tensor, "b c h w"],
        branch_text: TextCond,
        camera: Optional[Tensor] = None,
        idx: Optional[Tensor] = None,
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Predictions at t of the candidates ``idx`` and of a second branch (:meth:`renoise`), from shared calls.

        A mode that subtracts two branches (DDS) needs each row and its partner in the other branch to go
        through the same computation: with equal inputs (same latents, same prompt) the difference is then
        exactly zero. Predicted in separate calls of different batch sizes, the two can differ by rounding
        (the kernels' blocking depends on the batch), and Adam with a tiny eps turns that noise into
        full-size steps. So every call holds the same candidate rows of both branches side by side,
        ``[x_a[s:e]; x_b[s:e]]`` (and CFG doubles it), never one branch alone.

        Args:
            cands: the step's candidates; the first branch's x_t is ``cands.noisy``.
            text: conditioning of the first branch's b views.
            latents: the second branch's clean latents, [b, c, h, w] or [1, c, h, w].
            branch_text: conditioning of the second branch's b views.
            camera: c2w [b, 4, 4] for camera-conditioned priors (shared by both branches).
            idx: candidate indices [k] (default: all n), in the returned order.

        Returns:
            ((eps_cond, eps_uncond) of the first branch, (eps_cond, eps_uncond) of the second), fp32
            [k * b, c, h, w] each. Counts 4 k b evaluations.
        """
        if idx is None:
            idx = torch.arange(cands.n, device=cands.noise.device)
        x_a = cands.noisy[cands.flat_index(idx)]
        x_b = self.renoise(cands, latents, idx)
        k = int(idx.numel())
        text_a, text_b = text.repeat(k), branch_text.repeat(k)
        cam = None if camera is None else camera.repeat(k, 1, 1)
        m = x_a.shape[0]
        chunk = self.chunk_size(x_a)
        frames = self.prior.num_frames
        # a row costs four inputs per call: two branches, each a CFG pair
        per_call = m if chunk <= 0 else max(frames, (chunk // 4) // frames * frames)
        outs: list[tuple[Tensor, ...]] = []
        for s in range(0, m, per_call):
            e = min(m, s + per_call)
            pair_text = TextCond(torch.cat([text_a.cond[s:e], text_b.cond[s:e]]), torch.cat([text_a.uncond[s:e], text_b.uncond[s:e]]))
            pair_cam = None if cam is None else torch.cat([cam[s:e], cam[s:e]])
            c, u = self.prior.predict_noise_pair(torch.cat([x_a[s:e], x_b[s:e]]), cands.t, pair_text, pair_cam)
            outs.append((*c.chunk(2), *u.chunk(2)))
        cands.evals += 4 * m
        c_a, c_b, u_a, u_b = (torch.cat(parts) for parts in zip(*outs))
        return (c_a, u_a), (c_b, u_b)

    @torch.no_grad()
    def lookahead(
        self,
        cands: Candidates,
        text: TextCond,
        camera: Optional[Tensor] = None,
        guidance: Optional[float] = None,
        first: Optional[tuple[Tensor, Tensor]] = None,
    ) -> Tensor:
        """Deterministic DDIM (eta = 0) from x_t to abar_0 for every candidate, batched; fp32 [n * b, c, h, w].

        Args:
            first: (eps_cond, eps_uncond) already computed at (x_t, t), reused for the first call when the
                chain starts exactly at t (saves N model evaluations).
            guidance: CFG scale (default: the engine's lookahead guidance).
        """
        scale = self.lookahead_guidance if guidance is None else float(guidance)
        prior, ac = self.prior, self.prior.alphas_cumprod
        x = cands.noisy
        n = x.shape[0] // len(text)
        text_n = text.repeat(n)
        cam = None if camera is None else camera.repeat(n, 1, 1)
        chunk = self.chunk_size(x)
        ranker = prior.ranking_prior()  # these calls only rank candidates: a cheaper view may serve them
        if self.lookahead_steps == 0:
            c, u = first if first is not None else self._pair(x, cands.t, text_n, cam, chunk, cands, ranker)
            return prior.predict_x0(x, cands.t, guide(c, u, scale))
        calls = lookahead_calls(cands.t, self.grid, self.lookahead_start)
        for k, tau in enumerate(calls):
            if k == 0 and first is not None and tau == cands.t:
                c, u = first
            else:
                c, u = self._pair(x, tau, text_n, cam, chunk, cands, ranker)
            eps = guide(c, u, scale)
            a_tau = ac[tau].sqrt()
            s_tau = (1 - ac[tau]).sqrt()
            nxt = calls[k + 1] if k + 1 < len(calls) else 0
            a_next, s_next = ac[nxt].sqrt(), (1 - ac[nxt]).sqrt()
            x0 = (x - s_tau * eps) / a_tau
            x = a_next * x0 + s_next * eps
        return x

    def _pair(self, x: Tensor, t: int, text: TextCond, cam: Optional[Tensor], chunk: int, cands: Candidates,
              prior: Optional[Prior] = None) -> tuple[Tensor, Tensor]:
        cands.evals += 2 * x.shape[0]
        return (prior or self.prior).predict_noise_pair(x, t, text, cam, chunk)

    @torch.no_grad()
    def rollout(
        self,
        cands: Candidates,
        text: TextCond,
        calls: Sequence[int],
        step: int,
        guidance: float,
        eta: float = 1.0,
        camera: Optional[Tensor] = None,
        first: Optional[tuple[Tensor, Tensor]] = None,
    ) -> Rollout:
        """Stochastic DDIM chain (eta in [0, 1]) from every candidate's x_t to abar_0, batched and chunked.

        The policy of DDPO (Black et al. 2023): each transition is Gaussian (:func:`ddim_transition`); the
        first one's mean, std and sample are recorded so a policy gradient can reach the scene through
        the chain's start. Transition k's noise for candidate i at optimisation step s depends only on
        (seed, s, k, i), so runs with different N share their first candidates' chains.

        Args:
            calls: model-call timesteps, descending, ``calls[0] == cands.t`` (e.g. :func:`uniform_calls`).
            step: optimisation step (keys the transition noises).
            guidance: CFG scale of the chain.
            eta: 0 deterministic DDIM, 1 DDPM-like variance.
            first: (eps_cond, eps_uncond) already computed at (x_t, t), reused for the first call.
        """
        calls = [int(c) for c in calls]
        if not calls or calls[0] != cands.t:
            raise ValueError(f"rollout calls must start at t = {cands.t}, got {calls[:3]}")
        ac = self.prior.alphas_cumprod
        x = cands.noisy
        n, b = cands.n, cands.b
        text_n = text.repeat(n)
        cam = None if camera is None else camera.repeat(n, 1, 1)
        chunk = self.chunk_size(x)
        log_probs = []
        first_mean = first_std = first_sample = None
        for k, tau in enumerate(calls):
            c, u = first if (k == 0 and first is not None) else self._pair(x, tau, text_n, cam, chunk, cands)
            nxt = calls[k + 1] if k + 1 < len(calls) else 0
            mean, std = ddim_transition(x, guide(c, u, guidance), ac[tau], ac[nxt], eta)
            if eta > 0:
                z = candidate_noise(n, (b, *x.shape[1:]), seed_for(self.seed, k, Streams.LOOKAHEAD), step, x.device)
                x_next = mean + std * z.reshape(x.shape)
                log_probs.append(gaussian_log_prob(x_next, mean, std))
            else:
                x_next = mean
            if k == 0:
                first_mean, first_std, first_sample = mean, std, x_next
            x = x_next
        return Rollout(final=x, calls=calls, first_mean=first_mean, first_std=first_std, first_sample=first_sample,
                       log_probs=torch.stack(log_probs) if log_probs else None)

    def decode(self, latents: Tensor, grad: bool = False) -> Tensor:
        """Decode [m, c, h, w] to RGB [m, 3, H, W] in [0, 1], in chunks (``grad``: keep the graph)."""
        chunk = self.decode_chunk or max(1, latents.shape[0])
        tiny = self.lookahead_decode == "tiny"
        outs = []
        with _grad_mode(grad):
            for s in range(0, latents.shape[0], chunk):
                part = latents[s : s + chunk]
                outs.append(self.prior.decode_latents(part, tiny=True) if tiny else self.prior.decode_latents(part))
        return torch.cat(outs)

    def score(self, images: Tensor, prompts: Sequence[str], n: int, grad: bool = False) -> tuple[Tensor, Tensor]:
        """Rewards of decoded candidate images.

        Args:
            images: [n * b, 3, H, W] in [0, 1].
            prompts: the b reward prompts (one per view; tiled over candidates).
            n: number of candidates.
            grad: keep the graph through a differentiable reward (reward feedback losses).

        Returns:
            (view_rewards [n, b], strategy rewards [n] (mean) or [n, b] (per_view)).
        """
        if self.reward is None:
            raise RuntimeError("this strategy needs a reward model, but none is configured")
        b = images.shape[0] // n
        every = [prompts[j % b] for j in range(images.shape[0])]
        chunk = self.decode_chunk or images.shape[0]
        with _grad_mode(grad):
            scores = torch.cat([
                self.reward(images[s : s + chunk], every[s : s + chunk], grad=grad, check=False)
                for s in range(0, images.shape[0], chunk)
            ])
        view_rewards = scores.reshape(n, b)
        return view_rewards, aggregate_views(scores, n, self.reward_views)

    def weigh(self, rewards: Tensor, strategy: Strategy, step: int) -> Tensor:
        """Strategy weights for rewards [n] or, per view, [n, b] (the strategy runs per view column)."""
        g = torch.Generator().manual_seed(seed_for(self.seed, step, Streams.STRATEGY))
        if rewards.dim() == 1:
            return strategy(rewards, g)
        return torch.stack([strategy(rewards[:, v], g) for v in range(rewards.shape[1])], dim=1)

    def look_and_score(self, cands: Candidates, text: TextCond, reward_prompts: Sequence[str], camera: Optional[Tensor], keep_images: bool) -> None:
        """Lookahead, decode and reward for ``cands`` (with eps at t predicted); fills rewards (and images)."""
        n = cands.n
        shared = (cands.eps_cond, cands.eps_uncond)
        reuse = shared if (self.lookahead_start == "exact_t" or self.lookahead_steps == 0) else None
        if self.prune_to and self.prune_to < n and self.lookahead_steps > 0:
            # one-step rewards for all (from the shared prediction), the full lookahead for the best prune_to
            x0 = self.prior.predict_x0(cands.noisy, cands.t, guide(*shared, self.lookahead_guidance))
            images = self.decode(x0)
            view_r, r = self.score(images, reward_prompts, n)
            r_rank = r if r.dim() == 1 else r.mean(1)
            keep = torch.sort(r_rank, descending=True, stable=True).indices[: self.prune_to]
            sub = cands.subset(keep)
            final = self.lookahead(sub, text, camera, first=(sub.eps_cond, sub.eps_uncond) if reuse is not None else None)
            cands.evals += sub.evals
            sub_images = self.decode(final)
            sub_view_r, _ = self.score(sub_images, reward_prompts, len(keep))
            view_r = view_r.index_copy(0, keep, sub_view_r)
            images = images.index_copy(0, cands.flat_index(keep), sub_images)
            cands.view_rewards = view_r
            cands.rewards = view_r.mean(1) if self.reward_views == "mean" else view_r
        else:
            final = self.lookahead(cands, text, camera, first=reuse)
            images = self.decode(final)
            cands.view_rewards, cands.rewards = self.score(images, reward_prompts, n)
        if keep_images:
            cands.images = images

    # ------------------------------------------------------------------ the whole pipeline
    def evaluate(
        self,
        latents: Float[Tensor, "b c h w"],
        t: int,
        n: int,
        step: int,
        text: TextCond,
        strategy: Strategy,
        reward_prompts: Sequence[str],
        camera: Optional[Tensor] = None,
        keep_images: bool = False,
        predict: bool = True,
    ) -> Candidates:
        """Draw n candidates, predict at t (shared), run the lookahead and reward if the strategy needs
        them, and attach strategy weights. Returns the filled :class:`Candidates`.

        ``predict=False`` skips the prediction at t unless the strategy's lookahead needs it (``eps_cond`` and
        ``eps_uncond`` are then None): for modes that predict the weighted candidates themselves, e.g. DDS
        together with its source branch (:meth:`predict_with_branch`).
        """
        cands = self.draw(latents, t, n, step)
        if predict or strategy.uses_reward:
            cands.eps_cond, cands.eps_uncond = self.predict(cands, text, camera)
        if strategy.uses_reward:
            self.look_and_score(cands, text, reward_prompts, camera, keep_images)
            cands.weights = self.weigh(cands.rewards, strategy, step)
        else:
            cands.weights = self.weigh(torch.zeros(n, device=latents.device), strategy, step)
        return cands


def _grad_mode(grad: bool):
    """``no_grad`` unless ``grad`` (then the caller's grad mode applies)."""
    return contextlib.nullcontext() if grad else torch.no_grad()


def auto_chunk_size(prior: Prior, example: Tensor, fraction: float = 0.7) -> int:
    """Largest even number of model inputs per call that fits ``fraction`` of free CUDA memory.

    Measures the peak memory of one call on two view groups (the CFG pair), then divides the free memory
    by the per-input peak. Always at least one CFG pair of whole view groups.
    """
    dev = example.device
    k = 2 * prior.num_frames
    x = example[:1].expand(k, *example.shape[1:]).contiguous()
    t = torch.full((k,), prior.num_train_timesteps // 2, device=dev, dtype=torch.long)
    emb = prior.encode_text([""] * k)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.no_grad():
        prior.predict_noise(x, t, emb, None if not prior.uses_camera else torch.eye(4, device=dev).expand(k, 4, 4))
    torch.cuda.synchronize(dev)
    per_input = max(1, (torch.cuda.max_memory_allocated(dev) - base) // k)
    free, _ = torch.cuda.mem_get_info(dev)
    fit = int(fraction * free // per_input)
    return max(k, fit // k * k)
