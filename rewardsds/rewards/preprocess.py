"""Image preprocessing of the CLIP-style reward backbones, on tensors (training loop) or through PIL (exact).

One :class:`ImageTransform` describes resize -> centre crop -> normalise; it has two implementations
that share the geometry (resized size and crop offsets are computed once, by the same integer rules):

- :meth:`ImageTransform.__call__`: batched, differentiable, on the images' device. Resampling is
  ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``, whose antialiased kernel is
  Pillow's (cubic a = -0.5, support scaled when downscaling), applied as two separable passes clipped
  to [0, 1] like Pillow's; it works in float on unquantised images.
- :meth:`ImageTransform.pil`: the reference path of the original reward code. Images are quantised to
  uint8, resized by Pillow (which rounds to uint8 between its horizontal and vertical passes), cropped,
  then ``ToTensor`` + ``Normalize`` arithmetic in float32. Bitwise equal to torchvision's
  ``Compose([Resize, CenterCrop, ToTensor, Normalize])`` on the quantised image.

On float images the two differ by the quantisation and the resampling arithmetic (float vs Pillow's
fixed-point uint8 passes): at most 1.07/255 per pixel in [0, 1] units on the ImageReward parity images. With
``uint8=True`` (what the rewards use unless they must be differentiable) the tensor path computes on the levels
the reference's image has: the input rounded to 1/255 and each resampling pass rounded as Pillow stores it. On the
parity images it then equals Pillow on about 98% of the pixels (the rest one or two levels apart, where the two
resamplers' arithmetic lands on either side of a rounding boundary): a mean error of 0.02/255 instead of 0.18/255
(both asserted in ``tests/test_reward_preprocess.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
# transformers' PILImageResampling codes (preprocessor_config.json "resample") -> our names
_RESAMPLE_CODES = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class ImageTransform:
    """Resize, centre crop and normalise RGB images in [0, 1].

    Attributes:
        size: target of the resize: the shorter side (``resize="shortest_edge"``; the longer side becomes
            ``int(size * long / short)``, truncated as torchvision and transformers do) or both sides
            (``resize="square"``).
        crop: side of the centre crop, or None for no crop.
        mean, std: per-channel normalisation.
        interpolation: ``bicubic`` or ``bilinear``.
        crop_rounding: how a crop offset ``(H - crop) / 2`` becomes an integer: ``round`` (torchvision
            ``CenterCrop``: Python round, half to even; used by ImageReward and open_clip) or ``floor``
            (transformers image processors: ``(H - crop) // 2``; used by the CLIP, aesthetic and PickScore
            reference code). They differ by one pixel when ``H - crop`` is odd.
        resize: ``shortest_edge`` or ``square``.
        float_resize: resample the tensor path in one unclipped 2D pass, as torchvision's ``Resize`` does on
            float tensors (HPSv2's reference applies ``ToTensor`` before ``Resize``); default False: two
            clipped passes that follow Pillow.
    """

    size: int = 224
    crop: Optional[int] = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    crop_rounding: str = "round"
    resize: str = "shortest_edge"
    float_resize: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_FILTERS:
            raise ValueError(f"interpolation {self.interpolation!r} is not supported; use bicubic or bilinear")
        if self.crop_rounding not in ("round", "floor"):
            raise ValueError(f"crop_rounding {self.crop_rounding!r} is not supported; use round or floor")
        if self.resize not in ("shortest_edge", "square"):
            raise ValueError(f"resize {self.resize!r} is not supported; use shortest_edge or square")
        if self.crop is not None and self.crop > self.size:
            raise ValueError(f"crop {self.crop} is larger than the resize target {self.size}")

    @classmethod
    def from_processor_config(cls, cfg: dict, crop_rounding: str = "floor") -> "ImageTransform":
        """Build from a transformers ``preprocessor_config.json`` dict (CLIPImageProcessor keys)."""
        size = cfg.get("size", 224)
        if isinstance(size, dict):
            if "shortest_edge" in size:
                size, resize = int(size["shortest_edge"]), "shortest_edge"
            elif size.get("height") == size.get("width") and "height" in size:
                size, resize = int(size["height"]), "square"
            else:
                raise ValueError(f"unsupported image processor size {size}; expected shortest_edge or a square size")
        else:
            size, resize = int(size), "shortest_edge"
        crop = cfg.get("crop_size", size)
        if isinstance(crop, dict):
            if crop.get("height") != crop.get("width"):
                raise ValueError(f"unsupported non-square crop_size {crop}")
            crop = int(crop["height"])
        if not cfg.get("do_center_crop", True):
            crop = None
        resample = cfg.get("resample", 3)
        if resample not in _RESAMPLE_CODES:
            raise ValueError(f"unsupported resample code {resample}; bicubic (3) and bilinear (2) are supported")
        return cls(
            size=size,
            crop=None if crop is None else int(crop),
            mean=tuple(float(v) for v in cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(float(v) for v in cfg.get("image_std", OPENAI_CLIP_STD)),
            interpolation=_RESAMPLE_CODES[resample],
            crop_rounding=crop_rounding,
            resize=resize,
        )

    # ------------------------------------------------------------------ geometry (shared by both paths)
    def resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """Size after the resize step."""
        if self.resize == "square":
            return self.size, self.size
        if w <= h:
            return int(self.size * h / w), self.size
        return self.size, int(self.size * w / h)

    def crop_offsets(self, h: int, w: int) -> tuple[int, int]:
        """(top, left) of the centre crop in an image of size (h, w)."""
        if self.crop is None:
            return 0, 0
        if self.crop_rounding == "round":
            return int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        return (h - self.crop) // 2, (w - self.crop) // 2

    @property
    def output_size(self) -> int:
        return self.size if self.crop is None else self.crop

    def _norm_tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        return mean, std

    # ------------------------------------------------------------------ tensor path
    def __call__(self, images: Float[Tensor, "b 3 H W"], uint8: bool = False) -> Float[Tensor, "b 3 s s"]:
        """Batched tensor preprocessing (fp32 out on the images' device).

        Args:
            images: RGB in [0, 1], [b, 3, H, W].
            uint8: compute on the uint8 levels of the image the reference code scores: round the input to
                1/255 as :func:`to_pil` does and, for Pillow-style resizes, each pass as Pillow stores it (no
                gradient through the rounding); False: float throughout (differentiable).

        Returns:
            normalised pixels [b, 3, s, s] with ``s = crop`` (or the resized size without a crop).
        """
        x = images.float()
        level = _uint8_levels if uint8 else (lambda t: t)
        x = level(x)
        h, w = x.shape[-2:]
        rh, rw = self.resized_hw(h, w)
        if (rh, rw) != (h, w) and self.float_resize:  # resampled as a float tensor by the reference: not rounded after
            x = F.interpolate(x, size=(rh, rw), mode=self.interpolation, antialias=True, align_corners=False)
        elif (rh, rw) != (h, w):
            # Two separable passes, horizontal first, each clipped to [0, 1]: Pillow stores the horizontal
            # pass in uint8, so bicubic overshoot is clipped before the vertical pass. One 2D call without
            # that clip is up to 4.9/255 away from Pillow on the parity images; two clipped passes 1.07/255.
            if rw != w:
                x = F.interpolate(x, size=(h, rw), mode=self.interpolation, antialias=True, align_corners=False)
                x = level(x.clamp(0.0, 1.0))
            if rh != h:
                x = F.interpolate(x, size=(rh, rw), mode=self.interpolation, antialias=True, align_corners=False)
                x = level(x.clamp(0.0, 1.0))
        if self.crop is not None:
            top, left = self.crop_offsets(rh, rw)
            x = x[..., top : top + self.crop, left : left + self.crop]
        mean, std = self._norm_tensors(x.device)
        return (x - mean) / std

    # ------------------------------------------------------------------ PIL path
    def pil(self, images: Float[Tensor, "b 3 H W"] | Sequence[Image.Image]) -> Float[Tensor, "b 3 s s"]:
        """Reference preprocessing through Pillow (not differentiable).

        Args:
            images: RGB in [0, 1] [b, 3, H, W] (quantised with ``round(255 x)``, which restores the exact
                uint8 values of an image read from a PNG), or a list of PIL images.

        Returns:
            normalised pixels [b, 3, s, s], fp32, on the input tensor's device (CPU for PIL input).
        """
        device = images.device if isinstance(images, Tensor) else torch.device("cpu")
        pils = to_pil(images) if isinstance(images, Tensor) else list(images)
        out = []
        for im in pils:
            w, h = im.size
            rh, rw = self.resized_hw(h, w)
            if (rh, rw) != (h, w):
                im = im.resize((rw, rh), _PIL_FILTERS[self.interpolation])
            if self.crop is not None:
                top, left = self.crop_offsets(rh, rw)
                im = im.crop((left, top, left + self.crop, top + self.crop))
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255))
        x = torch.stack(out)
        mean, std = self._norm_tensors(x.device)
        return ((x - mean) / std).to(device)


def _uint8_levels(x: Tensor) -> Tensor:
    """Round values in [0, 1] to the nearest of the 256 uint8 levels (as ``to_pil`` and Pillow's passes store them)."""
    return x.mul(255).round().clamp(0, 255).div(255)


def to_pil(images: Float[Tensor, "b 3 H W"]) -> list[Image.Image]:
    """[b, 3, H, W] in [0, 1] -> list of RGB PIL images, quantised with round(255 x)."""
    arr = images.detach().float().mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def from_pil(images: Sequence[Image.Image]) -> Float[Tensor, "b 3 H W"]:
    """List of same-size PIL images -> [b, 3, H, W] float in [0, 1] (uint8 / 255)."""
    arrs = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255)
