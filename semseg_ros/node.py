"""The rclpy node (``ros2 run semseg_ros semseg_node``): ROS I/O around ``node_core``.

Everything that is not ROS I/O (parameters, the newest-frame slot, segmentation, ground-truth
matching, IoU, diagnostics) lives in :mod:`semseg_ros.node_core` and is shared with the
standalone DDS adapter; reading this file is its review.

Threads: ``rclpy.spin`` (a single-threaded executor) runs the image / ground-truth callbacks
and the diagnostics timer, each a few microseconds of bookkeeping; a dedicated worker thread
(:class:`~semseg_ros.node_core.FrameWorker`) takes the newest frame from a
:class:`~semseg_ros.node_core.LatestFrameSlot`, runs inference and publishes. Why not a
MultiThreadedExecutor with callback groups: the executor would queue frames in its own way
(DDS history) and drop them without counting; with the slot, the subscription callback never
waits on inference, a stale frame is replaced (newest wins) and counted for /diagnostics, and
the standalone adapter uses the very same loop. Publishing from another thread is thread-safe
in rclpy, and onnxruntime / TensorRT release the GIL while they run.
"""

from __future__ import annotations

import sys

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import (
    HistoryPolicy,
    QoSOverridingOptions,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import Image

from semseg_ros.node_core import (
    BUILTIN_PARAMETERS,
    DIAGNOSTICS_PERIOD_S,
    DIAGNOSTICS_TOPIC,
    GROUND_TRUTH_TOPIC,
    INPUT_TOPIC,
    NODE_NAME,
    OUTPUT_QOS_DEPTH,
    OUTPUT_TOPICS,
    PARAMETERS,
    FrameWorker,
    NodeCore,
    NodeStartupError,
    Outputs,
    ProcessedFrame,
)

_RELIABILITY = {
    'best_effort': ReliabilityPolicy.BEST_EFFORT,
    'reliable': ReliabilityPolicy.RELIABLE,
}


class SemsegNode(Node):
    """Subscribes ``image`` (and ``ground_truth``), publishes ``~/mask|color|overlay``."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        for spec in PARAMETERS:
            if spec.name not in BUILTIN_PARAMETERS:  # use_sim_time: rclpy declares it
                descriptor = ParameterDescriptor(
                    description=spec.metadata['description'], read_only=True
                )
                self.declare_parameter(spec.name, spec.default, descriptor)
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        self.core = NodeCore.start(
            values,
            log_warning=self.get_logger().warning,
            log_error=self.get_logger().error,
            now_ns=lambda: self.get_clock().now().nanoseconds,  # sim time when use_sim_time
        )
        params = self.core.params

        # Default best effort, depth 1: matches the bridge's RELIABLE publishers and rosbag
        # play alike; `qos_overrides:` in the params YAML can change any policy.
        camera_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=params.qos_depth,
            reliability=_RELIABILITY[params.qos_reliability],
        )
        overrides = QoSOverridingOptions.with_default_policies()
        self.image_subscription = self.create_subscription(
            Image, INPUT_TOPIC, self.image_callback, camera_qos,
            qos_overriding_options=overrides,
        )  # fmt: skip
        self.gt_subscription = None
        if params.ground_truth:
            self.gt_subscription = self.create_subscription(
                Image, GROUND_TRUTH_TOPIC, self.ground_truth_callback, camera_qos,
                qos_overriding_options=overrides,
            )  # fmt: skip

        output_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=OUTPUT_QOS_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE,
        )
        self.image_publishers = {
            name: self.create_publisher(Image, topic, output_qos, qos_overriding_options=overrides)
            for name, topic in OUTPUT_TOPICS.items()
        }
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        # Steady clock: diagnostics keep coming when simulation time stands still.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self.diagnostics_callback, clock=steady
        )

        self.worker = FrameWorker(self.core, self.wanted_outputs, self.publish_outputs)
        self.worker.start()
        segmenter = self.core.segmenter
        self.get_logger().info(
            f'{params.model_path} ({segmenter.class_set.name}, {segmenter.backend_name}): '
            f'{self.image_subscription.topic_name} -> {", ".join(OUTPUT_TOPICS.values())}'
        )

    def image_callback(self, msg: Image) -> None:
        self.core.on_image(msg)

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
        status = self.core.diagnostics(hardware_id=self.get_fully_qualified_name())
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

    def destroy_node(self) -> None:
        self.worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    try:
        node = SemsegNode()
    except (NodeStartupError, ParameterException) as err:
        get_logger(NODE_NAME).fatal(f'cannot start: {err}')
        rclpy.try_shutdown()
        sys.exit(1)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
