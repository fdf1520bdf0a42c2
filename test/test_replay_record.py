"""``semseg replay`` (the CARLA bridge's camera topics) and ``semseg record`` (rosbag2)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('cyclonedds', reason='replay/record need cyclonedds (pip install .[dds])')

from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from semseg_ros import record, replay
from semseg_ros.labels import CARLA23, LYFT13, remap
from semseg_ros.transport import msgs
from training.data.lyft import read_label, read_rgb, scan_dataset
from training.data.synthetic import SynthConfig, generate_dataset

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
CAMERA = '/carla/ego_vehicle/rgb_front/image'
CAMERA_INFO = '/carla/ego_vehicle/rgb_front/camera_info'
SEG = '/carla/ego_vehicle/semantic_segmentation_front/image'
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('drive')
    config = SynthConfig(width=96, height=72)
    return generate_dataset(root / 'ds', 6, seed=3, mode='sequence', config=config, progress=False)


# --- Pieces ----------------------------------------------------------------------------------


def test_stamps_are_exact_sim_time_at_20_hz() -> None:
    assert replay.sim_stamp_ns(0) == 50_000_000
    assert replay.sim_stamp_ns(19) == 1_000_000_000
    assert replay.sim_stamp_ns(2, sim_hz=30.0) == 100_000_000
    stamps = [replay.sim_stamp_ns(k) for k in range(1000)]
    assert np.all(np.diff(stamps) == 50_000_000)  # no drift from float steps


def test_camera_info_is_the_bridge_pinhole() -> None:
    header = msgs.Header(msgs.Time(1, 0), 'ego_vehicle/rgb_front')
    info = replay.camera_info(msgs, header, 800, 600, 90.0)
    assert info.k == pytest.approx([400, 0, 400, 0, 400, 300, 0, 0, 1])
    assert info.p == pytest.approx([400, 0, 400, 0, 0, 400, 300, 0, 0, 0, 1, 0])
    assert info.distortion_model == 'plumb_bob' and info.d == [0.0] * 5
    assert (info.width, info.height, info.header) == (800, 600, header)


def test_bridge_names() -> None:
    cameras = replay.BridgeCameras()
    assert cameras.image_topic('rgb_front') == CAMERA
    assert cameras.info_topic('rgb_front') == CAMERA_INFO
    assert cameras.frame_id('semantic_segmentation_front') == (
        'ego_vehicle/semantic_segmentation_front'
    )


def test_dataset_frames_are_bgra_and_labels_in_the_bridge_palette(dataset: Path) -> None:
    source = replay.DatasetSource(dataset)
    assert len(source) == 6 and source.class_set.name == 'lyft13'
    assert source.seg_class_set is CARLA23  # what the 0.9.13 bridge publishes
    bgra, seg = source.frame(2)
    sample = scan_dataset(dataset).samples[2]
    np.testing.assert_array_equal(bgra[..., 2::-1], read_rgb(sample.rgb))
    assert (bgra[..., 3] == 255).all()
    ids = read_label(sample.label)  # lyft13 ids
    np.testing.assert_array_equal(
        seg[..., 2::-1], CARLA23.id_to_color(remap(ids, LYFT13, CARLA23))
    )
    # The node's ground-truth path (carla23 colours -> lyft13 ids) gives the labels back.
    np.testing.assert_array_equal(
        remap(CARLA23.color_to_id(seg[..., 2::-1]), CARLA23, LYFT13), ids
    )
    # The dataset's own palette on request, and no labels at all.
    own = replay.DatasetSource(dataset, seg_class_set=None).frame(2)[1]
    np.testing.assert_array_equal(own[..., 2::-1], LYFT13.id_to_color(ids))
    assert replay.DatasetSource(dataset, labels=False).frame(0)[1] is None


def test_seg_class_set_without_a_mapping_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    custom = tmp_path / 'two.yaml'
    custom.write_text(
        'name: two\nclasses:\n'
        '  - {name: Roads, color: [128, 64, 128]}\n'
        '  - {name: Cars, color: [0, 0, 142]}\n'
    )
    with pytest.raises(
        replay.ReplayError, match=r'--seg-class-set: no mapping from lyft13 to two'
    ):
        replay.DatasetSource(dataset, seg_class_set=str(custom))


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(replay.ReplayError, match='no image/label pairs'):
        replay.DatasetSource(tmp_path)


@pytest.mark.parametrize(
    ('spec', 'expected'),
    [
        ('/semseg_node/mask', ('/semseg_node/mask', 'sensor_msgs/msg/Image')),
        (CAMERA_INFO, (CAMERA_INFO, 'sensor_msgs/msg/CameraInfo')),
        ('/diagnostics', ('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray')),
        ('/x/thing:sensor_msgs/msg/Image', ('/x/thing', 'sensor_msgs/msg/Image')),
    ],
)
def test_record_topic_types(spec: str, expected: tuple[str, str]) -> None:
    assert record.parse_topic(spec) == expected


@pytest.mark.parametrize(
    ('spec', 'match'),
    [('/x/thing', 'cannot guess'), ('/x:std_msgs/msg/String', 'not supported'), ('/1x', 'name')],
)
def test_record_topic_errors(spec: str, match: str) -> None:
    with pytest.raises(record.RecordError, match=match):
        record.parse_topic(spec)


def _bag_with_ticks(path: Path) -> None:
    T = TYPESTORE.types
    with Writer(path, version=8) as writer:
        image = writer.add_connection(CAMERA, 'sensor_msgs/msg/Image', typestore=TYPESTORE)
        clock = writer.add_connection('/clock', 'rosgraph_msgs/msg/Clock', typestore=TYPESTORE)
        other = writer.add_connection(
            '/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', typestore=TYPESTORE
        )
        for k in range(3):
            stamp = T['builtin_interfaces/msg/Time'](sec=k, nanosec=0)
            header = T['std_msgs/msg/Header'](stamp=stamp, frame_id='f')
            msg = T['sensor_msgs/msg/Image'](
                header=header, height=1, width=1, encoding='mono8', is_bigendian=0, step=1,
                data=np.array([k], np.uint8),
            )  # fmt: skip
            t = 10 * k
            clock_msg = T['rosgraph_msgs/msg/Clock'](clock=stamp)
            writer.write(clock, t, TYPESTORE.serialize_cdr(clock_msg, 'rosgraph_msgs/msg/Clock'))
            for dt in (1, 2):  # two images of the same tick
                writer.write(image, t + dt, TYPESTORE.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
            diag = T['diagnostic_msgs/msg/DiagnosticArray'](header=header, status=[])
            data = TYPESTORE.serialize_cdr(diag, 'diagnostic_msgs/msg/DiagnosticArray')
            writer.write(other, t + 3, data)


def test_bag_ticks_group_by_stamp(tmp_path: Path) -> None:
    _bag_with_ticks(tmp_path / 'bag')
    assert replay.is_bag(tmp_path / 'bag')
    ticks = list(replay.bag_ticks(tmp_path / 'bag'))
    assert [[topic for topic, _, _ in tick] for tick in ticks] == [['/clock', CAMERA, CAMERA]] * 3
    first = msgs.Image.deserialize(ticks[1][1][2])
    assert first.header.stamp == msgs.Time(1, 0) and first.data.tolist() == [1]


# --- Real processes on loopback ---------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 200)), PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
    return env


def _start(module: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, '-m', f'semseg_ros.{module}', *args, '--loopback'],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 30.0, *others: subprocess.Popen) -> str:
    """``proc``'s output once it exited 0; else fail with its output and that of ``others``."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out = f'did not exit in {timeout} s:\n{out}'
    else:
        if proc.returncode == 0:
            return out
    logs = [out]
    for other in others:
        other.kill()
        logs.append(f'{other.args}:\n{other.communicate()[0]}')
    raise AssertionError(f'{proc.args} ' + '\n'.join(logs))


def _read(path: Path) -> dict[str, list]:
    topics: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for connection, _, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            topics.setdefault(connection.topic, []).append(msg)
    return topics


# Reruns: about 1 run in 6, a replay writer never matches a reader that has already matched
# it (an asymmetric Cyclone DDS discovery stall on loopback, not yet understood; see the
# session notes). Each attempt is independent processes on a fresh domain.
@pytest.mark.flaky(reruns=2)
@pytest.mark.slow
def test_replay_dataset_then_bag_through_the_recorder(dataset: Path, tmp_path: Path) -> None:
    env = _env()
    first = tmp_path / 'first'
    recorder = _start(
        'record', '--out', str(first), '--idle-timeout', '1.5', '--duration', '25',
        CAMERA, CAMERA_INFO, SEG, '/clock', env=env,
    )  # fmt: skip
    source = _start('replay', str(dataset), '--rate', '50', '--wait-for-subscribers', '1', env=env)
    assert 'subscriber(s) matched' in _finish(source, 30, recorder)
    _finish(recorder)

    topics = _read(first)
    assert [len(topics[t]) for t in (CAMERA, CAMERA_INFO, SEG, '/clock')] == [6, 6, 6, 6]
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in topics[CAMERA]]
    assert stamps == [(0, 50_000_000 * (k + 1)) for k in range(6)]  # 20 Hz sim time
    assert {m.header.frame_id for m in topics[CAMERA]} == {'ego_vehicle/rgb_front'}
    assert {m.encoding for m in topics[CAMERA] + topics[SEG]} == {'bgra8'}
    seg = topics[SEG][0]
    assert seg.header.frame_id == 'ego_vehicle/semantic_segmentation_front'
    colours = np.unique(seg.data.reshape(72, 96, 4)[..., 2::-1].reshape(-1, 3), axis=0)
    assert (CARLA23.color_to_id(colours) != 255).all()  # only the bridge's palette colours
    assert topics[CAMERA_INFO][0].k[0] == pytest.approx(48.0)  # fx = 96 / 2 / tan(45 deg)

    # The recorded bag replays too, unchanged.
    second = tmp_path / 'second'
    recorder = _start(
        'record', '--out', str(second), '--idle-timeout', '1.5', '--duration', '25', CAMERA,
        env=env,
    )  # fmt: skip
    source = _start('replay', str(first), '--rate', '50', '--wait-for-subscribers', '1', env=env)
    _finish(source, 30, recorder)
    _finish(recorder)
    again = _read(second)[CAMERA]
    assert [m.header.stamp for m in again] == [m.header.stamp for m in topics[CAMERA]]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(again, topics[CAMERA], strict=True))


def test_replay_and_record_cli_errors(tmp_path: Path, capsys) -> None:
    assert replay.main([str(tmp_path / 'missing')], prog='semseg replay') == 2
    assert 'does not exist' in capsys.readouterr().err
    assert replay.main([str(tmp_path), '--rate', '0'], prog='semseg replay') == 2
    assert replay.main([str(tmp_path)], prog='semseg replay') == 1
    assert 'no image/label pairs' in capsys.readouterr().err
    (tmp_path / 'bag').mkdir()
    assert record.main(['--out', str(tmp_path / 'bag')], prog='semseg record') == 1
    assert '--overwrite' in capsys.readouterr().err
    assert record.main(['--out', str(tmp_path / 'b'), '/what'], prog='semseg record') == 2
