"""The CARLA collector: its pure parts with real data shapes, the server-restore order, the
CLI, and, for real, the clear error when no server answers (the only live path testable
here: a CARLA server cannot run on these machines)."""

from __future__ import annotations

import importlib.util
import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from semseg_ros.labels import CARLA23, CITYSCAPES29
from training.data import collect
from training.data.carla_io import (
    WEATHER_PRESETS,
    CollectError,
    DatasetWriter,
    FrameMatcher,
    SyncSession,
    TownNotFoundError,
    VersionMismatchError,
    camera_bgr,
    camera_intrinsics,
    check_versions,
    class_set_for_version,
    decode_bgra,
    episode_names,
    parse_version,
    resolve_town,
    segmentation_ids,
    split_frames,
    weather_order,
)
from training.data.check import check_dataset
from training.data.lyft import dataset_class_set, read_label, read_rgb, scan_dataset

ROOT = Path(__file__).resolve().parents[1]
HAS_CARLA = importlib.util.find_spec('carla') is not None


@dataclass
class SensorImage:
    """What a CARLA camera callback hands over (``carla.Image``'s fields that are used)."""

    frame: int
    width: int = 8
    height: int = 6
    raw_data: bytes = b''


def _bgra(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A BGRA frame whose four channels hold different values, so a wrong index shows."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 4), np.uint8)
    image[..., 0] = rng.integers(0, 50, (height, width))  # B
    image[..., 1] = rng.integers(100, 150, (height, width))  # G
    image[..., 2] = rng.integers(0, 23, (height, width))  # R: the tag, a carla23 id
    image[..., 3] = 255  # A
    return image


# --- versions and class sets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ('version', 'class_set'),
    [
        ('0.8.4', 'lyft13'),
        ('0.9.9-dirty', 'lyft13'),
        ('0.9.10', 'carla23'),
        ('0.9.13', 'carla23'),
        ('0.9.13-1-g8854804f4-dirty', 'carla23'),
        ('0.9.14', 'cityscapes29'),
        ('0.9.16', 'cityscapes29'),
        ('0.10.0', 'cityscapes29'),
    ],
)
def test_class_set_from_server_version(version, class_set):
    assert class_set_for_version(version) == class_set


def test_unreadable_version_names_the_string():
    assert parse_version('0.9') == (0, 9, 0)
    with pytest.raises(CollectError, match="'latest'"):
        class_set_for_version('latest')


def test_version_mismatch_names_both_versions():
    assert check_versions('0.9.13', '0.9.13-dirty') is None
    with pytest.raises(VersionMismatchError, match=r'0\.9\.16.*0\.9\.13.*allow-version-mismatch'):
        check_versions('0.9.16', '0.9.13')
    warning = check_versions('0.9.16', '0.9.13', allow_mismatch=True)
    assert '0.9.16' in warning and '0.9.13' in warning


# --- maps and weather -----------------------------------------------------------------------


def test_resolve_town_by_name_or_path_and_list_maps_when_unknown():
    available = ['/Game/Carla/Maps/Town01', '/Game/Carla/Maps/Town10HD_Opt']
    assert resolve_town('town10hd_opt', available) == '/Game/Carla/Maps/Town10HD_Opt'
    assert resolve_town('/Game/Carla/Maps/Town01', available) == '/Game/Carla/Maps/Town01'
    with pytest.raises(TownNotFoundError, match=r"'Town99'.*Town01, Town10HD_Opt"):
        resolve_town('Town99', available)


def test_frames_and_episodes_per_town():
    assert split_frames(10, 3) == [4, 3, 3]
    assert sum(split_frames(1001, 4)) == 1001
    assert episode_names(['Carla/Maps/Town01', 'Town03', 'Town01']) == [
        'Town01',
        'Town03',
        'Town01_2',
    ]


def test_weather_order_is_seeded_and_keeps_what_the_client_has():
    # A 0.9.13 client has no night presets; carla.WeatherParameters also has other attributes.
    available = [name for name in WEATHER_PRESETS if 'Night' not in name] + ['cloudiness']
    order = weather_order(available, seed=3)
    assert order == weather_order(available, seed=3)
    assert sorted(order) == sorted(n for n in WEATHER_PRESETS if 'Night' not in n)
    assert order != weather_order(available, seed=4)


# --- camera data ----------------------------------------------------------------------------


def test_bgra_buffer_to_bgr_image_and_red_channel_tags():
    height, width = 600, 800  # the real camera size; CARLA sends a flat BGRA buffer
    bgra = _bgra(height, width)
    image = SensorImage(7, width, height, memoryview(bgra.tobytes()))
    bgr = camera_bgr(image)
    tags = segmentation_ids(image)
    assert bgr.shape == (height, width, 3) and bgr.dtype == np.uint8
    np.testing.assert_array_equal(bgr, bgra[..., :3])
    assert tags.shape == (height, width) and tags.dtype == np.uint8
    np.testing.assert_array_equal(tags, bgra[..., 2])  # red, not blue (index 0)
    bgr[0, 0] = 0  # a copy: the sensor's buffer may be reused after the callback
    assert bgra[0, 0, 0] == decode_bgra(bgra.tobytes(), width, height)[0, 0, 0]


def test_buffer_of_the_wrong_size_says_what_was_expected():
    with pytest.raises(CollectError, match=r'6x8x4 = 192 uint8 \(BGRA\)'):
        decode_bgra(bytes(6 * 8 * 3), width=8, height=6)


def test_intrinsics_of_the_default_camera():
    k = camera_intrinsics(800, 600, 90.0)
    assert k['fx'] == pytest.approx(400.0) and k['fy'] == pytest.approx(400.0)
    assert (k['cx'], k['cy']) == (400.0, 300.0)
    assert k['K'][2] == [0.0, 0.0, 1.0]


# --- frame matching -------------------------------------------------------------------------


def _queue(*frames: int) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    for frame in frames:
        q.put(SensorImage(frame))
    return q


def test_matcher_pairs_by_frame_and_drops_stale_images():
    matcher = FrameMatcher(_queue(1, 2, 3), _queue(2, 3))
    rgb, seg = matcher.get(2, timeout=0.1)
    assert (rgb.frame, seg.frame) == (2, 2)
    rgb, seg = matcher.get(3, timeout=0.1)
    assert (rgb.frame, seg.frame) == (3, 3)
    assert matcher.report() == {'paired': 2, 'stale_dropped': 1, 'missed_frames': 0}


def test_matcher_reports_a_missing_image_and_keeps_a_newer_one():
    matcher = FrameMatcher(_queue(4, 5), _queue(5))
    start = time.monotonic()
    assert matcher.get(4, timeout=0.05) is None  # seg 4 never came; seg 5 is kept for later
    assert time.monotonic() - start < 1.0
    rgb, seg = matcher.get(5, timeout=0.05)
    assert (rgb.frame, seg.frame) == (5, 5)
    assert matcher.report() == {'paired': 1, 'stale_dropped': 0, 'missed_frames': 1}
    assert matcher.get(6, timeout=0.02) is None  # nothing at all: a timeout, not a hang


def test_matcher_waits_for_images_from_the_sensor_thread():
    matcher = FrameMatcher()  # makes its own queues for the callbacks
    rgb_q, seg_q = matcher.rgb_queue, matcher.seg_queue

    def deliver() -> None:  # CARLA calls sensor callbacks from its own threads
        rgb_q.put(SensorImage(9))
        time.sleep(0.05)
        seg_q.put(SensorImage(8))
        seg_q.put(SensorImage(9))

    threading.Timer(0.02, deliver).start()
    pair = matcher.get(9, timeout=2.0)
    assert pair is not None and pair[1].frame == 9


# --- writing the layout ---------------------------------------------------------------------


def test_written_layout_reads_back_with_its_class_set(tmp_path):
    out = tmp_path / 'carla'
    writer = DatasetWriter(out, 'carla23')
    frames = {}
    for episode, count in (('Town01', 2), ('Town10HD_Opt', 1)):
        writer.start_episode(episode, episode)
        writer.note_weather('ClearNoon')
        for i in range(count):
            bgra = _bgra(60, 80, seed=len(frames))
            image = SensorImage(100 + i, 80, 60, bgra.tobytes())
            writer.write(camera_bgr(image), segmentation_ids(image))
            frames[(episode, f'{i:06d}')] = bgra
    writer.write_info(image_size=[80, 60], carla={'server_version': '0.9.13'})

    scan = scan_dataset(out)
    assert [(s.episode, s.name) for s in scan.samples] == sorted(frames)
    assert not scan.unpaired and not scan.ignored
    assert dataset_class_set(out) is CARLA23
    for sample in scan.samples:
        bgra = frames[(sample.episode, sample.name)]
        np.testing.assert_array_equal(read_label(sample.label), bgra[..., 2])
        np.testing.assert_array_equal(read_rgb(sample.rgb), bgra[..., 2::-1])
    info = json.loads((out / 'dataset.json').read_text())
    assert info['frames'] == 3 and info['episodes'] == ['Town01', 'Town10HD_Opt']
    assert info['towns']['Town01'] == {
        'town': 'Town01',
        'frames': 2,
        'weather': [{'from_frame': 0, 'preset': 'ClearNoon'}],
    }
    report = check_dataset(out)
    assert report.ok and report.total_pairs == 3, report.problems


def test_writer_refuses_a_non_empty_folder_and_a_frame_before_an_episode(tmp_path):
    (tmp_path / 'old.txt').write_text('x')
    with pytest.raises(CollectError, match='not empty'):
        DatasetWriter(tmp_path, 'cityscapes29')
    writer = DatasetWriter(tmp_path / 'new', 'cityscapes29')
    assert writer.class_set is CITYSCAPES29
    with pytest.raises(CollectError, match='start_episode'):
        writer.write(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))


def test_a_pair_interrupted_between_its_two_files_leaves_neither(tmp_path, monkeypatch):
    """Ctrl+C (or SIGTERM, which the command turns into it) after the image, before the label:
    the dataset the run leaves holds whole pairs only."""
    from training.data import carla_io

    def image_then_interrupt(rgb_path, label_path, bgr, ids):
        rgb_path.write_bytes(b'a whole PNG')
        raise KeyboardInterrupt

    writer = DatasetWriter(tmp_path / 'carla', 'cityscapes29')
    writer.start_episode('Town01', 'Town01')
    monkeypatch.setattr(carla_io, 'write_pair', image_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        writer.write(np.zeros((6, 8, 3), np.uint8), np.zeros((6, 8), np.uint8))
    assert writer.frames == 0 and not list((tmp_path / 'carla').rglob('*.png'))


# --- restoring the server: recording test doubles of carla's world, client and TM -----------


class RecordingFakeWorld:
    """Test double of ``carla.World`` for pure-logic tests: records settings calls in ``log``."""

    def __init__(self, log: list, *, synchronous: bool = False, fail_apply: bool = False):
        self.log = log
        self.settings = SimpleNamespace(synchronous_mode=synchronous, fixed_delta_seconds=None)
        self.fail_apply = fail_apply

    def get_settings(self):
        return SimpleNamespace(**vars(self.settings))  # carla returns a copy too

    def apply_settings(self, settings):
        self.log.append(
            ('apply_settings', settings.synchronous_mode, settings.fixed_delta_seconds)
        )
        if self.fail_apply:
            raise RuntimeError('time-out of 10000ms while waiting for the simulator')
        self.settings = SimpleNamespace(**vars(settings))


class RecordingFakeTrafficManager:
    def __init__(self, log: list):
        self.log = log

    def set_synchronous_mode(self, mode: bool):
        self.log.append(('tm_sync', mode))


class RecordingFakeClient:
    def __init__(self, log: list):
        self.log = log

    def apply_batch(self, commands):
        self.log.append(('apply_batch', commands))


class RecordingFakeActor:
    def __init__(self, log: list, actor_id: int):
        self.log, self.id = log, actor_id

    def stop(self):
        self.log.append(('stop', self.id))


def _session(log: list, **world_kw) -> tuple[SyncSession, RecordingFakeWorld]:
    world = RecordingFakeWorld(log, **world_kw)
    session = SyncSession(
        RecordingFakeClient(log),
        world,
        RecordingFakeTrafficManager(log),
        delta=0.05,
        destroy_command=lambda actor_id: ('destroy', actor_id),
    )
    return session, world


def _populate(session: SyncSession, log: list) -> None:
    session.add_vehicle(30)  # the ego
    session.add_sensor(RecordingFakeActor(log, 1))
    session.add_sensor(RecordingFakeActor(log, 2))
    session.add_vehicle(31)
    session.add_walker(20, RecordingFakeActor(log, 10))
    session.add_walker(21)  # its controller failed to spawn


EXPECTED_RESTORE = [
    ('stop', 1),
    ('stop', 2),
    ('tm_sync', False),
    ('apply_settings', False, None),
    ('apply_batch', [('destroy', 1), ('destroy', 2)]),  # sensors before what they ride on
    ('stop', 10),
    (
        'apply_batch',
        [('destroy', 10), ('destroy', 20), ('destroy', 21), ('destroy', 30), ('destroy', 31)],
    ),
]


def test_session_enters_sync_mode_and_restores_in_order():
    log: list = []
    session, world = _session(log)
    with session:
        assert log == [('tm_sync', True), ('apply_settings', True, 0.05)]
        _populate(session, log)
        log.clear()
    assert log == EXPECTED_RESTORE
    assert world.settings.synchronous_mode is False and world.settings.fixed_delta_seconds is None
    assert session.cleanup_errors == []
    log.clear()
    session.restore()  # idempotent: nothing left to undo but the harmless TM switch
    assert log == [('tm_sync', False)]


def test_session_restores_on_ctrl_c():
    log: list = []
    session, world = _session(log)
    with pytest.raises(KeyboardInterrupt), session:
        _populate(session, log)
        log.clear()
        raise KeyboardInterrupt
    assert log == EXPECTED_RESTORE
    assert world.settings.synchronous_mode is False


def test_a_failing_restore_step_does_not_stop_the_others():
    log: list = []
    session, world = _session(log)
    with session:
        _populate(session, log)
        world.fail_apply = True
        log.clear()
    assert log == EXPECTED_RESTORE  # the destroy batches still went out
    assert (
        len(session.cleanup_errors) == 1 and 'restore world settings' in session.cleanup_errors[0]
    )


def test_session_undoes_tm_sync_when_entering_fails():
    log: list = []
    session, _ = _session(log, fail_apply=True)
    with pytest.raises(RuntimeError, match='time-out'), session:
        pytest.fail('the block must not run')
    # The failed switch may have half-happened, so the original settings go back as well.
    assert log == [
        ('tm_sync', True),
        ('apply_settings', True, 0.05),
        ('tm_sync', False),
        ('apply_settings', False, None),
    ]


def test_session_refuses_a_server_someone_else_is_ticking():
    log: list = []
    session, _ = _session(log, synchronous=True)
    with pytest.raises(CollectError, match=r'already in synchronous mode.*ROS bridge'), session:
        pytest.fail('the block must not run')
    assert log == []  # the other client's settings were left alone


# --- command line ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_cli_defaults_and_towns(tmp_path):
    args = collect.build_parser('semseg data collect').parse_args(
        ['--frames', '10', '--out', str(tmp_path), '--town', 'Town01, Town10HD_Opt']
    )
    cfg = collect.config_from_args(args)
    assert cfg.towns == ('Town01', 'Town10HD_Opt')
    assert (cfg.host, cfg.port, cfg.timeout) == ('127.0.0.1', 2000, 10.0)
    assert (cfg.width, cfg.height, cfg.fov, cfg.delta) == (800, 600, 90.0, 0.05)
    assert (cfg.vehicles, cfg.walkers, cfg.seed) == (30, 20, 0)


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--frames', '0'], '--frames must be a positive number'),
        (['--frames', '5', '--every', '0'], '--every must be at least 1'),
        (['--frames', '5', '--delta', '0.5'], r'--delta must be in \(0, 0.1\]'),
        (['--frames', '5', '--fov', '180'], '--fov must be in'),
        (['--frames', '5', '--port', '70000'], '--port must be a TCP port'),
        (['--frames', '5', '--town', 'Town01,,Town02'], '--town must be map names'),
        (['--frames', 'many'], "invalid int value: 'many'"),
        ([], 'the following arguments are required: --frames'),
    ],
)
def test_cli_rejects_bad_options(tmp_path, capsys, extra, message):
    assert collect.main(['--out', str(tmp_path / 'o'), *extra], prog='semseg data collect') == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_refuses_a_non_empty_output_before_connecting(tmp_path, capsys):
    (tmp_path / 'keep.png').write_bytes(b'')
    assert collect.main(['--out', str(tmp_path), '--frames', '1', '--port', '1']) == 1
    assert 'is not empty; choose a new --out' in capsys.readouterr().err


def test_missing_carla_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'carla', None)  # makes `import carla` fail
    with pytest.raises(CollectError, match=r'pip install semseg_ros\[carla\].*carla==0\.9\.16'):
        collect.import_carla()


def test_module_imports_without_carla_and_has_two_doors():
    code = (
        'import sys, training.data.collect as c; '
        "assert 'carla' not in sys.modules and 'torch' not in sys.modules; "
        "from semseg_ros.cli import main; raise SystemExit(main(['data', 'collect', '--help']))"
    )
    run = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert '--weather-every' in run.stdout and 'semseg data collect' in run.stdout


@pytest.mark.skipif(not HAS_CARLA, reason='carla client not installed (pip install carla==0.9.16)')
def test_no_server_gives_a_clear_error_within_the_timeout(tmp_path, capsys):
    port = _free_port()  # nothing listens here
    out = tmp_path / 'never'
    start = time.monotonic()
    argv = ['--port', str(port), '--timeout', '2', '--frames', '1', '--out', str(out)]
    code = collect.main(argv, prog='semseg data collect')
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 1
    assert f'no CARLA server answered at 127.0.0.1:{port} within 2 s' in err
    assert f'./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}' in err
    assert 1.5 < elapsed < 6.0, elapsed  # the client's own 2 s timeout, not a hang
    assert not out.exists()  # nothing written for a run that never started
