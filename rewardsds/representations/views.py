"""Rendering 3D representations at fixed cameras: evaluation views, turntable frames and PNGs.

These helpers are shared by the NeRF and the Gaussians. They render in eval mode without gradients
(restoring the previous mode), a few views per call, and return CPU tensors or uint8 arrays; writing
videos (mp4 through imageio) belongs to the visualisation module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.cameras import Cameras
from rewardsds.representations.base import Representation


@torch.no_grad()
def render_views(rep: Representation, cameras: Cameras, step: int, views_per_call: int = 4,
                 outputs: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """Render every view of ``cameras`` in eval mode and gather the image outputs on the CPU.

    Args:
        rep: a 3D representation (``needs_cameras``).
        cameras: the fixed cameras (e.g. ``CameraSampler.eval_cameras(n)``).
        step: the optimisation step (for step-dependent settings such as the SH degree or shading).
        views_per_call: views rendered together (the representation chunks each call further: the NeRF by
            ``eval_chunk_samples``).
        outputs: the outputs needed (None: all); the representation may skip the others (the NeRF's normals).

    Returns:
        Each [b, c, H, W] output of ``rep.render`` (``rgb``, ``opacity``, ``depth``, ``normal``...),
        concatenated over the views, float32 on the CPU.
    """
    was_training = rep.training
    rep.eval()
    try:
        parts: list[dict[str, Tensor]] = []
        for s in range(0, len(cameras), views_per_call):
            out = rep.render(cameras.index(slice(s, s + views_per_call)), step, outputs=outputs)
            parts.append({k: v.detach().float().cpu() for k, v in out.items() if v.dim() == 4})
    finally:
        rep.train(was_training)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def normal_image(normal: Float[Tensor, "b 3 h w"], opacity: Float[Tensor, "b 1 h w"], background: float = 1.0) -> Tensor:
    """Normals as colours, (n + 1) / 2 over a ``background`` grey where the opacity is low."""
    n = torch.nn.functional.normalize(normal, dim=1)
    return ((n + 1.0) * 0.5) * opacity + background * (1.0 - opacity)


def to_uint8_frames(images: Float[Tensor, "b c h w"]) -> np.ndarray:
    """[b, c, H, W] in [0, 1] (c = 1 or 3) -> uint8 frames [b, H, W, 3]."""
    x = images.detach().float().cpu().clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def turntable_frames(
    rep: Representation,
    cameras: Cameras,
    step: int,
    keys: Sequence[str] = ("rgb", "normal", "opacity"),
    views_per_call: int = 4,
) -> dict[str, np.ndarray]:
    """uint8 frames [F, H, W, 3] per output for a turntable video.

    Args:
        rep: the representation.
        cameras: the turntable cameras (``CameraSampler.turntable(frames)``).
        step: the optimisation step.
        keys: outputs to turn into frames when the representation produces them (``normal`` is shown
            as ``(n + 1) / 2`` over white, ``opacity`` as grey).
        views_per_call: views rendered together.

    Returns:
        ``{key: frames}`` for the requested keys that the representation renders.
    """
    out = render_views(rep, cameras, step, views_per_call, outputs=[*keys, "opacity"])
    frames = {}
    for key in keys:
        if key not in out:
            continue
        img = normal_image(out[key], out["opacity"]) if key == "normal" else out[key]
        frames[key] = to_uint8_frames(img)
    return frames


def save_pngs(images: Float[Tensor, "b c h w"] | np.ndarray, out_dir: Path, prefix: str = "view") -> list[Path]:
    """Write each image as ``<out_dir>/<prefix>_<index:03d>.png``; return the paths."""
    from PIL import Image

    frames = images if isinstance(images, np.ndarray) else to_uint8_frames(images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        p = out_dir / f"{prefix}_{i:03d}.png"
        Image.fromarray(frame).save(p)
        paths.append(p)
    return paths


def stack_keys(frames: dict[str, np.ndarray], keys: Iterable[str]) -> np.ndarray:
    """Frames of several outputs side by side, [F, H, W * k, 3] (e.g. rgb | normal | opacity)."""
    return np.concatenate([frames[k] for k in keys if k in frames], axis=2)
