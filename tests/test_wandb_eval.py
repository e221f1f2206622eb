"""W&B side of evaluation, checked in the offline run files: eval results in each run's summary (resumed by id), one
eval run per sweep with its tables, exports as an artifact and 3D objects, tags, the local history beside W&B, the candidates
table's view column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, compose
from rewardsds.eval import cli as eval_cli
from rewardsds.loggers import log_exports, ply_points, push_eval_summary, run_tags
from rewardsds.viz import CANDIDATE_COLUMNS, candidate_rows
from wandb_records import artifacts, logged_keys, run_record, wait_complete


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging (until `wandb sync`)


def _offline_runs(folder: Path) -> list[Path]:
    """The offline run files below ``folder``, each read only once it is complete."""
    return [wait_complete(f) for f in sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))]


def _train_like_run(run_dir: Path, strategy: str, seed: int, reward: float, prompt: str = "a disk") -> str:
    """A finished run logged offline to W&B, whose metrics.json records the run as the training loop will."""
    import wandb

    run_dir.mkdir(parents=True)
    run = wandb.init(project="rewardsds", dir=str(run_dir), mode="offline", group="2026-01-02/03-04-05",
                     name=run_dir.name, reinit="finish_previous")
    run.log({"train/reward_mean": reward / 2})
    run.summary["final/reward"] = reward
    run_id = run.id
    run.finish()
    info = {"status": "complete", "prompt": prompt, "seed": seed, "strategy": strategy, "n_noises": 8 if strategy != "none" else 1,
            "experiment": "analytic", "loss": "sds", "prompts": "analytic", "final/reward": reward,
            "wandb": {"id": run_id, "project": "rewardsds", "entity": None, "dir": str(run_dir), "mode": "offline",
                      "group": "2026-01-02/03-04-05"}}
    (run_dir / "metrics.json").write_text(json.dumps(info))
    (run_dir / "eval_metrics.json").write_text(json.dumps({"metrics": {"clip_score": 20.0 + reward}}))
    info["eval/clip_score"] = 20.0 + reward
    (run_dir / "metrics.json").write_text(json.dumps(info))
    (run_dir / "final").mkdir()
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 100 + seed, np.uint8)).save(run_dir / "final" / "image_000.png")
    return run_id


def test_eval_results_reach_each_runs_summary_and_one_sweep_table(tmp_path):
    sweep = tmp_path / "2026-01-02" / "03-04-05"
    ids = {}
    for strategy, rewards in (("none", (0.1, 0.2)), ("min_max", (0.5, 0.4))):
        for seed, r in enumerate(rewards):
            ids[(strategy, seed)] = _train_like_run(sweep / f"{strategy}_{seed}", strategy, seed, r)
    assert eval_cli.main([str(sweep), "--metrics", "none", "--bootstrap", "100", "--no-plots"]) == 0

    # each run: a second offline folder with the same id whose summary holds the eval values
    for (strategy, seed), run_id in ids.items():
        files = _offline_runs(sweep / f"{strategy}_{seed}")
        assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
        recs = [run_record(f) for f in files]
        (resumed,) = [r for r in recs if "eval/clip_score" in r["summary"]]
        (original,) = [r for r in recs if r is not resumed]
        assert "final/reward" in original["summary"] and "final/reward" not in resumed["summary"]
        value = json.loads((sweep / f"{strategy}_{seed}" / "metrics.json").read_text())["eval/clip_score"]
        assert resumed["summary"]["eval/clip_score"] == pytest.approx(value)
        assert resumed["group"] == "2026-01-02/03-04-05"  # from the record; the id alone finds the run online

    # the sweep: one eval run in the sweep's group with the per-run, summary and paired tables
    (eval_file,) = _offline_runs(sweep)
    rec = run_record(eval_file)
    assert rec["group"] == "2026-01-02/03-04-05" and rec["name"] == "eval 2026-01-02/03-04-05"
    keys = logged_keys(eval_file)["history"]
    assert {"eval/runs/_type", "eval/summary/_type", "eval/paired/_type"} <= keys
    assert any(k.startswith("eval/sheets/") for k in keys)
    tables = {name: json.loads(Path(a["files"][name]).read_text()) for a in artifacts(eval_file) if a["type"] == "run_table"
              for name in a["files"] if name.endswith(".table.json")}
    runs_t, summary_t = tables["eval/runs.table.json"], tables["eval/summary.table.json"]
    assert runs_t["columns"][:3] == ["run", "wandb_id", "strategy"] and len(runs_t["data"]) == 4
    assert {row[1] for row in runs_t["data"]} == set(ids.values())
    col = summary_t["columns"]
    rows = {row[0]: dict(zip(col, row)) for row in summary_t["data"]}
    assert rows["min_max"]["final/reward/mean"] == pytest.approx(0.45) and rows["none"]["eval/clip_score/mean"] == pytest.approx(20.15)
    paired_t = tables["eval/paired.table.json"]
    assert [dict(zip(paired_t["columns"], r))["win_rate"] for r in paired_t["data"]] == [1.0, 1.0]  # eval/clip_score, final/reward
    # tags common to every run (strategy differs, so it is not one)
    from wandb_records import iter_payloads
    from wandb.proto import wandb_internal_pb2 as pb

    tags = next(list(r.run.tags) for r in (pb.Record.FromString(p) for p in iter_payloads(eval_file))
                if r.WhichOneof("record_type") == "run")
    assert sorted(tags) == ["eval", "experiment:analytic", "loss:sds", "prompts:analytic"]


def test_wandb_off_and_runs_without_a_record_push_nothing(tmp_path):
    sweep = tmp_path / "s"
    _train_like_run(sweep / "a", "none", 0, 0.1)
    assert eval_cli.main([str(sweep), "--metrics", "none", "--wandb", "off", "--no-plots"]) == 0
    assert len(_offline_runs(sweep / "a")) == 1 and not _offline_runs(sweep)
    info = json.loads((sweep / "a" / "metrics.json").read_text())
    del info["wandb"]
    (sweep / "a" / "metrics.json").write_text(json.dumps(info))
    assert push_eval_summary(sweep / "a") is None


def test_run_tags_name_experiment_loss_strategy_n_and_prompt_set():
    assert run_tags({"experiment": "paper_2d", "loss": "sds", "strategy": "min_max", "n_noises": 10,
                     "prompts": "drawbench25", "seed": 0}) == ["experiment:paper_2d", "loss:sds", "strategy:min_max",
                                                               "N:10", "prompts:drawbench25"]
    assert run_tags({"strategy": "none", "n_noises": 1, "prompts": None}) == ["strategy:none", "N:1"]


# ------------------------------------------------------------------ exports
def _write_exports(run_dir: Path) -> np.ndarray:
    from rewardsds.representations.gaussians import write_ply

    export = run_dir / "export"
    export.mkdir(parents=True)
    (export / "mesh.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (export / "mesh.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                     "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
                                     "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(5, 3)).astype(np.float32)
    dc = rng.normal(size=(5, 3)).astype(np.float32)
    fields = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], **{f"f_dc_{i}": dc[:, i] for i in range(3)},
              "opacity": np.zeros(5)}
    write_ply(export / "gaussians.ply", fields)
    rgb = np.clip(0.5 + 0.28209479177387814 * dc, 0, 1) * 255
    return np.concatenate([xyz, rgb], axis=1)


def test_log_exports_logs_an_artifact_and_3d_objects(tmp_path):
    import wandb

    expected = _write_exports(tmp_path / "run")
    assert ply_points(tmp_path / "run" / "export" / "gaussians.ply") == pytest.approx(expected, abs=1e-4)
    run = wandb.init(project="rewardsds", dir=str(tmp_path / "run"), mode="offline", reinit="finish_previous")
    out = log_exports(run, tmp_path / "run")
    run.finish()
    assert out["artifact"] == f"export-{run.id}" and out["files"] == ["gaussians.ply", "mesh.obj", "mesh.ply"]
    assert out["objects"] == {"export/gaussians": "gaussians.ply", "export/mesh": "mesh.obj"}  # mesh.ply: its .obj
    (file,) = _offline_runs(tmp_path / "run")
    (art,) = [a for a in artifacts(file) if a["type"] == "export"]
    assert sorted(art["files"]) == out["files"]
    assert Path(art["files"]["mesh.obj"]).read_text().startswith("v 0 0 0")
    keys = logged_keys(file)
    assert {"export/mesh/_type", "export/gaussians/_type"} <= keys["history"]
    pts = [f for f in keys["files"] if f.endswith(".pts.json")]
    assert len(pts) == 1 and any(f.endswith(".obj") for f in keys["files"])
    cloud = np.array(json.loads((file.parent / "files" / pts[0]).read_text()))
    assert cloud == pytest.approx(expected, abs=1e-4)


def test_log_exports_without_wandb_does_nothing(tmp_path):
    _write_exports(tmp_path)
    assert log_exports(None, tmp_path) == {} and log_exports(False, tmp_path) == {}


# ------------------------------------------------------------------ the local history beside W&B, the candidates table
def test_wandb_run_keeps_a_local_history(tmp_path):
    """logger=wandb: the W&B run gets the per-step keys and csv/metrics.csv the same ones, per step."""
    from rewardsds.eval.curves import read_history
    from rewardsds.train import train

    overrides = [o for o in FAST if not o.startswith("logger=")]
    cfg = compose(["experiment=analytic", *overrides, "logger=wandb", "steps=3", "n_noises=4", "lookahead.steps=2"])
    metrics = train(cfg, tmp_path / "run")
    assert metrics["status"] == "complete"
    history = read_history(tmp_path / "run")
    steps, values = history["train/reward_mean"]
    assert steps.tolist() == [0, 1, 2] and np.isfinite(values).all()
    (file,) = _offline_runs(tmp_path / "run")
    assert {"train/reward_mean", "train/loss"} <= logged_keys(file)["history"]
    assert run_record(file)["summary"]["final/reward"] == pytest.approx(metrics["final/reward"], rel=1e-6)


def test_candidate_rows_name_candidate_and_view():
    images = np.zeros((6, 2, 2, 3), np.uint8)
    rows = candidate_rows(images, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 1, 0, 0, -1, -1], views=2)
    assert [(c, v, r, w) for c, v, _, r, w in rows] == [(0, 0, 0.1, 1.0), (0, 1, 0.2, 1.0), (1, 0, 0.3, 0.0),
                                                          (1, 1, 0.4, 0.0), (2, 0, 0.5, -1.0), (2, 1, 0.6, -1.0)]
    assert CANDIDATE_COLUMNS == ("candidate", "view", "image", "reward", "weight")
    with pytest.raises(ValueError, match="groups of 4 views"):
        candidate_rows(images, [0.0] * 6, [0.0] * 6, views=4)


def test_sweep_group_keeps_date_and_time():
    from rewardsds.eval.cli import sweep_group

    assert sweep_group(Path("/o/sweeps/2026-01-02/03-04-05")) == "2026-01-02/03-04-05"
    assert sweep_group(Path("/o/wandb_sweeps/abc123")) == "abc123"


def test_eval_push_of_a_trained_wandb_run_lands_beside_it_for_the_sync_glob(tmp_path):
    """A run trained with logger=wandb (offline), then ``rewardsds-eval --metrics analytic``: the eval summary's
    offline folder sits beside the training run's in ``<job>/wandb/`` (what ``wandb sync <job>/wandb/offline-run-*``
    uploads), with the training run's id, not nested inside the training run's own folder."""
    from rewardsds.train import train

    job = tmp_path / "sweep" / "job"
    train(compose(["experiment=analytic", "steps=2", "n_noises=4", "logger=wandb", *FAST[1:]]), job)
    record = json.loads((job / "metrics.json").read_text())["wandb"]
    assert Path(record["dir"]).parent == job / "wandb"  # the run's own folder, as metrics.json records it
    assert eval_cli.main([str(tmp_path / "sweep"), "--metrics", "analytic", "--bootstrap", "50", "--no-plots",
                          "--no-sheets", "--no-report", "--curves", "none"]) == 0

    assert not list(job.glob("wandb/*/wandb")), "the eval push nested its folder inside the training run's"
    files = _offline_runs(job)
    assert len(files) == 2 and all(f.name == f"run-{record['id']}.wandb" for f in files)
    keys = [logged_keys(f)["summary"] for f in files]
    (trained,) = [k for k in keys if "final/reward" in k]
    (pushed,) = [k for k in keys if "eval/analytic" in k]
    assert "eval/analytic" not in trained and "final/reward" not in pushed
    value = json.loads((job / "metrics.json").read_text())["eval/analytic"]
    (resumed,) = [r for r in map(run_record, files) if "eval/analytic" in r["summary"]]
    assert resumed["summary"]["eval/analytic"] == pytest.approx(value) and resumed["id"] == record["id"]


def test_a_record_naming_the_runs_own_folder_is_continued_beside_it(tmp_path):
    """Records of either form (the run's own folder, or the folder holding ``wandb/``) continue the run in the same
    ``wandb/``, also when the run folder was moved after training (its W&B files moved with it)."""
    from rewardsds.loggers import recorded_save_dir

    run = tmp_path / "moved" / "job"
    (run / "wandb" / "offline-run-20260102_030405-abc123").mkdir(parents=True)
    old = {"id": "abc123", "dir": "/gone/job/wandb/offline-run-20260102_030405-abc123"}
    assert recorded_save_dir(old, run) == run
    elsewhere = {"id": "zzz999", "dir": str(tmp_path / "other" / "wandb" / "offline-run-20260102_030405-zzz999")}
    assert recorded_save_dir(elsewhere, run) == tmp_path / "other"
    assert recorded_save_dir({"id": "zzz999", "dir": str(tmp_path / "other")}, run) == tmp_path / "other"
    assert recorded_save_dir({"id": "zzz999"}, run) == run
