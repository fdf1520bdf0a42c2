"""``semseg predict``: segment image files or folders with a checkpoint.

Per image it writes ``NAME_mask.png`` (uint8 class ids, one channel), ``NAME_color.png``
(palette colours), ``NAME_overlay.png`` and ``NAME_grid.png`` (image | colour mask |
overlay, plus the ground truth when the image sits in a ``CameraRGB`` folder with a sibling
``CameraSeg`` holding a label of the same name). Frames go through the one per-frame path,
the :class:`~semseg_ros.segmenter.Segmenter` on the checkpoint's torch engine, so these
masks equal what ``semseg evaluate`` scores and what the node publishes.

CLI: ``semseg predict --checkpoint ckpt.pt IMAGES|DIR ... --out DIR`` or
``python -m training.predict ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from semseg_ros.cli import device_arg, parse_args, positive_int
from semseg_ros.dataset_layout import IMAGE_DIR, LABEL_DIR
from semseg_ros.devices import DEVICE_HELP
from semseg_ros.engines import EngineError
from semseg_ros.labels import ClassSet, ClassSetError, get_class_set, remap
from semseg_ros.model_file import ModelFileError
from semseg_ros.segmenter import Segmenter
from semseg_ros.visualize import caption, contact_sheet, label_panel, legend, overlay, write_rgb

from .checkpoint import CheckpointError
from .data.lyft import DatasetError, read_label, read_rgb

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
#: What each image produces in ``--out``: ``NAME`` + suffix.
OUTPUT_SUFFIXES = ('_mask.png', '_color.png', '_overlay.png', '_grid.png')
#: Grid tiles narrower than this are enlarged by a whole factor (nearest), for the captions.
_MIN_TILE_WIDTH = 200


class PredictError(ValueError):
    """Bad input to prediction (paths); the message names it and the fix."""


# --- Finding images --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    """One input image and the stem of its outputs, relative to ``--out``."""

    path: Path
    out_stem: Path  # e.g. dataA/CameraRGB/000 -> OUT/dataA/CameraRGB/000_mask.png

    def label_path(self) -> Path | None:
        """The ground-truth label of a Lyft-layout image (``../CameraSeg/NAME``), if any."""
        if self.path.parent.name != IMAGE_DIR:
            return None
        label = self.path.parent.parent / LABEL_DIR / self.path.name
        return label if label.is_file() else None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _walk_images(folder: Path, skip: Path | None) -> tuple[list[Path], int]:
    """Images under ``folder`` (recursive, sorted) and the count of label files left out."""
    found, labels = [], 0
    for path in sorted(folder.rglob('*')):
        rel = path.relative_to(folder).parts
        if any(part.startswith('.') for part in rel) or not _is_image(path):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue  # our own outputs when --out lies inside an input folder
        if LABEL_DIR in rel[:-1]:
            labels += 1  # CameraSeg holds labels, not camera images
            continue
        found.append(path)
    return found, labels


def collect_images(inputs: Iterable[str | Path], out_dir: Path | None = None) -> list[ImageJob]:
    """Image files and (recursively) folders of png/jpg images, each with an output stem.

    A folder's images keep their path relative to the folder (so the 1000 ``000.png`` of
    several episodes do not collide); a file given directly is named by its stem. Raises
    :class:`PredictError` naming a path that does not exist, or all paths when none holds
    an image.
    """
    inputs = [Path(p) for p in inputs]
    skip = out_dir.resolve() if out_dir is not None else None
    jobs: list[ImageJob] = []
    used: set[Path] = set()
    labels_skipped = 0
    for given in inputs:
        if given.is_dir():
            paths, skipped = _walk_images(given, skip)
            labels_skipped += skipped
            stems = [p.relative_to(given).with_suffix('') for p in paths]
        elif given.is_file():
            paths, stems = [given], [Path(given.stem)]
        else:
            msg = f'{given} does not exist; pass image files (png/jpg) or folders holding them'
            raise PredictError(msg)
        for path, stem in zip(paths, stems, strict=True):
            unique, k = stem, 2
            while unique in used:  # the same name from two inputs: 000, 000_2, ...
                unique = stem.with_name(f'{stem.name}_{k}')
                k += 1
            used.add(unique)
            jobs.append(ImageJob(path, unique))
    if not jobs:
        shown = ', '.join(str(p) for p in inputs)
        extra = f' ({labels_skipped} label files in {LABEL_DIR}/ folders skipped)'
        msg = (
            f'no images found in {shown}{extra if labels_skipped else ""}; pass .png/.jpg '
            f'files or folders that hold them (e.g. a {IMAGE_DIR}/ folder)'
        )
        raise PredictError(msg)
    if labels_skipped:
        print(f'note: skipped {labels_skipped} label files in {LABEL_DIR}/ folders')
    return jobs


# --- Writing results -------------------------------------------------------------------------


def prediction_grid(
    rgb: np.ndarray,
    ids: np.ndarray,
    class_set: ClassSet,
    *,
    alpha: float = 0.5,
    gt_ids: np.ndarray | None = None,
    title: str = 'image',
) -> np.ndarray:
    """image | prediction | overlay [| ground truth], captioned, with a legend underneath.

    The legend lists the classes present in the prediction (and ground truth). Shape:
    (H, W, 3) RGB, (H, W) ids -> (H', 3W or 4W, 3) uint8 RGB.
    """
    if rgb.shape[1] < _MIN_TILE_WIDTH:  # tiny frames: enlarge (nearest) so captions fit
        k = -(-_MIN_TILE_WIDTH // rgb.shape[1])
        rgb, ids = (np.repeat(np.repeat(a, k, axis=0), k, axis=1) for a in (rgb, ids))
        if gt_ids is not None:
            gt_ids = np.repeat(np.repeat(gt_ids, k, axis=0), k, axis=1)
    row = label_panel(rgb, ids, class_set, alpha=alpha, titles=(title, 'prediction', 'overlay'))
    present = set(np.unique(ids).tolist())
    if gt_ids is not None:
        row = np.hstack([row, caption(class_set.id_to_color(gt_ids), 'ground truth')])
        present |= set(np.unique(gt_ids).tolist())
    known = sorted(i for i in present if i < class_set.num_classes)
    return contact_sheet([row, legend(class_set, width=row.shape[1], ids=known)])


def write_prediction(
    out_stem: Path,
    rgb: np.ndarray,
    ids: np.ndarray,
    class_set: ClassSet,
    *,
    alpha: float = 0.5,
    gt_ids: np.ndarray | None = None,
    title: str = 'image',
) -> list[Path]:
    """Write the four outputs of one image (``OUTPUT_SUFFIXES``); returns their paths."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_name(out_stem.name + s) for s in OUTPUT_SUFFIXES]
    color = class_set.id_to_color(ids)  # (H, W, 3) RGB
    if not cv2.imwrite(str(paths[0]), ids):  # one channel: the ids themselves
        raise OSError(f'could not write image {paths[0]}: check the folder exists and is writable')
    write_rgb(paths[1], color)
    write_rgb(paths[2], overlay(rgb, color, alpha))
    grid = prediction_grid(rgb, ids, class_set, alpha=alpha, gt_ids=gt_ids, title=title)
    write_rgb(paths[3], grid)
    return paths


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_gt(job: ImageJob, gt_set: ClassSet, model_set: ClassSet) -> np.ndarray | None:
    label_path = job.label_path()
    if label_path is None:
        return None
    gt = read_label(label_path)
    return gt if gt_set is model_set else remap(gt, gt_set, model_set)


def predict(
    segmenter: Segmenter,
    jobs: Sequence[ImageJob],
    out_dir: Path,
    *,
    batch_size: int = 1,
    alpha: float = 0.5,
    gt_class_set: ClassSet | None = None,
) -> tuple[int, list[tuple[Path, str]]]:
    """Segment ``jobs`` and write their outputs under ``out_dir``.

    Returns ``(images written, [(path, reason), ...] for images that failed)``; an image
    that cannot be read or whose ground truth is broken is reported and skipped.
    """
    model_set = segmenter.class_set
    gt_set = gt_class_set or model_set
    failed: list[tuple[Path, str]] = []
    written = 0
    for batch in _batches(jobs, batch_size):
        frames, ok = [], []
        for job in batch:
            try:
                frames.append(read_rgb(job.path))
            except DatasetError as err:
                print(f'skipping {job.path}: {err}', file=sys.stderr)
                failed.append((job.path, str(err)))
                continue
            ok.append(job)
        if not frames:
            continue
        results = segmenter.segment_batch(frames)
        for job, rgb, ids in zip(ok, frames, (r.ids for r in results), strict=True):
            try:
                gt = _read_gt(job, gt_set, model_set)
                if gt is not None and gt.shape != ids.shape:
                    print(
                        f'note: label {job.label_path()} is {gt.shape[1]}x{gt.shape[0]}, the '
                        f'image {ids.shape[1]}x{ids.shape[0]}; ground-truth panel left out',
                        file=sys.stderr,
                    )
                    gt = None
            except (DatasetError, ClassSetError) as err:
                print(f'note: ground truth of {job.path} left out: {err}', file=sys.stderr)
                gt = None
            write_prediction(
                out_dir / job.out_stem,
                rgb,
                ids,
                model_set,
                alpha=alpha,
                gt_ids=gt,
                title=job.path.name,
            )
            written += 1
    return written, failed


# --- CLI -------------------------------------------------------------------------------------


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f'expected a number in 0..1, got {text!r}') from err
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'alpha must be within 0..1, got {value}')
    return value


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            'Segment images with a checkpoint. Writes NAME_mask.png (class ids), '
            'NAME_color.png, NAME_overlay.png and NAME_grid.png per image; folders are '
            'searched recursively for .png/.jpg (CameraSeg label folders are skipped).'
        ),
    )
    parser.add_argument('inputs', nargs='+', type=Path, help='image files and/or folders')
    parser.add_argument('--checkpoint', type=Path, required=True, help='a training checkpoint')
    parser.add_argument('--out', type=Path, required=True, help='output folder')
    parser.add_argument('--limit', type=positive_int, help='only the first N images')
    parser.add_argument('--batch-size', type=positive_int, default=1, help='default 1')
    parser.add_argument(
        '--device', type=device_arg, default='auto', help=f'{DEVICE_HELP} (default: auto)'
    )
    parser.add_argument(
        '--alpha', type=_alpha, default=0.5, help='overlay opacity of the mask (default 0.5)'
    )
    parser.add_argument(
        '--gt-class-set',
        help="class set of CameraSeg labels when it differs from the model's (e.g. carla23)",
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg predict``: 0 all written, 1 some images failed, 2 bad input (nothing run)."""
    parser = _parser(prog)
    args = parse_args(parser, argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    try:
        jobs = collect_images(args.inputs, args.out)
        if args.limit is not None:
            jobs = jobs[: args.limit]
        gt_set = get_class_set(args.gt_class_set) if args.gt_class_set else None
        segmenter = Segmenter.from_model(args.checkpoint, backend='torch', device=args.device)
    except (PredictError, CheckpointError, ClassSetError, EngineError, ModelFileError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    width, height = segmenter.input_spec.input_size
    print(
        f'{len(jobs)} image(s), model {segmenter.class_set.name} {width}x{height} on '
        f'{segmenter.backend_name}'
    )
    written, failed = predict(
        segmenter,
        jobs,
        args.out,
        batch_size=args.batch_size,
        alpha=args.alpha,
        gt_class_set=gt_set,
    )
    print(f'wrote {written} image(s) x {len(OUTPUT_SUFFIXES)} files to {args.out}')
    if failed:
        print(f'{parser.prog}: {len(failed)} image(s) failed:', file=sys.stderr)
        for path, _ in failed:
            print(f'  {path}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
