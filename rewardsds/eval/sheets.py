"""Contact sheets of final images: one sheet per prompt, one row per variant (table row), one column per seed.

Each tile is the run's first final image (2D ``final/image_000.png``; 3D ``final/view_000.png``, else
``eval/view_000.png``) fitted into a ``tile`` x ``tile`` square (nearest-neighbour when enlarged, so a 16x16
analytic image stays sharp; Lanczos when reduced) with the run's value of the chosen metric written under it (the sheet's title names the metric).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from rewardsds.eval.aggregate import Run, row_label
from rewardsds.utils.io import write_image

#: images tried for a run's tile, in order (glob patterns relative to the run folder)
TILE_SOURCES = ("final/image_*.png", "final/view_*.png", "eval/view_*.png")
#: pixel sizes of the sheet layout
TITLE_H, HEADER_H, LABEL_H, PAD = 22, 16, 16, 4
LEFT_W = 180
WHITE = (255, 255, 255)


def tile_image(run_dir: Path) -> Optional[Path]:
    """The image that stands for a run on a sheet (:data:`TILE_SOURCES`), or None."""
    for pattern in TILE_SOURCES:
        files = sorted(Path(run_dir).glob(pattern))
        if files:
            return files[0]
    return None


def fit_tile(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> ``size`` x ``size`` x 3: scaled to fit (aspect kept), centred on white."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    small = np.asarray(Image.fromarray(image).resize((nw, nh), resample))
    out = np.full((size, size, 3), 255, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def slug(text: str, max_len: int = 60) -> str:
    """File-name-safe, lower-case form of a prompt."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:max_len] or "prompt"


@dataclass
class Sheet:
    """A written sheet and its layout (for the report and the tests).

    Attributes:
        path: the PNG.
        prompt: the prompt of every run on it.
        rows: the variant labels, top to bottom.
        cols: the seeds, left to right.
        tiles: ``{(row, col): (run folder, caption)}`` for the cells that hold a run.
        origins: ``{(row, col): (y, x)}`` top-left pixel of each tile in the sheet.
        tile: the tile side in pixels.
    """

    path: Path
    prompt: str
    rows: list[str]
    cols: list[str]
    tiles: dict[tuple[int, int], tuple[Path, str]] = field(default_factory=dict)
    origins: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    tile: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the sheet image."""
        return sheet_size(len(self.rows), len(self.cols), self.tile)


def sheet_size(n_rows: int, n_cols: int, tile: int) -> tuple[int, int]:
    """(height, width) of a sheet with ``n_rows`` x ``n_cols`` tiles of side ``tile``."""
    return (TITLE_H + HEADER_H + n_rows * (tile + LABEL_H + PAD), LEFT_W + n_cols * (tile + PAD))


def caption(run: Run, metric: Optional[str], digits: int) -> str:
    """The run's value of ``metric`` (``-0.0123``; ``–`` when the run has none; the sheet's title names the metric)."""
    if not metric:
        return ""
    v = run.values.get(metric)
    return "–" if v is None else f"{v:.{digits}f}"


def _seed_sort(s: str) -> tuple:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def draw_sheet(path: Path, prompt: str, cells: dict[tuple[str, str], Run], row_labels: Sequence[str],
               seeds: Sequence[str], tile: int, metric: Optional[str], digits: int) -> Sheet:
    """Draw one sheet: ``cells[(row label, seed)]`` is the run of that tile (missing cells stay blank)."""
    from PIL import Image, ImageDraw

    h, w = sheet_size(len(row_labels), len(seeds), tile)
    canvas = Image.new("RGB", (w, h), WHITE)
    draw = ImageDraw.Draw(canvas)
    title = f"{prompt}  ({metric} under each image)" if metric else prompt
    draw.text((PAD, 4), _fit_text(draw, title, w - 2 * PAD), fill=(0, 0, 0))
    sheet = Sheet(path=path, prompt=prompt, rows=list(row_labels), cols=list(seeds), tile=tile)
    for c, seed in enumerate(seeds):
        draw.text((LEFT_W + c * (tile + PAD) + 2, TITLE_H + 2), f"seed {seed}", fill=(60, 60, 60))
    for r, label in enumerate(row_labels):
        y = TITLE_H + HEADER_H + r * (tile + LABEL_H + PAD)
        for i, line in enumerate(_wrap(draw, label, LEFT_W - 2 * PAD)[: max(1, tile // 12)]):
            draw.text((PAD, y + 2 + 12 * i), line, fill=(0, 0, 0))
        for c, seed in enumerate(seeds):
            run = cells.get((label, seed))
            if run is None:
                continue
            x = LEFT_W + c * (tile + PAD)
            src = tile_image(run.path)
            if src is not None:
                with Image.open(src) as im:
                    canvas.paste(Image.fromarray(fit_tile(np.asarray(im.convert("RGB")), tile)), (x, y))
            text = caption(run, metric, digits)
            draw.text((x + 2, y + tile + 2), _fit_text(draw, text, tile - 2), fill=(0, 0, 0))
            sheet.tiles[(r, c)] = (run.path, text)
            sheet.origins[(r, c)] = (y, x)
    write_image(path, np.asarray(canvas))
    return sheet


def _fit_text(draw, text: str, width: int) -> str:
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw, text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.replace(", ", ",\u0000").split("\u0000"):
        trial = line + word
        if line and draw.textlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def write_sheets(folder: Path, rows: Sequence[dict[str, Any]], group_by: Sequence[str], *, metric: Optional[str],
                 tile: int = 160, digits: int = 4) -> list[Sheet]:
    """``sheets/<i>-<prompt>.png``: per prompt, the table rows (variants) x seeds, each tile captioned with ``metric``.

    Args:
        folder: the sweep folder (sheets go to ``folder/sheets``).
        rows: rows of :func:`rewardsds.eval.aggregate.aggregate` (with their ``_runs``).
        group_by: the keys of those rows (their labels name the sheet rows).
        metric: the value written under each tile (``final/reward``, ``eval/clip_score``); None for no caption.
        tile: tile side in pixels.
        digits: decimals of the captions.

    Returns:
        the sheets, in prompt order (prompt index, then text). Several runs of one cell (a variant's runs that
        differ only in an averaged-over key other than seed and prompt) keep the first by folder name.
    """
    prompts: dict[str, tuple] = {}
    for row in rows:
        for run in row["_runs"]:
            p = str(run.info.get("prompt", ""))
            idx = run.info.get("prompt_index")
            prompts.setdefault(p, (idx if isinstance(idx, int) else 1 << 30, p))
    sheets = []
    for i, prompt in enumerate(sorted(prompts, key=lambda p: prompts[p])):
        cells: dict[tuple[str, str], Run] = {}
        labels, seeds = [], set()
        for row in rows:
            label = row_label(row, group_by)
            for run in sorted(row["_runs"], key=lambda r: str(r.path)):
                if str(run.info.get("prompt", "")) != prompt or tile_image(run.path) is None:
                    continue
                seed = run.pair_key()[1]
                cells.setdefault((label, seed), run)
                seeds.add(seed)
                if label not in labels:
                    labels.append(label)
        if not cells:
            continue
        path = folder / "sheets" / f"{i:03d}-{slug(prompt)}.png"
        sheets.append(draw_sheet(path, prompt, cells, labels, sorted(seeds, key=_seed_sort), tile, metric, digits))
    return sheets
