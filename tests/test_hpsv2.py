"""HPSv2.1 on transformers' CLIPModel: open_clip -> HF key conversion on a tiny open_clip-layout state dict.

The reference below evaluates the open_clip state dict directly with open_clip's computation (LND layout,
``nn.MultiheadAttention`` on the packed ``in_proj`` weights, causal text mask, ``ln_post`` on the class
token, ``x @ proj``, pooling at the argmax token id), written from open_clip's documented model, so a
wrong split, a missing transpose or a misplaced LayerNorm in the conversion shows up as a mismatch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rewardsds.errors import ModelLoadError
from rewardsds.rewards.base import RewardInputError
from rewardsds.rewards.config import HPSv2Config
from rewardsds.rewards.hpsv2 import HPSV2_FILE, HPSv2, convert_open_clip_state_dict
from rewardsds.testing import CLIP_SIZES, open_clip_shapes, random_open_clip_state_dict, save_random_clip

PROMPTS = ["a photo of a red fox", "a cat in the snow"]


def _open_clip_transformer(x: torch.Tensor, sd: dict, prefix: str, layers: int, heads: int, mask=None) -> torch.Tensor:
    """open_clip ``Transformer`` of pre-LN ``ResidualAttentionBlock``s on [L, N, D] input."""
    d = x.shape[-1]
    for i in range(layers):
        p = f"{prefix}{i}."
        attn = nn.MultiheadAttention(d, heads)
        attn.in_proj_weight.data.copy_(sd[p + "attn.in_proj_weight"])
        attn.in_proj_bias.data.copy_(sd[p + "attn.in_proj_bias"])
        attn.out_proj.weight.data.copy_(sd[p + "attn.out_proj.weight"])
        attn.out_proj.bias.data.copy_(sd[p + "attn.out_proj.bias"])
        h = F.layer_norm(x, (d,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (d,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                     sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x = x + h
    return x


@torch.no_grad()
def open_clip_encode_image(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    v = CLIP_SIZES["tiny"]["vision"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=v["patch_size"])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    d = x.shape[-1]
    x = F.layer_norm(x, (d,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _open_clip_transformer(x.permute(1, 0, 2), sd, "visual.transformer.resblocks.", v["num_hidden_layers"],
                               v["num_attention_heads"]).permute(1, 0, 2)
    pooled = F.layer_norm(x[:, 0], (d,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return F.normalize(pooled @ sd["visual.proj"], dim=-1)


@torch.no_grad()
def open_clip_encode_text(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    t = CLIP_SIZES["tiny"]["text"]
    n = tokens.shape[1]
    x = F.embedding(tokens, sd["token_embedding.weight"]) + sd["positional_embedding"][:n]
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = _open_clip_transformer(x.permute(1, 0, 2), sd, "transformer.resblocks.", t["num_hidden_layers"],
                               t["num_attention_heads"], mask).permute(1, 0, 2)
    x = F.layer_norm(x, (x.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"])
    return F.normalize(x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ sd["text_projection"], dim=-1)


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    """An HPSv2-style checkpoint ({"state_dict": open_clip keys}) and a processor folder of the same size."""
    root = tmp_path_factory.mktemp("hps")
    proc = save_random_clip(root / "processor", "tiny")
    sd = random_open_clip_state_dict("tiny", seed=1)
    (root / "ckpt").mkdir()
    torch.save({"state_dict": {k: v.half() for k, v in sd.items()}, "epoch": 1}, root / "ckpt" / HPSV2_FILE)
    return root / "ckpt", proc, {k: v.half().float() for k, v in sd.items()}


def test_conversion_covers_the_documented_layout():
    sd = random_open_clip_state_dict("tiny")
    out = convert_open_clip_state_dict({"module." + k: v for k, v in sd.items()})
    from transformers import CLIPModel

    from rewardsds.testing import clip_config

    expected = set(CLIPModel(clip_config("tiny")).state_dict()) - {
        "text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}
    assert set(out) == expected
    assert torch.equal(out["visual_projection.weight"], sd["visual.proj"].T)
    q, k, v = (out[f"text_model.encoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(torch.cat([q, k, v]), sd["transformer.resblocks.1.attn.in_proj_weight"])
    with pytest.raises(KeyError, match="visual.attn_pool.query"):
        convert_open_clip_state_dict({**sd, "visual.attn_pool.query": torch.zeros(1)})


def test_vit_h_14_layout_counts():
    shapes = open_clip_shapes("vit-h-14")
    n = sum(torch.Size(s).numel() for s in shapes.values())
    assert n == 986_109_441  # open_clip ViT-H-14 (laion2B-s32B-b79K) parameter count
    assert shapes["visual.positional_embedding"] == (257, 1280) and shapes["text_projection"] == (1024, 1024)


def test_hpsv2_matches_open_clip_computation(hps_files):
    ckpt, proc, sd = hps_files
    reward = HPSv2(HPSv2Config(checkpoint=str(ckpt), processor=str(proc), dtype="fp32", local_files_only=True))
    x = torch.rand(2, 3, 45, 40, generator=torch.Generator().manual_seed(0))
    pixels = reward.preprocess(x)
    img = open_clip_encode_image(sd, pixels)
    enc = reward.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    tokens = enc["input_ids"] * enc["attention_mask"]  # open_clip pads with id 0 after the end token
    txt = open_clip_encode_text(sd, tokens)
    assert torch.allclose(reward.image_embeds(x), img, atol=1e-5)
    assert torch.allclose(reward.text_embeds(PROMPTS), txt, atol=1e-5)
    assert torch.allclose(reward(x, PROMPTS), (img * txt).sum(-1), atol=1e-5)


def test_hpsv2_preprocessing_is_the_float_tensor_resize(hps_files):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    ckpt, proc, _ = hps_files
    reward = HPSv2(HPSv2Config(checkpoint=str(ckpt / HPSV2_FILE), processor=str(proc), dtype="fp32",
                               local_files_only=True))
    x = torch.rand(1, 3, 45, 40)

    def reference(img):  # the reference reads a PIL image (uint8 levels), then ToTensor, Resize and CenterCrop on floats
        ref = TF.center_crop(TF.resize(img, 32, interpolation=InterpolationMode.BICUBIC, antialias=True), 32)
        return TF.normalize(ref, reward.transform.mean, reward.transform.std)

    assert torch.allclose(reward.preprocess(x), reference(x.mul(255).round().div(255)), atol=1e-5)
    assert not torch.allclose(reward.preprocess(x), reference(x), atol=1e-5)  # the levels matter at this tolerance
    differentiable = HPSv2(HPSv2Config(checkpoint=str(ckpt / HPSV2_FILE), processor=str(proc), dtype="fp32",
                                       local_files_only=True, differentiable=True))
    assert torch.allclose(differentiable.preprocess(x), reference(x), atol=1e-5)  # float throughout: gradients flow


def test_hpsv2_errors(tmp_path, hps_files):
    ckpt, proc, sd = hps_files
    with pytest.raises(ModelLoadError) as err:
        HPSv2(HPSv2Config(processor=str(proc), local_files_only=True))
    assert f"xswu/HPSv2/{HPSV2_FILE}" in str(err.value) and "reward.checkpoint" in str(err.value)
    torch.save({"state_dict": {**sd, "visual.head.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="visual.head.weight"):
        HPSv2(HPSv2Config(checkpoint=str(tmp_path / "bad.pt"), processor=str(proc), local_files_only=True))
    reward = HPSv2(HPSv2Config(checkpoint=str(ckpt), processor=str(proc), local_files_only=True))
    with pytest.raises(RewardInputError, match="prompts"):
        reward(torch.rand(2, 3, 32, 32), ["a", "b", "c"])
    with pytest.raises(RewardInputError, match=r"\[0, 1\]"):
        reward(torch.rand(1, 3, 32, 32) + 1, ["a"])
