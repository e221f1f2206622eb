"""The candidates of one step, and the engine that draws, predicts, looks ahead, scores and weighs them.

RewardSDS (paper Eq. 4, ALGORITHMS.md 5) on ``b`` views of the current scene:

    noises eps_i ~ N(0, I), i = 1..N               (rewardsds.rng: strategies compared with one seed see equal noises)
    x_t^i = a_t z + s_t eps_i                      (no grad)
    (eps_c, eps_u)(x_t^i) in ONE batched call      (chunked; reused by the loss AND the lookahead's first step)
    x_0^i = DDIM_lookahead(x_t^i)                  (rewardsds.ddim at eta 0, its own guidance scale, batched over i)
    r_i = reward(decode(x_0^i), prompt)            (views of a candidate averaged, or kept per view)
    w = strategy(r)                                (none / min_max / best / weighted / random)

The system's training step calls these stages in this order (``DistillationSystem.run_step``); loss modes with
their own candidate machinery (DDPO3D's rollouts, the preference pairs of DreamDPO and PSD) call them too.
Candidates are laid out candidate-major: flat index = i * b + view, so multi-view priors see whole view groups in
every chunk.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rewardsds import ddim
from rewardsds.priors.base import Prior, TextCond, guide
from rewardsds.rewards.base import Reward, aggregate_views
from rewardsds.rng import Streams, candidate_noise, seed_for
from rewardsds.strategies import Strategy
from rewardsds.utils.chunks import call_ranges, rows_per_call
from rewardsds.utils.dtypes import tf32
from rewardsds.utils.streams import SideStream

if TYPE_CHECKING:  # pragma: no cover
    from rewardsds.config import LookaheadConfig

log = logging.getLogger(__name__)


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
    """Draws, predicts, looks ahead, scores and weighs the candidates of a step.

    Args:
        prior: the frozen prior.
        reward: the reward model (None when nothing is scored).
        lookahead: the run's ``lookahead`` settings: ``steps`` (points of the DDIM grid; 0 = one-step x0 estimate),
            ``guidance_scale``, ``grid``, ``start``, ``decode`` (full, or the prior's tiny autoencoder) and
            ``prune_to`` (0 = off; else every candidate is scored on its one-step x0 estimate, free from the
            prediction at t, and only the ``prune_to`` best run the full lookahead: an explicit approximation),
            ``overlap``, and ``fp32_below`` / ``fp32_tf32`` (below that timestep the lookahead and its decode run on
            the prior's fp32 view, :meth:`ranks_in_fp32`).
        chunk_size: most model inputs per call (0 = automatic: all on the CPU, from free memory on CUDA).
        reward_views: ``mean`` (one reward per candidate, averaged over its views) or ``per_view``.
        seed: run seed (noises from ``seed_for(seed, step, NOISE, i)``).
    """

    def __init__(self, prior: Prior, reward: Optional[Reward], lookahead: "LookaheadConfig", chunk_size: int = 0,
                 reward_views: str = "mean", seed: int = 0):
        self.prior = prior
        self.reward = reward
        self.lookahead_cfg = lookahead
        self.requested_chunk = chunk_size
        self.reward_views = reward_views.value if hasattr(reward_views, "value") else reward_views
        self.seed = seed
        self._auto_chunk: Optional[int] = None
        self._side: Optional[SideStream] = None
        self._said_overlap = False  # what lookahead.overlap cannot do for this run's steps: said once
        self.grid = ddim.grid(lookahead.grid, lookahead.steps, prior.num_train_timesteps)
        if lookahead.fp32_below > 0:
            prior.keep_fp32_view()  # before the prior is placed: its fp32 view keeps the weights as loaded

    @property
    def lookahead_steps(self) -> int:
        return self.lookahead_cfg.steps

    @property
    def lookahead_guidance(self) -> float:
        return self.lookahead_cfg.guidance_scale

    @property
    def reuses_prediction_at_t(self) -> bool:
        """Whether the lookahead's first call is the prediction at t (then it is not made twice), where the candidates
        rank on the prior itself (:meth:`ranks_in_fp32` makes that call again in fp32)."""
        return self.lookahead_cfg.start.value == "exact_t" or self.lookahead_cfg.steps == 0

    # ------------------------------------------------------------------ which model ranks
    def ranks_in_fp32(self, t: int) -> bool:
        """Whether the candidates at ``t`` rank on the prior's fp32 view, with TF32 as ``lookahead.fp32_tf32`` says
        (``lookahead.fp32_below``): below that timestep the candidates differ little and half-precision rounding flips near-ties
        of their rewards. A prior that computes eager in fp32 anyway is its own view (then only the TF32 switches
        change)."""
        return t < self.lookahead_cfg.fp32_below

    def _remakes_call_at_t(self, t: int) -> bool:
        """Whether the lookahead makes its call at t again, on a view other than the prior that predicted it."""
        return self.ranks_in_fp32(t) and self.prior.fp32_view() is not self.prior

    def ranker(self, t: int) -> Prior:
        """The prior whose calls (and, with the full decoder, whose decodes) rank the candidates at ``t``: the fp32
        view below ``lookahead.fp32_below``, else the prior's ranking view (``Prior.ranking_prior``: the prior itself,
        or its float8 copy)."""
        return self.prior.fp32_view() if self.ranks_in_fp32(t) else self.prior.ranking_prior()

    def _precision(self, t: int):
        """The TF32 switches of the fp32 ranking at ``t`` (``lookahead.fp32_tf32``; full fp32 by default), or nothing."""
        if not self.ranks_in_fp32(t):
            return contextlib.nullcontext()
        allow = self.lookahead_cfg.fp32_tf32
        return tf32(matmul=allow, cudnn=allow)

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

    # ------------------------------------------------------------------ draw and predict
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
        t: Optional[int] = None,
        prior: Optional[Prior] = None,
    ) -> tuple[Tensor, Tensor]:
        """(eps_cond, eps_uncond) at (x_t, t) for all candidates in batched, chunked calls.

        Args:
            cands: the candidates (their ``noisy`` unless ``x_t`` is given, e.g. DDS's source branch).
            text: conditioning for the b views (tiled over candidates here).
            camera: c2w [b, 4, 4] for camera-conditioned priors.
            grad: keep the graph to ``x_t`` and the text embeddings (policy gradients through the model
                input, DDPO3D's first-transition estimator). Chunking then bounds only the forward peak.
            t: the timestep of the inputs (default the candidates' t; a chain's later calls pass theirs).
            prior: the model to call (default the run's prior; the lookahead may rank with a cheaper view).

        Returns:
            fp32 predictions, each [m, c, h, w] (m rows of ``x_t``); counts 2 m evaluations.
        """
        x = cands.noisy if x_t is None else x_t
        n = x.shape[0] // len(text)
        cam = None if camera is None else camera.repeat(n, 1, 1)
        model = prior or self.prior
        chunk = self.chunk_size(x)
        if chunk and not self.requested_chunk and _widens(model, self.prior):
            # the automatic size was measured with the prior's activations: an fp32 view's are twice as wide
            chunk = max(2 * model.num_frames, chunk // 2 // (2 * model.num_frames) * 2 * model.num_frames)
        with _grad_mode(grad):
            c, u = model.predict_noise_pair(x, cands.t if t is None else t, text.repeat(n), cam, chunk)
        cands.evals += 2 * x.shape[0]
        return c, u

    # ------------------------------------------------------------------ DDIM chains
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
        prior: Optional[Prior] = None,
    ) -> Rollout:
        """DDIM chain (eta in [0, 1]) from every candidate's x_t to abar_0, batched and chunked.

        Each transition is Gaussian (:func:`rewardsds.ddim.step`); eta = 0 is the deterministic lookahead, eta = 1
        DDPO's policy, whose first transition's mean, std and sample are recorded so that a policy gradient reaches
        the scene through the chain's start. Transition k's noise for candidate i at optimisation step s depends
        only on (seed, s, k, i), so runs with different N share their first candidates' chains.

        Args:
            calls: model-call timesteps, descending (:func:`rewardsds.ddim.lookahead_calls`, ``uniform_calls``).
            step: optimisation step (keys the transition noises).
            guidance: CFG scale of the chain.
            eta: 0 deterministic DDIM, 1 DDPM-like variance.
            first: (eps_cond, eps_uncond) already computed at (x_t, t), reused as the first call, which must then be
                at t (saves N model evaluations).
            prior: the model to call (default the run's prior).
        """
        calls = [int(c) for c in calls]
        if not calls or (first is not None and calls[0] != cands.t):
            raise ValueError(f"a chain reusing the prediction at t = {cands.t} must start there, got {calls[:3]}")
        ac = self.prior.alphas_cumprod
        x = cands.noisy
        n, b = cands.n, cands.b
        log_probs = []
        first_mean = first_std = first_sample = None
        for k, tau in enumerate(calls):
            c, u = first if (k == 0 and first is not None) else self.predict(cands, text, camera, x_t=x, t=tau, prior=prior)
            nxt = calls[k + 1] if k + 1 < len(calls) else 0
            mean, std = ddim.step(x, guide(c, u, guidance), ac[tau], ac[nxt], eta)
            if eta > 0:
                z = candidate_noise(n, (b, *x.shape[1:]), seed_for(self.seed, k, Streams.LOOKAHEAD), step, x.device)
                x_next = mean + std * z.reshape(x.shape)
                log_probs.append(ddim.gaussian_log_prob(x_next, mean, std))
            else:
                x_next = mean
            if k == 0:
                first_mean, first_std, first_sample = mean, std, x_next
            x = x_next
        return Rollout(final=x, calls=calls, first_mean=first_mean, first_std=first_std, first_sample=first_sample,
                       log_probs=torch.stack(log_probs) if log_probs else None)

    @torch.no_grad()
    def lookahead(self, cands: Candidates, text: TextCond, camera: Optional[Tensor] = None,
                  first: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """The paper's lookahead: the deterministic DDIM chain (eta = 0) from x_t to abar_0 on the lookahead grid
        (K = 0: the one-step x0 estimate), at the lookahead's guidance scale; fp32 [n * b, c, h, w].

        Its calls only rank candidates, so they go to :meth:`ranker` (below ``lookahead.fp32_below`` the fp32 view,
        which then makes the call at t again rather than reuse the prior's).

        Args:
            first: (eps_cond, eps_uncond) at (x_t, t), reused for the first call where the chain starts exactly at t.
        """
        scale, ranker = self.lookahead_guidance, self.ranker(cands.t)
        if self._remakes_call_at_t(cands.t):
            first = None
        if self.lookahead_steps == 0:
            c, u = first if first is not None else self.predict(cands, text, camera, prior=ranker)
            return self.prior.predict_x0(cands.noisy, cands.t, guide(c, u, scale))
        calls = ddim.lookahead_calls(cands.t, self.grid, self.lookahead_cfg.start)
        reuse = first if (first is not None and calls[0] == cands.t) else None
        return self.rollout(cands, text, calls, 0, scale, eta=0.0, camera=camera, first=reuse, prior=ranker).final

    # ------------------------------------------------------------------ decode, score, weigh
    def decode(self, latents: Tensor, grad: bool = False, t: Optional[int] = None) -> Tensor:
        """Decode [m, c, h, w] to RGB [m, 3, H, W] in [0, 1] (``grad``: keep the graph; ``prior.vae_slicing`` bounds
        the decoder's memory). ``t``: the candidates' timestep, where the full decoder of :meth:`ranker` decodes
        them (the fp32 view's below ``lookahead.fp32_below``; ``lookahead.decode=tiny`` keeps the tiny one)."""
        tiny = self.lookahead_cfg.decode == "tiny"
        prior = self.prior if (t is None or tiny or not self.ranks_in_fp32(t)) else self.prior.fp32_view()
        with _grad_mode(grad):
            return prior.decode_candidates(latents, tiny=tiny)

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
        return self._candidate_rewards(self._scores(images, prompts, grad), n)

    def _scores(self, images: Tensor, prompts: Sequence[str], grad: bool = False) -> Tensor:
        """The reward of each of the [m, 3, H, W] images (candidate-major: image j shows view j % b), fp32 [m]."""
        if self.reward is None:
            raise RuntimeError("this step scores candidates, but no reward model is configured")
        b = len(prompts)
        every = [prompts[j % b] for j in range(images.shape[0])]
        with _grad_mode(grad):
            return self.reward(images, every, grad=grad, check=False)

    def _candidate_rewards(self, scores: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """(view_rewards [n, b], strategy rewards [n] or [n, b]) from the flat scores [n * b]."""
        return scores.reshape(n, -1), aggregate_views(scores, n, self.reward_views)

    def weigh(self, rewards: Tensor, strategy: Strategy, step: int) -> Tensor:
        """Strategy weights for rewards [n] or, per view, [n, b] (the strategy runs per view column)."""
        g = torch.Generator().manual_seed(seed_for(self.seed, step, Streams.STRATEGY))
        if rewards.dim() == 1:
            return strategy(rewards, g)
        return torch.stack([strategy(rewards[:, v], g) for v in range(rewards.shape[1])], dim=1)

    def expected_evals(self, ts: Sequence[int], n: int, b: int, ranked: bool) -> float:
        """Single-sample UNet evaluations of a step of n candidates of b views, averaged over the timesteps ``ts``:
        a CFG pair per candidate and view at t, plus (``ranked``, n > 1) one pair per lookahead call after the first
        where the chain reuses the prediction at t. Loss modes with extra model calls (VSD's LoRA, DDS's source
        branch) add theirs."""
        per_t = 2 * n * b
        if not (ranked and n > 1):
            return float(per_t)
        if self.lookahead_steps == 0:  # the one-step estimate reuses the prediction at t, unless it is made in fp32
            return per_t * (1 + sum(self._remakes_call_at_t(t) for t in ts) / len(ts))
        reuse = 1 if self.reuses_prediction_at_t else 0
        calls = [max(0, len(ddim.lookahead_calls(t, self.grid, self.lookahead_cfg.start)) - (0 if self._remakes_call_at_t(t) else reuse))
                 for t in ts]
        return per_t * (1 + sum(calls) / len(calls))

    # ------------------------------------------------------------------ the reward of every candidate
    def candidate_chunks(self, cands: Candidates) -> list[tuple[int, int]]:
        """The candidate ranges that look ahead one after another: with ``lookahead.overlap`` (and a lookahead to
        overlap with), as many whole candidates as one model call takes (``chunk_size``) per range; otherwise one
        range of all of them. Where a call's rows are not whole candidates (b views each), a range rounds down to
        whole candidates, so the lookahead makes more, smaller calls than it would without overlap (said once)."""
        if not self.lookahead_cfg.overlap or self.lookahead_steps == 0:
            return [(0, cands.n)]
        rows = rows_per_call(cands.n * cands.b, self.chunk_size(cands.noisy), self.prior.num_frames, inputs_per_row=2)
        chunks = call_ranges(cands.n, rows // cands.b)
        if len(chunks) > 1 and rows % cands.b:
            whole = rows // cands.b
            self._say_once(f"lookahead.overlap=true: a model call of chunk_size={self.chunk_size(cands.noisy)} takes {rows} "
                           f"rows, not whole candidates of {cands.b} views, so each chunk rounds down to {whole} whole "
                           f"candidate{'s' if whole != 1 else ''} and the lookahead makes more, smaller calls than without "
                           f"overlap; set chunk_size to a multiple of {2 * cands.b}")
        return chunks

    def _say_once(self, message: str) -> None:
        if not self._said_overlap:
            self._said_overlap = True
            log.warning("%s", message)

    def look_ahead_and_score(self, cands: Candidates, text: TextCond, prompts: Sequence[str],
                             camera: Optional[Tensor] = None) -> Tensor:
        """Lookahead -> decode -> reward for every candidate (the prediction at t already made); sets
        ``view_rewards`` and ``rewards`` and returns the decoded images [n * b, 3, H, W].

        With ``lookahead.prune_to``, every candidate is first scored on its one-step x0 estimate and only the best
        ``prune_to`` run the full lookahead; in the strategy's rewards each of those ranks above every pruned one
        (their rewards are on different scales: a one-step image can score higher at small t), while
        ``view_rewards`` keep what each candidate scored.
        """
        prune = self.lookahead_cfg.prune_to
        if not (prune and prune < cands.n and self.lookahead_steps > 0):
            images, scores = self._look_ahead_decode_score(cands, text, prompts, camera)
            cands.view_rewards, cands.rewards = self._candidate_rewards(scores, cands.n)
            return images
        one_step = self.prior.predict_x0(cands.noisy, cands.t, guide(cands.eps_cond, cands.eps_uncond, self.lookahead_guidance))
        images = self.decode(one_step)
        view_r, r = self.score(images, prompts, cands.n)
        keep = torch.sort(r if r.dim() == 1 else r.mean(1), descending=True, stable=True).indices[:prune]
        sub = cands.subset(keep)
        sub_images, sub_scores = self._look_ahead_decode_score(sub, text, prompts, camera)
        cands.evals += sub.evals
        sub_view_r = sub_scores.reshape(len(keep), cands.b)
        cands.view_rewards = view_r.index_copy(0, keep, sub_view_r)
        cands.rewards = aggregate_views(band_above(sub_view_r, view_r, keep).reshape(-1), cands.n, self.reward_views)
        return images.index_copy(0, cands.flat_index(keep), sub_images)

    def _look_ahead_decode_score(self, cands: Candidates, text: TextCond, prompts: Sequence[str],
                                 camera: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Lookahead -> decode -> reward of ``cands`` (their prediction at t reused where the chain starts at t):
        (images [n * b, 3, H, W], flat scores [n * b]).

        With ``lookahead.overlap`` the candidates go through in chunks (:meth:`candidate_chunks`). Each chunk's
        decode and reward are queued on a second CUDA stream while the next chunk's lookahead runs on the current
        one, so the GPU has the decoder's and the reward's kernels to run beside the UNet's. Each chunk makes the
        same model calls as the chunked lookahead without overlap; only the decode's and the reward's batches are
        smaller (equal up to rounding). A reward that replays CUDA graphs scores all images on the current stream
        once they are decoded (its graphs share one memory pool with the compiled UNet's).
        """
        chunks = self.candidate_chunks(cands)
        if len(chunks) == 1:
            if self.lookahead_cfg.overlap and not self._said_overlap:
                self._say_once(self._nothing_to_overlap(cands))
            with self._precision(cands.t):
                images = self.decode(self.lookahead(cands, text, camera, first=self._first_call(cands)), t=cands.t)
            return images, self._scores(images, prompts)
        side = self._side_stream(cands.noisy.device)
        reward_beside = not (self.reward is not None and self.reward.replays_cuda_graphs)
        images, scores = [], []
        for s, e in chunks:
            part = cands.subset(torch.arange(s, e, device=cands.noisy.device))  # (made on the device: no host copy)
            with self._precision(cands.t):
                x0 = self.lookahead(part, text, camera, first=self._first_call(part))
            cands.evals += part.evals
            with side.after_current(x0):
                with self._precision(cands.t):  # (the decode's switches only: the reward keeps the run's)
                    images.append(self.decode(x0, t=cands.t))
                if reward_beside:
                    scores.append(self._scores(images[-1], prompts))
        side.join(*images, *scores)
        all_images = torch.cat(images)
        return all_images, torch.cat(scores) if reward_beside else self._scores(all_images, prompts)

    def _first_call(self, cands: Candidates) -> Optional[tuple[Tensor, Tensor]]:
        """The prediction at t as the lookahead's first call, where the chain starts at t."""
        return (cands.eps_cond, cands.eps_uncond) if self.reuses_prediction_at_t else None

    def _nothing_to_overlap(self, cands: Candidates) -> str:
        """Why ``lookahead.overlap`` has one chunk of ``cands``, and what would give it two."""
        if self.lookahead_steps == 0:
            return "lookahead.overlap=true, but lookahead.steps=0 makes no lookahead calls to overlap the decode with"
        if cands.n == 1:
            return "lookahead.overlap=true, but one candidate looks ahead: there is no next chunk to overlap with"
        size = self.requested_chunk or f"0, automatic: {self.chunk_size(cands.noisy) or 'all'}"
        return (f"lookahead.overlap=true, but all {cands.n} candidates that look ahead fit one model call (chunk_size={size}): "
                f"there is no next chunk to overlap with; chunk_size={2 * cands.b * -(-cands.n // 2)} looks ahead in two "
                "chunks (and makes the other model calls of a step, such as the prediction at t, in chunks of that size too)")

    def _side_stream(self, device: torch.device) -> SideStream:
        if self._side is None or self._side.device != torch.device(device):
            self._side = SideStream(device)
        return self._side


def band_above(kept: Tensor, all_rows: Tensor, keep: Tensor) -> Tensor:
    """Rewards [n, b] where the rows ``keep`` (values ``kept``) rank above every other row, each group in its own order.

    The other rows are shifted down by a constant so that the best of them sits just below the worst kept one; the
    order inside each group, and the kept rewards themselves, are unchanged.
    """
    keep = keep.to(all_rows.device)
    out = all_rows.index_copy(0, keep, kept.to(all_rows.dtype))
    kept_row = torch.zeros(all_rows.shape[0], dtype=torch.bool, device=all_rows.device).index_fill(0, keep, True)
    kept_row = kept_row.view(-1, *([1] * (all_rows.dim() - 1))).expand_as(out)
    # Without host syncs (no boolean indexing, no branch on a device value): with nothing pruned the gap is 0.
    rest_max = out.masked_fill(kept_row, float("-inf")).max()
    gap = (rest_max - kept.min()).clamp_min(0) + (kept.max() - kept.min()).abs().clamp_min(1e-6) * 1e-3 + 1e-6
    return torch.where(kept_row, out, out - gap)


def _widens(model: Prior, prior: Prior) -> bool:
    """Whether ``model`` (a view of ``prior``) computes in fp32 where ``prior`` computes in a narrower dtype."""
    wide, narrow = getattr(model, "dtype", torch.float32), getattr(prior, "dtype", torch.float32)
    return model is not prior and wide == torch.float32 and narrow != torch.float32


def _grad_mode(grad: bool):
    """``no_grad`` unless ``grad`` (then the caller's grad mode applies)."""
    return contextlib.nullcontext() if grad else torch.no_grad()


def auto_chunk_size(prior: Prior, example: Tensor, fraction: float = 0.7) -> int:
    """Largest even number of model inputs per call that fits ``fraction`` of free CUDA memory.

    Measures the peak memory of one call on two view groups (the CFG pair), then divides the free memory
    by the per-input peak. Always at least one CFG pair of whole view groups.

    The probe runs the model eagerly even when the prior is compiled: a compiled UNet builds one graph per input
    shape, and the probe's shape is one the step never uses (the CLI's first step used to compile the full UNet
    for this probe as well as for the candidates, and keep a CUDA graph of it).
    """
    dev = example.device
    k = 2 * prior.num_frames
    x = example[:1].expand(k, *example.shape[1:]).contiguous()
    t = torch.full((k,), prior.num_train_timesteps // 2, device=dev, dtype=torch.long)
    emb = prior.encode_text([""] * k)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # no graph (and no compile) for the probe's shape
        prior.predict_noise(x, t, emb, None if not prior.uses_camera else torch.eye(4, device=dev).expand(k, 4, 4))
    torch.cuda.synchronize(dev)
    per_input = max(1, (torch.cuda.max_memory_allocated(dev) - base) // k)
    free, _ = torch.cuda.mem_get_info(dev)
    fit = int(fraction * free // per_input)
    return max(k, fit // k * k)
