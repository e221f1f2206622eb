"""The measuring scripts of scripts/ run end to end on the CPU with tiny random models, and what they record adds up.

The analytic scripts (agreement, trade-off) run in the default test run (seconds each); the benchmark, the wall-time
projection and the step profile take about a minute each on a 2-core CPU and are marked ``slow``.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """Import ``scripts/<name>.py`` as a module (the scripts import each other by name from scripts/)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _calls(t: int, start: str = "exact_t") -> int:
    """Model calls of the 15-point leading lookahead from t."""
    from rewardsds import ddim

    return len(ddim.lookahead_calls(t, ddim.grid("leading", 15), start))


def test_agreement_analytic_runs_and_pruning_ranks_kept_above_pruned(tmp_path, capsys):
    out = tmp_path / "agreement.json"
    assert _script("agreement_analytic").main(["--seeds", "0", "--steps", "3", "--n", "4", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["n_noises"] == 4 and r["seeds"] == [0] and r["steps_per_seed"] == 3
    assert r["lookahead"] == {"lookahead_steps": "15", "lookahead_guidance": "7.5", "lookahead_grid": "leading",
                              "lookahead_start": "exact_t"}
    assert set(r["paths"]) == {"lookahead_8_steps", "lookahead_4_steps", "lookahead_1_step", "one_step_x0 (K=0)", "prune_to_2",
                               "reference_start (grid point <= t)", "bf16_rounded_predictions (emulated)",
                               "bf16_rounded, fp32 ranking below t=250 (emulated)",
                               "lookahead.overlap, chunks of 2", "prune_to_2, kept above pruned, rebuilt from the exact run (check)"}
    for rep in r["paths"].values():
        assert rep["n_draws"] == 3 and 0.0 <= rep["agreement"] <= 1.0
    # the engine's pruning ranks every kept candidate above every pruned one: the script's own ranking selects alike
    engine, rebuilt = r["paths"]["prune_to_2"], r["paths"]["prune_to_2, kept above pruned, rebuilt from the exact run (check)"]
    assert (engine["agreement"], engine["top_agreement"], engine["bottom_agreement"]) == \
        (rebuilt["agreement"], rebuilt["top_agreement"], rebuilt["bottom_agreement"])
    assert (tmp_path / "agreement.md").read_text().startswith("(1 seeds x 3 steps")
    # below t = 250 the lever ranks on the unrounded prior: the exact path's rewards there
    assert r["paths"]["bf16_rounded, fp32 ranking below t=250 (emulated)"]["agreement_t_below_250"] in (None, 1.0)
    overlap = r["paths"]["lookahead.overlap, chunks of 2"]  # the same computation in two chunks: the same rewards
    assert overlap["agreement"] == 1.0 and overlap["regret_max"] == 0.0 and overlap["rank_correlation"] == pytest.approx(1.0)


def test_cli_vs_benchmark_compares_the_same_steps():
    """The CLI's fitted step time at the benchmark's own steps: equal lines give 1, a CLI that adds 10 ms to every
    step gives exactly that excess at each step's evaluations."""
    bench = _script("benchmark")
    steps = [{"evals": e, "ms": 100.0 + 2.0 * e} for e in (40, 120, 300)]
    assert bench.step_fit([40, 120, 300], [r["ms"] for r in steps]) == pytest.approx({"fixed_ms": 100.0, "ms_per_eval": 2.0})
    same = bench.cli_vs_benchmark({"fixed_ms": 100.0, "ms_per_eval": 2.0}, {"per_step": steps})
    assert same["median_ratio"] == pytest.approx(1.0) and same["total_ratio"] == pytest.approx(1.0)
    slower = bench.cli_vs_benchmark({"fixed_ms": 110.0, "ms_per_eval": 2.0}, {"per_step": steps})
    assert slower["median_ratio"] == pytest.approx(350.0 / 340.0)  # the middle step: 120 evals
    assert slower["total_ratio"] == pytest.approx((190 + 350 + 710) / (180 + 340 + 700))
    assert slower["benchmark_fit_ms"] == pytest.approx({"fixed_ms": 100.0, "ms_per_eval": 2.0})
    # with --sections compile_cache,paper the CLI's second run is compared with this run's compiled row
    results = {"compile_cache": {"runs": [{"run": 1}, {"run": 2, "fit_ms": {"fixed_ms": 110.0, "ms_per_eval": 2.0}}]}}
    bench.compare_cli(results, {"rewardsds_n10_k15_eager": {"per_step": steps}}, "this run")
    assert "cli_vs_benchmark" not in results["compile_cache"]  # only the compiled row (the CUDA default) is the reference
    bench.compare_cli(results, {bench.AGAINST_ROW: {"per_step": steps}}, "this run")
    vs = results["compile_cache"]["cli_vs_benchmark"]
    assert vs["against"] == "this run" and vs["row"] == bench.AGAINST_ROW and vs["median_ratio"] == pytest.approx(350.0 / 340.0)


def test_benchmark_agreement_of_chosen_paths_only(tmp_path):
    """--only-path measures the named agreement paths alone (a device call's time goes to more draws of them); an
    unknown name stops with the list of the paths there are."""
    out = tmp_path / "bench.json"
    args = ["--preset", "tiny", "--device", "cpu", "--draws", "4", "--sections", "agreement,attribution", "--sd-folder", str(tmp_path / "sd"),
            "--image-reward-dir", str(tmp_path / "ir"), "--out", str(out), "--only-path", "attribution: bf16 prior, exact reward"]
    assert _script("benchmark").main(args) == 0
    paths = json.loads(out.read_text())["agreement"]["paths"]
    assert list(paths) == ["attribution: bf16 prior, exact reward"] and paths["attribution: bf16 prior, exact reward"]["n_draws"] == 4
    with pytest.raises(SystemExit, match="--only-path 'bf16_compiled': no such agreement path.*eager"):
        _script("benchmark").main([*args[:-1], "bf16_compiled"])


def test_benchmark_fp32_ranking_section_times_and_measures_its_paths(tmp_path):
    """--sections fp32_ranking: the compiled default's row, the two lookahead.fp32_below rows (full fp32 and TF32) with
    what they add below and above the threshold and per 1000-step image, and their agreement paths. (On the CPU the
    "compiled" prior is eager fp32, its own fp32 view: the rows check the plumbing, not a cost.)"""
    out = tmp_path / "bench.json"
    args = ["--preset", "tiny", "--device", "cpu", "--steps", "4", "--warmup", "1", "--draws", "4", "--sections", "fp32_ranking",
            "--fp32-below", "500", "--sd-folder", str(tmp_path / "sd"), "--image-reward-dir", str(tmp_path / "ir"), "--out", str(out),
            "--only-path", "compiled, fp32 ranking below t=500", "--only-path", "compiled, fp32 ranking below t=500, TF32",
            "--only-path", "attribution: compiled, fp32 decode only below t=500"]
    assert _script("benchmark").main(args) == 0
    r = json.loads(out.read_text())
    rows = {"rewardsds_n10_k15_compiled_fp32_below500", "rewardsds_n10_k15_compiled_fp32_below500_tf32"}
    assert rows | {"rewardsds_n10_k15_compiled"} <= set(r["configs"])
    assert r["configs"]["rewardsds_n10_k15_compiled_fp32_below500_tf32"]["overrides"] == ["lookahead.fp32_below=500", "lookahead.fp32_tf32=true"]
    cost = r["fp32_ranking"]
    assert cost["fp32_below"] == 500 and set(cost["rows"]) == rows and 0.45 < cost["paper_2d_share_of_steps_below"] < 0.55
    ts = [s["t"] for s in r["configs"]["rewardsds_n10_k15_compiled"]["per_step"]]
    for row in cost["rows"].values():
        assert row["steps_below"] == sum(t < 500 for t in ts) and row["steps_above"] == sum(t >= 500 for t in ts)
        if row["extra_ms_below"] is not None:
            assert row["extra_s_per_1000_steps"] == pytest.approx(row["extra_ms_below"] * cost["paper_2d_share_of_steps_below"])
    paths = r["agreement"]["paths"]
    assert set(paths) == {"compiled, fp32 ranking below t=500", "compiled, fp32 ranking below t=500, TF32",
                          "attribution: compiled, fp32 decode only below t=500"}
    assert paths["attribution: compiled, fp32 decode only below t=500"]["engine"] == {"fp32_below": 500, "decode_only": True}
    assert paths["compiled, fp32 ranking below t=500, TF32"]["engine"] == {"fp32_below": 500, "fp32_tf32": True}
    assert all(p["agreement"] == 1.0 for p in paths.values())  # fp32 on the CPU: the exact path's arithmetic


def test_benchmark_half_section_times_and_measures_the_default_beside_bf16(tmp_path):
    """--sections half: the compiled default (``prior.dtype=auto``) and the same prior in bf16 as step rows, and the bf16
    agreement path. On the CPU auto is fp32 and the "compiled" prior eager, but the bf16 prior computes in bf16 there too,
    so its rewards move away from the exact fp32 path's while the eager (auto) path's do not."""
    out = tmp_path / "bench.json"
    B = _script("benchmark")
    args = ["--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--draws", "4", "--sections", "half",
            "--sd-folder", str(tmp_path / "sd"), "--image-reward-dir", str(tmp_path / "ir"), "--out", str(out),
            "--only-path", B.BF16_PATH, "--only-path", "eager"]
    assert B.main(args) == 0
    r = json.loads(out.read_text())
    rows = r["configs"]
    assert rows["rewardsds_n10_k15_compiled"]["prior_dtype"] == "float32"  # auto on the CPU
    assert rows["rewardsds_n10_k15_compiled_bf16"]["prior_dtype"] == "bfloat16"
    assert rows["rewardsds_n10_k15_compiled_bf16"]["evals_per_step"] == rows["rewardsds_n10_k15_compiled"]["evals_per_step"]
    paths = r["agreement"]["paths"]
    assert set(paths) == {B.BF16_PATH, "eager"}
    assert (paths[B.BF16_PATH]["prior"], paths[B.BF16_PATH]["prior_dtype"], paths["eager"]["prior_dtype"]) == (
        "compiled_bf16", "bfloat16", "float32")
    err = {name: p["reward_abs_err_over_spread"] for name, p in paths.items()}
    # fp32 on the CPU: the exact path's prior (its reward's tensor preprocessing moves the 8-bit levels a little);
    # bf16 rounds the prior's every layer: its rewards move more
    assert err["eager"] < 1e-3 and err[B.BF16_PATH] > 5 * err["eager"], err


def test_pooling_refuses_one_path_name_measured_with_different_priors(tmp_path):
    """The default's path after its dtype changed is not the same measurement as before: pool_agreement refuses to
    add them up (a run that did not record the dtype counts as different)."""
    P = _script("pool_agreement")
    row = {"seed": 0, "step": 0, "t": 500, "top_match": True, "bottom_match": True, "match": True, "regret": 0.0,
           "reward_spread": 1.0, "reward_max_abs_err": 0.0, "rank_corr": 1.0}
    settings = {"n_noises": 10, "lookahead_steps": 15, "n_max": 2, "n_min": 2, "exact": "fp32"}

    def run(name, seed, **path):
        f = tmp_path / name
        f.write_text(json.dumps({"device": "H100", "agreement": {**settings, "paths": {
            "default": {"per_draw": [{**row, "seed": seed}], "prior": "compiled", "reward": "fast", "engine": {}, **path}}}}))
        return f

    old, new, new2 = run("old.json", 0), run("new.json", 1, prior_dtype="float16"), run("new2.json", 2, prior_dtype="float16")
    with pytest.raises(SystemExit, match=r"path 'default': prior_dtype is None in .*old.json but 'float16' in .*new.json"):
        P.pool([old, new])
    assert P.pool([new, new2])["paths"]["default"]["n_draws"] == 2


def test_agreement_draws_of_an_annealed_run_spread_over_its_steps():
    """MVDream's draws: 4 views per scene, steps spread over the reward's share of the run, t within the annealed range
    of each draw's step (mvdream_nerf: at step 0 t = 980; at step 2500 t in [679, 830])."""
    from types import SimpleNamespace

    from rewardsds.schedules import Schedule, TimestepSampler

    B = _script("benchmark")
    sampler = TimestepSampler(Schedule(0.98, 0.02, 0, 8000), Schedule(0.98, 0.5, 0, 8000), 1000)
    draws = B.agreement_draws(SimpleNamespace(draws=8, first_seed=3), (4, 32, 32), views=4, sampler=sampler, step_stride=2500)
    assert [(d.seed, d.step) for d in draws] == [(s, k) for s in (3, 4, 5, 6) for k in (0, 2500)]
    assert all(d.latents.shape == (4, 4, 32, 32) for d in draws)
    assert all(sampler.bounds(d.step)[0] <= d.t <= sampler.bounds(d.step)[1] for d in draws)
    assert {d.t for d in draws if d.step == 0} == {980} and sampler.bounds(2500) == (679, 830)
    # paper_2d's draws (the defaults): one latent, consecutive steps, t in [20, 980]
    flat = B.agreement_draws(SimpleNamespace(draws=4, first_seed=0), (4, 64, 64))
    assert [(d.step, tuple(d.latents.shape)) for d in flat] == [(0, (1, 4, 64, 64))] * 4


def test_pooling_reads_the_section_it_is_asked_for(tmp_path):
    """--section agreement_mvdream pools MVDream's draws (the benchmark's mvdream_agreement section), which a JSON keeps
    beside SD's; the settings it checks and reports are that section's (N x views)."""
    P = _script("pool_agreement")
    row = {"step": 0, "t": 900, "top_match": True, "bottom_match": True, "match": True, "regret": 0.0,
           "reward_spread": 1.0, "reward_max_abs_err": 0.0, "rank_corr": 1.0}
    sd = {"n_noises": 10, "lookahead_steps": 15, "n_max": 2, "n_min": 2, "exact": "fp32"}
    mv = {**sd, "n_noises": 7, "views": 4, "exact": "MVDream fp32"}
    path = {"prior": "mvdream_compiled_auto", "prior_dtype": "bfloat16", "reward": "fast", "engine": {}}

    def run(name, seed, match=True, **settings):
        f = tmp_path / name
        f.write_text(json.dumps({"device": "H100", "agreement": {**sd, "paths": {}},
                                 "agreement_mvdream": {**mv, **settings, "paths": {"default": {
                                     "per_draw": [{**row, "seed": seed, "match": match, "top_match": match}], **path}}}}))
        return f

    a, b = run("a.json", 0), run("b.json", 1, match=False)
    out = P.pool([a, b], section="agreement_mvdream")
    assert (out["section"], out["n_noises"], out["views"]) == ("agreement_mvdream", 7, 4)
    assert out["paths"]["default"]["n_draws"] == 2 and out["paths"]["default"]["agreement"] == 0.5
    assert P.markdown(out).startswith("pooled from 2 runs on H100 (agreement_mvdream: N=7 x 4 views, lookahead 15")
    with pytest.raises(SystemExit, match=r"a.json: has no agreement paths. Fix: name a benchmark JSON of a run with the agreement"):
        P.pool([a, b])  # SD's section of these runs is empty
    with pytest.raises(SystemExit, match=r"agreement_mvdream.n_noises is 7 in .*a.json but 8 in .*c.json"):
        P.pool([a, run("c.json", 2, n_noises=8)], section="agreement_mvdream")
    with pytest.raises(SystemExit, match=r"agreement_mvdream.views is 4 in .*a.json but 8 in .*d.json"):
        P.pool([a, run("d.json", 3, views=8)], section="agreement_mvdream")  # one group of views against the stage's two


def test_benchmark_markdown_shows_the_mvdream_agreement_of_a_run_that_measured_only_that():
    """The .md beside the JSON: a --sections mvdream_agreement run has no step rows, so it shows no empty step table,
    and its MVDream agreement gets a table of its own (N x views, draws, the bar)."""
    B = _script("benchmark")
    path = {"agreement": 32 / 36, "agreement_ci95": [0.75, 0.96], "top_agreement": 33 / 36, "bottom_agreement": 35 / 36,
            "rank_correlation": 0.989, "regret_mean": 0.001, "regret_max": 0.021, "default_ok": False}
    results = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "measured_steps": [2, 11], "timesteps": [826],
               "baseline": {}, "configs": {}, "speedups": {}, "agreement": {},
               "agreement_mvdream": {"n_noises": 7, "views": 4, "draws": [{}] * 36, "paths": {B.MVDREAM_DEFAULT_PATH: path}}}
    md = B.table(results)
    assert "| config |" not in md and "timesteps" not in md.splitlines()[0]
    assert "(MVDream, N=7, 4 views, 36 draws)" in md
    assert f"| {B.MVDREAM_DEFAULT_PATH} | 88.9% (75%-96%) | 92% | 97% | 0.989 | 0.001 / 0.021 | misses |" in md


def test_pooling_alias_joins_a_renamed_path_and_sets_the_names_old_meaning_aside(tmp_path):
    """--alias OLD=NEW pools an older run's path under its new name: the alias vouches for the prior's label and dtype
    (which the older run named otherwise or did not record), not for the reward or the engine; the older run's own
    NEW (what the name meant then) is set aside, not pooled."""
    P = _script("pool_agreement")
    row = {"seed": 0, "step": 0, "t": 500, "top_match": True, "bottom_match": True, "match": True, "regret": 0.0,
           "reward_spread": 1.0, "reward_max_abs_err": 0.0, "rank_corr": 1.0}
    settings = {"n_noises": 10, "lookahead_steps": 15, "n_max": 2, "n_min": 2, "exact": "fp32"}
    base = {"reward": "fast", "engine": {}}

    def run(name, seed, paths):
        f = tmp_path / name
        f.write_text(json.dumps({"device": "H100", "agreement": {**settings, "paths": {
            k: {"per_draw": [{**row, "seed": seed, "match": m, "top_match": m}], **base, **v} for k, (m, v) in paths.items()}}}))
        return f

    # the older version: the default was bf16, and fp16 had its own name; the newer one: the default is fp16
    old = run("old.json", 0, {"fp16": (False, {"prior": "compiled_fp16"}), "default": (True, {"prior": "compiled"})})
    old2 = run("old2.json", 1, {"fp16": (True, {"prior": "compiled_fp16"})})
    new = run("new.json", 2, {"default": (True, {"prior": "compiled", "prior_dtype": "float16"})})
    aliases = P.parse_aliases(["fp16=default"])
    out = P.pool([old, old2, new], aliases=aliases)
    pooled = out["paths"]["default"]
    assert pooled["n_draws"] == 3 and pooled["agreement"] == pytest.approx(2 / 3)  # the fp16 draws, not old's bf16 one
    assert [m["seed"] for m in pooled["misses"]] == [0]
    assert out["left_out"] == ["default (its meaning in old.json)"]
    assert [(a["file"].endswith("old.json"), a["prior"], a["prior_dtype"], a["displaced"] is not None) for a in out["aliases"]] \
        == [(True, "compiled_fp16", None, True), (False, "compiled_fp16", None, False)]
    assert "aliased: 'fp16'" in P.markdown(out)
    # what the alias does not vouch for still has to match: the reward, and the prior's label within the aliased runs
    odd_reward = run("odd_reward.json", 3, {"fp16": (True, {"prior": "compiled_fp16", "reward": "bf16"})})
    with pytest.raises(SystemExit, match=r"path 'default': reward is 'fast' in .*old.json but 'bf16' in .*odd_reward.json"):
        P.pool([old, odd_reward, new], aliases=P.parse_aliases(["fp16=default"]))
    odd_prior = run("odd_prior.json", 4, {"fp16": (True, {"prior": "eager_fp16"})})
    with pytest.raises(SystemExit, match=r"prior is 'compiled_fp16' in .*old.json but 'eager_fp16' in .*odd_prior.json"):
        P.pool([old, odd_prior, new], aliases=P.parse_aliases(["fp16=default"]))
    with pytest.raises(SystemExit, match=r"--alias 'fp16': expected OLD=NEW"):
        P.parse_aliases(["fp16"])
    with pytest.raises(SystemExit, match=r"--alias: 'default' is both a name renamed and a new name"):
        P.parse_aliases(["fp16=default", "default=final"])
    with pytest.raises(SystemExit, match=r"--alias fp61=default: no run measured a path 'fp61'. Fix: name one of the runs' "
                                         r"paths: 'default', 'fp16'"):
        P.pool([old, new], aliases=P.parse_aliases(["fp61=default"]))


@pytest.mark.slow
def test_benchmark_mvdream_section_runs_batched_and_sequential_steps(tmp_path):
    """--sections mvdream: the training step's batched MVDream candidates and the reference's one-at-a-time loop make
    the same model calls (N = 7 x 4 views, the lookahead from t), each timed once."""
    out = tmp_path / "bench.json"
    args = ["--preset", "tiny", "--device", "cpu", "--sections", "mvdream", "--mv-steps", "1", "--warmup", "0",
            "--image-reward-dir", str(tmp_path / "ir"), "--out", str(out)]
    assert _script("benchmark").main(args) == 0
    mv = json.loads(out.read_text())["mvdream"]
    assert (mv["n_noises"], mv["views"]) == (7, 4)
    assert mv["batched"]["n"] == mv["sequential"]["n"] == 1
    assert mv["batched"]["evals_per_step"] == mv["sequential"]["evals_per_step"] > 2 * 7 * 4


@pytest.mark.slow
def test_benchmark_mvdream_agreement_section(tmp_path):
    """--sections mvdream_agreement: MVDream's exact fp32 path against the default (prior.dtype=auto: fp32 on the CPU,
    eager) and the bf16 prior, in mvdream_nerf's RewardSDS stage (N = 7 x 8 views, linspace 15 from t, CFG 50, t as the
    experiment anneals it). On the CPU the default path computes what the exact one does (only the reward's tensor
    preprocessing differs), while bf16 rounds every layer: its rewards move more."""
    out = tmp_path / "bench.json"
    B = _script("benchmark")
    args = ["--preset", "tiny", "--device", "cpu", "--draws", "1", "--per-draw", "--sections", "mvdream_agreement",
            "--sd-folder", str(tmp_path / "sd"), "--image-reward-dir", str(tmp_path / "ir"), "--out", str(out)]
    assert B.main(args) == 0
    sec = json.loads(out.read_text())["agreement_mvdream"]
    assert (sec["n_noises"], sec["views"], sec["lookahead"], sec["reward_views"], sec["n_max"], sec["n_min"]) == (
        7, 8, "linspace 15 from exact_t, CFG 50", "mean", 2, 2)
    assert sec["draws"] == [{"seed": 0, "step": 0, "t": 980}]  # step 0 of the annealing: t_min = t_max = 0.98
    paths = sec["paths"]
    assert set(paths) == {B.MVDREAM_DEFAULT_PATH, B.MVDREAM_BF16_PATH}
    default, half = paths[B.MVDREAM_DEFAULT_PATH], paths[B.MVDREAM_BF16_PATH]
    assert (default["prior_dtype"], half["prior_dtype"]) == ("float32", "bfloat16")
    assert len(default["per_draw"]) == 1 and default["per_draw"][0]["t"] == 980
    assert default["reward_abs_err_over_spread"] < 1e-3 and half["reward_abs_err_over_spread"] > 5 * default["reward_abs_err_over_spread"]


@pytest.mark.slow
def test_benchmark_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--draws", "1", "--time-limit", "900",
            "--sections", "paper,agreement,variants,mfu,levers,attribution", "--sd-folder", str(tmp_path / "sd"), "--image-reward-dir", str(tmp_path / "ir"),
            "--out", str(out)]
    assert _script("benchmark").main(args) == 0
    r = json.loads(out.read_text())
    assert "skipped" not in r
    chunked = ["rewardsds_n10_k15_compiled_2chunks", "rewardsds_n10_k15_compiled_2chunks_overlap"]
    assert set(r["configs"]) == {"rewardsds_n10_k15_eager", "sds_eager", "rewardsds_n10_k15_prune5_eager",
                                 "rewardsds_n10_k15_compiled_reward_compiled", "rewardsds_n10_k15_compiled_cudnn_benchmark",
                                 "rewardsds_n10_k15_compiled_cudnn_attention", "rewardsds_n10_k15_compiled_bf16_reward", *chunked}
    levers = r["configs"]["rewardsds_n10_k15_compiled_reward_compiled"], r["configs"]["rewardsds_n10_k15_compiled_cudnn_benchmark"]
    assert [(c["reward_variant"], c["cudnn_benchmark"]) for c in levers] == [("fast_compiled", False), ("fast", True)]
    evals = [row["evals"] for row in r["configs"]["rewardsds_n10_k15_eager"]["per_step"]]
    assert [row["evals"] for row in levers[0]["per_step"]] == evals
    for name in chunked:  # two chunks of 5 candidates (10 UNet inputs per call): the same evaluations
        assert r["configs"][name]["chunk_size"] == 10 and [row["evals"] for row in r["configs"][name]["per_step"]] == evals
    assert r["configs"][chunked[1]]["overrides"] == ["chunk_size=10", "lookahead.overlap=true"]
    assert r["configs"]["rewardsds_n10_k15_compiled_cudnn_attention"]["attention"] == "cudnn"
    assert r["configs"]["rewardsds_n10_k15_eager"]["attention"] == "auto"
    assert set(r["unet_attention_batch20"]) == {"auto", "cudnn", "cudnn_speedup"} and r["unet_attention_batch20"]["cudnn"]["n"] == 10
    for row in r["configs"]["rewardsds_n10_k15_eager"]["per_step"]:  # the lookahead reuses the prediction at t
        assert row["evals"] == 2 * 10 * _calls(row["t"])
    for row in r["configs"]["rewardsds_n10_k15_prune5_eager"]["per_step"]:  # all at t, the lookahead for the best 5
        assert row["evals"] == 2 * 10 + 2 * 5 * (_calls(row["t"]) - 1)
    assert [row["evals"] for row in r["configs"]["sds_eager"]["per_step"]] == [2, 2]
    for row in r["baseline"]["reference_n10_k15"]["per_step"]:  # from the grid point <= t; SDS on the 4 kept
        assert row["evals"] == 2 * 10 * _calls(row["t"], "grid") + 2 * 4
    assert [row["t"] for row in r["configs"]["rewardsds_n10_k15_eager"]["per_step"]] == r["timesteps"]
    assert set(r["speedups"]) == {"rewardsds_n10_k15_eager_vs_reference", "rewardsds_n10_k15_compiled_reward_compiled_vs_reference",
                                  "rewardsds_n10_k15_compiled_cudnn_benchmark_vs_reference",
                                  "rewardsds_n10_k15_compiled_cudnn_attention_vs_reference",
                                  "rewardsds_n10_k15_compiled_bf16_reward_vs_reference", *(f"{c}_vs_reference" for c in chunked)}
    assert r["configs"]["rewardsds_n10_k15_compiled_bf16_reward"]["reward_variant"] == "bf16"
    paths = r["agreement"]["paths"]
    assert set(paths) == {"eager", "prune_to_5", "lookahead_8_steps", "lookahead_4_steps", "lookahead_1_step", "one_step_x0 (K=0)",
                          "compiled, compiled reward", "compiled, cudnn.benchmark", "compiled, cuDNN attention",
                          "compiled, 2 chunks overlapped", *(a[0] for a in _script("benchmark").ATTRIBUTION_PATHS)}
    for p in paths.values():  # every rate comes with what its draws can show and what its misses cost
        lo, hi = p["agreement_ci95"]
        assert 0.0 <= lo <= p["agreement"] <= hi <= 1.0 and 0.0 <= p["regret_mean"] <= p["regret_max"] <= 1.0
        assert p["default_shown"] is False  # one draw shows nothing
    assert paths["prune_to_5"]["engine"] == {"prune_to": 5} and paths["lookahead_4_steps"]["engine"] == {"lookahead_steps": 4}
    assert paths["compiled, 2 chunks overlapped"]["engine"] == {"overlap": True, "chunk_size": r["agreement"]["n_noises"]}
    assert all(p["n_draws"] == 1 for p in paths.values())
    assert "(95% interval)" in (tmp_path / "bench.md").read_text() and "fixed + per eval" in (tmp_path / "bench.md").read_text()
    assert r["lookahead_mfu"]["eager"]["unet_inputs"] == 2 * 10 * _calls(979)


def test_stalled_samples_finds_a_one_off_stall():
    """The wall-time projection's stall finder: on the H100's mvdream_nerf samples (a step of 2087 ms among steps of
    740-1160 ms) it drops exactly that sample; a clean line, a fast sample and mere noise drop nothing."""
    B = _script("benchmark")
    measured = Path(__file__).parents[1] / "scripts/measurements/2026-12-06_h100/walltime_mvdream_nerf_fp16_default.json"
    rows = json.loads(measured.read_text())["stages"][0]["samples"]
    xs, ys = [r["lookahead_calls"] for r in rows], [r["ms"] for r in rows]
    assert [rows[i]["step"] for i in B.stalled_samples(xs, ys)] == [909]
    line = [300.0 + 60.0 * x for x in xs]
    assert B.stalled_samples(xs, line) == []
    assert B.stalled_samples(xs, [y * (0.97 if i % 2 else 1.03) for i, y in enumerate(line)]) == []  # noise
    assert B.stalled_samples(xs, [y - (500 if i == 3 else 0) for i, y in enumerate(line)]) == []  # a fast sample is kept
    stalled = [y + (400 if i == 5 else 0) for i, y in enumerate(line)]
    (i,) = B.stalled_samples(xs, stalled)
    assert i == 5
    kept = [j for j in range(len(xs)) if j != i]
    assert B.fit_line([xs[j] for j in kept], [stalled[j] for j in kept]) == pytest.approx((300.0, 60.0))


@pytest.mark.slow
def test_project_walltime_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "walltime.json"
    args = ["--experiment", "paper_2d", "--preset", "tiny", "--device", "cpu", "--samples", "2", "--warmup", "1", "--steps", "4",
            "--out", str(out)]
    assert _script("project_walltime").main(args) == 0
    r = json.loads(out.read_text())
    (stage,) = r["stages"]
    assert stage["reward_on"] is True and (stage["start"], stage["end"]) == (0, 4)
    for row in stage["samples"]:  # paper_2d: N = 10, the leading grid from exactly t (its first call is the prediction at t)
        assert row["lookahead_calls"] == _calls(row["t"])
        assert row["evals"] == 2 * 10 * row["lookahead_calls"]
    assert r["projected_total_s"] == pytest.approx(r["projected_steps_s"] + r["startup_s"] + r["compile_s"])
    assert stage["stalled_steps"] == []  # two samples fix the robust line: neither can be a stall
    assert r["projected_total_s_without_stalls"] == pytest.approx(r["projected_total_s"])
    assert stage["fit_ms_without_stalls"] == stage["fit_ms"]
    assert stage["torch_compile_s"] == 0.0  # CPU: the prior stays eager, Dynamo compiles nothing


@pytest.mark.slow
def test_profile_step_tiny_cpu(tmp_path, capsys):
    args = ["--preset", "tiny", "--device", "cpu", "--steps", "1", "--sd-folder", str(tmp_path / "sd"),
            "--overrides", "strategy=min_max", "n_noises=4", "lookahead.steps=4"]
    from rewardsds.testing import build_sd_pipeline

    build_sd_pipeline(tmp_path / "sd", "tiny")
    assert _script("profile_step").main(args) == 0
    text = capsys.readouterr().out
    table = text[text.index("stage "):text.index("---")]
    ms = {line.split()[0]: float(line.split()[1]) for line in table.splitlines()[1:] if line.strip()}
    assert {"render", "draw", "predict", "look_and_score", "weigh", "loss_rest", "optimizer_step"} <= set(ms)
    # loss_rest is the whole of distill: it holds the engine's stages
    assert ms["loss_rest"] >= ms["predict"] + ms["look_and_score"] > 0


def test_tradeoff_analytic(tmp_path, capsys):
    out = tmp_path / "tradeoff.md"
    assert _script("tradeoff_analytic").main(["--seeds", "0", "--steps", "3", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(_script("tradeoff_analytic").VARIANTS)
    evals = {row.split(" | ")[0][2:]: float(row.split(" | ")[5]) for row in rows}
    assert evals["SDS (N=1)"] == 2.0 and evals["RewardSDS N=8, K=0 (one-step x0)"] == 16.0


def test_benchmark_fp32_decode_only_attribution_decodes_small_t_candidates_in_fp32(tiny_sd):
    """The benchmark's attribution engine: below the threshold the bf16 lookahead's x0 go through the fp32 view's decoder
    (the same images as decoding them there by hand), above it the step is the plain bf16 one."""
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior
    from rewardsds.rewards.analytic import AnalyticReward
    from rewardsds.rewards.config import AnalyticRewardConfig

    B = _script("benchmark")
    low = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), dtype="bf16"))
    low.keep_fp32_view()
    low.to("cpu")
    reward = AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16))
    text = low.text_cond(["a cat"], "")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    def images(engine, t):
        c = engine.draw(z, t, 4, 1)
        c.eps_cond, c.eps_uncond = engine.predict(c, text)
        return engine.look_ahead_and_score(c, text, ["a cat"]), engine.lookahead(c, text, first=(c.eps_cond, c.eps_uncond))

    attr = B.FP32DecodeOnlyEngine(low, reward, B.lookahead_config(6, fp32_below=250), chunk_size=0)
    plain = B.CandidateEngine(low, reward, B.lookahead_config(6), chunk_size=0)
    got, x0 = images(attr, 120)
    assert torch.equal(x0, images(plain, 120)[1])  # the lookahead stays bf16, reusing the prediction at t
    with torch.no_grad():
        assert torch.allclose(got, low.fp32_view().decode_candidates(x0), atol=1e-6)
        assert (got - low.decode_candidates(x0)).abs().max() > 1e-3  # not the bf16 decoder's images
    assert torch.equal(images(attr, 600)[0], images(plain, 600)[0])


def test_benchmark_first_seed_gives_new_draws_that_pool_agreement_adds_up(tmp_path, capsys):
    """Two benchmark runs (the second with --first-seed past the first's seeds) pool into one measurement over all their
    draws; a draw measured twice, runs that measured different things, or runs of different GPUs are refused by name."""
    base = ["--preset", "tiny", "--device", "cpu", "--draws", "4", "--sections", "agreement", "--per-draw", "--only-path", "eager",
            "--sd-folder", str(tmp_path / "sd"), "--image-reward-dir", str(tmp_path / "ir")]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _script("benchmark").main([*base, "--out", str(a)]) == 0
    assert _script("benchmark").main([*base, "--out", str(b), "--first-seed", "4"]) == 0
    seeds = [[d["seed"] for d in json.loads(f.read_text())["agreement"]["draws"]] for f in (a, b)]
    assert seeds == [[0, 1, 2, 3], [4, 5, 6, 7]]
    pool = _script("pool_agreement")
    out = tmp_path / "pooled.json"
    assert pool.main([str(a), str(b), "--out", str(out)]) == 0
    p = json.loads(out.read_text())
    assert p["paths"]["eager"]["n_draws"] == 8 and p["left_out"] == [] and len(p["devices"]) == 1
    hits = sum(json.loads(f.read_text())["agreement"]["paths"]["eager"]["agreement"] * 4 for f in (a, b))
    assert p["paths"]["eager"]["agreement"] == pytest.approx(hits / 8)
    # the bar as the benchmark reports it: 8 draws cannot show 95% whatever they measure
    assert p["paths"]["eager"]["default_ok"] == (hits == 8) and p["paths"]["eager"]["default_shown"] is False
    assert "| eager | 8 |" in capsys.readouterr().out and out.with_suffix(".md").exists()
    with pytest.raises(SystemExit, match="seed=0 step=0 is in part 0 and part 1"):
        pool.main([str(a), str(a)])
    changed = json.loads(b.read_text())
    changed["agreement"]["n_noises"] = 8
    (tmp_path / "n8.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match=r"agreement.n_noises is 10 in .*a.json but 8 in .*n8.json.*Fix"):
        pool.main([str(a), str(tmp_path / "n8.json")])
    other = json.loads(b.read_text())
    other["device"] = "NVIDIA H200"
    (tmp_path / "h200.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="device is .* but 'NVIDIA H200'.*--mixed-devices"):
        pool.main([str(a), str(tmp_path / "h200.json")])
    assert pool.main([str(a), str(tmp_path / "h200.json"), "--mixed-devices", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["devices"]) == 2 and "mixed devices" in out.with_suffix(".md").read_text()
