"""``semseg replay DATASET_DIR|BAG``: publish camera frames as the CARLA ROS bridge does.

A stand-in for ``carla_ros_bridge`` on a machine without CARLA, over Cyclone DDS (ROS 2 on
the wire, see :mod:`semseg_ros.transport`). From a dataset in the Lyft-Udacity layout, each
tick publishes, like the bridge in synchronous mode at 20 Hz sim time:

* ``/clock``                                               rosgraph_msgs/Clock, sim time
* ``/carla/<role>/<camera>/image`` + ``.../camera_info``   bgra8, frame ``<role>/<camera>``
* ``/carla/<role>/<seg_camera>/image`` + ``.../camera_info``  when the dataset has labels:
  the labels in the palette the bridge uses (``--seg-class-set``, default ``carla23``, the
  classes of CARLA 0.9.10-0.9.13), mapped from the dataset's class set (``dataset.json``),
  bgra8. ``--seg-class-set dataset`` keeps the dataset's own palette.

All messages of tick ``k`` (0-based, counting on through loops) carry the stamp
``(k + 1) / sim_hz`` seconds, as CARLA's clock advances ``fixed_delta_seconds`` per tick.
``--rate`` sets the wall-clock ticks per second (how fast the simulator runs). Publishers are
RELIABLE, keep last 10, like the bridge's.

From a ROS 2 bag (a rosbag2 folder, sqlite3 or mcap) it republishes every Image,
CameraInfo and Clock message unchanged on its recorded topic, one tick per header stamp
(what ``ros2 bag play`` does, paced by ``--rate`` instead of the recorded times).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.imaging import array_to_image_fields, from_rgb
from semseg_ros.labels import ClassSet
from semseg_ros.transport.process import require_positive

DEFAULT_ROLE = 'ego_vehicle'
DEFAULT_CAMERA = 'rgb_front'
DEFAULT_SEG_CAMERA = 'semantic_segmentation_front'
SIM_HZ = 20.0  # the bridge's synchronous mode: fixed_delta_seconds 0.05
SETTLE_S = 0.3  # discovery is done when no reader matched for this long ...
SETTLE_MAX_S = 2.0  # ... or after this long


class ReplayError(ValueError):
    """A source that cannot be replayed; the message names it and the fix."""


@dataclass(frozen=True)
class BridgeCameras:
    """Topic names and frame ids of the bridge's cameras for one vehicle role."""

    role: str = DEFAULT_ROLE
    camera: str = DEFAULT_CAMERA
    seg_camera: str = DEFAULT_SEG_CAMERA

    def image_topic(self, sensor: str) -> str:
        return f'/carla/{self.role}/{sensor}/image'

    def info_topic(self, sensor: str) -> str:
        return f'/carla/{self.role}/{sensor}/camera_info'

    def frame_id(self, sensor: str) -> str:
        return f'{self.role}/{sensor}'


def sim_stamp_ns(tick: int, sim_hz: float = SIM_HZ) -> int:
    """Sim time of tick ``tick`` (0-based) in ns: ``(tick + 1) / sim_hz`` seconds, exact."""
    return round((tick + 1) * 1_000_000_000 / sim_hz)


def camera_info(msgs: Any, header: Any, width: int, height: int, fov_deg: float) -> Any:
    """The CameraInfo the bridge publishes: pinhole from the horizontal fov, no distortion."""
    fx = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    cx, cy = width / 2.0, height / 2.0
    return msgs.CameraInfo(
        header=header,
        height=height,
        width=width,
        distortion_model='plumb_bob',
        d=[0.0] * 5,
        k=[fx, 0.0, cx, 0.0, fx, cy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[fx, 0.0, cx, 0.0, 0.0, fx, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


# --- Sources -----------------------------------------------------------------------------


def is_bag(path: Path) -> bool:
    """A rosbag2 folder (``metadata.yaml``) or a single ``.mcap`` / ``.db3`` file."""
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.suffix in ('.mcap', '.db3')


#: The segmentation camera's palette on the bridge of CARLA 0.9.13 (the node's default too).
BRIDGE_SEG_CLASS_SET = 'carla23'


class DatasetSource:
    """Frames of a dataset in the Lyft-Udacity layout, in (episode, name) order.

    Yields ``(bgra, seg_bgra or None)``: (H, W, 4) uint8 camera image and the label drawn in
    ``seg_class_set``'s palette (bgra8), as the bridge's two cameras would publish them.
    ``class_set`` is the dataset's; ``seg_class_set=None`` keeps it.
    """

    def __init__(
        self,
        root: Path,
        *,
        labels: bool = True,
        seg_class_set: ClassSet | str | None = BRIDGE_SEG_CLASS_SET,
    ) -> None:
        from semseg_ros.labels import ClassSetError, get_class_set, mapping_lut
        from training.data.lyft import DatasetError, dataset_class_set, scan_dataset

        try:
            scan = scan_dataset(root)
            self.class_set: ClassSet = dataset_class_set(root)
        except DatasetError as err:
            raise ReplayError(str(err)) from err
        try:
            self.seg_class_set = get_class_set(seg_class_set or self.class_set)
            to_seg = mapping_lut(self.class_set, self.seg_class_set)  # (256,) uint8
        except ClassSetError as err:
            raise ReplayError(f'--seg-class-set: {err}') from err
        # Dataset id -> seg_class_set colour in one lookup per frame: (256, 3) RGB.
        self._seg_colors = self.seg_class_set.id_to_color(to_seg)
        if not scan.samples:
            msg = (
                f'no image/label pairs under {root}; pass a dataset folder (CameraRGB/ + '
                f'CameraSeg/, e.g. from `semseg data synth --mode sequence`) or a ROS 2 bag'
            )
            raise ReplayError(msg)
        self.samples = scan.samples
        self.labels = labels

    def __len__(self) -> int:
        return len(self.samples)

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        from training.data.lyft import read_label, read_rgb

        sample = self.samples[index]
        bgra = from_rgb(read_rgb(sample.rgb), 'bgra8')  # (H, W, 4)
        if not self.labels:
            return bgra, None
        colors = self._seg_colors[read_label(sample.label)]  # (H, W, 3) RGB
        return bgra, from_rgb(colors, 'bgra8')


def bag_ticks(path: Path) -> Iterator[list[tuple[str, str, bytes]]]:
    """A bag's Image / CameraInfo / Clock messages as ``[(topic, ros type, cdr bytes)]``,
    grouped into ticks: a new tick starts when a header stamp changes (Clock joins the tick
    it precedes)."""
    from rosbags.highlevel import AnyReader, AnyReaderError

    from semseg_ros.transport.msgs import MESSAGE_TYPES

    wanted = {'sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo', 'rosgraph_msgs/msg/Clock'}
    try:
        reader = AnyReader([path])
        reader.open()
    except (AnyReaderError, OSError) as err:
        raise ReplayError(f'{path} is not a readable ROS 2 bag: {err}') from err
    try:
        connections = [c for c in reader.connections if c.msgtype in wanted]
        if not any(c.msgtype == 'sensor_msgs/msg/Image' for c in connections):
            topics = sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections})
            raise ReplayError(f'{path} has no sensor_msgs/msg/Image topic; it has {topics}')
        tick: list[tuple[str, str, bytes]] = []
        clocks: list[tuple[str, str, bytes]] = []  # Clock has no header: joins the next tick
        stamp: tuple[int, int] | None = None
        for connection, _, raw in reader.messages(connections=connections):
            item = (connection.topic, connection.msgtype, bytes(raw))
            if connection.msgtype == 'rosgraph_msgs/msg/Clock':
                clocks.append(item)
                continue
            header = MESSAGE_TYPES[connection.msgtype].deserialize(item[2]).header
            key = (header.stamp.sec, header.stamp.nanosec)
            if tick and key != stamp:
                yield tick
                tick = []
            stamp = key
            tick += [*clocks, item]
            clocks = []
        if tick or clocks:
            yield tick + clocks
    finally:
        reader.close()


# --- Publishing ----------------------------------------------------------------------------


class Replayer:
    """Publishers for the bridge's topics, and the pacing loop."""

    def __init__(self, participant: Any, *, rate: float, stop: Any) -> None:
        from semseg_ros.transport import msgs

        self.msgs = msgs
        self.participant = participant
        self.rate = rate
        self.stop = stop
        self.publishers: dict[str, Any] = {}
        self.ticks = 0
        self.messages = 0

    def publisher(self, topic: str, msg_type: type) -> Any:
        pub = self.publishers.get(topic)
        if pub is None:
            pub = self.participant.create_publisher(msg_type, topic)  # RELIABLE, depth 10
            self.publishers[topic] = pub
        return pub

    def publish(self, topic: str, msg: Any) -> None:
        self.publisher(topic, type(msg)).publish(msg)
        self.messages += 1

    def wait_for_subscribers(self, topic: str, count: int, timeout: float) -> bool:
        """Wait until ``count`` readers matched ``topic``, then until matching settles.

        Discovery matches a remote participant's endpoints one by one: once the camera topic
        has its readers, wait until no publisher gained a reader for ``SETTLE_S`` (at most
        ``timeout``), so the same subscriber's other topics (camera_info, /clock) match too
        and see the first tick.
        """
        pub = self.publishers[topic]
        deadline = time.monotonic() + timeout
        while pub.subscription_count < count:
            if time.monotonic() >= deadline or self.stop.is_set():
                return False
            self.stop.sleep(0.02)
        settle_end = min(time.monotonic() + SETTLE_MAX_S, deadline)
        matched = -1
        quiet_since = time.monotonic()
        while time.monotonic() < settle_end and not self.stop.is_set():
            now_matched = sum(p.subscription_count for p in self.publishers.values())
            if now_matched != matched:
                matched, quiet_since = now_matched, time.monotonic()
            elif time.monotonic() - quiet_since >= SETTLE_S:
                break
            self.stop.sleep(0.02)
        return True

    def pace(self, start: float) -> bool:
        """Sleep until tick ``self.ticks`` is due; False when stopped meanwhile."""
        due = start + self.ticks / self.rate
        return not self.stop.sleep(due - time.monotonic())

    def flush(self, timeout: float = 2.0) -> None:
        """Let reliable readers acknowledge the last frames before the process exits."""
        deadline = time.monotonic() + timeout
        for pub in self.publishers.values():
            pub.wait_for_acks(max(deadline - time.monotonic(), 0.01))


def publish_dataset_tick(
    replayer: Replayer,
    cameras: BridgeCameras,
    frame: tuple[np.ndarray, np.ndarray | None],
    *,
    tick: int,
    sim_hz: float,
    fov: float,
    clock: bool,
) -> None:
    msgs = replayer.msgs
    stamp = msgs.Time.from_ns(sim_stamp_ns(tick, sim_hz))
    if clock:
        replayer.publish('/clock', msgs.Clock(stamp))
    for sensor, bgra in ((cameras.camera, frame[0]), (cameras.seg_camera, frame[1])):
        if bgra is None:
            continue
        header = msgs.Header(stamp, cameras.frame_id(sensor))
        height, width = bgra.shape[:2]
        replayer.publish(cameras.info_topic(sensor), camera_info(msgs, header, width, height, fov))
        fields = array_to_image_fields(bgra, 'bgra8')
        image = msgs.Image(header=header, **fields.msg_kwargs(data_type='ndarray'))
        replayer.publish(cameras.image_topic(sensor), image)


# --- CLI ---------------------------------------------------------------------------------


def _parser(prog: str | None) -> argparse.ArgumentParser:
    from semseg_ros.transport.process import add_dds_arguments

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('source', type=Path, help='dataset folder, or ROS 2 bag (folder/.mcap)')
    parser.add_argument(
        '--rate', type=float, default=SIM_HZ, help='ticks per wall-clock second (default 20)'
    )
    parser.add_argument('--loop', action='store_true', help='start over at the end')
    parser.add_argument('--count', type=int, help='stop after this many ticks')
    parser.add_argument('--duration', type=float, help='stop after this many seconds')
    parser.add_argument('--role', default=DEFAULT_ROLE, help='vehicle role name (ego_vehicle)')
    parser.add_argument('--camera', default=DEFAULT_CAMERA, help='RGB camera id (rgb_front)')
    parser.add_argument(
        '--seg-camera',
        default=DEFAULT_SEG_CAMERA,
        help='segmentation camera id (semantic_segmentation_front)',
    )
    parser.add_argument(
        '--no-seg', action='store_true', help='do not publish the segmentation camera'
    )
    parser.add_argument(
        '--seg-class-set',
        default=BRIDGE_SEG_CLASS_SET,
        help=(
            'segmentation camera palette: a class set name or YAML (default carla23, as the '
            "CARLA 0.9.13 bridge); 'dataset' keeps the dataset's own"
        ),
    )
    parser.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    parser.add_argument('--fov', type=float, default=90.0, help='horizontal fov for camera_info')
    parser.add_argument(
        '--sim-hz', type=float, default=SIM_HZ, help='sim ticks per second for stamps (20)'
    )
    parser.add_argument(
        '--wait-for-subscribers',
        type=int,
        default=0,
        metavar='N',
        help='before the first tick, wait until N readers match the camera image topic',
    )
    parser.add_argument(
        '--wait-timeout', type=float, default=30.0, help='seconds to wait for them (30)'
    )
    add_dds_arguments(parser)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    require_positive(parser, args, 'rate', 'sim_hz', 'duration', 'count')
    if not 0 < args.fov < 180:
        parser.error(f'--fov must be in (0, 180) degrees, got {args.fov}')
    if not args.source.exists():
        parser.error(f'{args.source} does not exist; pass a dataset folder or a ROS 2 bag')


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg replay``: returns the exit code."""
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
        _check_args(parser, args)
    except SystemExit as err:
        return int(err.code or 0)
    from semseg_ros.transport.process import StopSignal, load_dds

    dds = load_dds(parser.prog)
    if dds is None:
        return 1
    cameras = BridgeCameras(args.role, args.camera, args.seg_camera)
    bag = is_bag(args.source)
    try:
        seg_class_set = None if args.seg_class_set == 'dataset' else args.seg_class_set
        dataset = (
            None
            if bag
            else DatasetSource(args.source, labels=not args.no_seg, seg_class_set=seg_class_set)
        )
    except ReplayError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 1
    try:
        participant = dds.open_participant(loopback=args.loopback)
    except dds.TransportError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 1
    with StopSignal() as stop, participant:
        replayer = Replayer(participant, rate=args.rate, stop=stop)
        try:
            if bag:
                _replay_bag(replayer, args)
            else:
                assert dataset is not None
                _replay_dataset(replayer, dataset, cameras, args)
        except ReplayError as err:
            print(f'{parser.prog}: error: {err}', file=sys.stderr)
            return 1
        replayer.flush()
    print(
        f'replayed {replayer.ticks} ticks ({replayer.messages} messages) from {args.source}',
        flush=True,
    )
    return 0


def _limits_reached(replayer: Replayer, args: argparse.Namespace, start: float) -> bool:
    if args.count is not None and replayer.ticks >= args.count:
        return True
    return args.duration is not None and time.monotonic() - start >= args.duration


def _wait(replayer: Replayer, topic: str, args: argparse.Namespace) -> None:
    if args.wait_for_subscribers > 0:
        if replayer.wait_for_subscribers(topic, args.wait_for_subscribers, args.wait_timeout):
            print(f'{topic}: {args.wait_for_subscribers} subscriber(s) matched', flush=True)
        elif not replayer.stop.is_set():
            print(
                f'warning: {topic}: fewer than {args.wait_for_subscribers} subscriber(s) after '
                f'{args.wait_timeout} s; publishing anyway',
                file=sys.stderr,
                flush=True,
            )


def _replay_dataset(
    replayer: Replayer, dataset: DatasetSource, cameras: BridgeCameras, args: argparse.Namespace
) -> None:
    msgs = replayer.msgs
    # Create every publisher first, so discovery runs while we wait for subscribers.
    if not args.no_clock:
        replayer.publisher('/clock', msgs.Clock)
    sensors = [cameras.camera] + ([] if args.no_seg else [cameras.seg_camera])
    for sensor in sensors:
        replayer.publisher(cameras.info_topic(sensor), msgs.CameraInfo)
        replayer.publisher(cameras.image_topic(sensor), msgs.Image)
    seg_note = f', {cameras.image_topic(cameras.seg_camera)} ({dataset.seg_class_set.name})'
    print(
        f'replaying {len(dataset)} frames at {args.rate:g} Hz on '
        f'{cameras.image_topic(cameras.camera)}{"" if args.no_seg else seg_note}',
        flush=True,
    )
    _wait(replayer, cameras.image_topic(cameras.camera), args)
    start = time.monotonic()
    index = 0
    while not _limits_reached(replayer, args, start):
        if index == len(dataset):
            if not args.loop:
                break
            index = 0
        frame = dataset.frame(index)  # read before pacing: the tick goes out on time
        if not replayer.pace(start):
            break
        publish_dataset_tick(
            replayer, cameras, frame, tick=replayer.ticks, sim_hz=args.sim_hz, fov=args.fov,
            clock=not args.no_clock,
        )  # fmt: skip
        replayer.ticks += 1
        index += 1


def _replay_bag(replayer: Replayer, args: argparse.Namespace) -> None:
    from semseg_ros.transport.msgs import MESSAGE_TYPES

    first = True
    start = time.monotonic()
    while first or args.loop:
        for tick in bag_ticks(args.source):
            if _limits_reached(replayer, args, start):
                return
            if first:  # publishers of the first tick, then wait for subscribers
                for topic, msgtype, _ in tick:
                    replayer.publisher(topic, MESSAGE_TYPES[msgtype])
                image_topic = next(
                    (t for t, m, _ in tick if m == 'sensor_msgs/msg/Image'), tick[0][0]
                )
                print(f'replaying {args.source} at {args.rate:g} Hz', flush=True)
                _wait(replayer, image_topic, args)
                start = time.monotonic()
                first = False
            if not replayer.pace(start):
                return
            for topic, msgtype, raw in tick:
                replayer.publish(topic, MESSAGE_TYPES[msgtype].deserialize(raw))
            replayer.ticks += 1
        if first:
            raise ReplayError(f'{args.source} has no messages to replay')


if __name__ == '__main__':
    raise SystemExit(main())
