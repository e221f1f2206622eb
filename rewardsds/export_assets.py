"""Export a 3D run's assets (meshes, textured meshes, Gaussians) from its checkpoint, without training.

    rewardsds export outputs/runs/<date>/<time>                        # every format of the run's scene
    python -m rewardsds.export_assets <run> --format textured --texture-size 2048
    python -m rewardsds.export_assets <run> --resolution 384 --threshold 10 --out /tmp/assets

The run's saved config (``config_resolved.yaml``, else ``.hydra/config.yaml``) rebuilds the representation and
``checkpoints/last.ckpt`` fills its parameters; nothing else of the run is built (no prior, no reward model,
no cameras), no view is rendered and no training step runs, so it is quick on a CPU. Formats:

- NeRF ``mesh``: ``mesh.ply``, ``mesh.obj`` (marching cubes of the density at the threshold, albedo vertex colours);
- NeRF ``textured``: ``mesh_textured.obj`` + ``.mtl`` + ``.png`` and ``mesh.glb`` (xatlas UVs, baked albedo texture);
- Gaussians ``gaussians``: ``gaussians.ply`` in the 3DGS layout with the SH degree active at the checkpoint's step.

Files go to ``<run>/export/`` (or ``--out``) all at once: they are written into a staging folder next to it
and moved into place only when every file was written, so a failure leaves the folder as it was. The end of
training writes the same files through :func:`write_exports` (``output.export_formats``).

Bad input (not a run folder, no checkpoint, a 2D run, a format the scene does not have, a threshold that the
density never crosses) prints one message naming the path or option and the fix, and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from rewardsds.errors import ConfigError, RewardSDSError
from rewardsds.representations.base import ExportOptions, Representation
from rewardsds.representations.config import ExportFormat

log = logging.getLogger(__name__)

#: The run's config files, in the order they are tried.
CONFIG_FILES = ("config_resolved.yaml", ".hydra/config.yaml")
CHECKPOINT = Path("checkpoints") / "last.ckpt"
ALL = ExportFormat.all.value


# ----------------------------------------------------------------------------------------- writing
def resolve_formats(rep: Representation, formats: Optional[Sequence[str]], key: str) -> tuple[str, ...]:
    """The formats to write: ``all`` (or None) -> every format of ``rep``; otherwise checked against them.

    Args:
        rep: the representation.
        formats: requested formats (``output.export_formats``) or names (``--format``); ``all`` allowed.
        key: the option that named them, for the error message.
    """
    available = tuple(rep.export_formats)
    names = [f.value if isinstance(f, ExportFormat) else str(f) for f in (formats if formats is not None else [ALL])]
    if ALL in names:
        return available
    unknown = [f for f in names if f not in available]
    if unknown:
        kind = type(rep).__name__
        raise ConfigError(key, ",".join(names), f"names format(s) {', '.join(unknown)} that a {kind} scene does not have",
                          f"use {ALL} or any of: {', '.join(available)}")
    return tuple(dict.fromkeys(names))


def write_exports(rep: Representation, out_dir: Path, options: ExportOptions) -> list[Path]:
    """Write ``rep``'s assets into ``out_dir``, all or nothing; return the final paths.

    The representation writes into a fresh staging folder beside ``out_dir``; only when it succeeded are the
    files moved over (each rename atomic), so an error leaves ``out_dir`` exactly as it was (not even created).
    Files of other formats already in ``out_dir`` are kept.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        written = rep.export(staging, options)
        if written:
            out_dir.mkdir(exist_ok=True)
        final = []
        for p in written:
            target = out_dir / Path(p).relative_to(staging)
            os.replace(p, target)
            final.append(target)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------- loading a run
def find_config(run_dir: Path) -> Path:
    """The run's saved config file; ConfigError when ``run_dir`` is not a run folder."""
    if not run_dir.is_dir():
        raise ConfigError("run", str(run_dir), "is not a folder", "give the folder of a run, e.g. outputs/runs/<date>/<time>")
    for name in CONFIG_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise ConfigError("run", str(run_dir), f"is not a run folder (it has neither {' nor '.join(CONFIG_FILES)})",
                      "give the folder that a training run wrote (outputs/runs/<date>/<time>, or a sweep job's folder)")


def representation_node(run_dir: Path) -> Any:
    """The run's ``representation`` config node (interpolations resolved against the run's whole config)."""
    from omegaconf import OmegaConf

    path = find_config(run_dir)
    cfg = OmegaConf.load(path)
    node = cfg.get("representation") if hasattr(cfg, "get") else None
    if node is None or "_target_" not in node:
        raise ConfigError("run", str(run_dir), f"has a config ({path.name}) without a representation",
                          "give the folder of a rewardsds training run")
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def settings_schema(cls: type) -> type:
    """The schema a component class is built from: the annotation of its constructor's ``cfg`` argument."""
    import dataclasses
    import typing

    schema = typing.get_type_hints(cls.__init__).get("cfg")
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"{cls.__name__}.__init__ takes no cfg: <schema dataclass> argument")
    return schema


def build_representation(node: dict, run_dir: Path) -> Representation:
    """A shell of the run's representation (``load_shell_overrides`` applied), parameters not yet loaded.

    The saved settings go through the representation's schema, as at the start of a run: each is checked, and a
    setting added after the run was written takes its default.
    """
    from hydra.utils import get_class
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    settings = dict(node)
    target = settings.get("_target_")
    try:
        cls = get_class(target)
    except (ImportError, ValueError) as err:
        raise ConfigError("run", str(run_dir), f"has representation._target_ {target!r}, which cannot be imported ({err})",
                          "export with the rewardsds version the run was trained with") from None
    if not (isinstance(cls, type) and issubclass(cls, Representation)):
        raise ConfigError("run", str(run_dir), f"has representation._target_ {target!r}, not a representation class",
                          "give the folder of a rewardsds training run")
    if not cls.needs_cameras or not cls.export_formats:
        raise ConfigError("run", str(run_dir), f"is a 2D run ({cls.__name__}): it has no 3D scene to export",
                          "its images are in final/; export applies to runs with representation=nerf or representation=gaussians")
    schema = settings_schema(cls)
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), {**settings, **cls.load_shell_overrides}))
    except OmegaConfBaseException as err:
        raise ConfigError("run", str(run_dir), f"has representation settings that {schema.__name__} does not accept "
                          f"({str(err).splitlines()[0]})", "export with the rewardsds version the run was trained with") from None
    return cls(cfg)


def load_checkpoint_into(rep: Representation, ckpt_path: Path, run_dir: Path) -> int:
    """Copy the representation's tensors of a Lightning checkpoint into ``rep``; return the checkpoint's step.

    Only ``representation.*`` entries are read (memory-mapped): the prior, reward and optimiser state stay on disk.
    The file is unpickled with ``weights_only=True`` (tensors and plain containers only), so a run folder from
    elsewhere cannot run code.
    """
    import pickle

    if not ckpt_path.is_file():
        raise ConfigError("run", str(run_dir), f"has no checkpoint at {ckpt_path}",
                          "export reads checkpoints/last.ckpt, written every output.checkpoint_every steps and at the end "
                          f"of training; finish or continue the run to write one: rewardsds resume={run_dir}")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise ConfigError("run", str(run_dir), f"has an unreadable checkpoint {ckpt_path} ({type(err).__name__}: {err})",
                          "continue the run from an earlier checkpoint, or train it again") from None
    prefix = "representation."
    state = {k[len(prefix):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    if not state:
        raise ConfigError("run", str(run_dir), f"has a checkpoint without representation parameters ({ckpt_path})",
                          "give a run folder written by rewardsds training")
    try:
        rep.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError("run", str(run_dir), f"has a checkpoint that does not fit the representation of its config ({err})",
                          "export with the config the run was trained with (config_resolved.yaml in the run folder)") from None
    info = ckpt.get("rewardsds", {})
    return int(info.get("iteration", ckpt.get("global_step", 0)))


# ----------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rewardsds export",
        description="Write the mesh / textured mesh / Gaussians of a 3D run from its checkpoint (no training, no rendering).",
    )
    p.add_argument("run", type=Path, help="the run folder (holding config_resolved.yaml and checkpoints/last.ckpt)")
    p.add_argument("--format", action="append", default=None, metavar="NAME[,NAME]",
                   help="what to write (repeatable or comma-separated): all (default); NeRF: mesh, textured; Gaussians: gaussians")
    p.add_argument("--resolution", type=int, default=None, help="marching-cubes grid points per axis (default: representation.mesh_resolution)")
    p.add_argument("--threshold", type=float, default=None, help="density level of the surface (default: representation.mesh_threshold)")
    p.add_argument("--texture-size", type=int, default=None, help="texels per side of the baked texture (default: representation.texture_size)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/export)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:<i>")
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("--device", name, "is not a device", "use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", name, "asks for CUDA but no CUDA device is available", "use --device cpu")
    return device


def export_run(
    run_dir: Path,
    formats: Optional[Sequence[str]] = None,
    out_dir: Optional[Path] = None,
    resolution: Optional[int] = None,
    threshold: Optional[float] = None,
    texture_size: Optional[int] = None,
    device: str = "auto",
) -> list[Path]:
    """Rebuild a run's representation from its config and checkpoint and write its assets (see the module docstring).

    Returns:
        the written paths.
    """
    run_dir = Path(run_dir)
    node = representation_node(run_dir)
    rep = build_representation(node, run_dir)
    dev = _device(device)
    step = load_checkpoint_into(rep, run_dir / CHECKPOINT, run_dir)
    rep.to(dev).eval()
    options = ExportOptions(
        formats=resolve_formats(rep, formats, "--format"), step=step, mesh_resolution=resolution, mesh_threshold=threshold,
        texture_size=texture_size, resolution_key="--resolution", threshold_key="--threshold", texture_key="--texture-size",
    )
    return write_exports(rep, out_dir if out_dir is not None else run_dir / "export", options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``rewardsds export``: returns 0 on success, 2 on bad input (one message on stderr)."""
    args = build_parser().parse_args(argv)
    formats = None
    try:
        if args.format is not None:
            formats = [f.strip() for item in args.format for f in item.split(",") if f.strip()]
            if not formats:
                raise ConfigError("--format", ",".join(args.format), "names no format", "use e.g. --format all (the default)")
        if args.resolution is not None and args.resolution < 8:
            raise ConfigError("--resolution", args.resolution, "must be >= 8 grid points per axis", "use e.g. --resolution 256")
        if args.texture_size is not None and not 16 <= args.texture_size <= 8192:
            raise ConfigError("--texture-size", args.texture_size, "must be in [16, 8192]", "use e.g. --texture-size 1024")
        paths = export_run(args.run, formats, args.out, args.resolution, args.threshold, args.texture_size, args.device)
    except RewardSDSError as err:
        print(f"rewardsds export: error: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
