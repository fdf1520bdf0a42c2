"""``semseg record --out BAG [TOPIC[:TYPE] ...]``: record ROS 2 topics to a bag.

``ros2 bag record`` for machines with rclpy but without rosbag2 (rclpy from PyPI): an rclpy
node (the shipped Fast DDS profile unless ``FASTDDS_DEFAULT_PROFILES_FILE`` is set) subscribes
to each topic with ``raw=True`` and writes the serialized CDR bytes as they arrived to a
rosbag2 folder (mcap by default, or sqlite3) with ``rosbags``, stamped with the receive time
like rosbag2 does. Subscriptions are RELIABLE (``--best-effort`` to match best-effort
publishers too) with a deep history, so nothing a publisher had acknowledged is overwritten
before it is written.

The bag is written to a hidden sibling folder (``.BAG.recording``) and renamed to ``BAG``
once closed, so ``BAG`` is always a complete bag; a sibling left by a killed run is removed.
The bag is closed on ``--duration``, ``--count``, ``--idle-timeout``, SIGINT or SIGTERM (what
already arrived is written first), and the exit code is 0. At exit it prints, per topic, the
messages received and those the middleware reported lost (``message_lost`` events).

A topic's type is given as ``TOPIC:pkg/msg/Type`` or guessed from its last name
(``image``, ``mask``, ``color``, ``overlay`` -> Image; ``camera_info``; ``diagnostics``;
``clock``). Without topics it records the camera, the node's outputs and /diagnostics.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from semseg_ros.cli_args import require_positive
from semseg_ros.node.params import DIAGNOSTICS_TOPIC, NODE_NAME, OUTPUT_TOPICS
from semseg_ros.stop_signal import StopSignal

_TYPE_BY_LAST_NAME = {
    'image': 'sensor_msgs/msg/Image',
    'image_raw': 'sensor_msgs/msg/Image',
    'image_color': 'sensor_msgs/msg/Image',
    'mask': 'sensor_msgs/msg/Image',
    'color': 'sensor_msgs/msg/Image',
    'overlay': 'sensor_msgs/msg/Image',
    'confidence': 'sensor_msgs/msg/Image',
    'error': 'sensor_msgs/msg/Image',
    'camera_info': 'sensor_msgs/msg/CameraInfo',
    'diagnostics': 'diagnostic_msgs/msg/DiagnosticArray',
    'clock': 'rosgraph_msgs/msg/Clock',
}

DEFAULT_TOPICS = (
    '/carla/ego_vehicle/rgb_front/image',
    '/carla/ego_vehicle/rgb_front/camera_info',
    *(f'/{NODE_NAME}/{topic.removeprefix("~/")}' for topic in OUTPUT_TOPICS.values()),
    DIAGNOSTICS_TOPIC,
)
STORAGES = ('mcap', 'sqlite3')
#: Reader history per topic: ~5 s of a 20 Hz camera waiting for the disk.
HISTORY_DEPTH = 100
DRAIN_S = 1.0  # at most this long to write what already arrived, once stopped


class RecordError(ValueError):
    """A topic spec or output path that cannot be used; the message says the fix."""


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    # Humble's definitions: the message types recorded here are the same in Humble..Kilted,
    # and a version 8 bag with them is read by every rosbag2 since Humble.
    return get_typestore(Stores.ROS2_HUMBLE)


def parse_topic(spec: str) -> tuple[str, str]:
    """``/a/image`` or ``/a/thing:sensor_msgs/msg/Image`` -> ``(topic, ros type)``."""
    from semseg_ros.tool_node import MessageTypeError, message_class
    from semseg_ros.topic_names import TopicNameError, resolve_topic

    topic, _, msgtype = spec.partition(':')
    try:
        topic = resolve_topic(topic)
    except TopicNameError as err:
        raise RecordError(str(err)) from err
    if not msgtype:
        msgtype = _TYPE_BY_LAST_NAME.get(topic.rsplit('/', 1)[-1], '')
        if not msgtype:
            msg = (
                f'cannot guess the type of {topic}; give it as {topic}:pkg/msg/Type, e.g. '
                f'{topic}:sensor_msgs/msg/Image'
            )
            raise RecordError(msg)
    if msgtype not in _typestore().types:
        msg = (
            f'{spec}: type {msgtype!r} is not supported: the bag writer (rosbags, ROS 2 Humble '
            'definitions) does not know it; record a standard message type'
        )
        raise RecordError(msg)
    try:
        message_class(msgtype)
    except MessageTypeError as err:
        raise RecordError(f'{spec}: {err}') from err
    return topic, msgtype


#: In :func:`partial_path`: the bag ``--overwrite`` replaces, until the new one is in place
#: (a run killed between the two renames gets it back on the next start).
REPLACED = '.replaced'


def partial_path(out: Path) -> Path:
    """The hidden sibling a bag is written in before it is renamed to ``out``."""
    return out.parent / f'.{out.name}.recording'


def recover_partial(out: Path) -> None:
    """Undo what a killed run for ``out`` left: the bag it was replacing back, the rest gone."""
    partial = partial_path(out)
    if partial.exists():  # a killed run's leftovers: never a complete bag ...
        replaced = partial / REPLACED
        if replaced.exists() and not out.exists():  # ... but maybe the bag it replaced
            replaced.rename(out)
        shutil.rmtree(partial)


class BagRecorder:
    """Raw subscriptions on an rclpy node, written into a bag as they arrive.

    The bag is written in :func:`partial_path` ``(out) / out.name`` and moved to ``out`` by
    :meth:`close`; ``out`` is replaced then (the caller decided whether that is allowed).
    """

    def __init__(
        self,
        node: Any,
        out: Path,
        topics: list[tuple[str, str]],
        *,
        storage: str = 'mcap',
        reliable: bool = True,
        depth: int = HISTORY_DEPTH,
    ) -> None:
        from rclpy.event_handler import SubscriptionEventCallbacks
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer

        from semseg_ros.tool_node import message_class

        self.node = node
        self.out = out
        self.partial = partial_path(out)
        recover_partial(out)
        self.partial.mkdir(parents=True)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self.writer = Writer(self.partial / out.name, version=8, storage_plugin=plugin)
        self.writer.open()
        typestore = _typestore()
        self.connections = {
            topic: self.writer.add_connection(topic, msgtype, typestore=typestore)
            for topic, msgtype in topics
        }
        self.counts = dict.fromkeys(self.connections, 0)
        self.lost = dict.fromkeys(self.connections, 0)
        self.total = 0
        self.last_message: float | None = None
        self.announced: set[str] = set()
        # A recorder must not lose what it was sent: reliable, and a deep reader history so
        # a slow disk write does not let newer samples overwrite untaken ones.
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        )
        self.subscriptions = {
            topic: node.create_subscription(
                message_class(msgtype),
                topic,
                lambda raw, topic=topic: self.write_callback(topic, raw),
                qos,
                raw=True,  # the CDR bytes, as rosbag2 stores them: no decode, no encode
                event_callbacks=SubscriptionEventCallbacks(
                    message_lost=lambda info, topic=topic: self.lost_callback(topic, info)
                ),
            )
            for topic, msgtype in topics
        }

    def write_callback(self, topic: str, raw: bytes) -> None:
        # rosbag2 stores the CDR bytes with the receive time as the log time.
        self.writer.write(self.connections[topic], time.time_ns(), raw)
        self.counts[topic] += 1
        self.total += 1
        self.last_message = time.monotonic()

    def lost_callback(self, topic: str, info: Any) -> None:
        self.lost[topic] = info.total_count

    def announce_matches(self) -> None:
        """Print ``TOPIC: N publisher(s) matched`` once per topic (tools wait for it)."""
        for topic, sub in self.subscriptions.items():
            count = sub.get_publisher_count()
            if topic not in self.announced and count:
                self.announced.add(topic)
                print(f'{topic}: {count} publisher(s) matched', flush=True)

    def drain(self, executor: Any, timeout: float = DRAIN_S) -> None:
        """Write what already arrived (callbacks ready now), for at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = self.total
            executor.spin_once(timeout_sec=0.05)
            if self.total == before:
                break

    def close(self) -> None:
        """Close the bag, then move it to ``out`` (replacing it) and remove the sibling."""
        for sub in self.subscriptions.values():
            self.node.destroy_subscription(sub)
        self.subscriptions.clear()
        self.writer.close()
        if self.out.exists() or self.out.is_symlink():  # aside until the new one is in
            self.out.rename(self.partial / REPLACED)
        (self.partial / self.out.name).rename(self.out)
        shutil.rmtree(self.partial)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        'topics',
        nargs='*',
        metavar='TOPIC[:TYPE]',
        help=f'topics to record (default: {" ".join(DEFAULT_TOPICS)})',
    )
    parser.add_argument('--out', '-o', type=Path, required=True, help='bag folder to create')
    parser.add_argument('--storage', choices=STORAGES, default='mcap', help='mcap (default)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
    parser.add_argument('--duration', type=float, help='stop after this many seconds')
    parser.add_argument('--count', type=int, help='stop after this many messages in all')
    parser.add_argument(
        '--idle-timeout',
        type=float,
        help='stop when nothing arrived for this many seconds (after the first message)',
    )
    parser.add_argument(
        '--best-effort',
        action='store_true',
        help='subscribe best effort (also matches best-effort publishers; may lose messages)',
    )
    return parser


def _done(recorder: BagRecorder, args: argparse.Namespace, start: float) -> bool:
    now = time.monotonic()
    if args.duration is not None and now - start >= args.duration:
        return True
    if args.count is not None and recorder.total >= args.count:
        return True
    last = recorder.last_message
    return args.idle_timeout is not None and last is not None and now - last >= args.idle_timeout


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg record``: returns the exit code."""
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
        require_positive(parser, args, 'duration', 'idle_timeout', 'count')
    except SystemExit as err:
        return int(err.code or 0)
    try:
        topics = [parse_topic(spec) for spec in (args.topics or DEFAULT_TOPICS)]
    except RecordError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    recover_partial(args.out)  # first: a bag a killed run put aside is an existing --out
    if args.out.exists() and not args.overwrite:
        msg = f'{args.out} exists; pass --overwrite to replace it, or choose another --out'
        print(f'{parser.prog}: error: {msg}', file=sys.stderr)
        return 1
    from rclpy.executors import SingleThreadedExecutor

    from semseg_ros.tool_node import tool_node

    with StopSignal() as stop, tool_node('semseg_record') as node:
        recorder = BagRecorder(
            node, args.out, topics, storage=args.storage, reliable=not args.best_effort
        )
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        try:
            print(f'recording {len(topics)} topics to {args.out}', flush=True)
            start = time.monotonic()
            while not stop.is_set() and not _done(recorder, args, start):
                executor.spin_once(timeout_sec=0.1)
                recorder.announce_matches()
            if args.count is None:  # --count stops at exactly that many
                recorder.drain(executor)
        finally:
            recorder.close()
            executor.shutdown()
    for topic, count in recorder.counts.items():
        print(f'  {topic}: {count} received, {recorder.lost[topic]} lost')
    print(f'recorded {recorder.total} messages to {args.out}', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
