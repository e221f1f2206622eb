"""Lightning callbacks: atomic periodic checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl

from rewardsds.utils.io import atomic_path


class AtomicCheckpoint(pl.Callback):
    """Write ``<dir>/last.ckpt`` every ``every`` steps, at the end, and when a stop was requested, via a temporary
    file + rename.

    A crash while writing leaves the previous checkpoint intact; ``resume=<run dir or ckpt>`` continues. With ``stop``
    (:class:`rewardsds.lifecycle.StopRequests`), a signal received during a step makes this step's end write the
    checkpoint and stop the trainer.
    """

    def __init__(self, dirpath: str | Path, every: int, stop: Any = None):
        self.dirpath = Path(dirpath)
        self.every = int(every)
        self.stop = stop
        self.saved_step: Optional[int] = None  # the step of the checkpoint this session last wrote

    @property
    def last(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: pl.Trainer) -> Path:
        with atomic_path(self.last) as tmp:
            trainer.save_checkpoint(tmp)
        return self.last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        it = pl_module.iteration
        stopping = self.stop is not None and self.stop.requested is not None
        if (self.every and it % self.every == 0) or it >= pl_module.total_steps or stopping:
            self.save(trainer)
            self.saved_step = it
        if stopping:
            trainer.should_stop = True
