"""GPU (marker ``gpu``): every 2D loss mode, 20 steps on the full-size SD2.1-base architecture with random weights.

Each case runs through the user's config path (``prior.pretrained=<folder>``, bf16 prior, ``trainer=gpu``) on a
pipeline folder built by ``rewardsds.testing.build_sd_pipeline(folder, "sd21_base")``, and checks that the run
completes with finite gradients in every step. Per case it records the per-step wall times (from the checkpoint),
their median, the first (warm-up) step, the peak CUDA memory of the run and the model evaluations per step, writes
them to ``$REWARDSDS_GPU_REPORT`` (default: ``<pytest tmp>/losses2d_gpu.json``) and prints the JSON.

    python -m pytest -m gpu tests/test_losses2d_gpu.py -s -ra

Every case scores with a full-size ImageReward with random weights (the paper experiments' reward; in the plain
cases it only scores the final image). Set ``REWARDSDS_SD21_RANDOM=/some/folder`` to build the ~5 GB random
pipeline once and reuse it across sessions.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose, gpu_test

STEPS = 20
PROMPT = "a photo of a red fox"
COMMON = ["trainer=gpu", "prior.dtype=bf16", "prior.compile=false", "logger=none", "output.video=false", "output.image_every=0",
          "output.checkpoint_every=0", f"steps={STEPS}", f"prompt={PROMPT}"]
#: name -> overrides; the *_paper cases are the paper settings (N = 10, 15-step lookahead; editing N = 5, one step)
CASES = {
    "sds": ["loss=sds", "strategy=none", "n_noises=1"],
    "vsd": ["loss=vsd", "strategy=none", "n_noises=1"],
    "reward_vsd_paper": ["experiment=paper_vsd_2d"],
    "sds_bridge": ["loss=sds_bridge", "strategy=none", "n_noises=1"],  # stage two from step 10
    "reward_bridge_paper": ["experiment=paper_bridge_2d"],
    "dds": ["experiment=edit_dds", "strategy=none", "n_noises=1"],
    "reward_dds_paper": ["experiment=edit_dds"],
}
REPORT: dict = {}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A smooth 512x512 test image (the DDS source)."""
    from PIL import Image

    yy, xx = np.mgrid[0:512, 0:512] / 511.0
    img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy)], -1)
    path = tmp_path_factory.mktemp("dds") / "photo.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> Path:
    return Path(os.environ.get("REWARDSDS_GPU_REPORT") or tmp_path_factory.mktemp("report") / "losses2d_gpu.json")


@gpu_test
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_loss_mode_20_steps_full_size(case, sd21_random, image_reward_random, photo, report_path, tmp_path):
    from rewardsds.train import train

    overrides = [*CASES[case], f"prior.pretrained={sd21_random}", *image_reward_random, *COMMON]
    if "edit_dds" in " ".join(overrides):
        overrides += [f"loss.image={photo}", "loss.source_prompt=a colourful gradient"]
    torch.cuda.empty_cache()
    m = train(compose(overrides), tmp_path / case)
    assert m["status"] == "complete" and m["iterations"] == STEPS
    assert m["nonfinite_steps"] == 0, m["nonfinite_steps"]
    ckpt_path = tmp_path / case / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    times = [float(x) for x in ckpt["rewardsds"]["step_times"]]
    assert len(times) == STEPS and all(np.isfinite(times))
    state = ckpt["state_dict"]
    assert torch.isfinite(state["representation.latents"]).all()
    if "vsd" in case:
        # the LoRA trained, and the checkpoint holds LoRA + camera embedding + latents only (no frozen UNet copy)
        assert all(k == "representation.latents" or k.startswith(("loss_mode.model.lora.", "loss_mode.model.camera_embedding."))
                   for k in state)
        assert any(state[k].abs().sum() > 0 for k in state if ".B.default" in k)
        assert ckpt_path.stat().st_size < 64 * 2**20, ckpt_path.stat().st_size
    if "dds" in case:
        assert (tmp_path / case / "final" / "before_after.png").is_file()
    REPORT[case] = {
        "overrides": CASES[case],
        "step_time_median_s": statistics.median(times),
        "step_time_median_after_first_s": statistics.median(times[1:]),
        "step_time_first_s": times[0],
        "step_times_s": times,
        "peak_memory_gb": m["peak_memory_gb"],
        "evals_per_step_mean": m["evals_per_step_mean"],
        "wall_time_s": m["wall_time_s"],
    }
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": STEPS, "dtype": "bf16",
           "model": "SD2.1-base architecture, random weights", "cases": REPORT}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(out, indent=2))
    summary = {k: {kk: v[kk] for kk in ("step_time_median_after_first_s", "peak_memory_gb", "evals_per_step_mean")} for k, v in REPORT.items()}
    print(f"\nLOSSES2D_GPU {report_path}\n{json.dumps(summary, indent=2)}")
