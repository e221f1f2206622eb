"""Final outputs of a 3D run: evaluation views at fixed cameras, final views, turntable video."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rewardsds.representations.views import render_views, save_pngs, turntable_video
from rewardsds.utils.io import write_image
from rewardsds.viz import Media, grid

if TYPE_CHECKING:  # pragma: no cover
    from rewardsds.system import DistillationSystem


@torch.no_grad()
def finalize_3d(system: "DistillationSystem", run_dir: Path, media: Media, out: dict[str, Any]) -> Tensor:
    """Write ``eval/view_XXX.png`` (``output.eval_views`` fixed cameras, the metric views), ``final/views.png``
    (4 views around the object) and, with ``output.video``, ``turntable.mp4``: RGB on the left, normals on the right
    (the NeRF's density-gradient normals, or normals from the rendered depth for representations without their own;
    see :mod:`rewardsds.representations.views`).

    Returns the evaluation views [n, 3, H, W] in [0, 1] for the final reward.
    """
    cfg, rep, sampler = system.cfg, system.representation, system.camera_sampler
    step = system.iteration
    dev = system.device
    eval_cams = sampler.eval_cameras(max(1, cfg.output.eval_views)).to(dev)
    views = render_views(rep, eval_cams, step, outputs=["rgb"])
    save_pngs(views["rgb"], run_dir / "eval", "view")
    out["eval_views"] = int(views["rgb"].shape[0])
    four = render_views(rep, sampler.orbit(4).to(dev), step, outputs=["rgb"])
    save_pngs(four["rgb"], run_dir / "final", "view")
    tile = grid(four["rgb"], cols=4)
    write_image(run_dir / "final" / "views.png", tile)
    media.image("final/views", tile, None, step, caption=cfg.prompt)
    if cfg.output.video and cfg.output.turntable_frames > 0:
        res = min(sampler.cfg.eval_resolution, 512)
        video = turntable_video(rep, sampler.turntable(cfg.output.turntable_frames, resolution=res).to(dev), step)
        media.video("final/turntable", list(video), run_dir / "turntable.mp4", cfg.output.video_fps, step)
    return views["rgb"].to(dev)
