"""Sweeps at scale on the analytic prior: prompt lists x strategies x n_noises, launchers, W&B runs, resume, tables.

The module's main sweep (basic launcher, one process) is shared by the tests that read it; launcher tests run
their own small sweeps (submitit_local and joblib start processes: each pays the torch/Lightning import).
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import statistics
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, run_cli
from rewardsds.config import validate
from rewardsds.devices import GpuLock
from rewardsds.eval import cli as eval_cli
from rewardsds.eval import timeline

BASE = ["experiment=analytic", "trainer=cpu", "output.video=false", "output.image_every=0"]
PROMPTS = {"0-a_disk": "a disk", "1-a_square": "a square"}
JOBS = sorted(f"n_noises={n},prompt={p},steps=2,strategy={s}" for n in (4, 8) for p in PROMPTS for s in ("none", "min_max"))
WANDB_OFFLINE = {"WANDB_MODE": "offline", "WANDB_API_KEY": ""}


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Offline W&B with its staging folder (table images wait there until `wandb sync`) in a temporary folder."""
    return {**WANDB_OFFLINE, "WANDB_DATA_DIR": str(tmp_path_factory.mktemp("wandb_data"))}


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _job_dirs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, wandb_env):
    """2 strategies x 2 n_noises x 2 prompts (prompts=analytic), W&B offline, candidate tables every step."""
    root = tmp_path_factory.mktemp("sweeps")
    folder = root / "sweep"
    args = ["-m", *BASE, "prompts=analytic", "strategy=none,min_max", "n_noises=4,8", "steps=2", "logger=wandb",
            "output.candidates_every=1", "output.checkpoint_every=1", f"hydra.sweep.dir={folder}"]
    r = run_cli(args, root, env=wandb_env)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"folder": folder, "args": args, "root": root, "stdout": r.stdout}


# ------------------------------------------------------------------ one job per prompt x strategy x n_noises
def test_sweep_runs_one_readable_job_per_prompt_strategy_and_n_noises(sweep):
    folder = sweep["folder"]
    assert _job_dirs(folder) == JOBS
    # the closing summary: counts, then the commands that evaluate the sweep and upload its offline W&B runs
    assert (f"rewardsds: sweep {folder}: 8 complete\n  evaluate    rewardsds-eval {folder} --metrics none\n"
            f"  sync        wandb sync {folder}/*/wandb/offline-run-*\n") in sweep["stdout"]
    for job in JOBS:
        m = _metrics(folder / job)
        settings = dict(item.split("=", 1) for item in job.split(","))
        assert m["status"] == "complete" and m["iterations"] == 2
        assert m["prompt"] == PROMPTS[settings["prompt"]] and m["prompt_index"] == int(settings["prompt"][0])
        assert m["prompts"] == "analytic" and m["n_noises"] == int(settings["n_noises"])
        assert m["strategy"] == settings["strategy"]
        # reproducibility record: versions, commit, the typed command and the command of this job alone
        assert m["versions"]["torch"] == version("torch") and m["versions"]["hydra-core"] == version("hydra-core")
        assert m["git_commit"] and m["git_commit"] != "unknown"
        assert m["command"].startswith("rewardsds -m ") and "strategy=none,min_max" in m["command"]
        job_args = shlex.split(m["job_command"])
        assert job_args[0] == "rewardsds" and "-m" not in job_args
        assert f"strategy={settings['strategy']}" in job_args and f"prompt_index={m['prompt_index']}" in job_args
        assert m["started_at"] < m["finished_at"] and isinstance(m["pid"], int) and m["gpu_index"] is None


def test_job_command_reruns_the_job(sweep, tmp_path, monkeypatch):
    """The recorded job_command, split as a shell splits it and composed as ``rewardsds`` composes its arguments,
    reproduces the job exactly (W&B disabled here: logging does not change the result)."""
    from rewardsds.train import train

    monkeypatch.setenv("WANDB_MODE", "disabled")
    job = sweep["folder"] / "n_noises=4,prompt=1-a_square,steps=2,strategy=min_max"
    m = _metrics(job)
    args = shlex.split(m["job_command"])
    assert args[0] == "rewardsds"
    again = train(compose(args[1:]), tmp_path / "rerun")
    assert again["prompt"] == "a square" and again["final/reward"] == m["final/reward"]
    assert (tmp_path / "rerun" / "final" / "image_000.png").read_bytes() == (job / "final" / "image_000.png").read_bytes()


# ------------------------------------------------------------------ W&B: one run per job, grouped by the sweep
def _offline_run(job: Path) -> Path:
    files = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def test_each_job_is_a_wandb_run_grouped_by_the_sweep(sweep):
    from wandb_records import run_record

    for job in JOBS:
        m = _metrics(sweep["folder"] / job)
        rec = run_record(_offline_run(sweep["folder"] / job))
        # the group names the sweep with its date folder (outputs/sweeps/<date>/<time>), not the leaf alone
        assert rec["group"] == f"{sweep['folder'].parent.name}/{sweep['folder'].name}" and rec["name"] == job
        assert rec["config"]["prompt"] == m["prompt"] and rec["config"]["n_noises"] == m["n_noises"]
        assert rec["config"]["prompts"]["name"] == "analytic" and rec["config"]["prompt_index"] == m["prompt_index"]
        summary = rec["summary"]
        assert summary["final/reward"] == pytest.approx(m["final/reward"], rel=1e-6)
        for key in ("wall_time_s", "step_time_median_s", "evals_per_step_mean"):
            assert summary[key] == pytest.approx(m[key], rel=1e-6), key


def test_candidate_tables_show_which_noise_won(sweep):
    """output.candidates_every=1: per step a W&B table of the N candidate images, their rewards and weights.

    wandb logs a table as a ``run_table`` artifact recorded in the offline run file; its JSON and images are
    staged under $WANDB_DATA_DIR until ``wandb sync`` uploads them.
    """
    from wandb_records import artifacts, logged_keys

    job = sweep["folder"] / "n_noises=8,prompt=0-a_disk,steps=2,strategy=min_max"
    run_file = _offline_run(job)
    assert "train/candidates/_type" in logged_keys(run_file)["history"]
    tables = [a for a in artifacts(run_file) if a["type"] == "run_table"]
    assert len(tables) == 2  # steps 0 and 1
    for art in tables:
        images = [p for p in art["files"] if p.endswith(".png")]
        assert len(images) == 8 and "train/candidates.table.json" in art["files"]
        for p in images:
            assert Path(art["files"][p]).read_bytes()[:4] == b"\x89PNG"
        t = json.loads(Path(art["files"]["train/candidates.table.json"]).read_text())
        assert t["columns"] == ["candidate", "view", "image", "reward", "weight"] and len(t["data"]) == 8
        assert [(row[0], row[1]) for row in t["data"]] == [(i, 0) for i in range(8)]  # 2D: one view per candidate
        assert {row[2]["path"] for row in t["data"]} == set(images)
        rewards = [row[3] for row in t["data"]]
        weights = [row[4] for row in t["data"]]
        ranked = sorted(range(8), key=lambda i: rewards[i])
        # min_max: the two best noises pull (positive weight), the two worst push (negative), the rest are off
        assert all(weights[i] > 0 for i in ranked[-2:]) and all(weights[i] < 0 for i in ranked[:2])
        assert all(weights[i] == 0 for i in ranked[2:-2])


# ------------------------------------------------------------------ tables from disk
def test_eval_without_reward_models_tables_the_sweep(sweep):
    folder = sweep["folder"]
    assert eval_cli.main([str(folder), "--metrics", "none", "--digits", "6"]) == 0
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["n_noises"], r["runs"]) for r in rows] == [
        ("min_max", "4", "2"), ("min_max", "8", "2"), ("none", "4", "2"), ("none", "8", "2")]
    for r in rows:
        jobs = [j for j in JOBS if f"strategy={r['strategy']}" in j and f"n_noises={r['n_noises']}," in j]
        values = [_metrics(folder / j)["final/reward"] for j in jobs]
        assert float(r["final/reward/mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert float(r["final/reward/std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert float(r["evals_per_step_mean/mean"]) > 0 and r["wall_time_s/n"] == "2"
    md = (folder / "summary.md").read_text()
    assert md.startswith("| strategy | n_noises | runs | final/log_prob | final/reward |") and "| none | 8 | 2 |" in md
    for name in ("final_reward_vs_n_noises.png", "final_reward_vs_wall_time.png"):
        assert (folder / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(folder / "eval.csv") as f:
        assert len(list(csv.DictReader(f))) == 8


# ------------------------------------------------------------------ resume of an interrupted sweep
def _latents(job: Path) -> torch.Tensor:
    return torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]["representation.latents"]


def test_rerun_of_an_interrupted_sweep_skips_finished_jobs_and_continues_the_rest(sweep, tmp_path):
    from rewardsds.train import train

    folder = tmp_path / "sweep"
    shutil.copytree(sweep["folder"], folder)
    interrupted = folder / "n_noises=8,prompt=0-a_disk,steps=2,strategy=min_max"
    missing = folder / "n_noises=4,prompt=1-a_square,steps=2,strategy=none"
    failed = folder / "n_noises=4,prompt=0-a_disk,steps=2,strategy=none"
    uninterrupted = _latents(interrupted)
    # a job killed after its checkpoint at step 1 of 2: the same job run for one step, status still "running"
    overrides = [o for o in _metrics(interrupted)["overrides"] if not o.startswith(("steps=", "logger="))]
    shutil.rmtree(interrupted)
    train(compose([*overrides, "steps=1", "logger=none"]), interrupted)
    m = _metrics(interrupted)
    (interrupted / "metrics.json").write_text(json.dumps({**m, "status": "running"}))
    shutil.rmtree(missing)  # never started
    (failed / "metrics.json").write_text(json.dumps({**_metrics(failed), "status": "failed"}))

    args = [a for a in sweep["args"] if not a.startswith(("hydra.sweep.dir=", "logger="))]
    done = folder / "n_noises=8,prompt=1-a_square,steps=2,strategy=none"
    record = {p.name: p.read_bytes() for p in (done / ".hydra").iterdir()}
    r = run_cli([*args, "logger=none", f"hydra.sweep.dir={folder}"], tmp_path)  # from another folder than the first run
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("already complete; skipped") == 5
    # Hydra's record of a skipped job (its overrides and the folder it was started in, which a resume reads) stays the
    # first run's; a job started again from scratch records this run
    assert {p.name: p.read_bytes() for p in (done / ".hydra").iterdir()} == record
    assert OmegaConf.load(done / ".hydra" / "hydra.yaml").hydra.runtime.cwd == str(sweep["root"])
    assert OmegaConf.load(failed / ".hydra" / "hydra.yaml").hydra.runtime.cwd == str(tmp_path)
    assert r.stdout.count("was interrupted; continuing from its last checkpoint") == 1
    for job in JOBS:
        assert _metrics(folder / job)["status"] == "complete", job
    m = _metrics(interrupted)
    assert m["iterations"] == 2 and m["resumed_from"].endswith("checkpoints/last.ckpt")
    assert torch.equal(_latents(interrupted), uninterrupted)  # as if it had never stopped
    assert "resumed_from" not in _metrics(failed)  # a failed job starts again from scratch


def test_rerun_of_a_sweep_skips_a_job_that_is_still_running(sweep, tmp_path):
    """The same sweep command run again while one of its jobs is live (its process holds the job's lock) leaves that
    job to its process: skipped with a line saying so, not run a second time, not counted as failed."""
    import os

    from rewardsds.runlock import RunLock

    folder = tmp_path / "sweep"
    shutil.copytree(sweep["folder"], folder)
    live = folder / "n_noises=8,prompt=0-a_disk,steps=2,strategy=min_max"
    # what a live job looks like on disk: status running with a checkpoint (without its lock: an interrupted job)
    (live / "metrics.json").write_text(json.dumps({**_metrics(live), "status": "running"}))
    args = [a for a in sweep["args"] if not a.startswith(("hydra.sweep.dir=", "logger="))]
    # everything, Hydra's .hydra/ record included (Hydra writes it before the job's code runs: for a job the run skips or
    # continues, the project tells it not to)
    files = lambda: {str(p.relative_to(live)): p.read_bytes() for p in sorted(live.rglob("*")) if p.is_file()}  # noqa: E731
    with RunLock(live):
        before = files()
        r = run_cli([*args, "logger=none", f"hydra.sweep.dir={folder}"], tmp_path)
        after = files()
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"rewardsds: {live} is being run by another process (pid {os.getpid()} on host " in r.stdout, r.stdout
    assert "was interrupted" not in r.stdout and r.stdout.count("already complete; skipped") == 7
    assert f"sweep {folder}: 7 complete, 1 running\n  evaluate    rewardsds-eval {folder} --metrics none\n" in r.stdout
    assert "failed" not in r.stdout + r.stderr
    assert after == before and _metrics(live)["status"] == "running"


def test_a_sweep_job_taken_by_another_process_between_check_and_start_is_skipped(tmp_path, monkeypatch, capsys):
    """Two processes of one sweep reach the same new job together: the one that loses the job's lock skips it with
    the same line, writes nothing there and does not count it as failed."""
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from rewardsds import cli, runlock

    job = tmp_path / "sweep" / "n_noises=4"
    cfg = compose([*BASE, "logger=none", "steps=2", "n_noises=4"])
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(job)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    monkeypatch.setattr(runlock, "is_live", lambda run_dir: False)  # the other process took the lock after this check
    try:
        with runlock.RunLock(job):
            assert cli.task(cfg) is None
    finally:
        HydraConfig.instance().cfg = None
    out = capsys.readouterr()
    assert f"rewardsds: {job} is being run by another process (pid {os.getpid()} on host " in out.out, out
    assert "error" not in out.err and sorted(p.name for p in job.iterdir()) == [runlock.LOCK_FILE]


# ------------------------------------------------------------------ launchers
def test_failed_job_does_not_stop_a_submitit_sweep(tmp_path):
    folder = tmp_path / "sweep"
    # a job that fails while training (a latent of ~1e30 gives non-finite gradients; a bad config is refused before
    # the sweep starts) and one that completes
    r = run_cli(["-m", "hydra/launcher=submitit_local", *BASE, "logger=none", "strategy=weighted", "representation.init_std=1e30,1",
                 "max_nonfinite_steps=1", "steps=3", "output.checkpoint_every=0", f"hydra.sweep.dir={folder}"], tmp_path)
    # the sweep went on past the failed job, then the command says so and exits 1
    assert r.returncode == 1, r.stderr[-3000:]
    bad_job, good_job = (f"max_nonfinite_steps=1,representation.init_std={v},steps=3,strategy=weighted" for v in ("1e+30", "1"))
    assert "1 complete, 1 failed" in r.stdout and f"failed: {bad_job}" in r.stderr, r.stdout + r.stderr
    bad, good = _metrics(folder / bad_job), _metrics(folder / good_job)
    assert bad["status"] == "failed" and "non-finite" in bad["error"]
    assert (folder / bad_job / "error.txt").is_file()
    assert good["status"] == "complete" and good["pid"] != bad.get("pid")
    assert any((folder / ".submitit").rglob("*_result.pkl"))  # the jobs ran through submitit


def test_gpus_launcher_gives_side_by_side_jobs_distinct_gpus(tmp_path, wandb_env):
    """hydra/launcher=gpus with a 2-GPU pool (gpu_lock.gpus; the jobs themselves run on the CPU here), W&B offline
    in the reused joblib worker processes."""
    from wandb_records import run_record

    folder = tmp_path / "sweep"
    r = run_cli(["-m", "hydra/launcher=gpus", "gpu_lock.gpus=[0,1]", f"gpu_lock.dir={tmp_path / 'locks'}", *BASE, "logger=wandb",
                 "strategy=none,min_max", "n_noises=4,8", "steps=60", "output.checkpoint_every=0", f"hydra.sweep.dir={folder}"],
                tmp_path, env=wandb_env)
    assert r.returncode == 0, r.stderr[-3000:]
    for job in _job_dirs(folder):
        rec = run_record(_offline_run(folder / job))
        assert rec["group"] == f"{folder.parent.name}/{folder.name}" and rec["name"] == job and rec["summary"]["final/reward"] == _metrics(folder / job)["final/reward"]
    assert "n_jobs=2" in r.stdout + r.stderr
    jobs = timeline.load_jobs(folder)
    assert len(jobs) == 4 and all(j["status"] == "complete" for j in jobs)
    assert {j["gpu"] for j in jobs} == {0, 1} and len({j["pid"] for j in jobs}) == 2
    assert timeline.max_concurrency(jobs) == 2 and timeline.conflicts(jobs) == []
    assert timeline.main([str(folder)]) == 0


def test_gpu_lock_never_gives_one_gpu_to_two_holders(tmp_path):
    """Five holders, two GPUs: at most two hold at once, never the same GPU; the rest wait for a free one.

    flock locks belong to open file descriptions, so threads that open the lock files separately contend
    exactly like processes do.
    """
    events, lock = [], threading.Lock()

    def hold(k: int) -> None:
        with GpuLock([0, 1], tmp_path, start=k, wait_s=0.01) as gpu:
            t0 = time.monotonic()
            time.sleep(0.15)
            with lock:
                events.append({"run": str(k), "host": "", "gpu": gpu, "start": t0, "end": time.monotonic()})

    threads = [threading.Thread(target=hold, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(events) == 5 and {e["gpu"] for e in events} == {0, 1}
    assert timeline.conflicts(events) == [] and timeline.max_concurrency(events) == 2


def test_timeline_names_a_missing_folder_and_an_empty_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        timeline.main([str(tmp_path / "nope")])
    assert code.value.code == 2
    assert f"folder = '{tmp_path / 'nope'}': is not a folder. Fix: give a sweep folder" in capsys.readouterr().err
    assert timeline.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"python -m rewardsds.eval.timeline: error: {tmp_path}: no finished jobs with "
                                              "timestamps in it or below. Fix: give the folder of a sweep whose jobs have ended")


def test_gpu_lock_names_the_physical_gpu(tmp_path, monkeypatch):
    """Jobs that see different CUDA_VISIBLE_DEVICES sets lock one physical GPU under one name."""
    import fcntl
    import socket

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with GpuLock([0, 1], tmp_path, start=1) as gpu:
        assert gpu == 1
        path = tmp_path / f"{socket.gethostname()}-gpu5.lock"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
        assert GpuLock([0], tmp_path)._path(0) == path
        with open(path) as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_timeline_flags_two_jobs_on_one_gpu(tmp_path, capsys):
    for name, (gpu, start, end) in {"a": (0, 0.0, 10.0), "b": (0, 5.0, 12.0), "c": (1, 0.0, 3.0)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"status": "complete", "gpu_index": gpu, "device_index": gpu, "pid": 1, "hostname": "h", "started_at": start, "finished_at": end}))
    assert timeline.main([str(tmp_path)]) == 1
    assert "GPU 0: a and b overlap" in capsys.readouterr().out


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_launcher_options_compose_with_their_documented_fields():
    cfg = _compose_with_hydra(["experiment=analytic", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                               "hydra.sweep.dir=/scratch/sweep"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.array_parallelism, launcher.max_num_timeout) == (1, 16, 3)
    assert launcher.submitit_folder == "/scratch/sweep/.submitit/%j"
    cfg = _compose_with_hydra(["experiment=analytic", "hydra/launcher=gpus", "gpu_lock.gpus=[0,1,2]"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "gpus"  # what turns the GPU lock on (gpu_lock.enabled: null)
    if torch.cuda.device_count() == 0:
        cfg = _compose_with_hydra(["experiment=analytic", "hydra/launcher=gpus"])
        with pytest.raises(Exception, match="gpu_lock.gpus"):
            _ = cfg.hydra.launcher.n_jobs


def test_wandb_sweep_config_runs_rewardsds_with_hydra_overrides():
    """scripts/wandb_sweep.yaml: the agent's command (built with wandb's own macro expansion) composes and validates."""
    import yaml
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from conftest import ROOT

    spec = yaml.safe_load((ROOT / "scripts" / "wandb_sweep.yaml").read_text())
    assert spec["program"] == "rewardsds" and spec["command"][0] == "rewardsds" and spec["command"][-1] == "${args_no_hyphens}"
    fixed = [c for c in spec["command"][1:-1] if not c.startswith("hydra.")]
    run_dir = next(c for c in spec["command"] if c.startswith("hydra.run.dir="))
    assert "${oc.env:WANDB_SWEEP_ID}" in run_dir and "${oc.env:WANDB_RUN_ID}" in run_dir
    params = spec["parameters"]
    for values in ([p["values"][0] for p in params.values()], [p["values"][-1] for p in params.values()]):
        sampled = create_sweep_command_args({"args": {k: {"value": v} for k, v in zip(params, values)}})["args_no_hyphens"]
        typed = validate(compose([*fixed, *sampled]))
        chosen = dict(zip(params, values))
        assert typed.n_noises == chosen["n_noises"] and typed.prompts.items[chosen["prompt_index"]] == typed.prompt


@pytest.mark.slow
def test_submitit_local_sweep_of_strategies_n_noises_and_prompts(tmp_path):
    """The 2 x 2 x 2 sweep with every job in its own submitit process (8 processes: about 2 minutes on 2 cores)."""
    folder = tmp_path / "sweep"
    r = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=4", *BASE, "logger=none", "prompts=analytic",
                 "strategy=none,min_max", "n_noises=4,8", "steps=2", "output.checkpoint_every=0", f"hydra.sweep.dir={folder}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _job_dirs(folder) == JOBS
    metrics = [_metrics(folder / j) for j in JOBS]
    assert all(m["status"] == "complete" for m in metrics) and len({m["pid"] for m in metrics}) == 8
    assert [m["prompt"] for m in metrics] == [PROMPTS[j.split("prompt=")[1].split(",")[0]] for j in JOBS]
