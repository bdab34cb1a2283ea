"""Stopping a training run between two iterations on Ctrl-C or SIGTERM, so that it is saved
exactly where it stood (a mid-epoch checkpoint resumes to the same weights as a run never
stopped) instead of losing what it did since the last checkpoint."""
from __future__ import annotations

import signal
import sys
import threading


class StopRequested(KeyboardInterrupt):
    """Raised once the run has saved where a stop signal found it; `signum` is the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    """Inside `with GracefulStop(enabled) as stop:` the first SIGINT (Ctrl-C) or SIGTERM (`timeout`,
    a scheduler's preemption) only records itself in `stop.signum`: the training loop finishes its
    iteration, writes last.pt and raises StopRequested. A second signal raises KeyboardInterrupt
    at once (the last checkpoint then stands).

    Args:
        enabled: off (signals keep their usual effect) for several processes, whose ranks would
            otherwise stop at different iterations; always off outside the main thread, where
            Python cannot install handlers.
    """
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"cgnet train: {signal.Signals(signum).name}: stopping after this iteration to save the run "
              "where it is (once more to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False
