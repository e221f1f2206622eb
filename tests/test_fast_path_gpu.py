"""GPU (marker ``gpu``): the fast RewardSDS step computes what the plain one computes, at full size.

The fast path (``CandidateEngine`` + ``SDSLoss``: candidates batched with an automatic chunk size, the prediction
at t shared with the lookahead, channels-last, bf16 weights, optionally a ``torch.compile``-d UNet replaying CUDA
graphs) is compared with :func:`rewardsds.reference.plain_rewardsds_step` (candidates one by one, fp32, the
reward's PIL preprocessing) on the full-size SD2.1-base architecture and a full-size ImageReward, both with random
weights, from the same latents, timestep and seeded candidate noises, with the paper's 15-step lookahead:

- fp32 fast vs fp32 plain: the same rewards, weights, loss and gradient to fp32 rounding (TF32 off): batching,
  chunking, reuse and memory format change nothing;
- bf16 fast vs fp32 plain: the same to bf16 tolerance;
- the UNet compiled with ``reduce-overhead`` (CUDA graphs) vs eager in bf16: the same predictions, outputs that
  survive the next replay, and the same step.
- the benchmark's baseline (:func:`rewardsds.reference.reference_structure_step`, the public reference code's
  structure) vs the fast path in fp32: same rewards and selections, loss and gradient 4x the reference's;
- ``prior.lookahead_quantize=float8``: the float8 view's linear layers are float8, the prior's own UNet is not, and
  only the lookahead calls the view (skipped with its reason below compute capability 8.9);
- the default CUDA prior compiles with CUDA graphs and writes its kernels into ``prior.compile_cache``.

Errors are relative L2 norms ``|fast - plain| / |plain|``. The test guidance scale is 7.5: at the SDS default of
100 the field is ``100 (c - u)``, and with random weights ``c - u`` is a small difference of two large predictions,
so bf16 rounding of the predictions is multiplied by 100 in a way that says nothing about the fast path. Every
comparison writes its figures to ``$REWARDSDS_GPU_REPORT_DIR/fast_path_<name>.json`` before asserting.

    python -m pytest -m gpu tests/test_fast_path_gpu.py -s -ra
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import gpu_test
from rewardsds.losses.config import SDSLossConfig
from rewardsds.strategies.config import MinMaxStrategyConfig, WeightedStrategyConfig
from rewardsds.utils.dtypes import tf32
from step_helpers import make_engine, step_loss

PROMPT = "a photo of a red fox"
T, N, K, GUIDANCE = 600, 4, 15, 7.5
DEVICE = "cuda"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _report(name: str, rep: dict) -> None:
    out = os.environ.get("REWARDSDS_GPU_REPORT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"fast_path_{name}.json").write_text(json.dumps(rep, indent=2))
    print("FAST_PATH_GPU", name, json.dumps(rep))


@pytest.fixture(scope="module")
def parts(sd21_random, image_reward_random):
    """Loaders of the priors and rewards under test (built on demand; the module shares them)."""
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior
    from rewardsds.rewards.config import ImageRewardConfig
    from rewardsds.rewards.image_reward import ImageReward

    paths = dict(o.split("=", 1) for o in image_reward_random if o.startswith(("reward.checkpoint", "reward.tokenizer")))
    cache: dict = {}

    def prior(dtype: str, fast: bool, compile_mode: str | None = None):
        key = ("prior", dtype, fast, compile_mode)
        if key not in cache:
            cache[key] = StableDiffusionPrior(SDPriorConfig(pretrained=str(sd21_random), dtype=dtype,
                                                            channels_last=fast, local_files_only=True,
                                                            compile=compile_mode is not None,
                                                            compile_mode=compile_mode or "reduce-overhead")).to(DEVICE)
        return cache[key]

    def reward(dtype: str, pil: bool):
        key = ("reward", dtype, pil)
        if key not in cache:
            cache[key] = ImageReward(ImageRewardConfig(checkpoint=paths["reward.checkpoint"],
                                                       tokenizer=paths["reward.tokenizer"], dtype=dtype, pil_exact=pil,
                                                       local_files_only=True)).to(DEVICE)
        return cache[key]

    yield prior, reward
    cache.clear()


@pytest.fixture(autouse=True)
def _no_tf32():
    with tf32(matmul=False, cudnn=False):
        yield


def _latents() -> torch.Tensor:
    return torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(3)).mul(0.8).to(DEVICE)


def fast_step(prior, reward, strategy) -> dict:
    from rewardsds.losses.sds import SDSLoss

    engine = make_engine(prior, reward, steps=K, guidance=7.5, seed=0)
    z = _latents().requires_grad_(True)
    out = step_loss(SDSLoss(SDSLossConfig(guidance_scale=GUIDANCE)), prior, engine, z, T, N, strategy, step=5, prompt=PROMPT)
    loss = out.total()
    loss.backward()
    return {"loss": loss.detach(), "grad": z.grad.detach(), "rewards": out.candidates.rewards.detach().float(),
            "weights": out.weights.detach().float(), "evals": out.candidates.evals, "chunk": engine.chunk_size(z)}


def plain_step(prior, reward, strategy) -> dict:
    from rewardsds.reference import plain_rewardsds_step

    z = _latents().requires_grad_(True)
    res = plain_rewardsds_step(prior, reward, strategy, z, T, N, step=5, seed=0, text=prior.text_cond([PROMPT], ""), prompt=PROMPT,
                               guidance_scale=GUIDANCE, lookahead_steps=K, lookahead_guidance=7.5)
    res.loss.backward()
    return {"loss": res.loss.detach(), "grad": z.grad.detach(), "rewards": res.rewards.detach().float(), "weights": res.weights.detach().float(),
            "evals": res.evals}


def compare(fast: dict, plain: dict) -> dict:
    g_f, g_p = fast["grad"].flatten(), plain["grad"].flatten()
    return {
        "rewards_fast": fast["rewards"].tolist(), "rewards_plain": plain["rewards"].tolist(),
        "rewards_max_abs_diff": float((fast["rewards"] - plain["rewards"]).abs().max()),
        "rewards_spread": float(plain["rewards"].max() - plain["rewards"].min()),
        "weights_fast": fast["weights"].tolist(), "weights_plain": plain["weights"].tolist(),
        "loss_rel_err": rel(fast["loss"], plain["loss"]), "grad_rel_err": rel(g_f, g_p),
        "grad_cosine": float(torch.nn.functional.cosine_similarity(g_f.float(), g_p.float(), dim=0)),
        "evals_fast": fast["evals"], "evals_plain": plain["evals"], "chunk_fast": fast.get("chunk"),
    }


def _strategies():
    from rewardsds.strategies import MinMaxStrategy, WeightedStrategy

    return {"min_max": MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1)), "weighted": WeightedStrategy(WeightedStrategyConfig())}


@gpu_test
@pytest.mark.parametrize("strategy", ["min_max", "weighted"])
def test_fp32_fast_step_equals_plain(parts, strategy):
    prior, reward = parts
    s = _strategies()[strategy]
    fast = fast_step(prior("fp32", fast=True), reward("fp32", pil=False), s)
    plain = plain_step(prior("fp32", fast=False), reward("fp32", pil=False), s)
    rep = compare(fast, plain)
    _report(f"fp32_{strategy}", rep)
    assert fast["evals"] == plain["evals"] - 2 * N  # the prediction at t is shared with the lookahead
    assert rep["rewards_max_abs_diff"] <= 1e-3 * max(1.0, float(plain["rewards"].abs().max()))
    assert torch.allclose(fast["weights"], plain["weights"], atol=1e-4)
    assert rep["loss_rel_err"] < 1e-3 and rep["grad_rel_err"] < 1e-3, rep


@gpu_test
def test_bf16_fast_step_matches_plain_fp32(parts):
    prior, reward = parts
    s = _strategies()["weighted"]  # continuous in the rewards: bf16 rounding moves the weights a little, never a rank
    fast = fast_step(prior("bf16", fast=True), reward("bf16", pil=False), s)
    plain = plain_step(prior("fp32", fast=False), reward("fp32", pil=True), s)
    rep = compare(fast, plain)
    _report("bf16_vs_fp32_weighted", rep)
    assert rep["rewards_max_abs_diff"] <= 0.05 * max(1.0, float(plain["rewards"].abs().max())), rep
    assert torch.allclose(fast["weights"], plain["weights"], atol=2e-2), rep
    assert rep["loss_rel_err"] < 5e-2 and rep["grad_rel_err"] < 0.1 and rep["grad_cosine"] > 0.99, rep


@gpu_test
def test_fp16_default_step_is_closer_to_fp32_than_bf16(parts):
    """prior.dtype=auto on CUDA is fp16 for SD: with the default fp32 reward, its step (rewards, weights, loss, gradient)
    is within the bf16 bounds of the plain fp32 step and closer to it than the same step with a bf16 prior."""
    prior, reward = parts
    s = _strategies()["weighted"]
    plain = plain_step(prior("fp32", fast=False), reward("fp32", pil=True), s)
    auto = prior("auto", fast=True)
    assert auto.dtype == torch.float16
    rep16 = compare(fast_step(auto, reward("fp32", pil=False), s), plain)
    rep_bf = compare(fast_step(prior("bf16", fast=True), reward("fp32", pil=False), s), plain)
    _report("fp16_vs_bf16_vs_fp32_weighted", {"fp16": rep16, "bf16": rep_bf})
    assert rep16["rewards_max_abs_diff"] <= 0.05 * max(1.0, float(plain["rewards"].abs().max())), rep16
    assert rep16["loss_rel_err"] < 5e-2 and rep16["grad_rel_err"] < 0.1 and rep16["grad_cosine"] > 0.99, rep16
    assert rep16["grad_rel_err"] < rep_bf["grad_rel_err"] and rep16["rewards_max_abs_diff"] < rep_bf["rewards_max_abs_diff"], (rep16, rep_bf)


@gpu_test
def test_cuda_graph_unet_matches_eager(parts):
    prior, reward = parts
    eager, graphed = prior("bf16", fast=True), prior("bf16", fast=True, compile_mode="reduce-overhead")
    g = torch.Generator(DEVICE).manual_seed(0)
    x = [torch.randn(2 * N, 4, 64, 64, device=DEVICE, generator=g) for _ in range(2)]
    t = torch.full((2 * N,), T, device=DEVICE, dtype=torch.long)
    emb = eager.encode_text([PROMPT] * N + [""] * N)
    with torch.no_grad():
        ref = [eager.predict_noise(xi, t, emb) for xi in x]
        first = graphed.predict_noise(x[0], t, emb)  # compiles and captures
        for _ in range(2):
            graphed.predict_noise(x[0], t, emb)
        a = graphed.predict_noise(x[0], t, emb)
        b = graphed.predict_noise(x[1], t, emb)  # a replay of the same graph: must not overwrite a
    fast = fast_step(graphed, reward("bf16", pil=False), _strategies()["weighted"])
    plain = fast_step(eager, reward("bf16", pil=False), _strategies()["weighted"])
    rep = {"pred_rel_err_0": rel(a, ref[0]), "pred_rel_err_1": rel(b, ref[1]), "first_rel_err": rel(first, ref[0]),
           "a_equals_kept": bool(torch.equal(a, first)), **{f"step_{k}": v for k, v in compare(fast, plain).items()}}
    _report("cuda_graphs_vs_eager_bf16", rep)
    assert "CompiledModule" in repr(graphed._unet_call) and graphed._unet_call.cudagraphs
    assert rep["pred_rel_err_0"] < 2e-2 and rep["pred_rel_err_1"] < 2e-2, rep
    assert rel(a, ref[1]) > 0.1  # a still holds the prediction of x[0], not the later replay's
    assert rep["step_grad_rel_err"] < 5e-2 and rep["step_loss_rel_err"] < 2e-2, rep


@gpu_test
def test_compiled_decoder_matches_eager(parts):
    """The compiled prior decodes the candidates through Inductor (no CUDA graphs, one graph per batch): the same
    images as the eager decoder in bf16, repeatable, and a decode with a gradient stays eager."""
    from rewardsds.priors.compiled import CompiledModule

    prior, _ = parts
    eager, graphed = prior("bf16", fast=True), prior("bf16", fast=True, compile_mode="reduce-overhead")
    z = torch.randn(N, 4, 64, 64, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    with torch.no_grad():
        want = eager.decode_latents(z)
        got = graphed.decode_candidates(z)  # compiles
        again = graphed.decode_candidates(z)
    rep = {"image_rel_err": rel(got, want), "max_abs_err": float((got - want).abs().max())}
    _report("compiled_decoder_vs_eager_bf16", rep)
    assert isinstance(graphed._decode_call, CompiledModule) and graphed._decode_call.static and not graphed._decode_call.cudagraphs
    assert got.shape == (N, 3, 512, 512) and torch.equal(got, again)
    assert rep["image_rel_err"] < 2e-2, rep
    zg = z[:1].clone().requires_grad_(True)
    graphed.decode_candidates(zg).mean().backward()  # eager: a gradient flows back to the latents
    assert zg.grad is not None and zg.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------- the benchmark's baseline
@gpu_test
def test_reference_structure_equals_fast_path_fp32(parts):
    """The speed baseline (the public reference code's structure) computes our step in fp32: same rewards and
    selections, loss and gradient M = 4 times the reference's (it divides each kept candidate's loss by M)."""
    from rewardsds.losses.sds import SDSLoss
    from rewardsds.reference import reference_structure_step
    from rewardsds.strategies import MinMaxStrategy

    prior, reward = parts
    p, r = prior("fp32", fast=False), reward("fp32", pil=True)
    n = 6
    engine = make_engine(p, r, steps=K, guidance=7.5, start="grid", seed=0)
    z = _latents().requires_grad_(True)
    text = p.text_cond([PROMPT], "")
    out = step_loss(SDSLoss(SDSLossConfig(guidance_scale=GUIDANCE)), p, engine, z, T, n, MinMaxStrategy(MinMaxStrategyConfig()),
                    step=5, prompt=PROMPT)
    loss = out.total()
    loss.backward()
    zr = _latents().requires_grad_(True)
    ref = reference_structure_step(p, r, zr, T, n, step=5, seed=0, text=text, prompt=PROMPT, guidance_scale=GUIDANCE, lookahead_steps=K)
    ref.loss.backward()
    w = out.weights.float()
    rep = {"rewards_fast": out.candidates.rewards.tolist(), "rewards_reference": ref.rewards.tolist(),
           "rewards_max_abs_diff": float((out.candidates.rewards - ref.rewards).abs().max()),
           "top_fast": sorted(torch.nonzero(w > 0).flatten().tolist()), "top_reference": sorted(ref.top.tolist()),
           "bottom_fast": sorted(torch.nonzero(w < 0).flatten().tolist()), "bottom_reference": sorted(ref.bottom.tolist()),
           "loss_rel_err": rel(loss, 4 * ref.loss), "grad_rel_err": rel(z.grad, 4 * zr.grad), "evals_fast": out.candidates.evals,
           "evals_reference": ref.evals}
    _report("reference_structure_fp32", rep)
    assert rep["rewards_max_abs_diff"] <= 1e-3 * max(1.0, float(ref.rewards.abs().max())), rep
    assert rep["top_fast"] == rep["top_reference"] and rep["bottom_fast"] == rep["bottom_reference"], rep
    assert rep["loss_rel_err"] < 1e-3 and rep["grad_rel_err"] < 1e-3, rep


# ----------------------------------------------------------------------------------------- float8 lookahead
@gpu_test
def test_float8_view_serves_only_the_lookahead(sd21_random, parts):
    """prior.lookahead_quantize=float8 (eager here; compiled in the benchmark): the view's UNet has float8 linear
    layers, the prior's own UNet and its prediction at t are unchanged, and the lookahead's calls go to the view."""
    from rewardsds.losses.sds import SDSLoss
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.quantized import FLOAT8_MIN_CAPABILITY, count_float8_linears
    from rewardsds.priors.sd import StableDiffusionPrior
    from rewardsds.strategies import MinMaxStrategy

    pytest.importorskip("torchao", reason="float8 lookahead needs the float8 extra: pip install 'rewardsds[float8]'")
    cap = torch.cuda.get_device_capability()
    if tuple(cap) < FLOAT8_MIN_CAPABILITY:
        pytest.skip(f"float8 needs compute capability >= 8.9, this GPU has {cap}")
    prior, reward = parts
    plain = prior("bf16", fast=True)
    f8 = StableDiffusionPrior(SDPriorConfig(pretrained=str(sd21_random), dtype="bf16", local_files_only=True,
                                            compile=False, lookahead_quantize="float8")).to(DEVICE)
    view = f8.ranking_prior()
    q, total = count_float8_linears(view.unet_float8)
    assert count_float8_linears(f8.unet)[0] == 0 and q > 0.9 * total, (q, total)
    g = torch.Generator(DEVICE).manual_seed(0)
    x = torch.randn(2 * N, 4, 64, 64, device=DEVICE, generator=g)
    t = torch.full((2 * N,), T, device=DEVICE, dtype=torch.long)
    emb = plain.encode_text([PROMPT] * N + [""] * N)
    with torch.no_grad():
        a, b, c = plain.predict_noise(x, t, emb), f8.predict_noise(x, t, emb), view.predict_noise(x, t, emb)
    calls = {"main": 0, "view": 0}
    h1 = f8.unet.register_forward_hook(lambda *_: calls.__setitem__("main", calls["main"] + 1))
    h2 = view.unet_float8.register_forward_hook(lambda *_: calls.__setitem__("view", calls["view"] + 1))
    # an explicit chunk size: the automatic one would measure memory with one more call of the prior's UNet
    eng = make_engine(f8, reward("bf16", pil=False), steps=K, guidance=7.5, chunk_size=64, seed=0)
    z = _latents()
    cands = step_loss(SDSLoss(SDSLossConfig()), f8, eng, z, T, N, MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1)), step=5,
                      prompt=PROMPT).candidates
    h1.remove()
    h2.remove()
    rep = {"float8_linears": q, "linears": total, "prior_pred_rel_err": rel(b, a), "float8_pred_rel_err": rel(c, a),
           "unet_calls_main": calls["main"], "unet_calls_view": calls["view"], "rewards": cands.rewards.tolist()}
    _report("float8_view", rep)
    assert rep["prior_pred_rel_err"] < 1e-3, rep  # the prior itself (the prediction at t) is untouched
    assert 0 < rep["float8_pred_rel_err"] < 0.2, rep
    assert calls["main"] == 1 and calls["view"] >= 1, calls  # one shared call at t, the rest of the chain in float8


# ----------------------------------------------------------------------------------------- compile by default
@gpu_test
def test_default_prior_compiles_with_cuda_graphs_into_the_persistent_cache(tiny_sd, tmp_path, monkeypatch):
    """With the defaults (prior.compile=auto) a CUDA prior compiles its UNet with CUDA graphs, and the compiled
    kernels land in prior.compile_cache (set before the compile)."""
    from rewardsds.priors.compiled import CompiledModule
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache = tmp_path / "inductor"
    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True,
                                           compile_cache=str(cache))).to(DEVICE)
    assert isinstance(p._unet_call, CompiledModule) and p._unet_call.cudagraphs and p._unet_call.mode == "reduce-overhead"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache.resolve())
    x = torch.randn(4, 4, 8, 8, device=DEVICE)
    t = torch.full((4,), 500, device=DEVICE, dtype=torch.long)
    emb = p.encode_text(["a red fox"] * 4)
    with torch.no_grad():
        outs = [p.predict_noise(x, t, emb) for _ in range(3)]
    files = [str(f.relative_to(cache)) for f in cache.rglob("*") if f.is_file()]
    _report("default_compile_cache", {"cache": str(cache), "files": len(files), "top_level": sorted({f.split("/")[0] for f in files})})
    assert torch.allclose(outs[0], outs[2])
    assert files, "nothing was written to the compile cache"


# ----------------------------------------------------------------------------------------- lookahead.overlap
@gpu_test
def test_side_stream_orders_work_across_streams():
    """What runs on the side stream sees what the current stream made before it; memory the side stream still
    reads is not handed to the current stream when its tensor is dropped; the current stream sees the side
    stream's results after join (no host sync in between)."""
    from rewardsds.utils.streams import SideStream

    side = SideStream(torch.device(DEVICE))
    g = torch.Generator(DEVICE).manual_seed(2)
    x = torch.randn(2048, 2048, device=DEVICE, generator=g) / 45
    eye = torch.eye(2048, device=DEVICE)
    want = ((x @ x) @ (x @ x)).sum().item()
    for _ in range(3):
        y = x @ x
        for _ in range(20):  # keep the current stream busy so that an unordered side stream would read too early
            y = y @ eye
        with side.after_current(y):
            w = x
            for _ in range(200):  # keep the side stream busy before it reads y
                w = w @ eye
            z = y @ y + 0 * w.sum()
        del y, w  # y's memory goes back to the allocator while the side stream has yet to read it
        junk = [torch.full((2048, 2048), 1e3, device=DEVICE) for _ in range(40)]  # would take y's block without record_stream
        side.join(z)
        got = z.sum().item()
        del junk
        assert abs(got - want) <= 1e-3 * abs(want), (got, want)


@gpu_test
@pytest.mark.parametrize("compiled", [False, True])
def test_overlapped_step_matches_the_plain_step(parts, compiled):
    """lookahead.overlap on CUDA (decode and reward of each chunk on a second stream) computes what the same chunks
    compute one after another on the current stream, and selects what the step without overlap selects.

    Three runs of one step: ``plain`` (overlap off: one decode and one reward batch of all candidates), ``overlap``
    and ``serial`` (overlap on, its side stream replaced by the current one: the same chunks, the same decode and
    reward batches, run in program order). ``overlap`` against ``serial`` isolates the streams: equal to rounding
    noise far below any reward difference (a chunk read before it is written, or freed while read, would show).
    ``overlap`` against ``plain`` differs by the batch shapes of the decode and the reward: fp32 eager to fp32
    rounding; bf16 with the compiled UNet (CUDA graphs), the compiled decoder and the compiled reward (scoring on the
    current stream) within the bf16 bound of this file (5% of the reward scale), each of the two bf16 paths rounding
    its own way (measured 0.011-0.017 on an H200, 0.013-0.038 on an H100)."""
    from rewardsds.losses.sds import SDSLoss
    from rewardsds.rewards.image_reward import ImageReward
    from rewardsds.utils.streams import SideStream

    prior_fn, reward_fn = parts
    if compiled:
        prior = prior_fn("bf16", fast=True, compile_mode="reduce-overhead")
        base = reward_fn("bf16", pil=False)
        rewards = {"eager": base, "compiled": ImageReward(dataclasses.replace(base.cfg, compile=True)).to(DEVICE)}
    else:
        prior, rewards = prior_fn("fp32", fast=True), {"eager": reward_fn("fp32", pil=False)}
    s = _strategies()["min_max"]
    rep, checks = {}, []
    for name, reward in rewards.items():
        outs = {}
        for run in ("plain", "overlap", "serial"):
            engine = make_engine(prior, reward, steps=K, guidance=7.5, seed=0, chunk_size=N, overlap=run != "plain")  # N inputs: two chunks
            if run == "serial":  # an inactive side stream runs each block in place, on the current stream
                engine._side_stream = lambda device: SideStream(torch.device("cpu"))
            z = _latents().requires_grad_(True)
            out = step_loss(SDSLoss(SDSLossConfig(guidance_scale=GUIDANCE)), prior, engine, z, T, N, s, step=5, prompt=PROMPT)
            out.total().backward()
            outs[run] = {"rewards": out.candidates.rewards.float(), "weights": out.weights.float(), "grad": z.grad,
                         "evals": out.candidates.evals, "chunks": engine.candidate_chunks(out.candidates)}
        a, b, c = outs["plain"], outs["overlap"], outs["serial"]
        spread = float(a["rewards"].max() - a["rewards"].min())
        scale = max(1.0, float(a["rewards"].abs().max()))
        r = a["rewards"].sort(descending=True).values
        rep[name] = {"rewards_plain": a["rewards"].tolist(), "rewards_overlap": b["rewards"].tolist(),
                     "rewards_serial": c["rewards"].tolist(), "reward_spread": spread,
                     "rewards_max_abs_diff": float((a["rewards"] - b["rewards"]).abs().max()),
                     "streams_rewards_max_abs_diff": float((b["rewards"] - c["rewards"]).abs().max()),
                     "streams_weights_equal": torch.equal(b["weights"], c["weights"]),
                     "streams_grad_rel_err": rel(b["grad"], c["grad"]),
                     "weights_equal": torch.equal(a["weights"], b["weights"]),
                     "grad_rel_err": rel(b["grad"], a["grad"]), "chunks": b["chunks"],
                     "evals": [a["evals"], b["evals"], c["evals"]],
                     "boundary_gaps": [float(r[0] - r[1]), float(r[-2] - r[-1])]}  # min_max: one best and one worst
        checks.append((name, a, b, c, spread, scale))
    _report(f"overlap_{'compiled_bf16' if compiled else 'fp32'}", rep)  # before asserting
    for name, a, b, c, spread, scale in checks:
        got = rep[name]
        assert b["chunks"] == c["chunks"] == [(0, N // 2), (N // 2, N)] and a["evals"] == b["evals"] == c["evals"], got
        # the streams change nothing: the same chunks one after another on one stream give the same step
        assert got["streams_rewards_max_abs_diff"] <= (1e-3 if compiled else 1e-5) * scale, got
        assert got["streams_weights_equal"] and got["streams_grad_rel_err"] < (1e-3 if compiled else 1e-5), got
        # against the unchunked decode and reward, candidate by candidate, within a tolerance well below the spread
        # (so chunk results put in the wrong place fail)
        tol = (5e-2 if compiled else 1e-4) * scale
        assert got["rewards_max_abs_diff"] <= tol < spread / 2, got
        if not compiled:
            assert got["weights_equal"] and torch.equal(torch.argsort(a["rewards"]), torch.argsort(b["rewards"])), got
        if got["weights_equal"]:  # the same selection: the same gradient, to the step's rounding
            assert got["grad_rel_err"] < (5e-2 if compiled else 1e-3), got
        else:  # bf16 only: a different selection is allowed where the plain rewards at its boundary are a near-tie
            assert compiled and min(got["boundary_gaps"]) <= 2 * got["rewards_max_abs_diff"], got


# ----------------------------------------------------------------------------------------- prior.attention
@gpu_test
def test_cudnn_attention_runs_and_matches_torchs_default(sd21_random):
    """prior.attention=cudnn: cuDNN's fused attention runs in the UNet, eager and compiled (seen in the profile of
    the compiled UNet's first call, which runs Inductor's code before the CUDA graph is captured; its graph is
    traced with the choice or loaded from the compile cache under the choice's tag, never the default's), and
    predicts what torch's default kernel predicts, to bf16 rounding."""
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior

    def prior(attention: str, compile: bool):
        return StableDiffusionPrior(SDPriorConfig(pretrained=str(sd21_random), dtype="bf16", local_files_only=True, compile=compile,
                                                  attention=attention)).to(DEVICE)

    base, cudnn = prior("auto", False), prior("cudnn", False)
    x = torch.randn(2 * N, 4, 64, 64, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(5))
    t = torch.full((2 * N,), T, device=DEVICE, dtype=torch.long)
    emb = base.encode_text([PROMPT] * N + [""] * N)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = cudnn.predict_noise(x, t, emb)
    ops = {e.key for e in prof.key_averages()}
    with torch.no_grad():
        want = base.predict_noise(x, t, emb)
        compiled = prior("cudnn", True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            compiled.predict_noise(x, t, emb)
        compiled_ops = {e.key for e in prof.key_averages()}
        graphed = [compiled.predict_noise(x, t, emb) for _ in range(3)][-1]
    rep = {"cudnn_ops": sorted(o for o in ops if "attention" in o), "compiled_ops": sorted(o for o in compiled_ops if "attention" in o),
           "eager_rel_err": rel(got, want), "compiled_rel_err": rel(graphed, want)}
    _report("cudnn_attention_bf16", rep)
    assert "aten::_scaled_dot_product_cudnn_attention" in ops, rep
    assert any("cudnn_attention" in o for o in compiled_ops), rep
    assert rep["eager_rel_err"] < 2e-2 and rep["compiled_rel_err"] < 2e-2, rep


# ----------------------------------------------------------------------------------------- lookahead.fp32_below
@gpu_test
def test_fp32_ranking_below_a_timestep_is_the_exact_paths_ranking(sd21_random, parts):
    """lookahead.fp32_below on the compiled bf16 prior (CUDA graphs, channels-last): below the threshold the candidates
    rank on the prior's fp32 view (eager, channels-first, the weights as loaded, TF32 off), so their rewards are the
    exact fp32 prior's to fp32 rounding; at or above it the step is the compiled one's, bit for bit."""
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior

    _, reward_fn = parts
    reward = reward_fn("fp32", pil=False)
    fast = StableDiffusionPrior(SDPriorConfig(pretrained=str(sd21_random), dtype="bf16", local_files_only=True, compile=True,
                                              compile_mode="reduce-overhead"))
    fast.keep_fp32_view()
    fast.to(DEVICE)
    exact = StableDiffusionPrior(SDPriorConfig(pretrained=str(sd21_random), dtype="fp32", channels_last=False,
                                               local_files_only=True, compile=False)).to(DEVICE)
    view = fast.fp32_view()
    assert view._unet_call is view.unet and next(view.unet.parameters()).dtype == torch.float32
    assert next(fast.unet.parameters()).dtype == torch.bfloat16 and fast._unet_call is not fast.unet

    def rewards(prior, below: int, t: int):
        engine = make_engine(prior, reward, steps=K, guidance=7.5, seed=0, fp32_below=below)
        z = _latents()
        text = prior.text_cond([PROMPT], "")
        cands = engine.draw(z, t, 8, 5)
        cands.eps_cond, cands.eps_uncond = engine.predict(cands, text)
        engine.look_ahead_and_score(cands, text, [PROMPT])
        return cands.rewards.float().cpu(), cands.evals

    rep = {}
    for t in (120, 600):
        want, _ = rewards(exact, 0, t)
        plain, plain_evals = rewards(fast, 0, t)
        got, evals = rewards(fast, 250, t)
        spread = float(want.max() - want.min())
        rep[t] = {"exact": want.tolist(), "compiled": plain.tolist(), "fp32_below_250": got.tolist(), "spread": spread,
                  "fp32_view_max_abs_diff": float((got - want).abs().max()), "compiled_max_abs_diff": float((plain - want).abs().max())}
        if t < 250:
            assert rep[t]["fp32_view_max_abs_diff"] <= 1e-4 * max(1.0, float(want.abs().max())), rep
            assert torch.equal(torch.argsort(got), torch.argsort(want)), rep
            assert evals == plain_evals + 2 * 8  # the call at t made again in fp32
        else:
            assert torch.equal(got, plain) and evals == plain_evals, rep
    _report("fp32_below", rep)
