"""Non-finite gradients: skipped without a host sync where the optimiser can do it on the device, counted
exactly, and the run aborts past ``max_nonfinite_steps`` with the same message either way."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import compose, gpu_test, run_cli
from rewardsds.config import validate
from rewardsds.errors import TrainingAborted
from rewardsds.system import DistillationSystem
from rewardsds.train import build_components

ANALYTIC = ["experiment=analytic", "logger=none", "steps=10", "seed=3"]


def make_system(tmp_path, extra=(), device="cpu"):
    cfg = compose([*ANALYTIC, *extra])
    typed = validate(cfg)
    parts = build_components(typed)
    system = DistillationSystem(typed, run_dir=tmp_path, **parts)
    system.prepare(torch.device(device))
    system.to(device)
    return system, system.configure_optimizers()


def poison_next_gradient(system):
    """Make the next backward produce NaN in the latents' gradient (a hook, so the step itself is unchanged)."""
    lat = system.representation.latents
    handle = lat.register_hook(lambda g: torch.full_like(g, float("nan")))
    return handle


def snapshot(system, opt):
    lat = system.representation.latents.detach().clone()
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[system.representation.latents].items()}
    return lat, state


def test_latent_image_skips_on_the_device_with_fused_adamw(tmp_path):
    system, opt = make_system(tmp_path)
    assert system.skip_on_device and opt.defaults["fused"] is True
    system.run_step(0, opt)
    before, state = snapshot(system, opt)
    handle = poison_next_gradient(system)
    res = system.run_step(1, opt)
    handle.remove()
    assert not torch.isfinite(res.grad_norm)
    # counted on the device only: the step did not read the flag back
    assert system._nonfinite_host == 0 and system._nonfinite_device is not None
    # the update was skipped entirely: parameters, both moments and the step count are untouched
    after, state_after = snapshot(system, opt)
    assert torch.equal(before, after)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(state[k], state_after[k]), k
    assert system.nonfinite_steps == 1  # reading folds the device count
    assert system._nonfinite_device is None
    system.run_step(2, opt)  # a finite step updates again
    assert not torch.equal(after, system.representation.latents.detach())
    assert float(opt.state[system.representation.latents]["step"]) == 2.0


def test_device_skip_matches_the_host_checked_path(tmp_path):
    """The fused, sync-free path computes the same trajectory as the foreach AdamW with a host check."""
    fast, opt_fast = make_system(tmp_path / "a")
    slow, _ = make_system(tmp_path / "b")
    slow.skip_on_device = False
    groups = slow.representation.param_groups() + slow.loss_mode.param_groups()
    opt_slow = torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=0.0)
    for step in range(6):
        handles = [poison_next_gradient(s) for s in (fast, slow)] if step == 3 else []
        fast.run_step(step, opt_fast)
        slow.run_step(step, opt_slow)
        for h in handles:
            h.remove()
    torch.testing.assert_close(fast.representation.latents, slow.representation.latents, rtol=1e-5, atol=1e-6)
    assert fast.nonfinite_steps == slow.nonfinite_steps == 1


def test_abort_is_raised_when_the_count_is_read(tmp_path):
    system, opt = make_system(tmp_path, ["max_nonfinite_steps=1"])
    for step in range(2):
        h = poison_next_gradient(system)
        system.run_step(step, opt)
        h.remove()
    with pytest.raises(TrainingAborted, match=r"2 steps had a non-finite gradient .*max_nonfinite_steps = 1.*raise max_nonfinite_steps"):
        system.check_nonfinite(1)


def test_representations_with_host_post_step_keep_the_host_check(tmp_path):
    from rewardsds.representations.base import Representation
    from rewardsds.representations.gaussians import Gaussians
    from rewardsds.representations.latent_image import LatentImage
    from rewardsds.representations.nerf import NeRF

    assert Gaussians.host_post_step and NeRF.host_post_step
    assert not LatentImage.host_post_step and not Representation.host_post_step


def test_cli_aborts_at_the_logging_interval(tmp_path):
    """With the count read every 5 steps, a run of NaN gradients stops at the first read past the limit."""
    # latents of ~1e30 overflow fp32 when squared: NaN rewards, NaN softmax weights, a NaN gradient every step
    r = run_cli(["experiment=analytic", "steps=20", "representation.init_std=1e30", "strategy=weighted", "max_nonfinite_steps=2", "trainer.log_every_n_steps=5",
                 "output.checkpoint_every=1", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "steps 0..4: 5 non-finite gradient(s)" in r.stdout + r.stderr
    assert "5 steps had a non-finite gradient or reward (max_nonfinite_steps = 2)" in r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and "TrainingAborted" in m["error"]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["rewardsds"]["nonfinite_steps"] >= 3  # the checkpoints read the exact count


def test_every_step_has_a_time_in_the_final_checkpoint(tmp_path):
    """Step time is start-to-start (the step itself never waits for the GPU); the last step is closed before
    the final checkpoint, so a run of k steps records k times."""
    from rewardsds.train import train

    m = train(compose([*ANALYTIC, "trainer=cpu", "steps=5", "output.image_every=0", "output.video=false", "output.checkpoint_every=0"]),
              tmp_path / "run")
    times = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["rewardsds"]["step_times"]
    assert len(times) == 5 and all(t > 0 for t in times)
    assert m["step_time_median_s"] == pytest.approx(sorted(times)[2])


STEPS = {
    "sds_analytic": ["strategy=none", "n_noises=1"],
    "rewardsds_analytic": ["strategy=min_max", "n_noises=4", "lookahead.steps=4"],
    "rewardsds_pruned_analytic": ["strategy=min_max", "n_noises=4", "lookahead.steps=4", "lookahead.prune_to=2"],
    "best_analytic": ["strategy=best", "n_noises=4", "lookahead.steps=0"],
    "weighted_analytic": ["strategy=weighted", "n_noises=4", "lookahead.steps=0"],
    "sds_tiny_sd": ["prior=sd", "prior.compile=false", "strategy=none", "n_noises=1", "prompt=a red square"],
    "rewardsds_tiny_sd": ["prior=sd", "prior.compile=false", "strategy=min_max", "n_noises=4", "lookahead.steps=4", "prompt=a red square"],
    # the CUDA default: the UNet compiled into CUDA graphs (captured during the warm-up step)
    "rewardsds_tiny_sd_compiled": ["prior=sd", "strategy=min_max", "n_noises=4", "lookahead.steps=4", "prompt=a red square"],
    # two chunks of 2 candidates, each decoded and scored on a second stream beside the next chunk's lookahead
    "rewardsds_tiny_sd_compiled_overlap": ["prior=sd", "strategy=min_max", "n_noises=4", "lookahead.steps=4", "prompt=a red square",
                                           "chunk_size=4", "lookahead.overlap=true"],
}


@gpu_test
@pytest.mark.parametrize("case", list(STEPS))
def test_a_step_never_waits_for_the_gpu(tmp_path, tiny_sd, case):
    """The whole training step (render, candidates, lookahead, reward, weights, backward, optimiser) is queued
    without one device-to-host sync: CUDA's sync debugging turns any into an error."""
    extra = [*STEPS[case], *([f"prior.pretrained={tiny_sd}"] if "tiny_sd" in case else [])]
    system, opt = make_system(tmp_path, extra, device="cuda")
    assert system.skip_on_device
    warm = 2 if "compiled" in case else 1  # compiled: Dynamo, Inductor and the CUDA-graph capture happen here
    for step in range(warm):
        system.run_step(step, opt)  # warm-up: lazy CUDA init, the chunk size read from free memory
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = system.run_step(warm, opt)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(res.grad_norm) and system.nonfinite_steps == 0


def test_one_candidate_is_not_ranked(tmp_path):
    """A reward-weighted strategy with n_noises=1 has nothing to rank: the step makes the CFG pair at t only (no
    lookahead, decode or reward), as the run's expected evaluations say, and the weight is 1."""
    system, opt = make_system(tmp_path, ["n_noises=1", "strategy=weighted"])
    res = system.run_step(0, opt)
    assert res.ctx.ranked is False and res.loss.candidates.evals == 2 and res.loss.candidates.rewards is None
    assert res.loss.weights.flatten().tolist() == [1.0]
    ranked, _ = make_system(tmp_path / "n2", ["n_noises=2", "strategy=weighted"])
    assert ranked.run_step(0, ranked.configure_optimizers()).loss.candidates.evals > 2 * 2  # two candidates do look ahead
