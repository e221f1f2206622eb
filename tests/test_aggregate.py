"""Sweep tables from fake run folders with known metrics: exact means, stds, bootstrap intervals, paired win rates,
grouping by what runs recorded, plots."""

from __future__ import annotations

import csv
import json
import statistics

import numpy as np
import pytest
import scipy.stats

from rewardsds.eval import aggregate, stats
from rewardsds.eval import cli as eval_cli

STD_0123 = statistics.stdev([0.0, 1.0, 2.0, 3.0])  # 1.2909944487358056
B = 2000  # resamples used by the tests (the default is 10000)


def scipy_ci(values, resamples=B, seed=0, confidence=0.95):
    """The reference interval: scipy's percentile bootstrap with the same generator."""
    r = scipy.stats.bootstrap((np.asarray(values, float),), np.mean, n_resamples=resamples, method="percentile",
                              confidence_level=confidence, rng=np.random.default_rng(seed), vectorized=True)
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def _run(folder, overrides, status="complete", eval_metrics=None, **values):
    folder.mkdir(parents=True)
    info = {"status": status, "overrides": overrides, **values}
    info.setdefault("prompt", "p")
    (folder / "metrics.json").write_text(json.dumps(info))
    if eval_metrics:
        (folder / "eval_metrics.json").write_text(json.dumps({"metrics": eval_metrics}))


#: rewards of the paired fixture per (strategy, prompt index, seed): min_max wins 3 pairs and ties 1 against none
BASE = {("none", 4): 1.0, ("none", 16): 2.0, ("min_max", 4): 5.0, ("min_max", 16): 7.0}


@pytest.fixture
def sweep(tmp_path):
    """strategy x n_noises, each over 2 seeds x 2 prompts; reward = base + (2 * seed + prompt_index), so every
    group holds base + {0, 1, 2, 3}; wall time = 10 * n_noises + seed; plus one failed run. Settings come from the
    overrides only (runs of older versions recorded no strategy)."""
    for (strategy, n), b in BASE.items():
        for seed in (0, 1):
            for p in (0, 1):
                overrides = ["experiment=paper_2d", "prompts=drawbench25", f"prompt_index={p}", f"strategy={strategy}",
                             f"n_noises={n}", f"seed={seed}", "logger=wandb", "output.video=false"]
                _run(tmp_path / f"{strategy}_{n}_{seed}_{p}", overrides, **{
                    "final/reward": b + 2 * seed + p, "wall_time_s": 10.0 * n + seed, "step_time_median_s": 0.5,
                    "evals_per_step_mean": 2.0 * n, "peak_memory_gb": None, "final/modes": ["x"], "seed": seed,
                    "prompt": f"prompt {p}", "prompt_index": p},
                    eval_metrics={"clip": 0.25} if (strategy, n, seed, p) == ("none", 4, 0, 0) else None)
    _run(tmp_path / "failed", ["strategy=none", "n_noises=4", "seed=9"], status="failed", **{"final/reward": 1000.0})
    return tmp_path


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ statistics
def test_bootstrap_interval_is_scipys_percentile_bootstrap():
    x = [0.3, 1.2, -0.5, 2.0, 0.7, 0.1]
    for seed, conf in ((0, 0.95), (3, 0.9)):
        got = stats.bootstrap_ci(x, stats.Bootstrap(resamples=B, seed=seed, confidence=conf))
        assert got == pytest.approx(scipy_ci(x, B, seed, conf), abs=1e-12)
    # exact cases: no spread, and two values whose resampled means are 0, 0.5 and 1 (the 2.5% / 97.5% are 0 and 1)
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert stats.bootstrap_ci([5.0]) is None and stats.summarize([5.0]).std is None


def test_paired_win_rate_counts_ties_half_and_resamples_pairs():
    variant = {("a", "0"): 2.0, ("a", "1"): 3.0, ("b", "0"): 1.0, ("b", "1"): 0.5, ("c", "0"): 9.0}
    baseline = {("a", "0"): 1.0, ("a", "1"): 3.0, ("b", "0"): 0.0, ("b", "1"): 1.5}
    p = stats.paired(variant, baseline, stats.Bootstrap(resamples=B))
    # pairs in key order a0 a1 b0 b1: win, tie, win, loss; ("c", "0") has no baseline run
    assert p.pairs == 4 and p.win_rate == 0.625 and p.diff_mean == pytest.approx((1 + 0 + 1 - 1) / 4)
    assert p.win_ci == pytest.approx(scipy_ci([1.0, 0.5, 1.0, 0.0]), abs=1e-12)
    assert p.diff_ci == pytest.approx(scipy_ci([1.0, 0.0, 1.0, -1.0]), abs=1e-12)


# ------------------------------------------------------------------ summary tables
def test_summary_csv_holds_exact_means_stds_and_intervals(sweep):
    assert eval_cli.main([str(sweep), "--metrics", "none", "--no-plots", "--bootstrap", str(B)]) == 0
    rows = _csv(sweep / "summary.csv")
    assert list(rows[0])[:3] == ["strategy", "n_noises", "runs"]
    assert list(rows[0])[3:8] == ["eval/clip/mean", "eval/clip/std", "eval/clip/ci_low", "eval/clip/ci_high", "eval/clip/n"]
    # rows in key order, numbers numerically (4 before 16); the failed run is left out; setup keys are not grouped
    assert [(r["strategy"], r["n_noises"], r["runs"]) for r in rows] == [
        ("min_max", "4", "4"), ("min_max", "16", "4"), ("none", "4", "4"), ("none", "16", "4")]
    for r in rows:
        b = BASE[(r["strategy"], int(r["n_noises"]))]
        assert float(r["final/reward/mean"]) == b + 1.5
        assert float(r["final/reward/std"]) == pytest.approx(STD_0123, abs=1e-15) and r["final/reward/n"] == "4"
        # the interval of the row's 4 values, in the order the runs are found (folder names)
        values = [b + 2 * s + p for s in (0, 1) for p in (0, 1)]
        lo, hi = scipy_ci(values)
        assert (float(r["final/reward/ci_low"]), float(r["final/reward/ci_high"])) == pytest.approx((lo, hi), abs=1e-12)
        assert b <= lo < b + 1.5 < hi <= b + 3
        n = int(r["n_noises"])
        assert float(r["wall_time_s/mean"]) == 10 * n + 0.5
        assert float(r["wall_time_s/std"]) == pytest.approx(statistics.stdev([0, 0, 1, 1]), abs=1e-15)
        assert float(r["evals_per_step_mean/mean"]) == 2.0 * n and float(r["evals_per_step_mean/std"]) == 0.0
        assert (r["evals_per_step_mean/ci_low"], r["evals_per_step_mean/ci_high"]) == (str(2.0 * n), str(2.0 * n))
    # the one evaluated run: a mean without a std or interval; no peak memory anywhere (CPU runs): no column
    clip = {(r["strategy"], r["n_noises"]): (r["eval/clip/mean"], r["eval/clip/std"], r["eval/clip/ci_low"], r["eval/clip/n"])
            for r in rows}
    assert clip[("none", "4")] == ("0.25", "", "", "1") and clip[("none", "16")] == ("", "", "", "0")
    assert "peak_memory_gb/mean" not in rows[0]


def test_summary_markdown_is_the_expected_table(sweep):
    assert eval_cli.main([str(sweep), "--metrics", "none", "--no-plots", "--digits", "2", "--bootstrap", str(B)]) == 0
    md = (sweep / "summary.md").read_text().splitlines()

    def cell(values):
        lo, hi = scipy_ci(values)
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} [{lo:.2f}, {hi:.2f}]"

    def reward(b):
        return cell([b + 2 * s + p for s in (0, 1) for p in (0, 1)])

    assert md[:6] == [
        "| strategy | n_noises | runs | eval/clip | final/reward | wall_time_s | step_time_median_s | evals_per_step_mean |",
        "|---|---|---|---|---|---|---|---|",
        f"| min_max | 4 | 4 | – | {reward(5.0)} | {cell([40, 40, 41, 41])} | 0.50 ± 0.00 [0.50, 0.50] | 8.00 ± 0.00 [8.00, 8.00] |",
        f"| min_max | 16 | 4 | – | {reward(7.0)} | {cell([160, 160, 161, 161])} | 0.50 ± 0.00 [0.50, 0.50] | 32.00 ± 0.00 [32.00, 32.00] |",
        f"| none | 4 | 4 | 0.25 | {reward(1.0)} | {cell([40, 40, 41, 41])} | 0.50 ± 0.00 [0.50, 0.50] | 8.00 ± 0.00 [8.00, 8.00] |",
        f"| none | 16 | 4 | – | {reward(2.0)} | {cell([160, 160, 161, 161])} | 0.50 ± 0.00 [0.50, 0.50] | 32.00 ± 0.00 [32.00, 32.00] |",
    ]
    assert "averaged over seed, prompt, prompt_index" in md[-1] and f"{B} resamples" in md[-1]


def test_paired_table_matches_each_variant_with_its_baseline(sweep):
    """Default baseline strategy=none; min_max n=4 pairs with none n=4 (the key it does not name), on the same
    prompt and seed: min_max is ahead by 4 (n=4) and 5 (n=16) on every pair."""
    assert eval_cli.main([str(sweep), "--metrics", "none", "--no-plots", "--bootstrap", str(B)]) == 0
    rows = _csv(sweep / "paired.csv")
    assert list(rows[0]) == ["strategy", "n_noises", *aggregate.PAIRED_COLUMNS]
    assert [(r["strategy"], r["n_noises"], r["baseline"], r["metric"], r["pairs"]) for r in rows] == [
        ("min_max", "4", "strategy=none, n_noises=4", "final/reward", "4"),
        ("min_max", "16", "strategy=none, n_noises=16", "final/reward", "4")]  # eval/clip: no pair
    for r, diff in zip(rows, (4.0, 5.0)):
        assert float(r["win_rate"]) == 1.0 and (r["win_ci_low"], r["win_ci_high"]) == ("1.0", "1.0")
        assert float(r["diff_mean"]) == diff and float(r["diff_ci_low"]) == diff
    assert "| min_max | 4 | strategy=none, n_noises=4 | final/reward | 4 | 1.0000 [1.0000, 1.0000] |" in (sweep / "paired.md").read_text()


def test_paired_win_rate_interval_on_mixed_outcomes(tmp_path):
    """Variant B vs baseline A on 3 prompts x 2 seeds: wins 3, ties 1, loses 2; exact rate and scipy's interval."""
    a = {("p0", 0): 1.0, ("p0", 1): 2.0, ("p1", 0): 3.0, ("p1", 1): 4.0, ("p2", 0): 5.0, ("p2", 1): 6.0}
    b = {("p0", 0): 1.5, ("p0", 1): 2.0, ("p1", 0): 2.0, ("p1", 1): 4.5, ("p2", 0): 4.0, ("p2", 1): 6.5}
    for name, table in (("none", a), ("best", b)):
        for (prompt, seed), v in table.items():
            _run(tmp_path / f"{name}_{prompt}_{seed}", [], strategy=name, n_noises=4, seed=seed, prompt=prompt,
                 **{"final/reward": v})
    assert eval_cli.main([str(tmp_path), "--metrics", "none", "--no-plots", "--bootstrap", str(B),
                          "--baseline", "strategy=none"]) == 0
    (row,) = _csv(tmp_path / "paired.csv")
    outcomes = [1.0, 0.5, 0.0, 1.0, 0.0, 1.0]  # pairs in (prompt, seed) order
    assert row["strategy"] == "best" and row["pairs"] == "6" and float(row["win_rate"]) == pytest.approx(3.5 / 6)
    assert (float(row["win_ci_low"]), float(row["win_ci_high"])) == pytest.approx(scipy_ci(outcomes), abs=1e-12)
    diffs = [b[k] - a[k] for k in sorted(a, key=lambda k: (k[0], str(k[1])))]
    assert float(row["diff_mean"]) == pytest.approx(statistics.fmean(diffs))
    assert (float(row["diff_ci_low"]), float(row["diff_ci_high"])) == pytest.approx(scipy_ci(diffs), abs=1e-12)


def test_compare_folder_rows_come_from_what_runs_recorded(tmp_path):
    """A compare.runs folder: every sub-run has the comparison's overrides, but records its own strategy and N;
    SDS and RewardSDS are two rows (before, grouping by overrides averaged them into one)."""
    for variant, strategy, n, rewards in (("sds", "none", 1, [-0.2, -0.1]), ("reward_sds", "min_max", 8, [-0.01, -0.02])):
        for seed, r in enumerate(rewards):
            _run(tmp_path / "demo" / f"{variant}_seed{seed}", ["experiment=demo"], strategy=strategy, n_noises=n,
                 seed=seed, loss="sds", reward="analytic", lookahead_steps=15, experiment="demo", prompt="a disk",
                 **{"final/reward": r})
    runs = [aggregate.load_run(p) for p in aggregate.find_runs(tmp_path)]
    assert aggregate.swept_keys(runs) == ["strategy", "n_noises"]
    assert eval_cli.main([str(tmp_path), "--metrics", "none", "--no-plots", "--bootstrap", str(B)]) == 0
    rows = _csv(tmp_path / "summary.csv")
    assert [(r["strategy"], r["n_noises"], r["runs"]) for r in rows] == [("min_max", "8", "2"), ("none", "1", "2")]
    assert float(rows[0]["final/reward/mean"]) == pytest.approx(-0.015) and float(rows[1]["final/reward/mean"]) == pytest.approx(-0.15)
    (pair,) = _csv(tmp_path / "paired.csv")
    assert (pair["strategy"], pair["baseline"], pair["pairs"], pair["win_rate"]) == ("min_max", "strategy=none, n_noises=1", "2", "1.0")


def test_settings_prefer_recorded_values_and_keep_swept_override_keys(tmp_path):
    info = {"overrides": ["strategy=min_max", "strategy.lambda_max=0.5", "lookahead.steps=3", "logger=csv",
                          "output.video=false", "hydra.sweep.dir=/x", "trainer=cpu"],
            "strategy": "weighted", "n_noises": 8, "lookahead_steps": 4, "prompts": None}
    assert aggregate.run_settings(info) == {"strategy": "weighted", "strategy.lambda_max": "0.5", "lookahead_steps": "4",
                                            "n_noises": "8"}


def test_group_by_and_over_choose_the_rows(sweep):
    runs = [aggregate.load_run(p) for p in aggregate.find_runs(sweep)]
    runs = [r for r in runs if r.status == "complete"]
    assert aggregate.swept_keys(runs) == ["strategy", "n_noises"]
    # averaging over n_noises too: one row per strategy, 8 runs each
    rows = aggregate.aggregate(runs, ["strategy"], ["final/reward"])
    assert [(r["strategy"], r["runs"], r["final/reward/mean"]) for r in rows] == [("min_max", 8, 7.5), ("none", 8, 3.0)]
    # per prompt instead of over prompts
    keys = aggregate.swept_keys(runs, over=("seed",))
    assert keys == ["strategy", "n_noises", "prompt", "prompt_index"]
    rows = aggregate.aggregate(runs, keys, ["final/reward"])
    assert len(rows) == 8 and all(r["runs"] == 2 for r in rows)
    first = rows[0]  # min_max, 4, prompt 0: seeds give 5 + {0, 2}
    assert (first["strategy"], first["n_noises"], first["prompt_index"], first["final/reward/mean"]) == ("min_max", "4", "0", 6.0)
    assert first["final/reward/std"] == pytest.approx(statistics.stdev([5.0, 7.0]))


def test_plots_are_written_for_quality_metrics(sweep):
    assert eval_cli.main([str(sweep), "--metrics", "none", "--bootstrap", "200"]) == 0
    names = sorted(p.name for p in (sweep / "plots").glob("*.png"))
    assert names == ["eval_clip_vs_n_noises.png", "eval_clip_vs_wall_time.png",
                     "final_reward_vs_n_noises.png", "final_reward_vs_wall_time.png"]
    for name in names:
        assert (sweep / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # n_noises not swept: no plot against it
    out = sweep / "by_strategy"
    out.mkdir()
    runs = [r for r in (aggregate.load_run(p) for p in aggregate.find_runs(sweep)) if r.status == "complete"]
    result = aggregate.summarize(out, runs, group_by=["strategy"])
    assert sorted(p.name for p in result["plots"]) == ["eval_clip_vs_wall_time.png", "final_reward_vs_wall_time.png"]


@pytest.mark.parametrize("argv_tail, match", [
    (["--metrics", "none,clip"], "none cannot be combined"),
    (["--metrics", "none", "--override", "clip.pretrained=/x"], "need --metrics"),
    (["--metrics", "none", "--baseline", "strategy=best"], "no table row has these values"),
    (["--metrics", "none", "--baseline", "loss=sds"], "--baseline loss=sds: loss is not a key of the table's rows (the rows are "
                                                      "grouped by strategy, n_noises). Fix: name one of strategy, n_noises"),
    (["--metrics", "none", "--baseline", "strategy"], "expected key=value"),
    (["--metrics", "none", "--confidence", "1.5"], "--confidence = 1.5"),
    (["--metrics", "none", "--sheet-metric", "eval/nothing"], "no run has it"),
])
def test_eval_arguments_are_checked(sweep, capsys, argv_tail, match):
    assert eval_cli.main([str(sweep), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_a_bad_baseline_writes_nothing(sweep, capsys):
    """The baseline is checked before any table is written: a typo must not leave a half-updated folder."""
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()}
    assert eval_cli.main([str(sweep), "--metrics", "none", "--baseline", "strategy=nonee"]) == 2
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()} == before
    err = capsys.readouterr().err
    assert "--baseline strategy=nonee: no table row has these values (the rows have strategy: " in err and "none" in err


def test_no_runs_is_a_usage_error(tmp_path, capsys):
    # a folder without any run (here a run killed while starting: only its log)
    (tmp_path / "train.log").write_text("rewardsds: run\n")
    assert eval_cli.main([str(tmp_path), "--metrics", "none"]) == 2
    assert capsys.readouterr().err.startswith(f"rewardsds-eval: error: {tmp_path.resolve()}: holds no run (no metrics.json in it "
                                              "or below). Fix: give the folder of a run or sweep")
    # runs that are not finished: --include-incomplete is the fix, and it includes them
    _run(tmp_path / "live", ["steps=9"], status="running", **{"final/reward": 0.5})
    assert eval_cli.main([str(tmp_path), "--metrics", "none"]) == 2
    err = capsys.readouterr().err
    assert "skipped live: status 'running'" in err
    assert err.rstrip().endswith("no finished runs to evaluate (1 skipped, as listed above). Fix: give the folder of a finished run "
                                 "or sweep, or add --include-incomplete")
    assert eval_cli.main([str(tmp_path), "--metrics", "none", "--include-incomplete"]) == 0


# ------------------------------------------------------------------ baselines that belong to the row
def _demo_and_analytic(folder):
    """A copied demo (SDS N = 1 and RewardSDS N = 8, 30 steps) beside analytic RewardSDS runs (1500 steps)."""
    common = dict(loss="sds", reward="analytic", prior="analytic", lookahead_steps=15, prompt="a disk")
    for variant, strategy, n, rewards in (("sds", "none", 1, [-0.2, -0.1]), ("reward_sds", "min_max", 8, [-0.05, -0.15])):
        for seed, r in enumerate(rewards):
            _run(folder / "demo" / f"{variant}_seed{seed}", ["experiment=demo", "steps=30"], experiment="demo",
                 strategy=strategy, n_noises=n, steps=30, seed=seed, **common, **{"final/reward": r})
    for seed, r in enumerate([0.5, 0.6]):
        _run(folder / "analytic" / f"seed{seed}", ["experiment=analytic", "strategy=min_max", "n_noises=8"],
             experiment="analytic", strategy="min_max", n_noises=8, steps=1500, seed=seed, **common,
             **{"final/reward": r})


def test_a_baseline_of_another_experiment_is_not_paired(tmp_path, capsys):
    """The only strategy=none row (the demo's SDS) is no baseline of the analytic runs: they differ in experiment
    and steps. Before, it was paired with every row (a win rate of 1.0 against an unrelated run)."""
    _demo_and_analytic(tmp_path)
    assert eval_cli.main([str(tmp_path), "--metrics", "none", "--no-plots", "--bootstrap", str(B), "--no-report",
                          "--no-sheets", "--curves", "none"]) == 0
    rows = _csv(tmp_path / "summary.csv")
    assert [(r["experiment"], r["strategy"], r["n_noises"], r["steps"]) for r in rows] == [
        ("analytic", "min_max", "8", "1500"), ("demo", "min_max", "8", "30"), ("demo", "none", "1", "30")]
    (pair,) = _csv(tmp_path / "paired.csv")
    assert (pair["experiment"], pair["strategy"], pair["baseline"], pair["win_rate"]) == (
        "demo", "min_max", "experiment=demo, strategy=none, n_noises=1, steps=30", "0.5")
    out = capsys.readouterr().out
    note = ("- experiment=analytic, strategy=min_max, n_noises=8, steps=1500: not paired: no strategy=none row has "
            "experiment=analytic, steps=1500; the strategy=none rows are (experiment=demo, steps=30)")
    assert note in out and note in (tmp_path / "paired.md").read_text()


def test_several_baselines_are_matched_on_the_rows_settings_and_named(tmp_path, capsys):
    """experiment=reward_losses_demo: four strategy=none rows (SDS, DreamDPO, PSD, DDPO3D). RewardSDS is paired
    with SDS (same loss; N differs as a method setting); the output names the four and how to compare every row
    against one of them; with that --baseline every other row is paired with SDS."""
    variants = (("sds", "none", 1, 0.1), ("sds", "min_max", 8, 0.4), ("dreamdpo", "none", 2, 0.3),
                ("psd", "none", 2, 0.2), ("ddpo3d", "none", 16, 0.0))
    for loss, strategy, n, r in variants:
        for seed in (0, 1):
            # DDPO3D's own loss settings are grouped keys too (compare.runs passes them as overrides)
            more = ["loss.lambda_pg=5", "loss.pg_start=0"] if loss == "ddpo3d" else []
            _run(tmp_path / f"{loss}_{strategy}_seed{seed}", ["experiment=reward_losses_demo", *more],
                 experiment="reward_losses_demo", loss=loss, strategy=strategy, n_noises=n, seed=seed,
                 **{"final/reward": r + 0.01 * seed})
    args = [str(tmp_path), "--metrics", "none", "--no-plots", "--bootstrap", str(B), "--no-report", "--no-sheets",
            "--curves", "none"]
    assert eval_cli.main(args) == 0
    (pair,) = _csv(tmp_path / "paired.csv")
    assert (pair["loss"], pair["strategy"], pair["baseline"], pair["win_rate"]) == (
        "sds", "min_max", "loss=sds, strategy=none, n_noises=1, loss.lambda_pg=(unset), loss.pg_start=(unset)", "1.0")
    out = capsys.readouterr().out
    assert ("4 rows are strategy=none baselines (loss=ddpo3d, strategy=none, n_noises=16, loss.lambda_pg=5, "
            "loss.pg_start=0; loss=dreamdpo, strategy=none, n_noises=2, loss.lambda_pg=(unset), loss.pg_start=(unset); "
            "loss=psd, strategy=none, n_noises=2, loss.lambda_pg=(unset), loss.pg_start=(unset); loss=sds, "
            "strategy=none, n_noises=1, loss.lambda_pg=(unset), loss.pg_start=(unset))") in out
    assert "To compare every row against one of them: --baseline loss=sds,strategy=none" in out

    assert eval_cli.main([*args, "--baseline", "loss=sds,strategy=none"]) == 0
    pairs = {(p["loss"], p["strategy"]): p for p in _csv(tmp_path / "paired.csv")}
    assert sorted(pairs) == [("ddpo3d", "none"), ("dreamdpo", "none"), ("psd", "none"), ("sds", "min_max")]
    assert {p["baseline"] for p in pairs.values()} == {
        "loss=sds, strategy=none, n_noises=1, loss.lambda_pg=(unset), loss.pg_start=(unset)"}
    assert [pairs[k]["win_rate"] for k in sorted(pairs)] == ["0.0", "1.0", "1.0", "1.0"]


def test_an_ambiguous_baseline_is_named_with_its_candidates_and_fix(tmp_path):
    """N = 8 against SDS rows of N = 1 and N = 4 (same other settings): neither is the baseline; the note names both
    and a --baseline that picks one."""
    for strategy, n in (("none", 1), ("none", 4), ("min_max", 8)):
        _run(tmp_path / f"{strategy}{n}", [f"strategy={strategy}", f"n_noises={n}"], strategy=strategy, n_noises=n,
             seed=0, **{"final/reward": float(n)})
    runs = [aggregate.load_run(p) for p in aggregate.find_runs(tmp_path)]
    rows = aggregate.aggregate(runs, ["strategy", "n_noises"], ["final/reward"])
    entries, notes = aggregate.paired_table(rows, ["strategy", "n_noises"], {"strategy": "none"}, ["final/reward"])
    assert entries == []
    assert notes[1] == ("strategy=min_max, n_noises=8: not paired: 2 strategy=none rows agree with it: (strategy=none, "
                        "n_noises=1); (strategy=none, n_noises=4). Fix: name one, e.g. --baseline n_noises=1,strategy=none")
    text = aggregate.paired_markdown(entries, ["strategy", "n_noises"], notes=notes)
    assert text.startswith("No row could be paired with a baseline.") and notes[1] in text
    # the command says so too (before, the paired table was left out without a word)
    assert eval_cli.main([str(tmp_path), "--metrics", "none", "--no-plots", "--bootstrap", str(B), "--no-sheets",
                          "--curves", "none"]) == 0
    assert (tmp_path / "paired.md").read_text().startswith("No row could be paired with a baseline.")
    import html

    report = (tmp_path / "report.html").read_text()
    assert "No row could be paired with a baseline." in report and html.escape(notes[1]) in report


# ------------------------------------------------------------------ logging keys do not split rows
def test_logging_and_bookkeeping_overrides_do_not_split_rows(tmp_path):
    """Two identical runs that differ only in W&B display name, tags, output options or a resume flag are one row."""
    extra = (["logger.name=a_b", "logger.tags=[x]"],
             ["+output.video=false", "resume_allow_changes=true", "trainer.deterministic=true", "hydra/launcher=gpus",
              "debug=fast"])
    for i, more in enumerate(extra):
        _run(tmp_path / f"r{i}", ["experiment=analytic", "strategy=min_max", *more], experiment="analytic",
             strategy="min_max", n_noises=8, seed=i, **{"final/reward": float(i)})
    runs = [aggregate.load_run(p) for p in aggregate.find_runs(tmp_path)]
    for i, r in enumerate(runs):
        assert r.settings == {"experiment": "analytic", "strategy": "min_max", "n_noises": "8", "seed": str(i),
                              "prompt": "p"}
    assert aggregate.swept_keys(runs) == []
    assert eval_cli.main([str(tmp_path), "--metrics", "none", "--no-plots", "--bootstrap", str(B), "--no-report",
                          "--no-sheets", "--curves", "none"]) == 0
    (row,) = _csv(tmp_path / "summary.csv")
    assert row["runs"] == "2" and float(row["final/reward/mean"]) == 0.5


def test_a_reevaluation_removes_the_plots_it_no_longer_writes(sweep):
    """Grouped by strategy only, the n_noises plots of the earlier grouping go; a file the user put in plots/ stays."""
    args = [str(sweep), "--metrics", "none", "--bootstrap", "200", "--no-sheets", "--no-report", "--curves", "none"]
    assert eval_cli.main(args) == 0
    assert (sweep / "plots" / "final_reward_vs_n_noises.png").is_file()
    (sweep / "plots" / "mine_vs_n_noises.png").write_bytes(b"user file")
    assert eval_cli.main([*args, "--group-by", "strategy"]) == 0
    assert sorted(p.name for p in (sweep / "plots").iterdir()) == [
        ".rewardsds-eval-files", "eval_clip_vs_wall_time.png", "final_reward_vs_wall_time.png", "mine_vs_n_noises.png"]
    assert (sweep / "plots" / "mine_vs_n_noises.png").read_bytes() == b"user file"
