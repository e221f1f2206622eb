"""Final outputs of a run: images, optimisation video, evaluation views, exported assets, final scores."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rewardsds.errors import RewardSDSError
from rewardsds.utils.io import write_image
from rewardsds.viz import Media, grid, to_uint8, upscale

if TYPE_CHECKING:  # pragma: no cover
    from rewardsds.system import DistillationSystem

log = logging.getLogger(__name__)


def assemble_video(run_dir: Path, media: Media, fps: int, step: int) -> Path | None:
    """progress/frames/*.jpg -> video.mp4 (frames survive a crash, so a resumed run's video is whole)."""
    from PIL import Image

    frames = sorted((run_dir / "progress" / "frames").glob("frame_*.jpg"))
    if not frames:
        return None
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in frames]
    return media.video("train/video", arrays, run_dir / "video.mp4", fps, step)


@torch.no_grad()
def export_final_assets(system: "DistillationSystem", run_dir: Path, out: dict[str, Any]) -> list[Path]:
    """Write ``output.export_formats`` of the final scene into ``run_dir/export`` (all or nothing).

    The same code as ``rewardsds export <run>`` (:func:`rewardsds.export_assets.write_exports`), at the run's last
    step. An export error is recorded as ``out["export_error"]`` and does not fail the run: the checkpoint holds the
    scene, so ``rewardsds export`` can write the assets again with other settings.
    """
    from rewardsds.export_assets import resolve_formats, write_exports
    from rewardsds.representations.base import ExportOptions

    rep, cfg = system.representation, system.cfg
    try:
        formats = resolve_formats(rep, cfg.output.export_formats, "output.export_formats")
        if not formats:
            return []
        return write_exports(rep, run_dir / "export", ExportOptions(formats=formats, step=system.iteration))
    except RewardSDSError as err:
        out["export_error"] = (f"{err} (the scene is kept in the checkpoint; export it without training: "
                               f"rewardsds export {run_dir} [--threshold T] [--resolution N] [--texture-size S] [--format F])")
        log.warning("export failed: %s", out["export_error"])
        print(f"rewardsds: export failed: {out['export_error']}")
        return []


@torch.no_grad()
def finalize_run(system: "DistillationSystem", run_dir: Path, media: Media) -> dict[str, Any]:
    """Write final images / eval views / video / exports and score them; returns ``final/*`` metrics."""
    cfg = system.cfg
    out: dict[str, Any] = {}
    rep = system.representation
    if rep.outputs_latents:
        images = system.current_images()
        for i, img in enumerate(to_uint8(images)):
            write_image(run_dir / "final" / f"image_{i:03d}.png", img)
        media.image("final/image", upscale(grid(images)), None, system.iteration, caption=cfg.prompt)
        scored = images
    else:
        from rewardsds.export3d import finalize_3d

        scored = finalize_3d(system, run_dir, media, out)
    if scored is not None:
        for name, image in system.loss_mode.final_outputs(system.prior, scored).items():
            write_image(run_dir / "final" / f"{name}.png", image)
            media.image(f"final/{name}", image, None, system.iteration, caption=cfg.prompt)
    if cfg.output.video:
        assemble_video(run_dir, media, cfg.output.video_fps, system.iteration)
    exported = export_final_assets(system, run_dir, out)
    if exported:
        out["exports"] = [str(p.relative_to(run_dir)) for p in exported]
    if cfg.output.final_reward and system.reward is not None and scored is not None:
        r = system.reward(scored, cfg.prompt, check=False).float().cpu()
        out["final/reward"] = float(r.mean())
        out["final/rewards"] = [float(x) for x in r]
        out["reward_name"] = getattr(system.reward, "name", "reward")
    prior = system.prior
    if hasattr(prior, "log_prob") and rep.outputs_latents:
        lat = rep.latents.detach()
        out["final/log_prob"] = float(prior.log_prob(lat, cfg.prompt).mean())
        out["final/modes"] = prior.nearest_mode(lat)
    return out
