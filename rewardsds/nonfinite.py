"""Steps whose gradient, or whose candidates' rewards, are not finite: skipped, counted, and the run stopped past a limit.

A non-finite gradient must not reach the parameters; nor may a step whose candidates were ranked by non-finite
rewards (the strategy's choice among NaNs is arbitrary even when the gradient is finite). Where the optimiser is
PyTorch's fused AdamW, the skip happens on the device (its ``found_inf``: parameters, both moments and the step count
stay untouched) and the count is read only as often as the logger writes, so the training step never waits for the
GPU; representations whose post-step hook decides on the host keep one host check per step.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

from rewardsds.errors import TrainingAborted

log = logging.getLogger("rewardsds.system")


class NonFiniteGuard:
    """Mixin of :class:`rewardsds.system.DistillationSystem`: the backward pass and the optimiser step with the skip.

    Expects ``representation``, ``cfg`` (``max_nonfinite_steps``, ``output.checkpoint_every``), ``run_dir``,
    ``iteration``, ``skip_on_device`` and the Lightning module's ``manual_backward``.
    """

    def _init_nonfinite(self) -> None:
        self._nonfinite_host = 0  # non-finite steps already counted on the host
        self._nonfinite_device: Optional[Tensor] = None  # skipped on the device since the last fold (0-d fp32)
        self._nonfinite_warned = 0  # how many of them were already reported
        self._nonfinite_checked_at = 0  # the step after the last check
        self._nonfinite_at_start = 0  # the count when this session started

    @property
    def nonfinite_steps(self) -> int:
        """Steps skipped for a non-finite gradient so far (reading it waits for the device's count)."""
        if self._nonfinite_device is not None:
            self._nonfinite_host += int(self._nonfinite_device.item())
            self._nonfinite_device = None
        return self._nonfinite_host

    @nonfinite_steps.setter
    def nonfinite_steps(self, value: int) -> None:
        self._nonfinite_host = self._nonfinite_warned = int(value)
        self._nonfinite_device = None

    def _nonfinite_tensor(self, device: torch.device) -> Tensor:
        """The count as a device tensor (for logging without a sync)."""
        pending = self._nonfinite_device if self._nonfinite_device is not None else torch.zeros((), device=device)
        return pending + self._nonfinite_host

    def check_nonfinite(self, step: int) -> None:
        """Fold the device's count into the host's, warn about newly skipped steps, and abort past the limit."""
        now = self.nonfinite_steps
        if now > self._nonfinite_warned:
            first = self._nonfinite_checked_at
            where = f"step {step}" if first >= step else f"steps {first}..{step}"
            log.warning("%s: %d non-finite gradient(s), step(s) skipped (%d so far)", where, now - self._nonfinite_warned, now)
            self._nonfinite_warned = now
        self._nonfinite_checked_at = step + 1
        if now > self.cfg.max_nonfinite_steps:
            last = self.run_dir / "checkpoints" / "last.ckpt"
            kept = (f"the last checkpoint ({last}) and the outputs so far are kept" if last.is_file()
                    else f"no checkpoint was written yet (output.checkpoint_every = {self.cfg.output.checkpoint_every})")
            raise TrainingAborted(
                f"{now} steps had a non-finite gradient or reward (max_nonfinite_steps = "
                f"{self.cfg.max_nonfinite_steps}); {kept}. "
                "Lower the learning rate or the guidance scale, use prior.dtype=fp32, or raise max_nonfinite_steps"
            )

    def check_some_step_ran(self) -> None:
        """Abort a session in which every step was skipped for a non-finite gradient or reward (nothing was trained)."""
        ran = self.iteration - self.start_iteration
        skipped = self.nonfinite_steps - self._nonfinite_at_start
        if ran > 0 and skipped >= ran:
            raise TrainingAborted(
                f"every one of the {ran} steps had a non-finite gradient or reward and was skipped: nothing was trained. "
                "Lower the learning rate or the guidance scales, check the reward, or use prior.dtype=fp32")

    def _backward_and_step(self, total: Tensor, raw, opt, step: int, out: dict, rewards: Optional[Tensor]) -> Tensor:
        """Back-propagate and step the optimiser, unless the gradient (or the rewards that chose the candidates) is
        not finite: then the update is skipped and counted, on the device without waiting for it where possible."""
        raw.zero_grad(set_to_none=True)
        self.representation.on_before_backward(step, out)
        if self._trainer is not None:
            self.manual_backward(total)
        else:
            total.backward()
        self.representation.on_after_backward(step, out)
        params = [p for g in raw.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros((), device=total.device)
        # A non-finite gradient must not reach the parameters; nor may a step whose candidates were ranked by
        # non-finite rewards (the strategy's choice among NaNs is arbitrary even when the gradient is finite).
        finite = torch.isfinite(grad_norm)
        if rewards is not None:
            finite = finite & torch.isfinite(rewards).all().to(finite.device)
        if self.skip_on_device and getattr(raw, "defaults", {}).get("fused"):
            # no host sync: the fused kernel skips the whole update where found_inf is 1
            bad = (~finite).float()
            raw.found_inf = bad
            opt.step()
            raw.found_inf = None
            self._nonfinite_device = bad if self._nonfinite_device is None else self._nonfinite_device + bad
            self.representation.on_after_optimizer_step(step, raw)
        elif bool(finite):  # the one host sync of the step
            opt.step()
            self.representation.on_after_optimizer_step(step, raw)
        else:
            raw.zero_grad(set_to_none=True)
            self._nonfinite_host += 1
            self.check_nonfinite(step)
        return grad_norm
