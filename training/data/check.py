"""``semseg data check DIR``: validate a dataset in the Lyft-Udacity layout.

Every file under every CameraRGB/CameraSeg folder is either counted or reported: pairs are
decoded in full (which catches truncated and unreadable PNGs), sizes are compared with the
expected size and between image and label, and label ids are compared with the class set.
The report gives counts per episode, class pixel frequencies and one :class:`Problem` per
finding, each naming its file. Output (default ``DIR/check/``): ``report.json``,
``report.txt`` and ``class_frequencies.png`` (drawn with OpenCV; no matplotlib needed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from semseg_ros.cli import parse_args, positive_int, usage_error
from semseg_ros.dataset_layout import DATASET_INFO, IMAGE_DIR, LABEL_DIR
from semseg_ros.labels import ClassSet, ClassSetError, get_class_set

from .lyft import (
    DatasetError,
    dataset_class_set,
    read_dataset_info,
    read_label,
    read_rgb,
    scan_dataset,
)

#: Problem kinds, in the order the report lists them, with what each means.
PROBLEM_KINDS = {
    'info': f'{DATASET_INFO} is unreadable or invalid',
    'empty_dataset': 'no image/label pairs at all',
    'empty_episode': 'an episode folder without any image/label pair',
    'unpaired': 'an image without a label or a label without an image',
    'unexpected_file': f'something other than a .png file inside {IMAGE_DIR}/ or {LABEL_DIR}/',
    'missing': 'a file vanished while checking',
    'unreadable': 'a file that cannot be read or decoded',
    'truncated': 'a PNG that was cut short (or is empty)',
    'channels': 'an image with the wrong number of channels',
    'depth': 'an image that is not 8-bit',
    'wrong_size': 'an image or label whose size is not the expected one',
    'size_mismatch': 'an image and its label of different sizes',
    'bad_values': 'label ids outside the class set',
}


@dataclass(frozen=True)
class Problem:
    """One finding: its ``kind`` (a key of :data:`PROBLEM_KINDS`), file and details."""

    kind: str
    path: Path
    detail: str

    def __str__(self) -> str:
        return f'[{self.kind}] {self.path}: {self.detail}'


@dataclass
class CheckReport:
    """What :func:`check_dataset` found."""

    root: Path
    class_set: ClassSet
    #: (width, height) every image and label should have; None when nothing could be read.
    expected_size: tuple[int, int] | None
    #: Where ``expected_size`` came from: 'argument', 'dataset.json' or 'most common'.
    size_source: str
    #: Episode name -> number of image/label pairs found (by name, before reading).
    episodes: dict[str, int]
    total_pairs: int
    #: Pairs whose two files both read, have the expected size and in-set label ids.
    clean_pairs: int
    #: Pixels per class id over every label that could be read (index = class id).
    class_pixels: list[int]
    #: Label value -> pixels, for values outside the class set.
    out_of_set_pixels: dict[int, int]
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def total_pixels(self) -> int:
        return sum(self.class_pixels) + sum(self.out_of_set_pixels.values())

    @property
    def class_frequencies(self) -> list[float]:
        """Fraction of all label pixels per class id (out-of-set pixels count in the total)."""
        total = self.total_pixels
        return [count / total if total else 0.0 for count in self.class_pixels]

    def frequencies_by_name(self) -> dict[str, float]:
        """``class_frequencies`` keyed by class name."""
        return dict(zip(self.class_set.names, self.class_frequencies, strict=True))

    def problem_counts(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {kind: counts[kind] for kind in PROBLEM_KINDS if counts[kind]}

    def to_dict(self) -> dict[str, Any]:
        return {
            'root': str(self.root),
            'class_set': self.class_set.name,
            'expected_size': list(self.expected_size) if self.expected_size else None,
            'size_source': self.size_source,
            'episodes': self.episodes,
            'total_pairs': self.total_pairs,
            'clean_pairs': self.clean_pairs,
            'class_pixels': dict(zip(self.class_set.names, self.class_pixels, strict=True)),
            'class_frequencies': self.frequencies_by_name(),
            'out_of_set_pixels': {str(k): v for k, v in self.out_of_set_pixels.items()},
            'ok': self.ok,
            'problem_counts': self.problem_counts(),
            'problems': [
                {'kind': p.kind, 'path': str(p.path), 'detail': p.detail} for p in self.problems
            ],
        }

    def summary_lines(self) -> list[str]:
        size = 'x'.join(map(str, self.expected_size)) if self.expected_size else '-'
        lines = [
            f'dataset:     {self.root}',
            f'class set:   {self.class_set.name} ({self.class_set.num_classes} classes)',
            f'image size:  {size} ({self.size_source})',
            f'pairs:       {self.total_pairs} found, {self.clean_pairs} clean',
            'episodes:    '
            + (', '.join(f'{name} {n}' for name, n in self.episodes.items()) or 'none'),
        ]
        if self.total_pixels:
            lines.append('class pixel frequencies:')
            width = max(len(n) for n in self.class_set.names)
            for name, freq in self.frequencies_by_name().items():
                lines.append(f'  {name:<{width}}  {100 * freq:7.3f} %')
            for value, count in sorted(self.out_of_set_pixels.items()):
                share = 100 * count / self.total_pixels
                lines.append(f'  {"id " + str(value):<{width}}  {share:7.3f} %  (not in the set)')
        counts = self.problem_counts()
        if counts:
            lines.append(f'problems:    {len(self.problems)}')
            lines += [f'  {kind:<16} {n:>6}  {PROBLEM_KINDS[kind]}' for kind, n in counts.items()]
        else:
            lines.append('problems:    none')
        return lines

    def to_text(self) -> str:
        """The human-readable report: the summary, then every problem with its file."""
        lines = self.summary_lines()
        if self.problems:
            lines += ['', 'every problem:']
            for kind in self.problem_counts():
                lines.append(f'{kind} ({PROBLEM_KINDS[kind]}):')
                lines += [f'  {p.path}: {p.detail}' for p in self.problems if p.kind == kind]
        return '\n'.join(lines) + '\n'


# --- Checking ------------------------------------------------------------------------------

_PairResult = tuple[
    'tuple[int, int] | None',  # rgb (width, height)
    'tuple[int, int] | None',  # label (width, height)
    'np.ndarray | None',  # (256,) int64 pixel count per label value
    'list[tuple[str, str, str]]',  # problems (kind, path, detail)
]


def _check_pair(paths: tuple[str, str]) -> _PairResult:
    """Decode one pair fully. Runs in worker processes, so it takes and returns plain data."""
    rgb_path, label_path = paths
    problems: list[tuple[str, str, str]] = []
    rgb_size = label_size = counts = None
    try:
        rgb = read_rgb(rgb_path)
        rgb_size = (rgb.shape[1], rgb.shape[0])
    except DatasetError as err:
        problems.append((err.kind, rgb_path, str(err)))
    try:
        label = read_label(label_path)
        label_size = (label.shape[1], label.shape[0])
        counts = np.bincount(label.ravel(), minlength=256).astype(np.int64)
    except DatasetError as err:
        problems.append((err.kind, label_path, str(err)))
    return rgb_size, label_size, counts, problems


def _run(tasks: list[tuple[str, str]], workers: int) -> Iterator[_PairResult]:
    if workers <= 1 or len(tasks) < 2:
        yield from map(_check_pair, tasks)
        return
    # spawn, not fork: forking a process that already ran OpenCV's thread pool can deadlock.
    context = multiprocessing.get_context('spawn')
    with context.Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(
            _check_pair, tasks, chunksize=max(1, min(32, len(tasks) // workers // 4))
        )


def _progress(items: Iterable, total: int, enabled: bool) -> Iterable:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a training extra, not a runtime dependency
        return items
    return tqdm(items, total=total, desc='checking', unit='pair', file=sys.stderr)


def _size_text(size: tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


def _declared_size(info: dict[str, Any]) -> tuple[int, int] | None:
    size = info.get('image_size')
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return size[0], size[1]
    return None


def check_dataset(
    root: str | Path,
    *,
    class_set: ClassSet | str | None = None,
    expected_size: tuple[int, int] | None = None,
    workers: int = 1,
    progress: bool = False,
) -> CheckReport:
    """Check every file of the dataset at ``root``; see the module docstring.

    ``class_set``: default from ``root/dataset.json``, else lyft13. ``expected_size``:
    (width, height); None takes dataset.json's ``image_size``, else the most common size
    among the files. ``workers`` > 1 decodes in a ``spawn`` process pool (so a script that
    calls this needs the usual ``if __name__ == '__main__':`` guard). Raises
    :class:`DatasetError` only when the check cannot run at all (no such folder, a broken
    dataset.json with no class set given).
    """
    root = Path(root)
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    scan = scan_dataset(root)  # raises DatasetError when root is not a folder
    problems: list[Problem] = []
    if class_set is None:
        class_set = dataset_class_set(root)  # a broken dataset.json stops the check here
    class_set = get_class_set(class_set)
    try:
        info = read_dataset_info(root)
    except DatasetError as err:  # the class set was given, so the check can still run
        problems.append(Problem('info', root / DATASET_INFO, str(err)))
        info = {}
    n_classes = class_set.num_classes

    for path in scan.unpaired:
        on_rgb_side = path.parent.name == IMAGE_DIR
        partner = path.parent.parent / (LABEL_DIR if on_rgb_side else IMAGE_DIR) / path.name
        what = 'image has no label' if on_rgb_side else 'label has no image'
        problems.append(Problem('unpaired', path, f'{what}: {partner} does not exist'))
    for path in scan.ignored:
        what = 'a folder' if path.is_dir() else f'not a {".png"} file'
        problems.append(
            Problem(
                'unexpected_file', path, f'{what} inside {path.parent.name}/; move or delete it'
            )
        )
    episode_counts = scan.episode_counts()
    for episode, count in episode_counts.items():
        if count == 0:
            folder = scan.episodes[episode][0].parent
            detail = f'episode {episode!r} has no image/label pairs'
            problems.append(Problem('empty_episode', folder, detail))
    if not scan.samples:
        detail = (
            f'no image/label pairs found (looked for {IMAGE_DIR}/ and {LABEL_DIR}/ folders with '
            'PNGs of the same name, in this folder and below)'
        )
        problems.append(Problem('empty_dataset', root, detail))

    tasks = [(str(s.rgb), str(s.label)) for s in scan.samples]
    totals = np.zeros(256, np.int64)
    sizes: Counter[tuple[int, int]] = Counter()
    results: list[_PairResult] = []
    # imap keeps task order, so result i belongs to tasks[i].
    for index, result in enumerate(_progress(_run(tasks, workers), len(tasks), progress)):
        rgb_size, label_size, counts, pair_problems = result
        results.append((rgb_size, label_size, None, pair_problems))
        problems += [Problem(kind, Path(p), detail) for kind, p, detail in pair_problems]
        sizes.update(s for s in (rgb_size, label_size) if s is not None)
        if counts is not None:
            totals += counts
            bad = np.flatnonzero(counts[n_classes:]) + n_classes
            if len(bad):
                found = ', '.join(f'{v}: {counts[v]} px' for v in bad)
                detail = (
                    f'ids outside {class_set.name} (0..{n_classes - 1}): {found}; wrong class '
                    'set (--class-set), or a colour-encoded label?'
                )
                problems.append(Problem('bad_values', Path(tasks[index][1]), detail))

    if expected_size is not None:
        expected, size_source = (int(expected_size[0]), int(expected_size[1])), 'argument'
    elif _declared_size(info) is not None:
        expected, size_source = _declared_size(info), DATASET_INFO
    elif sizes:
        expected, size_source = sizes.most_common(1)[0][0], 'most common'
    else:
        expected, size_source = None, 'nothing readable'

    bad_pairs = {p.path for p in problems}
    clean = 0
    for (rgb_path, label_path), (rgb_size, label_size, _, _) in zip(tasks, results, strict=True):
        size_problems = _size_problems(
            Path(rgb_path), Path(label_path), rgb_size, label_size, expected
        )
        problems += size_problems
        if (
            not size_problems
            and Path(rgb_path) not in bad_pairs
            and Path(label_path) not in bad_pairs
        ):
            clean += 1

    kind_order = {kind: i for i, kind in enumerate(PROBLEM_KINDS)}
    problems.sort(key=lambda p: (kind_order.get(p.kind, len(kind_order)), str(p.path)))
    return CheckReport(
        root=root,
        class_set=class_set,
        expected_size=expected,
        size_source=size_source,
        episodes=episode_counts,
        total_pairs=len(scan.samples),
        clean_pairs=clean,
        class_pixels=[int(v) for v in totals[:n_classes]],
        out_of_set_pixels={
            int(v): int(totals[v]) for v in np.flatnonzero(totals[n_classes:]) + n_classes
        },
        problems=problems,
    )


def _size_problems(
    rgb: Path,
    label: Path,
    rgb_size: tuple[int, int] | None,
    label_size: tuple[int, int] | None,
    expected: tuple[int, int] | None,
) -> list[Problem]:
    """One problem per file of the wrong size; a pair of different sizes is one mismatch."""
    problems = []
    mismatch_on = None
    if rgb_size is not None and label_size is not None and rgb_size != label_size:
        # Report the mismatch on the file that is off (the label when both are).
        mismatch_on = rgb if label_size == expected else label
        detail = (
            f'image {rgb.name} is {_size_text(rgb_size)} but its label is '
            f'{_size_text(label_size)} ({rgb} vs {label})'
        )
        problems.append(Problem('size_mismatch', mismatch_on, detail))
    if expected is not None:
        for path, size in ((rgb, rgb_size), (label, label_size)):
            if size is not None and size != expected and path != mismatch_on:
                detail = f'is {_size_text(size)}, expected {_size_text(expected)}'
                problems.append(Problem('wrong_size', path, detail))
    return problems


# --- Outputs -------------------------------------------------------------------------------

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_class_frequencies(report: CheckReport, *, width: int = 900) -> np.ndarray:
    """A horizontal bar chart of class pixel frequencies. Shape: (H, width, 3) uint8 BGR.

    One row per class (in id order): name, a bar in the class's palette colour with a grey
    outline (so black and near-white classes stay visible), and the percentage.
    """
    freqs = report.frequencies_by_name()
    rows = [
        (name, freq, tuple(int(c) for c in report.class_set.colors[i]))
        for i, (name, freq) in enumerate(freqs.items())
    ]
    total = report.total_pixels
    for value, count in sorted(report.out_of_set_pixels.items()):
        rows.append((f'id {value} (not in set)', count / total if total else 0.0, (128, 128, 128)))
    scale, thick, row_h, top, pad = 0.5, 1, 26, 54, 12
    label_w = (
        max(cv2.getTextSize(name, _FONT, scale, thick)[0][0] for name, _, _ in rows) + 2 * pad
    )
    pct_w = cv2.getTextSize('100.00 %', _FONT, scale, thick)[0][0] + 2 * pad
    bar_w = max(100, width - label_w - pct_w)
    height = top + row_h * len(rows) + 30
    canvas = np.full((height, label_w + bar_w + pct_w, 3), 255, np.uint8)
    title = f'Class pixel frequencies: {report.class_set.name}, {report.total_pairs} pairs'
    cv2.putText(canvas, title, (pad, 24), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    subtitle = f'{report.root}  ({total:,} label pixels)'
    cv2.putText(canvas, subtitle, (pad, 44), _FONT, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    top_freq = max((f for _, f, _ in rows), default=0.0) or 1.0
    for i, (name, freq, rgb) in enumerate(rows):
        y = top + i * row_h
        baseline = y + row_h // 2 + 5
        text_w = cv2.getTextSize(name, _FONT, scale, thick)[0][0]
        cv2.putText(
            canvas,
            name,
            (label_w - pad - text_w, baseline),
            _FONT,
            scale,
            (0, 0, 0),
            thick,
            cv2.LINE_AA,
        )
        length = round(bar_w * freq / top_freq)
        x0, y0, y1 = label_w, y + 4, y + row_h - 4
        if length > 0:
            cv2.rectangle(canvas, (x0, y0), (x0 + length, y1), rgb[::-1], cv2.FILLED)
            cv2.rectangle(canvas, (x0, y0), (x0 + length, y1), (110, 110, 110), 1)
        percent = 100 * freq
        text = f'{percent:.2f} %' if percent >= 0.01 or freq == 0 else '<0.01 %'
        cv2.putText(
            canvas,
            text,
            (x0 + length + 6, baseline),
            _FONT,
            scale,
            (0, 0, 0),
            thick,
            cv2.LINE_AA,
        )
    cv2.line(canvas, (label_w, top), (label_w, top + row_h * len(rows)), (0, 0, 0), 1)
    return canvas


def write_report(report: CheckReport, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.txt and class_frequencies.png into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        'json': out_dir / 'report.json',
        'text': out_dir / 'report.txt',
        'chart': out_dir / 'class_frequencies.png',
    }
    paths['json'].write_text(json.dumps(report.to_dict(), indent=2) + '\n')
    paths['text'].write_text(report.to_text())
    if not cv2.imwrite(str(paths['chart']), draw_class_frequencies(report)):
        msg = f'could not write {paths["chart"]}; check that the folder is writable'
        raise OSError(msg)
    return paths


# --- CLI ------------------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError as err:
        msg = f'{text!r}: give the size as WIDTHxHEIGHT, e.g. 800x600'
        raise argparse.ArgumentTypeError(msg) from err
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f'{text!r}: width and height must be positive')
    return w, h


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Validate a dataset in the Lyft-Udacity layout: pairs, sizes, label ids, '
        'class frequencies. Exit 0 when clean, 1 when problems were found, 2 on usage errors.',
    )
    parser.add_argument('dir', type=Path, help='dataset root (holds dataA..dataE or CameraRGB/)')
    parser.add_argument(
        '--class-set',
        help='class set name (lyft13, carla23, cityscapes29) or YAML file; default: from '
        'DIR/dataset.json, else lyft13',
    )
    parser.add_argument(
        '--size',
        type=_parse_size,
        help='expected WIDTHxHEIGHT, e.g. 800x600; default: dataset.json image_size, else the '
        'most common size',
    )
    parser.add_argument('--out', type=Path, help='report folder (default DIR/check/)')
    parser.add_argument(
        '--workers', type=positive_int, default=1, help='decoding processes (default 1)'
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg data check DIR``; returns the exit code (0 clean, 1 problems, 2 usage)."""
    parser = _parser(prog)
    args = parse_args(parser, argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    if not args.dir.is_dir():
        return usage_error(parser, f'{args.dir} is not a directory')
    try:
        class_set = get_class_set(args.class_set) if args.class_set else None
        report = check_dataset(
            args.dir,
            class_set=class_set,
            expected_size=args.size,
            workers=args.workers,
            progress=sys.stderr.isatty(),
        )
    except (ClassSetError, DatasetError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    out_dir = args.out if args.out is not None else args.dir / 'check'
    try:
        paths = write_report(report, out_dir)
    except OSError as err:
        msg = f'cannot write the report to {out_dir} ({err}); choose another folder with --out'
        print(f'{parser.prog}: error: {msg}', file=sys.stderr)
        return 2
    print('\n'.join(report.summary_lines()))
    shown = 20
    if report.problems:
        print(f'first {min(shown, len(report.problems))} of {len(report.problems)} problems:')
        for problem in report.problems[:shown]:
            print(f'  {problem}')
    print(f'wrote {paths["text"]}, {paths["json"].name}, {paths["chart"].name}')
    if report.problems:
        print(f'FAILED: {len(report.problems)} problem(s) found; every one is in {paths["text"]}')
        return 1
    print(f'OK: {report.total_pairs} pairs, no problems found')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
