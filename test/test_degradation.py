"""Graceful degradation: an engine that fails for a while, a worker thread that dies.

A failing frame is counted as failed and the node goes on; /diagnostics goes WARN, then ERROR
while it keeps failing, then OK again once frames go through. A worker that dies takes the
node process down with a FATAL line and exit code 1, never a live node that publishes nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from semseg_ros.node.core import ALL_OUTPUTS, FrameWorker, NodeCore
from semseg_ros.node.diagnostics import ERROR, OK, WARN
from semseg_ros.node.params import NodeParams

from ros_graph import wait_for_node  # isort: skip
from test_node_core import BandSegmenter, header, image_msg, rgb_frame  # isort: skip


class FlakySegmenter(BandSegmenter):
    """Raises while ``failing`` is set: a GPU out of memory for a while, say."""

    failing = False

    def segment(self, rgb):
        if self.failing:
            raise RuntimeError('CUDA error: out of memory')
        return super().segment(rgb)


def test_a_failing_engine_goes_warn_then_error_then_ok_again():
    errors: list[str] = []
    segmenter = FlakySegmenter()
    core = NodeCore(NodeParams(model_path='m.onnx'), segmenter, log_warning=errors.append,
                    log_error=errors.append)  # fmt: skip
    published = []

    def run_report(frames: int, sec: int) -> dict:
        for k in range(frames):  # the worker's loop body, as FrameWorker runs it
            core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(sec + k)))
            try:
                core.step(lambda: ALL_OUTPUTS, published.append, timeout=0)
            except RuntimeError:
                core.failed += 1  # what NodeCore.run does with it
        return core.diagnostics()

    levels = [run_report(3, 0)['level']]
    segmenter.failing = True
    levels += [run_report(3, 10)['level'], run_report(3, 20)['level']]
    segmenter.failing = False
    last = run_report(3, 30)
    levels.append(last['level'])
    assert levels == [OK, WARN, ERROR, OK]
    values = dict(last['values'])
    assert values['frames failed'] == '6' and values['frames published'] == '6'
    assert values['frames received'] == '12'


def test_the_worker_thread_counts_failures_and_recovers():
    errors: list[str] = []
    segmenter = FlakySegmenter()
    segmenter.failing = True
    core = NodeCore(NodeParams(model_path='m.onnx'), segmenter, log_warning=errors.append,
                    log_error=errors.append)  # fmt: skip
    published = []
    worker = FrameWorker(core, lambda: ALL_OUTPUTS, published.append)
    worker.start()
    try:
        for sec in range(6):
            if sec == 3:
                segmenter.failing = False
            core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(sec)))
            deadline = time.monotonic() + 5
            while core.pending and time.monotonic() < deadline:
                time.sleep(0.005)
    finally:
        worker.stop()
    assert worker.is_alive() is False and not worker.died
    assert (core.failed, len(published)) == (3, 3)
    assert len(errors) == 1 and 'CUDA error: out of memory' in errors[0]


def test_a_worker_that_dies_is_recorded_not_silent():
    errors: list[str] = []
    core = NodeCore(NodeParams(model_path='m.onnx'), BandSegmenter(), log_warning=errors.append,
                    log_error=errors.append)  # fmt: skip

    def publish(frame):
        raise SystemExit('a BaseException the frame loop does not catch')

    worker = FrameWorker(core, lambda: ALL_OUTPUTS, publish)
    worker.start()
    core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(1)))
    worker.join(5)
    assert not worker.is_alive() and worker.died
    assert 'the inference thread died' in errors[-1]
    status = core.diagnostics()
    assert status['level'] == ERROR and 'the inference thread died' in status['message']


# The real node process with a fault injected: the worker's loop ends by a BaseException once
# a frame was published (a bug in the loop itself, which no per-frame handler catches).
DYING_NODE = r"""
import sys
import semseg_ros.node.core as core
step = core.NodeCore.step
def dying_step(self, *args, **kwargs):
    result = step(self, *args, **kwargs)
    if self.published:
        raise SystemExit('injected: the worker loop broke')
    return result
core.NodeCore.step = dying_step
from semseg_ros.node import main
main()
"""


@pytest.mark.slow
def test_a_node_whose_worker_dies_exits_1_with_a_fatal_line(ros_env, ros_context, tmp_path):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from test_bag import export_tiny_model
    from test_node import camera_frame
    from test_node import image_msg as ros_image

    model = export_tiny_model(tmp_path)
    node = subprocess.Popen(
        [sys.executable, '-c', DYING_NODE, '--ros-args', '-p', f'model_path:={model}'],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    peer = rclpy.create_node('peer', context=ros_context)
    reports: list = []
    peer.create_subscription(DiagnosticArray, '/diagnostics', reports.append, 10)
    peer.create_subscription(Image, '/semseg_node/mask', lambda msg: None, 10)
    camera = peer.create_publisher(Image, 'image', 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(peer)
    try:
        wait_for_node(executor, peer, node, publishers=[camera])
        deadline = time.monotonic() + 30
        sec = 0
        while node.poll() is None and time.monotonic() < deadline:
            sec += 1
            camera.publish(ros_image(camera_frame(sec), 'bgra8', sec=sec))
            executor.spin_once(0.1)
        out, _ = node.communicate(timeout=10)
        end = time.monotonic() + 1
        while time.monotonic() < end:
            executor.spin_once(0.05)
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
        executor.shutdown()
        peer.destroy_node()
    assert node.returncode == 1, out
    fatal = [line for line in out.splitlines() if '[FATAL]' in line]
    assert len(fatal) == 1 and 'the inference thread died' in fatal[0], out
    assert 'injected: the worker loop broke' in fatal[0]
    levels = [r.status[0].level for r in reports]
    assert levels and levels[-1] == bytes([ERROR]), levels


def test_frames_missing_from_a_publishers_sequence_are_counted_as_overwritten():
    """A reliable reader's KEEP_LAST history overwrites samples while the executor is busy:
    DDS reports no loss, but the publication sequence numbers skip."""
    core = NodeCore(NodeParams(model_path='m.onnx'), BandSegmenter(), log_warning=print)
    for seq in (1, 2, 5, 6, 9):  # 3, 4, 7, 8 never reached the callback
        core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(seq)), publisher='a', sequence=seq)
    core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(1)), publisher='b', sequence=1)
    assert core.overwritten == 4
    core.on_message_lost(1)  # one of them DDS did report: counted once, as lost in transport
    values = dict(core.diagnostics()['values'])
    assert values['frames overwritten before the callback'] == '3'
    assert values['frames lost in transport'] == '1'
