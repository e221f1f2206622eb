"""A second CUDA stream for work that may run beside the current stream's (the candidates' decode and reward
beside the next chunk's lookahead); on other devices the work runs in order, where it is written."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor


class SideStream:
    """Queues blocks on a second CUDA stream of ``device``, each after everything queued so far on the current one.

    ``with side.after_current(inputs):`` runs the block on the side stream once the current stream has produced
    ``inputs``; :meth:`join` makes the current stream wait for every block queued so far. Tensors crossing streams
    are recorded on the stream that uses them, so the caching allocator never hands their memory out while that
    stream still reads it. Off CUDA both are no-ops: the blocks run in place, in program order.

    A block's own allocations that outlive it other than through ``join`` (a reward's cache of text embeddings,
    filled the first time a prompt is scored on the side stream) belong to the side stream: if the current stream
    reads such a tensor too, the cache must not free it before that read has run. The rewards' caches hold far
    more prompts than a run scores, so their entries are not freed while a run uses them.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._side: Optional[torch.cuda.Stream] = None

    @property
    def active(self) -> bool:
        return self.device.type == "cuda"

    @contextlib.contextmanager
    def after_current(self, *inputs: Tensor) -> Iterator[None]:
        if not self.active:
            yield
            return
        current = torch.cuda.current_stream(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(current)
        for x in inputs:  # made on the current stream, read on the side one
            x.record_stream(self._side)
        with torch.cuda.stream(self._side):
            yield

    def join(self, *outputs: Tensor) -> None:
        """The current stream waits for the side stream; ``outputs`` (made there) are recorded for the current one."""
        if not self.active or self._side is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._side)
        for x in outputs:
            x.record_stream(current)
