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
    try:
        exported = rep.export(run_dir / "export")
    except RewardSDSError as err:
        # The optimised scene and every other output are kept; only the asset export needs another setting.
        out["export_error"] = f"{err} (re-export without training: rewardsds resume={run_dir} <same overrides> <the fix>)"
        log.warning("export failed: %s", out["export_error"])
        print(f"rewardsds: export failed: {out['export_error']}")
        exported = []
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
