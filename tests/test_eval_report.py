"""Curves, contact sheets and the HTML report of ``rewardsds-eval`` on a fake sweep with known history and images."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from rewardsds.eval import cli as eval_cli
from rewardsds.eval.curves import read_history
from rewardsds.eval.sheets import LABEL_H, LEFT_W, PAD, TITLE_H, HEADER_H, fit_tile, sheet_size

PROMPTS = ("a disk", "a square")
STRATEGIES = {"none": 1, "min_max": 8}  # strategy -> n_noises
TILE = 48


def colour(strategy: str, seed: int, p: int) -> tuple[int, int, int]:
    return (40 + 100 * (strategy == "min_max"), 30 + 60 * seed, 20 + 90 * p)


def reward_at(strategy: str, seed: int, p: int, step: int) -> float:
    """The logged train/reward_mean: rises with the step, faster for min_max; seeds and prompts offset it."""
    return (0.2 if strategy == "min_max" else 0.1) * step + 0.01 * seed + 0.001 * p


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "2026-01-02" / "03-04-05"
    for strategy, n in STRATEGIES.items():
        for seed in (0, 1):
            for p, prompt in enumerate(PROMPTS):
                run = root / f"n_noises={n},prompt={p},seed={seed},strategy={strategy}"
                (run / "final").mkdir(parents=True)
                (run / "csv").mkdir()
                info = {"status": "complete", "prompt": prompt, "prompt_index": p, "prompts": "analytic", "seed": seed,
                        "strategy": strategy, "n_noises": n, "loss": "sds", "reward": "analytic", "lookahead_steps": 15,
                        "overrides": [f"strategy={strategy}", f"n_noises={n}", f"seed={seed}", f"prompt_index={p}"],
                        "final/reward": reward_at(strategy, seed, p, 4), "wall_time_s": 1.0 + seed}
                (run / "metrics.json").write_text(json.dumps(info))
                Image.fromarray(np.full((16, 16, 3), colour(strategy, seed, p), np.uint8)).save(run / "final" / "image_000.png")
                # Lightning CSVLogger layout: steps 0-4 (the none/seed-1/prompt-1 run logged only even steps), step 2
                # logged twice (a resumed run: the last value counts), a closing row of final metrics
                steps = [0, 2, 4] if (strategy, seed, p) == ("none", 1, 1) else [0, 1, 2, 3, 4]
                with open(run / "csv" / "metrics.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["epoch", "final/reward", "step", "train/loss", "train/reward_mean"])
                    for s in steps:
                        if s == 2:
                            w.writerow([0, "", s, 9.0, -99.0])
                        w.writerow([0, "", s, 1.0 / (s + 1), reward_at(strategy, seed, p, s)])
                    w.writerow(["", info["final/reward"], 4, "", ""])
    assert eval_cli.main([str(root), "--metrics", "none", "--bootstrap", "500", "--tile", str(TILE),
                          "--curves", "train/reward_mean,train/loss,train/absent"]) == 0
    return root


def test_history_reads_the_csv_logger_layout(sweep):
    run = sweep / "n_noises=1,prompt=1,seed=1,strategy=none"
    h = read_history(run)
    assert sorted(h) == ["final/reward", "train/loss", "train/reward_mean"]
    steps, values = h["train/reward_mean"]
    assert steps.tolist() == [0, 2, 4] and values == pytest.approx([reward_at("none", 1, 1, s) for s in (0, 2, 4)])
    assert read_history(sweep) == {}  # no history file


def test_curves_are_mean_and_std_over_each_rows_runs(sweep):
    with open(sweep / "curves" / "train_reward_mean.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["strategy", "n_noises", "step", "mean", "std", "n"]
    by = {(r["strategy"], int(r["step"])): r for r in rows}
    assert sorted(by) == sorted((s, k) for s in STRATEGIES for k in range(5))
    for (strategy, step), r in by.items():
        runs = [(seed, p) for seed in (0, 1) for p in (0, 1)
                if not (strategy == "none" and (seed, p) == (1, 1) and step % 2)]
        values = [reward_at(strategy, seed, p, step) for seed, p in runs]
        assert int(r["n"]) == len(values) and r["n_noises"] == str(STRATEGIES[strategy])
        assert float(r["mean"]) == pytest.approx(np.mean(values), abs=1e-12)
        assert float(r["std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert (sweep / "curves" / "train_reward_mean.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweep / "curves" / "train_loss.png").is_file() and not (sweep / "curves" / "train_absent.png").exists()


def test_contact_sheets_hold_one_tile_per_variant_and_seed(sweep):
    sheets = sorted((sweep / "sheets").glob("*.png"))
    assert [p.name for p in sheets] == ["000-a_disk.png", "001-a_square.png"]
    for p, path in enumerate(sheets):
        im = np.asarray(Image.open(path).convert("RGB"))
        assert im.shape[:2] == sheet_size(2, 2, TILE)  # 2 variants x 2 seeds
        for r, strategy in enumerate(("min_max", "none")):  # rows in table order
            for c, seed in enumerate((0, 1)):
                y = TITLE_H + HEADER_H + r * (TILE + LABEL_H + PAD)
                x = LEFT_W + c * (TILE + PAD)
                # the 16x16 final image, enlarged (nearest) to fill the tile exactly
                assert (im[y : y + TILE, x : x + TILE] == np.array(colour(strategy, seed, p), np.uint8)).all()
                assert (im[y + TILE : y + TILE + LABEL_H, x : x + TILE] != 255).any()  # the caption


def test_sheet_layout_records_captions(sweep):
    from rewardsds.eval import aggregate
    from rewardsds.eval.sheets import write_sheets

    runs = [aggregate.load_run(p) for p in aggregate.find_runs(sweep)]
    rows = aggregate.aggregate(runs, ["strategy"], ["final/reward"])
    out = sweep / "extra"
    sheets = write_sheets(out, rows, ["strategy"], metric="final/reward", tile=TILE, digits=3)
    assert [s.prompt for s in sheets] == list(PROMPTS)
    s = sheets[0]
    assert s.rows == ["strategy=min_max", "strategy=none"] and s.cols == ["0", "1"] and len(s.tiles) == 4
    assert s.tiles[(1, 1)][1] == f"{reward_at('none', 1, 0, 4):.3f}"
    assert s.origins[(1, 0)] == (TITLE_H + HEADER_H + TILE + LABEL_H + PAD, LEFT_W)


def test_fit_tile_keeps_the_aspect_ratio():
    img = np.zeros((10, 20, 3), np.uint8)
    out = fit_tile(img, 40)
    assert out.shape == (40, 40, 3)
    assert (out[10:30] == 0).all() and (out[:10] == 255).all() and (out[30:] == 255).all()


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.tables, self.rows = [], [], [], {}
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "table":
            self._table = a.get("id")
            self.tables.append(self._table)
            self.rows[self._table] = 0
        elif tag == "tr" and self._table:
            self.rows[self._table] += 1


def test_report_links_every_figure_and_table_relatively(sweep):
    html = (sweep / "report.html").read_text()
    parser = _Collect()
    parser.feed(html)
    figures = {p.relative_to(sweep).as_posix() for d in ("plots", "curves", "sheets") for p in (sweep / d).glob("*.png")}
    assert figures and set(parser.imgs) == figures  # every figure, each once as an image
    for ref in parser.imgs + parser.links:
        assert not ref.startswith(("/", "http")) and (sweep / ref).is_file(), ref  # opens from disk, no server
    assert {"summary.csv", "summary.md", "paired.csv", "eval.csv", "curves/train_reward_mean.csv"} <= set(parser.links)
    assert parser.tables == ["summary", "paired"]
    # header + one row per strategy; paired: header + min_max vs none on final/reward (the one quality metric)
    assert parser.rows["summary"] == 1 + 2 and parser.rows["paired"] == 1 + 1
    assert "a disk" in html and "percentile bootstrap" in html


# ------------------------------------------------------------------ end to end: a real compare folder
def test_one_command_turns_a_demo_folder_into_tables_curves_sheets_and_report(tmp_path):
    """experiment=demo (SDS and RewardSDS on the same seeds, logger=csv) then ``rewardsds-eval --metrics none``:
    two rows (the variants record their strategy and N), a paired row, a curve of the reward-weighted variant, one
    sheet with 2 x 2 tiles and a report linking them."""
    from conftest import run_cli

    folder = tmp_path / "demo"
    r = run_cli(["experiment=demo", "steps=6", "compare.seeds=[0,1]", "logger=csv", "output.video=false",
                 "output.image_every=0", f"hydra.run.dir={folder}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert eval_cli.main([str(folder), "--metrics", "none", "--bootstrap", "500", "--tile", str(TILE)]) == 0
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["n_noises"], r["runs"]) for r in rows] == [("min_max", "8", "2"), ("none", "1", "2")]
    for row, variant in zip(rows, ("reward_sds", "sds")):
        values = [json.loads((folder / f"{variant}_seed{s}" / "metrics.json").read_text())["final/reward"] for s in (0, 1)]
        assert float(row["final/reward/mean"]) == pytest.approx(np.mean(values), rel=1e-12)
    with open(folder / "paired.csv") as f:
        (pair,) = [p for p in csv.DictReader(f) if p["metric"] == "final/reward"]
    assert pair["strategy"] == "min_max" and pair["baseline"] == "strategy=none, n_noises=1" and pair["pairs"] == "2"
    with open(folder / "curves" / "train_reward_mean.csv") as f:
        curve = list(csv.DictReader(f))
    # strategy=none scores no candidates, so only RewardSDS has a reward curve: steps 0-5, both seeds
    assert {c["strategy"] for c in curve} == {"min_max"} and [int(c["step"]) for c in curve] == list(range(6))
    assert all(c["n"] == "2" for c in curve)
    (sheet,) = (folder / "sheets").glob("*.png")
    assert Image.open(sheet).size[::-1] == sheet_size(2, 2, TILE)
    parser = _Collect()
    parser.feed((folder / "report.html").read_text())
    assert {"curves/train_reward_mean.png", f"sheets/{sheet.name}"} <= set(parser.imgs)
    assert all((folder / ref).is_file() for ref in parser.imgs + parser.links)


def test_the_closing_line_counts_in_words(tmp_path, capsys):
    """One run: "1 plot, 1 curve, 1 contact sheet" (it said "1 plots"); the counts are those of the files written."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "csv").mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "complete", "prompt": "a disk", "strategy": "min_max", "n_noises": 8,
                                                  "final/reward": 0.5, "wall_time_s": 1.0}))
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(run / "final" / "image_000.png")
    (run / "csv" / "metrics.csv").write_text("step,train/reward_mean\n0,0.1\n1,0.2\n")
    assert eval_cli.main([str(run), "--metrics", "none", "--bootstrap", "100", "--curves", "train/reward_mean"]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("wrote ")][-1]
    plots = len(list((run / "plots").glob("*.png")))
    assert plots == 1 and ", 1 plot, 1 curve, 1 contact sheet and " in line, line
