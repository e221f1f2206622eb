"""The paper's metrics as evaluators of finished runs: CLIP score, ImageReward, aesthetic (and any reward option).

An evaluator is a reward option of ``conf/reward/`` (so its model loads through the same offline-aware code as
the training rewards: Hub id or local folder, ``local_files_only``, one error wording) plus how a paper reports
it:

========================  ===============  =====================================================================
evaluator                 reward option    value of one image / of a run
========================  ===============  =====================================================================
``clip_score``            ``clip``         ``100 * cos(image, prompt)``; a run: ``max(mean over its images, 0)``,
                                           torchmetrics' ``CLIPScore`` over those images (ViT-L/14 by default)
``image_reward``          ``image_reward`` the ImageReward score; a run: the mean
``aesthetic``             ``aesthetic``    the LAION aesthetic score (1-10); a run: the mean
any other reward option   itself           the reward; a run: the mean (``clip`` is the raw cosine)
========================  ===============  =====================================================================

A 2D run is scored on its ``final/*.png``; a 3D run on its ``eval/view_*.png`` (``output.eval_views`` fixed
cameras around the object, written at the end of training), averaged over the views. Results go to the run's
``eval_metrics.json`` (per-run values, per-image values, the model sources) and, as ``eval/<evaluator>``, into
its ``metrics.json`` (rewritten atomically, every other key kept).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from rewardsds.errors import ConfigError, ModelLoadError, RewardSDSError
from rewardsds.utils.io import write_json

#: reward config fields that name where a model's files come from (for the offline message)
SOURCE_FIELDS = ("pretrained", "processor", "checkpoint", "med_config", "tokenizer", "head")


@dataclass(frozen=True)
class Evaluator:
    """How a paper reports a reward as a metric.

    Attributes:
        name: the metric name (``eval/<name>`` in tables and metrics.json; ``--metrics <name>``).
        reward: the ``conf/reward/<reward>.yaml`` option that builds the model.
        scale: an image's value is ``scale * reward score``.
        clamp_at_zero: a run's value is ``max(mean, 0)`` (CLIP score's definition) instead of the mean.
    """

    name: str
    reward: str
    scale: float = 1.0
    clamp_at_zero: bool = False

    def image_values(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-image values [b] from reward scores [b]."""
        return scores.double() * self.scale

    def run_value(self, values: Sequence[float]) -> float:
        """The value of a run from the values of its images (views of a 3D run)."""
        mean = sum(values) / len(values)
        return max(mean, 0.0) if self.clamp_at_zero else mean


#: the paper's evaluation metrics (RewardSDS Tables 1-7: CLIP score x100, aesthetic, ImageReward)
EVALUATORS = {
    "clip_score": Evaluator("clip_score", "clip", scale=100.0, clamp_at_zero=True),
    "image_reward": Evaluator("image_reward", "image_reward"),
    "aesthetic": Evaluator("aesthetic", "aesthetic"),
}
#: ``--metrics`` default
DEFAULT_METRICS = ("clip_score", "aesthetic", "image_reward")


class EvaluatorLoadError(RewardSDSError):
    """An evaluator's model could not be loaded; the message says how to point it at local files or skip it."""


def evaluator(name: str, conf_dir: Path) -> Evaluator:
    """The evaluator called ``name``: one of :data:`EVALUATORS` or a reward option of ``conf_dir/reward``."""
    if name in EVALUATORS:
        return EVALUATORS[name]
    if (conf_dir / "reward" / f"{name}.yaml").is_file():
        return Evaluator(name, name)
    options = sorted({*EVALUATORS, *(p.stem for p in (conf_dir / "reward").glob("*.yaml"))})
    raise ConfigError("--metrics", name, "is not an evaluator or a reward option",
                      f"use one of: {', '.join(options)} (or none)")


def metric_config(ev: Evaluator, conf_dir: Path, *, dtype: Optional[str], sources: dict, overrides: list[str]):
    """Compose ``conf/reward/<option>.yaml`` for an evaluator, with evaluation defaults, YAML sources and overrides.

    Evaluation defaults are ``dtype`` (fp32 unless changed) and ``pil_exact=true`` (the reference evaluation
    scripts' PIL preprocessing); ``sources`` (``{field: value}``) and then ``overrides`` (``field=value``) win.

    Returns:
        the ``reward`` config node (typed by its schema), validated; :func:`load` builds the reward from it.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import rewardsds.config as config  # registers the schemas

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name=f"reward/{ev.reward}").reward
    defaults: dict[str, Any] = {}
    if "dtype" in cfg and dtype:
        defaults["dtype"] = dtype
    if "pil_exact" in cfg:
        defaults["pil_exact"] = True
    cfg = OmegaConf.merge(cfg, defaults)
    for what, layer in ([("--sources", sources)] if sources else []) + [("--override", OmegaConf.from_dotlist([o])) for o in overrides]:
        cfg = _merged(cfg, layer, ev.name, what)
    try:
        # the checks validate() runs on a group's node: unknown keys, non-finite numbers, the schema's __post_init__
        config.check_known_keys(cfg)
        config.check_finite_numbers(cfg)
        OmegaConf.to_object(cfg)
    except ConfigError as err:
        raise ConfigError(_cli_key(ev.name, err.key), err.value, err.problem,
                          f"{err.fix} (set it with --override {_cli_key(ev.name, err.key)}=<value>)") from None
    return cfg


def _merged(cfg, layer, metric: str, what: str):
    """``cfg`` with ``layer`` merged in; an unknown field or a value of the wrong type is a ConfigError naming the
    ``--override`` key (OmegaConf's own errors were tracebacks)."""
    import difflib

    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    try:
        return OmegaConf.merge(cfg, layer)
    except (ConfigKeyError, ValidationError) as err:
        field = str(getattr(err, "full_key", "") or "").split(".")[-1] or "?"
        value = OmegaConf.select(OmegaConf.create(layer) if isinstance(layer, dict) else layer, field, default=None)
        key = f"{metric}.{field}"
        if isinstance(err, ConfigKeyError):
            close = difflib.get_close_matches(field, [str(k) for k in cfg.keys()], n=1)
            fix = (f"did you mean {metric}.{close[0]}?" if close else f"use one of its fields: {', '.join(str(k) for k in cfg.keys())}")
            raise ConfigError(key, value, f"is not a field of the {metric} metric's reward config (from {what})", fix) from None
        raise ConfigError(key, value, str(err).splitlines()[0], f"give a value of the field's type (from {what})") from None


def _cli_key(metric: str, key: str) -> str:
    """``reward.pretrained`` (a training key) -> ``clip_score.pretrained`` (the ``--override`` key of a metric)."""
    return f"{metric}.{key[len('reward.'):]}" if key.startswith("reward.") else key


_NOT_LOADED = re.compile(r"could not load the (?P<what>.+?) from (?P<source>'[^']*'|\"[^\"]*\") \((?P<cause>.*?)\)\. "
                         r"(?:This machine may have no Hub access: .*?|Fix:) set (?P<key>\S+)=/path", re.S)
_UNUSABLE = re.compile(r"the (?P<what>.+?) file (?P<source>'[^']*'|\"[^\"]*\") cannot be used \((?P<cause>.*?)\)\. "
                       r"Fix: point (?P<key>\S+) at", re.S)


def load_error_message(ev: Evaluator, cfg: Any, err: ModelLoadError) -> str:
    """The one message for an evaluator whose model cannot be loaded.

    Names the metric, the model id or path, the ``--override`` key that takes a local path, ``HF_HUB_OFFLINE=1``
    with a filled cache, and ``--metrics none``.
    """
    text = str(err)
    found = _NOT_LOADED.search(text) or _UNUSABLE.search(text)
    sources = {f: cfg.get(f) for f in SOURCE_FIELDS if f in cfg}
    if found:
        what, source, key = found["what"], found["source"].strip("'\""), _cli_key(ev.name, found["key"])
        cause = found["cause"].strip().splitlines()[0][:300]
    else:
        field = next((f for f, v in sources.items() if v), next(iter(sources), "pretrained"))
        what, source, key, cause = f"{ev.reward} model", str(sources.get(field)), f"{ev.name}.{field}", text[:300]
    other = [f"{ev.name}.{f}" for f, v in sources.items() if f"{ev.name}.{f}" != key]
    head = f"rewardsds-eval: metric {ev.name!r} needs the {what} from {source!r}, which cannot be loaded ({cause})."
    if "a local path, not a Hub id" in cause:  # a path that is not there: no Hub advice, the path is the fix
        return "\n".join([head, f"Fix: point --override {key} at an existing local copy (or a Hub id), or leave model metrics "
                                 "out: --metrics none (tables of the metrics the runs wrote)"])
    lines = [
        head,
        "This machine may have no Hub access. Either:",
        f"  - point the metric at local files: --override {key}=/path/to/local/copy"
        + (f" (also settable: {', '.join(other)})" if other else ""),
        "  - or fill the Hugging Face cache on a machine with access, copy it here and set HF_HUB_OFFLINE=1",
        "  - or leave model metrics out: --metrics none (tables of the metrics the runs wrote)",
    ]
    return "\n".join(lines)


def load(ev: Evaluator, cfg: Any, device: str):
    """Build the evaluator's reward model on ``device`` from its config node (:func:`metric_config`).

    Raises:
        EvaluatorLoadError: the model files cannot be found or used (the message says what to do).
    """
    from omegaconf import OmegaConf

    from rewardsds.schema import build

    try:
        reward = build(OmegaConf.to_object(cfg))
    except ModelLoadError as err:
        raise EvaluatorLoadError(load_error_message(ev, cfg, err)) from None
    except ConfigError as err:  # a check at load (it needs the model): name the metric's --override key
        raise ConfigError(_cli_key(ev.name, err.key), err.value, err.problem, err.fix) from None
    return reward.to(device)


def load_png(path: Path) -> torch.Tensor:
    """[1, 3, H, W] float in [0, 1] (uint8 / 255, so PIL-exact metrics see the file's exact values)."""
    from PIL import Image

    from rewardsds.rewards.preprocess import from_pil

    with Image.open(path) as im:
        return from_pil([im.convert("RGB")])


def run_images(run: Path) -> tuple[str, list[Path]]:
    """(``"eval"`` or ``"final"``, PNG paths) of a run: its evaluation views if any (3D), else its final images."""
    for sub in ("eval", "final"):
        files = sorted((run / sub).glob("*.png"))
        if files:
            return sub, files
    return "", []


def score_images(reward, prompt: str, paths: Sequence[Path], batch_size: int) -> list[float]:
    """Reward scores of the images at ``paths`` (batched by image size), in the order of ``paths``."""
    images = [load_png(p) for p in paths]
    scores: list[Optional[float]] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
    for idx in by_size.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            out = reward(torch.cat([images[i] for i in chunk]), prompt).tolist()
            for i, s in zip(chunk, out):
                scores[i] = float(s)
    return scores  # type: ignore[return-value]


def evaluate(ev: Evaluator, reward, prompt: str, paths: Sequence[Path], batch_size: int) -> tuple[float, list[float]]:
    """(run value, per-image values) of one run's images."""
    values = ev.image_values(torch.tensor(score_images(reward, prompt, paths, batch_size))).tolist()
    return ev.run_value(values), values


def record(run: Path, ev: Evaluator, value: float, per_image: dict[str, float], images: str, source: dict) -> None:
    """Merge one evaluator's result into ``eval_metrics.json`` and ``metrics.json`` (``eval/<name>``) of ``run``.

    Both files are rewritten atomically; everything else in them is kept.
    """
    out_path = run / "eval_metrics.json"
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    write_json(out_path, {
        **previous,
        "metrics": {**previous.get("metrics", {}), ev.name: value},
        "per_image": {**previous.get("per_image", {}), ev.name: per_image},
        "images": images,
        "n_images": len(per_image),
        "sources": {**previous.get("sources", {}), ev.name: source},
    })
    metrics_path = run / "metrics.json"
    info = json.loads(metrics_path.read_text())
    info[f"eval/{ev.name}"] = value
    write_json(metrics_path, info)


def evaluate_run(run_dir: Path, metrics: Sequence[str] = DEFAULT_METRICS, *, conf_dir: Optional[Path] = None,
                 sources: Optional[dict] = None, overrides: Optional[dict[str, list[str]]] = None,
                 device: str = "cpu", batch_size: int = 8, dtype: str = "fp32") -> dict[str, float]:
    """Score one finished run with ``metrics`` and record the results (what ``rewardsds-eval`` does per run).

    Args:
        run_dir: the run folder (its ``metrics.json`` gives the prompt).
        metrics: evaluator names (:data:`EVALUATORS` or reward options).
        conf_dir: the project's ``conf/`` (default: next to the package).
        sources: ``{metric: {field: value}}`` model sources.
        overrides: ``{metric: ["field=value", ...]}``.
        device, batch_size, dtype: where and how the models run.

    Returns:
        ``{metric: run value}``.
    """
    from rewardsds.eval.cli import default_conf_dir

    conf_dir = conf_dir or default_conf_dir()
    run_dir = Path(run_dir)
    prompt = json.loads((run_dir / "metrics.json").read_text())["prompt"]
    images, paths = run_images(run_dir)
    if not paths:
        raise ConfigError("run_dir", str(run_dir), "has no eval/*.png or final/*.png", "evaluate a finished run")
    out = {}
    for name in metrics:
        ev = evaluator(name, conf_dir)
        cfg = metric_config(ev, conf_dir, dtype=dtype, sources=(sources or {}).get(name) or {},
                            overrides=(overrides or {}).get(name) or [])
        reward = load(ev, cfg, device)
        value, values = evaluate(ev, reward, prompt, paths, batch_size)
        from omegaconf import OmegaConf

        record(run_dir, ev, value, {str(p.relative_to(run_dir)): v for p, v in zip(paths, values)}, images,
               OmegaConf.to_container(cfg))
        out[name] = value
        del reward
    return out
