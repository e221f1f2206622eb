"""Lightning loggers for ``logger=wandb|csv|none``. W&B falls back to offline mode when it cannot go online."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def _online(host: str = "api.wandb.ai", port: int = 443, timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> tuple[str, Optional[str]]:
    """(mode, notice): ``auto`` becomes online only with an API key and a reachable server."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("offline", "disabled", "dryrun"):
        return ("offline" if env_mode == "dryrun" else env_mode), None
    if mode == "offline":
        return "offline", None
    if not _has_wandb_key():
        return "offline", "W&B: no API key found (wandb login / WANDB_API_KEY); logging offline, sync later with `wandb sync <run>/wandb/offline-run-*`"
    if not _online():
        return "offline", "W&B: api.wandb.ai is unreachable; logging offline, sync later with `wandb sync <run>/wandb/offline-run-*`"
    return "online", None


def wandb_logger(
    project: str = "rewardsds",
    entity: Optional[str] = None,
    mode: str = "auto",
    group: Optional[str] = None,
    name: Optional[str] = None,
    tags: Sequence[str] = (),
    log_model: bool = False,
    save_dir: str = ".",
    run_config: Optional[dict] = None,
    id: Optional[str] = None,
):
    """A ``WandbLogger`` writing under ``save_dir/wandb``; offline (with one notice) when it cannot go online.

    ``id``: continue that W&B run (a resumed run keeps one W&B run). ``log_model`` is carried out by the run itself
    (:func:`log_checkpoint` at the end: the checkpoint as a ``model`` artifact, online or offline), not by
    Lightning, whose checkpoint logging needs its own ModelCheckpoint callback and refuses offline mode.
    """
    from lightning.pytorch.loggers import WandbLogger

    resolved, notice = resolve_wandb_mode(mode)
    if notice:
        print(notice)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    extra = {"id": id, "resume": "allow"} if id else {}
    return WandbLogger(
        project=project, entity=entity, group=group, name=name, tags=list(tags), log_model=False,
        save_dir=save_dir, offline=(resolved == "offline"), config=run_config, reinit="finish_previous", **extra,
    )


def wandb_record(logger) -> Optional[dict]:
    """What metrics.json keeps of a run's W&B run (to resume it by id and to push evaluation results to it)."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    return {"id": run.id, "project": run.project, "entity": getattr(run, "entity", None) or None,
            "dir": str(Path(run.dir).parent) if getattr(run, "dir", None) else None,
            "mode": "offline" if getattr(run, "offline", False) else "online"}


def log_checkpoint(logger, path: Path, aliases: Sequence[str] = ("last",)) -> None:
    """``logger.log_model=true``: the run's checkpoint as a W&B ``model`` artifact (synced later when offline)."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or not Path(path).is_file():
        return
    import wandb

    run = logger.experiment
    art = wandb.Artifact(name=f"model-{run.id}", type="model", metadata={"path": str(path)})
    art.add_file(str(path), name=Path(path).name)
    run.log_artifact(art, aliases=list(aliases))


def csv_logger(name: str = "csv", save_dir: str = ".", resume_step: Optional[int] = None):
    """``<save_dir>/<name>/metrics.csv``. ``resume_step``: a resumed run keeps the rows of the steps before it (the
    steps after the checkpoint are logged again by the resumed session) instead of Lightning's fresh file."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=save_dir, name=name, version="")
    if resume_step is not None:
        _keep_history(logger, int(resume_step))
    return logger


def _keep_history(logger, before_step: int) -> None:
    """Create the CSV logger's writer now, putting back the earlier rows its creation removes."""
    import csv

    path = Path(logger.log_dir) / "metrics.csv"
    rows: list[dict] = []
    header: list[str] = []
    if path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if _row_step(r) < before_step]
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*Previous log files in this directory will be deleted.*")
        writer = logger.experiment  # Lightning's writer deletes an existing metrics.csv here
    if header:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)
        writer.metrics_keys = list(header)


def _row_step(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def no_logger(save_dir: str = ".", **_: object):
    return False


def write_summary(logger, metrics: dict) -> None:
    """Final metrics as the W&B run summary (and as a last row for other loggers)."""
    if not logger or not metrics:
        return
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(scalars)
    elif scalars:
        logger.log_metrics(scalars)


def finish(logger) -> None:
    """Close a W&B run so the next job of a multirun starts its own run."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger.experiment.finish()
