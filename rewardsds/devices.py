"""One GPU per job for multirun jobs that run side by side on one machine (``hydra/launcher=gpus``).

Launchers that reuse worker processes (joblib's loky workers) cannot pin a job to a GPU with
``CUDA_VISIBLE_DEVICES``: CUDA reads it once per process. Instead each job locks a free GPU index with an
exclusive ``flock`` on ``<gpu_lock.dir>/<host>-gpu<id>.lock`` (``id``: the device's entry in
``CUDA_VISIBLE_DEVICES``, else its index) for its whole lifetime and runs on
``cuda:<i>`` (``torch.cuda.set_device`` plus Lightning ``devices=[i]``). The kernel drops the lock when
the job ends or its process dies, so a crashed job never keeps a GPU. With ``n_jobs`` equal to the number
of GPUs every job finds a free one at once; a job that finds all taken (another sweep on the same
machine, or ``n_jobs`` larger than the GPU count) waits for one. Jobs try the GPUs starting at
``hydra.job.num`` modulo their number, so a sweep spreads over the GPUs in job order.
"""

from __future__ import annotations

import getpass
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from rewardsds.errors import ConfigError


def default_lock_dir() -> Path:
    """``<tmp>/rewardsds-gpu-locks-<user>``: shared by every job of this user on this machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # containers without a passwd entry
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"rewardsds-gpu-locks-{user}"


def check_accelerator(accelerator: str) -> None:
    """ConfigError when ``trainer.accelerator`` asks for CUDA and this machine has none.

    Imports torch only for ``gpu``/``cuda``, so the command-line check (which calls this before any run folder
    exists) stays light for CPU and ``auto`` runs.
    """
    if str(accelerator) not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", accelerator, "asks for CUDA but no CUDA device is available",
                          "run on a machine with a GPU, or use trainer=cpu (trainer.accelerator=cpu)")


def gpu_pool(gpus: Optional[Sequence[int]]) -> list[int]:
    """The GPU indices to share out: ``gpus``, or every visible CUDA device."""
    if gpus:
        return [int(g) for g in gpus]
    import torch

    return list(range(torch.cuda.device_count()))


def physical_id(index: int) -> str:
    """The machine-wide id of visible CUDA device ``index`` (its entry in ``CUDA_VISIBLE_DEVICES``), so that jobs
    with different visible sets lock the same physical GPU under the same name."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)


def launcher_jobs(_root_: Any = None) -> int:
    """Resolver ``rewardsds_gpu_count`` (``hydra/launcher=gpus``: ``n_jobs``): one concurrent job per GPU."""
    from omegaconf import OmegaConf

    gpus = OmegaConf.select(_root_, "gpu_lock.gpus", default=None) if _root_ is not None else None
    pool = gpu_pool(list(gpus) if gpus else None)
    if not pool:
        raise ConfigError("hydra/launcher", "gpus", "found no CUDA device to give each job",
                          "run on a GPU machine, list the devices with gpu_lock.gpus=[0,1], or use the default launcher")
    return len(pool)


class GpuLock:
    """Context manager that holds one GPU index of ``gpus`` for this process (see the module docstring).

    Args:
        gpus: the device indices to choose from (CUDA indices as this process sees them).
        lock_dir: folder of the lock files; every job that shares the GPUs must use the same folder.
        start: position in ``gpus`` to try first (the job number spreads jobs over the GPUs).
        wait_s: poll interval while every GPU is taken.
    """

    def __init__(self, gpus: Sequence[int], lock_dir: str | Path, start: int = 0, wait_s: float = 2.0):
        if not gpus:
            raise ConfigError("gpu_lock.gpus", list(gpus), "is empty: there is no GPU to lock",
                              "run on a GPU machine or list the devices with gpu_lock.gpus=[0,1]")
        self.gpus = [int(g) for g in gpus]
        self.lock_dir = Path(lock_dir)
        self.start = start
        self.wait_s = wait_s
        self.index: Optional[int] = None
        self.waited_s = 0.0
        self._file = None

    def _path(self, gpu: int) -> Path:
        return self.lock_dir / f"{socket.gethostname()}-gpu{physical_id(gpu)}.lock"

    def acquire(self) -> int:
        """Lock the first free GPU (trying from ``start``), waiting while all are taken. Returns its index."""
        import fcntl

        self.lock_dir.mkdir(parents=True, exist_ok=True)
        k = self.start % len(self.gpus)
        order = self.gpus[k:] + self.gpus[:k]
        t0 = time.monotonic()
        announced = False
        while True:
            for gpu in order:
                f = open(self._path(gpu), "a+")
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held by another job
                    f.close()
                    continue
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} since {time.time():.3f}\n")
                f.flush()
                self._file, self.index = f, gpu
                self.waited_s = time.monotonic() - t0
                return gpu
            if not announced:
                print(f"rewardsds: every GPU of {self.gpus} is held by another job ({self.lock_dir}); waiting for one")
                announced = True
            time.sleep(self.wait_s)

    def release(self) -> None:
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
