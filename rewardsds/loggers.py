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
):
    """A ``WandbLogger`` writing under ``save_dir/wandb``; offline (with one notice) when it cannot go online."""
    from lightning.pytorch.loggers import WandbLogger

    resolved, notice = resolve_wandb_mode(mode)
    if notice:
        print(notice)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project, entity=entity, group=group, name=name, tags=list(tags), log_model=log_model,
        save_dir=save_dir, offline=(resolved == "offline"), config=run_config, reinit="finish_previous",
    )


def csv_logger(name: str = "csv", save_dir: str = "."):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=save_dir, name=name, version="")


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
