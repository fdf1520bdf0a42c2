"""Crash safety of the writers: SIGKILL at random moments, then look at what is on disk.

The final output is either absent or complete and openable, never half a file under its final
name; what a kill leaves is hidden, bounded, and cleaned by the next run; finished outputs hold
only their final names; ``--overwrite`` keeps the old output until the new one is complete.

The swap itself is checked exhaustively in-process (a "kill" at every step of
:meth:`StagedEntries.commit`); the tools are killed as processes a few times at a small size.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from semseg_ros.staged_output import (
    StagedEntries,
    atomic_write_bytes,
    recover,
    remove_stale_temporaries,
    temporary_for,
)

REPO = Path(__file__).resolve().parents[1]
FAKE_CARLA = Path(__file__).resolve().parent / 'fake_carla'  # a CARLA server in process
SEED = int(os.environ.get('SEMSEG_KILL_SEED', '14'))


def dead_pid() -> int:
    """The pid of a process that has exited (what a SIGKILLed writer's pid is)."""
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def as_killed(staged: StagedEntries, pid: int) -> None:
    """Make ``staged``'s folder look like one a process ``pid`` left when it was killed."""
    if staged.root.exists():
        staged.root.rename(staged.root.with_name(staged.root.name.rsplit('-', 1)[0] + f'-{pid}'))


class Killed(BaseException):
    pass


def write_tree(folder: Path, text: str, names=('a', 'b')) -> None:
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / 'data.txt').write_text(text)


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob('*')) if p.is_file()
    }


@pytest.mark.parametrize('whole', [True, False], ids=['folder', 'entries'])
def test_a_kill_at_any_step_of_the_swap_leaves_old_or_new_never_a_mix(
    tmp_path, monkeypatch, whole
):
    target = tmp_path / 'out'
    pid = dead_pid()
    calls = {'n': 0, 'kill_at': -1}
    real_rename, real_write = Path.rename, Path.write_text

    def counting(real):
        def wrapped(self, *args, **kwargs):
            calls['n'] += 1
            if calls['n'] == calls['kill_at']:
                raise Killed
            return real(self, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(Path, 'rename', counting(real_rename))
    monkeypatch.setattr(Path, 'write_text', counting(real_write))
    outcomes = set()
    for kill_at in range(1, 12):
        for leftover in tmp_path.iterdir():
            shutil.rmtree(leftover)
        calls['kill_at'] = -1
        write_tree(target / 'out' if whole else target, 'old', ('a', 'b', 'c'))
        old = tree(tmp_path)
        staged = StagedEntries.for_folder(target / 'out') if whole else (
            StagedEntries(target, ['a', 'b', 'c']))  # fmt: skip
        write_tree(staged.open(), 'new', ('a', 'b'))
        calls['n'], calls['kill_at'] = 0, kill_at
        try:
            staged.commit()
            outcome = 'completed'
        except Killed:
            outcome = 'killed'
        calls['kill_at'] = -1
        as_killed(staged, pid)
        parent = target if whole else target.parent
        name = 'out'
        recover(parent, name, target, ['out'] if whole else ['a', 'b', 'c'])
        after = tree(tmp_path)
        assert not list(tmp_path.rglob('.*partial*')), kill_at  # nothing left behind
        expected_new = {k: 'new' for k in old if not k.endswith(('c/data.txt',))}
        assert after in (old, expected_new), (kill_at, outcome, after)
        outcomes.add((outcome, 'old' if after == old else 'new'))
    assert ('killed', 'old') in outcomes and ('completed', 'new') in outcomes


def test_atomic_files_and_their_stale_temporaries(tmp_path):
    path = tmp_path / 'model.onnx'
    atomic_write_bytes(path, b'first')
    stale = temporary_for(path).with_name(f'.model.onnx.tmp-{dead_pid()}')
    stale.write_bytes(b'half')
    mine = temporary_for(path)
    mine.write_bytes(b'in progress')  # this process is alive: kept
    assert remove_stale_temporaries(path) == [stale]
    assert mine.exists() and path.read_bytes() == b'first'


# --- the tools as processes -----------------------------------------------------------------


def sigkill_after(proc: subprocess.Popen, delay: float) -> int | None:
    """SIGKILL ``proc`` after ``delay`` s: None, or its exit code if it finished first."""
    try:
        return proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def kill_after(args: list[str], delay: float, env: dict[str, str]) -> int | None:
    """Start ``args``, SIGKILL it after ``delay`` s; its exit code if it finished first."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    return sigkill_after(proc, delay)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith('.'))


@pytest.fixture
def env() -> dict[str, str]:
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get(
        'PYTHONPATH', '')])}  # fmt: skip


def counts(bag: dict[str, list]) -> dict[str, int]:
    return {topic: len(messages) for topic, messages in bag.items()}


@pytest.mark.slow
def test_semseg_bag_killed_at_random_moments(tmp_path, env):
    from ros_graph import read_bag
    from test_bag import export_tiny_model, write_input_bag

    model = export_tiny_model(tmp_path)
    bag_in = tmp_path / 'in'
    write_input_bag(bag_in, frames=150, size=(320, 240))
    out = tmp_path / 'out'
    command = [sys.executable, '-m', 'semseg_ros.cli', 'bag', str(bag_in), str(out),
               '--model', str(model), '--no-progress']  # fmt: skip
    rng = random.Random(SEED)
    start = time.monotonic()
    done = subprocess.run([*command, '--overwrite'], cwd=REPO, env=env, capture_output=True)
    seconds = time.monotonic() - start  # kills land in the run, whatever the machine's load
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ['metadata.yaml', 'out.mcap'], names  # final names only
    assert 'out.mcap' in (out / 'metadata.yaml').read_text()
    complete = read_bag(out)
    kills = 0
    for _ in range(3):  # a fresh OUT, killed somewhere between the start and the end
        shutil.rmtree(out, ignore_errors=True)
        kills += kill_after(command, rng.uniform(0.3, 0.9) * seconds, env) is None
        assert not out.exists() or counts(read_bag(out)) == counts(complete), 'a half bag'
        assert len(hidden(tmp_path)) <= 1, hidden(tmp_path)  # bounded: each run cleans
    assert subprocess.run([*command, '--overwrite'], cwd=REPO, env=env,
                          capture_output=True).returncode == 0  # fmt: skip
    assert hidden(tmp_path) == []  # the rerun cleaned what the kills left
    for _ in range(2):  # --overwrite killed: the old bag, or the new complete one
        kills += (
            kill_after([*command, '--overwrite'], rng.uniform(0.3, 0.9) * seconds, env) is None
        )
        assert out.exists(), 'the old output was lost before the new one was complete'
        assert counts(read_bag(out)) == counts(complete)
        assert len(hidden(tmp_path)) <= 1
    assert kills >= 2  # the rest finished first: still checked
    print(f'semseg bag: {kills} of 5 runs killed ({seconds:.1f} s a run); never half, old kept')


@pytest.mark.slow
def test_semseg_data_synth_killed_at_random_moments(tmp_path, env):
    out = tmp_path / 'data'
    command = [sys.executable, '-m', 'training.data.synthetic', '--out', str(out),
               '--frames', '30', '--no-progress']  # fmt: skip
    rng = random.Random(SEED)
    for _ in range(2):
        kill_after(command, rng.uniform(0.5, 3.0), env)
        assert not out.exists() or not any(out.iterdir()) or (out / 'dataset.json').is_file()
        assert len(hidden(tmp_path)) <= 1, hidden(tmp_path)
    done = subprocess.run([*command, '--overwrite'], cwd=REPO, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert hidden(tmp_path) == []
    pngs = sorted(out.rglob('*.png'))
    assert len(pngs) == 60 and not list(out.rglob('.*'))
    kill_after([*command, '--overwrite', '--seed', '1'], rng.uniform(0.5, 3.0), env)
    assert (out / 'dataset.json').is_file() and len(sorted(out.rglob('*.png'))) == 60


@pytest.mark.slow
def test_semseg_export_killed_at_random_moments(tmp_path, env):
    """``semseg export`` (FP32, FP16 and the JSON report): each file is absent or whole, and an
    export over an older one killed midway leaves a model that loads: the old or the new."""
    import onnx
    from test_export import make_checkpoint

    from semseg_ros.model_file import read_model_info

    old_checkpoint = make_checkpoint(tmp_path / 'old.pt', seed=0)
    new_checkpoint = make_checkpoint(tmp_path / 'new.pt', seed=1)

    def export(checkpoint: Path, folder: Path) -> list[str]:
        return [sys.executable, '-m', 'semseg_ros.cli', 'export', '--checkpoint',
                str(checkpoint), '--out', str(folder / 'model.onnx'), '--fp16', '--json',
                str(folder / 'report.json')]  # fmt: skip

    def models(folder: Path) -> dict[str, str]:
        """The weights digest of each model under its final name (each must load whole)."""
        found = {}
        for name in ('model.onnx', 'model.fp16.onnx'):
            if (folder / name).exists():
                onnx.load(str(folder / name))  # a whole protobuf, and its weights digest holds
                found[name] = read_model_info(folder / name).weights_sha256
        if (folder / 'report.json').exists():
            json.loads((folder / 'report.json').read_text())
        assert leftovers_bounded(folder), hidden(folder)
        return found

    rng = random.Random(SEED)
    old, fresh = tmp_path / 'old', tmp_path / 'fresh'
    start = time.monotonic()
    done = subprocess.run(export(old_checkpoint, old), cwd=REPO, env=env, capture_output=True)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    old_models = models(old)
    when = rng.uniform(0.4, 1.0) * seconds
    kills = kill_after(export(new_checkpoint, fresh), when, env) is None  # a new export, killed
    if fresh.exists():
        models(fresh)  # whole
    done = subprocess.run(export(new_checkpoint, fresh), cwd=REPO, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert hidden(fresh) == []  # the rerun removed what the kills left
    new_models = models(fresh)
    assert new_models.keys() == old_models.keys() and new_models != old_models
    for _ in range(2):  # over the old export, killed: each model the old one or the new one
        kills += kill_after(export(new_checkpoint, old), rng.uniform(0.4, 1.0) * seconds,
                            env) is None  # fmt: skip
        for name, digest in models(old).items():
            assert digest in (old_models[name], new_models[name]), name
        assert (old / 'model.onnx').exists(), 'the old model was lost before the new one'
    assert kills >= 2
    print(f'semseg export: {kills} of 3 runs killed ({seconds:.1f} s a run); whole, old kept')


CHECKPOINT_LOOP = r"""
import sys
from semseg_ros.labels import LYFT13
from semseg_ros.pipeline import Normalization
from training.checkpoint import Checkpoint, save_checkpoint
from training.model import UNetConfig, build_model
config = UNetConfig(num_classes=13, base_channels=8, depth=3)
ck = Checkpoint(model_config=config.to_dict(), class_set=LYFT13.to_dict(),
                normalization=Normalization().to_dict(), input_size=[64, 48],
                model_state=build_model(config).state_dict())
print('ready', flush=True)
while True:
    save_checkpoint(ck, sys.argv[1])
"""


@pytest.mark.slow
def test_checkpoints_killed_while_saving(tmp_path, env):
    from training.checkpoint import load_checkpoint

    path = tmp_path / 'best.pt'
    rng = random.Random(SEED)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, '-c', CHECKPOINT_LOOP, str(path)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout.readline().strip() == 'ready'
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():
            load_checkpoint(path)  # complete and openable
        assert len(hidden(tmp_path)) <= 1, hidden(tmp_path)
    assert path.exists()


def test_semseg_record_gets_the_replaced_bag_back_after_a_kill_mid_swap(tmp_path):
    """A recorder killed between moving the old bag aside and moving the new one in: the
    next recorder for the same --out puts the old bag back before it starts."""
    pytest.importorskip('rclpy')
    from semseg_ros import record

    out = tmp_path / 'bag'
    partial = record.partial_path(out)
    (partial / record.REPLACED).mkdir(parents=True)
    (partial / record.REPLACED / 'metadata.yaml').write_text('the old bag')
    (partial / 'bag').mkdir()  # the new, complete one, never moved in
    recorder = record.BagRecorder(object(), out, [])
    assert (out / 'metadata.yaml').read_text() == 'the old bag'  # back before anything else
    recorder.close()  # an empty recording replaces it, whole
    assert sorted(p.name for p in out.iterdir()) == ['bag.mcap', 'metadata.yaml']
    assert not partial.exists() and hidden(tmp_path) == []


def test_semseg_record_without_overwrite_keeps_a_bag_a_kill_put_aside(tmp_path, capsys):
    """Killed between the two renames, the old bag is only in the hidden folder; a rerun
    without --overwrite puts it back and then refuses to replace it."""
    pytest.importorskip('rclpy')
    from semseg_ros import record

    out = tmp_path / 'bag'
    partial = record.partial_path(out)
    (partial / record.REPLACED).mkdir(parents=True)
    (partial / record.REPLACED / 'metadata.yaml').write_text('the old bag')
    argv = ['--out', str(out), '--duration', '0.1', '/image']
    assert record.main(argv, prog='semseg record') == 1
    assert 'pass --overwrite to replace it' in capsys.readouterr().err
    assert (out / 'metadata.yaml').read_text() == 'the old bag'
    assert hidden(tmp_path) == []


@contextlib.contextmanager
def live_camera(context, topic: str, hz: float = 50.0):
    """A node publishing small bgra8 frames on ``topic`` at ``hz`` until the block ends."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    node = rclpy.create_node('camera', context=context)
    publisher = node.create_publisher(Image, topic, 10)
    stamps = itertools.count()

    def publish() -> None:
        msg = Image(height=24, width=32, encoding='bgra8', step=128, data=bytes(24 * 128))
        msg.header.stamp.sec = next(stamps)
        publisher.publish(msg)

    node.create_timer(1.0 / hz, publish)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        executor.shutdown()
        thread.join(5)
        node.destroy_node()


def kill_after_line(args: list[str], text: str, delay: float, env: dict[str, str]) -> bool:
    """Start ``args``, SIGKILL it ``delay`` s after it printed ``text``; False if it had ended."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    for line in proc.stdout:
        if text in line:
            break
    try:
        return sigkill_after(proc, delay) is None
    finally:
        proc.stdout.close()


def whole_bag(out: Path) -> int:
    """The messages of a bag that reads back whole under its final names only."""
    from rosbags.highlevel import AnyReader

    assert sorted(p.name for p in out.iterdir()) == [f'{out.name}.mcap', 'metadata.yaml']
    with AnyReader([out]) as reader:
        count = sum(1 for _ in reader.messages())
        assert count == sum(c.msgcount for c in reader.connections)  # as its index says
    return count


@pytest.mark.slow
def test_semseg_record_killed_at_random_moments(tmp_path, ros_env, ros_context):
    """``semseg record`` of a live camera, killed while it records or closes the bag: BAG is
    absent or a whole bag; with --overwrite the old bag stays until the new one is in."""
    out = tmp_path / 'bag'
    command = [sys.executable, '-m', 'semseg_ros.cli', 'record', '--out', str(out),
               '--count', '25', '--duration', '20', '/image']  # fmt: skip
    rng = random.Random(SEED)
    matched = '/image: 1 publisher(s) matched'  # then 25 messages take 0.5 s, and it closes
    kills = 0
    with live_camera(ros_context, '/image'):
        done = subprocess.run(command, cwd=REPO, env=ros_env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert whole_bag(out) == 25, done.stdout
        for _ in range(2):  # --overwrite killed: the old bag, or the new one whole
            kills += kill_after_line([*command, '--overwrite'], matched, rng.uniform(0, 0.6),
                                     ros_env)  # fmt: skip
            assert out.exists(), 'the old bag was lost before the new one was complete'
            assert whole_bag(out) == 25
            assert hidden(tmp_path) in ([], ['.bag.recording']), hidden(tmp_path)
        done = subprocess.run([*command, '--overwrite'], cwd=REPO, env=ros_env,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert hidden(tmp_path) == [] and whole_bag(out) == 25  # the kills' leftovers cleaned
        shutil.rmtree(out)  # a fresh BAG killed
        kills += kill_after_line(command, matched, rng.uniform(0, 0.6), ros_env)
        assert not out.exists() or whole_bag(out) == 25
    assert kills >= 2
    print(f'semseg record: {kills} of 3 runs killed while recording; never half, old kept')


def leftovers_bounded(folder: Path) -> bool:
    """At most one leftover per output: a killed run's temporaries are cleaned by the next."""
    names = hidden(folder)
    return len(names) == len({name.rsplit('-', 1)[0] for name in names})


@pytest.mark.slow
def test_semseg_data_collect_killed_at_random_moments(tmp_path, env):
    """The CARLA collector against a stand-in server (test/fake_carla): OUT is absent or a
    whole dataset (every frame, dataset.json with the server's class set), never frames
    without their dataset.json; a SIGTERM ends it like Ctrl+C (the frames so far, the
    server put back)."""
    from training.data.lyft import dataset_class_set, scan_dataset

    server_log = tmp_path / 'server.log'
    env = {**env, 'PYTHONPATH': os.pathsep.join([str(FAKE_CARLA), env['PYTHONPATH']]),
           'FAKE_CARLA_TICK_S': '0.02', 'FAKE_CARLA_LOG': str(server_log)}  # fmt: skip
    out = tmp_path / 'carla'
    command = [sys.executable, '-m', 'semseg_ros.cli', 'data', 'collect', '--out', str(out),
               '--frames', '30', '--width', '160', '--height', '120', '--vehicles', '0',
               '--walkers', '0', '--warmup', '2', '--every', '1']  # fmt: skip

    def frames_in(root: Path, *, complete: bool = True) -> int:
        """The frames of a dataset that reads back whole: pairs, dataset.json, class set."""
        info = json.loads((root / 'dataset.json').read_text())
        scan = scan_dataset(root)
        assert info['complete'] is complete and info['frames'] == len(scan.samples) > 0
        assert not scan.unpaired and not scan.ignored and not list(root.rglob('.*'))
        assert dataset_class_set(root).name == 'cityscapes29'  # CARLA 0.9.16's tags
        return info['frames']

    rng = random.Random(SEED)
    start = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert frames_in(out) == 30
    kills = 0
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        kills += kill_after(command, rng.uniform(0.4, 1.0) * seconds, env) is None
        assert not out.exists() or frames_in(out) == 30, 'frames without their dataset'
        assert leftovers_bounded(tmp_path), hidden(tmp_path)
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the same --out again: the kills' leftovers ...
    assert hidden(tmp_path) == [] and frames_in(out) == 30  # ... cleaned first
    assert kills >= 2

    shutil.rmtree(out)
    server_log.unlink()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    staged = tmp_path / f'.carla.partial-{proc.pid}' / 'new' / 'carla'  # where frames go first
    deadline = time.monotonic() + 20
    while not list(staged.glob('*/CameraSeg/*.png')):
        assert time.monotonic() < deadline and proc.poll() is None, 'no frame written'
        time.sleep(0.01)
    assert not out.exists()  # OUT appears when the run ends, frames and dataset.json together
    time.sleep(rng.uniform(0, 0.2))
    proc.send_signal(signal.SIGTERM)  # what `timeout`, docker stop or systemd send
    assert proc.wait(10) == 130, proc.stderr.read()
    proc.stderr.close()
    assert 0 < frames_in(out, complete=False) < 30 and hidden(tmp_path) == []
    assert server_log.read_text().splitlines()[-4:] == [
        'traffic_manager synchronous_mode=False', 'synchronous_mode=False',
        'destroyed 2 actors', 'destroyed 1 actors',
    ]  # fmt: skip
    print(f'semseg data collect: {kills} of 3 runs killed ({seconds:.1f} s a run); whole or none')
