"""``make demo`` / ``semseg demo``: the end-to-end path that exists, run on synthetic data.

Today it exercises the data layer end to end: generate a synthetic CARLA-like dataset and a
drive sequence, check the dataset, split it, and draw what came out.  Everything it writes
goes to ``--out`` (default ``runs/demo/``) and the last lines printed say where.

This module glues both halves of the project, so it imports the training package lazily.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from semseg_ros.labels import LYFT13
from semseg_ros.visualize import contact_sheet, fit_width, label_panel, write_rgb


def write_drive_video(frames: list[tuple[np.ndarray, np.ndarray]], path: Path, fps: int) -> None:
    """An MP4 of a drive: image | ground-truth classes | overlay per frame."""
    panels = [fit_width(label_panel(rgb, ids, LYFT13), 1200) for rgb, ids in frames]
    height, width = panels[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f'OpenCV cannot write MP4 video to {path}')
    try:
        for panel in panels:
            writer.write(cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def run_demo(out: Path, *, frames: int = 50, drive_frames: int = 40, seed: int = 0) -> dict:
    """Run every step and return a summary (also written to ``out/summary.json``)."""
    from training.data.check import check_dataset, write_report
    from training.data.preview import sample_sheet
    from training.data.splits import original_split, write_manifest
    from training.data.synthetic import generate_dataset, render_sequence

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    summary: dict = {}

    start = time.perf_counter()
    data_dir = generate_dataset(out / 'data', frames, seed, progress=True)
    summary['synth_seconds'] = round(time.perf_counter() - start, 2)

    report = check_dataset(data_dir)
    write_report(report, out / 'check')
    summary['check'] = {'pairs': report.total_pairs, 'problems': len(report.problems)}

    splits = original_split(report_samples := _samples(data_dir))
    manifest = write_manifest(
        out / 'manifest.json', data_dir, splits, class_set='lyft13', method='original'
    )
    summary['splits'] = {name: len(s) for name, s in splits.items()}

    picked = report_samples[:: max(1, len(report_samples) // 6)][:6]
    write_rgb(out / 'samples.png', sample_sheet(picked, LYFT13))

    drive = list(render_sequence(seed, drive_frames))
    write_drive_video(drive, out / 'drive.mp4', fps=10)
    strip = [fit_width(label_panel(rgb, ids, LYFT13), 1200) for rgb, ids in drive[::10]]
    write_rgb(out / 'drive_contact_sheet.png', contact_sheet(strip))

    summary['files'] = {
        'samples': str(out / 'samples.png'),
        'class_frequencies': str(out / 'check' / 'class_frequencies.png'),
        'check_report': str(out / 'check' / 'report.txt'),
        'manifest': str(manifest),
        'drive_video': str(out / 'drive.mp4'),
        'drive_contact_sheet': str(out / 'drive_contact_sheet.png'),
    }
    summary['class_frequencies'] = {
        name: round(float(f), 4)
        for name, f in zip(LYFT13.names, report.class_frequencies, strict=True)
    }
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    return summary


def _samples(data_dir: Path):
    from training.data.lyft import scan_dataset

    return scan_dataset(data_dir).samples


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=Path('runs/demo'), help='output folder')
    parser.add_argument('--frames', type=int, default=50, help='dataset frames (default 50)')
    parser.add_argument('--seed', type=int, default=0, help='generator seed (default 0)')
    args = parser.parse_args(argv)
    if args.frames < 5:
        parser.error(f'--frames must be at least 5 (one per episode A..E), got {args.frames}')

    summary = run_demo(args.out, frames=args.frames, seed=args.seed)
    print()
    print(f'synthetic dataset: {summary["check"]["pairs"]} pairs in {summary["synth_seconds"]} s, '
          f'{summary["check"]["problems"]} problems found by the check')  # fmt: skip
    splits = ', '.join(f'{k} {v}' for k, v in summary['splits'].items())
    print(f'split (original A,B,C / D / E): {splits}')
    top = sorted(summary['class_frequencies'].items(), key=lambda kv: -kv[1])[:5]
    print('largest classes: ' + ', '.join(f'{k} {v:.1%}' for k, v in top))
    print('look at:')
    for name, path in summary['files'].items():
        print(f'  {name:20s} {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
