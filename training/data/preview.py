"""``semseg data show``: a contact sheet of dataset samples (image | colour label | overlay).

The quickest way to see that a dataset's labels line up with its images.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from semseg_ros.labels import ClassSet
from semseg_ros.visualize import contact_sheet, fit_width, label_panel, legend, write_rgb

from .lyft import Sample, dataset_class_set, read_label, read_rgb, scan_dataset


def sample_sheet(
    samples: list[Sample], class_set: ClassSet, *, tile_width: int = 320
) -> np.ndarray:
    """One row per sample, image | colour label | overlay, with a class legend at the bottom."""
    rows, present = [], set()
    for sample in samples:
        rgb, ids = read_rgb(sample.rgb), read_label(sample.label)
        present.update(np.unique(ids).tolist())
        row = label_panel(rgb, ids, class_set, titles=(sample.name, 'label', 'overlay'))
        rows.append(fit_width(row, 3 * tile_width))
    known = sorted(i for i in present if i < class_set.num_classes)
    rows.append(legend(class_set, width=3 * tile_width, ids=known))
    return contact_sheet(rows)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('data_dir', type=Path, help='dataset root (Lyft-Udacity layout)')
    parser.add_argument('--out', type=Path, help='output PNG (default: DATA_DIR/samples.png)')
    parser.add_argument('-n', '--num', type=int, default=6, help='number of samples (default 6)')
    parser.add_argument('--seed', type=int, default=0, help='which samples to pick (default 0)')
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f'--num must be at least 1, got {args.num}')

    scan = scan_dataset(args.data_dir)
    if not scan.samples:
        print(f'{parser.prog}: no image/label pairs under {args.data_dir}', file=sys.stderr)
        return 1
    picked = sorted(
        random.Random(args.seed).sample(scan.samples, min(args.num, len(scan.samples))),
        key=lambda s: (s.episode, s.name),
    )
    out = args.out or args.data_dir / 'samples.png'
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rgb(out, sample_sheet(picked, dataset_class_set(args.data_dir)))
    print(f'wrote {out} ({len(picked)} samples)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
