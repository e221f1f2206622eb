"""Run ``python -m rewardsds <args>`` as its own process, without paying its imports every time.

Each CLI process spends most of its start importing torch, lightning (whose torchmetrics imports torchvision,
scipy.signal and transformers), diffusers and transformers: about 8 s on a 2-core machine, more than most tiny
runs take, and the default test run starts about sixty of them. Here a multiprocessing fork server imports those
libraries once (it is a fresh interpreter, not a fork of pytest); each call forks one child from it. The child:

- takes the call's working directory and its whole environment (``os.environ`` is replaced, as a new process's is);
- points file descriptors 1 and 2 at files, so everything it prints (C-level output too) is captured and neither
  is a terminal, as with ``subprocess.run(capture_output=True)``;
- runs the ``rewardsds`` package as ``__main__`` through :mod:`runpy`, which is what ``python -m rewardsds`` does;
- exits as the interpreter would: ``SystemExit`` gives the exit code (a message goes to stderr with code 1), any
  other exception prints its traceback and exits 1, and the ``atexit`` handlers run.

So every call is still its own process, with its own exit code, module state and crash. Two cases take a real
subprocess instead: an environment that differs from the server's in a variable a preloaded library reads when it
is imported (``IMPORT_TIME_ENV``), and ``REWARDSDS_TEST_SUBPROCESS=1``, which sends every call there (to check that
the two agree). Signals and a live run's lifecycle are tested with real processes (``tests/test_lifecycle.py``),
and so is the installed wheel's console script (``scripts/check_wheel.sh``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

#: what the server imports once: the libraries every run imports, and the CLI itself
PRELOAD = ["torch", "lightning.pytorch", "diffusers", "transformers", "hydra", "omegaconf", "rewardsds.cli",
           "rewardsds.config"]
#: environment variables (by prefix) that the interpreter or the preloaded libraries read once, at start or import
#: (the Hub's and transformers' constants, the thread pools, torch's logging): a call that changes one runs in a real
#: subprocess. The rest are read when used (lightning's PL_GLOBAL_SEED, inductor's cache folder, CUDA's allocator
#: settings, W&B's), so the child's environment carries them as a new process's would.
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE", "TRANSFORMERS_", "DIFFUSERS_", "TOKENIZERS_", "PYTHON", "OMP_", "MKL_",
                   "CUDA_VISIBLE_DEVICES", "TORCH_", "TRITON_", "LD_", "XDG_", "HOME")
#: read when used although their prefix says otherwise: the child puts PYTHONPATH's entries on ``sys.path`` as the
#: interpreter would, and the CLI applies HF_HUB_DISABLE_PROGRESS_BARS to libraries already imported
#: (``rewardsds.utils.quiet``)
RUNTIME_ENV = ("PYTHONPATH", "HF_HUB_DISABLE_PROGRESS_BARS")

_server: dict = {}


def _context():
    """The fork-server context, started on first use with the libraries preloaded and this process's environment."""
    if "ctx" not in _server:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _server["ctx"] = ctx
        _server["env"] = dict(os.environ)
    return _server["ctx"]


def _child(args: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:0] = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e and e not in sys.path]
    sys.argv = ["-m", *args]  # runpy sets argv[0] to the package's __main__.py, as ``python -m`` does
    code: int = 0
    try:
        runpy.run_module("rewardsds", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (the interpreter's own behaviour for an uncaught exception)
        traceback.print_exc()
        code = 1
    threading._shutdown()  # the interpreter's exit: wait for non-daemon threads, then the atexit handlers
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _needs_real_process(env: dict) -> bool:
    if os.environ.get("REWARDSDS_TEST_SUBPROCESS") == "1" or "forkserver" not in multiprocessing.get_all_start_methods():
        return True
    _context()
    base = _server["env"]
    keys = {k for k in set(env) | set(base) if k.startswith(IMPORT_TIME_ENV) and k not in RUNTIME_ENV}
    return any(env.get(k) != base.get(k) for k in keys)


def run(args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run([python, -m, rewardsds, *args], cwd=cwd, env=env, capture_output=True, text=True)``."""
    cmd = [sys.executable, "-m", "rewardsds", *args]
    if _needs_real_process(env):
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    with tempfile.TemporaryDirectory(prefix="rewardsds_cli_") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        p = _context().Process(target=_child, args=(list(args), str(cwd), dict(env), str(out), str(err)))
        p.start()
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired(cmd, timeout, output=_read(out), stderr=_read(err))
        # killed by a signal: negative, as subprocess reports it
        return subprocess.CompletedProcess(cmd, p.exitcode, _read(out), _read(err))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
