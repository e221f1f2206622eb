"""The user's entry point: bad input exits non-zero with one actionable message; multiruns, W&B, resume."""

import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, compose, run_cli
from rewardsds.config import validate
from rewardsds.errors import ConfigError

ANALYTIC = ["experiment=analytic", "steps=3", *FAST]


# ------------------------------------------------------------------ validation errors (in process)
@pytest.mark.parametrize(
    "overrides, key, fix",
    [
        (["prompt=''"], "prompt", "pass a prompt"),
        (["prompt='   '"], "prompt", "pass a prompt"),
        (["n_noises=3", "strategy=min_max"], "n_noises", "n_noises>=4"),
        (["n_noises=1", "strategy=best", "strategy.n_best=2"], "n_noises", "n_noises>=2"),
        (["reward_duration=1.5"], "reward_duration", "use 1.0"),
        (["lookahead.steps=-1"], "lookahead.steps", "use 15"),
        (["lookahead.fp32_below=2000"], "lookahead.fp32_below", "use 0 (off) or e.g. 250"),
        (["lookahead.fp32_tf32=true"], "lookahead.fp32_tf32", "set lookahead.fp32_below"),
        (["strategy=none", "lookahead.fp32_below=250"], "lookahead.fp32_below", "strategy=min_max"),
        (["strategy=random", "lookahead.fp32_below=250"], "lookahead.fp32_below", "strategy=min_max"),
        (["strategy=best", "strategy.n_best=1", "n_noises=1", "lookahead.fp32_below=250"], "lookahead.fp32_below", "n_noises>=2"),
        (["timesteps.t_max.start=1.5"], "timesteps.t_max", "fraction"),
        (["strategy=weighted", "strategy.temperature=0"], "strategy.temperature", "use 1.0"),
        (["representation.init=image"], "representation.init_image", "init_image=/path"),
        (["prior=sd", "prior.compile_mode=fast"], "prior.compile_mode", "reduce-overhead"),
        (["prior=mvdream", "prior.compile_mode=cudagraphs"], "prior.compile_mode", "reduce-overhead"),
        (["prior=sd", "prior.compile=false", "prior.compile_mode=max-autotune"], "prior.compile_mode", "prior.compile=auto"),
        (["prior=mvdream", "prior.compile=false", "prior.compile_mode=default"], "prior.compile_mode", "prior.compile=auto"),
        (["prior=mvdream", "prior.compile=maybe"], "prior.compile", "use auto"),
        (["prior=sd", "prior.compile=sometimes"], "prior.compile", "use auto"),
    ],
)
def test_validation_errors_name_key_value_fix(overrides, key, fix):
    cfg = compose(["prompt=a cat", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert msg.startswith(key) and "Fix:" in msg and fix in msg, msg


def test_missing_prompt_is_reported():
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose([])
    with pytest.raises((ConfigError, MissingMandatoryValue), match="prompt"):
        validate(cfg)


def test_unknown_group_option_lists_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose(["prompt=a", "strategy=nonexistent"])
    assert "min_max" in str(err.value) and "nonexistent" in str(err.value)


def test_unknown_key_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="lambda_mx"):
        compose(["prompt=a", "strategy.lambda_mx=0.5"])


# ------------------------------------------------------------------ what Hydra would refuse, said before a run folder exists
@pytest.mark.parametrize(
    "args, message",
    [
        (["n_noise=8"], "n_noise = '8': is not a key of the root config. Fix: did you mean n_noises?"),
        (["strategy.lambda_mx=0.5"], "strategy.lambda_mx = '0.5': is not a key of strategy. Fix: did you mean strategy.lambda_max?"),
        (["experiment=paper_2d", "prior.pretrainedd=x"], "prior.pretrainedd = 'x': is not a key of prior. Fix: did you mean prior.pretrained?"),
        (["hydra.run.dirr=x"], "hydra.run.dirr = 'x': is not a key of hydra.run. Fix: did you mean hydra.run.dir?"),
        # a key given where it does not live, or a Lightning argument the run sets from its own key: where it is
        (["experiment=analytic", "lookahead.n_noises=4"], "lookahead.n_noises = '4': is not a key of lookahead. Fix: did you mean "
                                                          "n_noises=4? (n_noises is a key of the root config)"),
        (["experiment=analytic", "guidance_scale=5"], "Fix: did you mean loss.guidance_scale=5 or lookahead.guidance_scale=5? "
                                                      "(guidance_scale is a key of loss and of lookahead)"),
        (["experiment=analytic", "trainer.max_steps=60"], "trainer.max_steps = '60': is not a key of trainer. Fix: set steps=60: "
                                                          "the run's length"),
        (["experiment=analytic", "trainer.logger=wandb"], "Fix: choose the logger group: logger=csv, logger=wandb or logger=none"),
        (["steps=abc"], "steps = 'abc': Value 'abc' of type 'str' could not be converted to Integer. Fix: give a whole number"),
        (["resume_allow_changes=maybe"], "resume_allow_changes = 'maybe': Value 'maybe' is not a valid bool (type str). Fix: give true or false"),
        (["strategy=minmax"], "strategy = 'minmax': is not an option of strategy (options: best, min_max, none, random, weighted). "
                              "Fix: did you mean strategy=min_max?"),
        (["experiment=analyitc"], "Fix: did you mean experiment=analytic?"),
        (["hydra/launcher=gpuz"], "Fix: did you mean hydra/launcher=gpus?"),
        (["reward_views=foo"], "reward_views = 'foo': is not one of mean, per_view. Fix: choose one of mean, per_view"),
        (["output.export_formats=[meshh]"], "output.export_formats[0] = 'meshh': is not one of all, mesh, textured, gaussians. Fix: did you mean mesh?"),
        (["timesteps.t_min=0.99"], "timesteps.t_min = '0.99': is a group of settings (start, end, start_step, end_step), not one value. "
                                   "Fix: set one of them, e.g. timesteps.t_min.start=0.99"),
        # two bad values: the first one's message still finds its node (the second no longer hides it)
        (["timesteps.t_min=0.9", "timesteps.t_max=0.95"], "timesteps.t_min = '0.9': is a group of settings (start, end, start_step, "
                                                          "end_step), not one value. Fix: set one of them, e.g. timesteps.t_min.start=0.9"),
        (["lookahead.stepz=3", "steps=abc"], "lookahead.stepz = '3': is not a key of lookahead. Fix: did you mean lookahead.steps?"),
        # an input file that is not there, refused before any folder is made or model loaded
        (["experiment=edit_dds", "prompt=a dog", "loss.image=/no/such/photo.png", "loss.source_prompt=a cat"],
         "loss.image = '/no/such/photo.png': is not a file on this machine. Fix: give the path of an existing file (a relative "
         "path is read from the folder the command runs in, "),
        (["experiment=analytic_3d", "representation=gaussians", "representation.init=points", "representation.init_path=pts.ply"],
         "representation.init_path = 'pts.ply': is not a file on this machine."),
        # a device named at the root: the trainer group chooses it
        (["device=cuda:1"], "device = 'cuda:1': is not a key of the root config. Fix: use trainer=gpu trainer.devices=[1] (GPU 1)"),
        (["device=cpu"], "device = 'cpu': is not a key of the root config. Fix: use trainer=cpu"),
        (["gpus=2"], "gpus = '2': is not a key of the root config. Fix: a run uses one device: trainer=gpu trainer.devices=[i] for "
                     "GPU i (several GPUs: a multirun with one job per GPU, rewardsds -m hydra/launcher=gpus trainer=gpu ...)"),
        # a key given twice: Hydra keeps the last value, and so does the message
        (["steps=30", "steps=abc"], "steps = 'abc': Value 'abc' of type 'str' could not be converted to Integer"),
        (["experiment=edit_dds", "representation=latent_image", "representation=nerf"],
         "representation = 'nerf': experiment=edit_dds sets representation.init, which representation=nerf (NeRFConfig) does not have"),
        (["prompt=a", "fox"], "prompt = 'a fox': the shell split the value at a space. Fix: quote the whole value: prompt=\"a fox\""),
        (["experiment=analytic", "steps=30", "prompt=a", "big", "red", "disk"],
         "prompt = 'a big red disk': the shell split the value at a space. Fix: quote the whole value: prompt=\"a big red disk\""),
        (["prompt=a", "big", "red", "disk", "steps=30", "n_noises=8"],  # the value ends at the next override
         "prompt = 'a big red disk': the shell split the value at a space. Fix: quote the whole value: prompt=\"a big red disk\""),
        (["prompt=a", "big", "steps=30", "fox"], "prompt = 'a big': the shell split the value at a space. Fix: quote the whole value: prompt=\"a big\""),
        (["exprt", "run"], "command = 'exprt': is not a subcommand or a key=value override. Fix: did you mean rewardsds export ...?"),
        (["prompt=a fox's tail"], "Fix: quote the value for Hydra inside the shell's quotes: \"prompt=\\\"a fox's tail\\\"\""),
        (["prompt=a, b"], "prompt = 'a, b': is a sweep (a comma list or a sweep function), and this is a single run. Fix: add -m"),
        (["-m", "n_noises=4,8x"], "n_noises = '8x': Value '8x' of type 'str' could not be converted to Integer"),  # a later sweep value
        (["-m", "experiment=analytic", "strategy=none,minmax", "seed=0,1"], "Fix: did you mean strategy=min_max?"),
        # a key an experiment sets that the group option chosen on the command line does not have
        (["experiment=analytic", "steps=30", "reward=clip"],
         "reward = 'clip': experiment=analytic sets reward.preferred, which reward=clip (CLIPScoreConfig) does not have. "
         "Fix: use reward=analytic with experiment=analytic, or another experiment that takes reward=clip (experiment="),
        (["experiment=edit_dds", "representation=nerf"],
         "representation = 'nerf': experiment=edit_dds sets representation.init, which representation=nerf (NeRFConfig) does "
         "not have. Fix: use representation=latent_image with experiment=edit_dds, or another experiment that takes "
         "representation=nerf (experiment=dreamdpo_mvdream_nerf, experiment=dreamfusion_nerf, experiment=mvdream_nerf, "
         "experiment=analytic_3d)"),
        (["experiment=psd_2d", "loss=sds"], "loss = 'sds': experiment=psd_2d sets loss.threshold, which loss=sds"),
        # the project's own checks inside resolvers, which Hydra runs when the sweep starts (it printed a traceback)
        (["-m", "experiment=analytic", "prompts_file=/no/such/prompts.txt", "seed=0,1"], "prompts_file = '/no/such/prompts.txt': does not exist. Fix: give"),
        # the project's validation, which the run did at its start (after its folder existed)
        (["experiment=analytic", "+n_noise=8"], "n_noise = 8: is not a setting of the root config, so nothing would read it. Fix: did you mean n_noises?"),
        (["experiment=analytic", "+lookahead.n_noises=4"], "lookahead.n_noises = 4: is not a setting of lookahead (LookaheadConfig), so "
                                                           "nothing would read it. Fix: did you mean n_noises=4?"),
        (["-m", "experiment=analytic", "lookahead.steps=4,-1"], "lookahead.steps = -1:"),
        ([], "prompt = '???': is required. Fix: pass a prompt"),
        (["-m", "experiment=ddpo3d_2d"], "prompt = '???': is required. Fix: pass a prompt, e.g. prompt=\"a photo of a red fox\" (or prompts=<set>)"),
        # a prompt set's jobs come from the sweeper's params (prompt_index=range(0,25)), not from the command line
        (["-m", "experiment=analytic", "prompts=drawbench25", "n_noises=3"], "(the sweep's job experiment=analytic prompts=drawbench25 "
                                                                             "n_noises=3 prompt_index=0: a sweep starts when every job it lists is valid; "
                                                                             "drop the value that makes this one invalid"),
        # every combination of a small sweep, whatever the order of its values
        (["-m", "experiment=analytic", "strategy=none,min_max", "n_noises=8,2"], "(the sweep's job experiment=analytic strategy=min_max n_noises=2:"),
        (["-m", "experiment=analytic", "strategy=min_max,none", "n_noises=8,2"], "(the sweep's job experiment=analytic strategy=min_max n_noises=2:"),
        # a compare variant's own overrides, named with the variant
        (["experiment=demo", "compare.runs.reward_sds='strategy=nosuch'"], "strategy = 'nosuch': is not an option of strategy"),
        (["experiment=demo", "compare.runs.reward_sds='bogus=1'"], "bogus = '1': is not a key of the root config"),
        (["experiment=demo", "compare.runs.reward_sds='n_noises=2'"], "(in the compare variant reward_sds: compare.runs.reward_sds=\"n_noises=2\")"),
        # an Optuna search's intervals cannot be listed: its command line's job is still checked
        (["-m", "+hparams_search=min_max", "experiment=analytic", "n_noises=3"], "n_noises = 3: is smaller than"),
    ],
)
def test_what_hydra_would_refuse_is_one_message_with_the_fix(args, message):
    from rewardsds.cli import CONFIG_PACKAGE, SUBCOMMANDS
    from rewardsds.overrides import CommandLineError, check

    with pytest.raises(CommandLineError) as err:
        check(args, CONFIG_PACKAGE, subcommands=list(SUBCOMMANDS))
    assert message in str(err.value), str(err.value)


def test_a_good_command_line_passes_the_check():
    from rewardsds.cli import CONFIG_PACKAGE
    from rewardsds.overrides import check, sample_jobs

    for args in (["experiment=analytic", "prompt=a cat", "strategy.n_max=2"], ["experiment=demo", "steps=2"],
                 ["-m", "experiment=analytic", "n_noises=4,8", "strategy=none,min_max"], ["-m", "prompt=a", "n_noises=range(4,7)"],
                 ["--cfg", "job", "n_noise=8"]):  # info flags are Hydra's
        check(args, CONFIG_PACKAGE)
    # every job of a small sweep; past MAX_CHECKED_JOBS each value once, and a config sweep's ends only
    assert sample_jobs(["a=1,2", "b=x", "c=3,4,5"]) == [["a=1", "b=x", "c=3"], ["a=1", "b=x", "c=4"], ["a=1", "b=x", "c=5"],
                                                        ["a=2", "b=x", "c=3"], ["a=2", "b=x", "c=4"], ["a=2", "b=x", "c=5"]]
    assert sample_jobs(["a=1,2", "i=range(0,25)"], ends_only=["i"]) == [["a=1", "i=0"], ["a=2", "i=0"], ["a=1", "i=24"]]
    assert len(sample_jobs(["a=range(0,40)"])) == 32


def test_an_extra_that_is_not_installed_is_named(monkeypatch):
    from hydra.errors import MissingConfigException

    from rewardsds.overrides import _missing_option

    err = MissingConfigException("Could not find 'hydra/sweeper/optuna'", missing_cfg_file="hydra/sweeper/optuna", options=["basic"])
    msg = str(_missing_option(err, ["+hparams_search=min_max"]))
    assert msg == "hydra/sweeper = 'optuna': comes with the package's 'search' extra, which is not installed. Fix: pip install \"rewardsds[search]\""


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["experiment=demo", "--version"]])
def test_version_names_this_package_and_its_libraries(tmp_path, args):
    """``rewardsds --version`` names rewardsds's version (Hydra's flag named Hydra's), the installed one, with the
    versions a run records; it starts no run."""
    from importlib import metadata

    import rewardsds

    r = run_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    first, libraries = r.stdout.splitlines()[:2]
    assert first == f"rewardsds {rewardsds.__version__}" and rewardsds.__version__ == metadata.version("rewardsds")
    assert f"torch {metadata.version('torch')}" in libraries and f"hydra-core {metadata.version('hydra-core')}" in libraries
    assert not (tmp_path / "outputs").exists()


def test_cli_refuses_a_bad_override_before_making_a_run_folder(tmp_path):
    r = run_cli(["experiment=analytic", "n_noise=8", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "run").exists(), r.stderr[-2000:]
    assert r.stderr.strip() == "rewardsds: error: n_noise = '8': is not a key of the root config. Fix: did you mean n_noises? " \
                               "(rewardsds --cfg job shows every key)"


def test_cli_refuses_a_group_option_that_lacks_a_key_the_experiment_sets(tmp_path):
    r = run_cli(["experiment=analytic", "steps=30", "reward=clip", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "run").exists(), r.stderr[-2000:]
    assert r.stderr.startswith("rewardsds: error: reward = 'clip': experiment=analytic sets reward.preferred, which "
                               "reward=clip (CLIPScoreConfig) does not have. Fix: use reward=analytic"), r.stderr
    assert "HYDRA_FULL_ERROR" not in r.stderr


# ------------------------------------------------------------------ the CLI (subprocess): exit codes and messages
def test_cli_missing_prompt_exits_nonzero(tmp_path):
    r = run_cli(["trainer=cpu", "logger=none", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "run").exists(), r.stderr[-2000:]
    assert r.stderr.startswith("rewardsds: error: prompt = '???': is required. Fix: pass a prompt"), r.stderr


def test_a_config_the_run_would_refuse_makes_no_folder(tmp_path):
    """The project's own checks (validate) run with the command-line check: a single run and each value of a sweep
    are refused before Hydra makes a folder, with the same message the run would give."""
    r = run_cli(["experiment=analytic", "n_noises=3", "strategy=min_max", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "run").exists(), r.stderr[-2000:]
    assert r.stderr.startswith("rewardsds: error: n_noises = 3:") and "n_noises>=4" in r.stderr, r.stderr
    r = run_cli(["-m", "experiment=analytic", "strategy=min_max", "n_noises=8,3", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "sweep").exists(), r.stderr[-2000:]
    assert "n_noises = 3:" in r.stderr, r.stderr
    r = run_cli(["experiment=demo", "compare.runs.sds='strategy=min_max n_noises=2'", f"hydra.run.dir={tmp_path}/demo"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "demo").exists(), r.stderr[-2000:]
    assert "rewardsds: error: n_noises = 2:" in r.stderr, r.stderr


def test_cli_unreachable_model(tmp_path):
    r = run_cli(["prompt=a cat", "trainer=cpu", "logger=none", f"prior.pretrained={tmp_path}/no_such_model", "prior.local_files_only=true",
                 f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "no_such_model" in r.stderr and "prior.pretrained=/path/to/local/folder" in r.stderr and "experiment=demo" in r.stderr
    assert "no such file or folder on this machine: a local path, not a Hub id" in r.stderr and "Hub access" not in r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and "ModelLoadError" in m["error"]


def test_a_missing_local_path_is_not_blamed_on_the_hub(tmp_path):
    from rewardsds.errors import is_missing_local_path, model_load_message

    assert [is_missing_local_path(s) for s in (f"{tmp_path}/none", "./none", "~/no/such/x", "a/b/c", "org/name", "name",
                                               str(tmp_path), "https://x/y/z")] == [True, True, True, True, False, False, False, False]
    msg = model_load_message("Stable Diffusion prior", "org/name", OSError("offline"), "prior.pretrained")
    assert "This machine may have no Hub access" in msg  # a Hub id: the Hub may be out of reach


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_cuda_requested_but_absent(tmp_path):
    r = run_cli(["experiment=analytic", "trainer=gpu", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2
    assert "trainer.accelerator" in r.stderr and "trainer=cpu" in r.stderr
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run folder
    r = run_cli(["experiment=analytic", "steps=30", "trainer.accelerator=gpu"], tmp_path)
    assert r.returncode == 2 and "trainer.accelerator = 'gpu': asks for CUDA" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()


def test_cli_nonfinite_gradients_stop_with_message(tmp_path):
    # a latent of ~1e30 (finite: init_std=nan is refused at validation) overflows fp32 when squared: the rewards
    # are NaN, and so are the softmax weights and the gradient
    r = run_cli(["experiment=analytic", "steps=20", "representation.init_std=1e30", "strategy=weighted", "max_nonfinite_steps=2", "output.checkpoint_every=1",
                 f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "non-finite gradient" in r.stderr and "max_nonfinite_steps" in r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and "TrainingAborted" in m["error"]


def test_multirun_one_readable_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", "experiment=analytic", "strategy=none,min_max", "n_noises=4,8", "steps=2", *FAST[1:], f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == [
        "n_noises=4,steps=2,strategy=min_max",
        "n_noises=4,steps=2,strategy=none",
        "n_noises=8,steps=2,strategy=min_max",
        "n_noises=8,steps=2,strategy=none",
    ]
    for j in jobs:
        m = json.loads((sweep / j / "metrics.json").read_text())
        assert m["status"] == "complete" and m["iterations"] == 2
        assert (sweep / j / "final" / "image_000.png").is_file()
    # re-running the same sweep folder skips finished jobs
    r2 = run_cli(["-m", "experiment=analytic", "strategy=none,min_max", "n_noises=4,8", "steps=2", *FAST[1:], f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r2.returncode == 0 and r2.stdout.count("already complete; skipped") == 4 and "skipping" not in r2.stdout + r2.stderr


# ------------------------------------------------------------------ W&B offline
def test_wandb_offline_run_holds_logged_keys(tmp_path):
    from wandb_records import logged_keys

    r = run_cli(["experiment=analytic", "steps=4", "logger=wandb", "logger.mode=auto", "output.image_every=2", f"hydra.run.dir={tmp_path}/run"],
                tmp_path, env={"WANDB_API_KEY": "", "WANDB_MODE": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "logging offline" in r.stdout  # the one-line fallback notice
    assert "wandb: WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr  # e.g. Lightning's anonymous=None
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    assert f"  sync          wandb sync {runs[0].parent}\n" in r.stdout  # the end block names what uploads the run
    keys = logged_keys(runs[0])
    for k in ["train/loss", "train/t", "train/grad_norm", "train/reward_mean", "train/reward_min", "train/reward_max",
              "train/reward_selected", "train/weights_entropy", "train/step_time"]:
        assert k in keys["history"], k
    assert "final/reward" in keys["summary"]
    assert {"prompt", "strategy", "n_noises", "prior", "prior_dtype"} <= keys["config"]
    assert any(f.startswith("media/images/train/image") for f in keys["files"])
    assert any(f.endswith(".mp4") for f in keys["files"])


# ------------------------------------------------------------------ resume
def _latents(ckpt: Path) -> torch.Tensor:
    return torch.load(ckpt, weights_only=False)["state_dict"]["representation.latents"]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    from rewardsds.train import train

    base = ["experiment=analytic", "seed=5", "n_noises=4", *FAST, "output.checkpoint_every=2"]
    train(compose([*base, "steps=6"]), tmp_path / "full")
    part = train(compose([*base, "steps=3"]), tmp_path / "part")
    assert part["iterations"] == 3
    resumed = train(compose([*base, "steps=6", f"resume={tmp_path / 'part'}"]), tmp_path / "ignored")
    assert resumed["iterations"] == 6 and resumed["run_dir"] == str(tmp_path / "part")
    a, b = _latents(tmp_path / "full/checkpoints/last.ckpt"), _latents(tmp_path / "part/checkpoints/last.ckpt")
    assert torch.equal(a, b)
    assert (tmp_path / "ignored" / "RESUMED_INTO.txt").is_file()


def test_a_missing_input_file_stops_a_run_from_python_before_its_folder(tmp_path):
    """train() from Python checks the input files too (the command line checks them before Hydra makes a folder): a
    latent that starts from an image that is not there is refused before the run's folder or any model exists; an
    image the settings leave unused (init=randn) is not read and not checked."""
    from rewardsds.config import input_files
    from rewardsds.train import train

    base = ["experiment=analytic", "steps=2", *FAST]
    with pytest.raises(ConfigError, match=r"representation.init_image = '.*no.png': is not a file on this machine"):
        train(compose([*base, "representation.init=image", f"representation.init_image={tmp_path / 'no.png'}"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    unused = validate(compose([*base, f"representation.init_image={tmp_path / 'no.png'}"]))
    assert input_files(unused) == []


def test_resume_errors(tmp_path):
    from rewardsds.train import resolve_resume

    with pytest.raises(ConfigError, match="does not exist"):
        resolve_resume("/no/such/run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"is not a run folder \(no metrics.json, no checkpoint at "):
        resolve_resume(str(tmp_path / "empty"))
    # a run killed while starting has written only its log (the start block), no metrics.json and no checkpoint
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "train.log").write_text("rewardsds: run killed\n")
    with pytest.raises(ConfigError, match=r"is a run that stopped while starting, before its first step: .* Fix: start the run again"):
        resolve_resume(str(tmp_path / "killed"))


def test_a_resume_that_cannot_start_makes_and_changes_nothing(tmp_path):
    """A resume refused for its path is refused before Hydra makes a folder: no dated run folder, no failed record."""
    r = run_cli(["resume=outputs/runs/nope"], tmp_path)
    assert r.returncode == 2 and "resume = 'outputs/runs/nope': does not exist. Fix:" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []
    # a folder that holds runs (a compare run's variants, a sweep) is not one: its runs are listed
    parent = tmp_path / "demo"
    for name in ("sds_seed0", "reward_sds_seed0"):
        (parent / name / "checkpoints").mkdir(parents=True)
        (parent / name / "metrics.json").write_text('{"status": "complete"}')
        (parent / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (parent / "compare.md").write_text("table")
    listing = sorted(str(p.relative_to(parent)) for p in parent.rglob("*"))
    r = run_cli([f"resume={parent}", "steps=60"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert (f"resume = '{parent}': is not a run folder: it holds the run folders reward_sds_seed0, sds_seed0. "
            f"Fix: resume one of them, e.g. resume={parent / 'reward_sds_seed0'}") in r.stderr, r.stderr
    assert sorted(str(p.relative_to(parent)) for p in parent.rglob("*")) == listing
    assert not (tmp_path / "outputs").exists()


def test_scene_returns_to_the_run_device_after_fit(tmp_path, monkeypatch):
    """Lightning's teardown moves the module to the CPU after fit while the prior stays on the run's device
    (CUDA in real runs): finalisation must see the scene back on that device."""
    from rewardsds.system import DistillationSystem
    from rewardsds.train import train

    seen = []
    original = DistillationSystem.to

    def spy(self, *args, **kwargs):
        seen.append(str(args[0]) if args else str(kwargs.get("device")))
        return original(self, *args, **kwargs)

    teardowns = []
    import lightning.pytorch.strategies.strategy as strat

    orig_teardown = strat.Strategy.teardown

    def teardown(self):
        teardowns.append(len(seen))
        return orig_teardown(self)

    monkeypatch.setattr(DistillationSystem, "to", spy)
    monkeypatch.setattr(strat.Strategy, "teardown", teardown)
    m = train(compose(["experiment=analytic", "steps=2", *FAST]), tmp_path / "run")
    assert m["status"] == "complete"
    assert teardowns, "Lightning's teardown did not run"
    # a .to(<run device>) after the teardown
    assert seen[teardowns[-1]:] == ["cpu"], seen


def test_videos_without_imageio_ffmpeg_fail_before_training(tmp_path, monkeypatch):
    import sys

    from rewardsds.train import train

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # importing it now raises ImportError
    with pytest.raises(ConfigError, match=r"output.video = True: needs imageio-ffmpeg.*output.video=false"):
        train(compose(["experiment=analytic", "steps=2", *FAST, "output.video=true"]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
    m = train(compose(["experiment=analytic", "steps=2", *FAST]), tmp_path / "run2")  # output.video=false needs no ffmpeg
    assert m["status"] == "complete"


# ------------------------------------------------------------------ compare variants vs the command line
def test_compare_variant_clash_names_key_variant_and_fix():
    from rewardsds.overrides import check_variant_overrides

    variants = {"sds": ["strategy=none", "n_noises=1"], "reward_sds": ["strategy=min_max", "n_noises=8"]}
    check_variant_overrides(["experiment=demo", "steps=10", "strategy.lambda_max=0.8"], variants)  # no shared key
    with pytest.raises(ConfigError) as err:
        check_variant_overrides(["experiment=demo", "n_noises=2"], variants)
    msg = str(err.value)
    assert msg.startswith("n_noises = 2:") and "compare variant sds (n_noises=1)" in msg, msg
    assert 'compare.runs.sds="strategy=none n_noises=2"' in msg and "compare.runs={}" in msg, msg
    with pytest.raises(ConfigError, match=r"^strategy = 'best'.*compare variant sds \(strategy=none\)"):
        check_variant_overrides(["+strategy=best"], variants)


def test_cli_compare_refuses_an_override_its_variants_replace(tmp_path):
    """`experiment=demo n_noises=2` used to run N = 1 and N = 8 regardless; now it stops before any sub-run."""
    r = run_cli(["experiment=demo", "n_noises=2", "steps=1", *FAST, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "n_noises = 2:" in r.stderr and "compare variant sds" in r.stderr and "compare.runs.sds=" in r.stderr
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"


def test_a_compare_variant_records_its_own_command_and_continues_alone(tmp_path):
    """Each variant of a compare run (experiment=demo) records the overrides that compose it alone, so the
    `continue` line it prints works and its job command runs that variant, not the whole comparison."""
    folder = tmp_path / "demo"
    r = run_cli(["experiment=demo", "steps=3", *FAST, "logger=none", f"hydra.run.dir={folder}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sds = folder / "sds_seed0"
    m = json.loads((sds / "metrics.json").read_text())
    assert {"strategy=none", "n_noises=1", "seed=0", "compare.runs={}"} <= set(m["overrides"]) and "compare.runs={}" in m["job_command"]
    assert f"continue      rewardsds resume={sds} steps=6" in r.stdout
    own, whole = (sds / "train.log").read_text(), (folder / "train.log").read_text()
    assert "strategy=none, N=1" in own and "strategy=min_max" not in own and "strategy=min_max" in whole, own
    # a resume continues one run: the command line must not make it a comparison again, and a refusal adds nothing
    listing = sorted(str(p.relative_to(sds)) for p in sds.rglob("*"))
    r = run_cli([f"resume={sds}", "steps=5", "experiment=demo"], tmp_path)
    assert r.returncode == 2 and "continues one run, and the command line makes this a comparison" in r.stderr, r.stderr[-2000:]
    assert sorted(str(p.relative_to(sds)) for p in sds.rglob("*")) == listing and not (sds / "sds_seed0").exists()
    r = run_cli([f"resume={sds}", "steps=5"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((sds / "metrics.json").read_text())
    assert m["status"] == "complete" and m["iterations"] == 5 and "n_noises=1" in m["overrides"]


def readme_commands() -> list[str]:
    """The ``rewardsds`` training commands of the README (code blocks and inline code), without placeholders."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = [line.strip().split("  #")[0].strip() for line in text.splitlines() if line.startswith("    rewardsds ")]
    for line in text.splitlines():
        if line.startswith("| `rewardsds") and "/" not in line.split("|")[1]:  # a table row's command, not a list
            found += re.findall(r"`(rewardsds [^`]+)`", line.split("|")[1])
        elif not line.startswith("|"):
            found += re.findall(r"`(rewardsds [^`]+)`", line)
    return sorted({c for c in found if "..." not in c and "<" not in c and c.split()[1] not in ("export", "eval")})


def test_every_readme_command_passes_the_check(tmp_path, monkeypatch):
    """What the README tells a user to type must not be refused (files it names exist in the launch folder)."""
    import shlex

    from PIL import Image

    from rewardsds.cli import CONFIG_PACKAGE, SUBCOMMANDS
    from rewardsds.overrides import check

    commands = readme_commands()
    assert len(commands) >= 10, commands
    (tmp_path / "my_prompts.txt").write_text("a photo of a red fox\na cat\n")
    Image.new("RGB", (16, 16)).save(tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    refused = {}
    for command in commands:
        try:
            check(shlex.split(command)[1:], CONFIG_PACKAGE, subcommands=list(SUBCOMMANDS))
        except Exception as err:  # noqa: BLE001 (each command's message is the report)
            refused[command] = str(err)
    assert not refused, refused


def test_a_sweep_in_a_config_file_is_checked_and_names_its_folders(tmp_path):
    """hydra.sweeper.params written in a YAML file: its jobs are checked like the command line's, and the keys it
    varies come back for the job folder names (a swept setup key such as trainer must not share a folder)."""
    from rewardsds.cli import CONFIG_PACKAGE
    from rewardsds.overrides import CommandLineError, check

    (tmp_path / "mysweep").mkdir()
    for name, values in (("ok", "4,8"), ("bad", "4,2,8")):
        (tmp_path / "mysweep" / f"{name}.yaml").write_text(
            f"# @package _global_\nhydra:\n  sweeper:\n    params:\n      trainer: cpu,default\n      n_noises: {values}\n")
    args = ["-m", "experiment=analytic", "strategy=min_max", f"hydra.searchpath=[file://{tmp_path}]"]
    assert check([*args, "+mysweep=ok"], CONFIG_PACKAGE) == ["trainer", "n_noises"]
    with pytest.raises(CommandLineError, match=r"^n_noises = 2: is smaller than .*trainer=cpu n_noises=2: a sweep starts"):
        check([*args, "+mysweep=bad"], CONFIG_PACKAGE)


def test_the_command_line_check_stays_light():
    """The check runs before every command: composing a compare run's variants must not import torch."""
    import subprocess
    import sys

    code = ("import sys; from rewardsds.overrides import check; "
            "check(['experiment=demo', 'compare.runs.reward_sds=\\'strategy=min_max n_noises=4\\''], 'rewardsds.conf'); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]
