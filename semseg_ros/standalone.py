"""``semseg run --model M``: the semseg node over Cyclone DDS, without a ROS install.

The same node as ``ros2 run semseg_ros semseg_node`` (:mod:`semseg_ros.node`): the same
:class:`~semseg_ros.node_core.NodeCore` (parameters, newest-frame slot and drop counting,
segmentation, ground-truth IoU, diagnostics), the same topics and QoS, the same params file
(``config/semseg.yaml``); only the middleware adapter differs. It speaks ROS 2 on the wire
(:mod:`semseg_ros.transport`), so ROS 2 nodes on the same ``ROS_DOMAIN_ID`` (rviz2,
``ros2 bag record``, the CARLA bridge) see it as a ROS publisher / subscriber.

Topics (node ``semseg_node`` in ``--namespace``, default ``/``), as the launch file remaps:

* in:  ``--image-topic`` (default the bridge's ``/carla/ego_vehicle/rgb_front/image``),
  ``--gt-topic`` when ``ground_truth`` is true, ``/clock`` when ``use_sim_time`` is true
* out: ``~/mask`` (mono8), ``~/color``, ``~/overlay`` (``/semseg_node/...``), each computed
  only while it has a subscriber; ``/diagnostics`` once per second

Threads: the main thread waits on DDS and feeds the callbacks' bodies (``NodeCore.on_*``)
and the diagnostics timer; a :class:`~semseg_ros.node_core.FrameWorker` runs inference and
publishes, exactly as in the rclpy node.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from semseg_ros.node_core import (
    DIAGNOSTICS_PERIOD_S,
    DIAGNOSTICS_TOPIC,
    NODE_NAME,
    OUTPUT_QOS_DEPTH,
    OUTPUT_TOPICS,
    FrameWorker,
    NodeCore,
    NodeParams,
    NodeStartupError,
    Outputs,
    ParamError,
    ProcessedFrame,
)
from semseg_ros.transport.process import require_positive

DEFAULT_IMAGE_TOPIC = '/carla/ego_vehicle/rgb_front/image'
DEFAULT_GT_TOPIC = '/carla/ego_vehicle/semantic_segmentation_front/image'
PARAMS_FILE = 'semseg.yaml'


def default_params_file() -> Path | None:
    """``config/semseg.yaml`` of a source checkout, else the installed share copy."""
    candidates = [
        Path(__file__).resolve().parents[1] / 'config' / PARAMS_FILE,
        Path(sys.prefix) / 'share' / 'semseg_ros' / 'config' / PARAMS_FILE,
    ]
    return next((p for p in candidates if p.is_file()), None)


class StandaloneNode:
    """The DDS adapter around a :class:`NodeCore`: subscriptions, publishers, timer, worker.

    ``core`` is built by :meth:`NodeCore.start` from ``params`` unless given (tests pass one
    with a stand-in segmenter).
    """

    def __init__(
        self,
        participant: Any,
        params: NodeParams,
        *,
        image_topic: str = DEFAULT_IMAGE_TOPIC,
        gt_topic: str = DEFAULT_GT_TOPIC,
        namespace: str = '/',
        core: NodeCore | None = None,
        log: Callable[[str], object] = print,
    ) -> None:
        from semseg_ros.transport.dds import resolve_topic, ros_qos
        from semseg_ros.transport.msgs import Clock, DiagnosticArray, Image

        self.participant = participant
        self.log = log
        self.fully_qualified_name = resolve_topic(NODE_NAME, namespace=namespace)
        self._sim_time_ns = 0
        self._use_sim_time = (core.params if core else params).use_sim_time
        self.core = core or NodeCore.start(
            params,
            log_warning=lambda text: log(f'[WARN] {text}'),
            now_ns=self.now_ns,
        )
        params = self.core.params

        def topic(name: str) -> str:
            return resolve_topic(name, node_name=NODE_NAME, namespace=namespace)

        # Publishers first, so subscribers of our outputs can match before frames flow.
        output_qos = ros_qos(reliable=True, depth=OUTPUT_QOS_DEPTH)
        self.image_publishers = {
            name: participant.create_publisher(Image, topic(name_topic), output_qos)
            for name, name_topic in OUTPUT_TOPICS.items()
        }
        self.diagnostics_publisher = participant.create_publisher(
            DiagnosticArray, topic(DIAGNOSTICS_TOPIC), ros_qos(depth=10)
        )
        camera_qos = ros_qos(reliable=params.qos_reliability == 'reliable', depth=params.qos_depth)
        self.image_topic = topic(image_topic)
        self.image_subscription = participant.create_subscription(
            Image, self.image_topic, camera_qos
        )
        self.gt_subscription = None
        if params.ground_truth:
            self.gt_subscription = participant.create_subscription(
                Image, topic(gt_topic), camera_qos
            )
        self.clock_subscription = None
        if params.use_sim_time:  # rclpy's TimeSource: /clock, best effort, depth 1
            self.clock_subscription = participant.create_subscription(
                Clock, '/clock', ros_qos(reliable=False, depth=1)
            )
        subscriptions = (self.image_subscription, self.gt_subscription, self.clock_subscription)
        self._waiter = participant.waiter(s for s in subscriptions if s is not None)
        self.worker = FrameWorker(self.core, self.wanted_outputs, self.publish_outputs)
        self.last_image: float | None = None
        self._next_diagnostics = time.monotonic() + DIAGNOSTICS_PERIOD_S

    # --- what the rclpy node's callbacks do -----------------------------------------------------

    def now_ns(self) -> int:
        """The ROS clock: /clock's time with use_sim_time (0 before the first), else wall time."""
        return self._sim_time_ns if self._use_sim_time else time.time_ns()

    def wanted_outputs(self) -> Outputs:
        """Only outputs with subscribers are computed."""
        return Outputs(
            **{name: pub.subscription_count > 0 for name, pub in self.image_publishers.items()}
        )

    def publish_outputs(self, frame: ProcessedFrame) -> None:
        from semseg_ros.transport.msgs import Image

        for name, fields in frame.images.items():
            # The input's header object goes out unchanged: same stamp, same frame id.
            msg = Image(header=frame.header, **fields.msg_kwargs(data_type='ndarray'))
            self.image_publishers[name].publish(msg)

    def diagnostics_message(self) -> Any:
        from semseg_ros.transport import msgs

        status = self.core.diagnostics(hardware_id=self.fully_qualified_name)
        return msgs.DiagnosticArray(
            header=msgs.Header(stamp=msgs.Time.from_ns(self.now_ns())),
            status=[
                msgs.DiagnosticStatus(
                    level=status['level'],
                    name=status['name'],
                    message=status['message'],
                    hardware_id=status['hardware_id'],
                    values=[msgs.KeyValue(k, v) for k, v in status['values']],
                )
            ],
        )

    def publish_diagnostics(self) -> None:
        self.diagnostics_publisher.publish(self.diagnostics_message())

    # --- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def spin_once(self, timeout: float = 0.05) -> None:
        """Wait up to ``timeout`` for data, hand it to the core; run the diagnostics timer."""
        self._waiter.wait(min(timeout, max(self._next_diagnostics - time.monotonic(), 0)))
        if self.clock_subscription is not None:
            for clock in self.clock_subscription.take():
                self._sim_time_ns = clock.clock.to_ns()
        if self.gt_subscription is not None:
            for msg in self.gt_subscription.take():
                self.core.on_ground_truth(msg)
        images = self.image_subscription.take()
        for msg in images:  # in arrival order: the slot keeps the newest, counts the rest
            self.core.on_image(msg)
        if images:
            self.last_image = time.monotonic()
        now = time.monotonic()
        if now >= self._next_diagnostics:
            self.publish_diagnostics()
            self._next_diagnostics = max(self._next_diagnostics + DIAGNOSTICS_PERIOD_S, now)

    def spin(
        self, stop: Any, *, duration: float | None = None, idle_exit: float | None = None
    ) -> str:
        """Run until ``stop`` is set, ``duration`` s passed, or no image came for
        ``idle_exit`` s after the first one. Returns why it stopped."""
        start = time.monotonic()
        while not stop.is_set():
            self.spin_once()
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                return f'ran {duration:g} s'
            if idle_exit is not None and self.last_image and now - self.last_image >= idle_exit:
                return f'no image for {idle_exit:g} s'
        return 'stopped by a signal'

    def shutdown(self) -> None:
        """Finish the frame in flight, publish a last /diagnostics, let readers ack it."""
        self.worker.stop()
        self.publish_diagnostics()
        for pub in (*self.image_publishers.values(), self.diagnostics_publisher):
            pub.wait_for_acks(1.0)


# --- CLI ---------------------------------------------------------------------------------


def _parse_param(text: str) -> tuple[str, Any]:
    """``name:=value`` (ros2 run's ``-p`` syntax) or ``name=value``; value parsed as YAML."""
    import yaml

    name, sep, value = text.partition(':=')
    if not sep:
        name, sep, value = text.partition('=')
    if not sep or not name:
        raise argparse.ArgumentTypeError(f'{text!r}: write a parameter as name:=value')
    return name.strip(), yaml.safe_load(value) if value.strip() else ''


def load_params(
    params_file: Path | None, overrides: Mapping[str, Any], *, namespace: str = '/'
) -> NodeParams:
    """Defaults < params file < command line, validated by :class:`NodeParams`."""
    import dataclasses

    base = NodeParams.from_yaml(params_file, namespace=namespace) if params_file else NodeParams()
    values = {**dataclasses.asdict(base), **overrides}
    return NodeParams.from_mapping(values)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    from semseg_ros.transport.process import add_dds_arguments

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--model', help='model file (sets model_path): .onnx, .engine or .pt')
    parser.add_argument(
        '--params',
        type=Path,
        help='ROS params file (default: config/semseg.yaml of this package)',
    )
    parser.add_argument(
        '-p',
        '--param',
        dest='param_list',
        action='append',
        type=_parse_param,
        default=[],
        metavar='NAME:=VALUE',
        help='set a parameter, e.g. -p backend:=onnxruntime -p ground_truth:=true',
    )
    parser.add_argument('--image-topic', default=DEFAULT_IMAGE_TOPIC, help='camera topic')
    parser.add_argument('--gt-topic', default=DEFAULT_GT_TOPIC, help='ground-truth topic')
    parser.add_argument('--namespace', default='/', help='node namespace (default /)')
    parser.add_argument('--duration', type=float, help='exit after this many seconds')
    parser.add_argument(
        '--idle-exit',
        type=float,
        help='exit when no image arrived for this many seconds (after the first one)',
    )
    add_dds_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg run``: returns the exit code."""
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
        require_positive(parser, args, 'duration', 'idle_exit')
    except SystemExit as err:
        return int(err.code or 0)
    from semseg_ros.transport.process import StopSignal, load_dds

    dds = load_dds(parser.prog)
    if dds is None:
        return 1
    overrides = dict(args.param_list)
    if args.model:
        overrides['model_path'] = args.model
    params_file = args.params if args.params is not None else default_params_file()
    try:
        params = load_params(params_file, overrides, namespace=args.namespace)
    except ParamError as err:
        print(f'{parser.prog}: error: invalid parameter: {err}', file=sys.stderr)
        return 2
    if not params.model_path:
        print(f'{parser.prog}: error: no model: pass --model MODEL.onnx', file=sys.stderr)
        return 2
    try:
        participant = dds.open_participant(loopback=args.loopback)
    except dds.TransportError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 1
    with StopSignal() as stop, participant:
        try:
            node = StandaloneNode(
                participant, params, image_topic=args.image_topic, gt_topic=args.gt_topic,
                namespace=args.namespace, log=lambda text: print(text, file=sys.stderr),
            )  # fmt: skip
        except (NodeStartupError, dds.TransportError) as err:
            print(f'{parser.prog}: cannot start: {err}', file=sys.stderr)
            return 1
        segmenter = node.core.segmenter
        outputs = ', '.join(pub.topic for pub in node.image_publishers.values())
        print(
            f'{params.model_path} ({segmenter.class_set.name}, {segmenter.backend_name}): '
            f'{node.image_topic} -> {outputs}',
            flush=True,
        )
        node.start()
        try:
            reason = node.spin(stop, duration=args.duration, idle_exit=args.idle_exit)
        finally:
            node.shutdown()
        status = node.core.diagnostics()
        counts = {k: v for k, v in status['values'] if k.startswith('frames')}
        print(f'exiting ({reason}): {counts}', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
