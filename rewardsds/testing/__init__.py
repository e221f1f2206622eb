"""Random-init models of the real classes, saved in the published layouts, for tests and benchmarks (no downloads).

Every builder writes files (or builds modules) exactly as the real loaders expect them, so tests and benchmarks go
through the same loading code users hit:

- :mod:`rewardsds.testing.sd`: Stable Diffusion pipeline folders (``build_sd_pipeline``; ``tiny`` and the
  full-size ``sd21_base``) and a small CLIP tokenizer.
- :mod:`rewardsds.testing.mvdream`: an MVDream converted folder with its SD 2.1-layout base (``build_mvdream``).
- :mod:`rewardsds.testing.rewards`: ImageReward, CLIP, HPSv2 (open_clip layout) and aesthetic-head checkpoints.
"""

from rewardsds.testing.mvdream import build_mvdream
from rewardsds.testing.rewards import (
    CLIP_SIZES,
    IMAGE_REWARD_SIZES,
    build_random_clip_model,
    build_random_image_reward_model,
    clip_config,
    clip_image_processor,
    clip_tokenizer,
    image_reward_med_config,
    image_reward_original_shapes,
    open_clip_shapes,
    random_aesthetic_head,
    random_open_clip_state_dict,
    random_state_dict,
    save_random_clip,
    save_random_image_reward,
    write_bert_vocab,
)
from rewardsds.testing.sd import (
    PRESETS,
    SD21_BASE_TEXT,
    SD21_BASE_UNET,
    SD21_BASE_VAE,
    TINY_TEXT,
    TINY_UNET,
    TINY_VAE,
    build_sd_pipeline,
    save_in_dtype,
    write_clip_tokenizer,
)

__all__ = [
    "CLIP_SIZES", "IMAGE_REWARD_SIZES", "PRESETS", "SD21_BASE_TEXT", "SD21_BASE_UNET", "SD21_BASE_VAE", "TINY_TEXT",
    "TINY_UNET", "TINY_VAE", "build_mvdream", "build_random_clip_model", "build_random_image_reward_model",
    "build_sd_pipeline", "clip_config", "clip_image_processor", "clip_tokenizer", "image_reward_med_config",
    "image_reward_original_shapes", "open_clip_shapes", "random_aesthetic_head", "random_open_clip_state_dict",
    "random_state_dict", "save_in_dtype", "save_random_clip", "save_random_image_reward", "write_bert_vocab",
    "write_clip_tokenizer",
]
