"""``make demo`` / ``semseg demo``: the whole runtime graph on a synthetic drive, no ROS needed.

1. Generate a synthetic drive (a sequence of 800x600 frames with ground truth) and, for the
   data layer, a small dataset with its check report and a sample sheet.
2. Run three real processes on loopback, as the CARLA bridge, our node and ``ros2 bag record``
   would run beside each other: ``semseg replay`` (camera + segmentation camera topics, 20 Hz
   sim time) -> ``semseg run`` (the standalone node with the shipped model, ROS 2 over Cyclone
   DDS) -> ``semseg record`` (masks and /diagnostics into an mcap bag).
3. Read the bag back and write what a person looks at into ``--out`` (default ``runs/demo``):
   ``drive.gif`` (camera | colour mask | overlay), ``contact_sheet.png``, ``metrics.json``
   (per-class IoU against the synthetic ground truth, FPS, latency p50/p99, drops).

This module glues both halves of the project, so it imports the training package lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from semseg_ros.labels import LYFT13
from semseg_ros.metrics import ConfusionMatrix
from semseg_ros.visualize import contact_sheet, fit_width, label_panel, write_rgb

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / 'models' / 'semseg_demo.onnx'
MASK_TOPIC = '/semseg_node/mask'
SIM_HZ = 20.0


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


class ChildProcess:
    """A ``semseg`` subcommand in its own process; its output goes to a log file and a queue."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f'{name}.log'
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'semseg_ros.cli', *args, '--loopback'],
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


def run_graph(model: Path, drive_dir: Path, bag: Path, *, log_dir: Path, rate: float) -> float:
    """replay -> node -> recorder on loopback, on a fresh ROS domain; returns the wall seconds
    the camera stream took."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 200)), PYTHONUNBUFFERED='1')
    children: list[ChildProcess] = []
    try:
        node = ChildProcess(
            'node',
            ['run', '--model', str(model), '-p', 'use_sim_time:=true',
             # ground truth as the bridge sends it: carla23 colours (the node's default set)
             '-p', 'ground_truth:=true',
             '--idle-exit', '3', '--duration', '240'],
            env=env, log_dir=log_dir,
        )  # fmt: skip
        children.append(node)
        recorder = ChildProcess(
            'recorder',
            ['record', '--out', str(bag), '--idle-timeout', '5', '--duration', '240',
             MASK_TOPIC, '/diagnostics'],
            env=env, log_dir=log_dir,
        )  # fmt: skip
        children.append(recorder)
        # Frames flow only once the recorder listens to the masks: the node does not compute
        # outputs nobody subscribes to.
        recorder.wait_for_line(f'{MASK_TOPIC}: 1 publisher(s) matched', timeout=60)
        start = time.perf_counter()
        camera = ChildProcess(
            'replay',
            ['replay', str(drive_dir), '--rate', str(rate), '--wait-for-subscribers', '1'],
            env=env, log_dir=log_dir,
        )  # fmt: skip
        children.append(camera)
        camera.finish(timeout=240)
        stream_seconds = time.perf_counter() - start
        node.finish(timeout=60)
        recorder.finish(timeout=60)
        return stream_seconds
    finally:
        for child in children:
            child.kill()


def read_outputs(bag: Path) -> tuple[dict[int, np.ndarray], dict[str, str]]:
    """Masks by replay tick, and the key/values of the node's last /diagnostics report."""
    from rosbags.highlevel import AnyReader

    from semseg_ros.imaging import image_to_array

    masks: dict[int, np.ndarray] = {}
    diagnostics: dict[str, str] = {}
    with AnyReader([bag]) as reader:
        for connection, _, raw in reader.messages(connections=reader.connections):
            msg = reader.deserialize(raw, connection.msgtype)
            if connection.topic == MASK_TOPIC:
                stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                tick = round(stamp_ns * SIM_HZ / 1e9) - 1  # replay stamps tick k at (k+1)/Hz
                masks[tick] = np.array(image_to_array(msg))
            elif msg.status:
                report = {kv.key: kv.value for kv in msg.status[0].values}
                # The last report written while frames were flowing: the final one, after the
                # stream ended, has zero rates.
                if not diagnostics or report.get('input rate (Hz)') != '0.00':
                    diagnostics = report
    return masks, diagnostics


def run_demo(
    out: Path,
    *,
    model: Path = DEFAULT_MODEL,
    frames: int = 80,
    seed: int = 7,
    rate: float = SIM_HZ,
) -> dict:
    """Run every step and return the metrics (also written to ``out/metrics.json``)."""
    from training.data.check import check_dataset, write_report
    from training.data.lyft import read_label, read_rgb, scan_dataset
    from training.data.preview import sample_sheet
    from training.data.synthetic import generate_dataset

    if not model.is_file():
        msg = f'model {model} does not exist; build the shipped model with `make model`'
        raise DemoError(msg)
    if out.exists():
        shutil.rmtree(out)
    (out / 'logs').mkdir(parents=True)

    # The data layer: a small synthetic dataset, its check report and a sample sheet.
    data_dir = generate_dataset(out / 'data', 10, seed, progress=False)
    report = check_dataset(data_dir)
    write_report(report, out / 'data' / 'check')
    write_rgb(out / 'data_samples.png', sample_sheet(scan_dataset(data_dir).samples[::2], LYFT13))

    # The graph: a synthetic drive through replay -> node -> recorder.
    drive_dir = generate_dataset(out / 'drive', frames, seed, mode='sequence', progress=True)
    samples = scan_dataset(drive_dir).samples
    for attempt in (1, 2):
        # A second attempt, on a fresh domain, for the rare Cyclone DDS discovery stall on
        # loopback in which the camera never matches the node (see test_graph.py).
        try:
            stream_seconds = run_graph(
                model, drive_dir, out / 'outputs_bag', log_dir=out / 'logs', rate=rate
            )
            masks, diagnostics = read_outputs(out / 'outputs_bag')
            if not masks:
                raise DemoError(f'the node published no masks; see {out / "logs" / "node.log"}')
            break
        except DemoError as err:
            if attempt == 2:
                raise
            print(f'{err}; trying once more on a fresh ROS domain', file=sys.stderr)
            shutil.rmtree(out / 'outputs_bag', ignore_errors=True)

    confusion = ConfusionMatrix(LYFT13.num_classes)
    panels = []
    for tick, ids in sorted(masks.items()):
        sample = samples[tick]
        confusion.update(ids, read_label(sample.label))
        panels.append(
            label_panel(
                read_rgb(sample.rgb),
                ids,
                LYFT13,
                titles=(f'camera {sample.name}', 'node mask', 'overlay'),
            )
        )
    write_animation(out / 'drive.gif', [fit_width(p, 960) for p in panels], fps=rate / 2)
    write_rgb(out / 'contact_sheet.png', contact_sheet([fit_width(p, 1200) for p in panels[::8]]))

    metrics = {
        'model': str(model),
        'frames_published': len(samples),
        'masks_received': len(masks),
        'stream_seconds': round(stream_seconds, 2),
        'fps_end_to_end': round(len(masks) / stream_seconds, 2),
        'miou': round(confusion.miou(), 4),
        'pixel_accuracy': round(confusion.pixel_accuracy(), 4),
        'iou_per_class': {
            name: None if np.isnan(v) else round(float(v), 4)
            for name, v in zip(LYFT13.names, confusion.iou(), strict=True)
        },
        'node_diagnostics': diagnostics,
        'data_check': {'pairs': report.total_pairs, 'problems': len(report.problems)},
    }
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=2))
    return metrics


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
    args = parser.parse_args(argv)
    if args.frames < 2 or args.rate <= 0:
        parser.error(f'need --frames >= 2 and --rate > 0, got {args.frames} and {args.rate}')
    try:
        metrics = run_demo(
            args.out, model=args.model, frames=args.frames, seed=args.seed, rate=args.rate
        )
    except DemoError as err:
        print(f'{parser.prog}: {err}', file=sys.stderr)
        return 1
    diag = metrics['node_diagnostics']
    print()
    print(
        f'{metrics["frames_published"]} camera frames at {args.rate:g} Hz -> '
        f'{metrics["masks_received"]} masks ({diag.get("frames dropped (stale)", "?")} '
        f'dropped as stale: newest frame wins)'
    )
    print(
        f'end to end {metrics["fps_end_to_end"]} FPS; node latency stamp->publish p50 '
        f'{diag.get("latency stamp to publish p50 (ms)", "?")} ms, p99 '
        f'{diag.get("latency stamp to publish p99 (ms)", "?")} ms (sim time, 50 ms ticks); '
        f'processing p50 {diag.get("processing p50 (ms)", "?")} ms; backend '
        f'{diag.get("backend", "?")}'
    )
    print(
        f'mIoU vs synthetic ground truth {metrics["miou"]:.3f} '
        f'(node online mIoU {diag.get("mIoU", "n/a")})'
    )
    print('look at:')
    for name in ('drive.gif', 'contact_sheet.png', 'metrics.json', 'data_samples.png'):
        print(f'  {args.out / name}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
