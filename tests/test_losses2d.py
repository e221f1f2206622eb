"""The 2D loss modes (VSD, SDS-Bridge, DDS and their reward-weighted forms) against hand-written references.

Every gradient test computes the expected field with plain prior calls, candidate by candidate, and compares
it with dL/dz of the mode (the detached-target trick gives dL/dz = sum_i w_i g_i / b).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, compose
from rewardsds.rng import candidate_noise
from rewardsds.config import validate
from rewardsds.errors import ConfigError, ModelLoadError
from rewardsds.losses.bridge import SDSBridgeLoss
from rewardsds.losses.dds import DDSLoss, predict_with_branch, renoise
from rewardsds.losses.vsd import VSDLoss, lora_training_draws
from rewardsds.priors.base import TextCond, guide
from rewardsds.rewards.analytic import AnalyticReward
from rewardsds.rewards.config import AnalyticRewardConfig
from rewardsds.strategies import MinMaxStrategy, NoStrategy
from rewardsds.losses.config import DDSLossConfig, SDSBridgeLossConfig, VSDLossConfig
from rewardsds.strategies.config import MinMaxStrategyConfig
from step_helpers import make_context, make_engine, step_loss

PROMPT = "the cat"
CPU = torch.device("cpu")


def _ctx(prior, z, t, n, strategy, **kw):
    return make_context(prior, z, t, n, strategy, prompt=kw.pop("prompt", PROMPT), **kw)


def _write_png(path: Path, h: int = 16, w: int = 16, seed: int = 0) -> Path:
    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


# ------------------------------------------------------------------ candidate engine: a second branch at the same noises
def test_second_branch_shares_noise_t_and_skips_zero_weights(tiny_sd_prior):
    p = tiny_sd_prior
    eng = make_engine(p, None, seed=2)
    z = torch.randn(2, 4, 8, 8)
    cands = eng.draw(z, 400, 3, step=1)
    src = torch.randn(1, 4, 8, 8)
    x = renoise(p, cands, src)
    for i in range(3):
        assert torch.allclose(x[2 * i : 2 * i + 2], p.add_noise(src.expand(2, -1, -1, -1), cands.noise[i], 400))
    cands.weights = torch.tensor([0.45, 0.0, -0.05])
    idx = cands.active()
    assert idx.tolist() == [0, 2] and cands.flat_index(idx).tolist() == [0, 1, 4, 5]
    assert torch.equal(renoise(p, cands, src, idx), x[[0, 1, 4, 5]])
    text = p.text_cond(["a dog"] * 2, "")
    tgt_text = p.text_cond(["a cat"] * 2, "")
    evals = cands.evals
    (ct, ut), (c, u) = predict_with_branch(eng, cands, tgt_text, src, text, idx=idx)
    rc, ru = p.predict_noise_pair(x[[0, 1, 4, 5]], 400, p.text_cond(["a dog"] * 4, ""))
    assert torch.allclose(c, rc, atol=1e-5) and torch.allclose(u, ru, atol=1e-5)
    rct, rut = p.predict_noise_pair(cands.noisy[[0, 1, 4, 5]], 400, p.text_cond(["a cat"] * 4, ""))
    assert torch.allclose(ct, rct, atol=1e-5) and torch.allclose(ut, rut, atol=1e-5)
    assert cands.evals - evals == 4 * 4  # both branches of 2 candidates x 2 views, each a CFG pair
    full = cands.scatter(c, idx)
    assert full.shape == (6, 4, 8, 8) and torch.equal(full[[2, 3]], torch.zeros(2, 4, 8, 8)) and torch.equal(full[[4, 5]], c[2:])
    cands.weights = torch.tensor([[0.0, 0.0], [0.0, 0.3], [0.2, 0.0]])  # per view: a candidate is active if any view is
    assert cands.active().tolist() == [1, 2]
    with pytest.raises(ValueError, match="do not match"):
        renoise(p, cands, torch.randn(3, 4, 8, 8))


@pytest.mark.parametrize("prior_name", ["tiny_sd_prior", "analytic_prior"])
@pytest.mark.parametrize("chunk", [0, 4, 12])
def test_equal_branches_give_bit_identical_predictions(prior_name, chunk, request):
    """The two branches of a step are predicted in the same calls, so equal latents and text give equal outputs.

    Separate calls of different batch sizes differ by rounding, which DDS with Adam (eps 1e-15) turns into
    full-size steps on an image that should not move.
    """
    p = request.getfixturevalue(prior_name)
    c_, s_ = p.latent_channels, p.latent_size
    eng = make_engine(p, None, seed=3, chunk_size=chunk)
    z = torch.randn(1, c_, s_, s_, generator=torch.Generator().manual_seed(0))
    cands = eng.draw(z, 500, 5, step=2)
    text = p.text_cond(["a blue disk"], "")
    for idx in (None, torch.tensor([0, 2, 3, 4])):
        (ct, ut), (cs, us) = predict_with_branch(eng, cands, text, z, p.text_cond(["a blue disk"], ""), idx=idx)
        assert torch.equal(ct, cs) and torch.equal(ut, us)
        assert torch.equal(guide(ct, ut, 7.5) - guide(cs, us, 7.5), torch.zeros_like(ct))


# ------------------------------------------------------------------ VSD
@pytest.fixture
def vsd(tiny_sd_prior):
    """A VSD mode whose LoRA is perturbed so that it changes the copy's prediction (B starts at zero)."""
    loss = VSDLoss(VSDLossConfig(guidance_scale=7.5))
    loss.setup(tiny_sd_prior, None, CPU, 10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, q in loss.model.named_parameters():
            if ".B." in name:
                q.copy_(torch.randn(q.shape, generator=g) * 0.05)
    return loss


def _lora_eps(loss, prior, x_t, t, prompt=PROMPT):
    m = x_t.shape[0]
    with torch.no_grad():
        return loss.model.base(x_t, torch.full((m,), t), encoder_hidden_states=prior.encode_text([prompt] * m),
                               class_labels=torch.zeros(m, 16)).sample.float()


def test_vsd_gradient_and_lora_loss_by_hand(tiny_sd_prior, vsd):
    """N = 1: dL/dz = (1 - abar_t)(eps_cfg - eps_lora) / b; L_lora = mse(pred_lora(x_t'), eps'); neither leaks."""
    p = tiny_sd_prior
    # the LoRA's base is a copy: no tensor shared with the prior, and the prior's UNet got no adapter
    assert not {q.data_ptr() for q in p.unet.parameters()} & {q.data_ptr() for q in vsd.model.base.parameters()}
    assert not any("lora" in name for name, _ in p.unet.named_modules())
    eng = make_engine(p, None, seed=9)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    t, step = 321, 3
    out = step_loss(vsd, p, eng, z, t, 1, NoStrategy(), step=step)
    (out.weights[:, None] * out.candidate_losses).sum().backward()
    lora_params = vsd.model.lora_parameters()
    assert all(q.grad is None for q in lora_params)  # the VSD field never reaches the LoRA

    noise = candidate_noise(1, z.shape, 9, step, "cpu")[0]
    x_t = p.add_noise(z.detach(), noise, t)
    c, u = p.predict_noise_pair(x_t, t, p.text_cond([PROMPT] * 2, ""))
    eps_lora = _lora_eps(vsd, p, x_t, t)
    assert (eps_lora - c).abs().max() > 1e-3  # the LoRA copy predicts something else than the prior
    expected = (1 - p.alphas_cumprod[t]) * (guide(c, u, 7.5) - eps_lora) / 2
    assert torch.allclose(z.grad, expected, atol=1e-5, rtol=1e-4)

    # the LoRA's diffusion loss on the detached latents, from the documented per-step draws
    tl, eps, drop = lora_training_draws(9, step, 2, (4, 8, 8), 1000, 0.1, "cpu")
    xl = p.add_noise(z.detach(), eps, tl)
    pred = vsd.model.base(xl, tl, encoder_hidden_states=p.encode_text([PROMPT] * 2), class_labels=torch.zeros(2, 16)).sample
    assert torch.allclose(out.extra["loss_lora"], torch.nn.functional.mse_loss(pred, eps), rtol=1e-5)
    grad_z = z.grad.clone()
    out.extra["loss_lora"].backward()
    assert torch.equal(z.grad, grad_z)  # the LoRA loss never reaches the scene
    trained = {k: q for k, q in vsd.model.named_parameters() if ".A." in k or ".B." in k or "linear_2" in k}
    assert len(trained) == 2 * 32 + 2 and all(q.grad is not None and q.grad.abs().sum() > 0 for q in trained.values())
    assert float(out.logs["lora_evals"]) == 2


def test_vsd_beside_an_fp16_prior_trains_its_lora_through_a_bf16_copy(tiny_sd):
    """prior.dtype=fp16 (auto on CUDA for SD): the prior's predictions stay fp16, the LoRA's base UNet is bf16 and its
    loss gives finite, non-zero fp32 gradients to the LoRA (fp16's range underflows such a backward pass)."""
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior

    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, dtype="fp16")).to(CPU)
    loss = VSDLoss(VSDLossConfig(guidance_scale=7.5))
    loss.setup(p, None, CPU, 10)
    assert loss.model.dtype == torch.bfloat16 and next(p.unet.parameters()).dtype == torch.float16
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = step_loss(loss, p, make_engine(p, None, seed=9), z, 321, 1, NoStrategy(), step=3)
    (out.weights[:, None] * out.candidate_losses).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    out.extra["loss_lora"].backward()
    grads = [q.grad for q in loss.model.lora_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_reward_vsd_evaluates_the_lora_only_where_weights_are_nonzero(tiny_sd_prior, vsd):
    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    eng = make_engine(p, reward, steps=0, seed=4)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    t, n = 600, 6
    out = step_loss(vsd, p, eng, z, t, n, MinMaxStrategy(MinMaxStrategyConfig()))
    (out.weights[:, None] * out.candidate_losses).sum().backward()
    w = out.weights
    assert int((w != 0).sum()) == 4 and float(out.logs["lora_evals"]) == 4
    noise = candidate_noise(n, z.shape, 4, 3, "cpu")
    text = p.text_cond([PROMPT], "")
    expected = torch.zeros_like(z)
    for i in range(n):
        if w[i] == 0:
            continue
        x_t = p.add_noise(z.detach(), noise[i], t)
        c, u = p.predict_noise_pair(x_t, t, text)
        expected += w[i] * (1 - p.alphas_cumprod[t]) * (guide(c, u, 7.5) - _lora_eps(vsd, p, x_t, t))
    assert torch.allclose(z.grad, expected, atol=1e-5, rtol=1e-4)


def test_vsd_separate_v_prediction_lora_base(tiny_sd_prior, tiny_sd_v, tmp_path):
    """loss.lora_base: the LoRA's v-prediction is converted to eps, and the LoRA learns the v target."""
    p = tiny_sd_prior
    loss = VSDLoss(VSDLossConfig(lora_base=str(tiny_sd_v)))
    loss.setup(p, None, CPU, 10)
    assert loss.model.prediction_type == "v_prediction"
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 700])
    text, cam = p.encode_text([PROMPT] * 2), torch.zeros(2, 16)
    v = loss.model.raw(x, t, text, cam)
    a = p.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(loss.model.eps(x, t, text, cam, p.alphas_cumprod), a.sqrt() * v + (1 - a).sqrt() * x, atol=1e-6)
    z = torch.randn(1, 4, 8, 8)
    loss.setup(p, None, CPU, 10, engine=make_engine(p, None, seed=1))
    ctx = _ctx(p, z, 500, 1, NoStrategy(), step=7)
    tl, eps, drop = lora_training_draws(1, 7, 1, (4, 8, 8), 1000, 0.1, "cpu")
    al, sl = p.alpha_sigma(tl)
    pred = loss.model.raw(p.add_noise(z, eps, tl), tl, p.encode_text([PROMPT]), torch.zeros(1, 16))
    assert torch.allclose(loss.lora_loss(ctx, p.encode_text([PROMPT]), torch.zeros(1, 16)),
                          torch.nn.functional.mse_loss(pred, al * eps - sl * z), rtol=1e-5)
    with pytest.raises(ModelLoadError, match="loss.lora_base"):
        VSDLoss(VSDLossConfig(lora_base=str(tmp_path / "missing"))).setup(p, None, CPU, 10)


def test_vsd_on_the_analytic_prior_names_the_fix(tmp_path):
    from rewardsds.train import train

    with pytest.raises(ConfigError) as err:
        train(compose(["experiment=analytic", "loss=vsd", "steps=1", *FAST]), tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith("loss = 'vsd'") and "'analytic'" in msg and "prior=sd" in msg


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt, weights_only=False)["state_dict"]


def test_vsd_resume_reproduces_an_uninterrupted_run_and_saves_only_lora(tiny_sd, tmp_path):
    from rewardsds.train import train

    base = [f"prior.pretrained={tiny_sd}", "loss=vsd", f"prompt={PROMPT}", "seed=3", "n_noises=4", "reward=analytic",
            "reward.image_size=16", "lookahead.steps=0", *FAST, "output.checkpoint_every=2"]
    train(compose([*base, "steps=3"]), tmp_path / "full")
    train(compose([*base, "steps=2"]), tmp_path / "part")
    resumed = train(compose([*base, "steps=3", f"resume={tmp_path / 'part'}"]), tmp_path / "other")
    assert resumed["iterations"] == 3
    full, part = _state(tmp_path / "full/checkpoints/last.ckpt"), _state(tmp_path / "part/checkpoints/last.ckpt")
    assert list(full) == list(part)
    for key in full:
        assert torch.equal(full[key], part[key]), key
    # only the scene, the LoRA layers and the camera embedding are saved; the frozen copy is not
    lora = [k for k in full if k.startswith("loss_mode.model.lora.")]
    cam = [k for k in full if k.startswith("loss_mode.model.camera_embedding.")]
    assert set(full) == {"representation.latents", *lora, *cam}
    assert len(cam) == 4 and len(lora) == 2 * 32  # A and B of q, k, v, out in 8 attention layers of the tiny UNet
    assert all(k.endswith((".A.default.weight", ".B.default.weight")) for k in lora)
    assert any(full[k].abs().sum() > 0 for k in lora if ".B." in k)  # the LoRA trained (B starts at zero)


# ------------------------------------------------------------------ SDS-Bridge
def test_bridge_stage_one_is_sds_and_stage_two_is_the_bridge(tiny_sd_prior):
    p = tiny_sd_prior
    loss = SDSBridgeLoss(SDSBridgeLossConfig(guidance_scale=40.0, stage_two_start=0.5))
    eng = make_engine(p, None, seed=5)
    t, step = 450, 2
    ac = p.alphas_cumprod[t]
    noise = candidate_noise(1, (2, 4, 8, 8), 5, step, "cpu")[0]
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    x_t = p.add_noise(z0, noise, t)

    z = z0.clone().requires_grad_(True)
    out = step_loss(loss, p, eng, z, t, 1, NoStrategy(), step=step, progress=0.49)
    out.total().backward()
    c, u = p.predict_noise_pair(x_t, t, p.text_cond([PROMPT] * 2, ""))
    assert float(out.logs["bridge_stage"]) == 1
    assert torch.allclose(z.grad, (1 - ac) * (guide(c, u, 40.0) - noise) / 2, atol=1e-5, rtol=1e-4)

    z = z0.clone().requires_grad_(True)
    out = step_loss(loss, p, eng, z, t, 1, NoStrategy(), step=step, progress=0.5)
    out.total().backward()
    tgt = p.predict_noise(x_t, torch.full((2,), t), p.encode_text([PROMPT + loss.cfg.target_suffix] * 2))
    src = p.predict_noise(x_t, torch.full((2,), t), p.encode_text([PROMPT + loss.cfg.source_suffix] * 2))
    assert float(out.logs["bridge_stage"]) == 2
    assert (tgt - src).abs().max() > 1e-4
    assert torch.allclose(z.grad, (1 - ac) * 40.0 * (tgt - src) / 2, atol=1e-5, rtol=1e-4)


def test_reward_bridge_lookahead_uses_target_and_source_prompts(tiny_sd_prior):
    """Stage two ranks candidates by the lookahead with (y + m_tgt) as cond and (y + m_src) as uncond, scored on y."""
    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    eng = make_engine(p, reward, steps=1, guidance=7.5, seed=6)
    loss = SDSBridgeLoss(SDSBridgeLossConfig(stage_two_start=0.0))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    t, n = 700, 4
    out = step_loss(loss, p, eng, z, t, n, MinMaxStrategy(MinMaxStrategyConfig()), step=1, progress=0.0)
    ref = eng.draw(z, t, n, step=1)
    bridge = TextCond(p.encode_text([PROMPT + loss.cfg.target_suffix]), p.encode_text([PROMPT + loss.cfg.source_suffix]))
    expected = reward(p.decode_latents(eng.lookahead(ref, bridge)), [PROMPT] * n)
    plain = reward(p.decode_latents(eng.lookahead(ref, p.text_cond([PROMPT], ""))), [PROMPT] * n)
    assert not torch.allclose(expected, plain)
    assert torch.allclose(out.candidates.rewards, expected, atol=1e-6)
    assert torch.equal(out.weights, MinMaxStrategy(MinMaxStrategyConfig())(expected))


# ------------------------------------------------------------------ DDS
def _dds(prior, tmp_path, source_prompt="a dog"):
    loss = DDSLoss(DDSLossConfig(image=str(_write_png(tmp_path / "in.png")), source_prompt=source_prompt))
    loss.setup(prior, None, CPU, 10)
    return loss


def test_dds_and_reward_dds_gradients_by_hand(tiny_sd_prior, tmp_path):
    """g_i = eps_cfg(z_t^i; y_tgt) - eps_cfg(z_src_t^i; y_src) with one noise per candidate; the same weights on both."""
    p = tiny_sd_prior
    loss = _dds(p, tmp_path)
    src = loss.source_latents
    assert src.shape == (1, 4, 8, 8)
    z0 = src + 0.3 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    for strategy, n in ((NoStrategy(), 1), (MinMaxStrategy(MinMaxStrategyConfig()), 5)):
        eng = make_engine(p, reward, steps=0, seed=7)
        z = z0.clone().requires_grad_(True)
        out = step_loss(loss, p, eng, z, 300, n, strategy, step=4)
        out.total().backward()
        noise = candidate_noise(n, z.shape, 7, 4, "cpu")
        expected = torch.zeros_like(z)
        for i in range(n):
            if out.weights[i] == 0:
                continue
            c, u = p.predict_noise_pair(p.add_noise(z0, noise[i], 300), 300, p.text_cond([PROMPT], ""))
            cs, us = p.predict_noise_pair(p.add_noise(src, noise[i], 300), 300, p.text_cond(["a dog"], ""))
            expected += out.weights[i] * (guide(c, u, 7.5) - guide(cs, us, 7.5))
        assert torch.allclose(z.grad, expected, atol=1e-5, rtol=1e-4), strategy
        assert float(out.logs["dds_source_evals"]) == 2 * int((out.weights != 0).sum())
    assert int((out.weights != 0).sum()) == 4  # min_max: the source branch ran for the 4 weighted candidates only


def _edit(tmp_path, name, source_prompt, extra=()):
    from rewardsds.train import train

    img = _write_png(tmp_path / "photo.png", 20, 20, seed=1)
    cfg = compose(["experiment=edit_dds", "prior=analytic", "reward=analytic", "prompt=a blue disk", f"loss.image={img}",
                   f"loss.source_prompt={source_prompt}", "steps=4", "trainer=cpu", *FAST, "output.checkpoint_every=4", *extra])
    m = train(cfg, tmp_path / name)
    return m, _state(tmp_path / name / "checkpoints/last.ckpt")


def test_dds_leaves_the_image_unchanged_when_the_prompts_agree(tmp_path):
    with pytest.warns(UserWarning, match="resized to 16x16"):
        m, state = _edit(tmp_path, "same", "a blue disk")
    assert m["status"] == "complete"
    assert torch.equal(state["representation.latents"], state["loss_mode.source_latents"])
    assert (tmp_path / "same" / "final" / "before_after.png").is_file()
    with pytest.warns(UserWarning, match="resized to 16x16"):
        _, moved = _edit(tmp_path, "edit", "a red disk")
    assert (moved["representation.latents"] - moved["loss_mode.source_latents"]).abs().max() > 1e-3


# ------------------------------------------------------------------ the analytic prior, end to end
def test_bridge_runs_both_stages_on_the_analytic_prior(tmp_path):
    from rewardsds.train import train

    m = train(compose(["experiment=analytic", "loss=sds_bridge", "steps=4", "n_noises=4", *FAST]), tmp_path / "run")
    assert m["status"] == "complete" and m["iterations"] == 4 and np.isfinite(m["final/reward"])


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "overrides, key, fix",
    [
        (["loss=dds", "loss.source_prompt=a cat"], "loss.image", "loss.image=/path"),
        (["experiment=edit_dds", "loss.source_prompt=a cat"], "loss.image", "loss.image=/path"),
        (["experiment=edit_dds", "loss.image=x.png"], "loss.source_prompt", "loss.source_prompt="),
        (["loss=dds", "loss.image=x.png", "loss.source_prompt=a cat"], "representation.init", "representation.init=image"),
        (["experiment=edit_dds", "loss.image=x.png", "loss.source_prompt=a cat", "representation.init_image=y.png"],
         "representation.init_image", "representation.init_image=x.png"),
        (["experiment=edit_dds", "loss.image=x.png", "loss.source_prompt=a cat", "prior.encode_sample=true"],
         "prior.encode_sample", "encode_sample=false"),
        (["loss=sds_bridge", "loss.stage_two_start=1.5"], "loss.stage_two_start", "use 0.5"),
        (["loss=vsd", "loss.camera_dropout=2"], "loss.camera_dropout", "use 0.1"),
        (["loss=vsd", "loss.lora_rank=0"], "loss.lora_rank", "use 4"),
    ],
)
def test_config_errors_name_key_value_fix(overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        validate(compose(["prompt=a cat", *overrides]))
    msg = str(err.value)
    assert msg.startswith(key + " =") and "Fix:" in msg and fix in msg, msg


def test_dds_image_errors(analytic_prior, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ConfigError, match=r"loss.image = .*could not be read"):
        DDSLoss(DDSLossConfig(image=str(bad), source_prompt="a")).setup(analytic_prior, None, CPU, 1)
    with pytest.raises(ConfigError, match=r"loss.image = .*is not a file"):
        DDSLoss(DDSLossConfig(image=str(tmp_path / "nope.png"), source_prompt="a")).setup(analytic_prior, None, CPU, 1)
    with pytest.raises(ConfigError, match=r"loss.image = '3x3'.*too small"):
        DDSLoss(DDSLossConfig(image=str(_write_png(tmp_path / "tiny.png", 3, 3)), source_prompt="a")).setup(analytic_prior, None, CPU, 1)
    wide = DDSLoss(DDSLossConfig(image=str(_write_png(tmp_path / "wide.png", 12, 20)), source_prompt="a"))
    with pytest.warns(UserWarning, match="loss.image: 20x12 image centre-cropped to 12x12"):
        wide.setup(analytic_prior, None, CPU, 1)
    assert wide.source_latents.shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="loss.source_prompt"):
        DDSLoss(DDSLossConfig(image="x.png", source_prompt="  "))
    eng = make_engine(analytic_prior, None)
    z = wide.source_latents.clone().requires_grad_(True)
    with pytest.raises(ConfigError, match="does not support 3D"):
        step_loss(wide, analytic_prior, eng, z, 500, 1, NoStrategy(), camera=torch.eye(4)[None])
