"""The shared reward preprocessing: PIL path vs torchvision / transformers, tensor path vs PIL path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from PIL import Image

from rewardsds.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform, from_pil, to_pil

# shared/ sits beside the checkout (../shared), as in CI's fresh clone
FIXTURE = FIXTURES / "image_reward"


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A natural-looking test image: low-frequency colour field + a sharp disk + mild noise, quantised."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    x = torch.where((yy**2 + xx**2 < 0.2)[None, None], torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1), x)
    x = x + 0.03 * torch.randn(1, 3, h, w, generator=g)
    return x.clamp(0, 1).mul(255).round().div(255)


def _fixture_images() -> list[torch.Tensor]:
    names = json.loads((FIXTURE / "expected_scores.json").read_text())["images"]
    return [from_pil([Image.open(FIXTURE / "images" / n).convert("RGB")]) for n in names]


def test_geometry_rules():
    t = ImageTransform(size=224, crop=224)
    assert t.resized_hw(256, 320) == (224, 280)
    assert t.resized_hw(250, 332) == (224, 297)  # int(224 * 332 / 250) = int(297.47) truncates
    assert t.resized_hw(512, 512) == (224, 224)
    # (297 - 224) / 2 = 36.5: Python round -> 36 (half to even), floor -> 36; 3 / 2 = 1.5: round -> 2, floor -> 1
    assert t.crop_offsets(224, 297) == (0, 36)
    assert t.crop_offsets(227, 224) == (2, 0)
    assert ImageTransform(crop_rounding="floor").crop_offsets(227, 224) == (1, 0)
    with pytest.raises(ValueError, match="interpolation"):
        ImageTransform(interpolation="lanczos")
    with pytest.raises(ValueError, match="crop"):
        ImageTransform(size=200, crop=224)


def test_pil_path_is_torchvision_compose_bitwise():
    from torchvision import transforms as T

    ref = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    t = ImageTransform(size=224, crop=224, crop_rounding="round")
    for h, w in ((256, 320), (331, 250), (512, 512), (100, 130)):
        x = _smooth_image(h, w, seed=h)
        assert torch.equal(t.pil(x)[0], ref(to_pil(x)[0])), (h, w)


def test_pil_path_matches_transformers_pil_image_processor():
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()
    t = ImageTransform.from_processor_config(proc.to_dict())
    assert (t.size, t.crop, t.crop_rounding, t.interpolation) == (224, 224, "floor", "bicubic")
    for h, w in ((257, 320), (320, 263), (512, 512)):
        x = _smooth_image(h, w, seed=w)
        ref = proc(images=to_pil(x), return_tensors="pt")["pixel_values"]
        assert (t.pil(x) - ref).abs().max().item() < 1e-5, (h, w)


def test_tensor_path_close_to_pil_on_parity_images():
    """The figure quoted in the docs: max |tensor - PIL| per pixel in [0, 1] units <= 1.07/255 (measured)."""
    t = ImageTransform(size=224, crop=224, crop_rounding="round")
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    worst = max(((t(x) - t.pil(x)) * std).abs().max().item() for x in _fixture_images())
    assert worst * 255 < 1.1, worst * 255


def test_tensor_path_close_to_pil_on_square_renders():
    t = ImageTransform(size=224, crop=224)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    x = torch.cat([_smooth_image(512, 512, seed=s) for s in range(3)])
    diff = ((t(x) - t.pil(x)) * std).abs()
    assert diff.max().item() * 255 < 1.1
    assert diff.mean().item() * 255 < 0.3


def test_uint8_levels_bring_the_tensor_path_to_pillows_pixels():
    """What the rewards score unless they must be differentiable: the input and each pass on uint8 levels, as the
    reference's PIL image and Pillow's passes store them. Most pixels then equal Pillow's; the rest are one or two
    levels apart (the resamplers' arithmetic on either side of a rounding boundary), against float's error on most."""
    t = ImageTransform(size=224, crop=224, crop_rounding="round")
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    decoded = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), size=(512, 512),
                                              mode="bilinear")  # a decoder's float image, not on uint8 levels
    for x in [*_fixture_images(), decoded]:
        pil = t.pil(x)
        levels = ((t(x, uint8=True) - pil) * std).abs() * 255
        floats = ((t(x) - pil) * std).abs() * 255
        assert torch.allclose(levels, levels.round(), atol=1e-3)  # whole levels apart, or equal
        assert levels.max().item() <= 2.0 + 1e-3 and (levels < 1e-3).float().mean().item() > 0.97
        assert levels.mean().item() < floats.mean().item() / 5 and levels.mean().item() < 0.03
    x = _smooth_image(64, 48).requires_grad_(True)  # rounding passes no gradient: differentiable rewards use float
    t(x, uint8=True).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum().item() == 0.0


def test_float_resize_matches_torchvision_tensor_resize():
    """HPSv2's reference: ToTensor, then torchvision Resize on the float tensor (antialiased), CenterCrop."""
    from torchvision.transforms import functional as TF
    from torchvision.transforms import InterpolationMode

    t = ImageTransform(size=224, crop=224, crop_rounding="round", float_resize=True)
    x = _smooth_image(300, 260, seed=3)
    ref = TF.center_crop(TF.resize(x, 224, interpolation=InterpolationMode.BICUBIC, antialias=True), 224)
    ref = TF.normalize(ref, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert (t(x) - ref).abs().max().item() < 1e-5


def test_tensor_path_is_differentiable():
    t = ImageTransform(size=32, crop=32)
    x = _smooth_image(64, 48).requires_grad_(True)
    t(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_quantisation_roundtrip_restores_png_values():
    arr = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    x = from_pil([Image.fromarray(arr)])
    assert np.array_equal(np.asarray(to_pil(x)[0]), arr)


def test_from_processor_config_variants():
    t = ImageTransform.from_processor_config({"size": {"height": 336, "width": 336}, "do_center_crop": False,
                                              "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert (t.size, t.crop, t.resize, t.interpolation, t.mean) == (336, None, "square", "bilinear", (0.5, 0.5, 0.5))
    assert t(torch.rand(2, 3, 100, 50)).shape == (2, 3, 336, 336)
    with pytest.raises(ValueError, match="resample"):
        ImageTransform.from_processor_config({"resample": 1})
