"""``rewardsds``: the Hydra entry point (``python -m rewardsds`` too).

    rewardsds prompt="a photo of a red fox"                       # 2D RewardSDS on SD2.1-base
    rewardsds experiment=demo                                     # offline demo, CPU, no weights
    rewardsds -m strategy=none,min_max n_noises=4,8 prompt=...    # a sweep, one folder per job
    rewardsds -m prompts=drawbench25 strategy=none,min_max        # one job per prompt x strategy
    rewardsds -m hydra/launcher=gpus trainer=gpu n_noises=4,8,16  # one job per GPU, side by side
    rewardsds resume=outputs/runs/<date>/<time>                   # continue a run exactly

Errors in user input exit with status 2 and one message naming the key, the value and the fix; in a
multirun the failing job records ``status: failed`` in its metrics.json and the sweep goes on. Running a
sweep again into the same ``hydra.sweep.dir`` skips complete jobs and continues interrupted ones from their
last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rewardsds.config import Config, validate
from rewardsds.errors import ConfigError, RewardSDSError, TrainingAborted
from rewardsds.utils.io import command_line, git_commit, job_command, package_versions, write_json, write_text

log = logging.getLogger("rewardsds")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
#: metrics.json keys sent to the W&B run summary besides ``final/*``
SUMMARY_COST_KEYS = ("wall_time_s", "step_time_median_s", "evals_per_step_mean", "peak_memory_gb", "iterations")


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
        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator", accelerator, "asks for CUDA but no CUDA device is available",
                              "run on a machine with a GPU, or use trainer=cpu (trainer.accelerator=cpu)")
        if gpu_index is None:
            return torch.device("cuda")
        if gpu_index >= torch.cuda.device_count():
            raise ConfigError("gpu_lock.gpus", gpu_index, f"is not a visible CUDA device ({torch.cuda.device_count()} visible)",
                              "list visible device indices in gpu_lock.gpus, or null for all")
        # libraries that use the current device (gsplat, nerfacc kernels) follow the job's GPU too
        torch.cuda.set_device(gpu_index)
        return torch.device("cuda", gpu_index)
    return torch.device("cpu")


def resolve_resume(resume: Optional[str]) -> tuple[Optional[Path], Optional[Path]]:
    """(checkpoint file, run folder) for ``resume=<run folder or .ckpt>``."""
    if not resume:
        return None, None
    p = Path(resume).expanduser()
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ConfigError("resume", resume, f"has no checkpoint at {ckpt}", "point resume at a run folder that saved checkpoints/last.ckpt, or at a .ckpt file")
        return ckpt, p
    if p.is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return p, run_dir
    raise ConfigError("resume", resume, "does not exist", "give a run folder (outputs/runs/...) or a checkpoint file")


def read_status(run_dir: Path) -> Optional[str]:
    import json

    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def job_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def job_num() -> int:
    try:
        return int(HydraConfig.get().job.num)
    except (ValueError, TypeError, AttributeError):
        return 0


def gpu_lock_enabled(typed: Config) -> bool:
    """``gpu_lock.enabled``, where null means: on exactly when the launcher is ``hydra/launcher=gpus``."""
    if typed.gpu_lock.enabled is not None:
        return bool(typed.gpu_lock.enabled)
    try:
        return HydraConfig.get().runtime.choices.get("hydra/launcher") == "gpus"
    except ValueError:
        return False


def sweep_name() -> Optional[str]:
    try:
        hc = HydraConfig.get()
        return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------- building
def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises our own errors unwrapped (Hydra wraps them), so users see
    the message about their key/value/fix instead of an instantiation traceback."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, RewardSDSError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, RewardSDSError):
            raise cause from None
        raise


def build_components(cfg: DictConfig, typed: Config) -> dict[str, Any]:
    """Instantiate prior, reward, strategy, loss and representation from their groups."""
    prior = build(cfg.prior)
    needs_reward = bool(getattr(typed, "reward", None))
    reward = build(cfg.reward) if needs_reward else None
    strategy = build(cfg.strategy)
    loss = build(cfg.loss)
    representation = build(cfg.representation)
    camera_sampler = None
    if getattr(representation, "needs_cameras", False):
        if "cameras" not in cfg or cfg.cameras is None:
            raise ConfigError("cameras", None, "is required by a 3D representation", "add a cameras: node (see conf/experiment/dreamfusion_nerf.yaml)")
        camera_sampler = build(cfg.cameras)
    return dict(prior=prior, reward=reward, strategy=strategy, loss=loss, representation=representation, camera_sampler=camera_sampler)


def build_logger(cfg: DictConfig, run_dir: Path):
    kwargs: dict[str, Any] = {"save_dir": str(run_dir)}
    target = cfg.logger.get("_target_", "")
    if target.endswith("wandb_logger"):
        overrides = ",".join(o for o in job_overrides() if not o.startswith(("logger", "resume")))
        kwargs["run_config"] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True, throw_on_missing=False)
        if cfg.logger.get("group") is None and sweep_name():
            kwargs["group"] = sweep_name()
        if cfg.logger.get("name") is None:
            # multirun jobs: the job folder name (swept overrides, prompt slugs), the same on disk and in W&B
            kwargs["name"] = (cfg.get("name") or (run_dir.name if is_multirun() else overrides) or run_dir.name)[:128]
    # _partial_: the run config holds _target_ keys that instantiate() must not build recursively.
    return instantiate(cfg.logger, _partial_=True)(**kwargs)


def run_metadata(cfg: DictConfig) -> dict[str, Any]:
    return {
        "command": command_line(),
        "job_command": job_command(job_overrides()),
        "overrides": job_overrides(),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "hostname": os.uname().nodename if hasattr(os, "uname") else "",
    }


def base_metrics(cfg: DictConfig, typed: Config) -> dict[str, Any]:
    return {
        "prompt": typed.prompt,
        "negative_prompt": typed.negative_prompt,
        "seed": typed.seed,
        "steps": typed.steps,
        "n_noises": typed.n_noises,
        "loss": _choice("loss"),
        "prior": _choice("prior"),
        "reward": _choice("reward"),
        "representation": _choice("representation"),
        "experiment": _choice("experiment"),
        "reward_duration": typed.reward_duration,
        "lookahead_steps": typed.lookahead.steps,
        "prompts": _prompt_list_name(cfg),
        "prompt_index": typed.prompt_index,
    }


def _prompt_list_name(cfg: DictConfig) -> Optional[str]:
    if cfg.get("prompts") is not None:
        return str(cfg.prompts.name)
    return str(cfg.prompts_file) if cfg.get("prompts_file") else None


def _hydra_ready() -> bool:
    try:
        HydraConfig.get()
        return True
    except ValueError:
        return False


def _choice(group: str) -> Optional[str]:
    if not _hydra_ready():
        return None
    v = HydraConfig.get().runtime.choices.get(group)
    return None if v in (None, "null") else str(v)


# ----------------------------------------------------------------------------------------- one run
def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate, build, fit and finalise one run in ``run_dir``; returns its metrics.

    With ``gpu_lock.enabled`` the run first locks a free GPU (:class:`rewardsds.devices.GpuLock`) and holds it
    to the end.
    """
    typed = validate(cfg)
    if not gpu_lock_enabled(typed):
        return _train(cfg, typed, run_dir, None)
    from rewardsds.devices import GpuLock, default_lock_dir, gpu_pool

    lock = GpuLock(gpu_pool(typed.gpu_lock.gpus), typed.gpu_lock.dir or default_lock_dir(), start=job_num(),
                   wait_s=typed.gpu_lock.wait_s)
    with lock as gpu_index:
        return _train(cfg, typed, run_dir, gpu_index, lock_wait_s=lock.waited_s)


def _train(cfg: DictConfig, typed: Config, run_dir: Path, gpu_index: Optional[int], lock_wait_s: float = 0.0) -> dict[str, Any]:
    import lightning.pytorch as pl

    from rewardsds.callbacks import AtomicCheckpoint
    from rewardsds.export import finalize_run
    from rewardsds.system import DistillationSystem
    from rewardsds.viz import Media

    started_at = time.time()
    ckpt, resume_dir = resolve_resume(typed.resume)
    if resume_dir is not None and resume_dir.resolve() != run_dir.resolve():
        write_text(run_dir / "RESUMED_INTO.txt", f"This invocation resumed the run in {resume_dir.resolve()}\n")
        run_dir = resume_dir
    device = resolve_device(typed.trainer.accelerator, gpu_index)
    check_video_writer(typed.output.video)
    pl.seed_everything(typed.seed, workers=True, verbose=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    metrics = {**base_metrics(cfg, typed), **run_metadata(cfg), "status": "running", "run_dir": str(run_dir),
               # job timeline (overlap of side-by-side jobs can be read from the files alone)
               "pid": os.getpid(), "started_at": started_at, "gpu_index": gpu_index, "gpu_lock_wait_s": lock_wait_s,
               "device_index": device.index if device.type == "cuda" else None,
               "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if ckpt is not None:
        metrics["resumed_from"] = str(ckpt)
    write_json(run_dir / "metrics.json", metrics)

    parts = build_components(cfg, typed)
    metrics["strategy"] = parts["strategy"].name  # the built strategy (compare sub-runs override the group)
    logger = build_logger(cfg, run_dir)
    media = Media(run_dir, logger if logger else None)
    system = DistillationSystem(typed, run_dir=run_dir, media=media, resume_from=ckpt, **parts)
    checkpoint = AtomicCheckpoint(run_dir / "checkpoints", typed.output.checkpoint_every)
    placement = {"devices": [device.index]} if device.type == "cuda" and device.index is not None else {}
    trainer = instantiate(
        cfg.trainer, accelerator="gpu" if device.type == "cuda" else "cpu", max_epochs=1, max_steps=-1, **placement,
        logger=logger, callbacks=[checkpoint], enable_checkpointing=False, default_root_dir=str(run_dir),
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer.fit(system)
    wall = time.perf_counter() - start
    # Lightning's teardown moves the module to the CPU after fit; the frozen prior and reward stay on the run's
    # device, so the final renders, decodes and scores need the scene back there.
    system.to(device)
    if system.iteration < system.total_steps:
        raise TrainingAborted(f"training stopped at step {system.iteration} of {system.total_steps}; resume with resume={run_dir}")
    final = finalize_run(system, run_dir, media)
    times = system.step_times or [float("nan")]
    metrics.update(final)
    metrics.update({
        "status": "complete",
        "wall_time_s": wall,
        "step_time_median_s": statistics.median(times),
        "evals_per_step_mean": (sum(system.evals_per_step) / len(system.evals_per_step)) if system.evals_per_step else 0.0,
        "nonfinite_steps": system.nonfinite_steps,
        "peak_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "iterations": system.iteration,
        "finished_at": time.time(),
    })
    write_json(run_dir / "metrics.json", metrics)
    from rewardsds.loggers import write_summary

    # the run summary: final metrics and the run's cost, so dashboards can plot quality against time
    write_summary(logger, {k: v for k, v in metrics.items() if k.startswith("final/") or k in SUMMARY_COST_KEYS})
    if logger:
        logger.finalize("success")
        _finish_wandb(logger)
    return metrics


def _finish_wandb(logger) -> None:
    from rewardsds.loggers import finish

    finish(logger)


# ----------------------------------------------------------------------------------------- entry
def quiet_lightning() -> None:
    """Lightning sets its own INFO level at import; keep only warnings (Hydra's log file has the rest)."""
    import lightning.pytorch  # noqa: F401  (import first: it resets the level)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The step-index dataset runs in the main process (num_workers=0), so its __len__ is exact.
    warnings.filterwarnings("ignore", message=r".*IterableDataset.*__len__.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    # resume of a finished run (e.g. to re-export) has no steps left: that is intended
    warnings.filterwarnings("ignore", message=r".*Total length of `(DataLoader|CombinedLoader)` across ranks is zero.*")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """Hydra task: one run (or, with ``compare.runs``, one run per labelled variant and seed)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.compare.runs:
            from rewardsds.compare import run_compare

            quiet_lightning()
            run_compare(cfg, run_dir)
            return None
        status = read_status(run_dir)
        if status == "complete" and not cfg.get("resume"):
            log.info("skipping %s: metrics.json says complete", run_dir)
            print(f"rewardsds: {run_dir} is already complete; skipped")
            return None
        if status == "running" and is_multirun() and not cfg.get("resume") and (run_dir / "checkpoints" / "last.ckpt").is_file():
            # A sweep job that was interrupted (killed, preempted, timed out) continues from its last
            # checkpoint when the sweep is run again into the same folder (or requeued by Slurm).
            print(f"rewardsds: {run_dir} was interrupted; continuing from its last checkpoint")
            cfg.resume = str(run_dir)
        quiet_lightning()
        metrics = train(cfg, run_dir)
        value = metrics.get("final/reward")
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    except (RewardSDSError, ConfigError) as err:
        return _fail(run_dir, err, user_error=True)
    except Exception as err:  # unexpected: keep the traceback in the run folder
        return _fail(run_dir, err, user_error=False)
    finally:
        _release_cuda_memory()


def _release_cuda_memory() -> None:
    """Give the next job of this process (sequential or joblib launchers) the GPU memory of this one."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _fail(run_dir: Path, err: BaseException, user_error: bool) -> None:
    import json

    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        metrics = {}
    metrics.update({"status": "failed", "error": f"{type(err).__name__}: {err}", "finished_at": time.time()})
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, metrics)
        write_text(run_dir / "error.txt", "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    except OSError:
        pass
    kind = "error" if user_error else f"unexpected error ({type(err).__name__})"
    print(f"rewardsds: {kind}: {err}", file=sys.stderr)
    if is_multirun():
        # A failed job must not stop the sweep; its metrics.json says why.
        return None
    if not user_error and os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    sys.exit(2 if user_error else 1)


if __name__ == "__main__":
    main()
