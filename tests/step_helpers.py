"""Building blocks for tests of one distillation step: an engine, a step's context, and the step's loss."""

from __future__ import annotations

from typing import Optional


from rewardsds.candidates import CandidateEngine
from rewardsds.config import LookaheadConfig
from rewardsds.losses.base import LossMode, LossOutput, StepContext
from rewardsds.strategies import Strategy
from rewardsds.system import distill


def make_engine(prior, reward=None, steps: int = 15, guidance: float = 7.5, grid: str = "leading", start: str = "exact_t",
                decode: str = "full", prune_to: int = 0, chunk_size: int = 0, reward_views: str = "mean",
                seed: int = 0, overlap: bool = False, fp32_below: int = 0, fp32_tf32: bool = False) -> CandidateEngine:
    """A candidate engine with the given lookahead settings (validated like a run's)."""
    la = LookaheadConfig(steps=steps, guidance_scale=guidance, grid=grid, start=start, decode=decode, prune_to=prune_to,
                         overlap=overlap, fp32_below=fp32_below, fp32_tf32=fp32_tf32)
    return CandidateEngine(prior, reward, la, chunk_size=chunk_size, reward_views=reward_views, seed=seed)


def make_context(prior, z, t: int, n: int, strategy: Strategy, step: int = 3, progress: float = 0.0, prompt: str = "the cat",
                 camera=None, reward_active: bool = True, keep_images: bool = False, mode: Optional[LossMode] = None,
                 negative_prompt: str = "") -> StepContext:
    """The context of a step on latents ``z`` with ``n`` candidates (``ranked`` as the system decides it)."""
    b = z.shape[0]
    ranked = reward_active and n > 1 and strategy.uses_reward and not (mode is not None and mode.weighs_own_candidates)
    return StepContext(latents=z, t=t, step=step, progress=progress, text=prior.text_cond([prompt] * b, negative_prompt),
                       prompts=[prompt] * b, base_prompt=prompt, negative_prompt=negative_prompt, camera=camera,
                       reward_active=reward_active, n_noises=n, ranked=ranked, keep_images=keep_images)


def step_loss(mode: LossMode, prior, engine: CandidateEngine, z, t: int, n: int, strategy: Strategy, total_steps: int = 10,
              **context) -> LossOutput:
    """The loss of one step of ``mode`` (set up with ``engine`` first if it is not yet)."""
    if mode.engine is not engine:
        mode.setup(prior, engine.reward, z.device, total_steps, engine=engine)
    ctx = make_context(prior, z, t, n, strategy, mode=mode, **context)
    return distill(ctx, mode, engine, strategy)
