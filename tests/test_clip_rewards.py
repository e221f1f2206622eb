"""CLIP score, aesthetic predictor and PickScore on tiny random CLIP checkpoints saved with save_pretrained.

Each reward is loaded through its real loader and compared with an independent computation:
transformers' own ``CLIPModel`` forward on its PIL image processor's pixels, and the head formulas by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rewardsds.errors import ModelLoadError
from rewardsds.rewards.aesthetic import AestheticReward
from rewardsds.rewards.base import RewardInputError
from rewardsds.rewards.clip import CLIPScore
from rewardsds.rewards.config import AestheticRewardConfig, CLIPScoreConfig, PickScoreConfig
from rewardsds.rewards.pickscore import PickScore
from rewardsds.rewards.preprocess import to_pil
from rewardsds.testing import random_aesthetic_head, save_random_clip

PROMPTS = ["a photo of a red fox", "a cat in the snow", "an oil painting of a castle"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip"), "tiny", seed=0, logit_scale=math.log(100.0))


@pytest.fixture(scope="module")
def reference(clip_dir):
    """transformers' CLIPModel + CLIPProcessor with the PIL image processor, loaded independently."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir, dtype=torch.float32).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(clip_dir),
                         tokenizer=CLIPTokenizer.from_pretrained(clip_dir))
    return model, proc


def _images(b: int = 3, h: int = 49, w: int = 40, seed: int = 0) -> torch.Tensor:
    # 49x40 -> 39x32 after the resize: the crop offset 3.5 tells floor (transformers) from round (torchvision)
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return x.mul(255).round().div(255)  # uint8-representable, like images read from PNG files


def _reference_logits(reference, images, prompts):
    model, proc = reference
    inputs = proc(text=prompts, images=to_pil(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs).logits_per_image  # exp(logit_scale) * cos, [images, texts]


def test_clip_score_pil_exact_matches_transformers(clip_dir, reference):
    reward = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="fp32", pil_exact=True, local_files_only=True))
    x = _images()
    expected = _reference_logits(reference, x, PROMPTS).diagonal() / 100.0
    assert torch.allclose(reward(x, PROMPTS), expected, atol=1e-5)


def test_clip_score_tensor_path_and_cosine_by_hand(clip_dir):
    reward = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="fp32", local_files_only=True))
    x = _images()
    img, txt = reward.image_embeds(x), reward.text_embeds(PROMPTS)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    scores = reward(x, PROMPTS)
    assert torch.allclose(scores, F.cosine_similarity(img, txt, dim=-1), atol=1e-6)
    exact = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="fp32", pil_exact=True, local_files_only=True))
    assert torch.allclose(scores, exact(x, PROMPTS), atol=2e-3)
    assert scores.abs().max() <= 1.0


def test_text_embeddings_are_cached_per_prompt(clip_dir):
    reward = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="fp32", local_files_only=True))
    first = reward.text_embeds(["a fox", "a fox", "a cat"])
    assert len(reward._text_cache) == 2
    assert torch.equal(first[0], first[1]) and not first.requires_grad
    again = reward.text_embeds(["a cat"])
    assert torch.equal(again[0], first[2]) and len(reward._text_cache) == 2


def test_pickscore_is_the_scaled_logit(clip_dir, reference):
    reward = PickScore(PickScoreConfig(pretrained=str(clip_dir), processor=str(clip_dir), dtype="fp32", pil_exact=True,
                                       local_files_only=True))
    assert reward.logit_scale == pytest.approx(100.0, rel=1e-5)
    x = _images()
    assert torch.allclose(reward(x, PROMPTS), _reference_logits(reference, x, PROMPTS).diagonal(), atol=1e-3)


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_aesthetic_heads_by_hand(tmp_path, clip_dir, reference, head_type):
    model, proc = reference
    state = random_aesthetic_head(head_type, dim=16, seed=1)
    torch.save(state, tmp_path / "head.pth")
    reward = AestheticReward(AestheticRewardConfig(pretrained=str(clip_dir), head_type=head_type,
                                                   head=str(tmp_path / "head.pth"), dtype="fp32", pil_exact=True,
                                                   local_files_only=True))
    assert reward.uses_prompt is False
    x = _images()
    with torch.no_grad():
        pixels = proc(images=to_pil(x), return_tensors="pt")["pixel_values"]
        emb = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        h = emb / emb.norm(dim=-1, keepdim=True)
        if head_type == "linear":
            expected = h @ state["weight"].T + state["bias"]
        else:  # five affine layers, no activations (indices 0, 2, 4, 6, 7)
            for i in (0, 2, 4, 6, 7):
                h = h @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
            expected = h
    assert torch.allclose(reward(x, "ignored"), expected.squeeze(-1), atol=1e-5)


def test_aesthetic_head_errors(tmp_path, clip_dir):
    torch.save(random_aesthetic_head("mlp", dim=16), tmp_path / "mlp.pth")
    with pytest.raises(ModelLoadError, match="head_type=mlp"):
        AestheticReward(AestheticRewardConfig(pretrained=str(clip_dir), head=str(tmp_path / "mlp.pth"),
                                              local_files_only=True))
    torch.save(random_aesthetic_head("linear", dim=768), tmp_path / "wide.pth")
    with pytest.raises(ModelLoadError, match="wide.pth"):
        AestheticReward(AestheticRewardConfig(pretrained=str(clip_dir), head=str(tmp_path / "wide.pth"),
                                              local_files_only=True))
    with pytest.raises(ModelLoadError) as err:  # default URL, nothing cached, offline
        AestheticReward(AestheticRewardConfig(pretrained=str(clip_dir), head_type="mlp", local_files_only=True))
    assert "sac+logos+ava1-l14-linearMSE.pth" in str(err.value) and "reward.head" in str(err.value)


def test_gradients_reach_images(clip_dir):
    reward = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="fp32", differentiable=True,
                                       local_files_only=True))
    x = _images(2, 64, 64).requires_grad_(True)
    reward(x, PROMPTS[:2], grad=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.model.parameters())
    with pytest.raises(ValueError, match="pil_exact"):
        CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), pil_exact=True, differentiable=True, local_files_only=True))


def test_half_precision_and_eager_attention(clip_dir):
    ref = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="fp32", local_files_only=True))
    eager = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="fp32", attention="eager", local_files_only=True))
    half = CLIPScore(CLIPScoreConfig(pretrained=str(clip_dir), dtype="bf16", local_files_only=True))
    x = _images()
    assert half.model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert torch.allclose(eager(x, PROMPTS), ref(x, PROMPTS), atol=1e-5)
    out = half(x, PROMPTS)
    assert out.dtype == torch.float32 and torch.allclose(out, ref(x, PROMPTS), atol=0.03)


@pytest.mark.parametrize("cls, schema", [(CLIPScore, CLIPScoreConfig), (PickScore, PickScoreConfig)])
def test_bad_input_is_rejected(clip_dir, cls, schema):
    reward = cls(schema(pretrained=str(clip_dir), processor=str(clip_dir), local_files_only=True))
    with pytest.raises(RewardInputError, match="shape"):
        reward(torch.rand(2, 32, 32, 3), ["a", "b"])
    with pytest.raises(RewardInputError, match=r"\[0, 1\]"):
        reward(torch.rand(2, 3, 32, 32) * 255, ["a", "b"])
    with pytest.raises(RewardInputError, match="2 images but 1 prompts"):
        reward(torch.rand(2, 3, 32, 32), ["a"])


def test_aesthetic_bad_input_is_rejected(tmp_path, clip_dir):
    torch.save(random_aesthetic_head("linear", dim=16), tmp_path / "head.pth")
    reward = AestheticReward(AestheticRewardConfig(pretrained=str(clip_dir), head=str(tmp_path / "head.pth"),
                                                   local_files_only=True))
    with pytest.raises(RewardInputError, match="shape"):
        reward(torch.rand(1, 1, 32, 32), "a")
    with pytest.raises(RewardInputError, match=r"\[0, 1\]"):
        reward(-torch.rand(1, 3, 32, 32), "a")
    with pytest.raises(RewardInputError, match="prompts"):
        reward(torch.rand(2, 3, 32, 32), ["a", "b", "c"])


def test_missing_model_names_source_and_key(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        CLIPScore(CLIPScoreConfig(pretrained="openai/clip-vit-large-patch14", local_files_only=True))
    assert "openai/clip-vit-large-patch14" in str(err.value) and "reward.pretrained=" in str(err.value)
    with pytest.raises(ModelLoadError, match="reward.pretrained"):
        CLIPScore(CLIPScoreConfig(pretrained=str(tmp_path / "missing"), local_files_only=True))
    with pytest.raises(ModelLoadError, match="yuvalkirstain/PickScore_v1"):
        PickScore(PickScoreConfig(local_files_only=True))
