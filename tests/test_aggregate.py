"""Sweep tables from fake run folders with known metrics: exact CSV and markdown numbers, grouping, plots."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from rewardsds.eval import aggregate
from rewardsds.eval import cli as eval_cli

STD_0123 = statistics.stdev([0.0, 1.0, 2.0, 3.0])  # 1.2909944487358056


def _run(folder, overrides, status="complete", eval_metrics=None, **values):
    folder.mkdir(parents=True)
    info = {"status": status, "prompt": "p", "overrides": overrides, **values}
    (folder / "metrics.json").write_text(json.dumps(info))
    if eval_metrics:
        (folder / "eval_metrics.json").write_text(json.dumps({"metrics": eval_metrics}))


@pytest.fixture
def sweep(tmp_path):
    """strategy x n_noises, each over 2 seeds x 2 prompts; reward = base + (2 * seed + prompt_index), so every
    group holds base + {0, 1, 2, 3}; wall time = 10 * n_noises + seed; plus one failed run."""
    base = {("none", 4): 1.0, ("none", 16): 2.0, ("min_max", 4): 5.0, ("min_max", 16): 7.0}
    for (strategy, n), b in base.items():
        for seed in (0, 1):
            for p in (0, 1):
                overrides = ["experiment=paper_2d", "prompts=drawbench25", f"prompt_index={p}", f"strategy={strategy}",
                             f"n_noises={n}", f"seed={seed}"]
                _run(tmp_path / f"{strategy}_{n}_{seed}_{p}", overrides, **{
                    "final/reward": b + 2 * seed + p, "wall_time_s": 10.0 * n + seed, "step_time_median_s": 0.5,
                    "evals_per_step_mean": 2.0 * n, "peak_memory_gb": None, "final/modes": ["x"], "seed": seed},
                    eval_metrics={"clip": 0.25} if (strategy, n, seed, p) == ("none", 4, 0, 0) else None)
    _run(tmp_path / "failed", ["strategy=none", "n_noises=4", "seed=9"], status="failed", **{"final/reward": 1000.0})
    return tmp_path


def test_summary_csv_holds_exact_means_and_stds(sweep):
    assert eval_cli.main([str(sweep), "--metrics", "none", "--no-plots"]) == 0
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["strategy", "n_noises", "runs"]
    # rows in key order, numbers numerically (4 before 16); the failed run is left out
    assert [(r["strategy"], r["n_noises"], r["runs"]) for r in rows] == [
        ("min_max", "4", "4"), ("min_max", "16", "4"), ("none", "4", "4"), ("none", "16", "4")]
    expect_mean = {("min_max", "4"): 6.5, ("min_max", "16"): 8.5, ("none", "4"): 2.5, ("none", "16"): 3.5}
    for r in rows:
        key = (r["strategy"], r["n_noises"])
        assert float(r["final/reward/mean"]) == expect_mean[key]
        assert float(r["final/reward/std"]) == pytest.approx(STD_0123, abs=1e-15) and r["final/reward/n"] == "4"
        n = int(r["n_noises"])
        assert float(r["wall_time_s/mean"]) == 10 * n + 0.5
        assert float(r["wall_time_s/std"]) == pytest.approx(statistics.stdev([0, 0, 1, 1]), abs=1e-15)
        assert float(r["evals_per_step_mean/mean"]) == 2.0 * n and float(r["evals_per_step_mean/std"]) == 0.0
    # the one evaluated run: a mean without a std; no peak memory anywhere (CPU runs): no column
    clip = {(r["strategy"], r["n_noises"]): (r["eval/clip/mean"], r["eval/clip/std"], r["eval/clip/n"]) for r in rows}
    assert clip[("none", "4")] == ("0.25", "", "1") and clip[("none", "16")] == ("", "", "0")
    assert "peak_memory_gb/mean" not in rows[0]


def test_summary_markdown_is_the_expected_table(sweep):
    assert eval_cli.main([str(sweep), "--metrics", "none", "--no-plots", "--digits", "2"]) == 0
    md = (sweep / "summary.md").read_text().splitlines()
    assert md[:6] == [
        "| strategy | n_noises | runs | eval/clip | final/reward | wall_time_s | step_time_median_s | evals_per_step_mean |",
        "|---|---|---|---|---|---|---|---|",
        "| min_max | 4 | 4 | – | 6.50 ± 1.29 | 40.50 ± 0.58 | 0.50 ± 0.00 | 8.00 ± 0.00 |",
        "| min_max | 16 | 4 | – | 8.50 ± 1.29 | 160.50 ± 0.58 | 0.50 ± 0.00 | 32.00 ± 0.00 |",
        "| none | 4 | 4 | 0.25 | 2.50 ± 1.29 | 40.50 ± 0.58 | 0.50 ± 0.00 | 8.00 ± 0.00 |",
        "| none | 16 | 4 | – | 3.50 ± 1.29 | 160.50 ± 0.58 | 0.50 ± 0.00 | 32.00 ± 0.00 |",
    ]
    assert "averaged over seed, prompt, prompt_index" in md[-1]


def test_group_by_and_over_choose_the_rows(sweep):
    runs = [aggregate.load_run(p) for p in aggregate.find_runs(sweep)]
    runs = [r for r in runs if r.status == "complete"]
    assert aggregate.swept_keys(runs) == ["strategy", "n_noises"]
    # averaging over n_noises too: one row per strategy, 8 runs each
    rows = aggregate.aggregate(runs, ["strategy"], ["final/reward"])
    assert [(r["strategy"], r["runs"], r["final/reward/mean"]) for r in rows] == [("min_max", 8, 7.5), ("none", 8, 3.0)]
    # per prompt instead of over prompts
    keys = aggregate.swept_keys(runs, over=("seed",))
    assert keys == ["strategy", "n_noises", "prompt_index"]
    rows = aggregate.aggregate(runs, keys, ["final/reward"])
    assert len(rows) == 8 and all(r["runs"] == 2 for r in rows)
    first = rows[0]  # min_max, 4, prompt 0: seeds give 5 + {0, 2}
    assert (first["strategy"], first["n_noises"], first["prompt_index"], first["final/reward/mean"]) == ("min_max", "4", "0", 6.0)
    assert first["final/reward/std"] == pytest.approx(statistics.stdev([5.0, 7.0]))


def test_plots_are_written_for_quality_metrics(sweep):
    assert eval_cli.main([str(sweep), "--metrics", "none"]) == 0
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


def test_eval_arguments_are_checked(sweep):
    with pytest.raises(SystemExit, match="none cannot be combined"):
        eval_cli.main([str(sweep), "--metrics", "none,clip"])
    with pytest.raises(SystemExit, match="need --metrics"):
        eval_cli.main([str(sweep), "--metrics", "none", "--override", "clip.pretrained=/x"])
    empty = sweep / "empty"
    empty.mkdir()
    assert eval_cli.main([str(empty), "--metrics", "none"]) == 1
