"""Rates, latency percentiles and header stamps: the numbers /diagnostics reports."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

Stamp = tuple[int, int]  # (sec, nanosec) of a builtin_interfaces/Time


class RateMeter:
    """Events per second over the last ``window_s`` seconds (thread-safe)."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f'window_s must be positive, got {window_s}')
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.count = 0

    def tick(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self._times.append(now)
            self.count += 1
            self._prune(now)

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Hz from the spacing of the events in the window; 0 with fewer than two."""
        now = self._clock() if now is None else now
        with self._lock:
            self._prune(now)
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


def stamp_of(header: Any) -> Stamp:
    """``(sec, nanosec)`` of a std_msgs/Header (rclpy, rosbags or DDS); the match key."""
    stamp = header.stamp
    return int(stamp.sec), int(stamp.nanosec)


def stamp_to_ns(stamp: Stamp) -> int:
    return stamp[0] * 1_000_000_000 + stamp[1]


class LatencyStats:
    """Rolling latency percentiles over the last ``window`` samples (seconds).

    The node's latency and processing-time statistic (``/diagnostics``, in
    :mod:`semseg_ros.node.diagnostics`). Thread-safe: the node's worker adds while its diagnostics
    timer reads. ``add`` is O(1); the read-outs copy and sort the window.
    """

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f'window must be >= 1, got {window}')
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0
        self.max = float('nan')  # the largest sample ever added, not only in the window

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(float(seconds))
            self.count += 1
            if not seconds <= self.max:  # NaN before the first sample
                self.max = float(seconds)

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def _values(self) -> np.ndarray:
        with self._lock:
            return np.array(self._samples, np.float64)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) in seconds; NaN before any sample."""
        values = self._values()
        return float(np.percentile(values, q)) if values.size else float('nan')

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)


class SimTimeGaps:
    """Frames the simulator produced that never reached the node, from sim-time stamp gaps.

    The CARLA bridge in synchronous mode stamps camera frame ``k`` at ``k * tick_s`` of
    simulation time, so a jump of ``n`` ticks between two received stamps means ``n - 1``
    frames never arrived (lost in transport, dropped by a publisher, or a bridge that fell
    behind the simulator), whatever the wall clock did meanwhile. ``observe`` each received
    frame's stamp; ``missing`` is the total. A stamp at or before the previous one (a bag
    played in a loop, a restarted simulation) starts counting afresh from it. Thread-safe.
    """

    def __init__(self, tick_s: float) -> None:
        if not tick_s > 0:
            raise ValueError(f'tick_s must be positive, got {tick_s}')
        self.tick_ns = tick_s * 1e9
        self.missing = 0
        self._last_ns: int | None = None
        self._lock = threading.Lock()

    def observe(self, stamp_ns: int) -> int:
        """Count the ticks skipped since the previous stamp; returns how many this one added."""
        with self._lock:
            last, self._last_ns = self._last_ns, stamp_ns
            if last is None or stamp_ns <= last:
                return 0
            skipped = max(round((stamp_ns - last) / self.tick_ns) - 1, 0)
            self.missing += skipped
            return skipped
