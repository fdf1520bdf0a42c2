"""The rclpy node (``ros2 run semseg_ros semseg_node``): ROS I/O around ``node_core``.

Everything that is not ROS I/O (parameters, the newest-frame slot, segmentation, ground-truth
matching, IoU, diagnostics) lives in :mod:`semseg_ros.node_core`; reading this file is its
review.

Threads: ``rclpy.spin`` (a single-threaded executor) runs the image / ground-truth callbacks,
the middleware events and the diagnostics timer, each a few microseconds of bookkeeping; a
dedicated worker thread (:class:`~semseg_ros.node_core.FrameWorker`) takes the newest frame
from a :class:`~semseg_ros.node_core.LatestFrameSlot`, runs inference and publishes. Why not
a MultiThreadedExecutor with callback groups: the executor would leave frames in the DDS
history, where a newer one overwrites them without anyone counting; with the slot, the
subscription callback never waits on inference, a stale frame is replaced (newest wins) and
counted for /diagnostics. Publishing from another thread is thread-safe in rclpy, and
onnxruntime / TensorRT release the GIL while they run.

What DDS loses before a callback runs is counted through the subscriptions' ``message_lost``
event, so /diagnostics accounts for every frame the camera sent (see node_core).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from semseg_ros.compressed import COMPRESSED_SUFFIX
from semseg_ros.node.core import FrameWorker, NodeCore, Outputs, ProcessedFrame
from semseg_ros.node.live_params import LIVE_PARAMETERS, ros_description
from semseg_ros.node.params import (
    BUILTIN_PARAMETERS,
    DIAGNOSTICS_PERIOD_S,
    DIAGNOSTICS_TOPIC,
    GROUND_TRUTH_TOPIC,
    INPUT_TOPIC,
    NODE_NAME,
    OUTPUT_QOS_DEPTH,
    OUTPUT_TOPICS,
    PARAMETERS,
    NodeStartupError,
    ParamError,
)
from semseg_ros.ros_env import use_fastdds_profile

#: How often the executor looks whether SIGINT / SIGTERM asked the node to stop.
STOP_POLL_S = 0.1

#: ``qos_reliability`` -> policy. Humble's rclpy has no BEST_AVAILABLE: reliable matches the
#: same publishers the bridge has, and says so when a best-effort one appears.
_RELIABILITY = {
    'best_available': getattr(ReliabilityPolicy, 'BEST_AVAILABLE', ReliabilityPolicy.RELIABLE),
    'reliable': ReliabilityPolicy.RELIABLE,
    'best_effort': ReliabilityPolicy.BEST_EFFORT,
}


class SemsegNode(Node):
    """Subscribes ``image`` (and ``ground_truth``), publishes ``~/mask|color|overlay``.

    ``node_options`` go to :class:`rclpy.node.Node` (``context``, ``cli_args``,
    ``parameter_overrides``, ...): tests run the node in-process with them.
    """

    def __init__(self, **node_options: Any) -> None:
        super().__init__(NODE_NAME, **node_options)
        self.worker: FrameWorker | None = None  # destroy_node may run on a half-built node
        for spec in PARAMETERS:
            if spec.name not in BUILTIN_PARAMETERS:  # use_sim_time: rclpy declares it
                descriptor = ParameterDescriptor(
                    description=ros_description(spec.name, spec.metadata['description']),
                    read_only=spec.name not in LIVE_PARAMETERS,
                    # Live ones take any type and check it themselves, so a refusal names
                    # the value (and alpha takes 1 as well as 1.0; classes names or ids).
                    dynamic_typing=spec.name in LIVE_PARAMETERS,
                )
                default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
                self.declare_parameter(spec.name, default, descriptor)
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        logger = self.get_logger()
        self.core = NodeCore.start(
            values,
            log_warning=logger.warning,
            log_error=logger.error,
            now_ns=lambda: self.get_clock().now().nanoseconds,  # sim time when use_sim_time
        )
        params = self.core.params

        # One profile object per endpoint: rclpy applies `qos_overrides` to the profile it
        # is given in place, so a shared one would carry one topic's override to the others.
        def camera_qos() -> QoSProfile:
            return QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=params.qos_depth,
                reliability=_RELIABILITY[params.qos_reliability],
            )

        if params.input_transport == 'compressed':
            # image_transport's naming: the remapped camera topic + '/compressed'.
            self.image_subscription = self._subscribe(
                self.resolve_topic_name(INPUT_TOPIC) + COMPRESSED_SUFFIX,
                self.compressed_image_callback,
                camera_qos(),
                self.core.on_message_lost,
                msg_type=CompressedImage,
            )
        else:
            self.image_subscription = self._subscribe(
                INPUT_TOPIC, self.image_callback, camera_qos(), self.core.on_message_lost
            )
        self.gt_subscription = None
        if params.ground_truth:
            self.gt_subscription = self._subscribe(
                GROUND_TRUTH_TOPIC,
                self.ground_truth_callback,
                camera_qos(),
                lambda count: self.core.on_message_lost(count, ground_truth=True),
            )
        # RELIABLE like the bridge's cameras: reliable (rviz2, rosbag record) and best-effort
        # subscribers both match.
        self.image_publishers = {
            name: self.create_publisher(
                Image,
                topic,
                QoSProfile(
                    history=HistoryPolicy.KEEP_LAST,
                    depth=OUTPUT_QOS_DEPTH,
                    reliability=ReliabilityPolicy.RELIABLE,
                ),
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                event_callbacks=PublisherEventCallbacks(
                    incompatible_qos=self._incompatible_qos_callback(topic, 'subscription')
                ),
            )
            for name, topic in OUTPUT_TOPICS.items()
            if name != 'error' or params.ground_truth  # ~/error needs the ground truth
        }
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        # Steady clock: diagnostics keep coming when simulation time stands still.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self.diagnostics_callback, clock=steady
        )

        # Live display parameters: validated before rclpy stores them, applied after.
        self.add_on_set_parameters_callback(self.check_parameters_callback)
        self.add_post_set_parameters_callback(self.apply_parameters_callback)

        self.worker = FrameWorker(self.core, self.wanted_outputs, self.publish_outputs)
        self.worker.start()
        segmenter = self.core.segmenter
        logger.info(
            f'{params.model_path} ({segmenter.class_set.name}, {segmenter.selection}): '
            f'{self.image_subscription.topic_name} -> '
            f'{", ".join(p.topic_name for p in self.image_publishers.values())}'
        )

    def _subscribe(
        self,
        topic: str,
        callback: Callable[[Image], None],
        qos: QoSProfile,
        on_lost: Callable[[int], None],
        *,
        msg_type: type = Image,
    ) -> Any:
        return self.create_subscription(
            msg_type,
            topic,
            callback,
            qos,
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            event_callbacks=SubscriptionEventCallbacks(
                message_lost=lambda info: on_lost(info.total_count_change),
                incompatible_qos=self._incompatible_qos_callback(topic, 'publisher'),
            ),
        )

    def _incompatible_qos_callback(self, topic: str, peer: str) -> Callable[[Any], None]:
        """A warning that says what to change, once per topic and peer kind."""
        warned = False

        def callback(info: Any) -> None:
            nonlocal warned
            if warned:
                return
            warned = True
            policy = getattr(info.last_policy_kind, 'name', info.last_policy_kind)
            name = self.resolve_topic_name(topic)
            self.get_logger().warning(
                f'{name}: a {peer} with incompatible QoS ({policy}) cannot connect, so no '
                'messages flow between them. Check `ros2 topic info -v` on this topic; for '
                'the camera, qos_reliability:=best_effort matches every publisher (a '
                "'qos_overrides' entry in the params file changes one topic)"
            )

        return callback

    def check_parameters_callback(self, parameters: list[Parameter]) -> SetParametersResult:
        """Refuse an invalid display value with a reason that names it (read-only ones never
        get here: rclpy refuses them first)."""
        changes = {p.name: p.value for p in parameters if p.name in LIVE_PARAMETERS}
        if changes:
            try:
                self.core.processor.display.updated(changes)
            except ParamError as err:
                return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def apply_parameters_callback(self, parameters: list[Parameter]) -> None:
        """Swap the new display snapshot in: the worker's next frame uses it whole."""
        changes = {p.name: p.value for p in parameters if p.name in LIVE_PARAMETERS}
        if not changes:
            return
        processor = self.core.processor
        processor.display = display = processor.display.updated(changes)
        self.get_logger().info(
            f'display: overlay_alpha {display.overlay_alpha}, color_encoding '
            f'{display.color_encoding}, highlight_classes {display.highlight_names() or "none"}'
        )

    def image_callback(self, msg: Image, info: Any) -> None:
        # The MessageInfo's sequence numbers count frames DDS dropped without a loss event.
        self.core.on_image(
            msg,
            publisher=info.get('publisher_gid'),
            sequence=info.get('publication_sequence_number'),
        )

    def compressed_image_callback(self, msg: CompressedImage) -> None:
        self.core.on_compressed_image(msg)

    def ground_truth_callback(self, msg: Image) -> None:
        self.core.on_ground_truth(msg)

    def wanted_outputs(self) -> Outputs:
        """Only outputs with subscribers are computed."""
        listened = {
            name: pub.get_subscription_count() > 0 for name, pub in self.image_publishers.items()
        }
        return Outputs(**listened)

    def publish_outputs(self, frame: ProcessedFrame) -> None:
        for name, fields in frame.images.items():
            msg = Image(header=frame.header, **fields.msg_kwargs(data_type='array'))
            self.image_publishers[name].publish(msg)

    def diagnostics_callback(self) -> None:
        name = self.get_fully_qualified_name()
        # One status name per node: 'rgb_left/semseg_node: segmentation' beside the other
        # cameras' nodes (all named semseg_node), 'semseg_node: ...' in the root namespace.
        status = self.core.diagnostics(hardware_id=name, node_name=name.lstrip('/'))
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [
            DiagnosticStatus(
                level=bytes([status['level']]),  # a `byte` field: rclpy wants bytes
                name=status['name'],
                message=status['message'],
                hardware_id=status['hardware_id'],
                values=[KeyValue(key=k, value=v) for k, v in status['values']],
            )
        ]
        self.diagnostics_publisher.publish(array)

    def finish(self, ack_timeout_s: float = 0.5) -> None:
        """Stop taking frames, let the one in flight finish, publish a last /diagnostics.

        The last report holds the final counts, so a recorder or test reads every frame's
        fate without waiting for the next timer tick.
        """
        if self.worker is not None:
            self.worker.stop()
        self.diagnostics_callback()
        if self.diagnostics_publisher.get_subscription_count():
            self.diagnostics_publisher.wait_for_all_acked(Duration(seconds=ack_timeout_s))

    def destroy_node(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        super().destroy_node()


def run(
    args: list[str] | None = None, *, stop_requested: Callable[[], bool] = lambda: False
) -> int:
    """Run the node until ``stop_requested()`` (0) or a start-up failure (1).

    The process owns SIGINT and SIGTERM (see :mod:`semseg_ros.node`), not rclpy: rclpy's
    handlers would shut the context down at once, before the node could publish its last
    /diagnostics. The executor wakes every ``STOP_POLL_S`` to look at the request.

    A start-up failure is one FATAL line naming the parameter or file and the fix, no
    traceback: the cause is the user's input, not a bug. If the inference thread dies, the
    node publishes a last ERROR /diagnostics saying so, logs one FATAL line and returns 1:
    never a live node with a dead worker.
    """
    use_fastdds_profile()  # before rclpy.init creates the participant; the user's file wins
    if stop_requested():
        return 0
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node: SemsegNode | None = None
    try:
        node = SemsegNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop_requested() and rclpy.ok():
            executor.spin_once(timeout_sec=STOP_POLL_S)
            if node.worker is not None and node.worker.died:
                break
        node.finish()
        if node.worker is not None and node.worker.died:
            err = node.core.worker_error
            get_logger(NODE_NAME).fatal(
                f'the inference thread died ({type(err).__name__}: {err}); stopping the node '
                '(see the error above), so a supervisor (launch respawn, systemd) can restart it'
            )
            return 1
    except (NodeStartupError, ParameterException) as err:
        if not stop_requested():  # else a stop came during the start: a clean exit
            get_logger(NODE_NAME).fatal(f'cannot start: {err}')
            return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
