"""``semseg_node``: the ROS 2 node process (``ros2 run semseg_ros semseg_node``).

:mod:`semseg_ros.node.ros_node` is the rclpy node itself. This module is its entry point and
stays light on purpose: it takes SIGINT and SIGTERM before the heavy imports (rclpy, numpy,
OpenCV, the inference backend: about half a second), so that a stop at any moment of the
start-up exits 0 quietly instead of printing an import traceback or dying by the signal.

During the imports the handler exits at once (nothing exists yet that needs closing); after
them it only records the request. It never raises, because an exception raised from a signal
handler lands wherever the main thread happens to be (an import lock's callback, a
``finally`` block) and can be lost there. rclpy's own handlers are not installed: they would
shut the context down at once. ``run`` looks at the request before it starts rclpy and then
between executor wake-ups, and ends the node in order (last /diagnostics, then shutdown).
"""

from __future__ import annotations

import os
import signal
import sys

_stop_requested = False
_importing = True  # until the node's modules are loaded: nothing to clean up yet


def _request_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True
    if _importing:
        os._exit(0)  # no participant, no file, no thread yet: leave now, not after the imports


def stop_requested() -> bool:
    """True once SIGINT or SIGTERM arrived (after :func:`main` installed the handler)."""
    return _stop_requested


#: glibc's M_MMAP_THRESHOLD (malloc.h) and the value the node sets.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_frame_buffers_to_the_os() -> bool:
    """Allocations of 1 MB and more (every 800x600 frame, its copies and outputs) get their
    own mapping, unmapped when freed, for the whole life of the process.

    glibc's default threshold starts at 128 KB but rises after each large free (up to 32 MB),
    so after a few frames the 2 MB buffers of the executor and worker threads come from
    their arenas, which fragment and hold memory: a node's RSS crept up for minutes in the
    soak (make soak: +5.9 % after the warm-up; +0.1 % with this). A fixed threshold stops
    that adaptation. The price: a fresh mapping costs ~0.8 ms per 2 MB buffer (page faults)
    against ~0.07 ms for a reused one; the demo's processing p50 went from 13.6 to 15.0 ms
    (two runs each). No effect (False) on a C library without mallopt (musl, macOS)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def main(args: list[str] | None = None) -> None:
    """Exit 0 on SIGINT / SIGTERM (start-up included), 1 when the node cannot start."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _request_stop)
    return_frame_buffers_to_the_os()
    from semseg_ros.node.ros_node import run

    global _importing
    _importing = False
    sys.exit(run(args, stop_requested=stop_requested))


if __name__ == '__main__':
    main()
