"""Process plumbing shared by ``semseg run|replay|record``, free of cyclonedds.

The ``--loopback`` flag, SIGINT/SIGTERM as a stop flag, and loading the DDS modules with an
error that says how to install them.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType
from typing import Any


def load_dds(prog: str) -> ModuleType | None:
    """:mod:`semseg_ros.transport.dds`, or None after printing how to install cyclonedds."""
    try:
        from semseg_ros.transport import dds
    except ImportError as err:
        print(
            f'{prog}: error: the DDS transport needs the cyclonedds package ({err}); install '
            "it with: pip install 'cyclonedds>=0.10' (or pip install -e '.[dds]')",
            file=sys.stderr,
        )
        return None
    return dds


def add_dds_arguments(parser: Any) -> None:
    """``--loopback``: the flag every DDS command takes."""
    parser.add_argument(
        '--loopback',
        action='store_true',
        help='keep all DDS traffic on 127.0.0.1 (unicast discovery; overrides CYCLONEDDS_URI). '
        'The domain id is ROS_DOMAIN_ID (default 0).',
    )


def require_positive(parser: Any, args: Any, *names: str) -> None:
    """``parser.error`` for the first of the options ``names`` that is set but not > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f'--{name.replace("_", "-")} must be > 0, got {value}')


class StopSignal:
    """SIGINT / SIGTERM set :attr:`event` instead of killing the process mid-write.

    A context manager: handlers are installed on enter and the previous ones restored on
    exit, so a command can close its bag / participant cleanly. ``stop()`` sets it too.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.event.set()

    def __enter__(self) -> StopSignal:
        import signal

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

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
