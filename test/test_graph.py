"""The runtime graph as it runs beside CARLA: ``semseg replay`` (the bridge's camera) ->
``semseg_node`` (rclpy, a tiny exported model) -> ``semseg record``, three real ROS 2
processes in a domain of their own."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip('rclpy', reason="the graph needs rclpy (pip install -e '.[ros]')")

from ros_graph import REPO, Process, graph_environment, read_bag, stamp
from test_bag import export_tiny_model  # shared helper

from semseg_ros.node.params import DIAGNOSTICS_PERIOD_S
from training.data.synthetic import SynthConfig, generate_dataset

CAMERA = '/carla/ego_vehicle/rgb_front/image'
CAMERA_INFO = '/carla/ego_vehicle/rgb_front/camera_info'
MASK = '/semseg_node/mask'
FRAMES = 40


def node_command(model: Path, *params: str) -> list[str]:
    """``semseg_node`` as ``ros2 run`` would start it: the shipped params file, overrides,
    and the bridge's camera remapped onto ``image``."""
    overrides = [arg for param in (f'model_path:={model}', *params) for arg in ('-p', param)]
    return [
        sys.executable, '-m', 'semseg_ros.node', '--ros-args',
        '--params-file', str(REPO / 'config' / 'semseg.yaml'), *overrides,
        '-r', f'image:={CAMERA}',
    ]  # fmt: skip


@pytest.mark.slow
def test_replay_node_recorder(tmp_path: Path, test_scale, ros_domain_id: int) -> None:
    """Every mask carries its camera frame's stamp and frame id, in order; the node's last
    /diagnostics report accounts for every frame the camera sent."""
    model = export_tiny_model(tmp_path)
    frames = test_scale.pick(FRAMES, 200)
    width, height = test_scale.pick((160, 120), (800, 600))
    dataset = generate_dataset(
        tmp_path / 'drive', frames, seed=1, mode='sequence',
        config=SynthConfig(width=width, height=height), progress=False,
    )  # fmt: skip
    env = graph_environment(ros_domain_id)
    out = tmp_path / 'bag'
    processes: list[Process] = []
    try:
        node = Process(
            node_command(model, 'backend:=onnxruntime', 'device:=cpu', 'use_sim_time:=true'),
            env=env,
        )
        processes.append(node)
        recorder = Process.module(
            'record', '--out', str(out), '--idle-timeout', '3', '--duration', '60',
            MASK, '/diagnostics', CAMERA_INFO, env=env,
        )  # fmt: skip
        processes.append(recorder)
        # The masks' reader must be matched before frames flow, or the node would skip
        # frames nobody listens to (lazy outputs).
        recorder.wait_for_line(f'{MASK}: 1 publisher(s) matched', timeout=30)
        camera = Process.module(
            'replay', str(dataset), '--rate', '40', '--no-seg', '--preload',
            '--wait-for-subscribers', '1', '--wait-for', f'{CAMERA_INFO}:1',
            env=env,
        )  # fmt: skip
        processes.append(camera)
        replay_log = camera.finish(timeout=60)
        # Two diagnostics periods: the last frame is processed and reported.
        time.sleep(2.5 * DIAGNOSTICS_PERIOD_S)
        node.signal(signal.SIGINT)
        node_log = node.finish(timeout=20)
        recorder_log = recorder.finish(timeout=30)  # --idle-timeout once the node is gone
    finally:
        for process in processes:
            process.kill()

    sent = int(re.search(rf'{CAMERA}: (\d+) sent', replay_log)[1])
    assert sent == frames, replay_log
    topics = read_bag(out)
    inputs = {stamp(m) for m in topics[CAMERA_INFO]}
    assert len(inputs) == frames, recorder_log
    masks = topics[MASK]
    assert masks, node_log
    for mask in masks:
        assert stamp(mask) in inputs
        assert mask.header.frame_id == 'ego_vehicle/rgb_front'
        assert (mask.encoding, mask.height, mask.width, mask.step) == (
            'mono8',
            height,
            width,
            width,
        )
        assert int(mask.data.max()) < 13  # lyft13 class ids
    stamps = [stamp(m) for m in masks]
    assert stamps == sorted(set(stamps))  # in order, none twice

    final = {kv.key: int(kv.value) for kv in topics['/diagnostics'][-1].status[0].values
             if kv.key.startswith('frames')}  # fmt: skip
    assert final['frames pending'] == 0, final
    assert final['frames published'] == len(masks), (final, recorder_log)
    assert final['frames received'] == (
        final['frames published']
        + final['frames dropped (stale)']
        + final['frames dropped (bad input)']
        + final['frames failed']
        + final['frames skipped (no subscriber)']
    ), final
    assert sent == final['frames received'] + final['frames lost in transport'], final
    report = topics['/diagnostics'][-1].status[0]
    latency = {kv.key: kv.value for kv in report.values}['latency stamp to publish p50 (ms)']
    # use_sim_time: latency is measured on /clock (sim time), 25 ms ticks at --rate 40.
    assert 0 <= float(latency) < 1000, report


@pytest.mark.slow
def test_lockstep_replay_scores_every_frame_as_semseg_bag_does(tmp_path: Path, ros_domain_id):
    """replay --lockstep at a rate the node cannot keep (one frame per mask): every frame gets
    its mask, and the masks are those ``semseg bag`` computes offline from the same frames."""
    from semseg_ros.bag import process_bag
    from semseg_ros.node.core import FrameProcessor, Outputs
    from semseg_ros.segmenter import Segmenter

    model = export_tiny_model(tmp_path)
    frames = 12
    dataset = generate_dataset(
        tmp_path / 'drive', frames, seed=2, mode='sequence',
        config=SynthConfig(width=160, height=120), progress=False,
    )  # fmt: skip
    env = graph_environment(ros_domain_id)
    out = tmp_path / 'bag'
    processes: list[Process] = []
    try:
        node = Process(node_command(model, 'backend:=onnxruntime', 'device:=cpu'), env=env)
        processes.append(node)
        recorder = Process.module(
            'record', '--out', str(out), '--idle-timeout', '3', '--duration', '60',
            MASK, CAMERA, env=env,
        )  # fmt: skip
        processes.append(recorder)
        recorder.wait_for_line(f'{MASK}: 1 publisher(s) matched', timeout=30)
        camera = Process.module(
            'replay', str(dataset), '--rate', '1000', '--no-seg', '--preload', '--lockstep',
            '--wait-for-subscribers', '2', env=env,
        )  # fmt: skip
        processes.append(camera)
        replay_log = camera.finish(timeout=60)
        node.signal(signal.SIGINT)
        node.finish(timeout=20)
        recorder.finish(timeout=30)
    finally:
        for process in processes:
            process.kill()
    assert f'lockstep: {frames} frame(s), 0 timed out' in replay_log, replay_log
    masks = {stamp(m): m for m in read_bag(out)[MASK]}
    assert len(masks) == frames  # none dropped as stale: the node saw every frame

    processor = FrameProcessor(Segmenter.from_model(model, backend='onnxruntime', device='cpu'))
    offline = tmp_path / 'offline'
    process_bag(
        out, offline, processor, image_topic=CAMERA, outputs=Outputs(True, False, False),
        namespace='/offline', progress=False,
    )  # fmt: skip
    expected = {stamp(m): m for m in read_bag(offline)['/offline/semseg_node/mask']}
    assert set(expected) == set(masks)
    for key, mask in masks.items():
        assert (mask.data == expected[key].data).all(), key
