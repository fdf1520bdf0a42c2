"""``semseg bench --only cameras``: what each more camera costs, one semseg_node per camera.

For 1 and 2 cameras, in a ROS domain of its own: one ``semseg_node`` process per camera in
its camera's namespace (as ``carla_semseg.launch.py cameras:=...`` starts them) and one
``semseg replay`` per camera publishing 800x600 bgra8 frames at 20 Hz like the bridge; this
process subscribes every node's ``~/mask`` (outputs are computed only when someone listens)
and ``/diagnostics``. Over a measured window after the warm-up it reports, per node: output
rate (masks received per second), processing p50 and the share of frames dropped as stale
(the node's /diagnostics), and the CPU the node process used (100 % = one core, from
``/proc/<pid>/stat``); and the replays' CPU beside them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CAMERAS = ('rgb_front', 'rgb_left')
CAMERA_HZ = 20.0
SIZE = (800, 600)
NODE_START_S = 90.0  # model load and imports on a loaded machine


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _node_command(model: Path, camera: str) -> list[str]:
    return [
        sys.executable, '-m', 'semseg_ros.node', '--ros-args', '-r', f'__ns:=/{camera}',
        '-p', f'model_path:={model}', '-p', 'backend:=onnxruntime', '-p', 'device:=cpu',
        '-r', f'image:=/carla/ego_vehicle/{camera}/image',
    ]  # fmt: skip


def _replay_command(dataset: Path, camera: str, seconds: float) -> list[str]:
    return [
        sys.executable, '-m', 'semseg_ros.replay', str(dataset), '--camera', camera,
        '--no-seg', '--no-clock', '--preload', '--loop', '--rate', str(CAMERA_HZ),
        '--duration', str(seconds), '--wait-for-subscribers', '1',
    ]  # fmt: skip


def measure(
    cameras: int, *, model: Path, dataset: Path, warmup_s: float, window_s: float
) -> dict[str, Any]:
    """One run with ``cameras`` cameras: per node rate, processing p50, stale %, CPU %."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from semseg_ros.ros_env import isolated_environment, random_domain_id
    from semseg_ros.tool_node import tool_node

    names = CAMERAS[:cameras]
    domain = random_domain_id()
    env = dict(isolated_environment(domain), PYTHONUNBUFFERED='1')
    keys = ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})  # this process's monitor node joins the graph
    logs = Path(tempfile.mkdtemp(prefix='bench_cameras_logs_'))  # kept when a run fails
    children: list[subprocess.Popen] = []

    def start(command: list[str], name: str) -> subprocess.Popen:
        log = (logs / f'{name}.log').open('w')
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        children.append(child)
        return child

    try:
        nodes = {c: start(_node_command(model, c), f'node_{c}') for c in names}
        with tool_node('bench_cameras') as node:
            masks: dict[str, list[float]] = {c: [] for c in names}
            reports: dict[str, dict[str, str]] = {}
            subscriptions = {
                c: node.create_subscription(
                    Image,
                    f'/{c}/semseg_node/mask',
                    lambda _msg, c=c: masks[c].append(time.monotonic()),
                    10,
                )
                for c in names
            }

            def diagnostics_callback(array: Any) -> None:
                for status in array.status:
                    camera = status.hardware_id.strip('/').split('/')[0]
                    reports[camera] = {kv.key: kv.value for kv in status.values}

            node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics_callback, 10)
            executor = SingleThreadedExecutor(context=node.context)
            executor.add_node(node)

            def spin_until(done: Any, timeout: float) -> bool:
                deadline = time.monotonic() + timeout
                while not done():
                    if time.monotonic() > deadline:
                        return False
                    executor.spin_once(timeout_sec=0.05)
                return True

            ready = spin_until(
                lambda: all(s.get_publisher_count() for s in subscriptions.values()),
                NODE_START_S,
            )
            if not ready:
                raise RuntimeError(f'the nodes did not start in {NODE_START_S:g} s; see {logs}')
            spin_until(lambda: False, 1.0)  # the nodes match our mask readers too
            total = warmup_s + window_s + 2.0
            replays = {c: start(_replay_command(dataset, c, total), f'replay_{c}') for c in names}
            spin_until(lambda: all(masks.values()), 60.0)
            spin_until(lambda: False, warmup_s)
            cpu0 = {c: _cpu_seconds(p.pid) for c, p in [*nodes.items(), *_replay_items(replays)]}
            counts0 = {c: len(masks[c]) for c in names}
            t0 = time.monotonic()
            spin_until(lambda: False, window_s)
            elapsed = time.monotonic() - t0
            cpu1 = {c: _cpu_seconds(p.pid) for c, p in [*nodes.items(), *_replay_items(replays)]}
            counts1 = {c: len(masks[c]) for c in names}
            spin_until(lambda: False, 1.2)  # one more /diagnostics report
            results = {}
            for c in names:
                report = reports.get(c, {})
                received = int(report.get('frames received', 0) or 0)
                stale = int(report.get('frames dropped (stale)', 0) or 0)
                results[c] = {
                    'output_hz': (counts1[c] - counts0[c]) / elapsed,
                    'processing_p50_ms': float(report.get('processing p50 (ms)', 'nan')),
                    'stale_pct': 100.0 * stale / received if received else float('nan'),
                    'node_cpu_pct': 100.0 * (cpu1[c] - cpu0[c]) / elapsed,
                    'replay_cpu_pct': 100.0
                    * (cpu1[f'replay {c}'] - cpu0[f'replay {c}'])
                    / elapsed,
                }
            for child in replays.values():
                child.wait(total + 30)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    shutil.rmtree(logs, ignore_errors=True)
    return results


def _replay_items(replays: dict[str, subprocess.Popen]) -> list[tuple[str, subprocess.Popen]]:
    return [(f'replay {c}', p) for c, p in replays.items()]


def bench_cameras(*, quick: bool = False) -> list[Any]:
    """Rows for ``semseg bench``: 1 camera, then 2, each its own graph."""
    from semseg_ros.bench import SHIPPED_MODEL, Row
    from semseg_ros.training_half import training_module

    synthetic = training_module('data.synthetic')
    SynthConfig, generate_dataset = synthetic.SynthConfig, synthetic.generate_dataset

    warmup_s, window_s = (3.0, 6.0) if quick else (5.0, 15.0)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix='bench_cameras_data_') as tmp:
        width, height = SIZE
        dataset = generate_dataset(
            Path(tmp) / 'drive', 8, seed=5, mode='sequence',
            config=SynthConfig(width=width, height=height), progress=False,
        )  # fmt: skip
        for count in (1, 2):
            results = measure(
                count, model=SHIPPED_MODEL, dataset=dataset, warmup_s=warmup_s, window_s=window_s
            )
            label = f'{count} camera{"s" if count > 1 else ""}'
            for camera, r in results.items():
                case = f'{label}: {camera}'
                rows += [
                    Row('cameras', f'{case} output', r['output_hz'], 'Hz', note='camera 20 Hz'),
                    Row('cameras', f'{case} processing p50', r['processing_p50_ms'], 'ms'),
                    Row('cameras', f'{case} stale drops', r['stale_pct'], '%'),
                    Row('cameras', f'{case} node CPU', r['node_cpu_pct'], '%', note='100 = core'),
                    Row('cameras', f'{case} replay CPU', r['replay_cpu_pct'], '%'),
                ]
    return rows
