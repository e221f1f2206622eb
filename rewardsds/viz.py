"""Images, grids, videos and W&B media: built in one place, sent through the Lightning logger.

Model code never calls wandb; the system hands tensors here, and this module writes files and, when
the logger is a ``WandbLogger``, logs the same media through it (rank zero only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from rewardsds.utils.io import atomic_path, write_image

log = logging.getLogger(__name__)


def to_uint8(images: Tensor) -> np.ndarray:
    """[b, 3, H, W] in [0, 1] -> [b, H, W, 3] uint8."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray | Tensor, cols: Optional[int] = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile [b, H, W, 3] uint8 (or a [b, 3, H, W] float tensor) into one image, row-major."""
    if isinstance(images, Tensor):
        images = to_uint8(images)
    b, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), pad_value, dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = im
    return out


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale small images (analytic prior 16x16) so they are visible."""
    h, w = image.shape[:2]
    k = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    return image.repeat(k, 0).repeat(k, 1) if k > 1 else image


def side_by_side(columns: Sequence[np.ndarray], labels: Sequence[str] = (), pad: int = 4) -> np.ndarray:
    """Concatenate HxWx3 images horizontally (same height), with optional text labels drawn on top."""
    h = max(c.shape[0] for c in columns)
    padded = [np.pad(c, ((0, h - c.shape[0]), (0, 0), (0, 0)), constant_values=255) for c in columns]
    sep = np.full((h, pad, 3), 255, np.uint8)
    parts = []
    for i, c in enumerate(padded):
        parts += ([sep] if i else []) + [c]
    out = np.concatenate(parts, axis=1)
    if labels:
        out = _label(out, labels, [c.shape[1] + pad for c in padded])
    return out


def _label(image: np.ndarray, labels: Sequence[str], widths: Sequence[int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    band = 18
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + band), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, band))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for text, w in zip(labels, widths):
        draw.text((x + 3, 3), text, fill=(0, 0, 0))
        x += w
    return np.asarray(canvas)


def write_video(path: str | Path, frames: Sequence[np.ndarray] | np.ndarray, fps: int = 20) -> Optional[Path]:
    """Write HxWx3 uint8 frames as an H.264 mp4 (imageio-ffmpeg), atomically. Returns the path or None."""
    import imageio.v2 as imageio

    frames = list(frames)
    if not frames:
        return None
    h, w = frames[0].shape[:2]
    # H.264 with yuv420p wants even sizes; macro_block_size=1 keeps small frames un-resized.
    frames = [f[: h - h % 2, : w - w % 2] for f in frames]
    path = Path(path)
    with atomic_path(path) as tmp:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1, pixelformat="yuv420p") as writer:
            for f in frames:
                writer.append_data(np.ascontiguousarray(f))
    return path


#: columns of the candidates table
CANDIDATE_COLUMNS = ("candidate", "view", "image", "reward", "weight")


def candidate_rows(images: np.ndarray, rewards: Sequence[float], weights: Sequence[float], views: int = 1) -> list[tuple]:
    """``(candidate, view, image, reward, weight)`` per image of a candidate-major batch of ``n * views`` images."""
    if views < 1 or len(images) % views:
        raise ValueError(f"{len(images)} candidate images are not a whole number of groups of {views} views")
    if not len(images) == len(rewards) == len(weights):
        raise ValueError(f"got {len(images)} images, {len(rewards)} rewards and {len(weights)} weights; need one each")
    return [(i // views, i % views, img, float(r), float(w)) for i, (img, r, w) in enumerate(zip(images, rewards, weights))]


class Media:
    """Writes run media to disk and mirrors it to a W&B logger when one is attached."""

    def __init__(self, run_dir: Path, logger=None):
        self.run_dir = Path(run_dir)
        self.logger = logger

    @property
    def wandb(self):
        from lightning.pytorch.loggers import WandbLogger

        return self.logger if isinstance(self.logger, WandbLogger) else None

    def image(self, key: str, image: np.ndarray, path: Optional[Path], step: int, caption: Optional[str] = None) -> None:
        if path is not None:
            write_image(path, image)
        if self.wandb is not None:
            try:
                self.wandb.log_image(key=key, images=[image], step=step, caption=[caption] if caption else None)
            except Exception as err:  # media logging must never kill a run
                log.warning("W&B image logging failed for %s: %s", key, err)

    def candidates_table(self, key: str, images: np.ndarray, rewards: Sequence[float], weights: Sequence[float], step: int,
                         views: int = 1) -> None:
        """A W&B table of candidate images with their rewards and weights (which noise won).

        Args:
            key: the W&B key (``train/candidates``).
            images: [n * views, H, W, 3] uint8, candidate-major (index = candidate * views + view).
            rewards, weights: one per image, in the same order.
            step: the training step.
            views: views per candidate (3D: the camera batch; 2D: 1). Rows are (candidate, view).
        """
        if self.wandb is None:
            return
        try:
            import wandb

            rows = candidate_rows(images, rewards, weights, views)
            data = [[c, v, wandb.Image(img), r, w] for c, v, img, r, w in rows]
            self.wandb.log_table(key=key, columns=list(CANDIDATE_COLUMNS), data=data, step=step)
        except Exception as err:
            log.warning("W&B table logging failed for %s: %s", key, err)

    def video(self, key: str, frames: Sequence[np.ndarray], path: Path, fps: int, step: int) -> Optional[Path]:
        out = write_video(path, frames, fps)
        if out is not None and self.wandb is not None:
            try:
                self.wandb.log_video(key=key, videos=[str(out)], step=step, format=["mp4"])
            except Exception as err:
                log.warning("W&B video logging failed for %s: %s", key, err)
        return out
