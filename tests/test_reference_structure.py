"""The reference-structure baseline (rewardsds.reference.reference_structure_step) against the fast path.

In fp32 on tiny random SD + tiny random ImageReward (PIL preprocessing, as the reference), with the
reference's lookahead start (the grid point below t), both compute the same rewards, select the same
candidates and give the same gradient up to the documented factor M = n_max + n_min: the reference divides
each kept candidate's loss by the number kept, our min_max strategy does not.
"""

import pytest
import torch

from rewardsds import ddim
from rewardsds.losses.config import SDSLossConfig
from rewardsds.losses.sds import SDSLoss
from rewardsds.reference import reference_structure_step
from rewardsds.strategies import MinMaxStrategy
from rewardsds.strategies.config import MinMaxStrategyConfig
from step_helpers import make_engine, step_loss

PROMPT = "a photo of a red fox"


@pytest.fixture(scope="module")
def tiny_image_reward(tmp_path_factory):
    from rewardsds.rewards.config import ImageRewardConfig
    from rewardsds.rewards.image_reward import ImageReward, load_image_reward_tokenizer
    from rewardsds.testing import build_random_image_reward_model, write_bert_vocab

    model = build_random_image_reward_model("tiny", seed=1)
    folder = tmp_path_factory.mktemp("bert")
    tok = load_image_reward_tokenizer(str(write_bert_vocab(folder, model.text.config.vocab_size - 2, PROMPT.split())), local_files_only=True)
    return ImageReward.from_parts(ImageRewardConfig(dtype="fp32", pil_exact=True), model, tok).to("cpu")


class CountingReward:
    """Records the batch size of every call (the reference scores one image per call)."""

    def __init__(self, reward):
        self.reward, self.batches = reward, []

    def __call__(self, images, prompts, **kw):
        self.batches.append(images.shape[0])
        return self.reward(images, prompts, **kw)


def _fast(prior, reward, z0, t, n, step, guidance, k):
    eng = make_engine(prior, reward, steps=k, guidance=7.5, grid="leading", start="grid", seed=0)
    z = z0.clone().requires_grad_(True)
    out = step_loss(SDSLoss(SDSLossConfig(guidance_scale=guidance)), prior, eng, z, t, n, MinMaxStrategy(MinMaxStrategyConfig()),
                    step=step, prompt=PROMPT)
    loss = out.total()
    loss.backward()
    return out, loss, z.grad


@pytest.mark.parametrize("t, n", [(700, 6), (263, 5)])
def test_reference_structure_equals_fast_path_in_fp32(tiny_sd_prior, tiny_image_reward, t, n):
    p, k, step, guidance = tiny_sd_prior, 15, 3, 100.0
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    out, loss, grad = _fast(p, tiny_image_reward, z0, t, n, step, guidance, k)

    counting = CountingReward(tiny_image_reward)
    zr = z0.clone().requires_grad_(True)
    ref = reference_structure_step(p, counting, zr, t, n, step=step, seed=0, text=p.text_cond([PROMPT], ""), prompt=PROMPT,
                                   guidance_scale=guidance, lookahead_steps=k, lookahead_guidance=7.5)
    ref.loss.backward()

    # structure: one image per reward call; the lookahead visits the grid points <= t; SDS only for the M kept
    assert counting.batches == [1] * n
    assert ref.lookahead_calls == [g for g in ddim.grid("leading", 15) if g <= t]
    m = 4
    assert ref.evals == 2 * n * len(ref.lookahead_calls) + 2 * m
    # same rewards and selections
    assert torch.allclose(out.candidates.rewards, ref.rewards, atol=1e-5), (out.candidates.rewards, ref.rewards)
    assert float(ref.rewards.max() - ref.rewards.min()) > 1e-4  # distinct rewards: the selection is not a tie-break
    w = out.weights
    assert set(torch.nonzero(w > 0).flatten().tolist()) == set(ref.top.tolist())
    assert set(torch.nonzero(w < 0).flatten().tolist()) == set(ref.bottom.tolist())
    # the reference's weights: 0.9 / (2 M) and -0.1 / (2 M); ours are M times larger, and so are loss and gradient
    assert torch.allclose(ref.weights[ref.top], torch.full((2,), 0.9 / 8))
    assert torch.allclose(ref.weights[ref.bottom], torch.full((2,), -0.1 / 8))
    assert torch.allclose(w, m * ref.weights, atol=1e-7)
    assert torch.allclose(loss, m * ref.loss, rtol=1e-5)
    assert float(grad.abs().sum()) > 0
    rel = float((grad - m * zr.grad).norm() / grad.norm())
    assert rel < 1e-5, rel


def test_reference_structure_rejects_what_the_reference_cannot_do(tiny_sd_prior, tiny_image_reward):
    p = tiny_sd_prior
    z = torch.randn(1, 4, 8, 8)
    text = p.text_cond([PROMPT], "")
    with pytest.raises(ValueError, match="n >= n_max"):
        reference_structure_step(p, tiny_image_reward, z, 500, 3, 0, 0, text, PROMPT)
    with pytest.raises(ValueError, match="lookahead_steps"):
        reference_structure_step(p, tiny_image_reward, z, 500, 4, 0, 0, text, PROMPT, lookahead_steps=0)
