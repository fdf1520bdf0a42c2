"""Helpers for tests that start real ROS 2 processes (replay, record, the node).

Every graph gets a ROS domain of its own (:func:`lease_domain_id`: a lock file per id, so two
test sessions on one machine never share a domain) and localhost discovery
(:func:`semseg_ros.ros_env.isolated_environment`).
"""

from __future__ import annotations

import fcntl
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from semseg_ros.ros_env import DOMAIN_IDS, isolated_environment

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = Path(tempfile.gettempdir()) / 'semseg_ros_domains'


@contextmanager
def lease_domain_id() -> Iterator[int]:
    """A ROS domain id no other holder of a lease on this machine has until the block ends."""
    LOCK_DIR.mkdir(exist_ok=True)
    ids = list(DOMAIN_IDS)
    random.shuffle(ids)
    for domain_id in ids:
        handle = (LOCK_DIR / f'{domain_id}.lock').open('w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield domain_id
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise RuntimeError(f'every ROS domain id in {DOMAIN_IDS} is leased; see {LOCK_DIR}')


def graph_environment(domain_id: int, *, fastdds_profile: bool = True) -> dict[str, str]:
    """The environment of every process of one test graph."""
    env = isolated_environment(domain_id, fastdds_profile=fastdds_profile)
    env['PYTHONUNBUFFERED'] = '1'
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
    return env


class Process:
    """A child process whose output lines are collected by a thread (no blocking reads)."""

    def __init__(self, args: list[str], *, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    @classmethod
    def module(cls, module: str, *args: str, env: dict[str, str]) -> Process:
        """``python -m semseg_ros.<module> ARGS``."""
        return cls([sys.executable, '-m', f'semseg_ros.{module}', *args], env=env)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout: float) -> str:
        """The first new output line containing ``text``; fails with the output after
        ``timeout`` s or when the process ended without it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    self._pump_thread.join(1)
                    if self.lines.empty():
                        break
                continue
            self.output.append(line)
            if text in line:
                return line
        raise AssertionError(f'no {text!r} from {self.proc.args}:\n{self.text()}')

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float) -> str:
        """The whole output once the process exited 0; fails with the output otherwise."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'{self.proc.args} did not exit:\n{self.text()}') from None
        self._pump_thread.join(5)
        assert self.proc.returncode == 0, f'{self.proc.args}: {self.text()}'
        return self.text()

    def text(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return ''.join(self.output)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._pump_thread.join(5)


def read_bag(path: Path) -> dict[str, list]:
    """Every message of a bag, deserialized (rosbags), by topic in bag order."""
    from rosbags.highlevel import AnyReader

    topics: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for connection, _, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            topics.setdefault(connection.topic, []).append(msg)
    return topics


def stamp(msg) -> tuple[int, int]:
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def wait_for_node(
    executor, peer, process, *, publishers, mask_topic: str = '/semseg_node/mask',
    timeout: float = 30.0,
) -> None:  # fmt: skip
    """Spin ``executor`` until the node ``process`` subscribed every publisher in
    ``publishers`` and publishes ``mask_topic`` (as ``peer`` sees the graph); then half a
    second more, so that the node also sees ``peer``'s own subscriptions (it computes no
    output nobody subscribes to). Fails if the process dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while any(p.get_subscription_count() < 1 for p in publishers) or not (
        peer.get_publishers_info_by_topic(mask_topic)
    ):
        assert process.poll() is None, 'the node process died while starting'
        assert time.monotonic() < deadline, f'the node did not come up within {timeout:.0f} s'
        executor.spin_once(0.05)
    time.sleep(0.5)
