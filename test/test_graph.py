"""The standalone node on a real middleware: in-process, then replay -> node -> recorder."""

from __future__ import annotations

import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    'cyclonedds', reason='the standalone node needs cyclonedds (pip install .[dds])'
)

from rosbags.highlevel import AnyReader
from test_bag import BandSegmenter, band_ids, export_tiny_model  # shared helpers

from semseg_ros.node_core import NodeCore, NodeParams
from semseg_ros.standalone import StandaloneNode, load_params
from semseg_ros.transport import dds, msgs
from semseg_ros.transport.process import StopSignal
from training.data.synthetic import SynthConfig, generate_dataset

REPO = Path(__file__).resolve().parents[1]
CAMERA = '/carla/ego_vehicle/rgb_front/image'
CAMERA_INFO = '/carla/ego_vehicle/rgb_front/camera_info'
FRAMES = 40


# --- The adapter, in one process -------------------------------------------------------------


@pytest.fixture
def participant():
    with dds.Participant(random.randint(1, 200), config=dds.loopback_config()) as p:
        yield p


def _take_until(participant, sub, count: int, timeout: float = 10.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        participant.wait(0.1)
        got += sub.take()
    return got


def test_node_segments_frames_and_reports(participant: dds.Participant) -> None:
    params = NodeParams(model_path='band.onnx')
    core = NodeCore(params, BandSegmenter(), log_warning=print)
    node = StandaloneNode(participant, params, core=core)
    camera = participant.create_publisher(msgs.Image, CAMERA)
    masks = participant.create_subscription(msgs.Image, '/semseg_node/mask')
    diagnostics = participant.create_subscription(msgs.DiagnosticArray, '/diagnostics')
    assert camera.wait_for_subscribers(1, 5.0)
    assert node.image_publishers['mask'].wait_for_subscribers(1, 5.0)
    node.start()
    stop = StopSignal()
    spinner = threading.Thread(target=node.spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        rng = np.random.default_rng(0)
        sent = {}
        for k in range(3):
            bgra = rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)
            header = msgs.Header(msgs.Time(7, k), 'ego_vehicle/rgb_front')
            camera.publish(msgs.Image(header, 24, 32, 'bgra8', 0, 128, bgra))
            sent[(7, k)] = bgra
            time.sleep(0.1)  # one at a time: nothing dropped
        received = _take_until(participant, masks, 3)
    finally:
        stop.stop()
        spinner.join(5)
        node.shutdown()
    assert len(received) == 3
    for mask in received:
        stamp = (mask.header.stamp.sec, mask.header.stamp.nanosec)
        assert mask.header.frame_id == 'ego_vehicle/rgb_front' and mask.encoding == 'mono8'
        expected = band_ids(sent[stamp][..., 2::-1])
        np.testing.assert_array_equal(mask.data.reshape(24, 32), expected)
    assert not node.wanted_outputs().color  # nobody subscribed: not computed
    (report,) = _take_until(participant, diagnostics, 1)[-1].status
    values = {kv.key: kv.value for kv in report.values}
    assert values['frames received'] == '3' and values['frames dropped (stale)'] == '0'
    assert report.hardware_id == '/semseg_node' and report.level == msgs.OK


def test_params_file_then_command_line(tmp_path: Path) -> None:
    path = tmp_path / 'semseg.yaml'
    path.write_text(
        '/**/semseg_node:\n  ros__parameters:\n    model_path: a.onnx\n    qos_depth: 3\n'
    )
    params = load_params(path, {'qos_depth': 2, 'ground_truth': True})
    assert (params.model_path, params.qos_depth, params.ground_truth) == ('a.onnx', 2, True)
    assert load_params(REPO / 'config' / 'semseg.yaml', {}).qos_reliability == 'best_effort'


# --- Three processes on loopback --------------------------------------------------------------


class Process:
    """A child process whose output lines are collected by a thread (no blocking reads)."""

    def __init__(self, module: str, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, '-m', f'semseg_ros.{module}', *args, '--loopback'],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if text in line:
                return
        raise AssertionError(f'no {text!r} from {self.proc.args}:\n{self.text()}')

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f'{self.proc.args} did not exit:\n{self.text()}') from None
        time.sleep(0.1)  # let the pump drain
        assert self.proc.returncode == 0, self.text()
        return self.text()

    def text(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return ''.join(self.output)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# Reruns: about 1 run in 6, a replay writer never matches a reader that has already matched
# it (an asymmetric Cyclone DDS discovery stall on loopback, not yet understood; see the
# session notes). Each attempt is independent processes on a fresh domain.
@pytest.mark.flaky(reruns=2)
@pytest.mark.slow
def test_replay_node_recorder(tmp_path: Path, test_scale) -> None:
    """Every mask carries its camera frame's stamp and frame id and decodes to class ids;
    the node's drop counter equals the frames it received minus the masks it published."""
    model = export_tiny_model(tmp_path)
    frames = test_scale.pick(FRAMES, 200)
    width, height = test_scale.pick((160, 120), (800, 600))
    dataset = generate_dataset(
        tmp_path / 'drive', frames, seed=1, mode='sequence',
        config=SynthConfig(width=width, height=height), progress=False,
    )  # fmt: skip
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 200)), PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
    out = tmp_path / 'bag'
    processes: list[Process] = []
    try:
        node = Process(
            'standalone', '--model', str(model), '-p', 'backend:=onnxruntime',
            '-p', 'device:=cpu', '-p', 'use_sim_time:=true',  # replay publishes /clock
            '--idle-exit', '2', '--duration', '50', env=env,
        )  # fmt: skip
        processes.append(node)
        recorder = Process(
            'record', '--out', str(out), '--idle-timeout', '4', '--duration', '50',
            '/semseg_node/mask', '/diagnostics', CAMERA_INFO, env=env,
        )  # fmt: skip
        processes.append(recorder)
        # The masks' reader must be matched before frames flow, or the node would skip
        # frames nobody listens to (lazy outputs) and the count below would not close.
        recorder.wait_for_line('/semseg_node/mask: 1 publisher(s) matched', timeout=30)
        camera = Process(
            'replay', str(dataset), '--rate', '40', '--no-seg', '--wait-for-subscribers', '1',
            env=env,
        )  # fmt: skip
        processes.append(camera)
        camera.finish(timeout=30)
        node_log = node.finish(timeout=30)
        recorder.finish(timeout=30)
    finally:
        for process in processes:
            process.kill()

    with AnyReader([out]) as reader:
        topics: dict[str, list] = {}
        for connection, _, raw in reader.messages():
            topics.setdefault(connection.topic, []).append(
                reader.deserialize(raw, connection.msgtype)
            )
    inputs = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in topics[CAMERA_INFO]}
    assert len(inputs) == frames
    masks = topics['/semseg_node/mask']
    assert masks, node_log
    for mask in masks:
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec) in inputs
        assert mask.header.frame_id == 'ego_vehicle/rgb_front'
        assert (mask.encoding, mask.height, mask.width) == ('mono8', height, width)
        assert mask.step == width
        assert int(mask.data.max()) < 13  # lyft13 class ids
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in masks]
    assert stamps == sorted(set(stamps))  # in order, none twice
    final = {kv.key: kv.value for kv in topics['/diagnostics'][-1].status[0].values}
    received, dropped = int(final['frames received']), int(final['frames dropped (stale)'])
    assert received <= frames
    assert dropped == received - len(masks), (final, node_log)
    # use_sim_time: latency is measured on /clock (sim time), not wall time.
    assert 0 <= float(final['latency stamp to publish p50 (ms)']) < 1000, final
