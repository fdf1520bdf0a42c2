"""``semseg replay DATASET_DIR|BAG``: publish camera frames as the CARLA ROS bridge does.

A stand-in for ``carla_ros_bridge`` on a machine without CARLA: an rclpy node (the shipped
Fast DDS profile unless ``FASTDDS_DEFAULT_PROFILES_FILE`` is set; ``ROS_DOMAIN_ID`` as usual).
From a dataset in the Lyft-Udacity layout, each tick publishes, like the bridge in
synchronous mode at 20 Hz sim time:

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
CameraInfo and Clock message unchanged (the recorded CDR bytes) on its recorded topic, one
tick per header stamp (what ``ros2 bag play`` does, paced by ``--rate`` instead of the
recorded times).

``--lockstep`` publishes tick ``k + 1`` only once the node's output for tick ``k`` arrived
(``--lockstep-topic``, default ``/semseg_node/mask``, matched by header stamp) or
``--lockstep-timeout`` seconds passed (counted and reported at exit): a node slower than
``--rate`` is then scored on every frame instead of the newest one, the same frames
``semseg bag`` segments offline.

SIGINT / SIGTERM stop it after the current tick; before it exits (stopped or at the end),
it waits up to 2 s until every reliable reader acknowledged what was published, so the last
frames are not lost with the process. Exit code 0.
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.cli_args import require_positive
from semseg_ros.imaging import array_to_image_fields, from_rgb
from semseg_ros.labels import ClassSet
from semseg_ros.stop_signal import StopSignal
from semseg_ros.tool_node import MessageTypeError, message_class, tool_node

DEFAULT_ROLE = 'ego_vehicle'
DEFAULT_CAMERA = 'rgb_front'
DEFAULT_SEG_CAMERA = 'semantic_segmentation_front'
SIM_HZ = 20.0  # the bridge's synchronous mode: fixed_delta_seconds 0.05
SETTLE_S = 0.3  # discovery is done when no reader matched for this long ...
SETTLE_MAX_S = 2.0  # ... or after this long
FLUSH_S = 2.0  # at exit, wait this long at most for reliable readers' acknowledgements
LOCKSTEP_TOPIC = '/semseg_node/mask'
LOCKSTEP_TIMEOUT_S = 2.0


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


def camera_info(header: Any, width: int, height: int, fov_deg: float) -> Any:
    """The CameraInfo the bridge publishes: pinhole from the horizontal fov, no distortion."""
    from sensor_msgs.msg import CameraInfo

    fx = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    cx, cy = width / 2.0, height / 2.0
    return CameraInfo(
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
        from semseg_ros.training_half import training_module

        self._lyft = lyft = training_module('data.lyft')  # the reader, once per source
        try:
            scan = lyft.scan_dataset(root)
            self.class_set: ClassSet = lyft.dataset_class_set(root)
        except lyft.DatasetError as err:
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
        sample = self.samples[index]
        bgra = from_rgb(self._lyft.read_rgb(sample.rgb), 'bgra8')  # (H, W, 4)
        if not self.labels:
            return bgra, None
        colors = self._seg_colors[self._lyft.read_label(sample.label)]  # (H, W, 3) RGB
        return bgra, from_rgb(colors, 'bgra8')


def bag_ticks(path: Path) -> Iterator[list[tuple[str, str, bytes]]]:
    """A bag's Image / CameraInfo / Clock messages as ``[(topic, ros type, cdr bytes)]``,
    grouped into ticks: a new tick starts when a header stamp changes (Clock joins the tick
    it precedes)."""
    from rosbags.highlevel import AnyReader, AnyReaderError

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
            header = reader.deserialize(raw, connection.msgtype).header
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


def bridge_qos() -> Any:
    """The CARLA bridge's publisher QoS: RELIABLE, keep last 10, volatile."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=10,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


class Replayer:
    """Publishers for the bridge's topics on an rclpy node, and the pacing loop."""

    def __init__(self, node: Any, *, rate: float, stop: StopSignal) -> None:
        self.node = node
        self.rate = rate
        self.stop = stop
        self.qos = bridge_qos()
        self.publishers: dict[str, Any] = {}
        self.ticks = 0
        self.messages = 0
        self.sent: dict[str, int] = {}  # messages per topic
        self.lockstep: Lockstep | None = None  # --lockstep: wait for the node's output

    def wait_for_output(self, stamp: tuple[int, int]) -> None:
        """With --lockstep, until the node's output of the tick stamped ``stamp`` arrived."""
        if self.lockstep is not None:
            self.lockstep.wait_for(stamp)

    def publisher(self, topic: str, msg_type: type) -> Any:
        pub = self.publishers.get(topic)
        if pub is None:
            pub = self.node.create_publisher(msg_type, topic, self.qos)
            self.publishers[topic] = pub
        return pub

    def publish(self, topic: str, msg: Any, msg_type: type | None = None) -> None:
        """Publish a message, or its serialized CDR bytes (then ``msg_type`` is needed)."""
        self.publisher(topic, msg_type or type(msg)).publish(msg)
        self.messages += 1
        self.sent[topic] = self.sent.get(topic, 0) + 1

    def wait_for_subscribers(self, wanted: dict[str, int], timeout: float) -> list[str]:
        """Wait until each topic of ``wanted`` has matched that many readers, then until
        matching settles; returns the topics still short of readers after ``timeout`` s.

        Discovery matches a remote participant's endpoints one by one: once the wanted
        readers matched, wait until no publisher gained a reader for ``SETTLE_S`` (at most
        ``SETTLE_MAX_S``), so the same subscriber's other topics (camera_info, /clock) match
        too and see the first tick. Under load a slow participant can take longer than that:
        name each topic whose first message matters in ``wanted`` (``--wait-for``).
        """
        missing = sorted(set(wanted) - set(self.publishers))
        if missing:
            msg = (
                f'--wait-for: this replay does not publish {", ".join(missing)}; it publishes '
                f'{", ".join(self.publishers)}'
            )
            raise ReplayError(msg)
        deadline = time.monotonic() + timeout

        def short() -> list[str]:
            return [
                topic
                for topic, count in wanted.items()
                if self.publishers[topic].get_subscription_count() < count
            ]

        while short():
            if time.monotonic() >= deadline or self.stop.is_set():
                return short()
            self.stop.sleep(0.02)
        settle_end = min(time.monotonic() + SETTLE_MAX_S, deadline)
        matched = -1
        quiet_since = time.monotonic()
        while time.monotonic() < settle_end and not self.stop.is_set():
            now_matched = sum(p.get_subscription_count() for p in self.publishers.values())
            if now_matched != matched:
                matched, quiet_since = now_matched, time.monotonic()
            elif time.monotonic() - quiet_since >= SETTLE_S:
                break
            self.stop.sleep(0.02)
        return []

    def pace(self, start: float) -> bool:
        """Sleep until tick ``self.ticks`` is due; False when stopped meanwhile."""
        due = start + self.ticks / self.rate
        return not self.stop.sleep(due - time.monotonic())

    def flush(self, timeout: float = FLUSH_S) -> list[str]:
        """Wait until reliable readers acknowledged everything published (at most ``timeout``
        s in all): a reader still fetching the last frames would lose them when this process
        exits. Returns the topics some reader had not acknowledged in time."""
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout
        late = []
        for topic, pub in self.publishers.items():
            left = Duration(nanoseconds=max(int((deadline - time.monotonic()) * 1e9), 0))
            if not pub.wait_for_all_acked(left):
                late.append(topic)
        return late


class Lockstep:
    """Waits, after each tick, for the node's output with that tick's header stamp.

    Subscribes ``topic`` (sensor_msgs/Image, reliable) on the replay's node and spins it
    while waiting; a frame whose output does not come within ``timeout`` s is counted in
    ``timeouts`` (the node dropped it as bad input, failed, or is not there) and the replay
    goes on.
    """

    def __init__(self, node: Any, topic: str, *, timeout: float, stop: StopSignal) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        self.topic = topic
        self.timeout = timeout
        self.stop = stop
        self.frames = 0
        self.timeouts = 0
        self._seen: set[tuple[int, int]] = set()
        self.subscription = node.create_subscription(Image, topic, self._callback, bridge_qos())
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(node)

    def _callback(self, msg: Any) -> None:
        self._seen.add((int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)))

    def wait_for_publisher(self, timeout: float) -> bool:
        """Until the node's output publisher matched (False after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while self.subscription.get_publisher_count() < 1:
            if time.monotonic() >= deadline or self.stop.is_set():
                return False
            self._executor.spin_once(timeout_sec=0.02)
        return True

    def wait_for(self, stamp: tuple[int, int]) -> bool:
        """Until the output stamped ``stamp`` arrived: True, or False after the timeout."""
        self.frames += 1
        deadline = time.monotonic() + self.timeout
        while stamp not in self._seen:
            left = deadline - time.monotonic()
            if self.stop.is_set():
                return False
            if left <= 0:
                self.timeouts += 1
                return False
            self._executor.spin_once(timeout_sec=min(left, 0.05))
        self._seen.discard(stamp)
        return True

    def report(self) -> str:
        return (
            f'lockstep: {self.frames} frame(s), {self.timeouts} timed out after '
            f'{self.timeout:g} s waiting for {self.topic}'
        )


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
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    sec, nanosec = divmod(sim_stamp_ns(tick, sim_hz), 1_000_000_000)
    stamp = Time(sec=sec, nanosec=nanosec)
    if clock:
        replayer.publish('/clock', Clock(clock=stamp))
    for sensor, bgra in ((cameras.camera, frame[0]), (cameras.seg_camera, frame[1])):
        if bgra is None:
            continue
        header = Header(stamp=stamp, frame_id=cameras.frame_id(sensor))
        height, width = bgra.shape[:2]
        replayer.publish(cameras.info_topic(sensor), camera_info(header, width, height, fov))
        # data as array.array('B'): one memcpy; rclpy checks any other sequence byte by byte.
        fields = array_to_image_fields(bgra, 'bgra8')
        image = Image(header=header, **fields.msg_kwargs(data_type='array'))
        replayer.publish(cameras.image_topic(sensor), image)


# --- CLI ---------------------------------------------------------------------------------


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('source', type=Path, help='dataset folder, or ROS 2 bag (folder/.mcap)')
    parser.add_argument(
        '--rate', type=float, default=SIM_HZ, help='ticks per wall-clock second (default 20)'
    )
    parser.add_argument('--loop', action='store_true', help='start over at the end')
    parser.add_argument(
        '--preload',
        action='store_true',
        help=(
            'decode every dataset frame before the first tick (no PNG decoding while '
            'streaming, as from the simulator; ~3.8 MB of memory per 800x600 frame)'
        ),
    )
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
        '--wait-for',
        type=_wait_spec,
        action='append',
        default=[],
        metavar='TOPIC:N',
        help='before the first tick, also wait until N readers match TOPIC (repeatable)',
    )
    parser.add_argument(
        '--wait-timeout', type=float, default=30.0, help='seconds to wait for them (30)'
    )
    parser.add_argument(
        '--lockstep',
        action='store_true',
        help=(
            "publish the next frame only once the node's output for this one arrived (or "
            '--lockstep-timeout passed): a slow node is scored on every frame'
        ),
    )
    parser.add_argument(
        '--lockstep-topic',
        default=LOCKSTEP_TOPIC,
        help=f'the node output to wait for, matched by header stamp ({LOCKSTEP_TOPIC})',
    )
    parser.add_argument(
        '--lockstep-timeout',
        type=float,
        default=LOCKSTEP_TIMEOUT_S,
        help=f'seconds to wait for each output before going on (default {LOCKSTEP_TIMEOUT_S:g})',
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    require_positive(parser, args, 'rate', 'sim_hz', 'duration', 'count', 'lockstep_timeout')
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
    with StopSignal() as stop, tool_node('semseg_replay') as node:
        replayer = Replayer(node, rate=args.rate, stop=stop)
        if args.lockstep:
            replayer.lockstep = Lockstep(
                node, args.lockstep_topic, timeout=args.lockstep_timeout, stop=stop
            )
        try:
            if bag:
                _replay_bag(replayer, args)
            else:
                assert dataset is not None
                _replay_dataset(replayer, dataset, cameras, args)
        except ReplayError as err:
            print(f'{parser.prog}: error: {err}', file=sys.stderr)
            return 1
        late = replayer.flush()
        if late:
            print(
                f'warning: {", ".join(late)}: a reliable reader had not acknowledged every '
                f'message {FLUSH_S:g} s after the last tick; it may miss the last ones',
                file=sys.stderr,
                flush=True,
            )
    for topic, count in replayer.sent.items():
        print(f'  {topic}: {count} sent')
    if replayer.lockstep is not None:
        lockstep = replayer.lockstep
        print(lockstep.report(), file=sys.stderr if lockstep.timeouts else sys.stdout, flush=True)
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
    """``--wait-for-subscribers`` (on the camera image ``topic``) and ``--wait-for``."""
    lockstep = replayer.lockstep
    unmatched = lockstep is not None and not lockstep.wait_for_publisher(args.wait_timeout)
    if unmatched and lockstep is not None and not replayer.stop.is_set():
        print(
            f'warning: --lockstep: nothing publishes {lockstep.topic} after '
            f'{args.wait_timeout:g} s (is the node running, in this namespace?); every '
            f'frame will wait --lockstep-timeout {lockstep.timeout:g} s',
            file=sys.stderr,
            flush=True,
        )
    wanted = dict(args.wait_for)
    if args.wait_for_subscribers > 0:
        wanted[topic] = max(wanted.get(topic, 0), args.wait_for_subscribers)
    if not wanted:
        return
    short = replayer.wait_for_subscribers(wanted, args.wait_timeout)
    for name, count in wanted.items():
        if name not in short:
            print(f'{name}: {count} subscriber(s) matched', flush=True)
        elif not replayer.stop.is_set():
            print(
                f'warning: {name}: fewer than {count} subscriber(s) after '
                f'{args.wait_timeout:g} s; publishing anyway',
                file=sys.stderr,
                flush=True,
            )


def _wait_spec(text: str) -> tuple[str, int]:
    """argparse type of ``--wait-for TOPIC:N``."""
    topic, _, count = text.rpartition(':')
    try:
        value = int(count)
    except ValueError:
        value = 0
    if not topic or value < 1:
        msg = f'expected TOPIC:N with N >= 1, e.g. /clock:1, got {text!r}'
        raise argparse.ArgumentTypeError(msg)
    return topic, value


def _replay_dataset(
    replayer: Replayer, dataset: DatasetSource, cameras: BridgeCameras, args: argparse.Namespace
) -> None:
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image

    # Create every publisher first, so discovery runs while we wait for subscribers.
    if not args.no_clock:
        replayer.publisher('/clock', Clock)
    sensors = [cameras.camera] + ([] if args.no_seg else [cameras.seg_camera])
    for sensor in sensors:
        replayer.publisher(cameras.info_topic(sensor), CameraInfo)
        replayer.publisher(cameras.image_topic(sensor), Image)
    seg_note = f', {cameras.image_topic(cameras.seg_camera)} ({dataset.seg_class_set.name})'
    print(
        f'replaying {len(dataset)} frames at {args.rate:g} Hz on '
        f'{cameras.image_topic(cameras.camera)}{"" if args.no_seg else seg_note}',
        flush=True,
    )
    # The bridge gets its frames from the simulator; decoding PNGs (~30 ms a tick here) would
    # take CPU from the node on a small machine, so --preload decodes them all first.
    frames = [dataset.frame(i) for i in range(len(dataset))] if args.preload else None
    _wait(replayer, cameras.image_topic(cameras.camera), args)
    start = time.monotonic()
    index = 0
    while not _limits_reached(replayer, args, start):
        if index == len(dataset):
            if not args.loop:
                break
            index = 0
        # Read before pacing: the tick goes out on time.
        frame = frames[index] if frames is not None else dataset.frame(index)
        if not replayer.pace(start):
            break
        publish_dataset_tick(
            replayer, cameras, frame, tick=replayer.ticks, sim_hz=args.sim_hz, fov=args.fov,
            clock=not args.no_clock,
        )  # fmt: skip
        replayer.ticks += 1
        index += 1
        stamp_ns = sim_stamp_ns(replayer.ticks - 1, args.sim_hz)
        replayer.wait_for_output(divmod(stamp_ns, 1_000_000_000))


def _replay_bag(replayer: Replayer, args: argparse.Namespace) -> None:
    classes: dict[str, type] = {}

    def message_type(topic: str, msgtype: str) -> type:
        if msgtype not in classes:
            try:
                classes[msgtype] = message_class(msgtype)
            except MessageTypeError as err:
                raise ReplayError(f'{args.source}: {topic}: {err}') from err
        return classes[msgtype]

    first = True
    start = time.monotonic()
    while first or args.loop:
        for tick in bag_ticks(args.source):
            if _limits_reached(replayer, args, start):
                return
            if first:  # publishers of the first tick, then wait for subscribers
                for topic, msgtype, _ in tick:
                    replayer.publisher(topic, message_type(topic, msgtype))
                image_topic = next(
                    (t for t, m, _ in tick if m == 'sensor_msgs/msg/Image'), tick[0][0]
                )
                print(f'replaying {args.source} at {args.rate:g} Hz', flush=True)
                _wait(replayer, image_topic, args)
                start = time.monotonic()
                first = False
            if not replayer.pace(start):
                return
            for topic, msgtype, raw in tick:  # the recorded CDR bytes, unchanged
                replayer.publish(topic, raw, message_type(topic, msgtype))
            replayer.ticks += 1
            if replayer.lockstep is not None:
                replayer.wait_for_output(_image_stamp(tick, image_topic))
        if first:
            raise ReplayError(f'{args.source} has no messages to replay')


def _image_stamp(tick: list[tuple[str, str, bytes]], image_topic: str) -> tuple[int, int]:
    """The header stamp of ``image_topic``'s message in a bag tick (CDR: after the 4-byte
    encapsulation header, the header's sec int32 and nanosec uint32 come first)."""
    raw = next((r for t, _, r in tick if t == image_topic), tick[-1][2])
    little = raw[1] == 1  # CDR_LE
    order = '<' if little else '>'
    sec, nanosec = struct.unpack_from(f'{order}iI', raw, 4)
    return sec, nanosec


if __name__ == '__main__':
    raise SystemExit(main())
