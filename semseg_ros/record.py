"""``semseg record --out BAG [TOPIC[:TYPE] ...]``: record DDS topics to a ROS 2 bag.

``ros2 bag record`` without ROS: subscribes over Cyclone DDS (:mod:`semseg_ros.transport`)
and writes every message's ROS 2 CDR bytes to a rosbag2 folder (mcap by default, or sqlite3)
with ``rosbags``, stamped with the receive time like rosbag2 does. The bag is closed
properly on ``--duration``, ``--count``, ``--idle-timeout``, SIGINT or SIGTERM.

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

from semseg_ros.node_core import DIAGNOSTICS_TOPIC, NODE_NAME, OUTPUT_TOPICS
from semseg_ros.transport.process import require_positive

_TYPE_BY_LAST_NAME = {
    'image': 'sensor_msgs/msg/Image',
    'image_raw': 'sensor_msgs/msg/Image',
    'image_color': 'sensor_msgs/msg/Image',
    'mask': 'sensor_msgs/msg/Image',
    'color': 'sensor_msgs/msg/Image',
    'overlay': 'sensor_msgs/msg/Image',
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


class RecordError(ValueError):
    """A topic spec or output path that cannot be used; the message says the fix."""


def parse_topic(spec: str) -> tuple[str, str]:
    """``/a/image`` or ``/a/thing:sensor_msgs/msg/Image`` -> ``(topic, ros type)``."""
    from semseg_ros.transport.msgs import MESSAGE_TYPES
    from semseg_ros.transport.names import TransportError, resolve_topic

    topic, _, msgtype = spec.partition(':')
    try:
        topic = resolve_topic(topic)
    except TransportError as err:
        raise RecordError(str(err)) from err
    if not msgtype:
        msgtype = _TYPE_BY_LAST_NAME.get(topic.rsplit('/', 1)[-1], '')
        if not msgtype:
            msg = (
                f'cannot guess the type of {topic}; give it as {topic}:<type>, one of '
                f'{", ".join(MESSAGE_TYPES)}'
            )
            raise RecordError(msg)
    if msgtype not in MESSAGE_TYPES:
        msg = f'{spec}: type {msgtype!r} is not supported; use one of {", ".join(MESSAGE_TYPES)}'
        raise RecordError(msg)
    return topic, msgtype


class BagRecorder:
    """Subscriptions + a rosbags writer; :meth:`poll` moves what arrived into the bag."""

    def __init__(
        self,
        participant: Any,
        out: Path,
        topics: list[tuple[str, str]],
        *,
        storage: str = 'mcap',
        reliable: bool = True,
        depth: int = 100,
    ) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        from semseg_ros.transport.dds import ros_qos
        from semseg_ros.transport.msgs import MESSAGE_TYPES

        self.participant = participant
        # A recorder must not lose what it was sent: reliable, and a deep reader history so
        # a slow disk write does not let newer samples overwrite untaken ones.
        qos = ros_qos(reliable=reliable, depth=depth)
        self.subscriptions = {
            topic: participant.create_subscription(MESSAGE_TYPES[msgtype], topic, qos)
            for topic, msgtype in topics
        }
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self.writer = Writer(out, version=8, storage_plugin=plugin)
        self.writer.open()
        typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.connections = {
            topic: self.writer.add_connection(topic, msgtype, typestore=typestore)
            for topic, msgtype in topics
        }
        self.counts = dict.fromkeys(self.subscriptions, 0)
        self.announced: set[str] = set()
        self.last_message: float | None = None

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for data; write everything waiting. Returns messages."""
        self.participant.wait(timeout)
        written = 0
        for topic, sub in self.subscriptions.items():
            if topic not in self.announced and sub.publisher_count:
                self.announced.add(topic)
                print(f'{topic}: {sub.publisher_count} publisher(s) matched', flush=True)
            for msg in sub.take(64):
                # rosbag2 stores the CDR bytes with the receive time as the log time.
                self.writer.write(self.connections[topic], time.time_ns(), msg.serialize())
                self.counts[topic] += 1
                written += 1
        if written:
            self.last_message = time.monotonic()
        return written

    def close(self) -> None:
        self.writer.close()


def _parser(prog: str | None) -> argparse.ArgumentParser:
    from semseg_ros.transport.process import add_dds_arguments

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
    add_dds_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg record``: returns the exit code."""
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
        require_positive(parser, args, 'duration', 'idle_timeout', 'count')
    except SystemExit as err:
        return int(err.code or 0)
    from semseg_ros.transport.process import StopSignal, load_dds

    dds = load_dds(parser.prog)
    if dds is None:
        return 1
    try:
        topics = [parse_topic(spec) for spec in (args.topics or DEFAULT_TOPICS)]
    except RecordError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    if args.out.exists():
        if not args.overwrite:
            msg = f'{args.out} exists; pass --overwrite to replace it, or choose another --out'
            print(f'{parser.prog}: error: {msg}', file=sys.stderr)
            return 1
        shutil.rmtree(args.out) if args.out.is_dir() else args.out.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        participant = dds.open_participant(loopback=args.loopback)
    except dds.TransportError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 1
    with StopSignal() as stop, participant:
        recorder = BagRecorder(
            participant, args.out, topics, storage=args.storage, reliable=not args.best_effort
        )
        print(f'recording {len(topics)} topics to {args.out}', flush=True)
        start = time.monotonic()
        total = 0
        try:
            while not stop.is_set():
                total += recorder.poll(0.1)
                now = time.monotonic()
                if args.duration is not None and now - start >= args.duration:
                    break
                if args.count is not None and total >= args.count:
                    break
                last = recorder.last_message
                if args.idle_timeout is not None and last and now - last >= args.idle_timeout:
                    break
        finally:
            recorder.close()
    for topic, count in recorder.counts.items():
        print(f'  {topic}: {count}')
    print(f'recorded {total} messages to {args.out}', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
