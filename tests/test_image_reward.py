"""ImageReward: loading, key map, batching, attention paths, gradients and errors on tiny random checkpoints.

Exactness against the original package is in test_image_reward_parity.py (full size, marked slow).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES

from rewardsds.errors import ModelLoadError
from rewardsds.rewards.base import RewardInputError
from rewardsds.rewards.config import AttentionKernel, ImageRewardConfig
from rewardsds.rewards.image_reward import (
    ImageReward,
    ImageRewardModel,
    convert_image_reward_state_dict,
    image_reward_configs,
    set_blip_attention,
)
from rewardsds.testing import image_reward_med_config, image_reward_original_shapes, save_random_image_reward

FIXTURE = FIXTURES / "image_reward"
WORDS = ["a", "photo", "of", "red", "fox", "cat", "in", "the", "snow"]
PROMPTS = ["a photo of a red fox", "a cat in the snow", "a red cat"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return save_random_image_reward(tmp_path_factory.mktemp("ir"), "tiny", seed=0, words=WORDS)


@pytest.fixture(scope="module")
def reward(files) -> ImageReward:
    ckpt, tok = files
    return ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), dtype="fp32", local_files_only=True))


def _images(b: int = 3, h: int = 80, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_generated_layout_equals_the_original_checkpoint_layout():
    shapes = json.loads((FIXTURE / "key_shapes.json").read_text())
    assert image_reward_original_shapes("full") == {k: tuple(v["shape"]) for k, v in shapes.items()}


def test_key_map_loads_every_tensor_of_the_full_architecture():
    """All 625 original keys map onto transformers' modules with matching shapes (meta tensors, no memory)."""
    sd = {k: torch.empty(s, device="meta") for k, s in image_reward_original_shapes("full").items()}
    vision_cfg, text_cfg = image_reward_configs(sd, image_reward_med_config("full"))
    assert (vision_cfg.num_attention_heads, vision_cfg.layer_norm_eps, vision_cfg.image_size) == (16, 1e-6, 224)
    assert (text_cfg.num_attention_heads, text_cfg.is_decoder, text_cfg.encoder_hidden_size) == (12, True, 1024)
    with torch.device("meta"):
        model = ImageRewardModel(vision_cfg, text_cfg)
    vision, text, head = convert_image_reward_state_dict(sd)
    for module, part in ((model.vision, vision), (model.text, text), (model.head, head)):
        result = module.load_state_dict(part, strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 446_665_953 - 256 * (1024 + 768 + 2)  # all but the unused ITC projections


def test_loading_paths_agree(files, reward):
    ckpt, tok = files
    by_file = ImageReward(ImageRewardConfig(checkpoint=str(ckpt / "ImageReward.pt"), tokenizer=str(tok), dtype="fp32",
                                            local_files_only=True))
    by_med = ImageReward(ImageRewardConfig(checkpoint=str(ckpt / "ImageReward.pt"),
                                           med_config=str(ckpt / "med_config.json"), tokenizer=str(tok), dtype="fp32",
                                           local_files_only=True))
    x = _images()
    ref = reward(x, PROMPTS)
    assert torch.equal(by_file(x, PROMPTS), ref) and torch.equal(by_med(x, PROMPTS), ref)
    assert ref.dtype == torch.float32 and ref.shape == (3,)


def test_batch_equals_single_images_and_prompts_matter(reward):
    x = _images()
    batched = reward(x, PROMPTS)
    single = torch.cat([reward(x[i : i + 1], PROMPTS[i]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(reward(x[:1], PROMPTS[0]), reward(x[:1], PROMPTS[1]), atol=1e-6)
    assert torch.allclose(reward(x, "a red cat"), reward(x, ["a red cat"] * 3))


def test_tokenizer_adds_blip_tokens_and_caches(reward):
    ids, mask = reward.tokenize(["a photo of a red fox"])
    assert ids.shape == (1, 35) and mask[0].sum() == 8  # [CLS] 6 words [SEP]
    assert ids[0, 0].item() == reward.tokenizer.cls_token_id  # [CLS] is kept, not replaced by [ENC]
    n = len(reward.tokenizer)
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n - 2, n - 1]
    reward.tokenize(["a photo of a red fox", "a photo of a red fox"])
    assert "a photo of a red fox" in reward._tokens._data


def test_long_prompt_truncation_is_reported(reward, caplog):
    import logging

    prompt = " ".join(["a red fox in the snow"] * 8)  # 48 words; ImageReward reads 33 tokens
    with caplog.at_level(logging.WARNING, logger="rewardsds"):
        reward.tokenize([prompt, prompt])
    notes = [r.getMessage() for r in caplog.records if "tokens long" in r.getMessage()]
    assert len(notes) == 1 and "is 48 tokens long" in notes[0] and "reads 33 (35 with its start and end tokens)" in notes[0], notes
    assert "drops 'in the snow a red fox in the snow a red fox in the snow'" in notes[0], notes[0]


def test_sdpa_equals_eager(reward):
    x = _images()
    set_blip_attention(reward.model, AttentionKernel.eager)
    eager = reward(x, PROMPTS)
    set_blip_attention(reward.model, AttentionKernel.sdpa)
    sdpa = reward(x, PROMPTS)
    assert torch.allclose(eager, sdpa, atol=1e-5), (eager, sdpa)


def test_pil_exact_close_to_tensor_path(files):
    ckpt, tok = files
    exact = ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), dtype="fp32", pil_exact=True,
                                          local_files_only=True))
    fast = ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), dtype="fp32", local_files_only=True))
    x = _images().mul(255).round().div(255)
    assert torch.allclose(exact(x, PROMPTS), fast(x, PROMPTS), atol=5e-3)
    with pytest.raises(ValueError, match="pil_exact"):
        ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), pil_exact=True, differentiable=True,
                                      local_files_only=True))


def test_differentiable_path_gives_image_gradients(files, reward):
    ckpt, tok = files
    diff = ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), dtype="fp32", differentiable=True,
                                         local_files_only=True))
    x = _images().requires_grad_(True)
    scores = diff(x, PROMPTS, grad=True)
    scores.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in diff.model.parameters())  # the reward stays frozen
    with pytest.raises(RewardInputError, match="not differentiable"):
        reward(_images(), PROMPTS, grad=True)


def test_bf16_runs_close_to_fp32(files, reward):
    ckpt, tok = files
    half = ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), dtype="bf16", local_files_only=True))
    assert half.model.vision.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert half.model.head.layers[0].weight.dtype == torch.float32
    x = _images()
    out = half(x, PROMPTS)
    assert out.dtype == torch.float32
    assert torch.allclose(out, reward(x, PROMPTS), atol=0.05)


@pytest.mark.parametrize(
    "images, prompts, match",
    [
        (torch.rand(2, 4, 32, 32), ["a", "b"], "shape"),
        (torch.rand(2, 32, 32, 3), ["a", "b"], "shape"),
        (torch.rand(3, 32, 32), ["a"], "shape"),
        (torch.rand(2, 3, 32, 32) * 2 - 1, ["a", "b"], r"\[0, 1\]"),
        (torch.full((1, 3, 32, 32), float("nan")), ["a"], r"\[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), ["a"], "float"),
        (torch.rand(2, 3, 32, 32), ["a", "b", "c"], "2 images but 3 prompts"),
    ],
)
def test_bad_input_is_rejected(reward, images, prompts, match):
    with pytest.raises(RewardInputError, match=match):
        reward(images, prompts)


def test_missing_files_name_the_file_source_and_key(tmp_path, files):
    _, tok = files
    with pytest.raises(ModelLoadError) as err:
        ImageReward(ImageRewardConfig(checkpoint=str(tmp_path), tokenizer=str(tok), local_files_only=True))
    assert "ImageReward.pt" in str(err.value) and "reward.checkpoint" in str(err.value)
    with pytest.raises(ModelLoadError) as err:
        ImageReward(ImageRewardConfig(checkpoint="THUDM/ImageReward", tokenizer=str(tok), local_files_only=True))
    msg = str(err.value)
    assert "THUDM/ImageReward/ImageReward.pt" in msg and "reward.checkpoint=/path/to/local/folder" in msg
    ckpt, _ = files
    with pytest.raises(ModelLoadError, match="reward.tokenizer"):
        ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tmp_path / "nope"), local_files_only=True))


def test_foreign_checkpoint_and_wrong_vocab_are_rejected(tmp_path, files):
    ckpt, tok = files
    sd = torch.load(ckpt / "ImageReward.pt", weights_only=True)
    sd["blip.visual_encoder.blocks.0.attn.extra.weight"] = torch.zeros(1)
    (tmp_path / "bad").mkdir()
    torch.save(sd, tmp_path / "bad" / "ImageReward.pt")
    with pytest.raises(ModelLoadError, match="blocks.0.attn.extra.weight"):
        ImageReward(ImageRewardConfig(checkpoint=str(tmp_path / "bad" / "ImageReward.pt"), med_config=str(ckpt),
                                      tokenizer=str(tok), local_files_only=True))
    from rewardsds.testing import write_bert_vocab

    small = write_bert_vocab(tmp_path / "small_vocab", 200, WORDS)
    with pytest.raises(ModelLoadError, match="bert-base-uncased vocabulary"):
        ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(small), local_files_only=True))


def test_compile_option_runs_eager_on_cpu(files, reward):
    """compile=True only compiles for CUDA inputs (CUDA graphs); on CPU it is the eager model, same scores."""
    ckpt, tok = files
    compiled = ImageReward(ImageRewardConfig(checkpoint=str(ckpt), tokenizer=str(tok), dtype="fp32", compile=True,
                                             local_files_only=True))
    x = _images()
    assert torch.equal(compiled(x, PROMPTS), reward(x, PROMPTS))
