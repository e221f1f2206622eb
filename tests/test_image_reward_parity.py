"""ImageReward port vs the original ``image-reward`` 1.5 code, on the shared parity fixture.

The fixture (../shared/fixtures/image_reward) holds the original package's outputs on seeded-random
weights. Here the same weights are rebuilt by the fixture's recipe (and checked against its checksums),
saved as an ``ImageReward.pt`` state dict + ``med_config.json`` and loaded through the real loader.

The tokenizer needs the genuine bert-base-uncased ``vocab.txt`` (sha256 pinned below), which the fixture's
token ids were made with. It ships with the tests (``tests/data/bert-base-uncased/vocab.txt``, Apache-2.0);
``$REWARDSDS_BERT_VOCAB`` (a vocab.txt or a folder holding one) points elsewhere.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import shutil
import zlib
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, gpu_test
from rewardsds.rewards.config import AttentionKernel, ImageRewardConfig
from rewardsds.rewards.image_reward import ImageReward, set_blip_attention
from rewardsds.rewards.preprocess import from_pil

# shared/ sits beside the checkout (../shared), as in CI's fresh clone
FIXTURE = FIXTURES / "image_reward"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def _load(name: str):
    return json.loads((FIXTURE / name).read_text())


def _find_vocab() -> Path:
    """The genuine bert-base-uncased vocab.txt: $REWARDSDS_BERT_VOCAB, else the copy beside the tests."""
    env = os.environ.get("REWARDSDS_BERT_VOCAB")
    if env:
        p = Path(env)
        return p / "vocab.txt" if p.is_dir() else p
    return Path(__file__).parent / "data" / "bert-base-uncased" / "vocab.txt"


# ----------------------------------------------------------------------------------------- weight recipe
def recipe_tensor(key: str, spec: dict) -> torch.Tensor:
    """One tensor of the fixture's weight recipe (README "Weight recipe", rules in first-match order)."""
    shape = tuple(spec["shape"])
    if spec["kind"] == "buffer":  # only blip.text_encoder.embeddings.position_ids
        return torch.arange(shape[-1], dtype=torch.int64).expand(shape).clone()
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(key.encode("utf-8")))
    z = torch.randn(shape, generator=g, dtype=torch.float32)
    if re.match(r"^mlp\.layers\.\d+\.weight$", key):
        return z * torch.tensor(1.0 / math.sqrt(shape[1]), dtype=torch.float32)
    last = key[: -len(".weight")].split(".")[-1] if key.endswith(".weight") else ""
    if key.endswith(".weight") and "norm" in last.lower():
        return 1 + 0.1 * z
    return 0.02 * z  # ".bias" and every other tensor use the same 0.02 scale


def recipe_rule(key: str, spec: dict) -> str:
    if spec["kind"] == "buffer":
        return "buffer"
    if re.match(r"^mlp\.layers\.\d+\.weight$", key):
        return "mlp_weight"
    if key.endswith(".weight") and "norm" in key[: -len(".weight")].split(".")[-1].lower():
        return "norm_weight"
    return "bias" if key.endswith(".bias") else "tensor"


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    """Recipe weights, verified against key_shapes.json, saved as ImageReward.pt + med_config.json."""
    shapes = _load("key_shapes.json")
    assert len(shapes) == 625
    state = {}
    for key in sorted(shapes):
        spec = shapes[key]
        assert recipe_rule(key, spec) == spec["rule"], key
        t = recipe_tensor(key, spec)
        assert list(t.shape) == spec["shape"], key
        assert t.flatten()[:3].tolist() == pytest.approx(spec["first"], abs=0, rel=0), key
        assert t.double().sum().item() == pytest.approx(spec["sum"], rel=1e-9, abs=1e-6), key
        assert t.double().abs().sum().item() == pytest.approx(spec["abs_sum"], rel=1e-9, abs=1e-6), key
        state[key] = t
    assert sum(t.numel() for k, t in state.items() if shapes[k]["kind"] == "parameter") == 446_665_953
    folder = tmp_path_factory.mktemp("image_reward_ckpt")
    torch.save(state, folder / "ImageReward.pt")
    shutil.copy(FIXTURE / "med_config.json", folder / "med_config.json")
    del state
    gc.collect()
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    vocab = _find_vocab()
    assert vocab.is_file(), f"{vocab} is missing: the bert-base-uncased vocab.txt ships in tests/data (or set REWARDSDS_BERT_VOCAB)"
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == VOCAB_SHA256, f"{vocab} is not the bert-base-uncased vocab"
    folder = tmp_path_factory.mktemp("bert_tokenizer")
    shutil.copy(vocab, folder / "vocab.txt")
    return folder


@pytest.fixture(scope="module")
def reward(checkpoint_dir, tokenizer_dir) -> ImageReward:
    r = ImageReward(ImageRewardConfig(checkpoint=str(checkpoint_dir), tokenizer=str(tokenizer_dir), dtype="fp32",
                                      pil_exact=True, local_files_only=True, attention="eager"))
    yield r
    del r
    gc.collect()


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    from PIL import Image

    names = _load("expected_scores.json")["images"]
    return [from_pil([Image.open(FIXTURE / "images" / n).convert("RGB")]) for n in names]


@pytest.fixture(scope="module")
def image_embeds(reward, images) -> list[torch.Tensor]:
    with torch.no_grad():
        return [reward.model.encode_image(reward.preprocess(x)) for x in images]


@pytest.fixture(scope="module")
def pair_outputs(reward, image_embeds) -> dict:
    """Text [CLS], raw head output and reward of every (prompt, image) pair: {name: [prompt, image, ...]}."""
    prompts = _load("prompts.json")
    ids, mask = reward.tokenize(prompts)
    cls, raw = [], []
    with torch.no_grad():
        for emb in image_embeds:  # the three prompts of one image as one batch
            c = reward.model.text_features(ids, mask, emb.expand(len(prompts), -1, -1))
            cls.append(c)
            raw.append(reward.model.head(c).squeeze(-1))
    cls, raw = torch.stack(cls, 1), torch.stack(raw, 1)  # [prompt, image, ...]
    return {"cls": cls, "raw": raw, "reward": (raw - reward.model.mean) / reward.model.std}


# ----------------------------------------------------------------------------------------- fast tests
def test_token_ids_exact(tokenizer_dir):
    from rewardsds.rewards.image_reward import MAX_TEXT_LENGTH, load_image_reward_tokenizer

    tok = load_image_reward_tokenizer(str(tokenizer_dir), local_files_only=True)
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert len(tok) == 30524
    for entry in _load("token_ids.json")["prompts"]:
        enc = tok(entry["prompt"], padding="max_length", truncation=True, max_length=MAX_TEXT_LENGTH)
        assert enc["input_ids"] == entry["input_ids"]
        assert enc["attention_mask"] == entry["attention_mask"]
        assert tok.convert_ids_to_tokens(enc["input_ids"]) == entry["tokens"]


def test_preprocess_pil_exact(images):
    from rewardsds.rewards.image_reward import IMAGE_REWARD_TRANSFORM as t

    for x, entry in zip(images, _load("preprocess.json")["images"]):
        h, w = x.shape[-2:]
        rh, rw = t.resized_hw(h, w)
        top, left = t.crop_offsets(rh, rw)
        assert [rw, rh] == entry["resized_wh"] and [left, top] == entry["crop_left_top"]
        px = t.pil(x)[0]
        sample = torch.tensor(entry["sample_stride16"]["values"])
        assert (px[:, ::16, ::16] - sample).abs().max().item() < 1e-6, entry["image"]
        assert px.double().sum().item() == pytest.approx(entry["sum"], abs=1e-3)
        assert px.double().std().item() == pytest.approx(entry["std"], rel=1e-6)
        assert px.double().mean(dim=(1, 2)).tolist() == pytest.approx(entry["channel_mean"], abs=1e-7)


# ----------------------------------------------------------------------------------------- model tests (slow)
def test_intermediates(image_embeds, pair_outputs):
    fx = _load("intermediates.json")
    names = _load("expected_scores.json")["images"]
    for emb, entry in zip(image_embeds, fx["image_embeds"]):
        assert list(emb.shape) == entry["shape"]
        assert emb[0, 0, :8].tolist() == pytest.approx(entry["cls_first8"], abs=2e-5)
        assert emb[0, 1, :8].tolist() == pytest.approx(entry["token1_first8"], abs=2e-5)
        assert emb.double().mean().item() == pytest.approx(entry["mean"], abs=1e-6)
        assert emb.double().std().item() == pytest.approx(entry["std"], abs=1e-5)
    for pair in fx["pairs"]:
        p, i = pair["prompt_index"], names.index(pair["image"])
        assert pair_outputs["cls"][p, i, :8].tolist() == pytest.approx(pair["text_cls_first8"], abs=2e-5)
        assert pair_outputs["raw"][p, i].item() == pytest.approx(pair["mlp_raw"], abs=2e-5)


def test_all_pair_scores_match_original(pair_outputs):
    """|score - original| <= 2e-5 on all 18 pairs (fp32, CPU); the original list path is the reference."""
    expected = torch.tensor(_load("expected_scores.json")["scores"], dtype=torch.float64)
    err = (pair_outputs["reward"].double() - expected).abs().max().item()
    assert err <= 2e-5, err


def test_end_to_end_calls_match_original(reward, images):
    """The public call (tokenise, PIL preprocessing, model, normalisation): one batch with a prompt per image
    and one odd-sized single image."""
    fx = _load("expected_scores.json")
    prompts = fx["prompts"]
    same_size = [0, 2, 5]  # the 320x256 images
    got = reward(torch.cat([images[i] for i in same_size]), [prompts[0], prompts[1], prompts[2]])
    want = [fx["scores"][0][0], fx["scores"][1][2], fx["scores"][2][5]]
    assert got.tolist() == pytest.approx(want, abs=2e-5)
    assert reward(images[3], prompts[2]).item() == pytest.approx(fx["scores"][2][3], abs=2e-5)


@pytest.mark.slow
def test_sdpa_matches_eager(reward, images, pair_outputs):
    prompts = _load("prompts.json")
    set_blip_attention(reward.model, AttentionKernel.sdpa)
    try:
        got = reward(images[4].expand(3, -1, -1, -1), prompts)
    finally:
        set_blip_attention(reward.model, AttentionKernel.eager)
    assert (got - pair_outputs["reward"][:, 4]).abs().max().item() < 1e-5


@pytest.mark.slow
def test_tensor_path_close_to_pil(reward, images):
    """The training-loop path (on the device, on uint8 levels) vs the original's PIL path, on the two images whose
    pixels differ most (img1, img4). Measured over all 18 pairs: max 3.3e-3, mean 1.4e-3, same ranking (float
    throughout, as a differentiable reward computes: 4.2e-3, 1.8e-3)."""
    fx = _load("expected_scores.json")
    reward.cfg.pil_exact = False
    try:
        diffs = [abs(reward(images[i], fx["prompts"][0]).item() - fx["scores"][0][i]) for i in (1, 4)]
    finally:
        reward.cfg.pil_exact = True
    assert max(diffs) < 1e-2, diffs


@pytest.mark.slow
@gpu_test
def test_cuda_fp32_and_bf16_against_original(checkpoint_dir, tokenizer_dir, images):
    """On CUDA: fp32 (TF32 off) within 1e-4 of the original's CPU scores and the same ranking; bf16 within
    0.1 (measured on an H100: 0.051, mostly a common offset) with the same best and worst image per prompt."""
    fx = _load("expected_scores.json")
    expected = torch.tensor(fx["scores"])
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dtype, tol in (("fp32", 1e-4), ("bf16", 0.1)):
            r = ImageReward(ImageRewardConfig(checkpoint=str(checkpoint_dir), tokenizer=str(tokenizer_dir), dtype=dtype,
                                              pil_exact=True, local_files_only=True)).to("cuda")
            got = torch.tensor([[r(x.cuda(), p).item() for x in images] for p in fx["prompts"]])
            assert (got - expected).abs().max().item() < tol, (dtype, got - expected)
            if dtype == "fp32":
                assert torch.equal(got.argsort(dim=1), expected.argsort(dim=1))
            assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1)), dtype
            assert torch.equal(got.argmin(dim=1), expected.argmin(dim=1)), dtype
            del r
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
