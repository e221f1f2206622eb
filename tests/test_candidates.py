"""Batched candidates against a plain loop over candidates: same seeds => same loss and gradient."""

import pytest
import torch

from rewardsds.rng import candidate_noise
from rewardsds.losses.sds import SDSLoss
from rewardsds.priors.base import guide
from rewardsds.reference import plain_rewardsds_step
from rewardsds.rewards.analytic import AnalyticReward
from rewardsds.rewards.config import AnalyticRewardConfig
from rewardsds.strategies import MinMaxStrategy, WeightedStrategy
from rewardsds.losses.config import SDSLossConfig
from rewardsds.strategies.config import MinMaxStrategyConfig, WeightedStrategyConfig
from step_helpers import make_engine, step_loss


def test_candidate_noise_does_not_depend_on_n():
    a = candidate_noise(4, (1, 4, 8, 8), seed=3, step=11, device="cpu")
    b = candidate_noise(8, (1, 4, 8, 8), seed=3, step=11, device="cpu")
    assert torch.equal(a, b[:4])
    c = candidate_noise(4, (1, 4, 8, 8), seed=3, step=12, device="cpu")
    assert not torch.equal(a, c)


def _run(loss, prior, engine, z, t, n, strategy, step=5):
    return step_loss(loss, prior, engine, z, t, n, strategy, step=step, prompt="a photo of the cat")


@pytest.mark.parametrize("strategy", [MinMaxStrategy(MinMaxStrategyConfig()), WeightedStrategy(WeightedStrategyConfig())])
@pytest.mark.parametrize("chunk", [0, 4])
def test_batched_equals_loop(tiny_sd_prior, strategy, chunk):
    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    eng = make_engine(p, reward, steps=6, guidance=7.5, grid="leading", start="exact_t", chunk_size=chunk, seed=0)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    z = z0.clone().requires_grad_(True)
    n, t = 5, 700
    out = _run(SDSLoss(SDSLossConfig(guidance_scale=20.0)), p, eng, z, t, n, strategy)
    loss = out.total()
    loss.backward()
    zr = z0.clone().requires_grad_(True)
    ref = plain_rewardsds_step(p, reward, strategy, zr, t, n, step=5, seed=0, text=p.text_cond(["a photo of the cat"], ""),
                               prompt="a photo of the cat", guidance_scale=20.0, lookahead_steps=6, lookahead_guidance=7.5)
    ref.loss.backward()
    assert torch.allclose(out.candidates.rewards, ref.rewards, atol=1e-5)
    assert torch.allclose(out.weights, ref.weights)
    assert torch.allclose(loss, ref.loss, rtol=1e-5)
    assert torch.allclose(z.grad, zr.grad, atol=1e-5, rtol=1e-4)
    # batching spends no more evaluations than the plain loop (the prediction at t is shared)
    assert out.candidates.evals == ref.evals - 2 * n
    # the analytic gradient of the detached-target trick: sum_i w_i g_i
    assert float(z.grad.abs().sum()) > 0


def test_strategy_none_skips_lookahead_and_reward(tiny_sd_prior):
    from rewardsds.strategies import NoStrategy

    p = tiny_sd_prior
    eng = make_engine(p, None, steps=15)
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = _run(SDSLoss(SDSLossConfig()), p, eng, z, 500, 3, NoStrategy())
    assert out.candidates.rewards is None
    assert out.candidates.evals == 2 * 3  # only the CFG pair at t
    assert torch.allclose(out.weights, torch.full((3,), 1 / 3))


def test_sds_gradient_formula(tiny_sd_prior):
    """N = 1, strategy none: dL/dz = (1 - abar_t)(eps_cfg - eps) / b, by hand."""
    from rewardsds.strategies import NoStrategy

    p = tiny_sd_prior
    eng = make_engine(p, None, seed=9)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = 321
    text = p.text_cond(["the cat"] * 2, "")
    out = step_loss(SDSLoss(SDSLossConfig(guidance_scale=100.0)), p, eng, z, t, 1, NoStrategy(), step=3, prompt="the cat")
    out.total().backward()
    noise = candidate_noise(1, z.shape, 9, 3, "cpu")[0]
    x_t = p.add_noise(z.detach(), noise, t)
    c, u = p.predict_noise_pair(x_t, t, text)
    expected = (1 - p.alphas_cumprod[t]) * (guide(c, u, 100.0) - noise) / 2
    assert torch.allclose(z.grad, expected, atol=1e-5, rtol=1e-4)


def test_pruning_runs_the_lookahead_for_the_best_one_step_candidates_only(tiny_sd_prior):
    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    z = torch.randn(1, 4, 8, 8)
    full = make_engine(p, reward, steps=6, seed=0)
    pruned = make_engine(p, reward, steps=6, seed=0, prune_to=2)
    strategy = MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1))
    a = step_loss(SDSLoss(SDSLossConfig()), p, full, z, 700, 5, strategy, step=3, prompt="a photo of the cat").candidates
    b = step_loss(SDSLoss(SDSLossConfig()), p, pruned, z, 700, 5, strategy, step=3, prompt="a photo of the cat").candidates
    # one-step rewards decide which 2 candidates get the full lookahead; those get exactly the full rewards
    x0 = p.predict_x0(a.noisy, 700, guide(a.eps_cond, a.eps_uncond, 7.5))
    one_step = reward(p.decode_latents(x0), ["a photo of the cat"] * 5)
    keep = torch.sort(one_step, descending=True, stable=True).indices[:2]
    rest = torch.tensor([i for i in range(5) if i not in keep.tolist()])
    assert torch.allclose(b.view_rewards[keep, 0], a.rewards[keep], atol=1e-5)
    assert torch.allclose(b.view_rewards[rest, 0], one_step[rest], atol=1e-5)
    # the strategy ranks every candidate that ran the lookahead above every pruned one (their rewards are on
    # different scales), each group in its own order
    assert b.rewards[keep].min() > b.rewards[rest].max()
    assert torch.equal(torch.argsort(b.rewards[rest]), torch.argsort(one_step[rest]))
    assert torch.allclose(b.rewards[keep], a.rewards[keep], atol=1e-5)
    # leading 6-point grid {831, 665, 499, 333, 167, 1}: the chain from t = 700 calls at 700 and 5 grid points
    assert a.evals == 2 * 5 * 6
    assert b.evals == 2 * 5 + 2 * 2 * 5  # the shared pair at t for all 5, the rest of the chain for 2


def test_band_above_puts_the_kept_rows_above_the_rest_in_their_own_orders():
    from rewardsds.candidates import band_above

    all_rows = torch.tensor([[0.9], [0.1], [0.5], [0.7], [0.3]])  # one-step rewards
    keep = torch.tensor([2, 4])
    kept = torch.tensor([[0.2], [0.25]])  # the lookahead's rewards of rows 2 and 4: lower than some one-step ones
    out = band_above(kept, all_rows, keep)
    assert torch.equal(out[keep], kept)
    rest = torch.tensor([0, 1, 3])
    assert out[rest].max() < kept.min()
    assert torch.argsort(out[rest, 0]).tolist() == torch.argsort(all_rows[rest, 0]).tolist()
    assert torch.equal(band_above(all_rows, all_rows, torch.arange(5)), all_rows)  # nothing pruned: unchanged


def test_band_above_reads_nothing_back_to_the_host():
    """The pruned ranking runs inside a GPU step that must not wait for the device: no branch on a device value and
    no boolean indexing (data-dependent shapes). On the meta device, which has no data, either would raise."""
    from rewardsds.candidates import band_above

    out = band_above(torch.empty(4, 2, device="meta"), torch.empty(8, 2, device="meta"), torch.arange(4, device="meta"))
    assert out.shape == (8, 2) and out.device.type == "meta"
    with pytest.raises(Exception):  # the check can fail: a boolean index needs the data
        torch.empty(8, 2, device="meta")[torch.empty(8, dtype=torch.bool, device="meta")].sum().item()


# ----------------------------------------------------------------------------------------- lookahead.overlap
class _RecordingSide:
    """A SideStream stand-in that records which engine stages ran inside its blocks (on a CPU the real one runs
    them in place, so only the order and the placement can be checked here; tests/test_fast_path_gpu.py runs
    the CUDA streams)."""

    def __init__(self, log):
        self.log, self.inside = log, False
        self.device = torch.device("cpu")

    def after_current(self, *inputs):
        import contextlib

        side = self

        @contextlib.contextmanager
        def block():
            side.log.append(("enter", tuple(x.shape[0] for x in inputs)))
            side.inside = True
            yield
            side.inside = False

        return block()

    def join(self, *outputs):
        self.log.append(("join", len(outputs)))


def _traced_engine(p, reward, monkeypatch, **kw):
    log = []
    eng = make_engine(p, reward, steps=6, seed=0, overlap=True, **kw)
    side = _RecordingSide(log)
    eng._side = side
    for name in ("lookahead", "decode", "_scores"):
        fn = getattr(eng, name)

        def traced(*a, _fn=fn, _name=name, **k):
            out = _fn(*a, **k)
            log.append((_name, out.shape[0], "side" if side.inside else "current"))
            return out

        monkeypatch.setattr(eng, name, traced)
    return eng, log


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("prune_to", [0, 3])
def test_overlapped_chunks_select_what_the_plain_step_selects(tiny_sd_prior, views, prune_to):
    """lookahead.overlap: the candidates look ahead in chunks of whole candidates (one model call each), and the
    step's rewards, weights, loss, gradient and evaluation count are those of the step without overlap."""
    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    strategy = MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1))
    z0 = torch.randn(views, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    outs = []
    for overlap in (False, True):
        eng = make_engine(p, reward, steps=6, seed=0, chunk_size=4 * views, prune_to=prune_to, overlap=overlap)
        z = z0.clone().requires_grad_(True)
        out = step_loss(SDSLoss(SDSLossConfig()), p, eng, z, 700, 5, strategy, step=3, prompt="a photo of the cat", keep_images=True)
        out.total().backward()
        outs.append((out, z.grad, eng))
    (a, ga, plain), (b, gb, lapped) = outs
    # 4 * views inputs per call = 2 candidates (CFG pairs of `views` rows) per chunk
    assert plain.candidate_chunks(a.candidates) == [(0, 5)]
    assert lapped.candidate_chunks(b.candidates) == [(0, 2), (2, 4), (4, 5)]
    assert torch.allclose(b.candidates.view_rewards, a.candidates.view_rewards, atol=1e-6)
    assert torch.equal(b.weights, a.weights)
    assert torch.allclose(b.candidates.images, a.candidates.images, atol=1e-6)
    assert torch.allclose(b.total(), a.total(), rtol=1e-6)
    assert torch.allclose(gb, ga, atol=1e-6)
    assert b.candidates.evals == a.candidates.evals
    assert a.candidates.rewards.std() > 0  # the candidates differ, so the selection means something


def test_overlap_queues_each_chunks_decode_and_reward_beside_the_next_lookahead(tiny_sd_prior, monkeypatch):
    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    eng, log = _traced_engine(p, reward, monkeypatch, chunk_size=4)
    out = step_loss(SDSLoss(SDSLossConfig()), p, eng, torch.randn(1, 4, 8, 8), 700, 5,
                    MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1)), step=3, prompt="a photo of the cat")
    assert log == [
        ("lookahead", 2, "current"), ("enter", (2,)), ("decode", 2, "side"), ("_scores", 2, "side"),
        ("lookahead", 2, "current"), ("enter", (2,)), ("decode", 2, "side"), ("_scores", 2, "side"),
        ("lookahead", 1, "current"), ("enter", (1,)), ("decode", 1, "side"), ("_scores", 1, "side"),
        ("join", 6),  # three image chunks and three score chunks handed back to the current stream
    ]
    assert out.candidates.rewards.shape == (5,)


def test_a_reward_replaying_cuda_graphs_scores_on_the_current_stream(tiny_sd_prior, monkeypatch):
    """Its graphs share torch.compile's memory pool with the compiled UNet's: the decodes still overlap, the
    reward then scores all images at once on the current stream (the batch shape the step without overlap uses)."""
    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    monkeypatch.setattr(AnalyticReward, "replays_cuda_graphs", property(lambda self: True))
    eng, log = _traced_engine(p, reward, monkeypatch, chunk_size=4)
    step_loss(SDSLoss(SDSLossConfig()), p, eng, torch.randn(1, 4, 8, 8), 700, 5,
              MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1)), step=3, prompt="a photo of the cat")
    assert [e for e in log if e[0] == "_scores"] == [("_scores", 5, "current")]
    assert [e[2] for e in log if e[0] == "decode"] == ["side"] * 3
    assert log[-2] == ("join", 3) and log[-1] == ("_scores", 5, "current")


def test_overlap_with_one_chunk_is_the_plain_order_and_says_so_once(tiny_sd_prior, monkeypatch, caplog):
    import logging

    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    eng, log = _traced_engine(p, reward, monkeypatch, chunk_size=0)
    with caplog.at_level(logging.WARNING, logger="rewardsds"):
        for step in (3, 4):
            step_loss(SDSLoss(SDSLossConfig()), p, eng, torch.randn(1, 4, 8, 8), 700, 5,
                      MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1)), step=step, prompt="a photo of the cat")
    assert log[:3] == [("lookahead", 5, "current"), ("decode", 5, "current"), ("_scores", 5, "current")]
    said = [r.getMessage() for r in caplog.records if "lookahead.overlap" in r.getMessage()]
    assert len(said) == 1 and "all 5 candidates that look ahead fit one model call (chunk_size=0, automatic: all)" in said[0]
    assert "chunk_size=6 looks ahead in two chunks" in said[0]
    cands = eng.draw(torch.randn(1, 4, 8, 8), 700, 5, step=3)  # and it does
    assert make_engine(p, reward, steps=6, seed=0, overlap=True, chunk_size=6).candidate_chunks(cands) == [(0, 3), (3, 5)]


def _unet_calls(p, monkeypatch) -> list[int]:
    """Records the batch of every UNet call of the prior ``p``."""
    calls: list[int] = []
    unet = p._unet_call
    monkeypatch.setattr(p, "_unet_call", lambda x, *a, **k: (calls.append(x.shape[0]), unet(x, *a, **k))[1])
    return calls


def test_overlap_chunks_that_cannot_hold_whole_candidates_say_so(tiny_sd_prior, monkeypatch, caplog):
    """Five candidates of three views, 8 UNet inputs per call: a call holds 4 rows, one whole candidate and a third; the overlapped chunks round down to one candidate each, so the lookahead makes more, smaller calls than
    the row-chunked lookahead without overlap (the same rewards), and the run is told which chunk_size avoids it."""
    import logging

    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    strategy = MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1))
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    calls, rewards = {}, {}
    for overlap in (False, True):
        eng = make_engine(p, reward, steps=6, seed=0, chunk_size=8, overlap=overlap)
        recorded = _unet_calls(p, monkeypatch)
        with caplog.at_level(logging.WARNING, logger="rewardsds"):
            out = step_loss(SDSLoss(SDSLossConfig()), p, eng, z.clone().requires_grad_(True), 700, 5, strategy, step=3,
                            prompt="a photo of the cat")
        calls[overlap], rewards[overlap] = list(recorded), out.candidates.rewards
        monkeypatch.undo()
    assert sum(calls[False]) == sum(calls[True])  # the same UNet inputs ...
    assert calls[True][:4] == calls[False][:4] == [8, 8, 8, 6]  # the prediction at t: chunked by rows either way
    assert set(calls[True][4:]) == {6} and len(calls[True]) > len(calls[False])  # then calls of one candidate each
    torch.testing.assert_close(rewards[True], rewards[False], rtol=1e-5, atol=1e-6)
    said = [r.getMessage() for r in caplog.records if "lookahead.overlap" in r.getMessage()]
    assert len(said) == 1 and "not whole candidates of 3 views" in said[0] and "a multiple of 6" in said[0]


def test_overlap_has_nothing_to_overlap_without_a_lookahead_or_with_one_candidate(tiny_sd_prior, caplog):
    import logging

    p = tiny_sd_prior
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    z = torch.randn(1, 4, 8, 8)
    one_step = make_engine(p, reward, steps=0, seed=0, overlap=True, chunk_size=2)
    assert one_step.candidate_chunks(one_step.draw(z, 700, 5, step=1)) == [(0, 5)]  # no lookahead calls: one decode
    with caplog.at_level(logging.WARNING, logger="rewardsds"):
        step_loss(SDSLoss(SDSLossConfig()), p, one_step, z.clone().requires_grad_(True), 700, 5,
                  MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1)), step=1, prompt="a photo of the cat")
    single = make_engine(p, reward, steps=6, seed=0, overlap=True)
    said = [r.getMessage() for r in caplog.records if "lookahead.overlap" in r.getMessage()]
    assert said == ["lookahead.overlap=true, but lookahead.steps=0 makes no lookahead calls to overlap the decode with"]
    assert "one candidate looks ahead" in single._nothing_to_overlap(single.draw(z, 700, 1, step=1))


def test_reward_replays_cuda_graphs_only_when_compiled_on_cuda():
    from rewardsds.rewards.combo import ComboReward
    from rewardsds.rewards.config import ComboRewardConfig

    r = AnalyticReward(AnalyticRewardConfig())
    assert r.replays_cuda_graphs is False
    r.cfg.compile = True  # (the analytic reward has no such key: a stand-in for one that does)
    assert r.replays_cuda_graphs is False  # on the CPU nothing is replayed
    r.device = torch.device("cuda")
    assert r.replays_cuda_graphs is True
    part = AnalyticRewardConfig(_target_=f"{AnalyticReward.__module__}.{AnalyticReward.__qualname__}")
    combo = ComboReward(ComboRewardConfig(components={"a": part}, weights={"a": 1.0}))
    assert combo.replays_cuda_graphs is False
    combo.components["a"] = r
    assert combo.replays_cuda_graphs is True


# ----------------------------------------------------------------------------------------- fp32 ranking at small t
@pytest.fixture(scope="module")
def bf16_and_fp32_priors(tiny_sd):
    """The tiny pipeline twice: in bf16 (the CUDA default's precision, here on the CPU) and in fp32 (the exact path)."""
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior

    low, exact = (StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), dtype=d)) for d in ("bf16", "fp32"))
    low.keep_fp32_view()  # (the engine asks for it when it is built before the prior is placed, as in a run)
    return low.to("cpu"), exact.to("cpu")


def _ranked(engine, prior, t, n=6, step=3):
    """(rewards [n], model evaluations) of one ranked step's candidates at t."""
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    text = prior.text_cond(["a photo of the cat"], "")
    cands = engine.draw(z, t, n, step)
    cands.eps_cond, cands.eps_uncond = engine.predict(cands, text)
    engine.look_ahead_and_score(cands, text, ["a photo of the cat"])
    return cands.rewards, cands.evals


@pytest.mark.parametrize("steps", [6, 0])
def test_fp32_below_ranks_small_t_candidates_as_the_fp32_prior_does(bf16_and_fp32_priors, steps):
    low, exact = bf16_and_fp32_priors
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    view = low.fp32_view()
    assert view is not low and view.unet is not low.unet and view.dtype == torch.float32
    assert next(view.unet.parameters()).dtype == torch.float32 and next(low.unet.parameters()).dtype == torch.bfloat16
    assert view.text_encoder is low.text_encoder and next(low.text_encoder.parameters()).dtype == torch.float32
    assert low.fp32_view() is view and exact.fp32_view() is exact  # built once; an fp32 eager prior is its own view
    for t in (120, 700):
        want, want_evals = _ranked(make_engine(exact, reward, steps=steps), exact, t)
        plain, plain_evals = _ranked(make_engine(low, reward, steps=steps), low, t)
        fp32, fp32_evals = _ranked(make_engine(low, reward, steps=steps, fp32_below=250), low, t)
        if t < 250:  # the fp32 view ranks: the exact path's rewards, with the call at t made again in fp32
            assert torch.allclose(fp32, want, atol=1e-6, rtol=1e-5), (fp32 - want).abs().max()
            assert (plain - want).abs().max() > 100 * (fp32 - want).abs().max()
            assert fp32_evals == plain_evals + 2 * 6
        else:  # above the threshold the step is the plain bf16 one, bit for bit
            assert torch.equal(fp32, plain) and fp32_evals == plain_evals
    eng = make_engine(low, reward, steps=steps, fp32_below=250)
    ts = [120, 700]
    assert eng.expected_evals(ts, 6, 1, True) == make_engine(low, reward, steps=steps).expected_evals(ts, 6, 1, True) + 6


def test_fp32_below_restores_the_tf32_switches_and_sets_them_while_it_ranks(bf16_and_fp32_priors, monkeypatch):
    low, _ = bf16_and_fp32_priors
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    seen = []
    view = low.fp32_view()
    real = view.predict_noise

    def spy(*a, **k):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real(*a, **k)

    monkeypatch.setattr(view, "predict_noise", spy)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for allow in (False, True):
        seen.clear()
        _ranked(make_engine(low, reward, steps=6, fp32_below=250, fp32_tf32=allow), low, 120)
        assert seen and set(seen) == {(allow, allow)}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_an_fp32_view_asked_for_after_the_weights_were_cast_is_refused(tiny_sd):
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior

    late = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), dtype="bf16")).to("cpu")
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    with pytest.raises(RuntimeError, match=r"cast to torch.bfloat16 .* needs them as loaded; call keep_fp32_view\(\) before to\(\)"):
        make_engine(late, reward, steps=6, fp32_below=250)
    with pytest.raises(RuntimeError, match=r"kept no fp32 weights"):
        late.fp32_view()
    make_engine(late, reward, steps=6)  # off: nothing asked
    exact = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), dtype="fp32")).to("cpu")
    assert make_engine(exact, reward, steps=6, fp32_below=250).ranker(100) is exact  # eager fp32: nothing to copy
    assert exact._fp32_modules is None


def test_fp32_ranking_in_chunks_overlapped_keeps_the_rewards_and_the_rewards_tf32_switches(bf16_and_fp32_priors, monkeypatch):
    """With lookahead.overlap the fp32 ranking gives the rewards of the plain order; the TF32 switches it sets reach the
    view's calls and decodes, never the reward (which keeps the run's switches in either order)."""
    low, _ = bf16_and_fp32_priors
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    view = low.fp32_view()
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    seen: dict[str, set] = {"unet": set(), "decode": set(), "reward": set()}

    def spy(name, fn):
        def wrapped(*a, **k):
            seen[name].add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(view, "predict_noise", spy("unet", view.predict_noise))
    monkeypatch.setattr(view, "decode_candidates", spy("decode", view.decode_candidates))
    scored = type(reward).__call__  # (called through the class: patch it there, restored after the test)
    monkeypatch.setattr(type(reward), "__call__", lambda self, *a, **k: spy("reward", scored)(self, *a, **k))
    got = {}
    for overlap in (False, True):
        eng = make_engine(low, reward, steps=6, fp32_below=250, fp32_tf32=True, overlap=overlap, chunk_size=4)
        got[overlap], _ = _ranked(eng, low, 120)
        assert eng.candidate_chunks(eng.draw(torch.zeros(1, 4, 8, 8), 120, 6, 0)) == ([(0, 2), (2, 4), (4, 6)] if overlap else [(0, 6)])
    assert torch.allclose(got[True], got[False], atol=1e-6)
    assert seen["unet"] == seen["decode"] == {(True, True)} and seen["reward"] == {before}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_fp32_ranking_on_a_prior_that_is_its_own_view_sets_only_the_switches(tiny_sd_prior, monkeypatch):
    """An eager fp32 prior ranks on itself below the threshold: the call at t is reused (no extra evaluations), and
    only the TF32 switches change, so on CUDA its fp32 convolutions run without cuDNN's TF32 default."""
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    seen = set()
    real = tiny_sd_prior.predict_noise

    def spy(*a, **k):
        seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real(*a, **k)

    plain, plain_evals = _ranked(make_engine(tiny_sd_prior, reward, steps=6), tiny_sd_prior, 120)
    monkeypatch.setattr(tiny_sd_prior, "predict_noise", spy)
    eng = make_engine(tiny_sd_prior, reward, steps=6, fp32_below=250)
    assert eng.ranker(120) is tiny_sd_prior and eng.ranks_in_fp32(120) and not eng.ranks_in_fp32(250)
    got, evals = _ranked(eng, tiny_sd_prior, 120)
    assert torch.equal(got, plain) and evals == plain_evals
    assert (False, False) in seen  # the lookahead's calls after the reused one ran with both switches off


def test_the_fp32_view_moves_only_with_its_prior(bf16_and_fp32_priors):
    low, _ = bf16_and_fp32_priors
    view = low.fp32_view()
    with pytest.raises(RuntimeError, match="moves with its prior: call to\\(\\) on the prior"):
        view.to("cpu")
    assert low.to("cpu").fp32_view() is view  # placed again on the same device: the same view
    assert next(view.unet.parameters()).dtype == torch.float32


def test_an_automatic_chunk_size_is_halved_for_the_fp32_view(bf16_and_fp32_priors, monkeypatch):
    """The automatic size is measured on the prior's bf16 activations; the fp32 view's are twice as wide, so its calls
    take half as many inputs (whole CFG pairs). A chunk_size the user set is kept as it is."""
    low, _ = bf16_and_fp32_priors
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    view = low.fp32_view()
    sizes = {"prior": set(), "view": set()}
    for name, p in (("prior", low), ("view", view)):
        real = p.predict_noise_pair
        monkeypatch.setattr(p, "predict_noise_pair", lambda *a, _real=real, _name=name, **k: (sizes[_name].add(a[4]), _real(*a, **k))[1])
    auto = make_engine(low, reward, steps=6, fp32_below=250)
    monkeypatch.setattr(auto, "chunk_size", lambda example: 8)  # as if measured on CUDA (automatic: requested 0)
    _ranked(auto, low, 120)
    assert sizes == {"prior": {8}, "view": {4}}
    sizes["prior"].clear(), sizes["view"].clear()
    _ranked(make_engine(low, reward, steps=6, fp32_below=250, chunk_size=8), low, 120)
    assert sizes == {"prior": {8}, "view": {8}}
