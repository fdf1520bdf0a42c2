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


def main(args: list[str] | None = None) -> None:
    """Exit 0 on SIGINT / SIGTERM (start-up included), 1 when the node cannot start."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _request_stop)
    from semseg_ros.node.ros_node import run

    global _importing
    _importing = False
    sys.exit(run(args, stop_requested=stop_requested))


if __name__ == '__main__':
    main()
