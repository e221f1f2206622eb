"""The LightningModule: one optimisation step of reward-weighted score distillation, top to bottom.

    render(scene, cameras) -> latents (2D) or RGB views encoded by the prior (3D)
    -> :func:`distill`: N candidates at a shared t, the prediction at t (one batched call), the lookahead, decode,
       rewards, strategy weights, the loss mode's gradient fields -> sum_i w_i L_i
    -> total = sum_i w_i L_i + regularisers + aux ``loss_*`` terms -> backward into the scene only
    -> optimiser step (skipped, and counted, if the gradient is not finite: on the device, without waiting for the
       GPU, unless the representation's post-step hook needs a host decision)
    -> log scalars; save frames; checkpoints are written by the AtomicCheckpoint callback

Manual optimisation with one AdamW whose parameter groups come from the representation and the loss
mode. The step index used for every random draw is ``self.iteration`` (checkpointed), so a resumed run
continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor

from rewardsds.candidates import CandidateEngine
from rewardsds.nonfinite import NonFiniteGuard
from rewardsds.losses.base import LossMode, LossOutput, StepContext, combined_field_norm, field_losses
from rewardsds.priors.base import Prior
from rewardsds.priors.compiled import compile_seconds
from rewardsds.representations.base import Representation
from rewardsds.rewards.base import Reward
from rewardsds.rng import Streams, seed_for
from rewardsds.schedules import Schedule, TimestepSampler
from rewardsds.strategies import NoStrategy, Strategy, weight_entropy
from rewardsds.viz import Media, to_uint8, upscale
from rewardsds.utils.io import write_image

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What one optimisation step produced (for logging and benchmarks)."""

    ctx: StepContext
    loss: LossOutput
    total: Tensor
    grad_norm: Tensor
    regs: dict


class StepIndices(torch.utils.data.IterableDataset):
    """Yields the remaining step indices ``system.iteration .. steps - 1`` (read when iteration starts,
    i.e. after a checkpoint was restored)."""

    def __init__(self, system: "DistillationSystem"):
        self.system = system

    def __iter__(self):
        return iter(range(self.system.iteration, self.system.total_steps))

    def __len__(self) -> int:
        return max(0, self.system.total_steps - self.system.iteration)


def distill(ctx: StepContext, mode: LossMode, engine: CandidateEngine, strategy: Strategy) -> LossOutput:
    """The loss of one step of reward-weighted score distillation, top to bottom.

    Args:
        ctx: the step's data (scene latents with gradient, t, prompts, the reward window).
        mode: the loss mode (set up with the run's prior, reward and ``engine``).
        engine: the candidate engine.
        strategy: turns rewards into weights (the run's strategy inside the reward window, ``none`` after it).

    Returns:
        per-candidate losses, their weights, the mode's auxiliary ``loss_*`` terms and the logs of the step.
    """
    logs: dict[str, Tensor] = {}
    cands = mode.candidates(ctx)                                             # N noises at t, the prediction at t
    if mode.weighs_own_candidates:
        cands.weights = mode.weigh(ctx, cands, logs)                          # DDPO3D rows, DreamDPO / PSD pairs
    elif ctx.ranked:
        # K-step DDIM from x_t to x_0, decode, reward (pruned to the best by one-step reward, or chunked on two
        # CUDA streams, as lookahead.prune_to and lookahead.overlap say)
        images = engine.look_ahead_and_score(cands, mode.conditioning(ctx), ctx.reward_prompts, ctx.camera)
        if ctx.keep_images:
            cands.images = images
        cands.weights = engine.weigh(cands.rewards, strategy, ctx.step)       # strategy weights
    else:
        cands.weights = engine.weigh(torch.zeros(cands.n, device=ctx.latents.device), strategy, ctx.step)  # 1/N (or random)
    fields = mode.field(ctx, cands, logs)                                     # each candidate's gradient field
    losses, fields = field_losses(ctx.latents, fields, cands.n, mode.grad_clip)
    logs["grad_norm"] = combined_field_norm(fields, cands.weights, cands.n, cands.b).detach()
    extra = mode.aux_losses(ctx, cands, logs)                                 # VSD's LoRA, DDPO3D's PG, PSD's embedding
    return LossOutput(candidate_losses=losses, weights=cands.weights, logs=logs, extra=extra, candidates=cands)


class DistillationSystem(NonFiniteGuard, pl.LightningModule):
    """Optimises one scene with a frozen prior, a reward, a strategy and a loss mode.

    Args:
        cfg: the validated root config (``rewardsds.config.Config``).
        prior, reward, strategy, loss, representation: built components.
        run_dir: where frames and final outputs go.
        camera_sampler: draws training cameras for 3D representations (None for 2D).
        media: writer for images/videos (mirrors to W&B).
    """

    def __init__(
        self,
        cfg: Any,
        prior: Prior,
        reward: Optional[Reward],
        strategy: Strategy,
        loss: LossMode,
        representation: Representation,
        run_dir: Path,
        camera_sampler: Any = None,
        media: Optional[Media] = None,
        resume_from: Optional[Path] = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.prior = prior  # a plain object: never registered, never checkpointed
        self.reward = reward
        self.strategy = strategy
        self.loss_mode = loss
        self.representation = representation
        self.run_dir = Path(run_dir)
        self.camera_sampler = camera_sampler
        self.media = media or Media(self.run_dir)
        self.total_steps = int(cfg.steps)
        self.reward_steps = int(math.floor(cfg.steps * cfg.reward_duration))
        self.iteration = 0
        self._init_nonfinite()
        self._step_started: Optional[float] = None  # perf_counter at the start of the running step
        self.skip_on_device = False  # set by configure_optimizers
        self.step_times: list[float] = []
        self.evals_per_step: list[int] = []
        self.last_metrics: dict[str, Any] = {}  # the latest step's scalars, on the device (progress lines read them)
        self.timesteps = TimestepSampler(Schedule.from_any(cfg.timesteps.t_min), Schedule.from_any(cfg.timesteps.t_max),
                                         prior.num_train_timesteps, cfg.timesteps.grid.value)
        self.engine = CandidateEngine(prior, reward, cfg.lookahead, cfg.chunk_size, cfg.reward_views, cfg.seed)
        self.plain_strategy = NoStrategy()  # outside the reward window: 1/N, no lookahead
        n_out = max(1, cfg.steps // max(1, cfg.output.video_frames)) if cfg.output.video else 0
        self.frame_every = n_out
        # a checkpoint path, or a checkpoint already loaded (and checked) by rewardsds.resume.load_checkpoint
        self.resume_from = resume_from if isinstance(resume_from, dict) else (Path(resume_from) if resume_from else None)
        self._pending_optimizer_state: Optional[dict] = None
        self._prepared_on: Optional[torch.device] = None
        self.start_iteration = 0  # the step this session started from (after a restore)
        self.session_first_time: Optional[int] = None  # index in step_times of this session's first step
        self._compile_at_start = 0.0  # compile_seconds() when this session's training started
        self.session_first_compile_s: Optional[float] = None  # torch.compile seconds inside this session's first step
        self.wall_time_before = 0.0  # training wall time of earlier sessions, up to the restored checkpoint
        self._session_clock: Optional[float] = None

    # ------------------------------------------------------------------ Lightning plumbing
    def setup(self, stage: str) -> None:
        self.prepare(self.trainer.strategy.root_device)

    def prepare(self, device: torch.device) -> None:
        """Move frozen models to ``device``, build the scene's parameters and restore the checkpoint (also used
        without a trainer). Runs once per device: the run calls it before ``fit`` (so a checkpoint that does not
        fit the run fails before the run's files change), Lightning's ``setup`` calls it again."""
        device = torch.device(device)
        if self._prepared_on == device:
            return
        self._prepared_on = device
        self.prior.to(device)
        if self.reward is not None:
            self.reward.to(device)
        self.representation.setup(self.prior, device, self.cfg.seed)
        self.loss_mode.setup(self.prior, self.reward, device, self.total_steps, engine=self.engine)
        if self.resume_from is not None:
            self._restore(self.resume_from)

    def _restore(self, source) -> None:
        """Load a checkpoint written by AtomicCheckpoint (a standard Lightning checkpoint), a path or a loaded dict.

        Restored here rather than through ``Trainer.fit(ckpt_path=...)``: the run's step counter is our own
        (every random draw is keyed on it) and a longer ``steps`` may continue a finished run.
        """
        from rewardsds.errors import CheckpointError

        ckpt = source if isinstance(source, dict) else torch.load(source, map_location="cpu", weights_only=False)
        try:
            self.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            where = "the checkpoint" if isinstance(source, dict) else source
            raise CheckpointError(where, "does not fit this run's scene and loss mode (written by another "
                                  f"representation, loss or size: {str(err).splitlines()[0][:200]})",
                                  "resume a checkpoint of this run (resume=<its run folder>), or start a new run") from None
        self.on_load_checkpoint(ckpt)
        states = ckpt.get("optimizer_states") or []
        self._pending_optimizer_state = states[0] if states else None
        log.debug("restored step %d", self.iteration)

    def on_train_start(self) -> None:
        if self._pending_optimizer_state is not None:
            self.optimizers().optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None
        self.start_iteration = self.iteration
        self.session_first_time = len(self.step_times)  # where this session's first (start-up) step time will go
        self._compile_at_start = compile_seconds()
        self._nonfinite_at_start = self.nonfinite_steps
        self._session_clock = time.perf_counter()
        # Logged steps continue where the restored run stopped (W&B refuses steps that go back in time).
        loop = getattr(getattr(self.trainer, "fit_loop", None), "epoch_loop", None)
        if loop is not None and hasattr(loop, "_batches_that_stepped"):
            loop._batches_that_stepped = self.iteration

    def startup_step_time(self) -> Optional[float]:
        """This session's first step time (seconds; it compiles and captures CUDA graphs), None before it ended."""
        first = self.session_first_time
        return self.step_times[first] if first is not None and first < len(self.step_times) else None

    def session_compile_s(self) -> float:
        """Seconds ``torch.compile`` spent since this session's training started (compiles and cache loads)."""
        return compile_seconds() - self._compile_at_start

    def training_wall_time(self) -> float:
        """Training wall time of the whole run so far: earlier sessions (from the checkpoint) plus this one."""
        now = 0.0 if self._session_clock is None else time.perf_counter() - self._session_clock
        return self.wall_time_before + now

    def expected_evals_per_step(self) -> float:
        """UNet evaluations per step averaged over the run (the start-up message's estimate): the engine's per reward
        step over the first step's timestep range, and one CFG pair per view after the reward window."""
        sampler = self.timesteps
        if sampler.grid == "reference_2d":
            ts = [999 - 2 * i for i in range(10, 490)]
        else:
            lo, hi = sampler.bounds(0)
            ts = list(range(lo, hi + 1))
        b = self.camera_sampler.batch_size_at(0) if self.camera_sampler is not None else self.representation_batch()
        per_reward_step = self.engine.expected_evals(ts, self.cfg.n_noises, b, self.strategy.uses_reward)
        frac = self.reward_steps / max(1, self.total_steps)
        return frac * per_reward_step + (1 - frac) * 2 * b

    def train_dataloader(self):
        return torch.utils.data.DataLoader(StepIndices(self), batch_size=None, num_workers=0)

    def configure_optimizers(self):
        """One AdamW over the representation's and the loss mode's groups.

        Fused (one kernel per dtype and device) whenever it can be, and then a non-finite step is skipped on the
        device: the fused kernel reads ``found_inf`` and leaves parameters, moments and step counts untouched,
        so the training step never waits for the GPU. Representations whose post-step hook needs a host decision
        (``host_post_step``) keep the host check and the default (foreach) implementation.
        """
        groups = self.representation.param_groups() + self.loss_mode.param_groups()
        params = [p for g in groups for p in g["params"]]
        self.skip_on_device = not self.representation.host_post_step and bool(params) and all(
            p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params
        ) and len({p.device for p in params}) == 1
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=0.0, fused=True if self.skip_on_device else None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rewardsds"] = {
            "iteration": self.iteration,
            "wall_time_s": self.training_wall_time(),
            "nonfinite_steps": self.nonfinite_steps,
            "step_times": self.step_times[-1000:],
            "evals_per_step": self.evals_per_step[-1000:],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rewardsds", {})
        self.iteration = int(state.get("iteration", 0))
        self.wall_time_before = float(state.get("wall_time_s", 0.0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.step_times = list(state.get("step_times", []))
        self.evals_per_step = list(state.get("evals_per_step", []))

    # ------------------------------------------------------------------ the step
    def prompts_for(self, cameras) -> list[str]:
        """One prompt per view; with ``view_dependent_prompts`` the view's suffix (", side view", ...) is appended."""
        b = len(cameras) if cameras is not None else self.representation_batch()
        if cameras is not None and self.cfg.view_dependent_prompts:
            return [self.cfg.prompt + s for s in self.camera_sampler.view_suffixes(cameras)]
        return [self.cfg.prompt] * b

    def representation_batch(self) -> int:
        lat = getattr(self.representation, "latents", None)
        return int(lat.shape[0]) if lat is not None else 1

    def scene_latents(self, step: int):
        """Render the scene and bring it to the prior's space (with gradient)."""
        cameras = None
        if self.representation.needs_cameras:
            if self.camera_sampler is None:
                raise RuntimeError("this representation needs cameras but no camera sampler is configured")
            g = torch.Generator().manual_seed(seed_for(self.cfg.seed, step, Streams.CAMERA))
            cameras = self.camera_sampler.sample(g, step).to(self.device)
        out = self.representation.render(cameras, step)
        if "latents" in out:
            return cameras, out, out["latents"]
        g = torch.Generator(device=out["rgb"].device).manual_seed(seed_for(self.cfg.seed, step, Streams.AUX, 1))
        return cameras, out, self.prior.encode_images(out["rgb"], generator=g)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        step = self.iteration
        # Step time is start-to-start wall time: the step never waits for the GPU itself, so the time a step
        # really costs shows up where the next one starts (logging and checkpoints included).
        elapsed = self._mark_step_start()
        res = self.run_step(step, self.optimizers())
        cands = res.loss.candidates
        self.evals_per_step.append(int(cands.evals) if cands is not None else 0)
        self._log_step(res, elapsed, step)
        if res.ctx.keep_images and cands is not None and cands.images is not None:
            self._log_candidates(cands, step)
        self.iteration += 1
        if self.iteration >= self.total_steps:
            self._close_step_clock()  # before the final checkpoint, so it holds every step's time
        elif len(self.step_times) == self.session_first_time:
            # the session's start-up step (compiles, captures CUDA graphs): timed to its end (one wait for the GPU),
            # so its own progress line can say what it took; the next step's clock starts at that step
            self._close_step_clock()
        # Counted on the device; read (one sync) as often as the logger writes, so the host can run ahead otherwise.
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 1) or 1))
        if self._nonfinite_device is not None and (self.iteration % every == 0 or self.iteration == self.total_steps):
            self.check_nonfinite(step)
        self._maybe_save_frames(step)
        return res.total.detach()

    def _mark_step_start(self) -> Optional[float]:
        """Start the step's clock; return (and record) the previous step's start-to-start time, if one ran."""
        now = time.perf_counter()
        elapsed = None if self._step_started is None else now - self._step_started
        if elapsed is not None:
            self.step_times.append(elapsed)
            if len(self.step_times) - 1 == self.session_first_time:  # the start-up step: how much of it compiled
                self.session_first_compile_s = compile_seconds() - self._compile_at_start
        self._step_started = now
        return elapsed

    def _close_step_clock(self) -> None:
        """Record the running step's time once its work on the device is done (the last step of a run)."""
        if self._step_started is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._mark_step_start()
            self._step_started = None

    def on_train_end(self) -> None:
        self._close_step_clock()

    def reward_active(self, step: int) -> bool:
        """Whether ``step`` is inside the reward window (the first ``reward_duration`` of the run): the one place that
        decides it. Outside it a step is plain distillation with one candidate."""
        return step < self.reward_steps

    def make_context(self, step: int, latents: Tensor, cameras, out: dict) -> StepContext:
        """The data of the step: timestep, prompts and conditioning, and what the reward window decides."""
        prompts = self.prompts_for(cameras)
        active = self.reward_active(step)
        n = self.cfg.n_noises if active else 1
        every = self.cfg.output.candidates_every
        return StepContext(
            latents=latents, t=self.timesteps.sample(step, self.cfg.seed), step=step, progress=step / self.total_steps,
            text=self.prior.text_cond(prompts, self.cfg.negative_prompt), prompts=prompts, base_prompt=self.cfg.prompt,
            negative_prompt=self.cfg.negative_prompt, camera=None if cameras is None else cameras.c2w,
            reward_active=active, n_noises=n,
            ranked=active and n > 1 and self.strategy.uses_reward and not self.loss_mode.weighs_own_candidates,
            keep_images=bool(every) and step % every == 0, rgb=out.get("rgb"),
        )

    def run_step(self, step: int, opt) -> "StepResult":
        """Render, distil (:func:`distill`), back-propagate and step the optimiser once (no logging).

        ``opt`` is the LightningOptimizer in training, or a plain torch optimiser (benchmarks run the very
        same code without a trainer).
        """
        raw = getattr(opt, "optimizer", opt)
        # Libraries that draw from the global RNG (gsplat's splits, nerfacc's occupancy-grid sampling) see a
        # per-step seed too, so a resumed run continues exactly like an uninterrupted one.
        torch.manual_seed(seed_for(self.cfg.seed, step, Streams.AUX, 2))
        cameras, out, latents = self.scene_latents(step)          # render the scene (prior space, with gradient)
        ctx = self.make_context(step, latents, cameras, out)       # t, prompts, the reward window
        strategy = self.strategy if ctx.reward_active else self.plain_strategy
        result = distill(ctx, self.loss_mode, self.engine, strategy)
        regs = self.representation.regularizers(out, step)
        total = result.total() + sum(regs.values(), torch.zeros((), device=latents.device))
        cands = result.candidates
        grad_norm = self._backward_and_step(total, raw, opt, step, out, cands.rewards if cands is not None else None)
        return StepResult(ctx=ctx, loss=result, total=total, grad_norm=grad_norm, regs=regs)

    # ------------------------------------------------------------------ logging
    def _log_step(self, res: "StepResult", elapsed: Optional[float], step: int) -> None:
        ctx, result, total, grad_norm, regs = res.ctx, res.loss, res.total, res.grad_norm, res.regs
        metrics: dict[str, Any] = {
            "train/loss": total.detach(),
            "train/t": float(ctx.t),
            "train/grad_norm": grad_norm.detach(),
            "train/n_noises": float(ctx.n_noises),
            "train/nonfinite_steps": self._nonfinite_tensor(total.device),
        }
        if elapsed is not None:
            metrics["train/step_time"] = elapsed  # of the previous step, start to start
        for k, v in result.logs.items():
            metrics[f"train/{k}" if k != "grad_norm" else "train/grad_field_norm"] = v
        for k, v in {**result.extra, **regs}.items():
            metrics[f"train/{k}"] = v.detach()
        cands = result.candidates
        if cands is not None:
            metrics["train/evals"] = float(cands.evals)
            w = result.weights.detach().float()
            w1 = w if w.dim() == 1 else w.mean(1)
            metrics["train/weights_entropy"] = weight_entropy(w1)
            if cands.view_rewards is not None:
                r = cands.view_rewards.mean(1)
                metrics["train/reward_mean"] = r.mean()
                metrics["train/reward_min"] = r.min()
                metrics["train/reward_max"] = r.max()
                pos = w1.clamp_min(0)
                metrics["train/reward_selected"] = (pos * r).sum() / pos.sum().clamp_min(1e-12)
        self._write_scalars(metrics, step)

    def _write_scalars(self, metrics: dict[str, Any], step: int) -> None:
        """Send a step's scalars to the run's loggers, on the steps they log (``trainer.log_every_n_steps`` and the
        last step), reading every device value at once (one wait for the GPU instead of one per key).

        Lightning's ``self.log`` costs about a millisecond of host time per key and step (measured on the CPU:
        7.5 ms per step for 9 keys, more than an analytic RewardSDS step) and reads each tensor separately; the
        loggers receive the same values with the same step here. The progress bar (a terminal only) still gets its
        three headline values through ``self.log``, kept out of the loggers. Without a logger nothing is read here.
        """
        trainer = self._trainer
        if trainer is not None and trainer.progress_bar_callback is not None:
            for k in ("train/loss", "train/t", "train/reward_max"):
                if k in metrics:
                    self.log(k, metrics[k], on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=1)
        self.last_metrics = metrics  # progress lines read them (and wait for the GPU) only when they print
        loggers = self.loggers if trainer is not None else []
        every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1)) if trainer is not None else 1
        if not loggers or not ((step + 1) % every == 0 or step + 1 >= self.total_steps):
            return
        keys = [k for k, v in metrics.items() if isinstance(v, Tensor)]
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).tolist() if keys else []
        scalars = {k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor)}
        scalars.update(zip(keys, values))
        for logger in loggers:
            logger.log_metrics(scalars, step=step)
            logger.save()

    def _log_candidates(self, cands, step: int) -> None:
        imgs = to_uint8(cands.images)
        r = cands.view_rewards.reshape(-1).tolist()
        w = (cands.weights if cands.weights.dim() == 2 else cands.weights[:, None].expand(cands.n, cands.b)).reshape(-1).tolist()
        self.media.candidates_table("train/candidates", imgs, r, w, step, views=cands.b)

    # ------------------------------------------------------------------ frames and final outputs
    @torch.no_grad()
    def current_images(self) -> Optional[Tensor]:
        """RGB [b, 3, H, W] of the current scene: decoded latents (2D) or the fixed preview views (3D)."""
        if self.representation.outputs_latents:
            return self.prior.decode_latents(self.representation.latents.detach())
        if self.camera_sampler is not None:
            from rewardsds.representations.views import render_views

            # the optimisation video follows one fixed front view at the prior's resolution
            cams = self.camera_sampler.eval_cameras(1, resolution=self.prior.image_size).to(self.device)
            return render_views(self.representation, cams, self.iteration)["rgb"].clamp(0, 1)
        return None

    def _maybe_save_frames(self, step: int) -> None:
        if not self.trainer.is_global_zero:
            return
        done = self.iteration
        img_every = self.cfg.output.image_every
        save_img = img_every and (done % img_every == 0)
        save_frame = self.frame_every and (done % self.frame_every == 0 or done == 1)
        if not (save_img or save_frame):
            return
        imgs = self.current_images()
        if imgs is None:
            return
        from rewardsds.viz import grid

        tile = upscale(grid(imgs, pad=0 if imgs.shape[0] == 1 else 2))
        if save_frame:
            write_image(self.run_dir / "progress" / "frames" / f"frame_{done:06d}.jpg", tile)
        if save_img:
            self.media.image("train/image", tile, self.run_dir / "progress" / f"step_{done:06d}.png", done, caption=self.cfg.prompt)
