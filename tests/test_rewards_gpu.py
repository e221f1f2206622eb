"""Reward models on CUDA: device/dtype paths against the CPU fp32 reference, gradients, and the speed budget.

Run on a GPU machine: ``python -m pytest -m gpu tests/test_rewards_gpu.py``. Weights are random (no
downloads); what is checked:

- the tensor preprocessing gives the same pixels on CUDA as on CPU;
- tiny CLIP / aesthetic / ImageReward checkpoints loaded from disk score the same on CUDA (fp32, TF32 off)
  as on CPU, and bf16 stays close;
- full-size ImageReward: SDPA equals eager in fp32, bf16 keeps the ranking of 8 candidates, gradients reach
  the images in bf16;
- compile=True (CUDA graphs) matches eager bf16 scores.

The speed budget (ImageReward bf16 with compile=True, 8 images of 512x512, under 15 ms on an H100/H200) is
measured by ``scripts/bench_rewards.py --compile`` (``target_ms`` / ``meets_target`` in its JSON), not here.
"""

from __future__ import annotations


import pytest
import torch

from rewardsds.rewards.aesthetic import AestheticReward
from rewardsds.rewards.clip import CLIPScore
from rewardsds.rewards.config import AestheticRewardConfig, AttentionKernel, CLIPScoreConfig, ImageRewardConfig
from rewardsds.rewards.image_reward import ImageReward, load_image_reward_tokenizer, set_blip_attention
from rewardsds.schema import DType
from rewardsds.rewards.preprocess import ImageTransform
from rewardsds.testing import (
    build_random_image_reward_model,
    random_aesthetic_head,
    save_random_clip,
    save_random_image_reward,
    write_bert_vocab,
)

from conftest import requires_cuda  # noqa: E402  (the project's one GPU guard)

pytestmark = [pytest.mark.gpu, requires_cuda]
PROMPT = "a photo of a red fox in the snow"


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _smooth(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1)


def test_tensor_preprocessing_same_on_cuda():
    t = ImageTransform(size=224, crop=224)
    x = _smooth(4, 512)
    assert (t(x.cuda()).cpu() - t(x)).abs().max().item() < 1e-5


def test_tiny_rewards_cuda_match_cpu(tmp_path):
    clip = save_random_clip(tmp_path / "clip", "tiny")
    torch.save(random_aesthetic_head("mlp", dim=16), tmp_path / "head.pth")
    ckpt, tok = save_random_image_reward(tmp_path / "ir", "tiny", words=PROMPT.split())
    rewards = [
        lambda **kw: CLIPScore(CLIPScoreConfig(pretrained=str(clip), local_files_only=True, **kw)),
        lambda **kw: AestheticReward(AestheticRewardConfig(pretrained=str(clip), head_type="mlp",
                                                           head=str(tmp_path / "head.pth"), local_files_only=True,
                                                           **kw)),
        lambda **kw: ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), local_files_only=True,
                                                   **kw)),
    ]
    x = _smooth(4, 96)
    for make in rewards:
        ref = make(dtype="fp32")(x, PROMPT)
        gpu = make(dtype="fp32").to("cuda")(x.cuda(), PROMPT)
        half = make(dtype="auto").to("cuda")
        assert half.dtype == torch.bfloat16
        assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), ref, atol=1e-4)
        assert torch.allclose(half(x.cuda(), PROMPT).cpu(), ref, atol=0.05)


@pytest.fixture(scope="module")
def full_image_reward(tmp_path_factory):
    tok_dir = write_bert_vocab(tmp_path_factory.mktemp("bert"), 30522, PROMPT.split())
    tok = load_image_reward_tokenizer(str(tok_dir), local_files_only=True)
    model = build_random_image_reward_model("full", seed=0, device="cuda")
    return ImageReward.from_parts(ImageRewardConfig(dtype="fp32", attention="sdpa"), model, tok).to("cuda")


def test_full_image_reward_sdpa_eager_and_bf16(full_image_reward):
    r = full_image_reward
    x = _smooth(8, 512).cuda()
    r.cfg.dtype = DType.fp32
    r.to("cuda")
    sdpa = r(x, PROMPT)
    set_blip_attention(r.model, AttentionKernel.eager)
    eager = r(x, PROMPT)
    set_blip_attention(r.model, AttentionKernel.sdpa)
    assert (sdpa - eager).abs().max().item() < 1e-4
    r.cfg.dtype = DType.bf16
    r.to("cuda")
    bf16 = r(x, PROMPT)
    assert (bf16 - sdpa).abs().max().item() < 0.1, (bf16, sdpa)
    assert torch.equal(bf16.argmax(), sdpa.argmax())  # the best candidate is the same


def test_full_image_reward_gradients_bf16(full_image_reward):
    r = full_image_reward
    r.cfg.dtype, r.cfg.differentiable = DType.bf16, True
    r.to("cuda")
    try:
        x = _smooth(2, 512).cuda().requires_grad_(True)
        r(x, PROMPT, grad=True).sum().backward()
    finally:
        r.cfg.differentiable = False
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_compiled_image_reward_matches_eager(full_image_reward):
    """compile=True (CUDA graphs) gives the eager scores in bf16 and returns fresh tensors on every call."""
    r = full_image_reward
    r.cfg.dtype = DType.bf16
    r.to("cuda")
    compiled = ImageReward.from_parts(ImageRewardConfig(dtype="bf16", compile=True), r.model, r.tokenizer).to("cuda")
    x, y = _smooth(8, 512, seed=1).cuda(), _smooth(8, 512, seed=2).cuda()
    first, second = compiled(x, PROMPT), compiled(y, PROMPT)
    assert (first - r(x, PROMPT)).abs().max().item() < 0.05
    assert (second - r(y, PROMPT)).abs().max().item() < 0.05
    assert not torch.equal(first, second)  # the first result was not overwritten by the second replay
