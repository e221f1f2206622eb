"""GPU (marker ``gpu``): the whole loop on CUDA, through the user's config path.

- the tiny SD prior in bf16 on CUDA (a few RewardSDS steps);
- the full-size SD2.1-base architecture (random weights, bf16) running 20 RewardSDS steps (N = 8, 15-step
  lookahead, full-size random ImageReward): time and memory per step;
- occupancy-grid NeRF and gsplat Gaussians, 50 steps each, with the tiny SD prior and with the full-size
  SD2.1-base architecture (DreamFusion-style single views, RewardSDS N = 4);
- 50 steps of mvdream_nerf at 64 px (8 views = 2 groups of 4) with the full-size MVDream architecture;
- 50 steps of dreamdpo_mvdream_nerf (DreamDPO, win and lose per view) with the full-size MVDream architecture, its
  assets exported at the end and again by ``rewardsds export`` from the checkpoint.

Run on a CUDA machine:

    REWARDSDS_GPU_REPORT_DIR=out python -m pytest -m gpu tests/test_system_gpu.py -s -ra

Each test writes ``<REWARDSDS_GPU_REPORT_DIR>/system_<name>.json`` (median step time, peak memory, UNet
evaluations per step, device) and prints it after ``SYSTEM_GPU``. Set ``REWARDSDS_SD21_RANDOM``,
``REWARDSDS_MVDREAM_RANDOM`` and ``REWARDSDS_IMAGE_REWARD_RANDOM`` to folders to build the random models once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import compose, gpu_test

PROMPT = "a photo of a red fox"
GPU = ["trainer=gpu", "prior.dtype=bf16", "prior.compile=false", "logger=none", "output.video=false", "output.image_every=0", "output.checkpoint_every=0",
       f"prompt={PROMPT}"]


def _report(name: str, metrics: dict, extra: dict | None = None) -> dict:
    keys = ("step_time_median_s", "peak_memory_gb", "evals_per_step_mean", "nonfinite_steps", "iterations", "device", "wall_time_s",
            "final/reward", "status")
    rep = {"name": name, **{k: metrics.get(k) for k in keys}, **(extra or {})}
    out = os.environ.get("REWARDSDS_GPU_REPORT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"system_{name}.json").write_text(json.dumps(rep, indent=2))
    print("SYSTEM_GPU", json.dumps(rep))
    return rep


def _run(overrides: list[str], run_dir: Path) -> dict:
    from rewardsds.train import train

    torch.cuda.reset_peak_memory_stats()
    m = train(compose(overrides), run_dir)
    assert m["status"] == "complete" and m["nonfinite_steps"] == 0, m
    assert m["device"].startswith("NVIDIA") or "cuda" in m["device"].lower() or m["device"] != "cpu"
    return m


@gpu_test
def test_tiny_sd_prior_bf16_on_cuda(tiny_sd, tmp_path):
    m = _run([*GPU, f"prior.pretrained={tiny_sd}", "reward=analytic", "reward.image_size=16", "steps=5", "n_noises=4", "lookahead.steps=4"],
             tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"]["representation.latents"].dtype == torch.float32  # the scene stays fp32
    _report("tiny_sd_bf16", m)


@gpu_test
def test_full_sd21_base_rewardsds_20_steps(sd21_random, image_reward_random, tmp_path):
    """paper_2d for 20 steps, and again with lookahead.fp32_below=250: 8 of the 20 timesteps of seed 0 are below 250,
    and each of those makes its call at t again on the fp32 view (2 N more evaluations)."""
    base = [*GPU, "experiment=paper_2d", f"prior.pretrained={sd21_random}", *image_reward_random, "steps=20", "n_noises=8",
            "prior.local_files_only=true"]
    m = _run(base, tmp_path / "run")
    assert m["evals_per_step_mean"] > 2 * 8  # a lookahead ran for the 8 candidates
    _report("sd21_rewardsds_n8_k15_20steps", m, {"n_noises": 8, "lookahead_steps": 15})
    f = _run([*base, "lookahead.fp32_below=250"], tmp_path / "run_fp32")
    assert f["evals_per_step_mean"] == pytest.approx(m["evals_per_step_mean"] + 2 * 8 * 8 / 20)
    _report("sd21_rewardsds_n8_k15_20steps_fp32_below250", f, {"n_noises": 8, "lookahead_steps": 15, "fp32_below": 250})


@gpu_test
def test_full_sd21_base_default_dtype_is_fp16_with_a_bf16_lora(sd21_random, image_reward_random, tmp_path):
    """paper_2d (N = 8) and paper_vsd_2d for 10 steps each with the default prior.dtype on CUDA (eager, to keep the
    call short: compiling is tested on its own): auto is fp16 for the SD prior, VSD's LoRA copy trains in bf16 beside
    it, and no step is non-finite."""
    base = ["trainer=gpu", "logger=none", "output.video=false", "output.image_every=0", "output.checkpoint_every=0", f"prompt={PROMPT}",
            f"prior.pretrained={sd21_random}", "prior.local_files_only=true", "prior.compile=false", *image_reward_random, "steps=10"]
    m = _run([*base, "experiment=paper_2d", "n_noises=8"], tmp_path / "run")
    assert m["prior_dtype"] == "float16" and m["evals_per_step_mean"] > 2 * 8
    _report("sd21_rewardsds_n8_k15_10steps_fp16_default", m, {"n_noises": 8, "lookahead_steps": 15, "prior_dtype": m["prior_dtype"]})
    v = _run([*base, "experiment=paper_vsd_2d"], tmp_path / "vsd")
    assert v["prior_dtype"] == "float16"
    state = torch.load(tmp_path / "vsd" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    lora = [x for k, x in state.items() if "lora" in k.lower() and x.is_floating_point()]
    assert lora and all(x.dtype == torch.float32 and torch.isfinite(x).all() for x in lora)
    _report("sd21_reward_vsd_10steps_fp16_default", v, {"prior_dtype": v["prior_dtype"]})


@gpu_test
@pytest.mark.parametrize("rep", ["nerf", "gaussians"])
@pytest.mark.parametrize("size", ["tiny", "sd21"])
def test_3d_fifty_steps(rep, size, tiny_sd, sd21_random, image_reward_random, tmp_path):
    """DreamFusion-style 3D runs on the SD prior at its default dtype on CUDA (fp16): the renders' gradients pass back
    through the fp16 VAE encoder (as threestudio's SD guidance runs it) without a non-finite step."""
    prior = tiny_sd if size == "tiny" else sd21_random
    rep_overrides = ["representation.estimator=occgrid"] if rep == "nerf" else ["representation.rasterizer=gsplat"]
    default_dtype = [o for o in GPU if not o.startswith("prior.dtype=")]
    m = _run([*default_dtype, f"experiment=dreamfusion_{rep}", f"prior.pretrained={prior}", "prior.local_files_only=true", *image_reward_random, "steps=50",
              "n_noises=4", "lookahead.steps=4", "reward_duration=1.0", "cameras.resolution={start: 64}", "output.eval_views=4",
              "output.turntable_frames=8", "cameras.eval_resolution=256", *rep_overrides], tmp_path / "run")
    assert len(list((tmp_path / "run" / "eval").glob("view_*.png"))) == 4 and m["prior_dtype"] == "float16"
    _report(f"{rep}_{size}_50steps", m, {"representation": rep, "prior": size, "prior_dtype": m["prior_dtype"]})


@gpu_test
@pytest.mark.parametrize("rep", ["nerf", "gaussians"])
def test_mvdream_fifty_steps_full_size(rep, mvdream_random, image_reward_random, tmp_path):
    mv, base = mvdream_random
    m = _run([*GPU, f"experiment=mvdream_{rep}", f"prior.pretrained={mv}", f"prior.base_model={base}", "prior.local_files_only=true",
              *image_reward_random, "steps=50", "output.eval_views=4", "output.turntable_frames=0", "cameras.eval_resolution=256"], tmp_path / "run")
    assert len(list((tmp_path / "run" / "eval").glob("view_*.png"))) == 4
    _report(f"mvdream_{rep}_50steps", m, {"representation": rep})


@gpu_test
def test_dreamdpo_mvdream_nerf_fifty_steps_and_export(mvdream_random, image_reward_random, tmp_path):
    """DreamDPO in 3D (per-view pairs) on the full-size MVDream architecture; the assets at the end of training
    equal the ones ``rewardsds export`` writes from the checkpoint. The threshold is 5: the density blob of a
    50-step NeRF peaks near 10, below the default 25 of long runs."""
    import time

    import numpy as np
    import trimesh

    from rewardsds.export_assets import main

    mv, base = mvdream_random
    run = tmp_path / "run"
    m = _run([*GPU, "experiment=dreamdpo_mvdream_nerf", f"prior.pretrained={mv}", f"prior.base_model={base}", "prior.local_files_only=true",
              *image_reward_random, "loss.threshold=0", "steps=50", "output.eval_views=4", "output.video=true", "output.turntable_frames=8",
              "cameras.eval_resolution=256", "output.checkpoint_every=50", "representation.mesh_threshold=5",
              "representation.texture_size=512"], run)
    files = ["mesh.ply", "mesh.obj", "mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png", "mesh.glb"]
    assert m["exports"] == [f"export/{f}" for f in files], m.get("export_error")
    assert (run / "turntable.mp4").stat().st_size > 0
    start = time.perf_counter()
    assert main([str(run), "--out", str(tmp_path / "again"), "--texture-size", "1024"]) == 0  # every format
    export_s = time.perf_counter() - start
    trained, again = (trimesh.load(p / "mesh.ply", process=False) for p in (run / "export", tmp_path / "again"))
    assert np.array_equal(trained.faces, again.faces) and np.allclose(trained.vertices, again.vertices, atol=1e-5)
    _report("dreamdpo_mvdream_nerf_64px_50steps", m, {"n_noises": 2, "views_per_step": 4, "export_all_formats_s": export_s,
                                                      "mesh_faces": len(again.faces)})
