"""A sweep over two GPUs at once (hydra/launcher=gpus): the lead runs this on a machine with >= 2 CUDA devices.

    pytest -m gpu tests/test_sweeps_gpu.py

What it checks, from the run folders alone (metrics.json of each job): the 4 jobs ran in 2 joblib worker
processes; each job ran on the CUDA device it locked (device_index == gpu_index); both GPUs were used; two jobs
ran at the same time; no two jobs held the same GPU at the same time.
"""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from rewardsds.eval import timeline

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@pytest.mark.gpu
@two_gpus
def test_two_gpu_sweep_runs_one_job_per_gpu_side_by_side(tmp_path):
    folder = tmp_path / "sweep"
    r = run_cli(["-m", "hydra/launcher=gpus", "gpu_lock.gpus=[0,1]", f"gpu_lock.dir={tmp_path / 'locks'}", "experiment=analytic",
                 "trainer=gpu", "logger=none", "strategy=none,min_max", "n_noises=8,16", "steps=1500", "output.video=false",
                 "output.checkpoint_every=0", f"hydra.sweep.dir={folder}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = timeline.load_jobs(folder)
    assert len(jobs) == 4 and all(j["status"] == "complete" for j in jobs)
    assert all(j["device"] == j["gpu"] for j in jobs)
    assert {j["gpu"] for j in jobs} == {0, 1} and len({j["pid"] for j in jobs}) == 2
    assert timeline.max_concurrency(jobs) == 2 and timeline.conflicts(jobs) == []
