"""A run's lifecycle as a user meets it: what it prints, how it stops, how it resumes, what it leaves on disk."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, ROOT, compose, run_cli
from rewardsds.errors import CheckpointError, ConfigError, DiskFullError, RunInterrupted

RUN = ["experiment=analytic", "trainer=cpu", "output.video=false", "output.image_every=0", "lookahead.steps=2"]


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _latents(folder: Path) -> torch.Tensor:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]["representation.latents"]


def _popen(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), HYDRA_FULL_ERROR="0")
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "rewardsds", *args], cwd=cwd, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------ what a run records as its options
def test_a_run_composed_without_hydras_node_records_the_classes_it_built(tmp_path, capsys, caplog):
    """Scripts compose the config without Hydra's runtime node: the run still names its options (by the class each
    builds), in metrics.json and in its start block, instead of None."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF_DIR
    from rewardsds.train import train

    caplog.set_level("INFO")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=["experiment=analytic", *FAST, "steps=2", "n_noises=4", "lookahead.steps=1"])
    assert "hydra" not in cfg
    m = train(cfg, tmp_path / "run")
    assert (m["prior"], m["reward"], m["strategy"], m["loss"], m["representation"]) == (
        "AnalyticPrior", "AnalyticReward", "MinMaxStrategy", "SDSLoss", "LatentImage")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["strategy"] == "MinMaxStrategy"
    said = capsys.readouterr().out + caplog.text  # the start block
    assert "prior AnalyticPrior" in said and "strategy=MinMaxStrategy" in said and "None" not in said
    # with Hydra's node the option names are recorded as chosen
    m = train(compose(["experiment=analytic", *FAST, "steps=2", "n_noises=4", "lookahead.steps=1"]), tmp_path / "run2")
    assert (m["prior"], m["strategy"], m["loss"]) == ("analytic", "min_max", "sds")


# ------------------------------------------------------------------ what a headless run prints
def test_headless_run_prints_its_folder_progress_and_result(tmp_path):
    r = run_cli([*RUN, "logger=csv", "steps=12", "output.progress_every=4"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1 and re.fullmatch(r"\d\d-\d\d-\d\d", runs[0].name), runs  # no "None" suffix
    run = runs[0]
    out = r.stdout
    assert f"rewardsds: run {run}" in out  # absolute: it can be pasted from a log anywhere
    assert "strategy=min_max, N=8, lookahead K=2, reward=analytic" in out and "UNet evaluations per step" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["1/12", "4/12", "8/12", "12/12"], lines
    assert all("reward mean" in ln and "t " in ln for ln in lines) and "ETA" in lines[-1] and "s/step" in lines[-1]
    # the start-up step's time is on its own line, and on no other
    assert re.search(r"\| first step \d+\.\d s$", lines[0]) and not any("first step" in ln for ln in lines[1:]), lines
    m = _metrics(run)
    assert f"final reward  {m['final/reward']:.4f}" in out and "complete in" in out
    assert f"rewardsds-eval {run}" in out and f"rewardsds resume={run}" in out
    log = (run / "train.log").read_text()
    assert "rewardsds: run" in log and "step 8/12" in log and "final reward" in log  # the same lines, time-stamped


def test_a_headless_run_of_a_model_prior_prints_no_library_bars(tmp_path, tiny_sd):
    """Without a terminal, a run that loads a model (the tiny SD folder: its CLIP text encoder through transformers)
    shows its own lines only: no "Loading weights" bar fragments on stderr. One step is "1 step"."""
    r = run_cli(["prompt=a red fox", f"prior.pretrained={tiny_sd}", "prior.local_files_only=true", "reward=jpeg_compressibility",
                 "trainer=cpu", "logger=none", "output.video=false", "output.image_every=0", "steps=1", "n_noises=4",
                 "lookahead.steps=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Loading weights" not in r.stderr and "it/s]" not in r.stderr, r.stderr[-2000:]
    assert "prior sd (float32)" in r.stdout and "per step (estimate), 1 step\n" in r.stdout
    assert re.search(r"complete in \S+ \(1 step, ", r.stdout), r.stdout


def test_library_bars_stay_on_a_terminal_and_where_the_user_turned_them_on(monkeypatch):
    from rewardsds.utils.quiet import HUB_BARS_OFF, quiet_progress_bars

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.delenv(HUB_BARS_OFF, raising=False)
    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert quiet_progress_bars() is False and HUB_BARS_OFF not in os.environ
    monkeypatch.setattr(sys, "stderr", Stream(False))
    monkeypatch.setenv(HUB_BARS_OFF, "0")  # the user asked for them
    assert quiet_progress_bars() is False and os.environ[HUB_BARS_OFF] == "0"
    monkeypatch.delenv(HUB_BARS_OFF)
    import transformers.utils.logging as tf_logging

    try:
        assert quiet_progress_bars() is True and os.environ[HUB_BARS_OFF] == "1"
        assert not tf_logging.is_progress_bar_enabled()  # an already-imported library is told directly
    finally:
        from huggingface_hub.utils import enable_progress_bars

        tf_logging.enable_progress_bar()
        enable_progress_bars()


def test_name_is_a_suffix_of_the_run_and_sweep_folders(tmp_path):
    r = run_cli([*RUN, *FAST, "steps=1", "name=fox"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert re.fullmatch(r"\d\d-\d\d-\d\d_fox", run.name), run.name
    r = run_cli(["-m", *RUN, *FAST, "steps=1", "name=fox", "n_noises=4"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (sweep,) = list((tmp_path / "outputs" / "sweeps").glob("*/*"))
    assert re.fullmatch(r"\d\d-\d\d-\d\d_fox", sweep.name) and len(list(sweep.glob("*/metrics.json"))) == 1
    with pytest.raises(ConfigError, match=r"name = '\.\./x'.*would write outside its folder"):
        from rewardsds.config import validate

        validate(compose([*RUN, "name=../x"]))


# ------------------------------------------------------------------ stopping on a signal, then resuming
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_resume_continues_exactly(tmp_path, sig):
    run = tmp_path / "run"
    args = [*RUN, "logger=csv", "seed=3", "steps=40", "output.checkpoint_every=1000", "output.progress_every=1"]
    p = _popen([*args, f"hydra.run.dir={run}"], tmp_path)
    for line in p.stdout:  # line-buffered without a TTY: the progress lines arrive as they happen
        if line.startswith("step 3/"):
            p.send_signal(sig)
            break
    out, err = p.communicate(timeout=300)
    assert p.returncode == 128 + sig, err[-3000:]
    m = _metrics(run)
    stopped = m["iterations"]
    assert m["status"] == "interrupted" and m["interrupted_by"] == signal.Signals(sig).name and 3 <= stopped < 40
    assert f"interrupted by {signal.Signals(sig).name} at step {stopped} of 40" in err and f"rewardsds resume={run}" in err
    assert (run / "train.log").read_text().rstrip().endswith(f"Continue with: rewardsds resume={run}")  # the log ends as the run did
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["rewardsds"]["iteration"] == stopped  # written at the step it stopped, not at checkpoint_every
    if sig == signal.SIGINT:
        return
    # the README's command, in the run's own folder, with nothing but the folder
    (tmp_path / "elsewhere").mkdir()
    r = run_cli([f"resume={run}"], tmp_path / "elsewhere")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "elsewhere" / "outputs").exists()  # no empty dated folder for the resume
    m2 = _metrics(run)
    assert m2["status"] == "complete" and m2["iterations"] == 40 and len(m2["sessions"]) == 2
    assert m2["sessions"][0]["status"] == "interrupted" and m2["sessions"][1]["start_step"] == stopped
    assert m2["wall_time_s"] > m2["sessions"][1]["wall_time_s"]  # earlier sessions count
    assert m2["sessions"][1]["command"].endswith(f"resume={run}")  # as typed (not the folder arguments added for Hydra)
    import csv

    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert steps == list(range(40))  # the history is whole, each step once
    assert [int(row["step"]) for row in rows if row.get("final/reward")] == [39]  # the summary row ends the history
    full = tmp_path / "full"
    from rewardsds.train import train

    train(compose([*args, "logger=none"]), full)
    assert torch.equal(_latents(full), _latents(run))  # as if it had never stopped


class _SendAt:
    """A callback that sends this process a signal at the end of one step."""

    def __init__(self, step: int, sig: int):
        import lightning.pytorch as pl

        outer = self

        class Cb(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, *args):
                if pl_module.iteration == outer.step:
                    os.kill(os.getpid(), outer.sig)

        self.step, self.sig, self.callback = step, sig, Cb()


def _train_with_signal(tmp_path, monkeypatch, sig: int, steps: int = 6):
    import rewardsds.train as train_mod
    from lightning.pytorch import Trainer

    send = _SendAt(2, sig)
    original = Trainer.__init__

    def init(self, *a, callbacks=None, **kw):
        original(self, *a, callbacks=[send.callback, *(callbacks or [])], **kw)

    monkeypatch.setattr(Trainer, "__init__", init)
    with pytest.raises(RunInterrupted) as info:
        train_mod.train(compose([*RUN, *FAST, f"steps={steps}"]), tmp_path / "run")
    return info.value


def test_a_second_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_continue(tmp_path, monkeypatch):
    """Ctrl-C twice: the run stops at once, before the step's checkpoint; with no earlier one, the message must not
    offer a resume that cannot work."""
    import rewardsds.train as train_mod
    from lightning.pytorch import Callback, Trainer

    class Twice(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if pl_module.iteration == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    original = Trainer.__init__
    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, callbacks=None, **kw: original(self, *a, callbacks=[Twice(), *(callbacks or [])], **kw))
    with pytest.raises(RunInterrupted) as info:
        train_mod.train(compose([*RUN, *FAST, "steps=6", "output.checkpoint_every=1000"]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    msg = str(info.value)
    assert msg.startswith("interrupted by SIGINT at step 2 of 6, before its first checkpoint: there is nothing to continue")
    assert "resume=" not in msg and "Run the same command again" in msg


def test_the_interrupted_message_says_which_checkpoint_a_resume_continues_from():
    run = Path("/runs/r")
    assert str(RunInterrupted("SIGTERM", 143, 9, 100, run, checkpoint_step=9)) == (
        "interrupted by SIGTERM at step 9 of 100; the checkpoint and outputs so far are in /runs/r. Continue with: rewardsds resume=/runs/r")
    later = str(RunInterrupted("SIGINT", 130, 57, 100, run, checkpoint_step=50))
    assert "at step 57 of 100, at once: its last checkpoint is of step 50 (the steps after it are lost)" in later
    assert later.endswith("Continue with: rewardsds resume=/runs/r")
    assert "its last checkpoint is of an earlier step" in str(RunInterrupted("SIGINT", 130, 57, 100, run, checkpoint_step="earlier"))


def test_an_earlier_handler_of_the_signal_runs_after_the_checkpoint(tmp_path, monkeypatch):
    """submitit installs a requeue handler for its preemption signal before the job runs: it must still run, after
    the run saved its state."""
    seen = []
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append((s, ckpt.is_file(), _metrics(tmp_path / "run")["status"])))
    try:
        err = _train_with_signal(tmp_path, monkeypatch, signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert err.exit_code == 128 + signal.SIGUSR2 and err.step == 2
    assert seen == [(signal.SIGUSR2, True, "interrupted")]


def test_slurm_time_limit_signal_requeues_the_job(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setattr("rewardsds.lifecycle.subprocess.call", lambda cmd: calls.append(cmd) or 0)
    err = _train_with_signal(tmp_path, monkeypatch, signal.SIGUSR1)
    assert calls == [["scontrol", "requeue", "4242"]] and err.step == 2
    m = _metrics(tmp_path / "run")
    assert m["slurm_job_id"] == "4242" and m["status"] == "interrupted"
    # the requeued job runs the same command: it finds the run of its job id and continues it
    from rewardsds.cli import prepare_arguments

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    runs = tmp_path / "outputs" / "runs" / "2026-01-01"
    runs.mkdir(parents=True)
    (tmp_path / "run").rename(runs / "10-00-00")
    monkeypatch.chdir(tmp_path)
    args = prepare_arguments(["experiment=analytic", "prompt=x"])
    assert f"resume={Path('outputs/runs/2026-01-01/10-00-00')}" in args
    assert any(a.startswith("hydra.run.dir=") and a.endswith("10-00-00") for a in args)


# ------------------------------------------------------------------ honest resume
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    r = run_cli([*RUN, "logger=csv", "steps=4", "output.checkpoint_every=2", f"hydra.run.dir={run}"], root)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_refuses_changes_that_make_another_experiment(finished, tmp_path):
    before = _snapshot(finished)
    r = run_cli([f"resume={finished}", "strategy=best", "steps=6"], tmp_path)  # a group swapped on the command line
    assert r.returncode == 2, r.stderr[-2000:]
    assert "would continue the run with another experiment: strategy._target_:" in r.stderr
    assert "resume_allow_changes=true" in r.stderr and "nothing in" in r.stderr
    # where a changed default (not an override) is the cause, the fix names the run's values to give back
    assert "give the run's values, strategy._target_=" in r.stderr
    assert _snapshot(finished) == before  # the finished run is exactly as it was


@pytest.mark.parametrize("override, key", [("prompt=a square", "prompt"), ("n_noises=4", "n_noises"), ("seed=1", "seed"),
                                           ("loss.guidance_scale=50", "loss.guidance_scale"),
                                           ("lookahead.steps=3", "lookahead.steps")])
def test_resume_names_each_changed_key(finished, override, key):
    from rewardsds.train import train

    before = _snapshot(finished)
    with pytest.raises(ConfigError, match=rf"another experiment: {re.escape(key)}: .*resume_allow_changes=true"):
        train(compose([*RUN, "logger=csv", "steps=6", f"resume={finished}", override]), finished)
    assert _snapshot(finished) == before
    # operational changes are taken as they are
    from rewardsds.resume import check_changes, saved_config

    assert check_changes(saved_config(finished), compose([*RUN, "logger=none", "steps=9", "output.image_every=3"]), False,
                         finished) == {}


def test_resume_with_allowed_changes_records_them(tmp_path, finished):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    r = run_cli([f"resume={run}", "n_noises=4", "steps=6", "resume_allow_changes=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = _metrics(run)
    assert m["n_noises"] == 4 and m["iterations"] == 6 and m["sessions"][-1]["changes"] == {"n_noises": {"from": 8, "to": 4}}
    assert "n_noises=4" in m["overrides"] and "resume_allow_changes=true" not in m["overrides"]
    assert m["prior_dtype"] == "float32" and all(s["prior_dtype"] == "float32" for s in m["sessions"])  # as resolved
    # a later resume continues with what the run now is, without repeating the change; where the prior's dtype
    # resolves otherwise than in the last session (another device, a version whose auto differs), it says so
    m["prior_dtype"] = "bfloat16"  # as a session on a GPU would have recorded it
    (run / "metrics.json").write_text(json.dumps(m))
    r = run_cli([f"resume={run}", "steps=7"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = _metrics(run)
    assert m["n_noises"] == 4 and m["iterations"] == 7 and m["prior_dtype"] == "float32"
    assert "changed: prior_dtype" in r.stdout and m["sessions"][-1]["changes"] == {"prior_dtype": {"from": "bfloat16", "to": "float32"}}


def _corrupt(kind: str, ckpt: Path) -> None:
    data = ckpt.read_bytes()
    if kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        ckpt.write_bytes(b"not a checkpoint at all" * 100)
    elif kind == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(3)}, "epoch": 1}, ckpt)
    elif kind == "other_scene":  # a rewardsds checkpoint of a different scene size
        c = torch.load(ckpt, weights_only=False)
        c["state_dict"]["representation.latents"] = torch.zeros(1, 3, 8, 8)
        torch.save(c, ckpt)


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "foreign", "other_scene"])
def test_bad_checkpoints_are_named_and_leave_the_run_untouched(finished, tmp_path, kind):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _corrupt(kind, run / "checkpoints" / "last.ckpt")
    before = _snapshot(run)
    from rewardsds.cli import _fail

    cfg = compose([*RUN, *FAST, "steps=6", f"resume={run}"])
    from rewardsds.train import train

    with pytest.raises(CheckpointError) as info:
        train(cfg, run)
    msg = str(info.value)
    assert str(run / "checkpoints" / "last.ckpt") in msg or "the checkpoint" in msg
    assert "Fix:" in msg
    with pytest.raises(SystemExit) as code:
        _fail(run, info.value, user_error=True)
    assert code.value.code == 2
    assert _snapshot(run) == before and _metrics(run)["status"] == "complete" and "final/reward" in _metrics(run)


def test_steps_below_the_checkpoint_is_an_error(finished):
    from rewardsds.train import train

    with pytest.raises(ConfigError, match=r"steps = 2: is below the step of the checkpoint .* \(4\).*steps>=4"):
        train(compose([*RUN, *FAST, "steps=2", f"resume={finished}"]), finished)
    assert _metrics(finished)["status"] == "complete"


def test_resume_clears_files_a_killed_writer_left(tmp_path, finished):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    left = [run / "checkpoints" / ".last.ckpt.partial-x1y2.ckpt", run / "checkpoints" / ".last.ckpt.abc123.ckpt",
            run / ".metrics.json.partial-zz.json"]
    for f in left:
        f.write_bytes(b"")
    keep = run / "checkpoints" / "notes.txt"
    keep.write_text("mine")
    r = run_cli([f"resume={run}", "steps=5"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(f.exists() for f in left) and keep.read_text() == "mine"


def test_wandb_run_is_resumed_by_id(tmp_path):
    from wandb_records import run_record

    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}
    run = tmp_path / "run"
    r = run_cli([*RUN, "logger=wandb", "steps=2", "output.checkpoint_every=1", f"hydra.run.dir={run}"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    first = _metrics(run)["wandb"]
    r = run_cli([f"resume={run}", "steps=4"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _metrics(run)["wandb"]["id"] == first["id"] and first["mode"] == "offline"
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and {run_record(f)["id"] for f in files} == {first["id"]}
    tags = run_record(files[0])["tags"]
    assert {"experiment:analytic", "loss:sds", "strategy:min_max", "N:8"} <= set(tags)


def test_log_model_logs_the_checkpoint_as_an_artifact_offline(tmp_path):
    from wandb_records import artifacts

    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}
    run = tmp_path / "run"
    r = run_cli([*RUN, "logger=wandb", "logger.log_model=true", "steps=2", f"hydra.run.dir={run}"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    (f,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    models = [a for a in artifacts(f) if a["type"] == "model"]
    assert len(models) == 1 and "last.ckpt" in models[0]["files"]


# ------------------------------------------------------------------ failures the run reports
def test_a_sweep_whose_jobs_all_fail_exits_1(tmp_path):
    sweep = tmp_path / "sweep"
    # jobs that pass the command-line check and fail while training (a latent of ~1e30 gives non-finite gradients)
    r = run_cli(["-m", *RUN, *FAST, "steps=3", "seed=1,2", "representation.init_std=1e30", "strategy=weighted", "max_nonfinite_steps=1",
                 f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "0 complete" not in r.stdout and "2 failed" in r.stdout and "seed=1" in r.stderr and "seed=2" in r.stderr, r.stdout + r.stderr


def test_an_unwritable_run_folder_is_one_message(tmp_path):
    (tmp_path / "afile").write_text("")
    r = run_cli([*RUN, *FAST, "steps=1", f"hydra.run.dir={tmp_path / 'afile' / 'run'}"], tmp_path)
    assert r.returncode == 2 and "hydra.run.dir" in r.stderr and "Fix:" in r.stderr and "Traceback" not in r.stderr


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno

    from rewardsds.utils import io

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing .*metrics.json.*resume=<run folder>"):
        io.write_json(tmp_path / "metrics.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_files_keep_the_umask_not_0600(tmp_path):
    from rewardsds.utils.io import UMASK, write_json

    write_json(tmp_path / "m.json", {})
    mode = stat.S_IMODE((tmp_path / "m.json").stat().st_mode)
    assert mode == 0o666 & ~UMASK and mode & 0o044 == 0o044 & ~UMASK


def test_a_run_whose_every_step_had_a_nonfinite_reward_fails(tmp_path, monkeypatch):
    from rewardsds.errors import TrainingAborted
    from rewardsds.rewards.analytic import AnalyticReward
    from rewardsds.train import train

    monkeypatch.setattr(AnalyticReward, "_score", lambda self, images, prompts: torch.full((images.shape[0],), float("nan")))
    with pytest.raises(TrainingAborted, match=r"every one of the 3 steps had a non-finite gradient or reward"):
        train(compose([*RUN, *FAST, "steps=3", "max_nonfinite_steps=10"]), tmp_path / "run")
    with pytest.raises(TrainingAborted, match=r"no checkpoint was written yet \(output.checkpoint_every = 0\)"):
        train(compose([*RUN, *FAST, "steps=6", "max_nonfinite_steps=1"]), tmp_path / "run2")


# ------------------------------------------------------------------ the command itself
def test_help_does_not_import_torch(tmp_path):
    code = ("import sys; sys.argv = ['rewardsds', '--help']\n"
            "from rewardsds.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rewardsds experiment=demo" in r.stdout and "experiment: analytic" in r.stdout and "TORCH False" in r.stdout


def test_config_store_is_shared_not_copied():
    import copy

    from hydra.core.config_store import ConfigStore

    import rewardsds.config  # noqa: F401

    cs = ConfigStore.instance()
    assert copy.deepcopy(cs) is cs
    node = cs.load("schema/prior/SDPriorConfig.yaml").node
    node.pretrained = "changed"
    assert cs.load("schema/prior/SDPriorConfig.yaml").node.pretrained != "changed"  # a load still hands out a copy


def test_progress_leaves_the_sessions_start_up_step_out_of_the_rate():
    """A fresh machine's first step compiles for minutes: it is shown on its own, never turned into an ETA."""
    from types import SimpleNamespace

    from rewardsds.lifecycle import progress_line

    run = SimpleNamespace(iteration=1, total_steps=1000, step_times=[150.0], session_first_time=0, nonfinite_steps=0,
                          session_first_compile_s=120.25)
    line = progress_line(run, {})
    assert "first step 150.0 s (start-up: 120.2 s in torch.compile, 29.8 s running and capturing CUDA graphs)" in line
    assert "ETA" not in line
    run.session_first_compile_s = 0.0  # eager (a CPU run): no start-up story to tell
    assert progress_line(run, {}).endswith("| first step 150.0 s")
    run.iteration, run.step_times = 4, [150.0, 0.4, 0.5, 0.45]
    line = progress_line(run, {})
    assert "0.450 s/step" in line and "ETA 7m" in line  # 996 steps x 0.45 s, the start-up step left out
    # after a resume the earlier session's steady times count; this session's start-up step does not
    run.iteration, run.step_times, run.session_first_time = 502, [0.3] * 500 + [30.0, 0.3], 500
    assert "0.300 s/step" in progress_line(run, {})


def test_cuda_device_is_resolved_with_its_index(monkeypatch):
    """``trainer=gpu`` resolves to ``cuda:<current>``, the name Lightning gives its root device: the system is
    prepared once (prior moved and wrapped for compiling once), not a second time in Lightning's setup."""
    from rewardsds.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("gpu") == torch.device("cuda", 1) != torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_session_start_up_step_and_its_compile_seconds_are_recorded(monkeypatch):
    """The system attributes torch.compile's seconds to the session's first step (what the progress line and
    metrics.json report); later compiles count for the session, not for that step."""
    import rewardsds.system as system_mod
    from rewardsds.system import DistillationSystem

    clock = {"compile": 40.0}
    monkeypatch.setattr(system_mod, "compile_seconds", lambda: clock["compile"])
    run = DistillationSystem.__new__(DistillationSystem)  # only the clock bookkeeping is exercised
    run.step_times, run._step_started, run.session_first_time, run.session_first_compile_s = [0.5, 0.4], None, None, None
    run.session_first_time, run._compile_at_start = len(run.step_times), system_mod.compile_seconds()  # as on_train_start
    assert run.startup_step_time() is None
    run._mark_step_start()
    clock["compile"] = 140.0  # the first step compiles for 100 s
    run._step_started -= 130.0
    run._mark_step_start()
    assert run.session_first_compile_s == 100.0 and run.startup_step_time() == pytest.approx(130.0, abs=0.5)
    clock["compile"] = 150.0  # a later compile (a new shape): the session's, not the first step's
    run._mark_step_start()
    assert run.session_first_compile_s == 100.0 and run.session_compile_s() == 110.0


def test_compile_seconds_reads_torch_compile_times():
    import torch

    from rewardsds.priors.compiled import compile_seconds

    before = compile_seconds()
    torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3))
    assert compile_seconds() > before >= 0.0


def test_end_block_tells_the_start_up_step_apart_when_it_compiled(tmp_path):
    from rewardsds.lifecycle import end_block

    m = {"wall_time_s": 158.0, "iterations": 30, "step_time_median_s": 0.471, "final/reward": 1.2, "reward": "image_reward"}
    plain = end_block({**m, "startup_step_s": 0.3, "compile_s": 0.0}, tmp_path, is_3d=False).splitlines()[0]
    assert plain == "rewardsds: complete in 2m38s (30 steps, 0.471 s/step median)"
    compiled = end_block({**m, "startup_step_s": 144.9, "compile_s": 120.25}, tmp_path, is_3d=False).splitlines()[0]
    assert compiled == ("rewardsds: complete in 2m38s (30 steps, 0.471 s/step median; first step 144.9 s "
                        "(start-up: 120.2 s in torch.compile, 24.7 s running and capturing CUDA graphs))")


def test_start_block_names_what_is_not_the_plain_lookahead():
    from rewardsds.config import LookaheadConfig
    from rewardsds.lifecycle import start_block
    from rewardsds.train import lookahead_options

    info = {"run_dir": "r", "prompt": "p", "device": "cpu", "prior": "sd", "dtype": "bf16", "loss": "sds", "strategy": "min_max",
            "n_noises": 10, "lookahead": 15, "reward": "image_reward", "evals_per_step": 180, "steps": 1000}
    plain = start_block({**info, "lookahead_options": lookahead_options(LookaheadConfig())})
    assert "N=10, lookahead K=15, reward=image_reward" in plain
    opts = lookahead_options(LookaheadConfig(prune_to=4, overlap=True))
    assert opts == ["pruned to the best 4", "decode and reward overlapped across chunks"]
    assert "lookahead K=15 (pruned to the best 4, decode and reward overlapped across chunks), reward=" in start_block({**info, "lookahead_options": opts})
    assert lookahead_options(LookaheadConfig(fp32_below=250)) == ["ranked in fp32 below t = 250"]
    assert lookahead_options(LookaheadConfig(fp32_below=250, fp32_tf32=True)) == ["ranked in fp32 (TF32) below t = 250"]
    # a resume at the run's last step says it only writes the final outputs again; one with steps left does not
    at_end = start_block({**info, "resumed_at": 1000, "checkpoint": "r/checkpoints/last.ckpt"}).splitlines()
    assert at_end[1] == "  resume      from step 1000 of r/checkpoints/last.ckpt"
    assert at_end[2].strip() == "the run is at its last step (1000): only its final outputs are written again (steps=N continues it)"
    assert "last step" not in start_block({**info, "resumed_at": 400, "checkpoint": "c"})


# ------------------------------------------------------------------ one writer per run folder
def _wait_for(p: subprocess.Popen, done, what: str, timeout: float = 240) -> None:
    """Read the run's output until ``done()`` holds (the run must still be alive then)."""
    import time

    end = time.time() + timeout
    for line in p.stdout:
        if done():
            return
        assert time.time() < end and p.poll() is None, f"the run never got to {what}: {p.stderr.read()[-3000:]}"
    raise AssertionError(f"the run ended before {what}: {p.stderr.read()[-3000:]}")


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.communicate(timeout=120)


def test_a_live_run_is_never_written_by_a_second_process(tmp_path):
    """While a run is live, `resume=<its folder>` exits 2 naming the folder, the live pid and the fix, and changes
    nothing; once that process is killed (-9) the resume takes the run over, marks the dead session killed, keeps
    the history whole and records the folder absolute though it was given relative."""
    import csv

    run = tmp_path / "run"
    p = _popen([*RUN, "logger=csv", "steps=100000", "output.checkpoint_every=1", "output.progress_every=1",
                f"hydra.run.dir={run}"], tmp_path)
    try:
        _wait_for(p, lambda: (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.json").is_file(),
                  "its first checkpoint")
        r = run_cli(["resume=run", "steps=100000"], tmp_path)  # relative, from the folder that holds it
        assert r.returncode == 2, r.stderr[-3000:]
        assert f"resume = '{run}': is being written by a live run (pid {p.pid} on host " in r.stderr, r.stderr
        assert "wait for that run to end, or stop it first" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "outputs").exists()  # refused before Hydra made a folder
        assert p.poll() is None and _metrics(run)["status"] == "running" and not (run / "error.txt").exists()
        assert [s["pid"] for s in _metrics(run)["sessions"]] == [p.pid]
        # the command that started it, run again into its folder: refused too, Hydra's record of the run kept
        record = {f.name: f.read_bytes() for f in (run / ".hydra").iterdir()}
        (tmp_path / "elsewhere").mkdir()
        r = run_cli([*RUN, "logger=csv", "steps=100000", f"hydra.run.dir={run}"], tmp_path / "elsewhere")
        assert r.returncode == 2 and f"hydra.run.dir = '{run}': is being written by a live run (pid {p.pid}" in r.stderr, r.stderr[-3000:]
        assert {f.name: f.read_bytes() for f in (run / ".hydra").iterdir()} == record and p.poll() is None
        # the same from Python (the race the command-line check cannot close): refused before anything changes
        from rewardsds.runlock import RunLocked
        from rewardsds.train import train

        with pytest.raises(RunLocked, match=f"pid {p.pid}"):
            train(compose([*RUN, *FAST, "steps=100000", f"resume={run}"]), run)
        assert p.poll() is None and _metrics(run)["status"] == "running"
    finally:
        _stop(p)
    assert p.returncode == -signal.SIGKILL
    # once it is dead, the command that started it, run again, would start over a run that can go on: refused, nothing
    # of the run's folder changed (before, it silently started over and the csv logger deleted the old logs)
    files = lambda: {str(f.relative_to(run)): f.read_bytes() for f in sorted(run.rglob("*")) if f.is_file()}  # noqa: E731
    before = files()
    r = run_cli([*RUN, "logger=csv", "steps=100000", f"hydra.run.dir={run}"], tmp_path / "elsewhere")
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"hydra.run.dir = '{run}': holds a run that stopped" in r.stderr and f"Fix: resume={run} continues it" in r.stderr
    assert files() == before
    at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["rewardsds"]["iteration"]
    r = run_cli(["resume=run", f"steps={at + 3}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = _metrics(run)
    assert m["status"] == "complete" and m["iterations"] == at + 3 and m["run_dir"] == str(run)
    assert [s["status"] for s in m["sessions"]] == ["killed", "complete"] and m["sessions"][1]["start_step"] == at
    with open(run / "csv" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert steps == list(range(at + 3))  # each step once
    # this session's time first, the total labelled
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("rewardsds: complete in"))
    assert f"(steps {at} to {at + 3} in this session" in line and "over 2 sessions)" in line, line


def test_a_run_killed_before_its_first_checkpoint_is_refused_and_left_as_it_was(tmp_path):
    run = tmp_path / "run"
    p = _popen([*RUN, "logger=csv", "steps=100000", "output.checkpoint_every=0", "output.progress_every=1",
                f"hydra.run.dir={run}"], tmp_path)
    try:
        _wait_for(p, lambda: (run / "metrics.json").is_file(), "its first step")
    finally:
        _stop(p)
    before = _snapshot(run)
    assert _metrics(run)["status"] == "running" and not (run / "checkpoints" / "last.ckpt").exists()
    r = run_cli([f"resume={run}", "steps=60"], tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"resume = '{run}': is a run that wrote no checkpoint (status 'running'" in r.stderr
    assert "there is nothing to resume from" in r.stderr and "start the run again" in r.stderr
    assert _snapshot(run) == before and not (tmp_path / "outputs").exists()


def test_a_refused_resume_of_a_run_from_python_leaves_no_lock_file_behind(tmp_path, finished):
    """A run folder written before the lock existed gets no lock file from a resume that is refused."""
    import shutil

    from rewardsds.runlock import LOCK_FILE
    from rewardsds.train import train

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / LOCK_FILE).unlink()
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="another experiment"):
        train(compose([*RUN, *FAST, "steps=6", "n_noises=4", f"resume={run}"]), run)
    assert _snapshot(run) == before


def test_the_lock_refuses_a_second_holder_and_says_who_holds_it(tmp_path):
    from rewardsds.runlock import LOCK_FILE, RunLock, RunLocked, holder, is_live

    assert is_live(tmp_path) is False and not (tmp_path / LOCK_FILE).exists()  # a probe creates nothing
    with RunLock(tmp_path) as lock:
        assert lock.held and is_live(tmp_path) is True
        assert holder(tmp_path).startswith(f"pid {os.getpid()} on host {os.uname().nodename}, started ")
        with pytest.raises(RunLocked, match=rf"hydra.run.dir = '{re.escape(str(tmp_path))}': is being written by a live run"):
            RunLock(tmp_path).acquire()  # a second open file of the same process conflicts too
    assert is_live(tmp_path) is False
    with RunLock(tmp_path):  # released: free again
        pass


def test_a_new_run_into_a_live_runs_folder_is_refused_before_hydra_writes_there(tmp_path):
    from rewardsds.runlock import RunLock

    run = tmp_path / "run"
    with RunLock(run):
        before = _snapshot(run)
        r = run_cli([*RUN, *FAST, "steps=2", f"hydra.run.dir={run}"], tmp_path)
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"hydra.run.dir = '{run}': is being written by a live run (pid {os.getpid()}" in r.stderr, r.stderr
        assert _snapshot(run) == before and not (run / ".hydra").exists()


def test_a_filesystem_without_flock_warns_and_runs_unlocked(tmp_path, monkeypatch, caplog):
    import errno

    from rewardsds import runlock

    class NoFlock:
        LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8

        @staticmethod
        def flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock, "fcntl", NoFlock)
    caplog.set_level("WARNING")
    lock = runlock.RunLock(tmp_path).acquire()
    assert not lock.supported and not lock.held
    assert f"cannot lock {tmp_path / runlock.LOCK_FILE} (OSError: No locks available)" in caplog.text
    assert runlock.is_live(tmp_path) is None
    runlock.check_not_live(tmp_path)  # unknown: the current behaviour, no error
    from rewardsds.train import train

    m = train(compose([*RUN, *FAST, "steps=2"]), tmp_path / "run")
    assert m["status"] == "complete"


def test_end_block_of_a_resume_says_this_sessions_time():
    from rewardsds.lifecycle import end_block

    metrics = {"wall_time_s": 135.0, "iterations": 40, "sessions": [{"start_step": 0}, {"start_step": 30}]}
    first = end_block(metrics, Path("/r"), is_3d=False, session_s=4.2).splitlines()[0]
    assert first == "rewardsds: complete in 4.2s (steps 30 to 40 in this session; 2m15s over 2 sessions)", first
    one = end_block({**metrics, "sessions": [{"start_step": 0}]}, Path("/r"), is_3d=False, session_s=135.0).splitlines()[0]
    assert one == "rewardsds: complete in 2m15s (40 steps)", one
