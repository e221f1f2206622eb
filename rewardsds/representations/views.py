"""Rendering 3D representations at fixed cameras: evaluation views, turntable frames and PNGs.

These helpers are shared by the NeRF and the Gaussians. They render in eval mode without gradients
(restoring the previous mode), a few views per call, and return CPU tensors or uint8 arrays; writing
videos (mp4 through imageio) belongs to the visualisation module.

Normals for the turntable: a representation that renders ``normal`` (the NeRF, in every evaluation
render: the density gradient, analytic or by finite differences as ``representation.normal`` says,
analytic when it is ``none``) shows those; otherwise (the Gaussians) they are computed from the rendered
depth by :func:`normals_from_depth`: the depth map is lifted to world points along the pixel rays and
the normal is the cross product of central differences between neighbouring pixels.
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


def normals_from_depth(
    depth: Float[Tensor, "b 1 h w"], cameras: Cameras, along_ray: bool
) -> Float[Tensor, "b 3 h w"]:
    """Unit world-space normals of the surface seen in a depth map, facing the camera.

    Args:
        depth: [b, 1, H, W] rendered depth (meaningful where the opacity is high).
        cameras: the b cameras that rendered it (their resolution is H x W).
        along_ray: True if ``depth`` is the distance along each pixel's ray, False if it is the
            camera-space depth along the optical axis.

    Returns:
        [b, 3, H, W] unit normals: the cross product of the central differences (one-sided at the image
        border) of the lifted points along the image columns and rows.
    """
    cameras = cameras.to(depth.device)
    origins, dirs = cameras.rays()  # [b, H, W, 3], unit directions
    t = depth[:, 0].to(dirs)
    if not along_ray:
        forward = -cameras.c2w[:, :3, 2].to(dirs)  # the camera looks along its -z axis
        t = t / (dirs * forward[:, None, None, :]).sum(-1).clamp_min(1e-6)
    points = (origins + dirs * t[..., None]).permute(0, 3, 1, 2)  # [b, 3, H, W]
    padded = torch.nn.functional.pad(points, (1, 1, 1, 1), mode="replicate")
    d_col = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
    d_row = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
    n = torch.cross(d_col, d_row, dim=1)
    facing_away = (n * dirs.permute(0, 3, 1, 2)).sum(1, keepdim=True) > 0
    return torch.nn.functional.normalize(torch.where(facing_away, -n, n), dim=1)


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
            as ``(n + 1) / 2`` over white, ``opacity`` as grey). ``normal`` is computed from the depth
            (:func:`normals_from_depth`) when the representation does not render normals.
        views_per_call: views rendered together.

    Returns:
        ``{key: frames}`` for the requested keys that the representation renders.
    """
    wanted = [*keys, "opacity"] + (["depth"] if "normal" in keys else [])
    out = render_views(rep, cameras, step, views_per_call, outputs=wanted)
    if "normal" in keys and "normal" not in out and "depth" in out:
        out["normal"] = normals_from_depth(out["depth"], cameras, rep.depth_along_ray)
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


def turntable_video(rep: Representation, cameras: Cameras, step: int, views_per_call: int = 4) -> np.ndarray:
    """Turntable frames with the RGB render on the left and the normals on the right, [F, H, 2 W, 3] uint8.

    Normals are the representation's own or, for one that renders none, computed from its depth
    (module docstring).
    """
    frames = turntable_frames(rep, cameras, step, ("rgb", "normal"), views_per_call)
    if "normal" not in frames:
        raise ValueError(f"{type(rep).__name__} renders neither normals nor depth; the turntable needs one of them")
    return stack_keys(frames, ("rgb", "normal"))
