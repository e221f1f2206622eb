"""Text-to-3D through the whole system on the CPU: NeRF and Gaussians on the analytic prior, resume
through densification, MVDream (tiny random weights) with 4-view groups."""


import pytest
import torch

from conftest import FAST, compose

SMALL_NERF = ["representation.num_samples_per_ray=24", "representation.mesh_resolution=24", "representation.mesh_threshold=4.0",
              "representation.texture_size=64"]
SMALL_GS = ["representation=gaussians", "representation.num_points=256"]
COMMON = ["experiment=analytic_3d", "n_noises=4", "lookahead.steps=3", "cameras.eval_resolution=32", "output.eval_views=3",
          "output.turntable_frames=4", "output.video_frames=2", *FAST[:2]]


def _run(tmp_path, name, extra):
    from rewardsds.train import train

    return train(compose([*COMMON, *extra]), tmp_path / name)


@pytest.mark.parametrize("rep", ["nerf", "gaussians"])
def test_end_to_end_on_the_analytic_prior(tmp_path, rep):
    extra = (SMALL_NERF if rep == "nerf" else SMALL_GS) + ["steps=3"]
    m = _run(tmp_path, rep, extra)
    run = tmp_path / rep
    assert m["status"] == "complete" and m["iterations"] == 3
    assert m["eval_views"] == 3 and len(list((run / "eval").glob("view_*.png"))) == 3
    assert (run / "final" / "views.png").is_file() and (run / "turntable.mp4").stat().st_size > 0
    assert (run / "video.mp4").is_file()
    assert -1.0 <= m["final/reward"] <= 0.0
    exported = m.get("exports", [])
    nerf_files = ["mesh.ply", "mesh.obj", "mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png", "mesh.glb"]
    assert exported == ([f"export/{f}" for f in nerf_files] if rep == "nerf" else ["export/gaussians.ply"]), m.get("export_error")
    # 4 candidates x 4 views per step, each a CFG pair at t plus the lookahead calls
    assert m["evals_per_step_mean"] >= 2 * 4 * 4


def test_rewardsds_3d_raises_the_reward_over_steps(tmp_path):
    """A short Gaussians run with RewardSDS towards the blue mode: the eval views' reward improves on the init."""
    from rewardsds.train import train

    base = [*COMMON, *SMALL_GS, "representation.lr_sh0=0.05", "representation.strategy=none"]
    m0 = train(compose([*base, "steps=1", "output.video=false"]), tmp_path / "s1")
    assert not list((tmp_path / "s1").glob("*.mp4"))  # output.video=false: neither video.mp4 nor turntable.mp4
    m = train(compose([*base, "steps=40"]), tmp_path / "s40")
    assert m["final/reward"] > m0["final/reward"] + 0.01, (m0["final/reward"], m["final/reward"])


def test_resume_through_densification_is_exact(tmp_path):
    from rewardsds.train import train

    gs = [*SMALL_GS, "representation.refine_start_step=1", "representation.refine_every=2", "representation.grow_grad2d=1e-9",
          "output.checkpoint_every=2", "output.turntable_frames=0"]
    train(compose([*COMMON, *gs, "steps=6"]), tmp_path / "full")
    train(compose([*COMMON, *gs, "steps=3"]), tmp_path / "part")
    train(compose([*COMMON, *gs, "steps=6", f"resume={tmp_path / 'part'}"]), tmp_path / "ignored")
    a = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    n0 = 256
    assert a["representation.params.means"].shape[0] > n0, "densification did not run"
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


def test_mvdream_nerf_smoke(tmp_path):
    """prior=mvdream (tiny random weights) with 4-view groups on a NeRF, x0-recon loss, RewardSDS."""
    from rewardsds.testing import build_mvdream
    from rewardsds.train import train

    mv, base = build_mvdream(tmp_path / "mv", "tiny")
    m = train(compose([
        "experiment=analytic_3d", "prior=mvdream", f"prior.pretrained={mv}", f"prior.base_model={base}", "prior.local_files_only=true",
        "loss.target=x0_recon", "loss.guidance_scale=50", "lookahead.guidance_scale=50", "lookahead.grid=linspace", "lookahead.steps=3",
        "n_noises=4", "steps=2", "negative_prompt=blurry", "reward.image_size=16", *SMALL_NERF, "cameras.eval_resolution=32",
        "output.eval_views=2", "output.turntable_frames=0", *FAST[:2],
    ]), tmp_path / "run")
    assert m["status"] == "complete" and m["iterations"] == 2
    # 4 candidates x 4 views, CFG pairs: at least the shared call at t per candidate and view
    assert m["evals_per_step_mean"] >= 2 * 4 * 4


def test_mvdream_overlapped_chunks_train_what_the_plain_step_trains(tmp_path):
    """lookahead.overlap with 4-view groups: chunks of 2 candidates (16 UNet inputs per call) look ahead one after
    another, each decoded and scored beside the next; the trained NeRF is the one trained without overlap."""
    from rewardsds.testing import build_mvdream
    from rewardsds.train import train

    mv, base = build_mvdream(tmp_path / "mv", "tiny")
    states, metrics = {}, {}
    for overlap in ("false", "true"):
        metrics[overlap] = train(compose([
            "experiment=analytic_3d", "prior=mvdream", f"prior.pretrained={mv}", f"prior.base_model={base}", "prior.local_files_only=true",
            "loss.target=x0_recon", "loss.guidance_scale=50", "lookahead.guidance_scale=50", "lookahead.grid=linspace", "lookahead.steps=3",
            "n_noises=4", "steps=2", "reward.image_size=16", *SMALL_NERF, "cameras.eval_resolution=32", "output.eval_views=2",
            "output.turntable_frames=0", "output.export_formats=[]", *FAST[:2], "chunk_size=16", f"lookahead.overlap={overlap}",
        ]), tmp_path / overlap)
        states[overlap] = torch.load(tmp_path / overlap / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert metrics["true"]["evals_per_step_mean"] == metrics["false"]["evals_per_step_mean"]
    assert metrics["true"]["final/reward"] == pytest.approx(metrics["false"]["final/reward"], abs=1e-6)
    a, b = states["false"], states["true"]
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor) and a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_multiview_prior_checks():
    from rewardsds.config import validate
    from rewardsds.errors import ConfigError

    with pytest.raises(ConfigError, match="cameras.views_per_object"):
        validate(compose(["experiment=analytic_3d", "prior=mvdream", "cameras=dreamfusion"]))
    with pytest.raises(ConfigError, match="representation"):
        validate(compose(["prompt=a", "prior=mvdream", "representation=latent_image"]))
