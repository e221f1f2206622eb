"""One run, start to end: validate, build, fit, finalise, and keep the run's record (metrics.json) honest.

The Hydra entry point is :mod:`rewardsds.cli`; :func:`train` is what it calls for each run (also usable from Python
with a composed config). A run's folder holds its resolved config, ``metrics.json`` (status ``running`` ->
``complete`` / ``failed`` / ``interrupted``; wall time summed over every session; one entry per session), its
checkpoint and its outputs. One process writes a run folder at a time: the run holds the folder's lock
(:class:`rewardsds.runlock.RunLock`) from before it reads the folder to its end. Nothing in the folder of a run
being resumed changes until its checkpoint has been loaded and checked and the run's components are built.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from rewardsds.config import Choices, Config, check_input_files, hydra_choices, validate
from rewardsds.errors import ConfigError, RunInterrupted, TrainingAborted
from rewardsds.schema import build
from rewardsds.resume import check_changes, check_steps, load_checkpoint, resolve_resume, saved_config
from rewardsds.runlock import RunLock
from rewardsds.utils.dtypes import dtype_name
from rewardsds.utils.io import (command_line, git_commit, job_command, package_versions, read_json, remove_partial_files,
                                write_json, write_text)

log = logging.getLogger("rewardsds")

#: metrics.json keys sent to the W&B run summary besides ``final/*``
SUMMARY_COST_KEYS = ("wall_time_s", "step_time_median_s", "startup_step_s", "compile_s", "evals_per_step_mean", "peak_memory_gb",
                     "iterations")

__all__ = ["train", "resolve_resume", "build_components", "quiet_lightning"]


# ----------------------------------------------------------------------------------------- helpers
def check_video_writer(video: bool) -> None:
    """Fail before training, not after it, when videos are asked for and imageio cannot write mp4."""
    if not video:
        return
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise ConfigError("output.video", True, "needs imageio-ffmpeg to write video.mp4 / turntable.mp4, and it is not installed",
                          "pip install 'imageio[ffmpeg]' (part of this package's dependencies) or set output.video=false") from None


def resolve_device(accelerator: str, gpu_index: Optional[int] = None) -> torch.device:
    """The device for ``trainer.accelerator`` (``cuda:<gpu_index>`` when a GPU was locked for this job).

    A clear error if CUDA is requested but absent, or if the locked index is not a visible device.
    """
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        from rewardsds.devices import check_accelerator

        check_accelerator(accelerator)
        if gpu_index is None:
            # with its index, as Lightning names its root device: the system's prepare() then sees one device and
            # moves (and wraps for compiling) the prior once, not again in setup()
            return torch.device("cuda", torch.cuda.current_device())
        if gpu_index >= torch.cuda.device_count():
            raise ConfigError("gpu_lock.gpus", gpu_index, f"is not a visible CUDA device ({torch.cuda.device_count()} visible)",
                              "list visible device indices in gpu_lock.gpus, or null for all")
        # libraries that use the current device (gsplat, nerfacc kernels) follow the job's GPU too
        torch.cuda.set_device(gpu_index)
        return torch.device("cuda", gpu_index)
    return torch.device("cpu")


def _device_index(devices: Any) -> Optional[int]:
    """The GPU index of ``trainer.devices=[i]`` (None for ``1`` or ``auto``: the current device)."""
    if isinstance(devices, (list, tuple)) and len(devices) == 1 and isinstance(devices[0], int):
        return int(devices[0])
    return None


def gpu_lock_enabled(typed: Config, choices: Choices) -> bool:
    """``gpu_lock.enabled``, where null means: on exactly when the launcher is ``hydra/launcher=gpus``."""
    if typed.gpu_lock.enabled is not None:
        return bool(typed.gpu_lock.enabled)
    return _choice("hydra/launcher", choices) == "gpus"


def job_overrides() -> list[str]:
    from rewardsds.cli import job_overrides as overrides

    return overrides()


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get()
    except ValueError:
        return None


def is_multirun() -> bool:
    from rewardsds.cli import is_multirun as multirun

    return multirun()


def job_num() -> int:
    hc = _hydra()
    try:
        return int(hc.job.num) if hc is not None else 0
    except (ValueError, TypeError, AttributeError):
        return 0


def sweep_group() -> Optional[str]:
    """The sweep a multirun job belongs to, as ``<date>/<time>[_name]`` (the folder under ``outputs/sweeps``)."""
    hc = _hydra()
    if hc is None or not is_multirun():
        return None
    p = Path(hc.sweep.dir)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _choice(group: str, choices: Choices) -> Optional[str]:
    v = choices.get(group)
    return None if v in (None, "null") else str(v)


# ----------------------------------------------------------------------------------------- building
def build_components(typed: Config) -> dict[str, Any]:
    """Prior, reward, strategy, loss mode, representation and (3D) camera sampler, each ``Class(its schema)``."""
    representation = build(typed.representation)
    camera_sampler = None
    if representation.needs_cameras:
        if typed.cameras is None:
            raise ConfigError("cameras", None, "is required by a 3D representation", "add a cameras: node (see conf/experiment/dreamfusion_nerf.yaml)")
        camera_sampler = build(typed.cameras)
    return dict(prior=build(typed.prior), reward=build(typed.reward) if typed.reward else None, strategy=build(typed.strategy),
                loss=build(typed.loss), representation=representation, camera_sampler=camera_sampler)


def config_tree(typed: Config) -> dict:
    """The run's settings as plain data (enums as their names): the W&B run config and ``config_resolved.yaml``."""
    return OmegaConf.to_container(OmegaConf.structured(typed), resolve=True, enum_to_str=True, throw_on_missing=False)


def build_logger(typed: Config, run_dir: Path, record: dict[str, Any], wandb_id: Optional[str] = None,
                 resume_step: Optional[int] = None):
    """The Lightning logger of ``logger=...``; a W&B run is named after the job, grouped by its sweep, tagged with
    the run's settings, and resumed by id when the run already has one."""
    from rewardsds.config import CSVLoggerConfig, WandbLoggerConfig
    from rewardsds.loggers import run_tags

    cfg = typed.logger
    kwargs: dict[str, Any] = {"save_dir": str(run_dir)}
    if isinstance(cfg, WandbLoggerConfig):
        overrides = ",".join(o for o in job_overrides() if not o.startswith(("logger", "resume", "hydra.")))
        # the settings, and what prior.dtype resolved to (auto differs by device): a column to filter runs by
        kwargs["run_config"] = {**config_tree(typed), **({"prior_dtype": record["prior_dtype"]} if "prior_dtype" in record else {})}
        # multirun jobs: the job folder name (swept overrides, prompt slugs), the same on disk and in W&B
        kwargs["name"] = cfg.name or (typed.name or (run_dir.name if is_multirun() else overrides) or run_dir.name)[:128]
        kwargs["group"] = cfg.group or sweep_group()
        kwargs["tags"] = list(cfg.tags) + [t for t in run_tags(record) if t not in cfg.tags]
        kwargs["id"] = wandb_id
    if isinstance(cfg, CSVLoggerConfig):
        kwargs["resume_step"] = resume_step
    return build(cfg, **kwargs)


def build_trainer(typed: Config, **runtime: Any):
    """``lightning.Trainer`` with the user's ``trainer.*`` settings and what the run adds (``runtime``)."""
    from hydra.utils import get_class

    settings = {f.name: getattr(typed.trainer, f.name) for f in dataclasses.fields(typed.trainer) if f.name != "_target_"}
    return get_class(typed.trainer._target_)(**{**settings, **runtime})


def history_logger(logger, run_dir: Path, resume_step: Optional[int]):
    """The run's per-step history on disk (``csv/metrics.csv``, Lightning's CSV layout) beside any other logger, so
    curves never depend on a dashboard; None when the run's logger already writes it (``logger=csv``)."""
    from lightning.pytorch.loggers import CSVLogger

    from rewardsds.config import CSVLoggerConfig
    from rewardsds.loggers import csv_logger

    if isinstance(logger, CSVLogger):
        return None
    return csv_logger(CSVLoggerConfig(name="csv"), save_dir=str(run_dir), resume_step=resume_step)


# ----------------------------------------------------------------------------------------- the record
def run_metadata(overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """Provenance of a run. ``overrides``: the run's own overrides (a resume passes those of the run it continues,
    with its own on top), default the job's."""
    overrides = job_overrides() if overrides is None else list(overrides)
    return {
        "command": command_line(),
        "job_command": job_command(overrides),
        "overrides": overrides,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "hostname": os.uname().nodename if hasattr(os, "uname") else "",
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def base_metrics(typed: Config, choices: Choices) -> dict[str, Any]:
    return {
        "prompt": typed.prompt,
        "negative_prompt": typed.negative_prompt,
        "seed": typed.seed,
        "steps": typed.steps,
        "n_noises": typed.n_noises,
        "loss": choices.recorded("loss", typed.loss),
        "prior": choices.recorded("prior", typed.prior),
        "reward": choices.recorded("reward", typed.reward),
        "strategy": choices.recorded("strategy", typed.strategy),
        "representation": choices.recorded("representation", typed.representation),
        "experiment": _choice("experiment", choices),
        "reward_duration": typed.reward_duration,
        "lookahead_steps": typed.lookahead.steps,
        "prompts": typed.prompts.name if typed.prompts is not None else typed.prompts_file,
        "prompt_index": typed.prompt_index,
    }


class _Untouched:
    """Marks errors raised inside the block as having left the run's folder as it was (see ``cli._fail``)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            try:
                exc.run_untouched = True  # type: ignore[attr-defined]
            except AttributeError:
                pass
        return False


# ----------------------------------------------------------------------------------------- one run
def train(cfg: Config | DictConfig, run_dir: Path, choices: Optional[dict] = None, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """Validate, build, fit and finalise one run in ``run_dir``; returns its metrics.

    With ``resume`` set, the run continues in its own folder (``run_dir`` then only gets a note pointing there).
    With ``gpu_lock.enabled`` the run first locks a free GPU (:class:`rewardsds.devices.GpuLock`) and holds it
    to the end. ``choices`` are the config group choices and ``overrides`` the overrides to record (default:
    Hydra's runtime choices and the job's overrides). ``cfg`` may be a composed config (validated here) or an already
    validated :class:`~rewardsds.config.Config`; from there on the run sees only the typed config.
    """
    with _Untouched():
        choices = Choices(choices if choices is not None else (hydra_choices(cfg) if isinstance(cfg, DictConfig) else {}))
        typed = cfg if isinstance(cfg, Config) else validate(cfg)
        if not typed.resume:
            check_input_files(typed)
    if not gpu_lock_enabled(typed, choices):
        return _train(typed, Path(run_dir), None, choices=choices, overrides=overrides)
    from rewardsds.devices import GpuLock, default_lock_dir, gpu_pool

    lock = GpuLock(gpu_pool(typed.gpu_lock.gpus), typed.gpu_lock.dir or default_lock_dir(), start=job_num(),
                   wait_s=typed.gpu_lock.wait_s)
    with lock as gpu_index:
        return _train(typed, Path(run_dir), gpu_index, lock_wait_s=lock.waited_s, choices=choices, overrides=overrides)


def _train(typed: Config, run_dir: Path, gpu_index: Optional[int], lock_wait_s: float = 0.0,
           choices: Choices = Choices(), overrides: Optional[list[str]] = None) -> dict[str, Any]:
    import lightning.pytorch as pl

    from rewardsds.callbacks import AtomicCheckpoint
    from rewardsds.lifecycle import ProgressReport, StopRequests, announce, auto_progress_every, has_tty, quiet_console_progress, start_block
    from rewardsds.system import DistillationSystem
    from rewardsds.viz import Media

    quiet_lightning()
    started_at = time.time()
    invoked_dir = run_dir
    with _Untouched():
        ckpt_path, resume_dir = resolve_resume(typed.resume)
        if resume_dir is not None:
            run_dir = resume_dir
        # one writer per run folder: a live run's folder is refused before anything in it is read or changed
        lock = RunLock(run_dir, key="resume" if resume_dir is not None else "hydra.run.dir").acquire()
    try:
        with _Untouched():  # nothing of the run's folder changes until the run can start
            previous = read_json(run_dir / "metrics.json") if resume_dir is not None else {}
            ckpt = changes = None
            if ckpt_path is not None:
                ckpt = load_checkpoint(ckpt_path)
                check_steps(ckpt, ckpt_path, typed.steps)
                saved = saved_config(run_dir)
                changes = check_changes(saved, config_tree(typed), typed.resume_allow_changes, run_dir) if saved is not None else {}
            device = resolve_device(typed.trainer.accelerator, gpu_index if gpu_index is not None else _device_index(typed.trainer.devices))
            check_video_writer(typed.output.video)
            pl.seed_everything(typed.seed, workers=True, verbose=False)
            record = base_metrics(typed, choices)
            parts = build_components(typed)
            media = Media(run_dir)
            system = DistillationSystem(typed, run_dir=run_dir, media=media, resume_from=ckpt, **parts)
            system.prepare(device)  # restores the checkpoint: a foreign one fails here, before any file is written
            # what prior.dtype resolved to on this device (auto: fp16 on CUDA, bf16 with a float8 lookahead; fp32 on CPU)
            record["prior_dtype"] = dtype_name(getattr(parts["prior"], "dtype", torch.float32))
    except BaseException:
        lock.release_as_it_was()
        raise
    try:
        # ---- from here on the run's folder is written
        logger = build_logger(typed, run_dir, record, wandb_id=(previous.get("wandb") or {}).get("id"),
                              resume_step=None if ckpt is None else system.iteration)
        media.logger = logger if logger else None
        history = history_logger(logger, run_dir, None if ckpt is None else system.iteration)
        if resume_dir is not None and resume_dir.resolve() != invoked_dir.resolve():
            write_text(invoked_dir / "RESUMED_INTO.txt", f"This invocation resumed the run in {resume_dir.resolve()}\n")
        remove_partial_files(run_dir)
        write_text(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(config_tree(typed)))
        prior_dtype = record["prior_dtype"]
        session = {"started_at": started_at, "start_step": system.iteration, "command": command_line(), "pid": os.getpid(),
                   "status": "running", "prior_dtype": prior_dtype}
        changes = dict(changes or {})
        if previous.get("prior_dtype") not in (None, prior_dtype):  # e.g. another device, or a version whose auto differs
            changes["prior_dtype"] = (previous["prior_dtype"], prior_dtype)
        if changes:
            session["changes"] = {k: {"from": a, "to": b} for k, (a, b) in changes.items()}
        earlier = [dict(s) for s in previous.get("sessions", [])]
        if lock.held:  # this process holds the run's lock: a session still marked running died without a word (kill -9)
            for old in earlier:
                if old.get("status") == "running":
                    old["status"] = "killed"
        metrics = {**previous, **record, **run_metadata(overrides), "status": "running", "run_dir": os.path.abspath(run_dir),
                   # job timeline (overlap of side-by-side jobs can be read from the files alone)
                   "pid": os.getpid(), "started_at": previous.get("started_at", started_at), "gpu_index": gpu_index,
                   "gpu_lock_wait_s": lock_wait_s, "device_index": device.index if device.type == "cuda" else None,
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "sessions": earlier + [session]}
        for stale in ("error", "finished_at", "interrupted_by"):
            metrics.pop(stale, None)
        if ckpt_path is not None:
            metrics["resumed_from"] = str(ckpt_path)
        from rewardsds.loggers import wandb_record

        if wandb_record(logger):
            metrics["wandb"] = wandb_record(logger)
        write_json(run_dir / "metrics.json", metrics)

        quiet_console_progress()
        announce(start_block({
            "run_dir": run_dir, "device": _device_name(device), "experiment": record.get("experiment"), "prompt": typed.prompt,
            "prior": record.get("prior"), "dtype": metrics["prior_dtype"],
            "loss": record.get("loss"), "reward": record.get("reward"), "strategy": record.get("strategy"), "n_noises": typed.n_noises,
            "lookahead": typed.lookahead.steps if typed.n_noises > 1 and parts["strategy"].uses_reward else None,
            "lookahead_options": lookahead_options(typed.lookahead),
            "evals_per_step": system.expected_evals_per_step(), "steps": typed.steps,
            "resumed_at": system.iteration if ckpt is not None else None, "checkpoint": ckpt_path, "changes": list(changes or {}),
        }))

        stop = StopRequests()
        checkpoint = AtomicCheckpoint(run_dir / "checkpoints", typed.output.checkpoint_every, stop=stop)
        progress = ProgressReport(typed.output.progress_every or auto_progress_every(typed.steps))
        placement = {"devices": [device.index]} if device.type == "cuda" and device.index is not None else {}
        show_bar = typed.trainer.enable_progress_bar if typed.trainer.enable_progress_bar is not None else has_tty()
        trainer = build_trainer(
            typed, accelerator="gpu" if device.type == "cuda" else "cpu", max_epochs=1, max_steps=-1, **placement,
            logger=[lg for lg in (logger, history) if lg] or False, callbacks=[checkpoint, progress], enable_checkpointing=False,
            default_root_dir=str(run_dir),
            num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=show_bar,
        )
        stop.trainer = trainer
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with stop:
            try:
                trainer.fit(system)
            except SystemExit:  # Lightning's SIGTERMException, after our handler already stopped the loop
                if stop.requested is None:
                    raise
        session_wall = time.perf_counter() - start
        # Lightning's teardown moves the module to the CPU after fit; the frozen prior and reward stay on the run's
        # device, so the final renders, decodes and scores need the scene back there.
        system.to(device)
        wall = system.wall_time_before + session_wall
        if stop.requested is not None and system.iteration < system.total_steps:
            metrics.update({"status": "interrupted", "interrupted_by": stop.name, "iterations": system.iteration,
                            "wall_time_s": wall, "finished_at": time.time(),
                            "checkpoint": str(checkpoint.last) if checkpoint.last.is_file() else None})
            session.update({"status": "interrupted", "end_step": system.iteration, "wall_time_s": session_wall})
            write_json(run_dir / "metrics.json", metrics)
            for lg in (history, logger):
                if lg:
                    lg.finalize("interrupted")
            if logger:
                _finish_wandb(logger)
            stop.hand_on()
            if not checkpoint.last.is_file():
                ckpt_step = None  # a second Ctrl-C before the first periodic checkpoint
            else:  # this session's last one (this step's, or an earlier one after a second Ctrl-C), or a resumed run's
                ckpt_step = checkpoint.saved_step if checkpoint.saved_step is not None else "earlier"
            raise RunInterrupted(stop.name, stop.exit_code(), system.iteration, system.total_steps, run_dir, checkpoint_step=ckpt_step)
        if system.iteration < system.total_steps:
            raise TrainingAborted(f"training stopped at step {system.iteration} of {system.total_steps}; resume with resume={run_dir}")
        system.check_some_step_ran()
        from rewardsds.export import finalize_run

        final = finalize_run(system, run_dir, media)
        times = system.step_times or [float("nan")]
        metrics.update(final)
        metrics.update({
            "status": "complete",
            "wall_time_s": wall,
            "step_time_median_s": statistics.median(times),
            # this session's first step (compiles, CUDA-graph captures) and the torch.compile seconds of the session
            "startup_step_s": system.startup_step_time(),
            "compile_s": system.session_compile_s(),
            "evals_per_step_mean": (sum(system.evals_per_step) / len(system.evals_per_step)) if system.evals_per_step else 0.0,
            "nonfinite_steps": system.nonfinite_steps,
            "peak_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
            "device": _device_name(device),
            "iterations": system.iteration,
            "finished_at": time.time(),
        })
        session.update({"status": "complete", "end_step": system.iteration, "wall_time_s": session_wall})
        write_json(run_dir / "metrics.json", metrics)
        from rewardsds.loggers import log_checkpoint, log_exports, write_summary

        # the run summary: final metrics and the run's cost, so dashboards can plot quality against time
        write_summary(logger, {k: v for k, v in metrics.items() if k.startswith("final/") or k in SUMMARY_COST_KEYS},
                      step=max(0, system.iteration - 1))
        if history:
            history.finalize("success")
        if logger:
            if getattr(typed.logger, "log_model", False):
                log_checkpoint(logger, checkpoint.last, aliases=["last", f"step-{system.iteration}"])
            log_exports(logger, run_dir)
            logger.finalize("success")
            _finish_wandb(logger)
        from rewardsds.lifecycle import end_block

        announce(end_block(metrics, run_dir, is_3d=system.camera_sampler is not None, session_s=session_wall))
        return metrics
    finally:
        lock.release()


def lookahead_options(la) -> list[str]:
    """What a run's lookahead does besides the plain one, for its start block."""
    return ([f"pruned to the best {la.prune_to}"] if la.prune_to else []) + (["tiny decode"] if la.decode == "tiny" else []) \
        + (["decode and reward overlapped across chunks"] if la.overlap else []) \
        + ([f"ranked in fp32{' (TF32)' if la.fp32_tf32 else ''} below t = {la.fp32_below}"] if la.fp32_below else [])


def _device_name(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def _finish_wandb(logger) -> None:
    from rewardsds.loggers import finish

    finish(logger)


def quiet_lightning() -> None:
    """Lightning sets its own INFO level at import; keep only warnings (Hydra's log file has the rest)."""
    import lightning.pytorch  # noqa: F401  (import first: it resets the level)
    from rewardsds.utils.quiet import quiet_torchao_enum_constants

    quiet_torchao_enum_constants()  # before the prior imports diffusers (and with it torchao)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The step-index dataset runs in the main process (num_workers=0), so its __len__ is exact.
    warnings.filterwarnings("ignore", message=r".*IterableDataset.*__len__.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    # resume of a finished run (e.g. to re-export) has no steps left: that is intended
    warnings.filterwarnings("ignore", message=r".*Total length of `(DataLoader|CombinedLoader)` across ranks is zero.*")
