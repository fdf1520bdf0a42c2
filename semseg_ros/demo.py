"""``make demo`` / ``semseg demo``: the whole runtime graph on a synthetic drive, no CARLA needed.

1. Generate a synthetic drive (a sequence of 800x600 frames with ground truth) and, for the
   data layer, a small dataset with its check report and a sample sheet.
2. Run three real ROS 2 processes (rclpy on Fast DDS) as the CARLA bridge, our node and
   ``ros2 bag record`` would run beside each other, in a ROS domain of their own with
   localhost discovery and the shipped Fast DDS profile: ``semseg replay`` (camera +
   segmentation camera topics, 20 Hz sim time, /clock; frames decoded before the stream, as
   a simulator has them, so PNG decoding takes no CPU from the node) -> ``semseg_node`` (the
   shipped model, ``config/semseg.yaml``, sim time, ground truth) -> ``semseg record``
   (masks, camera_info and /diagnostics into an mcap bag). The node is stopped with SIGINT
   once the stream ended and its last report is out, and must exit 0.
   The drive runs twice: **free running** (the camera does not wait: a slow node drops stale
   frames, as beside a simulator) and **lockstep** (``semseg replay --lockstep``: each frame
   waits for the previous frame's mask, so every frame is scored; the recorder also takes
   ``~/confidence`` and ``~/error``). Same frames, same node: the two mIoUs side by side
   show what dropping frames costs the score, and the masks of the frames both passes
   segmented are compared.
3. Read the bags back and write what a person looks at into ``--out`` (default ``runs/demo``):
   ``drive.gif`` (camera | colour mask | overlay, free running), ``contact_sheet.png`` (as
   rviz shows the node's outputs: camera | colour | overlay | confidence | error, lockstep),
   ``metrics.json`` (per-class IoU against the synthetic ground truth, FPS, latency p50/p99,
   drops by kind, processing p50, and the lockstep pass beside it).

This module glues both halves of the project, so it imports the training package lazily.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.labels import LYFT13
from semseg_ros.metrics import ConfusionMatrix
from semseg_ros.node.params import DIAGNOSTICS_PERIOD_S
from semseg_ros.ros_env import isolated_environment, random_domain_id, share_file
from semseg_ros.visualize import caption, contact_sheet, fit_width, label_panel, write_rgb

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / 'models' / 'semseg_demo.onnx'
MASK_TOPIC = '/semseg_node/mask'
CONFIDENCE_TOPIC = '/semseg_node/confidence'
ERROR_TOPIC = '/semseg_node/error'
CAMERA_TOPIC = '/carla/ego_vehicle/rgb_front/image'
CAMERA_INFO_TOPIC = '/carla/ego_vehicle/rgb_front/camera_info'
SEG_TOPIC = '/carla/ego_vehicle/semantic_segmentation_front/image'
SIM_HZ = 20.0
#: The lockstep pass waits up to 10 s per mask: the node's first frame with ~/confidence
#: subscribed also opens the engine's session with that head (onnxruntime: ~1-2 s here).
LOCKSTEP_ARGS = ['--lockstep', '--lockstep-topic', MASK_TOPIC, '--lockstep-timeout', '10']
#: /diagnostics keys of the node's frame accounting, by the kind of drop.
DROP_KEYS = {
    'stale': 'frames dropped (stale)',
    'lost in transport': 'frames lost in transport',
    'bad input': 'frames dropped (bad input)',
    'failed': 'frames failed',
    'skipped (no subscriber)': 'frames skipped (no subscriber)',
}


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


class ChildProcess:
    """A process of the graph; its output goes to a log file and a queue."""

    def __init__(self, name: str, command: list[str], *, env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f'{name}.log'
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open('w') as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.lines.put(line)

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in self.lines.get(timeout=0.2):
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        msg = f'{self.name} did not report {text!r} within {timeout:.0f} s; see {self.log_path}'
        raise DemoError(msg)

    def signal(self, signum: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def finish(self, timeout: float) -> None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            msg = f'{self.name} did not exit within {timeout:.0f} s; see {self.log_path}'
            raise DemoError(msg) from None
        if code != 0:
            raise DemoError(f'{self.name} exited with code {code}; see {self.log_path}')

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def semseg_command(*args: str) -> list[str]:
    """A ``semseg`` subcommand in this Python (``python -m semseg_ros.cli``)."""
    return [sys.executable, '-m', 'semseg_ros.cli', *args]


def node_command(model: Path) -> list[str]:
    """``semseg_node`` as ``ros2 run`` starts it beside the bridge: the shipped parameters,
    the model, sim time, ground truth from the segmentation camera, the bridge's topics."""
    params = share_file('config', 'semseg.yaml')
    if params is None:
        raise DemoError('config/semseg.yaml was not found; reinstall semseg_ros')
    return [
        sys.executable, '-m', 'semseg_ros.node', '--ros-args', '--params-file', str(params),
        '-p', f'model_path:={model}', '-p', 'use_sim_time:=true',
        # ground truth as the bridge sends it: carla23 colours (the node's default set)
        '-p', 'ground_truth:=true',
        '-r', f'image:={CAMERA_TOPIC}', '-r', f'ground_truth:={SEG_TOPIC}',
    ]  # fmt: skip


def run_graph(
    model: Path,
    drive_dir: Path,
    bag: Path,
    *,
    log_dir: Path,
    rate: float,
    domain_id: int | None = None,
    lockstep: bool = False,
    extra_topics: tuple[str, ...] = (),
) -> None:
    """replay -> node -> recorder in a ROS domain of their own (``domain_id``, default a
    random one); each must exit 0. ``lockstep``: the replay waits for each frame's mask
    (``semseg replay --lockstep``), so the node segments every frame. ``extra_topics``: more
    node outputs to record (the node computes an output only while someone subscribes)."""
    domain = random_domain_id() if domain_id is None else domain_id
    env = dict(isolated_environment(domain), PYTHONUNBUFFERED='1')
    children: list[ChildProcess] = []
    try:
        node = ChildProcess('node', node_command(model), env=env, log_dir=log_dir)
        children.append(node)
        recorder = ChildProcess(
            'recorder',
            semseg_command('record', '--out', str(bag), '--duration', '240',
                           MASK_TOPIC, CAMERA_INFO_TOPIC, '/diagnostics', *extra_topics),
            env=env, log_dir=log_dir,
        )  # fmt: skip
        children.append(recorder)
        # Frames flow only once the recorder listens to the masks: the node does not compute
        # outputs nobody subscribes to.
        recorder.wait_for_line(f'{MASK_TOPIC}: 1 publisher(s) matched', timeout=60)
        camera = ChildProcess(
            'replay',
            semseg_command('replay', str(drive_dir), '--rate', str(rate), '--preload',
                           '--wait-for-subscribers', '1', '--wait-for', f'{CAMERA_INFO_TOPIC}:1',
                           *(LOCKSTEP_ARGS if lockstep else [])),
            env=env, log_dir=log_dir,
        )  # fmt: skip
        children.append(camera)
        # replay exits once the node's reader acknowledged every frame (or 2 s after).
        camera.finish(timeout=240)
        # The node finishes its last frame and reports; its masks are reliable to the recorder.
        time.sleep(2.5 * DIAGNOSTICS_PERIOD_S)
        node.signal(signal.SIGINT)
        node.finish(timeout=30)
        recorder.signal(signal.SIGINT)  # writes what arrived, closes the bag
        recorder.finish(timeout=60)
    finally:
        for child in children:
            child.kill()


@dataclass
class GraphOutputs:
    """What the recorder wrote, by replay tick (replay stamps tick k at (k + 1) / 20 s)."""

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    confidence: dict[int, np.ndarray] = field(default_factory=dict)  # mono8, when recorded
    error: dict[int, np.ndarray] = field(default_factory=dict)  # rgb8, when recorded
    mask_received_ns: dict[int, int] = field(default_factory=dict)  # recorder's receive time
    camera_received_ns: dict[int, int] = field(default_factory=dict)  # camera_info's
    diagnostics: dict[str, str] = field(default_factory=dict)  # last report while streaming
    final: dict[str, str] = field(default_factory=dict)  # the node's last report

    def stream_seconds(self) -> float:
        """Wall seconds from the first camera frame to the last mask (recorder receive times;
        process start-up and discovery are not part of the stream)."""
        if not self.mask_received_ns or not self.camera_received_ns:
            return 0.0
        span_ns = max(self.mask_received_ns.values()) - min(self.camera_received_ns.values())
        return span_ns / 1e9

    def fps(self) -> float:
        """Masks per second of the stream."""
        return len(self.masks) / self.stream_seconds() if self.stream_seconds() > 0 else 0.0

    def latency_ms(self) -> np.ndarray:
        """Wall-clock camera frame -> mask, per mask (both receive times in the recorder)."""
        return np.array([
            (received - self.camera_received_ns[tick]) / 1e6
            for tick, received in self.mask_received_ns.items()
            if tick in self.camera_received_ns
        ])  # fmt: skip


def _tick(header: Any) -> int:
    """The replay tick of a header: replay stamps tick k at (k + 1) / 20 s."""
    stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
    return round(stamp_ns * SIM_HZ / 1e9) - 1


def read_outputs(bag: Path) -> GraphOutputs:
    """Masks, receive times and the node's /diagnostics reports from the recorder's bag."""
    from rosbags.highlevel import AnyReader

    from semseg_ros.imaging import image_to_array

    outputs = GraphOutputs()
    with AnyReader([bag]) as reader:
        for connection, received_ns, raw in reader.messages(connections=reader.connections):
            msg = reader.deserialize(raw, connection.msgtype)
            if connection.topic == MASK_TOPIC:
                tick = _tick(msg.header)
                outputs.masks[tick] = np.array(image_to_array(msg))
                outputs.mask_received_ns[tick] = received_ns
            elif connection.topic == CONFIDENCE_TOPIC:
                outputs.confidence[_tick(msg.header)] = np.array(image_to_array(msg))
            elif connection.topic == ERROR_TOPIC:
                outputs.error[_tick(msg.header)] = np.array(image_to_array(msg))
            elif connection.topic == CAMERA_INFO_TOPIC:
                outputs.camera_received_ns[_tick(msg.header)] = received_ns
            elif msg.status:
                report = {kv.key: kv.value for kv in msg.status[0].values}
                outputs.final = report
                # The last report written while frames were flowing: those after the stream
                # ended have zero rates.
                if not outputs.diagnostics or report.get('input rate (Hz)') != '0.00':
                    outputs.diagnostics = report
    return outputs


def run_demo(
    out: Path,
    *,
    model: Path = DEFAULT_MODEL,
    frames: int = 80,
    seed: int = 7,
    rate: float = SIM_HZ,
    domain_id: int | None = None,
    lockstep_pass: bool = True,
) -> dict:
    """Run every step and return the metrics (also written to ``out/metrics.json``).

    The top-level metrics are the free-running pass's; ``metrics['lockstep']`` the lockstep
    pass's (``lockstep_pass=False`` skips it, and the contact sheet then has no confidence
    or error column)."""
    from semseg_ros.training_half import training_module

    check = training_module('data.check')
    lyft = training_module('data.lyft')
    sample_sheet = training_module('data.preview').sample_sheet
    generate_dataset = training_module('data.synthetic').generate_dataset
    read_label, read_rgb, scan_dataset = lyft.read_label, lyft.read_rgb, lyft.scan_dataset

    if not model.is_file():
        msg = f'model {model} does not exist; build the shipped model with `make model`'
        raise DemoError(msg)
    if out.exists():
        shutil.rmtree(out)
    (out / 'logs').mkdir(parents=True)

    # The data layer: a small synthetic dataset, its check report and a sample sheet.
    data_dir = generate_dataset(out / 'data', 10, seed, progress=False)
    report = check.check_dataset(data_dir)
    check.write_report(report, out / 'data' / 'check')
    write_rgb(out / 'data_samples.png', sample_sheet(scan_dataset(data_dir).samples[::2], LYFT13))

    # The graph: a synthetic drive through replay -> node -> recorder, free running.
    drive_dir = generate_dataset(out / 'drive', frames, seed, mode='sequence', progress=True)
    samples = scan_dataset(drive_dir).samples
    labels = [read_label(sample.label) for sample in samples]
    run_graph(
        model, drive_dir, out / 'outputs_bag', log_dir=out / 'logs', rate=rate,
        domain_id=domain_id,
    )  # fmt: skip
    outputs = read_outputs(out / 'outputs_bag')
    if not outputs.masks:
        raise DemoError(f'the node published no masks; see {out / "logs" / "node.log"}')
    metrics = {'model': str(model), **_pass_metrics(outputs, labels, frames=len(samples))}
    metrics['data_check'] = {'pairs': report.total_pairs, 'problems': len(report.problems)}
    rgb = {tick: read_rgb(samples[tick].rgb) for tick in sorted(outputs.masks)}
    panels = [
        label_panel(rgb[tick], ids, LYFT13,
                    titles=(f'camera {samples[tick].name}', 'node mask', 'overlay'))
        for tick, ids in sorted(outputs.masks.items())
    ]  # fmt: skip
    write_animation(out / 'drive.gif', [fit_width(p, 960) for p in panels], fps=rate / 2)
    sheet_rows = panels[::8]

    # The same drive in lockstep: every frame segmented, with confidence and error images.
    if lockstep_pass:
        (out / 'logs' / 'lockstep').mkdir()
        run_graph(
            model, drive_dir, out / 'lockstep_bag', log_dir=out / 'logs' / 'lockstep',
            rate=rate, domain_id=domain_id, lockstep=True,
            extra_topics=(CONFIDENCE_TOPIC, ERROR_TOPIC),
        )  # fmt: skip
        lock = read_outputs(out / 'lockstep_bag')
        metrics['lockstep'] = _pass_metrics(lock, labels, frames=len(samples))
        metrics['lockstep']['replay_report'] = _lockstep_report(out / 'logs' / 'lockstep')
        metrics['free_running_vs_lockstep'] = _compare_passes(
            outputs, lock, labels, free_miou=metrics['miou'], lock_miou=metrics['lockstep']['miou']
        )
        sheet_rows = [
            rviz_row(read_rgb(samples[tick].rgb), ids, lock.confidence.get(tick),
                     lock.error.get(tick), title=f'camera {samples[tick].name}')
            for tick, ids in sorted(lock.masks.items())
        ][::8]  # fmt: skip
    write_rgb(out / 'contact_sheet.png', contact_sheet([fit_width(r, 2000) for r in sheet_rows]))
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=2))
    return metrics


def rviz_row(
    rgb: np.ndarray,
    ids: np.ndarray,
    confidence: np.ndarray | None,
    error: np.ndarray | None,
    *,
    title: str,
) -> np.ndarray:
    """One frame as the rviz config shows the node's outputs: camera | colour | overlay |
    confidence (mono8, white = certain) | error (wrong pixels red over the dimmed camera)."""
    row = [label_panel(rgb, ids, LYFT13, titles=(title, '~/color', '~/overlay'))]
    blank = np.full_like(rgb, 255)
    for image, name in ((confidence, '~/confidence'), (error, '~/error')):
        if image is None:
            image, name = blank, f'{name} (not received)'
        elif image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        row.append(caption(image, name))
    return np.hstack(row)


def _pass_metrics(outputs: GraphOutputs, labels: list[np.ndarray], *, frames: int) -> dict:
    """One pass's scores and counts: IoU over the frames the node segmented."""
    confusion = _confusion(outputs.masks, labels)
    latency = outputs.latency_ms()
    final = outputs.final
    return {
        'frames_published': frames,
        'masks_received': len(outputs.masks),
        'confidence_images': len(outputs.confidence),
        'error_images': len(outputs.error),
        'stream_seconds': round(outputs.stream_seconds(), 2),
        'fps_end_to_end': round(outputs.fps(), 2),
        'latency_wall_ms': {
            'p50': round(float(np.percentile(latency, 50)), 1),
            'p99': round(float(np.percentile(latency, 99)), 1),
        },
        'node_latency_sim_ms': {
            'p50': _number(outputs.diagnostics.get('latency stamp to publish p50 (ms)')),
            'p99': _number(outputs.diagnostics.get('latency stamp to publish p99 (ms)')),
        },
        'processing_p50_ms': _number(outputs.diagnostics.get('processing p50 (ms)')),
        'frames_received_by_node': _number(final.get('frames received')),
        'drops': {kind: _number(final.get(key)) for kind, key in DROP_KEYS.items()},
        'miou': round(confusion.miou(), 4),
        'pixel_accuracy': round(confusion.pixel_accuracy(), 4),
        'iou_per_class': {
            name: None if np.isnan(v) else round(float(v), 4)
            for name, v in zip(LYFT13.names, confusion.iou(), strict=True)
        },
        'node_diagnostics': outputs.diagnostics,
        'node_final_report': final,
    }


def _compare_passes(
    free: GraphOutputs,
    lock: GraphOutputs,
    labels: list[np.ndarray],
    *,
    free_miou: float,
    lock_miou: float,
) -> dict[str, Any]:
    """The two passes over the same drive: mIoU of each (as their metrics have them), and
    of the lockstep masks on just the frames the free-running node segmented (so a
    difference is the frames, not the masks), and whether those frames' masks are the same."""
    common = sorted(set(free.masks) & set(lock.masks))
    on_common = _confusion({tick: lock.masks[tick] for tick in common}, labels)
    identical = sum(np.array_equal(free.masks[t], lock.masks[t]) for t in common)
    return {
        'frames': len(labels),
        'segmented_free_running': len(free.masks),
        'segmented_lockstep': len(lock.masks),
        'miou_free_running': free_miou,
        'miou_lockstep_every_frame': lock_miou,
        'miou_lockstep_on_the_free_running_frames': round(on_common.miou(), 4) if common else None,
        'masks_identical_on_common_frames': f'{identical}/{len(common)}',
    }


def _confusion(masks: dict[int, np.ndarray], labels: list[np.ndarray]) -> ConfusionMatrix:
    """The masks (by tick) against the drive's labels."""
    confusion = ConfusionMatrix(LYFT13.num_classes)
    for tick, ids in masks.items():
        confusion.update(ids, labels[tick])
    return confusion


def _lockstep_report(log_dir: Path) -> str:
    """The replay's ``lockstep: N frame(s), T timed out ...`` line."""
    lines = (log_dir / 'replay.log').read_text().splitlines()
    return next((line for line in lines if line.startswith('lockstep:')), 'not reported')


def _number(text: str | None) -> float | int | None:
    """A /diagnostics value as a number (None when the node did not report it)."""
    if text is None:
        return None
    value = float(text)
    return int(value) if value.is_integer() and '.' not in text else value


def write_animation(path: Path, frames: list[np.ndarray], *, fps: float) -> None:
    """An animated GIF (Pillow, from the train extra) or, without Pillow, an MP4 (OpenCV)."""
    try:
        from PIL import Image
    except ImportError:
        import cv2

        path = path.with_suffix('.mp4')
        height, width = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        return
    images = [
        Image.fromarray(f).quantize(colors=128, method=Image.Quantize.MEDIANCUT) for f in frames
    ]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=Path('runs/demo'), help='output folder')
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL, help='ONNX model')
    parser.add_argument('--frames', type=int, default=80, help='drive frames (default 80)')
    parser.add_argument('--seed', type=int, default=7, help='synthetic drive seed (default 7)')
    parser.add_argument('--rate', type=float, default=SIM_HZ, help='camera Hz (default 20)')
    parser.add_argument(
        '--no-lockstep',
        action='store_true',
        help=(
            'skip the second, lockstep pass (semseg replay --lockstep: every frame segmented, '
            'with ~/confidence and ~/error recorded for the contact sheet)'
        ),
    )
    args = parser.parse_args(argv)
    if args.frames < 2 or args.rate <= 0:
        parser.error(f'need --frames >= 2 and --rate > 0, got {args.frames} and {args.rate}')
    try:
        metrics = run_demo(
            args.out, model=args.model, frames=args.frames, seed=args.seed, rate=args.rate,
            lockstep_pass=not args.no_lockstep,
        )  # fmt: skip
    except DemoError as err:
        print(f'{parser.prog}: {err}', file=sys.stderr)
        return 1
    diag = metrics['node_diagnostics']
    drops = ', '.join(f'{n} {kind}' for kind, n in metrics['drops'].items())
    print()
    print(
        f'{metrics["frames_published"]} camera frames at {args.rate:g} Hz -> '
        f'{metrics["masks_received"]} masks; dropped: {drops} (stale: newest frame wins)'
    )
    print(
        f'end to end {metrics["fps_end_to_end"]} FPS; camera -> mask (wall clock) p50 '
        f'{metrics["latency_wall_ms"]["p50"]} ms, p99 {metrics["latency_wall_ms"]["p99"]} ms; '
        f'node latency stamp->publish p50 {diag.get("latency stamp to publish p50 (ms)", "?")} '
        f'ms, p99 {diag.get("latency stamp to publish p99 (ms)", "?")} ms (sim time, 50 ms '
        f'ticks); processing p50 {diag.get("processing p50 (ms)", "?")} ms; backend '
        f'{diag.get("backend", "?")}'
    )
    print(
        f'mIoU vs synthetic ground truth {metrics["miou"]:.3f} '
        f'(node online mIoU {diag.get("mIoU", "n/a")})'
    )
    if 'lockstep' in metrics:
        both = metrics['free_running_vs_lockstep']
        print(
            f'lockstep pass ({metrics["lockstep"]["replay_report"]}): '
            f'{both["segmented_lockstep"]}/{both["frames"]} frames segmented, mIoU '
            f'{both["miou_lockstep_every_frame"]:.3f} vs free running '
            f'{both["miou_free_running"]:.3f} on its {both["segmented_free_running"]} frames '
            f'(lockstep on those frames: {both["miou_lockstep_on_the_free_running_frames"]}; '
            f'masks identical on {both["masks_identical_on_common_frames"]})'
        )
    print('look at:')
    for name in ('drive.gif', 'contact_sheet.png', 'metrics.json', 'data_samples.png'):
        print(f'  {args.out / name}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
