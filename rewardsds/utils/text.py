"""Prompt tokenisation helpers shared by the priors and the rewards."""

from __future__ import annotations

import logging
from typing import Any, Optional

log = logging.getLogger("rewardsds")

_reported: set[tuple[str, str, int]] = set()


def report_truncation(tokenizer: Any, prompt: str, max_length: int, model: str) -> Optional[str]:
    """Log once (per model, prompt and limit) that ``prompt`` is longer than a text encoder reads, and what it drops.

    Text encoders read a fixed number of tokens (CLIP 77, ImageReward's BERT 35, start and end tokens included);
    the tokenizer then drops the rest of the prompt, as the reference implementations do, which would otherwise
    go unnoticed. The warning goes through ``logging``, so it also lands in a headless run's log file.

    Args:
        tokenizer: a transformers tokenizer.
        prompt: the text to be encoded.
        max_length: tokens the encoder reads, special tokens included.
        model: the model's name in the message (``"the prior's text encoder"``).

    Returns:
        The dropped text, or None when the prompt fits.
    """
    # verbose=False: no "sequence length is longer than the maximum" notice from transformers; this one says more
    tokens = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    kept = max(0, int(max_length) - tokenizer.num_special_tokens_to_add(pair=False))
    if len(tokens) <= kept:
        return None
    dropped = tokenizer.decode(tokens[kept:], skip_special_tokens=True).strip()
    key = (model, prompt, int(max_length))
    if key not in _reported:
        _reported.add(key)
        log.warning("prompt %r is %d tokens long, but %s reads %d (%d with its start and end tokens): it keeps the first %d "
                    "and drops %r. Shorten the prompt to use all of it.", prompt, len(tokens), model, kept, max_length, kept, dropped)
    return dropped
