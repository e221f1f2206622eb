"""Hyperparameter search configs (Optuna through Hydra's sweeper): they compose, and a tiny search on the analytic
prior runs its trials and reports the best final reward."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import CONF_DIR, compose, run_cli
from rewardsds.eval.aggregate import parse_overrides


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("search, strategy, params", [
    ("min_max", "MinMaxStrategy", {"strategy.lambda_max": "interval(0.3, 1.5)", "lookahead.steps": "int(interval(0, 15))"}),
    ("weighted", "WeightedStrategy", {"strategy.temperature": "tag(log, interval(0.01, 10.0))",
                                      "lookahead.steps": "int(interval(0, 15))"}),
])
def test_search_configs_compose_with_the_optuna_sweeper(search, strategy, params):
    from rewardsds.config import validate

    cfg = _compose(["experiment=analytic", f"+hparams_search={search}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed == 0 and dict(sweeper.params) == params
    assert cfg.strategy._target_ == f"rewardsds.strategies.{strategy}"
    # every parameter names a key of the composed run config (the trials' overrides validate)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for key, value in params.items():
        sweep = OverridesParser.create().parse_override(f"{key}={value}")
        assert sweep.is_sweep_override()
        low = sweep.value().start
        validate(compose(["experiment=analytic", f"+hparams_search={search}", f"{key}={int(low) if 'int(' in value else low}"]))


def test_tiny_search_on_the_analytic_prior_reports_the_best_trial(tmp_path):
    folder = tmp_path / "search"
    r = run_cli(["-m", "+hparams_search=min_max", "experiment=analytic", "steps=2", "n_noises=4", "logger=none", "trainer=cpu",
                 "output.video=false", "output.image_every=0", "output.checkpoint_every=0", "hydra.sweeper.n_trials=2",
                 f"hydra.sweep.dir={folder}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sorted(folder.glob("*/metrics.json"))]
    assert len(trials) == 2 and all(t["status"] == "complete" for t in trials)
    for t in trials:
        assert 0.3 <= float(parse_overrides(t["overrides"])["strategy.lambda_max"]) <= 1.5
        assert 0 <= t["lookahead_steps"] <= 15 and t["strategy"] == "min_max"
    best = max(trials, key=lambda t: t["final/reward"])
    result = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(best["final/reward"], rel=1e-12)
    assert result["best_params"] == {"strategy.lambda_max": pytest.approx(float(parse_overrides(best["overrides"])["strategy.lambda_max"])),
                                     "lookahead.steps": best["lookahead_steps"]}
    assert "Best value" in r.stdout + r.stderr
