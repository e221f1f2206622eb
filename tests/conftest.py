"""Shared fixtures: config composition, tiny models saved through from_pretrained, the GPU guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import cli_runner  # noqa: E402
from tiny_models import build_tiny_sd  # noqa: E402

import rewardsds.config  # noqa: E402,F401  (registers the schemas with the ConfigStore)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


def fixtures_dir() -> Path:
    """The shared parity fixtures: $REWARDSDS_FIXTURES, a shared/ folder inside the checkout, or ../shared beside it."""
    env = os.environ.get("REWARDSDS_FIXTURES")
    if env:
        return Path(env)
    inside = ROOT / "shared" / "fixtures"
    return inside if inside.is_dir() else ROOT.parent / "shared" / "fixtures"


FIXTURES = fixtures_dir()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The one GPU guard: note the call parentheses (a bare function object is always truthy).
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_test(fn):
    """Mark a test as GPU-only: deselected by default (``-m gpu`` selects it) and guarded on CUDA."""
    return pytest.mark.gpu(requires_cuda(fn))


def compose(overrides: list[str]):
    """Compose the project config with ``overrides``, keeping Hydra's node (its ``runtime.choices`` name the options
    in messages and records, as in a run; ``validate`` and ``train`` drop the node)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides, return_hydra_config=True)


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m rewardsds <args>`` as its own process (the user's entry point, exit codes included), forked
    from a server that has imported the heavy libraries once (:mod:`cli_runner` says what is the same as a fresh
    interpreter and when a real subprocess is used instead)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), HYDRA_FULL_ERROR="0")
    e.update(env or {})
    return cli_runner.run(args, cwd, e, timeout)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny epsilon-prediction SD pipeline folder (latents 4x8x8, images 16x16)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    """The same architecture with v-prediction."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd_v"), prediction_type="v_prediction", seed=1)


@pytest.fixture(scope="session")
def tiny_sd_prior(tiny_sd):
    from rewardsds.priors.config import SDPriorConfig
    from rewardsds.priors.sd import StableDiffusionPrior

    return StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), dtype="fp32")).to("cpu")


@pytest.fixture
def analytic_prior():
    from rewardsds.priors.analytic import AnalyticPrior
    from rewardsds.priors.config import AnalyticPriorConfig

    return AnalyticPrior(AnalyticPriorConfig()).to("cpu")


# ----------------------------------------------------------------------------------------- random full-size models (GPU tests)
def _cache(env: str, tmp_path_factory, name: str) -> Path:
    return Path(os.environ.get(env) or tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def sd21_random(tmp_path_factory) -> Path:
    """The full-size SD2.1-base architecture with random weights ($REWARDSDS_SD21_RANDOM caches it)."""
    from rewardsds.testing import build_sd_pipeline

    folder = _cache("REWARDSDS_SD21_RANDOM", tmp_path_factory, "sd21")
    if not (folder / "unet" / "config.json").is_file():
        build_sd_pipeline(folder, "sd21_base", device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.float16)
    return folder


@pytest.fixture(scope="session")
def mvdream_random(tmp_path_factory) -> tuple[Path, Path]:
    """The full-size MVDream architecture with random weights and its base folder ($REWARDSDS_MVDREAM_RANDOM)."""
    from rewardsds.testing import build_mvdream

    folder = _cache("REWARDSDS_MVDREAM_RANDOM", tmp_path_factory, "mvdream")
    if not (folder / "mvdream" / "unet" / "config.json").is_file():
        return build_mvdream(folder, "sd21_base", device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.float16)
    return folder / "mvdream", folder / "base"


@pytest.fixture(scope="session")
def image_reward_random(tmp_path_factory) -> list[str]:
    """Overrides selecting a full-size ImageReward with random weights, saved locally ($REWARDSDS_IMAGE_REWARD_RANDOM)."""
    import json

    from rewardsds.testing import save_random_image_reward

    folder = _cache("REWARDSDS_IMAGE_REWARD_RANDOM", tmp_path_factory, "image_reward")
    if not (folder / "paths.json").is_file():
        ckpt, tok = save_random_image_reward(folder, "full", words="a photo of a red fox".split())
        (folder / "paths.json").write_text(json.dumps({"ckpt": str(ckpt), "tok": str(tok)}))
    paths = json.loads((folder / "paths.json").read_text())
    return ["reward=image_reward", f"reward.checkpoint={paths['ckpt']}", f"reward.tokenizer={paths['tok']}", "reward.local_files_only=true"]


FAST = ["logger=none", "trainer=cpu", "output.image_every=0", "output.video=false", "output.checkpoint_every=0"]
