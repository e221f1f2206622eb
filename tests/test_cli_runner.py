"""The tests' CLI runner forks each call from a server that imported the libraries once (tests/cli_runner.py): the
same calls in a fresh interpreter give the same exit codes, messages, printed lines and results."""

from __future__ import annotations

import json
import os
import re

import cli_runner
from conftest import FAST, run_cli


def _shape(out: str, run: str) -> list[str]:
    """The printed lines with the run folder and every number (times, rates, losses) blanked."""
    return [re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", ln.replace(run, "<run>")) for ln in out.splitlines()]


def test_a_forked_call_gives_what_a_fresh_interpreter_gives(tmp_path, monkeypatch):
    refused = ["experiment=analytic", "n_noise=8", f"hydra.run.dir={tmp_path}/refused"]
    results = {}
    for how in ("forked", "fresh"):
        if how == "fresh":
            monkeypatch.setenv("REWARDSDS_TEST_SUBPROCESS", "1")
        assert cli_runner._needs_real_process(dict(os.environ)) is (how == "fresh")
        run = tmp_path / how
        r = run_cli(["experiment=analytic", "seed=3", "steps=3", "n_noises=4", "lookahead.steps=2", *FAST,
                     "output.progress_every=1", f"hydra.run.dir={run}"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        bad = run_cli(refused, tmp_path)
        results[how] = (r, bad, json.loads((run / "metrics.json").read_text()), str(run))
    (fr, fbad, fm, frun), (sr, sbad, sm, srun) = results["forked"], results["fresh"]
    assert (fbad.returncode, fbad.stdout, fbad.stderr) == (sbad.returncode, sbad.stdout, sbad.stderr) and fbad.returncode == 2
    assert "n_noise = '8': is not a key of the root config" in fbad.stderr
    assert fm["final/reward"] == sm["final/reward"] and fm["iterations"] == sm["iterations"] == 3
    assert _shape(fr.stdout, frun) == _shape(sr.stdout, srun) and "step 3/3" in fr.stdout
    assert fr.stderr == sr.stderr


def test_a_call_that_changes_an_import_time_variable_gets_a_fresh_interpreter(monkeypatch):
    """A variable the preloaded libraries read when imported (HF_HUB_OFFLINE) cannot take effect in the server's
    modules: such a call runs in a real subprocess; a variable read at run time (WANDB_MODE) does not need one."""
    base = dict(os.environ)
    cli_runner._context()
    assert not cli_runner._needs_real_process(base)
    assert cli_runner._needs_real_process({**base, "HF_HUB_OFFLINE": "0" if base.get("HF_HUB_OFFLINE") == "1" else "1"})
    assert cli_runner._needs_real_process({**base, "PYTHONHASHSEED": "7"})
    assert not cli_runner._needs_real_process({**base, "WANDB_MODE": "disabled", "PYTHONPATH": "/elsewhere"})
