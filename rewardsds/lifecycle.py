"""What a run says while it runs, and how it stops when asked to.

- :func:`start_block` / :func:`end_block`: the lines a run prints (and writes to ``train.log``) when it starts
  (folder, device, method, the cost of a step) and when it ends (final reward, folder, the next commands).
- :class:`ProgressReport`: a plain line every ``output.progress_every`` steps (step, t, reward, step time, ETA).
  Without a TTY (Slurm logs, ``nohup``) it is the run's only progress; with one, Lightning's progress bar shows
  and the lines go to ``train.log`` only.
- :class:`StopRequests`: SIGINT, SIGTERM and the Slurm/submitit preemption signals (SIGUSR1, SIGUSR2) ask the
  run to stop after the running step; the checkpoint callback then writes ``checkpoints/last.ckpt`` and the run
  ends with status ``interrupted``. A second Ctrl-C stops at once (the last periodic checkpoint is kept).
  Handlers that were installed before the run (submitit's requeue handler) are called after the checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning.pytorch as pl

log = logging.getLogger("rewardsds")
progress_log = logging.getLogger("rewardsds.progress")

#: Signals that ask a run to stop after the running step.
STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")) if s is not None)
#: Signals Slurm sends ahead of a time limit (``--signal=USR1@90``) or submitit uses for preemption.
PREEMPT_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGUSR1", "SIGUSR2")) if s is not None)


def has_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def plural(count: Any, noun: str) -> str:
    """``1 step``, ``12 steps`` (a count that is not a number keeps the plural)."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def duration(seconds: float) -> str:
    """``1h02m``, ``12m31s`` or ``4.2s``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 1:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


# ----------------------------------------------------------------------------------------- start and end
def start_block(info: dict[str, Any]) -> str:
    """The lines a run prints before its first step.

    ``info`` keys: run_dir, device, experiment, prompt, prior, dtype, loss, reward, strategy, n_noises, lookahead,
    lookahead_options (optional: what is not the plain lookahead), evals_per_step, steps, resumed_at (optional),
    changes (optional), checkpoint (optional).
    """
    lines = [f"rewardsds: run {info['run_dir']}"]
    if info.get("resumed_at") is not None:
        lines.append(f"  resume      from step {info['resumed_at']} of {info.get('checkpoint')}"
                     + (f"; changed: {', '.join(info['changes'])}" if info.get("changes") else ""))
        if info["resumed_at"] >= info["steps"]:  # no step left: only the final outputs are written again
            lines.append(f"              the run is at its last step ({info['steps']}): only its final outputs are written "
                         f"again (steps=N continues it)")
    lines += [
        f"  prompt      {info['prompt']!r}" + (f"  (experiment={info['experiment']})" if info.get("experiment") else ""),
        f"  device      {info['device']}, prior {info['prior']} ({info['dtype']})",
        f"  method      loss={info['loss']}, strategy={info['strategy']}, N={info['n_noises']}"
        + (f", lookahead K={info['lookahead']}" if info.get("lookahead") is not None else "")
        + (f" ({', '.join(info['lookahead_options'])})" if info.get("lookahead") is not None and info.get("lookahead_options") else "")
        + (f", reward={info['reward']}" if info.get("reward") else ""),
        f"  cost        ~{info['evals_per_step']:.0f} UNet evaluations per step (estimate), {plural(info['steps'], 'step')}",
    ]
    return "\n".join(lines)


def end_block(metrics: dict[str, Any], run_dir: Path, is_3d: bool, session_s: Optional[float] = None) -> str:
    """The lines a run prints when it completes: final reward, time, folder and the next commands.

    ``session_s``: the seconds of this session. A resumed run (more than one entry in ``sessions``) says this
    session's time and steps first and the total over its sessions after, labelled; else the run's wall time.
    """
    reward = metrics.get("final/reward")
    reward_s = "n/a" if reward is None or (isinstance(reward, float) and math.isnan(reward)) else f"{reward:.4f}"
    step = metrics.get("step_time_median_s")
    first, compiled = metrics.get("startup_step_s"), metrics.get("compile_s")
    # a short run on a fresh machine is mostly its start-up step: say so, or "complete in 2m38s" for 30 steps misleads
    startup = (f"; {first_step_text(first, compiled)}" if first and compiled and compiled >= 0.05 else "")
    total = float(metrics.get("wall_time_s") or float("nan"))
    sessions = metrics.get("sessions") or []
    if session_s is not None and len(sessions) > 1:  # a resume: "complete in 2m15s" for its 10 steps would mislead
        start = (sessions[-1] or {}).get("start_step", 0)
        took, steps = session_s, f"steps {start} to {metrics.get('iterations')} in this session"
        overall = f"; {duration(total)} over {len(sessions)} sessions"
    else:
        took, steps, overall = (session_s if session_s is not None else total), plural(metrics.get("iterations"), "step"), ""
    lines = [
        f"rewardsds: complete in {duration(took)} "
        f"({steps}" + (f", {step:.3f} s/step median" if step and math.isfinite(step) else "") + startup + overall + ")",
        f"  final reward  {reward_s}" + (f" ({metrics.get('reward')})" if metrics.get("reward") else ""),
        f"  folder        {run_dir}",
        f"  evaluate      rewardsds-eval {run_dir} --metrics none",
    ]
    if is_3d:
        lines.append(f"  export        rewardsds export {run_dir}")
    lines.append(f"  continue      rewardsds resume={run_dir} steps={2 * int(metrics.get('iterations') or 0)}")
    wandb = metrics.get("wandb") if isinstance(metrics.get("wandb"), dict) else {}
    if wandb.get("mode") == "offline" and wandb.get("dir"):  # what uploads it to the dashboard later
        lines.append(f"  sync          wandb sync {wandb['dir']}")
    return "\n".join(lines)


def announce(text: str) -> None:
    """Write a block to the run's log (console and ``train.log`` under the CLI), or print it when no handler exists."""
    if logging.getLogger().handlers or log.handlers:
        for line in text.splitlines():
            log.info(line)
    else:
        print(text)


def quiet_console_progress() -> None:
    """With a TTY the progress bar shows progress: keep the plain progress lines out of the console (not the log)."""
    if not has_tty():
        return
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and \
                getattr(h, "stream", None) in (sys.stdout, sys.stderr) and not any(isinstance(f, _NoProgress) for f in h.filters):
            h.addFilter(_NoProgress())


class _NoProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != progress_log.name


# ----------------------------------------------------------------------------------------- progress lines
def auto_progress_every(steps: int) -> int:
    """``output.progress_every = 0``: about 20 lines per run."""
    return max(1, int(round(steps / 20)))


class ProgressReport(pl.Callback):
    """A plain line after the first step, every ``every`` steps and after the last:
    ``step 50/1000 (5%) | t 612 | reward mean 0.121 max 0.402 | 0.74 s/step | ETA 11m42s``.

    Reading the step's scalars waits for the GPU, once every ``every`` steps.
    """

    def __init__(self, every: int):
        self.every = max(1, int(every))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done, total = pl_module.iteration, pl_module.total_steps
        if not (done == 1 or done % self.every == 0 or done >= total or done == pl_module.start_iteration + 1):
            return
        progress_log.info(progress_line(pl_module, getattr(pl_module, "last_metrics", None) or trainer.callback_metrics))


def first_step_text(seconds: float, compile_s: Optional[float]) -> str:
    """``first step 145.0 s (start-up: 120.3 s in torch.compile, 24.7 s running and capturing CUDA graphs)``; the
    split is left out when nothing compiled (eager, CPU) or torch keeps no compile times."""
    if not compile_s or compile_s < 0.05:
        return f"first step {seconds:.1f} s"
    return (f"first step {seconds:.1f} s (start-up: {compile_s:.1f} s in torch.compile, "
            f"{max(0.0, seconds - compile_s):.1f} s running and capturing CUDA graphs)")


def progress_line(system: Any, metrics: dict[str, Any]) -> str:
    done, total = system.iteration, system.total_steps
    parts = [f"step {done}/{total} ({100 * done / max(1, total):.0f}%)"]
    t = metrics.get("train/t")
    if t is not None:
        parts.append(f"t {float(t):.0f}")
    if metrics.get("train/reward_mean") is not None:
        parts.append(f"reward mean {float(metrics['train/reward_mean']):.4g} max {float(metrics['train/reward_max']):.4g}")
    if metrics.get("train/loss") is not None:
        parts.append(f"loss {float(metrics['train/loss']):.4g}")
    # The first step of a session compiles and captures CUDA graphs (minutes on a fresh machine): it is shown
    # apart and left out of the rate, or the ETA of a 1000-step run would read as an hour.
    times, first = system.step_times, getattr(system, "session_first_time", None)
    recent = [x for i, x in enumerate(times) if i != first][-20:]
    if recent:
        per = statistics.median(recent)
        parts.append(f"{per:.3f} s/step")
        parts.append(f"ETA {duration(per * max(0, total - done))}")
    elif times and done - getattr(system, "start_iteration", done - 1) == 1:  # the session's first step's own line
        parts.append(first_step_text(times[-1], getattr(system, "session_first_compile_s", None)))
    skipped = getattr(system, "nonfinite_steps", 0)
    if skipped:
        parts.append(f"{skipped} non-finite step(s) skipped")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------- signals
class StopRequests:
    """Turn stop signals into a request the training loop answers at the end of the running step.

    Use as a context manager around ``trainer.fit`` (handlers are installed only in the main thread, and the
    previous ones are restored on exit). ``requested`` holds the first signal number received.
    """

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.requested: Optional[int] = None
        self.previous: dict[int, Any] = {}
        self.trainer: Any = None  # set once the trainer exists (see _handle)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                try:
                    self.previous[s] = signal.signal(s, self._handle)
                except (OSError, ValueError):  # not settable here
                    pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.previous.items():  # kept: hand_on() passes a stop on to the handler it replaced
            try:
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            except (OSError, ValueError, TypeError):
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last periodic checkpoint stays
        if self.requested is None:
            self.requested = signum
            log.warning("received %s: stopping after this step and writing a checkpoint (Ctrl-C %sto stop at once)",
                        signal.Signals(signum).name, "again " if signum == signal.SIGINT else "")
        # Lightning notes SIGTERM too (its handler runs before this one) and would end the epoch with an exception at
        # the next batch boundary, possibly before the checkpoint callback of the running step: the stop is ours.
        connector = getattr(self.trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "received_sigterm"):
            connector.received_sigterm = False

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested is not None else ""

    def exit_code(self) -> int:
        return 128 + int(self.requested or 0)

    def hand_on(self, requeue: Callable[[list[str]], int] = lambda cmd: subprocess.call(cmd)) -> None:
        """After the checkpoint: let whoever handled the signal before us act on it (submitit requeues the job and
        exits), or, for a plain Slurm job warned of its time limit (SIGUSR1/SIGUSR2), requeue it ourselves; the
        requeued command continues this run (``rewardsds.cli.prepare_arguments``)."""
        s = self.requested
        if s is None:
            return
        prev = self.previous.get(s)
        if callable(prev) and prev is not signal.default_int_handler:
            prev(s, None)
            return
        job = os.environ.get("SLURM_JOB_ID")
        if s in PREEMPT_SIGNALS and job:
            array = os.environ.get("SLURM_ARRAY_JOB_ID")
            job_id = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array and os.environ.get("SLURM_ARRAY_TASK_ID") else job
            code = requeue(["scontrol", "requeue", job_id])
            if code == 0:
                log.warning("requeued Slurm job %s; it continues from the checkpoint when it restarts", job_id)
            else:
                log.warning("scontrol requeue %s failed (exit %s): resume by hand with resume=<run folder>", job_id, code)
