"""``python -m semseg_ros.soak`` (``make soak``): the real node under hours-like load, measured.

A bridge-like publisher sends 800x600 bgra8 frames at 30 Hz (RELIABLE, depth 10, as the CARLA
bridge's cameras) to the real ``semseg_node`` process, started as ``ros2 run`` would with the
shipped params file (qos best_available, the shipped Fast DDS profile) and the shipped model
on onnxruntime, CPU: slower than the input, so the node must drop stale frames rather than
queue them. A subscriber listens to ~/mask (as rviz would) and /diagnostics. The report:

* memory: the node's RSS over time; growth after the warm-up must stay under 5 %;
* latency: processing and stamp-to-publish p50 / p99 (the node's last window) and max (the
  whole run), and stamp-to-receipt at the subscriber over every mask;
* the bound on stamp-to-publish: a frame waits in the slot at most for the frame in flight,
  then is processed itself, so stamp-to-publish <= transport + 2 x processing max; checked
  as ``latency max <= 2 x processing max + TRANSPORT_ALLOWANCE_S``;
* accounting: sent = lost in transport + overwritten before the callback (a reliable
  reader's KEEP_LAST history overwritten while the executor was busy: DDS reports no loss,
  the publication sequence numbers show it) + received, received = published + stale + bad +
  failed + skipped + pending, from the node's last /diagnostics (published on SIGINT), with
  any difference reported as unexplained;
* output rate.

``make test`` runs 30 s of it (test/test_soak.py); ``make soak`` 10 minutes.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.ros_env import DOMAIN_IDS, isolated_environment, use_fastdds_profile

REPO = Path(__file__).resolve().parents[1]
CAMERA = '/carla/ego_vehicle/rgb_front/image'
WIDTH, HEIGHT, RATE_HZ = 800, 600, 30.0
#: Delivery of one 1.9 MB frame plus scheduling on a loaded machine, on top of 2 frames of
#: processing (see the module docstring).
TRANSPORT_ALLOWANCE_S = 0.5
RSS_GROWTH_LIMIT = 0.05


@dataclass
class SoakReport:
    duration_s: float
    warmup_s: float
    model: str
    sent: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    unexplained: dict[str, int] = field(default_factory=dict)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (s since start, MB)
    rss_growth: float = float('nan')  # after the warm-up, relative
    latency_ms: dict[str, float] = field(default_factory=dict)
    subscriber_latency_ms: dict[str, float] = field(default_factory=dict)
    latency_bound_ms: float = float('nan')
    output_rate_hz: float = float('nan')
    masks_received: int = 0
    node_cpu_s: float = float('nan')  # the node's CPU seconds (all threads) while streaming
    exit_code: int | None = None
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    node_log_tail: str = ''

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        found = []
        if self.exit_code != 0:
            found.append(f'the node exited {self.exit_code}')
        if any(self.unexplained.values()):
            found.append(f'unexplained frame counts: {self.unexplained}')
        if self.counts.get('failed', 0):
            found.append(f'{self.counts["failed"]} frames failed')
        if not self.rss_growth < RSS_GROWTH_LIMIT:
            found.append(f'RSS grew {self.rss_growth:.1%} after the warm-up (limit 5 %)')
        if not self.latency_ms.get('stamp_to_publish_max', 0) <= self.latency_bound_ms:
            found.append(
                f'stamp-to-publish max {self.latency_ms.get("stamp_to_publish_max")} ms over '
                f'the bound {self.latency_bound_ms:.0f} ms'
            )
        return found

    def text(self) -> str:
        c = self.counts
        lines = [
            f'soak: {self.duration_s:.0f} s of {WIDTH}x{HEIGHT} bgra8 at {RATE_HZ:.0f} Hz, '
            f'{self.model}, load average {"/".join(f"{x:.2f}" for x in self.load_average)}',
            f'  frames: sent {self.sent} = lost {c.get("lost", 0)} + overwritten '
            f'{c.get("overwritten", 0)} + received '
            f'{c.get("received", 0)}; received = published {c.get("published", 0)} + stale '
            f'{c.get("stale", 0)} + bad {c.get("bad", 0)} + failed {c.get("failed", 0)} + '
            f'skipped {c.get("skipped", 0)} + pending {c.get("pending", 0)}; unexplained '
            f'{self.unexplained or "none"}',
            f'  output rate {self.output_rate_hz:.2f} Hz ({self.masks_received} masks at the '
            'subscriber)',
            '  node latency (ms): '
            + ', '.join(f'{k} {v:.1f}' for k, v in self.latency_ms.items()),
            f'  stamp-to-publish bound {self.latency_bound_ms:.0f} ms (2 x processing max + '
            f'{TRANSPORT_ALLOWANCE_S * 1e3:.0f} ms)',
            '  subscriber stamp-to-receipt (ms): '
            + ', '.join(f'{k} {v:.1f}' for k, v in self.subscriber_latency_ms.items()),
            f'  RSS: {self._rss_summary()}, growth after {self.warmup_s:.0f} s warm-up '
            f'{self.rss_growth:+.1%} (limit 5 %)',
            f'  result: {"OK" if self.ok else "; ".join(self.problems())}',
        ]
        return '\n'.join(lines)

    def _rss_summary(self) -> str:
        picks = self.rss_mb[:: max(1, len(self.rss_mb) // 6)] + self.rss_mb[-1:]
        return ', '.join(f'{t:.0f} s {mb:.0f} MB' for t, mb in picks)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, all threads (Linux /proc); NaN once gone."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
        return float('nan')
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (Linux /proc); NaN once it is gone."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float('nan')


def _percentiles(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {}
    ms = np.array(values_s) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return {'p50': float(p50), 'p99': float(p99), 'max': float(ms.max()), 'count': len(ms)}


@contextmanager
def _leased_domain_id() -> Iterator[int]:
    """A ROS domain id no test session on this machine holds (test/ros_graph.py's lock
    files), so a soak never shares a graph with a test run."""
    lock_dir = Path(tempfile.gettempdir()) / 'semseg_ros_domains'
    lock_dir.mkdir(exist_ok=True)
    ids = list(DOMAIN_IDS)
    random.shuffle(ids)
    for domain_id in ids:
        with (lock_dir / f'{domain_id}.lock').open('w') as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                yield domain_id
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return
    raise RuntimeError(f'every ROS domain id in {DOMAIN_IDS} is leased; see {lock_dir}')


#: The soak's node parameters over the shipped params file: onnxruntime FP32 on the CPU, an
#: engine slower than the 30 Hz input (``node_params`` of :func:`run_soak` replaces them).
SOAK_PARAMS = {'backend': 'onnxruntime', 'device': 'cpu'}


def _node_command(model: Path, params: dict[str, object]) -> list[str]:
    overrides = [arg for name, value in {'model_path': model, **params}.items()
                 for arg in ('-p', f'{name}:={value}')]  # fmt: skip
    return [
        sys.executable, '-m', 'semseg_ros.node', '--ros-args',
        '--params-file', str(REPO / 'config' / 'semseg.yaml'), *overrides,
        '-r', f'image:={CAMERA}',
    ]  # fmt: skip


def run_soak(
    duration_s: float,
    *,
    warmup_s: float,
    model: Path = REPO / 'models' / 'semseg_demo.onnx',
    domain_id: int | None = None,
    rss_period_s: float = 5.0,
    node_params: dict[str, object] | None = None,
) -> SoakReport:
    """Run the node for ``duration_s`` under 30 Hz input; see the module docstring.
    ``node_params``: node parameters instead of :data:`SOAK_PARAMS` (the thread study)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    if domain_id is None:
        with _leased_domain_id() as leased:
            return run_soak(duration_s, warmup_s=warmup_s, model=model, domain_id=leased,
                            rss_period_s=rss_period_s, node_params=node_params)  # fmt: skip
    env = isolated_environment(domain_id)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
    env['PYTHONUNBUFFERED'] = '1'
    report = SoakReport(duration_s, warmup_s, Path(model).name)
    node_log: list[str] = []
    node = subprocess.Popen(
        _node_command(Path(model), SOAK_PARAMS if node_params is None else node_params),
        env=env, cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    pump = threading.Thread(target=lambda: node_log.extend(node.stdout), daemon=True)
    pump.start()
    use_fastdds_profile()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    peer = rclpy.create_node('soak_bridge', context=context)
    reports: list[Any] = []
    receipts: list[float] = []
    lock = threading.Lock()

    def mask_callback(msg: Image) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with lock:
            receipts.append((now - stamp) / 1e9)

    peer.create_subscription(DiagnosticArray, '/diagnostics', reports.append, 50)
    peer.create_subscription(
        Image, '/semseg_node/mask', mask_callback,
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
    )  # fmt: skip
    camera = peer.create_publisher(
        Image, CAMERA, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    )
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(peer)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 60
        while camera.get_subscription_count() < 1 or not peer.get_publishers_info_by_topic(
            '/semseg_node/mask'
        ):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('the node did not come up:\n' + ''.join(node_log[-20:]))
            time.sleep(0.05)
        time.sleep(1.0)  # the node sees our mask subscription
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
        pixels[..., 3] = 255
        msg = Image(height=HEIGHT, width=WIDTH, encoding='bgra8', step=WIDTH * 4)
        msg.header.frame_id = 'ego_vehicle/rgb_front'
        data = array.array('B')
        data.frombytes(pixels.tobytes())
        msg.data = data
        start = time.monotonic()
        cpu_start = cpu_seconds(node.pid)
        next_rss = 0.0
        period = 1.0 / RATE_HZ
        k = 0
        while True:
            now = time.monotonic() - start
            if now >= duration_s:
                break
            if now >= next_rss:
                report.rss_mb.append((now, rss_mb(node.pid)))
                next_rss += rss_period_s
                if node.poll() is not None:
                    raise RuntimeError('the node died:\n' + ''.join(node_log[-20:]))
            stamp = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            camera.publish(msg)
            report.sent += 1
            k += 1
            time.sleep(max(0.0, start + k * period - time.monotonic()))
        report.rss_mb.append((time.monotonic() - start, rss_mb(node.pid)))
        report.node_cpu_s = cpu_seconds(node.pid) - cpu_start
        camera.wait_for_all_acked(rclpy.duration.Duration(seconds=5))
        time.sleep(1.0)  # the last frame through
        before = len(reports)
        node.send_signal(signal.SIGINT)
        report.exit_code = node.wait(15)
        end = time.monotonic() + 3
        while len(reports) == before and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        executor.shutdown()
        peer.destroy_node()
        rclpy.try_shutdown(context=context)
        pump.join(2)
    report.load_average = os.getloadavg()
    report.node_log_tail = ''.join(node_log[-10:])
    _fill(report, reports, receipts, warmup_s)
    return report


def _fill(report: SoakReport, reports: list[Any], receipts: list[float], warmup_s: float) -> None:
    if not reports:
        report.unexplained = {'no /diagnostics': 1}
        return
    values = {kv.key: kv.value for kv in reports[-1].status[0].values}
    count = {
        'lost': 'frames lost in transport',
        'overwritten': 'frames overwritten before the callback',
        'received': 'frames received',
        'published': 'frames published',
        'pending': 'frames pending',
        'stale': 'frames dropped (stale)',
        'bad': 'frames dropped (bad input)',
        'failed': 'frames failed',
        'skipped': 'frames skipped (no subscriber)',
    }
    c = report.counts = {name: int(values[key]) for name, key in count.items()}
    columns = ('published', 'stale', 'bad', 'failed', 'skipped', 'pending')
    report.unexplained = {
        'sent - lost - overwritten - received': report.sent
        - c['lost']
        - c['overwritten']
        - c['received'],
        'received - sum of fates': c['received'] - sum(c[k] for k in columns),
    }

    def ms(key: str) -> float:
        return float(values[key]) if values.get(key, 'n/a') != 'n/a' else float('nan')

    p99s = [
        float(v.value)
        for r in reports
        for v in r.status[0].values
        if v.key == 'latency stamp to publish p99 (ms)' and v.value != 'n/a'
    ]
    report.latency_ms = {
        'processing_p50': ms('processing p50 (ms)'),
        'processing_p99': ms('processing p99 (ms)'),
        'processing_max': ms('processing max (ms)'),
        'stamp_to_publish_p50': ms('latency stamp to publish p50 (ms)'),
        'stamp_to_publish_p99': ms('latency stamp to publish p99 (ms)'),
        'stamp_to_publish_p99_worst_window': max(p99s, default=float('nan')),
        'stamp_to_publish_max': ms('latency stamp to publish max (ms)'),
    }
    report.latency_bound_ms = 2 * report.latency_ms['processing_max'] + (
        TRANSPORT_ALLOWANCE_S * 1e3
    )
    report.subscriber_latency_ms = _percentiles(receipts)
    report.masks_received = len(receipts)
    report.output_rate_hz = c['published'] / report.duration_s if report.duration_s else 0.0
    after = [mb for t, mb in report.rss_mb if t >= warmup_s and not np.isnan(mb)]
    if len(after) >= 2:
        report.rss_growth = (after[-1] - after[0]) / after[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m semseg_ros.soak', description=__doc__)
    parser.add_argument('--duration', type=float, default=600.0, help='seconds (default 600)')
    parser.add_argument('--warmup', type=float, default=120.0, help='seconds before RSS counts')
    parser.add_argument('--model', type=Path, default=REPO / 'models' / 'semseg_demo.onnx')
    parser.add_argument('--json', type=Path, help='write the report as JSON here')
    args = parser.parse_args(argv)
    with _leased_domain_id() as domain_id:
        report = run_soak(args.duration, warmup_s=args.warmup, model=args.model,
                          domain_id=domain_id)  # fmt: skip
    print(report.text())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {**asdict(report), 'ok': report.ok, 'problems': report.problems()}
        args.json.write_text(json.dumps(data, indent=2, default=str) + '\n')
    return 0 if report.ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
