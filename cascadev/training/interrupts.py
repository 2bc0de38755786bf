"""Ctrl-C and preemption (SIGINT, SIGTERM) during training: finish the step, save, then stop.

The handler only records the signal; the training loop asks :meth:`StopRequest.agreed` after every
optimizer step, saves a checkpoint and raises :class:`~cascadev.errors.Interrupted`. With several
processes the ranks agree through a max-reduction of the recorded signal number, so they all stop
after the same step even when only one of them was signalled. A second signal stops at once
(KeyboardInterrupt): the unfinished ``.checkpoint-*.partial`` folder is removed by the next run.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """``with StopRequest() as stop:`` installs the handlers (main thread only) and restores them on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, accelerator: Accelerator) -> int:
        """The signal every process stops for (0: go on); a collective call when there are several."""
        if accelerator.num_processes == 1:
            return self.signum
        mine = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.reduce(mine, reduction="max").item())
