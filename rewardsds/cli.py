"""The ``rewardsds`` command: the Hydra entry point, subcommands, and what a failed run reports.

    rewardsds prompt="a photo of a red fox"                       # 2D RewardSDS on SD2.1-base
    rewardsds experiment=demo                                     # offline demo, CPU, no weights
    rewardsds -m strategy=none,min_max n_noises=4,8 prompt=...    # a sweep, one folder per job
    rewardsds -m prompts=drawbench25 strategy=none,min_max        # one job per prompt x strategy
    rewardsds -m hydra/launcher=gpus trainer=gpu n_noises=4,8,16  # one job per GPU, side by side
    rewardsds resume=outputs/runs/<date>/<time> [steps=2000]      # continue a run in its own folder
    rewardsds export outputs/runs/<date>/<time>                   # meshes / Gaussians of a finished 3D run

This module stays light (no torch, Lightning or diffusers at import), so ``rewardsds --help`` and shell completion
answer at once; the training code is imported when a run starts.

Exit codes: 0 done; 1 an unexpected error (traceback in the run's error.txt) or, for a multirun, at least one
failed job (each job's metrics.json says why; the sweep itself goes on past a failed job); 2 an error in the
user's input, with one message naming the key, the value and the fix; 128 + N a run stopped by signal N
(SIGINT 130, SIGTERM 143) after writing its checkpoint (status "interrupted"; ``resume=<run folder>`` continues).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger("rewardsds")

#: The package that holds the Hydra configs (``conf/`` of the checkout, installed as ``rewardsds.conf``).
CONFIG_PACKAGE = "rewardsds.conf"


# ----------------------------------------------------------------------------------------- subcommands
def _export(argv: Sequence[str]) -> int:
    from rewardsds.export_assets import main as export_main

    return int(export_main(list(argv)) or 0)


def _eval(argv: Sequence[str]) -> int:
    from rewardsds.eval.cli import main as eval_main

    return int(eval_main(list(argv)) or 0)


#: ``rewardsds <name> ...`` runs these instead of a training run (Hydra overrides never look like a bare word).
SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"export": _export, "eval": _eval}


# ----------------------------------------------------------------------------------------- the command
def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``rewardsds`` (and ``python -m rewardsds``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    from rewardsds.utils.io import TYPED_ARGS

    TYPED_ARGS[:] = [list(args)]  # what the run records as its command (Hydra gets more, below)
    _line_buffered_output()
    from rewardsds.utils.quiet import quiet_progress_bars

    quiet_progress_bars()  # a headless run's log holds its own lines, not the model libraries' bars
    if args and args[0] in SUBCOMMANDS:
        sys.exit(SUBCOMMANDS[args[0]](args[1:]))
    if any(a in ("--version", "-V") for a in args):  # Hydra's own --version would name Hydra's
        print(version_text())
        sys.exit(0)
    from rewardsds.overrides import SWEPT_KEYS_ENV, CommandLineError, check, swept_keys

    try:
        args = prepare_arguments(args)
        swept = swept_keys(args) if _info_only(args) else \
            check(args, CONFIG_PACKAGE, subcommands=list(SUBCOMMANDS))  # what would be refused, before any run folder
    except (_UserError, CommandLineError) as err:
        print(f"rewardsds: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0]] + args
    # the job folders of a sweep name every swept key, setup keys too (experiment=a,b must not share a folder); the
    # variable reaches every job process the launchers start
    before = os.environ.get(SWEPT_KEYS_ENV)
    os.environ[SWEPT_KEYS_ENV] = ",".join(swept)
    _SWEEP.clear()
    try:
        _hydra_entry()
    except BrokenPipeError:  # `rewardsds --help | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    finally:
        if before is None:
            os.environ.pop(SWEPT_KEYS_ENV, None)
        else:
            os.environ[SWEPT_KEYS_ENV] = before
    if _SWEEP.get("failed"):
        sys.exit(1)


def version_text() -> str:
    """``rewardsds --version``: this package's version and those of the libraries a run records (no imports)."""
    from rewardsds import __version__
    from rewardsds.utils.io import package_versions

    others = {k: v for k, v in package_versions().items() if k != "rewardsds"}
    return f"rewardsds {__version__}\n  " + ", ".join(f"{k} {v}" for k, v in others.items())


def _line_buffered_output() -> None:
    """Progress reaches Slurm logs and ``nohup`` files as it happens: without a TTY Python buffers stdout in blocks."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass


class _UserError(Exception):
    """A problem with the command line found before Hydra starts."""


def _override_value(args: Sequence[str], key: str) -> Optional[str]:
    for a in reversed(args):
        if a.lstrip("+~").startswith(key + "="):
            return a.split("=", 1)[1].strip("'\"")
    return None


def prepare_arguments(args: list[str]) -> list[str]:
    """Rewrite the command line before Hydra composes it.

    - ``resume=<run folder>`` runs in that folder (``hydra.run.dir``): the run keeps one folder, its files and its
      log, instead of leaving an empty dated folder per resume. Hydra's own ``.hydra/`` snapshot of the first
      invocation is kept (``hydra.output_subdir=null`` for the resume).
    - A Slurm job requeued after preemption (``SLURM_RESTART_COUNT`` > 0) continues the run it started, found by its
      ``SLURM_JOB_ID`` in metrics.json under ``outputs/runs``.
    - The folder a run will write to must be writable (else one message naming ``hydra.run.dir``), and not be the
      folder of a live run (:func:`rewardsds.runlock.check_not_live`; a resume's folder is checked with the run's
      other checks, in :func:`rewardsds.resume.check_resume`).
    """
    multirun = any(a in ("-m", "--multirun") for a in args)
    info_only = _info_only(args)
    if multirun or info_only:
        if multirun and not info_only:
            _check_writable(_override_value(args, "hydra.sweep.dir") or "outputs", "hydra.sweep.dir")
        return args
    resume = _override_value(args, "resume")
    if resume is None and os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        found = find_run_of_slurm_job(Path(_override_value(args, "hydra.run.dir") or "outputs/runs").parent
                                      if _override_value(args, "hydra.run.dir") else Path("outputs/runs"),
                                      os.environ["SLURM_JOB_ID"])
        if found is not None:
            print(f"rewardsds: Slurm job {os.environ['SLURM_JOB_ID']} was requeued; continuing {found}")
            args = args + [f"resume={found}"]
            resume = str(found)
    if resume and _override_value(args, "hydra.run.dir") is None:
        run_dir = Path(resume).expanduser()
        if run_dir.is_file():  # a checkpoint file: its run folder
            run_dir = run_dir.parent.parent if run_dir.parent.name == "checkpoints" else run_dir.parent
        if run_dir.is_dir():
            args = args + [f"hydra.run.dir={_hydra_quote(str(run_dir.resolve()))}", "hydra.output_subdir=null"]
    _check_writable(_override_value(args, "hydra.run.dir") or "outputs", "hydra.run.dir")
    given = _override_value(args, "hydra.run.dir")
    if resume is None and given and "${" not in given:  # a new run into a folder a live run writes (Hydra's snapshot too)
        from rewardsds.runlock import RunLocked, check_not_live

        try:
            check_not_live(Path(given).expanduser(), key="hydra.run.dir")
        except RunLocked as err:
            raise _UserError(str(err)) from None
    return args


def _info_only(args: Sequence[str]) -> bool:
    """Whether the command only asks Hydra for information (help, the config, shell completion): no run."""
    return any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--shell-completion", "-sc", "--version")
               or a.startswith(("--info=", "--cfg=", "-c=")) for a in args)


def _hydra_quote(value: str) -> str:
    """Quote a path for a Hydra override value when it holds characters Hydra's grammar treats specially."""
    return value if all(c.isalnum() or c in "/._-" for c in value) else "'" + value.replace("'", "\\'") + "'"


def _check_writable(folder: str, key: str) -> None:
    """The nearest existing parent of ``folder`` must accept new files (Hydra would fail later with a traceback)."""
    if "${" in folder:  # interpolated by Hydra (e.g. ${now:...}): check its fixed prefix
        folder = folder.split("${", 1)[0] or "."
    p = Path(folder).expanduser()
    p = p if p.is_absolute() else Path.cwd() / p
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise _UserError(f"{key} = {folder!r}: {p} is a file, not a folder. Fix: give {key} a folder path")
    if not os.access(p, os.W_OK | os.X_OK):
        raise _UserError(f"{key} = {folder!r}: cannot create the run folder ({p} is not writable). "
                         f"Fix: run from a writable folder or pass {key}=<a writable folder>")


def find_run_of_slurm_job(runs_root: Path, job_id: str) -> Optional[Path]:
    """The newest run folder under ``runs_root`` whose metrics.json records ``slurm_job_id == job_id`` and that
    did not complete (two levels deep: ``<date>/<time>``)."""
    best: Optional[tuple[float, Path]] = None
    for m in runs_root.glob("*/*/metrics.json"):
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        if str(data.get("slurm_job_id")) == str(job_id) and data.get("status") != "complete":
            started = float(data.get("started_at") or 0)
            if best is None or started > best[0]:
                best = (started, m.parent)
    return None if best is None else best[1]


# ----------------------------------------------------------------------------------------- the Hydra task
#: What the multirun status callback saw (read by :func:`main` for the exit code).
_SWEEP: dict[str, Any] = {}


def _hydra_entry() -> None:
    import hydra

    import rewardsds.config  # noqa: F401  (registers the schemas, resolvers and the root config)

    hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")(task)()


def task(cfg) -> Optional[float]:
    """One Hydra job: a run (or, with ``compare.runs``, one run per labelled variant and seed).

    Returns the final reward (Hydra sweepers that optimise read it), None when there is none.
    """
    from hydra.core.hydra_config import HydraConfig

    from rewardsds.errors import RewardSDSError, RunInterrupted

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.compare.runs:
            from rewardsds.compare import run_compare

            run_compare(cfg, run_dir)
            return None
        plan = job_plan(run_dir, bool(cfg.get("resume")), is_multirun())
        if plan == "complete":
            print(f"rewardsds: {run_dir} is already complete; skipped (its metrics.json says so)")
            return None
        if plan == "live":
            from rewardsds.runlock import RunLocked, holder

            if not is_multirun():  # (refused as train's own lock would refuse it: the folder stays as it is)
                raise RunLocked("hydra.run.dir", run_dir, holder(run_dir))
            print(f"rewardsds: {run_dir} is being run by another process ({holder(run_dir)}); skipped")
            return None
        if plan == "occupied":
            raise _occupied(run_dir)
        if plan == "continue":
            print(f"rewardsds: {run_dir} was interrupted; continuing from its last checkpoint")
            cfg.resume = str(run_dir)
        from rewardsds.train import train

        choices = overrides = None
        if cfg.get("resume"):
            from rewardsds.resume import reconstruct_config

            cfg, choices, overrides = reconstruct_config(cfg, job_overrides())
        metrics = train(cfg, run_dir, choices=choices, overrides=overrides)
        value = metrics.get("final/reward")
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    except RunInterrupted as err:
        message = f"rewardsds: {err}"
        if is_multirun():
            message += (f" (or continue the whole sweep, this job included: the same command with "
                        f"hydra.sweep.dir={run_dir.parent})")
        print(message, file=sys.stderr)
        _to_log_file(message, logging.WARNING)  # train.log ends with how the run ended, as the terminal does
        raise SystemExit(err.exit_code) from None
    except RewardSDSError as err:
        from rewardsds.runlock import RunLocked

        if isinstance(err, RunLocked) and is_multirun():  # another sweep process took this job between check and start
            print(f"rewardsds: {err.run_dir} is being run by another process ({err.holder}); skipped")
            return None
        return _fail(run_dir, err, user_error=True)
    except Exception as err:  # unexpected: keep the traceback in the run folder
        return _fail(run_dir, err, user_error=False)
    finally:
        _release_cuda_memory()


def _to_log_file(message: str, level: int) -> None:
    """Write ``message`` to the run's log file (Hydra's file handler) only: the terminal has it already."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("rewardsds", level, __file__, 0, message, None, None))


def _release_cuda_memory() -> None:
    """Give the next job of this process (sequential or joblib launchers) the GPU memory of this one."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _fail(run_dir: Path, err: BaseException, user_error: bool) -> None:
    """Record a failed run (metrics.json status, error.txt) and report it; exits unless inside a multirun."""
    from rewardsds.utils.io import write_json, write_text

    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        metrics = {}
    unwritten = None
    # A resume that could not start (bad checkpoint, refused overrides) leaves the existing run exactly as it was:
    # it must not turn a finished run into a failed one.
    from rewardsds.runlock import RunLocked

    # a folder another process writes is never written here, even before that run's metrics.json exists
    untouched = bool(getattr(err, "run_untouched", False)) and (bool(metrics) or isinstance(err, RunLocked))
    if not untouched:
        metrics.update({"status": "failed", "error": f"{type(err).__name__}: {err}", "finished_at": time.time()})
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(path, metrics)
            write_text(run_dir / "error.txt", "".join(traceback.format_exception(type(err), err, err.__traceback__)))
        except OSError as write_err:
            unwritten = write_err
    kind = "error" if user_error else f"unexpected error ({type(err).__name__})"
    print(f"rewardsds: {kind}: {err}", file=sys.stderr)
    if untouched:
        print(f"rewardsds: nothing in {run_dir} was changed", file=sys.stderr)
    elif unwritten is not None:
        print(f"rewardsds: could not write {run_dir / 'error.txt'} ({unwritten})", file=sys.stderr)
    elif not user_error:
        print(f"rewardsds: the traceback is in {run_dir / 'error.txt'}", file=sys.stderr)
    if is_multirun():
        return None  # a failed job must not stop the sweep; its metrics.json says why
    if not user_error and os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    sys.exit(2 if user_error else 1)


# ----------------------------------------------------------------------------------------- Hydra runtime helpers
def job_plan(run_dir: Path, resume: bool, multirun: bool) -> str:
    """What a Hydra job does with its folder:

    - ``"start"``: a new run (an empty or missing folder, or one whose run failed or died before its first
      checkpoint: it starts over), or ``resume=`` given;
    - ``"complete"``: skipped, its metrics.json says complete;
    - ``"live"``: another process is running it: a sweep skips it, a single run is refused;
    - ``"continue"``: a sweep job that was interrupted (killed, preempted, timed out: its lock is free) continues from
      its last checkpoint when the sweep is run again into the same folder, or requeued by Slurm;
    - ``"occupied"``: a single run into the folder of an interrupted run with a checkpoint: refused (``resume=``
      continues it), so that a command run again never starts over a run that can go on.
    """
    if resume:
        return "start"
    status = read_status(run_dir)
    if status == "complete":
        return "complete"
    from rewardsds.runlock import is_live

    if is_live(run_dir):
        return "live"
    if status in ("running", "interrupted") and (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "continue" if multirun else "occupied"
    return "start"


def _occupied(run_dir: Path) -> Exception:
    from rewardsds.errors import ConfigError

    try:
        step = json.loads((run_dir / "metrics.json").read_text()).get("iterations")
    except (OSError, ValueError):
        step = None
    at = f" at step {step}" if step is not None else ""
    err = ConfigError("hydra.run.dir", str(run_dir), f"holds a run that stopped{at} and can go on from its last checkpoint; "
                      "a new run would start over in its place",
                      f"resume={run_dir} continues it (add steps=<more> to run longer); to start over, remove that folder "
                      "or give another hydra.run.dir")
    err.run_untouched = True  # type: ignore[attr-defined]  (nothing of the run's folder is written)
    return err


def output_subdir() -> Optional[str]:
    """``hydra.output_subdir`` (the ``rewardsds_output_subdir`` resolver): ``.hydra``, or None for a job whose folder
    holds a run this invocation skips or continues (:func:`job_plan`). Hydra writes a job's ``.hydra/`` (config,
    overrides and the folder the command was started in) before the job runs; a sweep run again, from any folder,
    must not rewrite the record of a live job, a complete one or one it continues, which resumes read."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    try:
        hc = HydraConfig.get()
        out = OmegaConf.select(hc, "runtime.output_dir", default=None, throw_on_missing=False)
        multirun = hc.mode == RunMode.MULTIRUN
    except Exception:  # no Hydra job being set up (printing the config, tests): Hydra's default
        return ".hydra"
    if not out or not (Path(str(out)) / ".hydra" / "hydra.yaml").is_file():
        return ".hydra"
    return None if job_plan(Path(str(out)), False, multirun) != "start" else ".hydra"


def read_status(run_dir: Path) -> Optional[str]:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------- multirun status
try:  # the callback base class (light: hydra only)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra < 1.1
    _HydraCallback = object  # type: ignore[assignment,misc]


class SweepStatus(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback (``hydra.callbacks.sweep_status``): after a multirun, one summary of its jobs.

    Runs in the launching process once every job has ended (whatever launcher ran them), reads each job's
    metrics.json and prints how many completed, failed or were interrupted, naming the failed ones with their
    error. The command then exits 1 if any job failed, so scripts and CI see it.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _SWEEP["dir"] = str(config.hydra.sweep.dir)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        summary = sweep_summary(sweep)
        _SWEEP.update(summary)
        counts = ", ".join(f"{len(v)} {k}" for k, v in summary["jobs"].items() if v)
        print(f"rewardsds: sweep {sweep}: {counts or 'no jobs'}")
        if summary["jobs"]["complete"]:  # the next commands, as a run's end block names its own
            print(f"  evaluate    rewardsds-eval {sweep} --metrics none")
        if any(sweep.glob("*/wandb/offline-run-*")):
            print(f"  sync        wandb sync {sweep}/*/wandb/offline-run-*")
        for folder, error in summary["errors"].items():
            print(f"  failed: {folder}: {error}", file=sys.stderr)
        if summary["failed"]:
            print(f"rewardsds: {len(summary['errors'])} job(s) failed; run the same command with "
                  f"hydra.sweep.dir={sweep} to retry them (complete jobs are skipped)", file=sys.stderr)


def sweep_summary(sweep: Path) -> dict[str, Any]:
    """Jobs of a sweep folder by status, and the error line of each failed one (compare sub-runs not counted)."""
    jobs: dict[str, list[str]] = {"complete": [], "failed": [], "interrupted": [], "running": [], "unknown": []}
    errors: dict[str, str] = {}
    for m in sorted(sweep.glob("*/metrics.json")):
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError):
            data = {}
        status = str(data.get("status", "unknown"))
        jobs.setdefault(status, []).append(m.parent.name)
        if status == "failed":
            errors[m.parent.name] = str(data.get("error", "")).splitlines()[0][:300] if data.get("error") else ""
    return {"jobs": jobs, "errors": errors, "failed": bool(jobs["failed"])}


if __name__ == "__main__":
    main()
