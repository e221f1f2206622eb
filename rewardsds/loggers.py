"""Lightning loggers for ``logger=wandb|csv|none``. W&B falls back to offline mode when it cannot go online."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Optional, Sequence

from rewardsds.config import CSVLoggerConfig, NoLoggerConfig, WandbLoggerConfig

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
    cfg: WandbLoggerConfig,
    save_dir: str = ".",
    run_config: Optional[dict] = None,
    name: Optional[str] = None,
    group: Optional[str] = None,
    tags: Sequence[str] = (),
    id: Optional[str] = None,
):
    """``logger=wandb``: a ``WandbLogger`` writing under ``save_dir/wandb``; offline (with one notice) when it cannot go
    online.

    Args:
        cfg: the logger's settings (project, entity, mode; ``log_model`` is carried out by the run itself,
            :func:`log_checkpoint`, since Lightning's checkpoint logging needs its own ModelCheckpoint callback and
            refuses offline mode).
        run_config, name, group, tags: what the run adds (its settings, job name, sweep, tags).
        id: continue that W&B run (a resumed run keeps one W&B run).
    """
    from lightning.pytorch.loggers import WandbLogger

    resolved, notice = resolve_wandb_mode(cfg.mode)
    if notice:
        print(notice)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if os.environ.get("WANDB_MODE") == "":
        del os.environ["WANDB_MODE"]  # set but empty means unset (wandb refuses '' as a mode)
    extra = {"id": id, "resume": "allow"} if id else {}
    if not (os.environ.get("WANDB_QUIET") or os.environ.get("WANDB_SILENT")):  # the user's choice wins
        import wandb

        # wandb's own start and end blocks (history, summary, sync hints) are tens of lines in a run's log; the run
        # prints where its W&B files are, and the notice above says how to sync
        extra["settings"] = wandb.Settings(quiet=True)
    logger = WandbLogger(
        project=cfg.project, entity=cfg.entity, group=group, name=name, tags=list(tags), log_model=False,
        save_dir=save_dir, config=run_config, reinit="finish_previous", **extra,
        # The mode goes to wandb.init itself: Lightning's offline=True only sets WANDB_MODE, which wandb reads once per
        # process, so a process whose first run was disabled would keep every later run disabled.
        mode=resolved,
    )
    # Lightning hands wandb.init anonymous=None when anonymous logging was not asked for; wandb reads any value as set
    # and prints "The anonymous setting has no effect" in every run's log. Unset is what None meant.
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous", False) is None:
        del init["anonymous"]
    return logger


def wandb_record(logger) -> Optional[dict]:
    """What metrics.json keeps of a run's W&B run (to resume it by id and to push evaluation results to it)."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    return {"id": run.id, "project": run.project, "entity": getattr(run, "entity", None) or None,
            "group": getattr(run, "group", None) or None, "name": getattr(run, "name", None) or None,
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


def csv_logger(cfg: CSVLoggerConfig, save_dir: str = ".", resume_step: Optional[int] = None):
    """``logger=csv``: ``<save_dir>/<cfg.name>/metrics.csv``. ``resume_step``: a resumed run keeps the rows of the
    steps before it (the steps after the checkpoint are logged again by the resumed session) instead of Lightning's
    fresh file."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=save_dir, name=cfg.name, version="")
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


def no_logger(cfg: NoLoggerConfig, save_dir: str = "."):
    """``logger=none``: nothing beyond the run's own files."""
    return False


def write_summary(logger, metrics: dict, step: Optional[int] = None) -> None:
    """Final metrics as the W&B run summary (and, for other loggers, a row at ``step``: the run's last step, where
    the training rows of ``csv/metrics.csv`` end)."""
    if not logger or not metrics:
        return
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(scalars)
    elif scalars:
        logger.log_metrics(scalars, step=step)


def finish(logger) -> None:
    """Close a W&B run so the next job of a multirun starts its own run."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger.experiment.finish()


# ----------------------------------------------------------------------------------------- W&B with a local history
# ----------------------------------------------------------------------------------------- tags, exports, eval results
#: metrics.json keys that become W&B tags (``<key>:<value>``), in this order; ``n_noises`` is written ``N``
TAG_KEYS = (("experiment", "experiment"), ("loss", "loss"), ("strategy", "strategy"), ("n_noises", "N"),
            ("prompts", "prompts"))


def run_tags(info: dict) -> list[str]:
    """W&B tags of a run from its recorded settings: ``experiment:paper_2d``, ``loss:sds``, ``strategy:min_max``,
    ``N:10``, ``prompts:drawbench25`` (keys the run did not record are left out).

    Args:
        info: the run's ``metrics.json`` (or any mapping with those keys).
    """
    tags = []
    for key, label in TAG_KEYS:
        value = info.get(key)
        if value is not None and value != "":
            tags.append(f"{label}:{value}"[:64])  # W&B caps a tag at 64 characters
    return tags


def wandb_run_of(logger_or_run):
    """The ``wandb`` run behind a ``WandbLogger`` or a run itself; None for any other logger (or none)."""
    if not logger_or_run:
        return None
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger_or_run, WandbLogger):
        return logger_or_run.experiment
    return logger_or_run if hasattr(logger_or_run, "log_artifact") and hasattr(logger_or_run, "summary") else None


#: export files W&B shows as 3D objects directly; ``.ply`` files are read and shown as point clouds
OBJECT3D_SUFFIXES = (".obj", ".glb", ".gltf", ".stl")
_SH_C0 = 0.28209479177387814  # degree-0 spherical-harmonic constant (3DGS colour = 0.5 + C0 * f_dc)


def ply_points(path: Path, max_points: int = 100_000, seed: int = 0):
    """A .ply's vertices as a W&B point cloud: [n, 6] (xyz, RGB 0-255) or [n, 3] without colour.

    Colour comes from ``red/green/blue`` properties, else from 3DGS ``f_dc_*`` coefficients. More than
    ``max_points`` vertices are subsampled uniformly with ``numpy.random.default_rng(seed)``.
    """
    import numpy as np

    from rewardsds.representations.gaussians import read_ply

    v = read_ply(path, key="export")
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    if all(k in v for k in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.float32)
        rgb = rgb * 255.0 if rgb.max(initial=0) <= 1.0 and v["red"].dtype.kind == "f" else rgb
    elif all(f"f_dc_{i}" in v for i in range(3)):
        dc = np.stack([v[f"f_dc_{i}"] for i in range(3)], axis=1)
        rgb = np.clip(0.5 + _SH_C0 * dc, 0.0, 1.0) * 255.0
    else:
        rgb = None
    pts = xyz if rgb is None else np.concatenate([xyz, rgb.astype(np.float32)], axis=1)
    if len(pts) > max_points:
        pts = pts[np.sort(np.random.default_rng(seed).choice(len(pts), max_points, replace=False))]
    return pts


def log_exports(logger_or_run, run_dir: str | Path, max_points: int = 100_000) -> dict:
    """Log a run's ``export/`` folder to W&B: all files as one artifact, meshes and point clouds as 3D objects.

    Meshes (``.obj``, ``.glb``, ``.gltf``, ``.stl``) are logged as ``wandb.Object3D`` files under
    ``export/<file stem>``; a ``.ply`` becomes a point cloud (:func:`ply_points`) unless a mesh of the same stem
    was logged (the NeRF writes ``mesh.ply`` and ``mesh.obj``). Nothing happens without a W&B run.

    Args:
        logger_or_run: a ``WandbLogger``, a ``wandb`` run, or anything else (then nothing is logged).
        run_dir: the run folder.
        max_points: most points of one point cloud.

    Returns:
        ``{"artifact": name, "files": [paths in the artifact], "objects": {W&B key: file}}``; {} when nothing was
        logged.
    """
    run = wandb_run_of(logger_or_run)
    export = Path(run_dir) / "export"
    files = sorted(p for p in export.rglob("*") if p.is_file()) if export.is_dir() else []
    if run is None or not files:
        return {}
    import wandb

    name = f"export-{run.id}"
    artifact = wandb.Artifact(name, type="export", metadata={"run_dir": str(Path(run_dir).resolve())})
    for f in files:
        artifact.add_file(str(f), name=f.relative_to(export).as_posix())
    run.log_artifact(artifact)
    objects: dict[str, str] = {}
    media = {}
    meshes = {f.stem for f in files if f.suffix.lower() in OBJECT3D_SUFFIXES}
    for f in files:
        key = f"export/{f.stem}"
        suffix = f.suffix.lower()
        try:
            if suffix in OBJECT3D_SUFFIXES:
                media[key] = wandb.Object3D(str(f))
            elif suffix == ".ply" and f.stem not in meshes:
                media[key] = wandb.Object3D(ply_points(f, max_points))
            else:
                continue
        except Exception as err:  # an unreadable asset must not lose the others (the artifact holds every file)
            log.warning("W&B 3D object for %s failed: %s", f, err)
            continue
        objects[key] = f.relative_to(export).as_posix()
    if media:
        run.log(media)
    return {"artifact": name, "files": [f.relative_to(export).as_posix() for f in files], "objects": objects}


def recorded_save_dir(record: dict, run_dir: str | Path) -> Path:
    """The folder whose ``wandb/`` holds the recorded W&B run's own folder: the ``dir`` that continues it beside it.

    ``wandb.init(dir=d)`` writes its run folder into ``d/wandb/``, while ``metrics.json["wandb"]["dir"]`` records the
    run's own folder (``<save dir>/wandb/offline-run-<time>-<id>``, what ``wandb sync`` takes). Passing that folder
    as ``dir`` would nest the continued run inside it (``.../offline-run-...-<id>/wandb/offline-run-...-<id>``),
    where ``wandb sync <run>/wandb/offline-run-*`` never finds it.

    Args:
        record: ``metrics.json["wandb"]`` (``id``, optionally ``dir``: the run's own folder, or a save folder).
        run_dir: the run folder holding that ``metrics.json``.

    Returns:
        ``run_dir`` when its ``wandb/`` holds a folder of the recorded id (a run folder copied or moved after
        training keeps its W&B files beside its metrics.json); else the save folder of the recorded ``dir``; else
        ``run_dir``.
    """
    run_dir = Path(run_dir)
    if any((run_dir / "wandb").glob(f"*-{record['id']}")):
        return run_dir
    recorded = record.get("dir")
    if not recorded:
        return run_dir
    recorded = Path(recorded)
    return recorded.parent.parent if recorded.parent.name == "wandb" else recorded


def _init_recorded_run(record: dict, run_dir: str | Path):
    """``wandb.init`` continuing the run that ``metrics.json["wandb"]`` describes (same id, project, mode), its files
    beside the run's own W&B folder (:func:`recorded_save_dir`)."""
    import wandb

    mode = record.get("mode") or "offline"
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        mode = os.environ["WANDB_MODE"]
    kwargs = {k: record[k] for k in ("project", "entity", "group", "name") if record.get(k)}
    return wandb.init(id=record["id"], dir=str(recorded_save_dir(record, run_dir)), mode=mode, resume="allow",
                      reinit="finish_previous", **kwargs)


def push_eval_summary(run_dir: str | Path, values: Optional[dict] = None) -> Optional[str]:
    """Put a run's evaluation results into the summary of its W&B run (found by the id its metrics.json records).

    ``metrics.json["wandb"]`` = ``{"id", "project", "entity", "dir", "mode"}`` (and optionally ``group``/``name``)
    names the run; it is continued with ``resume="allow"`` in its own mode. Offline runs get a new offline folder
    with the same id beside the run's first one (``<run>/wandb/offline-run-<time>-<id>``), so
    ``wandb sync <run>/wandb/offline-run-*`` uploads both into the one run.

    Args:
        run_dir: the run folder.
        values: ``{"eval/<metric>": value}`` (default: every ``eval/*`` number of its metrics.json).

    Returns:
        the W&B run id, or None when the run has no W&B record or nothing to push.
    """
    import json

    info = json.loads((Path(run_dir) / "metrics.json").read_text())
    record = info.get("wandb")
    if not isinstance(record, dict) or not record.get("id"):
        return None
    if values is None:
        values = {k: v for k, v in info.items() if k.startswith("eval/") and isinstance(v, (int, float))
                  and not isinstance(v, bool)}
    if not values:
        return None
    run = _init_recorded_run(record, run_dir)
    try:
        run.summary.update({k: float(v) for k, v in values.items()})
    finally:
        run.finish()
    return record["id"]


def log_eval_tables(tables: dict, *, project: str, entity: Optional[str], group: Optional[str], mode: str,
                    save_dir: str | Path, name: Optional[str] = None, tags: Sequence[str] = (),
                    images: Optional[dict] = None, config: Optional[dict] = None) -> str:
    """Log a sweep's evaluation as one W&B run (``job_type="eval"``) in the sweep's group.

    Args:
        tables: ``{key: (columns, rows)}``; each becomes a ``wandb.Table`` under ``key`` (cells that are image
            paths, marked as ``{"image": path}``, become ``wandb.Image``).
        project, entity, group, mode: where the run goes (``mode`` online/offline/disabled).
        save_dir: folder of the run's ``wandb/`` files (the sweep folder).
        name, tags, config: of the run.
        images: ``{key: png path}`` figures to log as ``wandb.Image``.

    Returns:
        the id of the eval run.
    """
    import wandb

    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        mode = os.environ["WANDB_MODE"]
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, entity=entity, group=group, name=name, tags=list(tags), job_type="eval",
                     dir=str(save_dir), mode=mode, config=config, reinit="finish_previous")
    try:
        payload = {}
        for key, (columns, rows) in tables.items():
            data = [[wandb.Image(str(c["image"])) if isinstance(c, dict) and "image" in c else c for c in row]
                    for row in rows]
            payload[key] = wandb.Table(columns=list(columns), data=data)
        for key, path in (images or {}).items():
            payload[key] = wandb.Image(str(path))
        run.log(payload)
        return run.id
    finally:
        run.finish()
