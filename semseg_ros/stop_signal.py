"""SIGINT / SIGTERM as a stop flag, for the commands that must finish what they write.

``semseg replay`` and ``semseg record`` initialise rclpy without its signal handlers (rclpy's
would shut the context down at once: no last acknowledgements for the replay, no bag index
for the recorder) and install this one instead: their loops check the flag, then close
properly and exit 0.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopSignal:
    """SIGINT / SIGTERM set :attr:`event` instead of killing the process mid-write.

    A context manager: handlers are installed on enter (main thread only) and the previous
    ones restored on exit. ``stop()`` sets the flag too.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.event.set()

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def is_set(self) -> bool:
        return self.event.is_set()

    def stop(self) -> None:
        self.event.set()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop came first."""
        return self.event.wait(max(seconds, 0.0))
