"""``semseg bench`` / ``make bench``: measured speed of each part, printed as a table.

Every figure is a median over repeated runs (p90 alongside where it matters) and is also
written as JSON so a run can be compared with the next one.  Sections register in
:data:`SECTIONS`; ``--only`` picks some of them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Row:
    section: str
    case: str
    median: float
    unit: str
    p90: float | None = None
    note: str = ''


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> np.ndarray:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times


def _ms_row(section: str, case: str, seconds: np.ndarray, note: str = '') -> Row:
    return Row(
        section,
        case,
        float(np.median(seconds) * 1e3),
        'ms',
        float(np.percentile(seconds, 90) * 1e3),
        note,
    )


def bench_labels(*, quick: bool = False) -> list[Row]:
    """Class-set LUT conversions on one 800x600 frame (the node does these per frame)."""
    from semseg_ros.labels import CARLA23, LYFT13, remap

    rng = np.random.default_rng(0)
    ids = rng.integers(0, CARLA23.num_classes, (600, 800), dtype=np.uint8)
    palette = CARLA23.id_to_color(ids)
    repeats = 5 if quick else 30
    note = '800x600, 23 classes'
    cases = {
        'id_to_color': lambda: CARLA23.id_to_color(ids),
        'color_to_id': lambda: CARLA23.color_to_id(palette),
        'remap carla23->lyft13': lambda: remap(ids, CARLA23, LYFT13),
    }
    return [
        _ms_row('labels', case, time_call(fn, repeats=repeats), note) for case, fn in cases.items()
    ]


def bench_synth(*, quick: bool = False) -> list[Row]:
    """The synthetic generator at 800x600 on one core (target: >= 20 frames/s with PNG writes)."""
    from training.data.synthetic import benchmark

    result = benchmark(frames=8 if quick else 40)
    return [
        Row('synth', case, float(value), 'frames/s', None, 'one core, 800x600')
        for case, value in result.items()
        if case.endswith('fps')
    ]


SECTIONS: dict[str, Callable[..., list[Row]]] = {
    'labels': bench_labels,
    'synth': bench_synth,
}


def format_table(rows: list[Row]) -> str:
    header = ('section', 'case', 'median', 'p90', 'unit', 'note')
    cells = [
        (r.section, r.case, f'{r.median:.2f}', '' if r.p90 is None else f'{r.p90:.2f}', r.unit,
         r.note)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    line = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [line.format(*header), line.format(*('-' * w for w in widths))]
    out += [line.format(*c) for c in cells]
    return '\n'.join(out)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--only', help=f'comma-separated sections of: {", ".join(SECTIONS)}')
    parser.add_argument('--out', type=Path, default=Path('runs/bench'), help='JSON output folder')
    parser.add_argument('--quick', action='store_true', help='few repeats (a smoke run)')
    args = parser.parse_args(argv)
    names = args.only.split(',') if args.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f'unknown section(s) {unknown}; choose from {list(SECTIONS)}')

    rows: list[Row] = []
    for name in names:
        print(f'[bench] {name} ...', file=sys.stderr, flush=True)
        rows += SECTIONS[name](quick=args.quick)
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / 'bench.json'
    machine = {'python': platform.python_version(), 'machine': platform.machine()}
    path.write_text(json.dumps({'machine': machine, 'rows': [asdict(r) for r in rows]}, indent=2))
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
