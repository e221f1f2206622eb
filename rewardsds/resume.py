"""Honest resume: continue a run with the run's own config, refuse changes that make it another experiment.

``rewardsds resume=<run folder> [overrides]`` rebuilds the run's config from the run itself (its ``.hydra/`` snapshot,
else ``config_resolved.yaml``) and applies only what the new overrides change. Changes of operational keys (more
``steps``, outputs, logging, compilation, export settings) are taken; a change of anything that defines the
experiment (prompt, seed, prior, reward, strategy, N, loss, representation, lookahead, ...) is refused with a message
naming each key, unless ``resume_allow_changes=true``, which records them in metrics.json.

A checkpoint is checked before anything in the run folder changes: empty, truncated, corrupt or foreign files, and a
``steps`` below the checkpoint's step, are errors that name the file and the fix.
"""

from __future__ import annotations

import fnmatch
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from rewardsds.errors import CheckpointError, ConfigError
from rewardsds.utils.io import read_json

#: Keys a resume may change without changing the experiment (fnmatch patterns on dotted keys).
OPERATIONAL_KEYS = (
    "steps", "resume", "resume_allow_changes", "name", "chunk_size", "max_nonfinite_steps",
    "output.*", "logger.*", "trainer.*", "gpu_lock.*", "compare.*", "hydra.*",
    "prior.compile", "prior.compile_mode", "prior.attention", "prior.local_files_only", "prior.vae_slicing",
    "reward.compile", "reward.local_files_only", "lookahead.overlap",
    "representation.mesh_*", "representation.eval_*", "cameras.eval_*",
)


#: Settings that name a file the run reads at its start. A relative path is read from the folder the command was
#: started in, so a resume (from any folder: another shell, a Slurm requeue, a copied run folder) reads it from the
#: folder the run was started in, which Hydra records in the run's ``.hydra/hydra.yaml``.
INPUT_PATH_KEYS = ("prompts_file", "representation.init_image", "representation.init_path", "loss.image")
#: The reward's own model fields; a combined reward (``reward=combo``) has them in each component too
#: (``reward.components.<name>.checkpoint``, at any depth of nesting).
REWARD_SOURCE_FIELDS = ("checkpoint", "med_config", "tokenizer", "pretrained", "processor", "head")
#: Settings that name a model by Hub id or by local path. A relative value is a local path only where it names an
#: existing file or folder under the folder the run was started in (``from_pretrained``'s own rule: a folder of that
#: name wins over the Hub id), and is then treated as :data:`INPUT_PATH_KEYS` are; otherwise it stays as written.
MODEL_SOURCE_KEYS = ("prior.pretrained", "prior.original_config", *(f"reward.{f}" for f in REWARD_SOURCE_FIELDS))


def is_model_source(key: str) -> bool:
    """Whether ``key`` names a model by Hub id or local path (:data:`MODEL_SOURCE_KEYS`, or a model field of a combined
    reward's component: ``reward.components.image_reward.checkpoint``)."""
    if key in MODEL_SOURCE_KEYS:
        return True
    parts = key.split(".")
    return (len(parts) >= 4 and parts[0] == "reward" and parts[-1] in REWARD_SOURCE_FIELDS
            and all(parts[i] == "components" for i in range(1, len(parts) - 1, 2)))


def is_path_key(key: str) -> bool:
    """Whether a relative value of ``key`` may name a file under the folder the run was started in."""
    return key in INPUT_PATH_KEYS or is_model_source(key)


def _local_relative(key: str, value: Any, base: Path) -> bool:
    """Whether ``value`` of ``key`` is a relative path to make absolute from ``base`` (see the two key lists)."""
    if not _is_relative_path(value):
        return False
    return key in INPUT_PATH_KEYS or (is_model_source(key) and (base / str(value)).expanduser().exists())


def path_keys(cfg: DictConfig) -> list[str]:
    """The keys of ``cfg`` that may name a file: :data:`INPUT_PATH_KEYS`, :data:`MODEL_SOURCE_KEYS` and the model
    fields of a combined reward's components."""
    keys = list(INPUT_PATH_KEYS + MODEL_SOURCE_KEYS)
    reward = OmegaConf.select(cfg, "reward", default=None)
    if isinstance(reward, DictConfig):
        def walk(node: DictConfig, prefix: str) -> None:
            comps = node.get("components") if "components" in node else None
            if isinstance(comps, DictConfig):
                for name in comps:
                    sub = comps[name]
                    if isinstance(sub, DictConfig):
                        keys.extend(f"{prefix}.components.{name}.{f}" for f in REWARD_SOURCE_FIELDS if f in sub)
                        walk(sub, f"{prefix}.components.{name}")
        walk(reward, "reward")
    return keys


def is_operational(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in OPERATIONAL_KEYS)


# ----------------------------------------------------------------------------------------- where
def resolve_resume(resume: Optional[str]) -> tuple[Optional[Path], Optional[Path]]:
    """(checkpoint file, run folder) for ``resume=<run folder or .ckpt>``, both absolute; ConfigError when there is
    nothing to resume there (no such path, a folder that holds runs rather than being one, a run that wrote no
    checkpoint). Reads only: the command-line check calls it before any folder exists, and the run again."""
    if not resume:
        return None, None
    p = Path(os.path.abspath(Path(resume).expanduser()))
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            return ckpt, p
        if not _is_run_folder(p):
            inside = runs_inside(p)
            if inside:
                shown = ", ".join(str(r.relative_to(p)) for r in inside[:6]) + (f" (and {len(inside) - 6} more)" if len(inside) > 6 else "")
                raise ConfigError("resume", resume, f"is not a run folder: it holds the run folders {shown}",
                                  f"resume one of them, e.g. resume={inside[0]}")
            if (p / "train.log").is_file():  # stopped while starting: the log is the first thing a run writes
                raise ConfigError("resume", resume, "is a run that stopped while starting, before its first step: it has a "
                                  "train.log but no metrics.json and no checkpoint, so there is nothing to resume from",
                                  "start the run again (train.log's first lines name its prompt, method and steps)")
            raise ConfigError("resume", resume, f"is not a run folder (no metrics.json, no checkpoint at {ckpt})",
                              "point resume at a run folder that saved checkpoints/last.ckpt, or at a .ckpt file")
        status = _status(p)
        raise ConfigError("resume", resume, f"is a run that wrote no checkpoint (status {status!r}; no {ckpt}): "
                          "there is nothing to resume from",
                          "start the run again (its metrics.json has the command as job_command), or set "
                          "output.checkpoint_every above 0 so a later stop can be continued")
    if p.is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return p, run_dir
    raise ConfigError("resume", resume, "does not exist", "give a run folder (outputs/runs/...) or a checkpoint file")


def check_resume(resume: str, compare_runs: Any = None) -> Path:
    """What refuses ``resume=<run folder or .ckpt>`` before anything is created or changed; returns the run folder.

    A folder being written by a live process (:func:`rewardsds.runlock.check_not_live`), then everything
    :func:`resolve_resume` refuses, then a command line that would make the resume a comparison of variants
    (``compare.runs``, as ``experiment=demo`` sets it): a resume continues one run.
    """
    from rewardsds.runlock import check_not_live

    p = Path(os.path.abspath(Path(resume).expanduser()))
    folder = (p.parent.parent if p.parent.name == "checkpoints" else p.parent) if p.is_file() else p
    if folder.is_dir():
        check_not_live(folder)
    _, run_dir = resolve_resume(resume)
    assert run_dir is not None
    if compare_runs:
        labels = ", ".join(str(k) for k in compare_runs)
        raise ConfigError("resume", resume, f"continues one run, and the command line makes this a comparison of the "
                          f"variants {labels} (compare.runs, set by the experiment)",
                          "drop the experiment=... / compare.* overrides (the run's own settings are kept), and resume "
                          "each variant's folder on its own")
    return run_dir


def _is_run_folder(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() or (folder / "checkpoints").is_dir() or (folder / "config_resolved.yaml").is_file()


def _status(folder: Path) -> Optional[str]:
    try:
        return read_json(folder / "metrics.json").get("status")
    except (OSError, ValueError):
        return None


def runs_inside(folder: Path) -> list[Path]:
    """The run folders one or two levels below ``folder`` (a compare run's variants, a sweep's jobs, a day's runs)."""
    found = {m.parent for pattern in ("*/metrics.json", "*/*/metrics.json", "*/checkpoints/last.ckpt") for m in folder.glob(pattern)}
    found = {f.parent if f.name == "checkpoints" else f for f in found}
    return sorted(found)


# ----------------------------------------------------------------------------------------- the checkpoint
def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a run checkpoint on the CPU and check that it is one of ours; CheckpointError otherwise."""
    import torch

    fix = ("resume from a run folder whose checkpoints/last.ckpt was written by rewardsds, or start the run again "
           "(a checkpoint is written atomically, so a file like this was not made by a run's checkpoint writer)")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise CheckpointError(path, f"cannot be read ({err.strerror or err})", fix) from None
    if size == 0:
        raise CheckpointError(path, "is empty (0 bytes)", fix)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, AttributeError,
            ModuleNotFoundError, io.UnsupportedOperation, OSError) as err:
        raise CheckpointError(path, f"is not a readable checkpoint (truncated or corrupt: {type(err).__name__}: "
                                    f"{str(err).splitlines()[0][:160] if str(err) else ''})", fix) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "rewardsds" not in ckpt:
        raise CheckpointError(path, "is not a rewardsds run checkpoint (no 'rewardsds' and 'state_dict' entries)", fix)
    return ckpt


def checkpoint_step(ckpt: dict[str, Any]) -> int:
    return int(ckpt.get("rewardsds", {}).get("iteration", 0))


def check_steps(ckpt: dict[str, Any], path: Path, steps: int) -> None:
    at = checkpoint_step(ckpt)
    if steps < at:
        raise ConfigError("steps", steps, f"is below the step of the checkpoint {path} ({at}): a run cannot be resumed "
                          "into its past", f"set steps>={at} (steps={at} re-runs only the final outputs)")


# ----------------------------------------------------------------------------------------- the config
def saved_config(run_dir: Path, resolved: bool = True) -> Optional[DictConfig]:
    """The run's config as it was saved: ``config_resolved.yaml`` (or Hydra's ``.hydra/config.yaml`` snapshot), its
    input files (:data:`INPUT_PATH_KEYS`) named by absolute path, taken from the folder the run was started in."""
    names = ("config_resolved.yaml", ".hydra/config.yaml") if resolved else (".hydra/config.yaml", "config_resolved.yaml")
    for name in names:
        p = run_dir / name
        if p.is_file():
            cfg = OmegaConf.load(p)
            start = launch_dir(run_dir)
            for key in path_keys(cfg):
                value = OmegaConf.select(cfg, key, default=None)
                if start is not None and _local_relative(key, value, start) and not _is_interpolation(cfg, key):
                    OmegaConf.update(cfg, key, str(start / value), merge=False)
            return cfg
    return None


def launch_dir(run_dir: Path) -> Optional[Path]:
    """The folder the run was first started from (Hydra's ``hydra.runtime.cwd`` in ``.hydra/hydra.yaml``, which a
    resume leaves as it was), or None where the run did not record it."""
    p = run_dir / ".hydra" / "hydra.yaml"
    if not p.is_file():
        return None
    cwd = OmegaConf.select(OmegaConf.load(p), "hydra.runtime.cwd", default=None)
    return Path(str(cwd)) if cwd else None


def _is_relative_path(value: Any) -> bool:
    return isinstance(value, str) and value != "" and not Path(value).expanduser().is_absolute()


def _is_interpolation(cfg: DictConfig, key: str) -> bool:
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and name in node and OmegaConf.is_interpolation(node, name)


def absolute_input_paths(overrides: Sequence[str], base: Path) -> list[str]:
    """``overrides`` with each relative path of an input file (:data:`INPUT_PATH_KEYS`), and of a local model
    (:data:`MODEL_SOURCE_KEYS`, where it exists under ``base``), made absolute from ``base``:
    ``prompts_file=my_prompts.txt`` -> ``prompts_file=/home/me/project/my_prompts.txt``."""
    out = []
    for o in overrides:
        if is_path_key(_key(o)) and "=" in o:
            head, value = o.split("=", 1)
            plain = _unquoted(value)
            if plain is not None and _local_relative(_key(o), plain, base):
                o = f"{head}={_quoted(str(base / plain))}"
        out.append(o)
    return out


def _unquoted(value: str) -> Optional[str]:
    """The string a Hydra override value stands for (quotes removed), None for a value that is not one string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"k={value}").value()
    except Exception:
        return None
    return parsed if isinstance(parsed, str) else None


def _quoted(path: str) -> str:
    """A path as a Hydra override value: as it is where Hydra's grammar reads it so, else single-quoted."""
    if all(c.isalnum() or c in "/._-+~" for c in path):
        return path
    return "'" + path.replace("'", "\\'") + "'"


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(_flat(v, key))
            else:
                out[key] = v
    else:
        out[prefix] = node
    return out


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        from rewardsds.config import without_hydra

        return OmegaConf.to_container(without_hydra(cfg), resolve=True, throw_on_missing=False, enum_to_str=True)  # type: ignore[return-value]
    return dict(cfg)


def config_changes(saved: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Leaf keys whose values differ, ``{key: (saved, new)}``.

    A key only one side has is not a change (a field a newer version added with its default); a group swapped for
    another shows as its ``_target_``, and a node that is a group on one side and a plain value (null) on the other
    as that node.
    """
    a, b = _flat(_plain(saved)), _flat(_plain(new))
    changes = {key: (a[key], b[key]) for key in sorted(set(a) & set(b)) if a[key] != b[key] and not key.startswith("hydra.")}
    for key in sorted(set(a) ^ set(b)):
        other = b if key in a else a
        parts = key.split(".")
        for i in range(1, len(parts)):
            node = ".".join(parts[:i])
            if node in other:  # a plain value on one side, a group on the other
                changes.setdefault(node, (a.get(node, "<group>"), b.get(node, "<group>")))
                break
    return changes


def experiment_changes(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    return {k: v for k, v in changes.items() if not is_operational(k)}


def check_changes(saved: Any, new: Any, allow: bool, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The experiment-defining changes of a resume; ConfigError unless ``allow``."""
    changed = experiment_changes(config_changes(saved, new))
    if changed and not allow:
        listed = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in list(changed.items())[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        pins = " ".join(f"{k}={_short(a)}" for k, (a, _) in list(changed.items())[:3]) + (" ..." if len(changed) > 3 else "")
        raise ConfigError("resume", str(run_dir), f"would continue the run with another experiment: {listed}{more}",
                          "drop the overrides that change them to continue the run as it was (where none does, a default "
                          f"of this version differs from the run's: give the run's values, {pins}), start a new run for "
                          "the new setting, or add resume_allow_changes=true to continue with them (recorded in metrics.json)")
    return changed


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def reconstruct_config(cfg: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, Optional[dict], list[str]]:
    """The config of a resumed run, for the CLI: the run's own overrides, then the new ones, composed again.

    The run's overrides come from its metrics.json (``overrides``: what every earlier session ran with) or Hydra's
    ``.hydra/overrides.yaml`` snapshot; a new override replaces an old one of the same key. :func:`check_changes`
    then compares the result with the run's saved ``config_resolved.yaml``, so a change, whether from an override or
    from a default that changed since the run started, is seen. A run started from Python (no saved overrides) is
    resumed with the overrides given now, which must then describe the whole run.

    Returns (config, the group choices of the composition, the effective overrides to record).
    """
    from hydra import compose

    _, run_dir = resolve_resume(str(cfg.resume))
    assert run_dir is not None
    new = [o for o in overrides if not _key(o).startswith(("resume", "hydra."))]
    flags = [o for o in overrides if _key(o) == "resume_allow_changes"]
    recorded = (read_json(run_dir / "metrics.json").get("overrides") or None)
    snapshot = run_dir / ".hydra" / "overrides.yaml"
    if recorded is None and snapshot.is_file():
        recorded = [str(o) for o in OmegaConf.load(snapshot)]
    if recorded is None:
        return cfg, None, list(overrides)
    original = [o for o in recorded if not _key(o).startswith(("resume", "hydra."))]
    new_keys = {_key(o) for o in new}
    # input files: the run's own from the folder it was started in, new ones from this folder; recorded absolute, so
    # that every later resume reads the same files wherever it is started
    start = launch_dir(run_dir)
    if start is not None:
        original = absolute_input_paths(original, start)
    new = absolute_input_paths(new, Path.cwd())
    effective = [o for o in original if _key(o) not in new_keys] + new
    try:
        composed = compose(config_name="config", overrides=effective + flags, return_hydra_config=True)
    except Exception as err:
        raise _refused_composition(err, effective + flags) from None
    choices = dict(composed.hydra.runtime.choices)
    OmegaConf.set_struct(composed, False)
    composed.pop("hydra")
    composed.resume = str(cfg.resume)
    OmegaConf.set_struct(composed, True)
    return composed, choices, effective


def _refused_composition(err: Exception, overrides: Sequence[str]) -> Exception:
    """A resume whose overrides Hydra cannot compose (``reward=clip`` on an ``experiment=analytic`` run) as a
    ConfigError naming the key, the value and the fix, which leaves the run as it was; other errors as they are."""
    from rewardsds.cli import CONFIG_PACKAGE
    from rewardsds.overrides import composition_error

    found = composition_error(err, overrides, CONFIG_PACKAGE)
    if found is None or found.problem is None:
        return err
    refused = ConfigError(found.key, found.value, found.problem, found.fix)
    refused.run_untouched = True  # type: ignore[attr-defined]  (nothing of the run's folder was written)
    return refused


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")
