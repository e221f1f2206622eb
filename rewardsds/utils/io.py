"""Atomic file writes and run metadata (versions, git commit, command).

Everything a run leaves on disk is written to a temporary file in the same folder and renamed into
place, so a crash never leaves a half-written metrics.json, image or checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rewardsds.errors import DiskFullError


#: Marks the temporary files of :func:`atomic_path` (``.<name>.partial-<random><suffix>``).
PARTIAL_MARK = ".partial-"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process's umask, read once (``os.umask`` can only be read by setting it).
UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 minus the umask): ``mkstemp``
    creates it 0600, which would hide results from collaborators on shared storage. A process killed inside
    the block leaves ``.<name>.partial-*``; :func:`remove_partial_files` clears those when the run starts again.
    A full disk is reported as :class:`DiskFullError` naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_MARK}", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFullError(path) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left under ``folder``; returns them.

    Only files of :func:`atomic_path` (``.<name>.partial-*``, and the ``.last.ckpt.*.ckpt`` pattern of earlier
    versions) are touched. Call it when a run starts or resumes: its folder then has no other writer.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for f in folder.rglob(".*"):
        if f.is_file() and (PARTIAL_MARK in f.name or (f.name.startswith(".last.ckpt.") and f.suffix == ".ckpt")):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; ``{}`` when the file is missing or not valid JSON."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an HxWx3 uint8 array as PNG/JPEG (by suffix), atomically."""
    from PIL import Image

    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt)


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "value"):
        return x.value
    return str(x)


def package_versions(names=("torch", "diffusers", "transformers", "lightning", "hydra-core", "omegaconf", "gsplat",
                            "nerfacc", "wandb", "peft", "numpy", "rewardsds")) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the checkout the package runs from (with '+dirty' for local changes), or 'unknown'."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: the arguments the user typed, kept by ``rewardsds.cli.main`` before it adds its own for Hydra (a resume's run folder)
TYPED_ARGS: list[list[str]] = []


def command_line() -> str:
    """The command as the user typed it (``python -m rewardsds`` shows as ``rewardsds``)."""
    prog = Path(sys.argv[0]).name
    if prog in ("__main__.py", "train.py", "rewardsds"):
        prog = "rewardsds"
    return " ".join([prog] + [_quote(a) for a in (TYPED_ARGS[-1] if TYPED_ARGS else sys.argv[1:])])


def job_command(overrides) -> str:
    """The command that re-runs one job on its own (a multirun job too): ``rewardsds`` + its overrides, quoted.

    ``overrides`` are the job's ``hydra.overrides.task`` (every command-line override, with a swept key's value
    for this job); the run goes to a new ``outputs/runs/...`` folder unless ``hydra.run.dir=...`` is added.
    """
    return " ".join(["rewardsds"] + [_quote(str(o)) for o in overrides])


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
