"""One writer per run folder: the advisory lock a run holds on its folder for its whole life.

A training process takes an exclusive ``flock`` on ``<run folder>/.run.lock`` before it writes anything there and
holds it until it ends. The kernel drops the lock when the process dies, whatever the way (``kill -9``, a node
crash on a local disk, an out-of-memory kill), and the lock belongs to the open file, not to a pid, so a reused pid
never looks alive. So a folder whose lock cannot be taken is being written by a live run, and one whose lock can be
taken while its metrics.json still says ``running`` belongs to a process that died.

Some network filesystems do not implement ``flock`` (they raise instead of locking): there a run warns once and goes
on unlocked, as runs did before this lock existed. This module stays light (no torch): the command-line check uses it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from rewardsds.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("rewardsds")

#: The lock file inside a run folder (hidden and empty but for the holder's pid and host; nothing else reads it).
LOCK_FILE = ".run.lock"
#: errno values of a lock held by another process (everything else means: this filesystem cannot lock).
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class RunLocked(ConfigError):
    """The run folder is being written by a live process: a second one must not touch it."""

    def __init__(self, key: str, run_dir: Path, holder: str):
        self.run_dir, self.holder = run_dir, holder
        super().__init__(key, str(run_dir), f"is being written by a live run ({holder})",
                         "wait for that run to end, or stop it first (Ctrl-C or kill <pid>: it writes a checkpoint "
                         f"and ends as interrupted), then resume={run_dir} continues it")


class RunLock:
    """The exclusive advisory lock on a run folder; a context manager.

    ``acquire`` raises :class:`RunLocked` when a live process holds it. ``supported`` is False where the filesystem
    cannot lock (then nothing is held, after one warning).

    Args:
        run_dir: the run folder (created if missing).
        key: the config key named in the error (``resume`` for a resume, ``hydra.run.dir`` for a new run).
    """

    def __init__(self, run_dir: Path, key: str = "hydra.run.dir"):
        self.run_dir, self.key = Path(run_dir), key
        self.path = self.run_dir / LOCK_FILE
        self.supported = True
        self._fd: Optional[int] = None
        self._before: Optional[bytes] = None  # the lock file as it was (None: this lock created it)

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self._unsupported("this platform has no fcntl.flock")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # os.open's descriptors are not inherited by child processes: a launcher started from the run cannot keep it
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _HELD:
                raise RunLocked(self.key, self.run_dir, holder(self.run_dir)) from None
            return self._unsupported(f"{type(err).__name__}: {err.strerror or err}")
        self._fd = fd
        try:  # who holds it, for the message a second process prints (metrics.json may not be written yet)
            self._before = Path(self.path).read_bytes() if not created else None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode())
        except OSError:
            pass
        return self

    def _unsupported(self, why: str) -> "RunLock":
        self.supported = False
        log.warning("rewardsds: cannot lock %s (%s): nothing stops a second process from writing this run folder "
                    "while this one runs", self.path, why)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def release_as_it_was(self) -> None:
        """Release after a refused start: the lock file as it was before (removed if this lock created it), so a
        refused resume leaves the run folder exactly as it found it."""
        if self._fd is None:
            return
        try:
            if self._before is None:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, self._before, 0)
        except OSError:
            pass
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def is_live(run_dir: Path) -> Optional[bool]:
    """Whether a live process holds the lock of ``run_dir``: True, False, or None where the filesystem cannot lock.

    Probes without creating anything: a folder without a lock file has no live writer (runs of earlier versions
    wrote none, and then the answer is False).
    """
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:  # shared: it conflicts with the run's exclusive lock, and needs only read access (NFS emulates flock)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return True if err.errno in _HELD else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def check_not_live(run_dir: Path, key: str = "resume") -> None:
    """Raise :class:`RunLocked` when a live process writes ``run_dir`` (nothing is created or changed)."""
    if is_live(run_dir):
        raise RunLocked(key, Path(run_dir), holder(run_dir))


def holder(run_dir: Path) -> str:
    """``pid 1234 on host node7, started 12:03:55``: who holds the lock, from the lock file, else metrics.json."""
    pid = host = started = None
    try:
        words = (Path(run_dir) / LOCK_FILE).read_text().split()
        pid, host, started = int(words[0]), words[1], float(words[2])
    except (OSError, ValueError, IndexError):
        try:
            m = json.loads((Path(run_dir) / "metrics.json").read_text())
            pid, host = m.get("pid"), m.get("hostname")
            started = ((m.get("sessions") or [{}])[-1] or {}).get("started_at")
        except (OSError, ValueError, AttributeError):
            pass
    if pid is None:
        return "its process is unknown"
    text = f"pid {pid}" + (f" on host {host}" if host else "")
    return text + (f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(started)))}" if started else "")
