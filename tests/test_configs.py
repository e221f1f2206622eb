"""Every config option composes and validates; schemas and their targets agree; experiments smoke-run."""

import inspect

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from conftest import CONF_DIR, FAST, compose, run_cli
from rewardsds.config import validate
from rewardsds.schedules import Schedule
from rewardsds.errors import ConfigError

GROUPS = ["representation", "prior", "loss", "reward", "strategy", "logger", "trainer"]
# Options that need something besides the prompt to validate (their required inputs).
NEEDS = {
    ("representation", "latent_image"): [],
    ("loss", "dds"): ["loss.image=photo.png", "loss.source_prompt=a cat", "representation.init=image", "representation.init_image=photo.png"],
    ("loss", "ddpo3d"): ["strategy=none"],
    ("loss", "dreamdpo"): ["strategy=none"],
    ("loss", "psd"): ["strategy=none"],
}
# Experiments that need inputs besides the prompt.
EXPERIMENT_NEEDS = {
    "edit_dds": ["loss.image=photo.png", "loss.source_prompt=a cat"],
}
# prior=mvdream needs camera-posed views of one object: a 3D representation. Until one exists, the
# cross-group check must refuse the default latent_image representation instead.
HAS_NERF = (CONF_DIR / "representation" / "nerf.yaml").is_file()
if HAS_NERF:
    NEEDS[("prior", "mvdream")] = ["representation=nerf"]


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = compose(["prompt=a cat", f"{group}={option}", "n_noises=4", *NEEDS.get((group, option), [])])
    if (group, option) == ("prior", "mvdream") and not HAS_NERF:
        with pytest.raises(ConfigError, match="representation = 'latent_image'.*prior=mvdream"):
            validate(cfg)
        return
    typed = validate(cfg)
    assert getattr(typed, group) is not None


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    validate(compose([f"experiment={experiment}", "prompt=a cat", *EXPERIMENT_NEEDS.get(experiment, [])]))


@pytest.mark.parametrize("debug", options("debug"))
def test_every_debug_config_composes(debug):
    validate(compose([f"debug={debug}", "prompt=a cat"]))


#: Config groups whose options build a component from their schema (``_target_``), and where the classes live.
COMPONENT_GROUPS = {"prior": "priors", "reward": "rewards", "loss": "losses", "representation": "representations",
                    "strategy": "strategies", "logger": "loggers", "cameras": "cameras"}


def _option_node(group: str, option: str):
    if group == "cameras":
        cfg = compose(["prompt=a cat", "representation=nerf", f"cameras={option}"])
    else:
        cfg = compose(["prompt=a cat", f"{group}={option}", "n_noises=4", *NEEDS.get((group, option), [])])
    return getattr(validate(cfg), group)


@pytest.mark.parametrize("group,option", [(g, o) for g in COMPONENT_GROUPS for o in options(g)])
def test_every_option_builds_a_class_that_takes_its_schema(group, option):
    """One home per parameter: the option's class takes the validated schema as its one setting (no keyword defaults
    repeating the schema's), the YAML names that class in ``_target_`` and holds only what differs from the schema."""
    import dataclasses
    import typing

    node = _option_node(group, option)
    target = get_object(node._target_)
    fn = target.__init__ if inspect.isclass(target) else target
    params = [k for k in inspect.signature(fn).parameters if k != "self"]
    assert params[0] == "cfg", (option, params)
    assert typing.get_type_hints(fn)["cfg"] is type(node), (option, typing.get_type_hints(fn).get("cfg"))
    assert node._target_.startswith(f"rewardsds.{COMPONENT_GROUPS[group]}"), node._target_  # conf/<group> -> rewardsds.<plural>
    # the YAML restates nothing the schema already says
    yaml = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    defaults = {f.name: f for f in dataclasses.fields(type(node))}
    for key in yaml:
        if key in ("defaults", "_target_") or key not in defaults:
            continue
        f = defaults[key]
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        value = OmegaConf.to_container(yaml, resolve=False)[key]
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation (e.g. the run's seed) is not a restated default
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(type(node)), {key: value}), enum_to_str=True)[key]
        base = OmegaConf.to_container(OmegaConf.structured(type(node)), enum_to_str=True)[key]
        assert merged != base, f"conf/{group}/{option}.yaml restates the schema default of {key} ({default!r})"


def test_every_conf_file_extends_its_schema_by_class_name():
    """conf/<group>/<option>.yaml extends /schema/<group>/<ClassName> (or another option of its group)."""
    from rewardsds.config import GROUP_SCHEMAS

    for group, schemas in GROUP_SCHEMAS.items():
        names = {c.__name__ for c in schemas}
        for yaml in (CONF_DIR / group).glob("*.yaml"):
            text = yaml.read_text()
            if f"/schema/{group}/" not in text:
                parent = OmegaConf.load(yaml).defaults[0]
                assert isinstance(parent, str) and (CONF_DIR / group / f"{parent}.yaml").is_file(), yaml
                continue
            assert text.split(f"/schema/{group}/")[1].split("@")[0] in names, yaml


#: experiments run by tests/test_system_gpu.py instead of the tiny CPU multirun below
GPU_3D_EXPERIMENTS = ("dreamfusion_nerf", "dreamfusion_gaussians", "mvdream_nerf", "mvdream_gaussians", "dreamdpo_mvdream_nerf")


def test_experiments_run_a_few_steps_in_a_tiny_multirun(tmp_path, tiny_sd):
    """Each experiment, shrunk to 2 steps with tiny models, runs as one multirun."""
    sweep = tmp_path / "sweep"
    exps = options("experiment")
    tiny = [f"prior.pretrained={tiny_sd}", "reward=analytic", "reward.image_size=16", "lookahead.steps=3"]
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 40, 40)).save(photo)
    # experiments (comma-joined: one multirun) that need tiny models or inputs
    overrides = {
        "paper_2d,paper_vsd_2d,paper_bridge_2d": tiny,
        "edit_dds": [*tiny, f"loss.image={photo}", "loss.source_prompt=a red square"],
        # step 1 of 2 is past pg_start and negative_start
        "ddpo3d_2d,dreamdpo_2d,psd_2d": [f"prior.pretrained={tiny_sd}", "reward=analytic", "reward.image_size=16"],
    }
    # one multirun over all experiments that share the same override set; the 3D experiments on a real prior render
    # at full size (a NeRF on the CPU: about 80 s a step), so tests/test_system_gpu.py runs them on the GPU
    special = {x for key in overrides for x in key.split(",")} | set(GPU_3D_EXPERIMENTS)
    simple = [e for e in exps if e not in special]
    assert set(GPU_3D_EXPERIMENTS) <= set(exps), "an experiment listed as run on the GPU no longer exists"
    r = run_cli(["-m", f"experiment={','.join(simple)}", "steps=2", "compare.seeds=[0]", *FAST, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [f"experiment={e},steps=2" for e in simple]
    for key, extra in overrides.items():
        present = [e for e in key.split(",") if e in exps]
        if present:
            r = run_cli(["-m", f"experiment={','.join(present)}", "steps=2", "prompt=a cat", *FAST, *extra,
                         f"hydra.sweep.dir={sweep}_{present[0]}"], tmp_path)
            assert r.returncode == 0, r.stderr[-3000:]
    import json

    statuses = [json.loads(p.read_text()).get("status") for p in tmp_path.rglob("metrics.json")]
    assert statuses and all(s == "complete" for s in statuses), statuses


# ------------------------------------------------------------------ bad values: refused at validation, naming key, value and fix
@pytest.mark.parametrize(
    "overrides, key, says",
    [
        # learning rates (every representation's and the loss modes' own) and other numbers that must be finite
        (["representation.lr=inf"], "representation.lr", "finite"),
        (["representation=nerf", "representation.lr_encoding=inf"], "representation.lr_encoding", "finite"),
        (["representation=gaussians", "representation.lr_opacities=nan"], "representation.lr_opacities", "finite"),
        (["representation=gaussians", "representation.lr_means.start=inf"], "representation.lr_means.start", "finite"),
        (["loss=vsd", "loss.lora_lr=inf"], "loss.lora_lr", "finite"),
        (["loss=psd", "strategy=none", "loss.negative_lr=inf"], "loss.negative_lr", "finite"),
        (["representation.init_std=nan"], "representation.init_std", "finite"),
        (["representation.init_std=-1"], "representation.init_std", ">= 0"),
        (["strategy.lambda_max=nan"], "strategy.lambda_max", "finite"),
        (["strategy.lambda_max=-5"], "strategy.lambda_max", ">= 0"),
        (["strategy.lambda_min=-5"], "strategy.lambda_min", ">= 0"),
        (["strategy.lambda_min=inf"], "strategy.lambda_min", "finite"),
        (["strategy=weighted", "strategy.temperature=nan"], "strategy.temperature", "finite"),
        (["strategy=weighted", "strategy.temperature=inf"], "strategy.temperature", "finite"),
        (["lookahead.guidance_scale=inf"], "lookahead.guidance_scale", "finite"),
        (["loss.guidance_scale=inf"], "loss.guidance_scale", "finite"),
        (["loss=vsd", "loss.lora_guidance_scale=-1"], "loss.lora_guidance_scale", ">= 0"),
        (["loss=sds_bridge", "loss.stage_two_scale=-1"], "loss.stage_two_scale", ">= 0"),
        (["loss.grad_clip=-1"], "loss.grad_clip", "> 0"),
        (["reward_duration=nan"], "reward_duration", "finite"),
        # Adam's betas
        (["representation.betas=[0.9,1.0]"], "representation.betas", "[0, 1)"),
        (["representation.betas=[-0.1,0.99]"], "representation.betas", "[0, 1)"),
        (["representation=nerf", "representation.betas=[0.9,1.5]"], "representation.betas", "[0, 1)"),
        (["representation=gaussians", "representation.betas=[1.0,0.999]"], "representation.betas", "[0, 1)"),
        (["loss=vsd", "loss.lora_betas=[0.9,1.0]"], "loss.lora_betas", "[0, 1)"),
        (["loss=psd", "strategy=none", "loss.negative_betas=[1.2,0.999]"], "loss.negative_betas", "[0, 1)"),
        # the timestep range: an error naming both keys, not a silent swap (start and scheduled end values)
        (["timesteps.t_min.start=0.9", "timesteps.t_max.start=0.5"], "timesteps.t_min", "timesteps.t_max"),
        (["timesteps.t_min.start=0.5", "timesteps.t_max.end=0.3", "timesteps.t_max.end_step=100"], "timesteps.t_min", "step 100"),
        (["timesteps.t_min.start=0.1", "timesteps.t_min.end=0.99", "timesteps.t_min.end_step=50"], "timesteps.t_min", "step 50"),
        # output counters
        (["output.checkpoint_every=-1"], "output.checkpoint_every", ">= 0"),
        (["output.image_every=-5"], "output.image_every", ">= 0"),
        (["output.candidates_every=-1"], "output.candidates_every", ">= 0"),
        (["output.turntable_frames=-1"], "output.turntable_frames", ">= 0"),
        (["output.video_frames=0"], "output.video_frames", ">= 1"),
        (["output.video_fps=0"], "output.video_fps", ">= 1"),
        (["output.eval_views=0"], "output.eval_views", ">= 1"),
        # file and folder names
        (["logger=csv", "logger.name=../../x"], "logger.name", "outside"),
        (["logger=csv", "logger.name=.."], "logger.name", "outside"),
        (["logger=csv", "logger.name=a/b"], "logger.name", "outside"),
        (["logger=wandb", "logger.name=a/b"], "logger.name", "outside"),  # every logger, not only csv
        (["logger=wandb", "logger.name=a\\b"], "logger.name", "outside"),
        (["name=../x"], "name", "outside"),
        # one process per run
        (["trainer.devices=4"], "trainer.devices", "hydra/launcher=gpus"),
        (["trainer.devices=[0,1]"], "trainer.devices", "hydra/launcher=gpus"),
        (["trainer.devices=-1"], "trainer.devices", "hydra/launcher=gpus"),
        # seeds reach numpy
        (["seed=-1"], "seed", "2**32 - 1"),
        (["seed=99999999999"], "seed", "2**32 - 1"),
        (["compare.seeds=[0,-3]"], "compare.seeds", "2**32 - 1"),
        (["representation=nerf", "representation.seed=-1"], "representation.seed", "2**32 - 1"),
        # a tiny decoder the prior does not have
        (["prior=analytic", "reward=analytic", "lookahead.decode=tiny"], "lookahead.decode", "prior=analytic"),
        (["lookahead.decode=tiny"], "lookahead.decode", "prior.tiny_vae="),
        # settings found by the audit of every schema
        (["prior=analytic", "prior.beta_start=0.5"], "prior.beta_start", "beta_end"),
        (["prior=analytic", "prior.modes=[{name: a, color: [1, 0]}]"], "prior.modes[a].color", "3 values"),
        (["prior=analytic", "prior.prompt_sharpness=-1"], "prior.prompt_sharpness", ">= 0"),
        (["representation.eps=0"], "representation.eps", "> 0"),
        (["representation=nerf", "representation.lambda_opaque.start=-1"], "representation.lambda_opaque", ">= 0"),
        (["representation=gaussians", "representation.refine_stop_step=10"], "representation.refine_stop_step", "refine_start_step"),
        (["representation=gaussians", "representation.prune_opacity=1.5"], "representation.prune_opacity", "[0, 1)"),
        (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", ">= 1"),
    ],
)
def test_bad_values_are_refused_at_validation(overrides, key, says):
    cfg = compose(["prompt=a cat", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{key} = ") and "Fix:" in msg and says in msg, msg


def test_a_missing_prompt_or_required_value_is_named():
    """A required value left unset (``???``) gets the key and the fix, not OmegaConf's MissingMandatoryValue."""
    with pytest.raises(ConfigError) as err:
        validate(compose([]))
    assert str(err.value).startswith("prompt = '???': is required") and 'prompt="a photo of a red fox"' in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate(compose(["prompt=a cat", "prior=analytic", "prior.beta_start=???"]))
    assert str(err.value).startswith("prior.beta_start = '???': has no value") and "prior.beta_start=<value>" in str(err.value)


def test_the_root_config_restates_no_schema_default():
    """One home per parameter: the root YAML only composes (its keys live in rewardsds.config.Config)."""
    assert set(OmegaConf.load(CONF_DIR / "config.yaml")) == {"defaults"}


@pytest.mark.parametrize("devices", ["1", "[0]", "auto"])
def test_one_device_is_accepted(devices):
    assert validate(compose(["prompt=a cat", "trainer=cpu", f"trainer.devices={devices}"])) is not None


@pytest.mark.parametrize(
    "override, key, hint",
    [
        ("+n_noise=8", "n_noise", "did you mean n_noises?"),
        ("+foo=1", "foo", "the settings of the root config are: representation, prior"),
        ("+lookahead.step=3", "lookahead.step", "did you mean lookahead.steps?"),
        ("+strategy.lambda_mx=0.5", "strategy.lambda_mx", "did you mean strategy.lambda_max?"),
        ("+timesteps.t_min.stat=0.1", "timesteps.t_min.stat", "did you mean timesteps.t_min.start?"),
        ("+cameras.elevation.lo=1", "cameras.elevation.lo", "did you mean cameras.elevation.low?"),
    ],
)
def test_keys_added_with_plus_must_exist(override, key, hint):
    """``+key=value`` passes Hydra's struct check; validation names the key and the closest real one."""
    cfg = compose(["prompt=a cat", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{key} = ") and "is not a setting" in msg and hint in msg, msg


def test_free_form_mappings_take_new_keys():
    """compare.runs and reward.weights are mappings whose keys are the user's own names."""
    typed = validate(compose(["prompt=a cat", "+compare.runs.mine='n_noises=4'"]))
    assert typed.compare.runs == {"mine": "n_noises=4"}


def test_compare_labels_are_folder_names():
    """Each variant writes <run folder>/<label>_seed<seed> (labels come from YAML files, where any key is possible)."""
    from rewardsds.config import CompareConfig

    with pytest.raises(ConfigError, match=r"compare\.runs\.\.\./x = '\.\./x'.*outside"):
        CompareConfig(runs={"../x": "n_noises=1"})
    assert CompareConfig(runs={"reward_sds": "n_noises=8"}).runs == {"reward_sds": "n_noises=8"}


def test_timestep_sampler_refuses_an_empty_range():
    """The sampler used to swap t_min and t_max silently."""
    from rewardsds.schedules import TimestepSampler

    with pytest.raises(ConfigError, match=r"timesteps\.t_min = 0\.9: is above timesteps\.t_max = 0\.5"):
        TimestepSampler(Schedule(start=0.9), Schedule(start=0.5))
    s = TimestepSampler(Schedule(start=0.3), Schedule(start=0.3))
    assert s.bounds(0) == (300, 300) and s.sample(0, seed=0) == 300


def test_trainer_benchmark_reaches_cudnn(tmp_path):
    """trainer.benchmark is Lightning's: true turns cuDNN's autotuner on for the run; null leaves torch's setting."""
    import torch

    from rewardsds.train import build_trainer

    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        typed = validate(compose(["prompt=a cat", "trainer=cpu", "trainer.benchmark=true"]))
        assert typed.trainer.benchmark is True
        build_trainer(typed, default_root_dir=str(tmp_path), logger=False)
        assert torch.backends.cudnn.benchmark is True
        torch.backends.cudnn.benchmark = False
        build_trainer(validate(compose(["prompt=a cat", "trainer=cpu"])), default_root_dir=str(tmp_path), logger=False)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = old


@pytest.mark.parametrize("reward", ["image_reward", "aesthetic", "clip", "hpsv2", "pickscore"])
def test_learned_rewards_rank_in_fp32_by_default_on_every_device(reward):
    """With a bf16 reward backbone the selected sets differed from the exact path's in 44% of 36 draws on an H200,
    with fp32 in 14% (README, "Selection agreement"):
    the rewards default to fp32 on CUDA too; bf16 stays one setting away."""
    from rewardsds.schema import DType
    from rewardsds.utils.dtypes import resolve_dtype

    typed = validate(compose(["prompt=a cat", f"reward={reward}"])).reward
    assert typed.dtype is DType.fp32 and resolve_dtype(typed.dtype, "cuda") == torch.float32
    assert validate(compose(["prompt=a cat", f"reward={reward}", "reward.dtype=bf16"])).reward.dtype is DType.bf16
