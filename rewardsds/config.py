"""Structured config schemas for every Hydra group, registered with the ConfigStore.

Each option ``conf/<group>/<option>.yaml`` starts with ``defaults: [/schema/<group>/<option>@_here_, _self_]``
so the composed node is typed by the dataclass below: unknown keys and wrong types fail at compose
time, and :func:`validate` (``OmegaConf.to_object``) runs every ``__post_init__``, where cross-field
checks name the key, the value and the fix. ``_target_`` is the only registry: it names the class that
``hydra.utils.instantiate`` builds, with the remaining fields as keyword arguments.

Choices are ``str`` Enums (hydra-core 1.3 has no ``Literal`` support in schemas).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

from rewardsds.errors import ConfigError, check_seed
from rewardsds.schedules import Schedule, check_timestep_range
from rewardsds.schema import check, check_name, enum_option
from rewardsds.priors.config import AnalyticPriorConfig, MVDreamPriorConfig, SDPriorConfig
from rewardsds.rewards.config import (AestheticRewardConfig, AnalyticRewardConfig, CLIPScoreConfig, ComboRewardConfig,
                                      HPSv2Config, ImageRewardConfig, JPEGRewardConfig, PickScoreConfig)
from rewardsds.losses.config import (AdvantageNorm, DDPO3DLossConfig, DDSLossConfig, DreamDPOLossConfig, NegativeUpdate, PSDLossConfig,
                                     SDSBridgeLossConfig, SDSLossConfig, VSDLossConfig)
from rewardsds.representations.config import ExportFormat, GaussianInit, GaussiansConfig, LatentImageConfig, LatentInit, NeRFConfig
from rewardsds.strategies.config import BestStrategyConfig, MinMaxStrategyConfig, NoStrategyConfig, RandomStrategyConfig, WeightedStrategyConfig


# ----------------------------------------------------------------------------------------- enums


class LookaheadGrid(str, Enum):
    leading = "leading"  # diffusers DDIM "leading" spacing + offset 1 (2D reference: 925, 859, ..., 1)
    linspace = "linspace"  # floor(linspace(0, T-1, S)) (3D reference: 999, 927, ..., 0)


class LookaheadStart(str, Enum):
    exact_t = "exact_t"  # first call at exactly t (reuses the shared prediction at t)
    grid = "grid"  # 2D reference: first call at the largest grid point <= t, no re-noising


class TimestepGrid(str, Enum):
    uniform = "uniform"  # t ~ U{floor(T t_min), ..., floor(T t_max)}
    reference_2d = "reference_2d"  # RewardSDS/SDS-Bridge 2D code: odd t in {21, ..., 979}


class ViewAggregation(str, Enum):
    mean = "mean"  # one reward per candidate, averaged over its views (3D reference)
    per_view = "per_view"  # weights per (candidate, view)


# ----------------------------------------------------------------------------------------- logger / trainer
@dataclass
class LoggerConfig:
    _target_: str = MISSING

    def __post_init__(self) -> None:
        # every logger's name can become a path component (CSV: the folder of metrics.csv; Lightning builds
        # <save_dir>/<name>/<version>/ paths from any logger's name), so one check for all of them
        check_name("logger.name", getattr(self, "name", None),
                   "use a plain name without path separators, e.g. csv (logger=csv) or fox_min_max (logger=wandb)")


@dataclass
class WandbLoggerConfig(LoggerConfig):
    project: str = "rewardsds"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online if a key and network exist, else offline) | online | offline
    group: Optional[str] = None  # default: the sweep folder name for multiruns
    name: Optional[str] = None  # default: the job's overrides
    tags: List[str] = field(default_factory=list)
    log_model: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mode in ("auto", "online", "offline"), "logger.mode", self.mode, "is not a known mode",
               "use auto, online or offline")


@dataclass
class CSVLoggerConfig(LoggerConfig):
    name: str = "csv"  # the folder of metrics.csv inside the run folder (checked by LoggerConfig)


@dataclass
class NoLoggerConfig(LoggerConfig):
    """No logger: the run's own files only (metrics.json, csv/metrics.csv, images)."""


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` that users set (the system adds the rest)."""

    _target_: str = MISSING
    accelerator: str = "auto"  # auto | cpu | gpu | cuda
    devices: Any = 1
    precision: str = "32-true"  # the scene is fp32; the prior's dtype is prior.dtype
    enable_progress_bar: Optional[bool] = None  # null: when stdout is a terminal (plain progress lines otherwise)
    log_every_n_steps: int = 1
    deterministic: bool = False
    # cuDNN's autotuner (torch.backends.cudnn.benchmark) for the UNet's and VAE's convolutions at the step's fixed
    # shapes; null leaves torch's setting (off); scripts/benchmark.py --sections levers measures it
    benchmark: Optional[bool] = None
    enable_model_summary: bool = False

    def __post_init__(self) -> None:
        check(self.accelerator in ("auto", "cpu", "gpu", "cuda"), "trainer.accelerator", self.accelerator,
               "is not supported", "use auto, cpu or gpu")
        check(self.precision in ("32-true", "32"), "trainer.precision", self.precision,
               "must be 32: the scene is optimised in fp32 and the prior's precision is prior.dtype",
               "set prior.dtype=bf16 (or fp16) for a half-precision prior")
        check_devices(self.devices, self.accelerator)
        check(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", self.log_every_n_steps, "must be >= 1", "use 1")


#: ``lightning.Trainer`` arguments the run sets itself from its own keys: ``trainer.<name>`` -> what to set instead
#: (``{value}``: the value given).
TRAINER_ARGS_SET_ELSEWHERE = {
    "max_steps": "set steps={value}: the run's length (the run gives Lightning its own max_steps)",
    "max_epochs": "set steps=N: a run counts optimisation steps, not epochs",
    "default_root_dir": "set hydra.run.dir={value} (hydra.sweep.dir for a sweep): the run folder",
    "enable_checkpointing": "set output.checkpoint_every=N (0: no checkpoints)",
    "logger": "choose the logger group: logger=csv, logger=wandb or logger=none",
    "gradient_clip_val": "set loss.grad_clip={value}: the score-distillation gradient is clamped elementwise (null: off)",
}


def device_fix(value: Any) -> str:
    """Where a device named at the root (``device=cuda:1``, ``gpus=2``) is chosen: the trainer group, one device per
    run, and a multirun for several GPUs."""
    text = "" if value is None else str(value).strip().lower()
    index = text.rpartition(":")[2] if ":" in text else ""
    multi = "several GPUs: a multirun with one job per GPU, rewardsds -m hydra/launcher=gpus trainer=gpu ..."
    if text == "cpu":
        return "use trainer=cpu"
    if index.isdigit():
        return f"use trainer=gpu trainer.devices=[{index}] (GPU {index})"
    if text in ("cuda", "gpu", "1"):
        return f"use trainer=gpu (trainer.devices=[i] picks GPU i; {multi})"
    return f"a run uses one device: trainer=gpu trainer.devices=[i] for GPU i ({multi})"


#: names a researcher may give at the root for what ``trainer`` chooses
DEVICE_KEYS = ("device", "gpu", "gpus", "cuda")


def key_elsewhere_fix(key: str, value: Any, root: Any) -> Optional[str]:
    """The fix for a key that does not exist where it was given but does under another name or place, or None.

    ``trainer.max_steps`` names the root's ``steps`` (:data:`TRAINER_ARGS_SET_ELSEWHERE`); ``device=cuda:1`` names the
    trainer's keys (:func:`device_fix`); a key whose name exists elsewhere in the composed config ``root``
    (``lookahead.n_noises``, ``guidance_scale``) names where it is.
    """
    parent, _, name = key.rpartition(".")
    if parent == "trainer" and name in TRAINER_ARGS_SET_ELSEWHERE:
        return TRAINER_ARGS_SET_ELSEWHERE[name].format(value="X" if value is None else value)
    if parent in ("", "trainer") and name in DEVICE_KEYS:
        return device_fix(value)
    places = [p for p in _paths_named(root, name, "") if p != key] if isinstance(root, DictConfig) else []
    if not places:
        return None
    shown = "" if value is None else f"={value}"
    owners = " and of ".join(p.rpartition(".")[0] or "the root config" for p in places)
    return f"did you mean {' or '.join(p + shown for p in places)}? ({name} is a key of {owners})"


def _paths_named(node: DictConfig, name: str, path: str) -> List[str]:
    found = []
    if node._is_none() or node._is_missing() or node._is_interpolation():
        return found
    for k in node.keys():
        if path == "" and k == "hydra":
            continue
        here = f"{path}{k}"
        if k == name:
            found.append(here)
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            found += _paths_named(child, name, here + ".")
    return found


def check_devices(devices: Any, accelerator: str = "auto") -> None:
    """``trainer.devices`` must name one device: a run is one process (a multirun spreads jobs over GPUs).

    Valid: ``1``, ``[i]`` (GPU index i) or ``auto`` where it means one device (the CPU, or a machine with at
    most one visible GPU); Lightning would start one process per device for anything else.
    """
    fix = ("use trainer.devices=1 (or trainer.devices=[i] for GPU i): a run is one process; to use several GPUs, run a "
           "multirun with one job per GPU: rewardsds -m hydra/launcher=gpus trainer=gpu ...")
    value = list(devices) if isinstance(devices, (list, tuple, ListConfig)) else devices
    if isinstance(value, list):
        check(len(value) == 1 and isinstance(value[0], int) and not isinstance(value[0], bool) and value[0] >= 0,
               "trainer.devices", value, "must list exactly one device index >= 0", fix)
        return
    if value == "auto":
        if accelerator != "cpu":
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            check(count <= 1, "trainer.devices", value,
                   f"would start one process per visible GPU ({count}), but a run is one process", fix)
        return
    many = f"would start {value} processes (one per device)" if isinstance(value, int) and value > 1 else "does not name one device"
    check(value == 1 and not isinstance(value, bool) or value == "1", "trainer.devices", value,
           f"{many}, but a run is one process", fix)


# ----------------------------------------------------------------------------------------- 3D cameras
# The cameras' schema stays here rather than beside rewardsds/cameras.py: that module is the project's camera
# convention (priors, representations and exports use it) and needs torch, while schemas must load without torch;
# and its class path rewardsds.cameras.CameraSampler is recorded in every 3D run's config, which resume compares.
class ElevationSampling(str, Enum):
    mixed = "mixed"  # threestudio: per group, p=0.5 uniform in degrees, else uniform in area on the band
    uniform = "uniform"  # uniform in degrees
    area = "area"  # uniform in area on the sphere band


class LightSampling(str, Enum):
    dreamfusion = "dreamfusion"  # light direction ~ camera direction + N(0, light_position_perturb)
    magic3d = "magic3d"  # 30..90 degrees above the camera's horizon


@dataclass
class Range:
    """A closed interval with named ends (degrees or scene units, as the field says)."""

    low: float = 0.0
    high: float = 1.0

    @classmethod
    def of(cls, value: Any, key: str) -> "Range":
        """``value`` (a Range, a mapping with ``low``/``high`` or a (low, high) pair) as a Range; ConfigError naming
        ``key`` unless low <= high."""
        if isinstance(value, Range):
            lo, hi = value.low, value.high
        elif hasattr(value, "items"):
            lo, hi = value["low"], value["high"]
        else:
            lo, hi = value
        lo, hi = float(lo), float(hi)
        check(lo <= hi, key, {"low": lo, "high": hi}, "has low > high", f"swap them: {key}={{low: {hi}, high: {lo}}}")
        return cls(lo, hi)


@dataclass
class CameraConfig:
    """Random orbit cameras for 3D distillation (root node ``cameras``); defaults = RewardSDS/MVDream 3D.

    Views are object-major groups of ``views_per_object`` views sharing elevation, distance, field of
    view, perturbations and light; their azimuths are 360 / views_per_object apart with a random
    offset. ``resolution`` and ``batch_size`` are schedules (the reference: 8 views at 64 px, then 4
    views at 256 px from step 5000: ``{start: 64, end: 256, start_step: 5000, end_step: 5000}``).
    """

    _target_: str = MISSING

    resolution: Schedule = field(default_factory=lambda: Schedule(start=64))  # square render size in pixels
    batch_size: Schedule = field(default_factory=lambda: Schedule(start=4))  # views per step, a multiple of views_per_object
    views_per_object: int = 4  # 4 orthogonal views for MVDream, 1 for a single-view prior
    elevation: Range = field(default_factory=lambda: Range(0.0, 30.0))  # degrees
    elevation_sampling: ElevationSampling = ElevationSampling.mixed
    azimuth: Range = field(default_factory=lambda: Range(-180.0, 180.0))  # degrees
    distance: Range = field(default_factory=lambda: Range(0.8, 1.0))
    relative_distance: bool = True  # distance / tan(fovy / 2): the object's image size stays fixed (MVDream)
    fovy: Range = field(default_factory=lambda: Range(15.0, 60.0))  # degrees
    batch_uniform_azimuth: bool = True  # stratified azimuths when views_per_object == 1
    camera_perturb: float = 0.0  # uniform [-p, p]^3 offset of the camera position
    center_perturb: float = 0.0  # std of a normal offset of the look-at target
    up_perturb: float = 0.0  # std of a normal offset of the up vector
    light_sampling: LightSampling = LightSampling.dreamfusion
    light_position_perturb: float = 1.0
    light_distance: Range = field(default_factory=lambda: Range(0.8, 1.5))
    # the fixed orbit of evaluation views and turntables
    eval_elevation: float = 15.0  # degrees
    eval_distance: float = 3.0
    eval_fovy: float = 40.0  # degrees
    eval_resolution: int = 512
    front_threshold: float = 45.0  # view-dependent prompts (threestudio prompt processor), degrees
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0

    def __post_init__(self) -> None:
        self.elevation_sampling = enum_option(ElevationSampling, self.elevation_sampling, "cameras.elevation_sampling")
        self.light_sampling = enum_option(LightSampling, self.light_sampling, "cameras.light_sampling")
        for key in ("elevation", "azimuth", "distance", "fovy", "light_distance"):
            setattr(self, key, Range.of(getattr(self, key), f"cameras.{key}"))
        for key in ("resolution", "batch_size"):
            setattr(self, key, Schedule.from_any(getattr(self, key)))
        self._check()

    def _check(self) -> None:
        e, d, f, light = self.elevation, self.distance, self.fovy, self.light_distance
        check(-90.0 <= e.low and e.high <= 90.0, "cameras.elevation", [e.low, e.high], "must lie within [-90, 90] degrees",
              "use e.g. {low: 0, high: 30}")
        check(d.low > 0, "cameras.distance", d.low, "must be > 0",
              "use e.g. {low: 0.8, high: 1.0} with relative_distance, or {low: 1.5, high: 2.0}")
        check(0 < f.low and f.high < 180, "cameras.fovy", [f.low, f.high], "must lie within (0, 180) degrees",
              "use e.g. {low: 15, high: 60}")
        check(light.low > 0, "cameras.light_distance", light.low, "must be > 0", "use e.g. {low: 0.8, high: 1.5}")
        v = int(self.views_per_object)
        check(v >= 1, "cameras.views_per_object", v, "must be >= 1", "use 1, or 4 for MVDream")
        for key in ("resolution", "batch_size"):
            sched = getattr(self, key)
            for val in (sched.start, sched.end):
                if val is None:
                    continue
                check(val >= 1, f"cameras.{key}", val, "must be >= 1", "use e.g. 64 (resolution) or 4 (batch_size)")
                if key == "batch_size":
                    check(int(round(val)) % v == 0, "cameras.batch_size", val, f"is not a multiple of cameras.views_per_object = {v}",
                          f"use a multiple of {v}, e.g. {v * max(1, int(round(val)) // v)}")
        for key in ("camera_perturb", "center_perturb", "up_perturb", "light_position_perturb"):
            check(float(getattr(self, key)) >= 0, f"cameras.{key}", getattr(self, key), "must be >= 0", "use 0 to switch it off")
        check(float(self.eval_distance) > 0, "cameras.eval_distance", self.eval_distance, "must be > 0", "use e.g. 3.0 with eval_fovy 40")
        check(0 < float(self.eval_fovy) < 180, "cameras.eval_fovy", self.eval_fovy, "must lie within (0, 180) degrees", "use e.g. 40")
        check(-90 <= float(self.eval_elevation) <= 90, "cameras.eval_elevation", self.eval_elevation, "must lie within [-90, 90]",
              "use 15")
        check(int(self.eval_resolution) >= 1, "cameras.eval_resolution", self.eval_resolution, "must be >= 1", "use e.g. 256 or 512")


# ----------------------------------------------------------------------------------------- prompt sets, GPU locks
@dataclass
class PromptSetConfig:
    """A named list of prompts (``conf/prompts/<name>.yaml``); a multirun runs one job per prompt."""

    name: str = MISSING
    items: List[str] = field(default_factory=list)
    source: str = ""  # one-line citation, logged with the run (full provenance: the YAML header)

    def __post_init__(self) -> None:
        check(len(self.items) > 0, "prompts.items", list(self.items), f"is empty in prompts={self.name}",
               "list at least one prompt under items:")


@dataclass
class GpuLockConfig:
    """One GPU per job when multirun jobs run side by side on one machine (on with ``hydra/launcher=gpus``).

    A job locks a free GPU of ``gpus`` for its lifetime (an exclusive ``flock`` on ``<dir>/gpu<i>.lock``, released
    when the job ends or its process dies) and runs on it; a job that finds every GPU taken waits for one.
    """

    enabled: Optional[bool] = None  # null: on with hydra/launcher=gpus, off otherwise; true/false force it
    gpus: Optional[List[int]] = None  # CUDA device indices to share out; null = every visible GPU
    dir: Optional[str] = None  # lock folder shared by the jobs of this machine; null = <tmp>/rewardsds-gpu-locks-<user>
    wait_s: float = 2.0  # poll interval while every GPU is taken

    def __post_init__(self) -> None:
        if self.gpus is not None:
            gpus = list(self.gpus)
            check(len(gpus) > 0 and all(int(g) >= 0 for g in gpus) and len(set(gpus)) == len(gpus), "gpu_lock.gpus", gpus,
                   "must list distinct device indices >= 0", "use e.g. gpu_lock.gpus=[0,1], or null for every visible GPU")
        check(self.wait_s > 0, "gpu_lock.wait_s", self.wait_s, "must be > 0", "use 2.0")


# ----------------------------------------------------------------------------------------- root nodes
@dataclass
class TimestepConfig:
    """Diffusion timestep sampling, as fractions of T with named schedules (threestudio annealing)."""

    t_min: Schedule = field(default_factory=lambda: Schedule(start=0.02))
    t_max: Schedule = field(default_factory=lambda: Schedule(start=0.98))
    grid: TimestepGrid = TimestepGrid.uniform

    def __post_init__(self) -> None:
        self.grid = enum_option(TimestepGrid, self.grid, "timesteps.grid")
        check_timestep_range(self.t_min, self.t_max)


@dataclass
class LookaheadConfig:
    """Deterministic DDIM lookahead from x_t to x_0 per candidate (paper's S)."""

    steps: int = 15  # points of the full DDIM grid; the chain visits those below t. 0 = one-step x0
    guidance_scale: float = 7.5
    grid: LookaheadGrid = LookaheadGrid.leading
    start: LookaheadStart = LookaheadStart.exact_t
    decode: str = "full"  # full VAE decode or "tiny" (prior.tiny_vae) for rewards
    prune_to: int = 0  # 0 = off; else full lookahead only for the prune_to best candidates by one-step reward
    # decode and score each chunk of candidates on a second CUDA stream while the next chunk looks ahead (the
    # chunks are chunk_size's model calls, whole candidates each; one chunk: nothing to overlap)
    overlap: bool = False
    # below this timestep the candidates rank in fp32: the lookahead's calls (the one at t included) and their decode
    # run on an fp32 eager copy of the UNet and VAE, where bf16 rounding flips near-ties (0 = off; the prediction at t
    # that the loss uses is unchanged). fp32_tf32: let those calls use TF32 tensor cores (false: full fp32)
    fp32_below: int = 0
    fp32_tf32: bool = False

    def __post_init__(self) -> None:
        check(self.steps >= 0, "lookahead.steps", self.steps, "must be >= 0", "use 15 (reference) or 0 for one-step x0")
        check(self.guidance_scale >= 0, "lookahead.guidance_scale", self.guidance_scale, "must be >= 0", "use 7.5 (2D) or 50 (MVDream)")
        self.grid = enum_option(LookaheadGrid, self.grid, "lookahead.grid")
        self.start = enum_option(LookaheadStart, self.start, "lookahead.start")
        check(self.decode in ("full", "tiny"), "lookahead.decode", self.decode, "is not a known decoder", "use full or tiny")
        check(self.prune_to >= 0, "lookahead.prune_to", self.prune_to, "must be >= 0", "use 0 (off) or fewer than n_noises")
        check(0 <= self.fp32_below <= 1000, "lookahead.fp32_below", self.fp32_below, "must be a timestep in [0, 1000]",
              "use 0 (off) or e.g. 250 (rank the candidates of steps with t < 250 in fp32)")
        check(not self.fp32_tf32 or self.fp32_below > 0, "lookahead.fp32_tf32", self.fp32_tf32,
              "sets the precision of the fp32 ranking, which lookahead.fp32_below = 0 leaves off",
              "set lookahead.fp32_below (e.g. 250) too, or remove lookahead.fp32_tf32")


@dataclass
class OutputConfig:
    image_every: int = 100  # save (and log) the current image every k steps; 0 = never
    candidates_every: int = 0  # log a table of candidate images with their rewards every k steps
    video: bool = True
    video_fps: int = 20
    video_frames: int = 100  # frames of the optimisation video (one every steps // video_frames steps)
    checkpoint_every: int = 100  # write last.ckpt every k steps (atomically); 0 = only at the end
    eval_views: int = 8  # fixed cameras rendered at the end for 3D metrics
    turntable_frames: int = 60  # frames of the 3D turntable video; 0 = none
    final_reward: bool = True  # score the final image(s) with the run's reward for metrics.json
    progress_every: int = 0  # a progress line (log, and stdout without a TTY) every k steps; 0 = about 20 per run
    # assets written into export/ at the end (3D runs): [all] = every format of the representation, [] = none
    export_formats: List[ExportFormat] = field(default_factory=lambda: [ExportFormat.all])

    def __post_init__(self) -> None:
        self.export_formats = [enum_option(ExportFormat, f, "output.export_formats") for f in self.export_formats]
        for key, fix in (("image_every", "use e.g. 100, or 0 for never"), ("candidates_every", "use 0 (never) or e.g. 50"),
                         ("checkpoint_every", "use e.g. 100, or 0 for only at the end"),
                         ("turntable_frames", "use e.g. 60, or 0 for no turntable")):
            check(getattr(self, key) >= 0, f"output.{key}", getattr(self, key), "must be >= 0 (a count of steps or frames)", fix)
        for key, fix in (("video_fps", "use 20"), ("video_frames", "use e.g. 100"), ("eval_views", "use e.g. 8")):
            check(getattr(self, key) >= 1, f"output.{key}", getattr(self, key), "must be >= 1", fix)


@dataclass
class CompareConfig:
    """Run labelled variants of the same setup on the same seeds and write a comparison (offline demo).

    ``runs`` maps a label to space-separated overrides, e.g. ``{sds: "strategy=none n_noises=1"}``.
    """

    runs: Dict[str, str] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for label in self.runs:
            # each variant writes <run folder>/<label>_seed<seed>
            check_name(f"compare.runs.{label}", label, "use a plain label such as sds or reward_sds")
        for seed in self.seeds:
            check_seed(check, "compare.seeds", seed)


@dataclass
class Config:
    """Root schema. Groups are typed by their own schemas; the fields below are run-level settings."""

    representation: Any = MISSING
    prior: Any = MISSING
    loss: Any = MISSING
    reward: Any = MISSING
    strategy: Any = MISSING
    logger: Any = MISSING
    trainer: Any = MISSING
    cameras: Any = None  # training/eval cameras of 3D representations (ignored by 2D ones)

    prompt: str = MISSING
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 1000
    n_noises: int = 4
    reward_duration: float = 1.0  # fraction of steps that use the reward; later steps are plain SDS (N = 1)
    chunk_size: int = 0  # most UNet inputs per call (0 = automatic from free memory on CUDA, all on CPU)
    reward_views: ViewAggregation = ViewAggregation.mean
    view_dependent_prompts: bool = False
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    max_nonfinite_steps: int = 10
    resume: Optional[str] = None
    resume_allow_changes: bool = False  # let resume=<run> continue with experiment-changing overrides (recorded)
    name: Optional[str] = None  # appended to the run / sweep folder name (<time>_<name>)
    prompts: Any = None  # a prompt set (conf/prompts/); with prompt_index it sets `prompt`
    prompts_file: Optional[str] = None  # a text file of prompts, one a line; with prompt_index it sets `prompt`
    prompt_index: Optional[int] = None  # which prompt of the list (a multirun sweeps them all)
    gpu_lock: GpuLockConfig = field(default_factory=GpuLockConfig)

    def __post_init__(self) -> None:
        check(isinstance(self.prompt, str) and self.prompt.strip() != "", "prompt", self.prompt, "is missing or empty",
               'pass a prompt, e.g. prompt="a photo of a red fox"')
        check_seed(check, "seed", self.seed)
        check_name("name", self.name, "use a short label such as fox_test (it is appended to the run folder's name)")
        check(self.steps >= 1, "steps", self.steps, "must be >= 1", "use e.g. 1000")
        check(self.n_noises >= 1, "n_noises", self.n_noises, "must be >= 1", "use e.g. 4, 8 or 10")
        check(0.0 <= self.reward_duration <= 1.0, "reward_duration", self.reward_duration, "must be in [0, 1]",
               "use 1.0 (2D), 0.5 (paper 3D) or 0.7 (reference 3D)")
        check(self.chunk_size >= 0, "chunk_size", self.chunk_size, "must be >= 0", "use 0 (automatic)")
        check(self.max_nonfinite_steps >= 0, "max_nonfinite_steps", self.max_nonfinite_steps, "must be >= 0", "use 10")
        check(self.output.progress_every >= 0, "output.progress_every", self.output.progress_every, "must be >= 0",
               "use 0 (about 20 lines per run) or a number of steps")
        self.reward_views = enum_option(ViewAggregation, self.reward_views, "reward_views")
        check(self.lookahead.prune_to < self.n_noises or self.lookahead.prune_to == 0, "lookahead.prune_to", self.lookahead.prune_to,
              f"must be smaller than n_noises = {self.n_noises} to prune anything", "use 0 (off) or a value below n_noises")


# ----------------------------------------------------------------------------------------- checks across groups
class Choices(dict):
    """The option chosen in each config group, as Hydra recorded it (``hydra.runtime.choices``).

    Error messages and a run's record name options the way the user chose them (``loss=psd``); a group Hydra did
    not record (a config built in Python) reads as its schema class.
    """

    def of(self, group: str, node: Any) -> str:
        value = self.get(group)
        return str(value) if value not in (None, "null") else type(node).__name__

    def recorded(self, group: str, node: Any) -> Optional[str]:
        """The name a run records for its option of ``group``: Hydra's choice, else (a config composed without
        Hydra's runtime node, e.g. by a script) the class the option builds, e.g. ``MinMaxStrategy``; None for no
        option."""
        value = self.get(group)
        if value not in (None, "null"):
            return str(value)
        target = getattr(node, "_target_", None)
        return str(target).rpartition(".")[2] if isinstance(target, str) and target else None


def hydra_choices(cfg: Optional[DictConfig] = None) -> Choices:
    """The group choices a composed config carries (``compose(..., return_hydra_config=True)``, e.g. a compare
    variant), else those of the running Hydra job, else none."""
    from hydra.core.hydra_config import HydraConfig

    node = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) if cfg is not None else None
    if node is not None:
        return Choices(OmegaConf.to_container(node))
    if HydraConfig.initialized():
        return Choices(HydraConfig.get().runtime.choices)
    return Choices()


def _strategy_needs_enough_candidates(cfg: Config, choices: Choices) -> None:
    s = cfg.strategy
    if isinstance(s, MinMaxStrategyConfig):
        check(cfg.n_noises >= s.n_max + s.n_min, "n_noises", cfg.n_noises,
              f"is smaller than strategy.n_max + strategy.n_min = {s.n_max} + {s.n_min} = {s.n_max + s.n_min}",
              f"set n_noises>={s.n_max + s.n_min} or lower strategy.n_max / strategy.n_min")
    if isinstance(s, BestStrategyConfig):
        check(cfg.n_noises >= s.n_best, "n_noises", cfg.n_noises, f"is smaller than strategy.n_best = {s.n_best}",
              f"set n_noises>={s.n_best} or lower strategy.n_best")


def _multiview_view_groups(cfg: Config, choices: Choices) -> None:
    frames = getattr(cfg.prior, "num_frames", 1) or 1
    cams = cfg.cameras
    if frames > 1 and isinstance(cams, CameraConfig) and not isinstance(cfg.representation, LatentImageConfig):
        if cams.views_per_object != frames:
            raise ConfigError("cameras.views_per_object", cams.views_per_object,
                              f"must equal prior.num_frames = {frames}: the multi-view prior denoises {frames} views of one object jointly",
                              f"set cameras.views_per_object={frames} (cameras=multiview)")
        for v in (cams.batch_size.start, cams.batch_size.end):
            if v is not None and int(v) % frames:
                raise ConfigError("cameras.batch_size", v, f"is not a multiple of prior.num_frames = {frames}",
                                  f"use a multiple of {frames} views per step, e.g. {{start: 8, end: 4}}")


def _multiview_needs_views(cfg: Config, choices: Choices) -> None:
    if isinstance(cfg.prior, MVDreamPriorConfig) and isinstance(cfg.representation, LatentImageConfig):
        raise ConfigError(
            "representation", choices.of("representation", cfg.representation),
            f"cannot give the 4 camera-posed views per object that the multi-view prior (prior={choices.of('prior', cfg.prior)}) needs",
            "use representation=nerf or representation=gaussians with prior=mvdream",
        )


def _dds_edits_a_latent_image(cfg: Config, choices: Choices) -> None:
    """DDS is a 2D editing method: the target is a latent image started from the source image (ALGORITHMS.md 4.1)."""
    loss, rep = cfg.loss, cfg.representation
    if not isinstance(loss, DDSLossConfig):
        return
    if not isinstance(rep, LatentImageConfig):
        raise ConfigError("representation", choices.of("representation", rep), "cannot be edited by loss=dds, an image-editing method",
                          "use representation=latent_image (experiment=edit_dds)")
    fix = f"set representation.init=image representation.init_image={loss.image} (experiment=edit_dds does both)"
    if rep.init != "image":
        raise ConfigError("representation.init", rep.init, "must be image: DDS starts the target from the source image", fix)
    if rep.init_image != loss.image:
        raise ConfigError("representation.init_image", rep.init_image,
                          f"differs from loss.image = {loss.image!r}: DDS starts the target from the source image", fix)
    if getattr(cfg.prior, "encode_sample", False):
        raise ConfigError("prior.encode_sample", True, "DDS encodes the source image with the VAE posterior mean, so source "
                          "and target start equal", "set prior.encode_sample=false")


def _reward_is_differentiable(reward: Any) -> Optional[bool]:
    """The reward config's ``differentiable`` field if it has one, else its class's flag (None if unknown)."""
    if reward is None:
        return None
    if hasattr(reward, "differentiable"):
        return bool(reward.differentiable)
    try:
        from hydra.utils import get_class

        return bool(get_class(reward._target_).differentiable)
    except Exception:  # an unknown target fails later, at instantiation, with its own error
        return None


def _reward_aligned_losses(cfg: Config, choices: Choices) -> None:
    """DDPO3D, DreamDPO and PSD rank or normalise their own candidates' rewards: they need a reward, no
    strategy weights, enough candidates, and (PSD reward feedback) a differentiable reward."""
    loss = cfg.loss
    if not isinstance(loss, (DDPO3DLossConfig, DreamDPOLossConfig, PSDLossConfig)):
        return
    option = choices.of("loss", loss)
    if not isinstance(cfg.strategy, NoStrategyConfig):
        raise ConfigError("strategy", choices.of("strategy", cfg.strategy), f"does not apply to loss={option}, which weighs "
                          "its own candidates from their rewards", "set strategy=none")
    if cfg.reward is None:
        raise ConfigError("reward", None, f"is required by loss={option}", "choose a reward, e.g. reward=jpeg_compressibility")
    for key, value, default in (("lookahead.prune_to", cfg.lookahead.prune_to, 0), ("lookahead.overlap", cfg.lookahead.overlap, False),
                                ("lookahead.fp32_below", cfg.lookahead.fp32_below, 0)):
        if value != default:
            raise ConfigError(key, value, f"applies to the candidates a strategy ranks, and loss={option} scores its own "
                              "candidates (it would not be used)", f"remove it (the default is {key}={str(default).lower()})")
    if isinstance(loss, (DreamDPOLossConfig, PSDLossConfig)) and cfg.n_noises < 2:
        raise ConfigError("n_noises", cfg.n_noises, f"loss={option} compares a win and a lose candidate and needs at least 2",
                          "set n_noises=2")
    if isinstance(loss, DDPO3DLossConfig) and loss.advantage is AdvantageNorm.batch and cfg.n_noises < 2:
        raise ConfigError("n_noises", cfg.n_noises, "loss.advantage=batch normalises rewards over the rollouts of one step "
                          "and needs at least 2", "set n_noises>=2 (4 or more recommended), or loss.advantage=running")
    if isinstance(loss, PSDLossConfig) and loss.negative_update is NegativeUpdate.reward_feedback:
        if _reward_is_differentiable(cfg.reward) is False:
            name = choices.of("reward", cfg.reward)
            raise ConfigError("loss.negative_update", "reward_feedback", f"back-propagates the reward into the negative "
                              f"embedding, and reward={name} is not differentiable",
                              "use loss.negative_update=dpo, or a differentiable reward with reward.differentiable=true")


def _vsd_needs_a_stable_diffusion_prior(cfg: Config, choices: Choices) -> None:
    """VSD adapts a LoRA copy of the prior's single-view UNet: only the Stable Diffusion prior has one."""
    if isinstance(cfg.loss, VSDLossConfig) and not isinstance(cfg.prior, SDPriorConfig):
        raise ConfigError("loss", choices.of("loss", cfg.loss), "needs a trainable single-view copy of the prior's UNet for its "
                          f"LoRA, and prior={choices.of('prior', cfg.prior)!r} has none",
                          "use prior=sd (any Stable Diffusion 1.x/2.x checkpoint), or another loss such as loss=sds")


def _export_formats_of_the_representation(cfg: Config, choices: Choices) -> None:
    """``output.export_formats`` names only formats the representation writes (read from its class)."""
    from hydra.utils import get_class

    names = [f.value for f in cfg.output.export_formats if f != ExportFormat.all]
    target = getattr(cfg.representation, "_target_", None)
    if not names or not target:
        return
    available = tuple(getattr(get_class(target), "export_formats", ()))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError("output.export_formats", names, f"names {', '.join(unknown)}, which "
                          f"representation={choices.of('representation', cfg.representation)} does not write (it writes: "
                          f"{', '.join(available) or 'nothing'})",
                          f"use [all], [] or a list of: {', '.join(available)}" if available else "use [all] or []")


def _tiny_decode_needs_a_tiny_autoencoder(cfg: Config, choices: Choices) -> None:
    if cfg.lookahead.decode != "tiny":
        return
    prior = choices.of("prior", cfg.prior)
    if not hasattr(cfg.prior, "tiny_vae"):
        raise ConfigError("lookahead.decode", "tiny", f"asks for the prior's tiny autoencoder, and prior={prior} has none "
                          "(its decode is already exact and cheap)", "use lookahead.decode=full")
    if not cfg.prior.tiny_vae:
        raise ConfigError("lookahead.decode", "tiny", f"needs a tiny autoencoder, and prior.tiny_vae is not set (prior={prior})",
                          "set prior.tiny_vae=madebyollin/taesd (or a local folder), or use lookahead.decode=full")


def _fp32_ranking_needs_ranked_candidates(cfg: Config, choices: Choices) -> None:
    """``lookahead.fp32_below`` keeps fp32 copies of the prior (gigabytes on a GPU) to rank candidates: refused where
    no step ranks any."""
    if cfg.lookahead.fp32_below == 0:
        return
    if isinstance(cfg.strategy, (NoStrategyConfig, RandomStrategyConfig)):
        raise ConfigError("lookahead.fp32_below", cfg.lookahead.fp32_below, f"ranks candidates by their rewards, and "
                          f"strategy={choices.of('strategy', cfg.strategy)} ranks none",
                          "remove it (the default is lookahead.fp32_below=0), or choose a ranking strategy such as strategy=min_max")
    if cfg.n_noises < 2:
        raise ConfigError("lookahead.fp32_below", cfg.lookahead.fp32_below, f"ranks candidates, and n_noises = {cfg.n_noises} "
                          "gives one a step", "remove it (the default is lookahead.fp32_below=0), or set n_noises>=2")


#: Checks of combinations of groups, run in this order by :func:`validate` after every schema's own checks.
CROSS_CHECKS = (_strategy_needs_enough_candidates, _multiview_view_groups, _multiview_needs_views, _dds_edits_a_latent_image,
                _reward_aligned_losses, _fp32_ranking_needs_ranked_candidates, _vsd_needs_a_stable_diffusion_prior,
                _export_formats_of_the_representation, _tiny_decode_needs_a_tiny_autoencoder)


# ----------------------------------------------------------------------------------------- registration
#: The schemas of each config group; an option YAML extends one by its class name
#: (``defaults: [/schema/<group>/<ClassName>@_here_, _self_]``) and names the class it builds in ``_target_``.
GROUP_SCHEMAS: dict[str, tuple[type, ...]] = {
    "prior": (SDPriorConfig, MVDreamPriorConfig, AnalyticPriorConfig),
    "representation": (LatentImageConfig, NeRFConfig, GaussiansConfig),
    "loss": (SDSLossConfig, VSDLossConfig, SDSBridgeLossConfig, DDSLossConfig, DDPO3DLossConfig, DreamDPOLossConfig, PSDLossConfig),
    "reward": (ImageRewardConfig, AestheticRewardConfig, CLIPScoreConfig, PickScoreConfig, HPSv2Config, ComboRewardConfig,
               JPEGRewardConfig, AnalyticRewardConfig),
    "strategy": (NoStrategyConfig, MinMaxStrategyConfig, BestStrategyConfig, WeightedStrategyConfig, RandomStrategyConfig),
    "logger": (WandbLoggerConfig, CSVLoggerConfig, NoLoggerConfig),
    "trainer": (TrainerConfig,),
    "cameras": (CameraConfig,),
    "prompts": (PromptSetConfig,),
}


def _share_config_store() -> None:
    """Make copies of Hydra's ConfigStore singleton share it instead of duplicating every stored schema.

    Hydra deep-copies its config repository, and with it the ConfigStore, each time it composes or lists a group's
    options: with this package's schemas that is ~45 ms a copy, so ``--help`` (one copy per group option) took 7 s
    and every TAB of shell completion seconds. The store is only read through ``ConfigStore.load``, which already
    hands out a deep copy of the one node it returns, so sharing it is safe.
    """
    if "__deepcopy__" not in ConfigStore.__dict__:
        ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]


def register_schemas() -> None:
    """Store every schema as ``schema/<group>/<ClassName>`` and the root as ``root_schema``."""
    _share_config_store()
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=Config)
    for group, schemas in GROUP_SCHEMAS.items():
        for schema in schemas:
            cs.store(group=f"schema/{group}", name=schema.__name__, node=schema)


#: Override keys (or prefixes ending in ".") left out of sweep job folder names: they set the run up
#: rather than vary it, and would make every folder name long. A key the sweep varies is always named
#: (``-m experiment=paper_2d,paper_vsd_2d`` gives each experiment its folder).
JOB_NAME_EXCLUDE = ("experiment", "debug", "trainer", "logger", "output.", "hydra.", "resume", "compare.", "name",
                    "prompts", "prompts_file", "gpu_lock.", "hparams_search")


def job_dirname(overrides: Any, max_len: int = 200, _root_: Any = None) -> str:
    """Readable job folder name: the job's overrides minus setup keys, sorted, ``k=v`` joined by ``,``.

    Registered as the ``rewardsds_jobname`` resolver and used by ``hydra.sweep.subdir``, so every launcher
    (basic, joblib, submitit) names the folders the same way. Falls back to ``job`` for no overrides.
    ``prompt_index=i`` of a prompt list (read from the job's config ``_root_``) becomes ``prompt=<i>-<slug>``.
    A setup key is named when the sweep varies it (the ``rewardsds`` command puts the swept keys in
    :data:`~rewardsds.overrides.SWEPT_KEYS_ENV`).
    """
    import os

    from rewardsds.overrides import SWEPT_KEYS_ENV

    swept = set(filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(",")))
    items = []
    for o in list(overrides or []):
        key = str(o).split("=", 1)[0].lstrip("+~")
        if key not in swept and any(key == e or (e.endswith(".") and key.startswith(e)) for e in JOB_NAME_EXCLUDE):
            continue
        item = str(o).lstrip("+~").replace("/", "_")
        if key == "prompt_index" and _root_ is not None:
            item = _prompt_item(_root_, item)
        items.append(item)
    name = ",".join(sorted(items)) or "job"
    import zlib

    return name if len(name) <= max_len else name[: max_len - 9] + "-" + format(zlib.crc32(name.encode()), "08x")


def _prompt_item(root: Any, item: str) -> str:
    from rewardsds.prompts import prompt_list

    try:
        chosen = prompt_list(root)
        index = int(item.split("=", 1)[1])
    except (ConfigError, ValueError):
        return item  # the job itself reports the problem
    if chosen is None or not 0 <= index < len(chosen[0]):
        return item
    return f"prompt={chosen[0].label(index)}"


def _prompt_sweep(_root_: Any = None) -> dict:
    from rewardsds.prompts import sweep_params

    return sweep_params(_root_)


def _gpu_count(_root_: Any = None) -> int:
    from rewardsds.devices import launcher_jobs

    return launcher_jobs(_root_)


if not OmegaConf.has_resolver("rewardsds_jobname"):
    OmegaConf.register_new_resolver("rewardsds_jobname", job_dirname)
if not OmegaConf.has_resolver("rewardsds_prompt_sweep"):
    OmegaConf.register_new_resolver("rewardsds_prompt_sweep", _prompt_sweep)
if not OmegaConf.has_resolver("rewardsds_gpu_count"):
    OmegaConf.register_new_resolver("rewardsds_gpu_count", _gpu_count)


def _output_subdir() -> Any:
    from rewardsds.cli import output_subdir

    return output_subdir()


if not OmegaConf.has_resolver("rewardsds_output_subdir"):
    OmegaConf.register_new_resolver("rewardsds_output_subdir", _output_subdir)


def if_set(value: Any, then: Any, otherwise: Any) -> Any:
    """``then`` if ``value`` is set (not None / empty), else ``otherwise``; the ``rewardsds_if_set`` resolver.

    experiment=edit_dds uses it for ``representation.init`` so that a missing ``loss.image`` is reported by the
    DDS schema under its own key rather than as a missing ``representation.init_image``.
    """
    return then if value not in (None, "") else otherwise


def name_suffix(name: Any = None) -> str:
    """``_<name>`` for a set ``name`` (run and sweep folders: ``<time>_<name>``), else nothing; the
    ``rewardsds_name_suffix`` resolver."""
    return f"_{name}" if name not in (None, "", "None") else ""


if not OmegaConf.has_resolver("rewardsds_name_suffix"):
    OmegaConf.register_new_resolver("rewardsds_name_suffix", name_suffix)
if not OmegaConf.has_resolver("rewardsds_if_set"):
    OmegaConf.register_new_resolver("rewardsds_if_set", if_set)


def check_known_keys(cfg: DictConfig) -> None:
    """Raise ConfigError for a key that no schema declares, naming the closest real key.

    Hydra's struct mode rejects unknown keys at composition, but ``+key=value`` adds them past it, and
    ``OmegaConf.to_object`` keeps them as plain attributes that nothing reads: ``+n_noise=8`` would be ignored
    without a word. Every node typed by a schema (the root, each group option, nested settings) is compared
    with its dataclass's fields; free-form mappings (``compare.runs``, ``reward.weights``) are not.
    """
    _check_keys(cfg, "", cfg)


def _check_keys(node: Any, path: str, root: DictConfig) -> None:
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing() or node._is_interpolation():
            return
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            fields = [f.name for f in dataclasses.fields(schema)]
            for key in node.keys():
                if key in fields or (path == "" and key == "hydra"):
                    continue
                where = f"{path[:-1]} ({schema.__name__})" if path else ("the root config" if schema is Config else schema.__name__)
                close = difflib.get_close_matches(str(key), fields, n=1)
                value = _raw_value(node, key)
                fix = (f"did you mean {path}{close[0]}?" if close else key_elsewhere_fix(f"{path}{key}", value, root)
                       or f"remove it; the settings of {where} are: " + ", ".join(f for f in fields if not f.startswith("_")))
                raise ConfigError(f"{path}{key}", value, f"is not a setting of {where}, so nothing would read it",
                                  fix + " (a leading + adds a new key; without it Hydra checks the name)")
        for key in node.keys():
            _check_keys(node._get_node(key), f"{path}{key}.", root)
    elif isinstance(node, ListConfig):
        if node._is_none() or node._is_missing() or node._is_interpolation():
            return
        for i in range(len(node)):
            _check_keys(node._get_node(i), f"{path[:-1]}[{i}].", root)


def _raw_value(node: DictConfig, key: Any) -> Any:
    child = node._get_node(key)
    if isinstance(child, (DictConfig, ListConfig)):
        return OmegaConf.to_container(child, resolve=False)
    return child._value() if child is not None else None


def check_finite_numbers(cfg: DictConfig) -> None:
    """Raise ConfigError for a number that is inf or nan anywhere in the config.

    No setting of this framework means anything at inf or nan (a learning rate, a guidance scale, a weight, a
    threshold, a fraction), yet range checks such as ``lr > 0`` accept inf. Checked on the composed tree before
    the schemas' own checks run, so that those only ever see finite numbers.
    """
    tree = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    for key, value in _leaves(tree, ""):
        if isinstance(value, float) and not math.isfinite(value):
            default = _schema_default(cfg, key)
            fix = f"give a finite number (default: {default})" if default is not None else "give a finite number"
            raise ConfigError(key, value, "is not a finite number", fix)


def _leaves(tree: Any, path: str):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, tree


def _schema_default(cfg: DictConfig, key: str) -> Any:
    """The schema default of the scalar setting ``key`` (a dotted path) where one exists, else None."""
    if "[" in key:
        return None
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    schema = OmegaConf.get_type(parent) if isinstance(parent, DictConfig) else None
    if not dataclasses.is_dataclass(schema) or schema in (Schedule, Range):
        return None  # a schedule's or range's own defaults are not the setting's default
    f = {f.name: f for f in dataclasses.fields(schema)}.get(name)
    default = None if f is None else f.default
    return default if isinstance(default, (int, float)) and not isinstance(default, bool) else None


def without_hydra(cfg: DictConfig) -> DictConfig:
    """``cfg`` without the ``hydra`` node a composed config may carry (``compose(..., return_hydra_config=True)``)."""
    if "hydra" not in cfg:
        return cfg
    out = cfg.copy()
    with open_dict(out):
        out.pop("hydra")
    return out


def check_no_missing_values(cfg: DictConfig) -> None:
    """Refuse a config with a required value left unset (``???``), naming the key (``prompt`` above all)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if "prompt" in missing:
        raise ConfigError("prompt", "???", "is required", 'pass a prompt, e.g. prompt="a photo of a red fox" (or prompts=<set>)')
    if missing:
        raise ConfigError(missing[0], "???", "has no value", f"set it, e.g. {missing[0]}=<value>, or choose an option that sets it")


def input_files(typed: "Config") -> list[tuple[str, str]]:
    """(key, path) of the files the run will read as inputs: the image DDS edits (``loss.image``), the image a latent
    starts from (``representation.init_image`` with ``init=image``) and the .ply Gaussians start from
    (``representation.init_path`` with ``init=ply`` or ``points``). A path a setting leaves unused is not listed."""
    found = []
    image = getattr(typed.loss, "image", None)
    if image:
        found.append(("loss.image", str(image)))
    rep = typed.representation
    init = getattr(rep, "init", None)
    if init is LatentInit.image and getattr(rep, "init_image", None):
        found.append(("representation.init_image", str(rep.init_image)))
    if init in (GaussianInit.ply, GaussianInit.points) and getattr(rep, "init_path", None):
        found.append(("representation.init_path", str(rep.init_path)))
    return found


def check_input_files(typed: "Config") -> None:
    """Every input file of a new run (:func:`input_files`) exists, before its folder is made or a model loads: a missing
    photo would otherwise stop the run after the prior's download. A resume reads its inputs as its run recorded them."""
    import os
    from pathlib import Path

    for key, value in input_files(typed):
        p = Path(value).expanduser()
        if not p.is_file():
            what = "is a folder, not a file" if p.is_dir() else "is not a file on this machine"
            raise ConfigError(key, value, what, f"give the path of an existing file (a relative path is read from the folder the "
                                                f"command runs in, {os.getcwd()})")


def validate(cfg: DictConfig) -> Config:
    """Build the typed config; raise ConfigError on the first problem.

    In order: keys that no schema declares (added with ``+``) and numbers that are inf or nan; the prompt of a prompt
    list (``prompts=<set>`` or ``prompts_file=<path>`` with ``prompt_index`` sets ``cfg.prompt``); every schema's own
    checks (``__post_init__``, through ``OmegaConf.to_object``); then :data:`CROSS_CHECKS`, whose messages name
    options as Hydra recorded the choices (:func:`hydra_choices`).
    """
    from rewardsds.prompts import select_prompt

    choices = hydra_choices(cfg)
    plain = without_hydra(cfg)
    check_known_keys(plain)
    check_finite_numbers(plain)
    select_prompt(cfg)  # in place: the caller's config holds the chosen prompt too
    if plain is not cfg and not OmegaConf.is_missing(cfg, "prompt"):
        plain.prompt = cfg.prompt
    check_no_missing_values(plain)
    typed: Config = OmegaConf.to_object(plain)  # type: ignore[assignment]
    for fn in CROSS_CHECKS:
        fn(typed, choices)
    return typed


register_schemas()
