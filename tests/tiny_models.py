"""Thin test aliases of rewardsds.testing (random-init models saved through save_pretrained)."""

from pathlib import Path

from rewardsds.testing import build_sd_pipeline, write_clip_tokenizer  # noqa: F401


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    return build_sd_pipeline(folder, "tiny", prediction_type=prediction_type, seed=seed)
