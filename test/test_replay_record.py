"""``semseg replay`` (the CARLA bridge's camera topics) and ``semseg record`` (rosbag2), on
rclpy: the pieces in process, then real processes in a ROS domain of their own."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy', reason="replay/record need rclpy (pip install -e '.[ros]')")

from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message
from ros_graph import Process, graph_environment, read_bag, stamp
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from semseg_ros import record, replay
from semseg_ros.labels import CARLA23, LYFT13, remap
from semseg_ros.tool_node import MessageTypeError, message_class
from training.data.lyft import read_label, read_rgb, scan_dataset
from training.data.synthetic import SynthConfig, generate_dataset

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
CAMERA = '/carla/ego_vehicle/rgb_front/image'
CAMERA_INFO = '/carla/ego_vehicle/rgb_front/camera_info'
SEG = '/carla/ego_vehicle/semantic_segmentation_front/image'


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
    header = Header(stamp=Time(sec=1, nanosec=0), frame_id='ego_vehicle/rgb_front')
    info = replay.camera_info(header, 800, 600, 90.0)
    assert list(info.k) == pytest.approx([400, 0, 400, 0, 400, 300, 0, 0, 1])
    assert list(info.p) == pytest.approx([400, 0, 400, 0, 0, 400, 300, 0, 0, 0, 1, 0])
    assert info.distortion_model == 'plumb_bob' and list(info.d) == [0.0] * 5
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
    [
        ('/x/thing', 'cannot guess'),
        ('/x:foo_msgs/msg/Nope', 'not supported'),
        ('/1x', 'not a valid ROS name'),
    ],
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
    # rosbags' CDR is rclpy's wire format: the bytes replay publishes unchanged.
    first = deserialize_message(ticks[1][1][2], Image)
    assert first.header.stamp == Time(sec=1, nanosec=0) and list(first.data) == [1]


def test_message_classes_by_type_name() -> None:
    assert message_class('sensor_msgs/msg/Image') is Image
    with pytest.raises(MessageTypeError, match='write it as pkg/msg/Type'):
        message_class('sensor_msgs/Image')
    with pytest.raises(MessageTypeError, match=r'not installed.*ros-kilted-foo-msgs'):
        message_class('foo_msgs/msg/Nope')


def test_image_data_is_set_without_a_per_byte_loop() -> None:
    """800x600 bgra8 into an rclpy Image: array.array('B') is one memcpy (rclpy checks any
    other sequence byte by byte, ~100x slower)."""
    import time

    from semseg_ros.imaging import array_to_image_fields

    bgra = np.zeros((600, 800, 4), np.uint8)
    fields = array_to_image_fields(bgra, 'bgra8')
    start = time.perf_counter()
    for _ in range(5):
        Image(**fields.msg_kwargs(data_type='array'))
    assert (time.perf_counter() - start) / 5 < 0.02


# --- Real processes, a ROS domain of their own -------------------------------------------------


def _replay(*args: str, env: dict[str, str]) -> Process:
    return Process.module('replay', *args, '--wait-for-subscribers', '1', env=env)


def _record(out: Path, *args: str, env: dict[str, str]) -> Process:
    return Process.module(
        'record', '--out', str(out), '--idle-timeout', '1.5', '--duration', '25', *args, env=env
    )


@pytest.mark.slow
def test_replay_dataset_then_bag_through_the_recorder(
    dataset: Path, tmp_path: Path, ros_domain_id: int
) -> None:
    env = graph_environment(ros_domain_id)
    first = tmp_path / 'first'
    recorder = _record(first, CAMERA, CAMERA_INFO, SEG, '/clock', env=env)
    recorder.wait_for_line(f'recording 4 topics to {first}', timeout=20)
    # Every recorded topic's reader, not only the camera's: the first tick must reach all.
    waits = [arg for topic in (CAMERA_INFO, SEG, '/clock') for arg in ('--wait-for', f'{topic}:1')]
    source = _replay(str(dataset), '--rate', '50', *waits, env=env)
    out = source.finish(30)
    assert 'subscriber(s) matched' in out and f'{CAMERA}: 6 sent' in out
    log = recorder.finish(30)
    assert f'{CAMERA}: 6 received, 0 lost' in log, log

    topics = read_bag(first)
    assert [len(topics[t]) for t in (CAMERA, CAMERA_INFO, SEG, '/clock')] == [6, 6, 6, 6]
    stamps = [stamp(m) for m in topics[CAMERA]]
    assert stamps == [(0, 50_000_000 * (k + 1)) for k in range(6)]  # 20 Hz sim time
    assert [(m.clock.sec, m.clock.nanosec) for m in topics['/clock']] == stamps
    assert {m.header.frame_id for m in topics[CAMERA]} == {'ego_vehicle/rgb_front'}
    assert {m.encoding for m in topics[CAMERA] + topics[SEG]} == {'bgra8'}
    samples = scan_dataset(dataset).samples
    np.testing.assert_array_equal(
        topics[CAMERA][3].data.reshape(72, 96, 4)[..., 2::-1], read_rgb(samples[3].rgb)
    )
    seg = topics[SEG][0]
    assert seg.header.frame_id == 'ego_vehicle/semantic_segmentation_front'
    colours = np.unique(seg.data.reshape(72, 96, 4)[..., 2::-1].reshape(-1, 3), axis=0)
    assert (CARLA23.color_to_id(colours) != 255).all()  # only the bridge's palette colours
    assert topics[CAMERA_INFO][0].k[0] == pytest.approx(48.0)  # fx = 96 / 2 / tan(45 deg)

    # The recorded bag replays too, unchanged, into a bag written as sqlite3.
    second = tmp_path / 'second'
    recorder = _record(second, '--storage', 'sqlite3', '--count', '6', CAMERA, env=env)
    recorder.wait_for_line('recording 1 topics', timeout=20)
    _replay(str(first), '--rate', '50', env=env).finish(30)
    recorder.finish(30)
    assert (second / 'second.db3').is_file()
    again = read_bag(second)[CAMERA]
    assert [m.header.stamp for m in again] == [m.header.stamp for m in topics[CAMERA]]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(again, topics[CAMERA], strict=True))


@pytest.mark.slow
def test_signals_stop_replay_and_recorder_cleanly(
    dataset: Path, tmp_path: Path, ros_domain_id: int
) -> None:
    """SIGINT stops a looping replay, SIGTERM the recorder: both exit 0, and the bag is
    complete under its name. A killed run's partial bag is cleaned, --overwrite replaces."""
    env = graph_environment(ros_domain_id)
    out = tmp_path / 'bag'
    out.mkdir()
    (out / 'old.txt').write_text('an older bag')
    leftover = record.partial_path(out)
    leftover.mkdir()
    (leftover / 'junk.mcap').write_text('a killed run')
    recorder = Process.module(
        'record', '--out', str(out), '--overwrite', '--duration', '60', CAMERA, env=env
    )
    recorder.wait_for_line('recording 1 topics', timeout=20)
    assert not (leftover / 'junk.mcap').exists()
    assert (out / 'old.txt').exists()  # replaced only by a complete bag
    source = _replay(str(dataset), '--rate', '20', '--loop', env=env)
    recorder.wait_for_line(f'{CAMERA}: 1 publisher(s) matched', timeout=20)
    source.wait_for_line('subscriber(s) matched', timeout=20)
    time.sleep(0.8)  # looping: more ticks than the dataset has
    source.signal(signal.SIGINT)
    sent = int(re.search(rf'{CAMERA}: (\d+) sent', source.finish(20))[1])
    assert sent >= 6
    recorder.signal(signal.SIGTERM)
    log = recorder.finish(20)
    assert f'{CAMERA}: {sent} received, 0 lost' in log, log
    assert not leftover.exists() and not (out / 'old.txt').exists()
    assert len(read_bag(out)[CAMERA]) == sent
    assert stamp(read_bag(out)[CAMERA][-1]) == divmod(replay.sim_stamp_ns(sent - 1), 10**9)


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
    assert replay.main([str(tmp_path), '--wait-for', '/clock'], prog='semseg replay') == 2
    assert 'expected TOPIC:N' in capsys.readouterr().err


def test_replay_wait_for_a_topic_it_does_not_publish(
    dataset: Path, ros_domain_id: int, monkeypatch, capsys
) -> None:
    for name, value in graph_environment(ros_domain_id).items():
        monkeypatch.setenv(name, value)
    args = [str(dataset), '--no-seg', '--wait-for', '/nope:1']
    assert replay.main(args, prog='semseg replay') == 1
    assert '--wait-for: this replay does not publish /nope; it publishes /clock' in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_best_effort_recorder_with_count_limited_looping_replay(
    dataset: Path, tmp_path: Path, ros_domain_id: int
) -> None:
    """A best-effort recorder (as for a best-effort camera) stopped by --idle-timeout, a
    looping replay stopped by --count: with the shipped Fast DDS profile nothing is lost."""
    env = graph_environment(ros_domain_id)
    out = tmp_path / 'bag'
    recorder = Process.module(
        'record', '--out', str(out), '--best-effort', '--idle-timeout', '3', '--duration', '60',
        CAMERA, env=env,
    )  # fmt: skip
    recorder.wait_for_line('recording 1 topics', timeout=20)
    source = _replay(str(dataset), '--no-seg', '--loop', '--count', '10', env=env)
    assert f'{CAMERA}: 10 sent' in source.finish(30)
    log = recorder.finish(30)  # --idle-timeout
    assert f'{CAMERA}: 10 received, 0 lost' in log, log
    stamps = [stamp(m) for m in read_bag(out)[CAMERA]]
    assert stamps == [divmod(replay.sim_stamp_ns(k), 10**9) for k in range(10)]  # on through loops


@pytest.mark.slow
def test_lockstep_without_a_node_waits_each_frame_then_reports_the_timeouts(
    dataset: Path, ros_domain_id: int
) -> None:
    env = graph_environment(ros_domain_id)
    started = time.monotonic()
    log = Process.module(
        'replay', str(dataset), '--count', '3', '--lockstep', '--lockstep-timeout', '0.3',
        '--wait-timeout', '0.5', env=env,
    ).finish(30)  # fmt: skip
    assert 'nothing publishes /semseg_node/mask' in log, log
    assert 'lockstep: 3 frame(s), 3 timed out after 0.3 s waiting for /semseg_node/mask' in log
    assert time.monotonic() - started > 3 * 0.3


def test_lockstep_reads_a_bag_ticks_image_stamp_from_its_cdr_bytes():
    header = TYPESTORE.types['std_msgs/msg/Header'](
        stamp=TYPESTORE.types['builtin_interfaces/msg/Time'](sec=12, nanosec=345), frame_id='f'
    )
    image = TYPESTORE.types['sensor_msgs/msg/Image'](
        header=header, height=1, width=1, encoding='mono8', is_bigendian=0, step=1,
        data=np.zeros(1, np.uint8),
    )  # fmt: skip
    raw = bytes(TYPESTORE.serialize_cdr(image, 'sensor_msgs/msg/Image'))
    tick = [('/clock', 'rosgraph_msgs/msg/Clock', b''), (CAMERA, 'sensor_msgs/msg/Image', raw)]
    assert replay._image_stamp(tick, CAMERA) == (12, 345)
