"""Train/val/test splits of a dataset and the manifest file that records them.

Three methods (:func:`make_split` picks one by name):

* ``original``: the Lyft-Udacity challenge's own split, by episode: dataA, dataB, dataC
  train / dataD val / dataE test.
* ``episodes``: a seeded shuffle of whole episodes (sequence folders, e.g. several CARLA
  collector runs), filled into sizes given as counts or fractions of the samples. Frames of
  one episode are strongly correlated, so no episode is shared between splits.
* ``random``: a seeded shuffle of all samples into those sizes (for datasets of independent
  frames, or a single episode). Neighbouring frames of one drive then land in different
  splits, which flatters the val / test scores.

The manifest (JSON) lists every sample's files relative to the dataset root, plus the class
set, the method, the seed, the counts and when it was made, so a training run can say
exactly which files it saw. CLI: ``semseg data split DIR`` or
``python -m training.data.splits DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.cli import parse_args, usage_error
from semseg_ros.labels import (
    BUILTIN_CLASS_SETS,
    ClassSet,
    ClassSetError,
    class_set_from_dict,
    get_class_set,
)

from .lyft import (
    DatasetError,
    Sample,
    dataset_class_set,
    read_dataset_info,
    scan_dataset,
)

SPLIT_NAMES = ('train', 'val', 'test')
#: The challenge's split: the episode letter (dataA ... dataE) -> split.
ORIGINAL_SPLIT = {'A': 'train', 'B': 'train', 'C': 'train', 'D': 'val', 'E': 'test'}
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_METHODS = ('original', 'episodes', 'random')
MANIFEST_FORMAT = 'semseg_ros/manifest'
MANIFEST_VERSION = 1

# The last path component of the episode name: 'dataA', and 'x/dataA' when names clashed.
_EPISODE_LETTER = re.compile(r'(?:^|/)data([A-Z])$')


def _episode_letter(episode: str) -> str | None:
    match = _EPISODE_LETTER.search(episode)
    return match.group(1) if match else None


def has_original_episodes(samples: Iterable[Sample]) -> bool:
    """True when the samples come from exactly the episodes dataA .. dataE, all non-empty."""
    letters = {_episode_letter(s.episode) for s in samples}
    return letters == set(ORIGINAL_SPLIT)


def original_split(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """The challenge's split: dataA, dataB, dataC train / dataD val / dataE test.

    Raises :class:`DatasetError` listing missing episodes, or episodes outside A-E (the
    original split does not say where those go; use the random split instead).
    """
    splits: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    present: set[str] = set()
    foreign: set[str] = set()
    for sample in samples:
        letter = _episode_letter(sample.episode)
        if letter in ORIGINAL_SPLIT:
            splits[ORIGINAL_SPLIT[letter]].append(sample)
            present.add(letter)
        else:
            foreign.add(sample.episode)
    missing = sorted(set(ORIGINAL_SPLIT) - present)
    if missing or foreign:
        parts = []
        if missing:
            parts.append(f'no samples in episodes {["data" + m for m in missing]}')
        if foreign:
            parts.append(f'episodes {sorted(foreign)} are not among dataA..dataE')
        msg = (
            f'the original split needs exactly the episodes dataA..dataE (A,B,C train / D '
            f'val / E test): {"; ".join(parts)}. Use the random split (--method random) '
            'for other datasets'
        )
        raise DatasetError(msg, kind='layout')
    return {name: sorted(items, key=_sort_key) for name, items in splits.items()}


def _sort_key(sample: Sample) -> tuple[str, str]:
    return sample.episode, sample.name


def _resolve_sizes(sizes: Sequence[float] | Mapping[str, float], total: int) -> list[int]:
    """Counts per split from counts (ints) or fractions (floats in [0, 1])."""
    if isinstance(sizes, Mapping):
        unknown = sorted(set(sizes) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f'split sizes: unknown split names {unknown}; use {SPLIT_NAMES}')
        sizes = [sizes.get(name, 0) for name in SPLIT_NAMES]
    values = list(sizes)
    if len(values) != len(SPLIT_NAMES):
        msg = f'split sizes need {len(SPLIT_NAMES)} values (train, val, test), got {values}'
        raise ValueError(msg)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f'split sizes must be numbers, got {values}')
        if v < 0:
            raise ValueError(f'split sizes must not be negative, got {values}')
    if all(isinstance(v, (int, np.integer)) for v in values):
        counts = [int(v) for v in values]
    else:
        if any(v > 1 for v in values) or sum(values) > 1 + 1e-9:
            msg = (
                f'split fractions {values} must each be in [0, 1] and sum to at most 1 '
                '(write counts as whole numbers: 3000,1000,1000)'
            )
            raise ValueError(msg)
        exact = [v * total for v in values]
        counts = [int(np.floor(e + 1e-9)) for e in exact]  # 0.29 * 100 is 28.999...
        if abs(sum(values) - 1) <= 1e-9:
            # Fractions summing to 1 use every sample: the rounding remainder goes to the
            # splits with the largest fractional parts (ties: train first).
            order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
            for i in order[: total - sum(counts)]:
                counts[i] += 1
    if sum(counts) > total:
        msg = (
            f'split sizes {dict(zip(SPLIT_NAMES, counts, strict=True))} need {sum(counts)} '
            f'samples but the dataset has {total}; ask for fewer or use fractions'
        )
        raise ValueError(msg)
    return counts


def random_split(
    samples: Iterable[Sample],
    sizes: Sequence[float] | Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """A seeded random split into train/val/test.

    ``sizes`` are counts (``(3000, 1000, 1000)``) or fractions (``(0.6, 0.2, 0.2)``), as a
    sequence in train, val, test order or a mapping by split name. The result depends only
    on the set of samples, the sizes and the seed (not on the input order); each split is
    sorted by (episode, name). Samples beyond the sizes are left out.
    """
    ordered = sorted(samples, key=_sort_key)
    counts = _resolve_sizes(sizes, len(ordered))
    order = np.random.default_rng(seed).permutation(len(ordered))
    splits: dict[str, list[Sample]] = {}
    start = 0
    for name, count in zip(SPLIT_NAMES, counts, strict=True):
        chosen = order[start : start + count]
        splits[name] = sorted((ordered[i] for i in chosen), key=_sort_key)
        start += count
    return splits


def episode_split(
    samples: Iterable[Sample],
    sizes: Sequence[float] | Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """A seeded split of whole episodes, sized like :func:`random_split` in samples.

    Episodes are shuffled with ``seed`` and each goes to the split furthest below its target
    (relative to the target); once every target is met, the remaining episodes are left out.
    Split sizes are therefore approximate, by whole episodes. Raises ValueError when there
    are fewer episodes than splits asked for.
    """
    ordered = sorted(samples, key=_sort_key)
    targets = _resolve_sizes(sizes, len(ordered))
    by_episode: dict[str, list[Sample]] = {}
    for sample in ordered:
        by_episode.setdefault(sample.episode, []).append(sample)
    wanted = [name for name, t in zip(SPLIT_NAMES, targets, strict=True) if t > 0]
    if len(by_episode) < len(wanted):
        msg = (
            f'an episode split of {len(wanted)} non-empty splits needs as many episodes; the '
            f'dataset has {len(by_episode)} ({sorted(by_episode)}); use --method random'
        )
        raise ValueError(msg)
    names = sorted(by_episode)
    splits: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    for index in np.random.default_rng(seed).permutation(len(names)):
        deficits = [
            (t - len(splits[name])) / t if t else 0.0
            for name, t in zip(SPLIT_NAMES, targets, strict=True)
        ]
        best = int(np.argmax(deficits))  # ties: train first
        if deficits[best] <= 0:
            break
        splits[SPLIT_NAMES[best]] += by_episode[names[index]]
    return {name: sorted(items, key=_sort_key) for name, items in splits.items()}


def resolve_method(method: str, samples: Sequence[Sample]) -> str:
    """``auto`` -> ``original`` when the samples are exactly dataA..dataE, else ``random``."""
    if method == 'auto':
        return 'original' if has_original_episodes(samples) else 'random'
    if method not in SPLIT_METHODS:
        raise ValueError(f'split method must be auto or one of {SPLIT_METHODS}, got {method!r}')
    return method


def make_split(
    samples: Sequence[Sample],
    method: str,
    sizes: Sequence[float] | Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """The split of ``samples`` by ``method`` (one of :data:`SPLIT_METHODS`; ``sizes`` and
    ``seed`` apply to ``episodes`` and ``random``)."""
    method = resolve_method(method, samples)
    if method == 'original':
        return original_split(samples)
    if method == 'episodes':
        return episode_split(samples, sizes, seed)
    return random_split(samples, sizes, seed)


# --- The manifest file ----------------------------------------------------------------------


@dataclass
class Manifest:
    """A loaded manifest: absolute sample paths under ``root``."""

    root: Path
    class_set: str
    splits: dict[str, list[Sample]]
    #: Everything else it records: method, seed, counts, created, source, ...
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.splits.items()}

    def get_class_set(self) -> ClassSet:
        """The :class:`ClassSet` (a custom one is rebuilt from its recorded definition)."""
        definition = self.info.get('class_set_definition')
        if definition is not None:
            return class_set_from_dict(definition, source='manifest')
        return get_class_set(self.class_set)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError as err:
        msg = f'{path} is not under the dataset root {root}; write the manifest for its root'
        raise DatasetError(msg, path=path, kind='layout') from err


def write_manifest(
    path: str | Path,
    root: str | Path,
    splits: Mapping[str, Sequence[Sample]],
    *,
    class_set: ClassSet | str,
    method: str,
    seed: int | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``splits`` as a JSON manifest at ``path``; returns the path.

    Sample paths are stored relative to ``root``. ``root`` itself is stored relative to the
    manifest's folder when the manifest lies inside it (the default ``DIR/manifest.json``:
    dataset and manifest move together), else as an absolute path.
    """
    path = Path(path)
    root_abs = Path(os.path.abspath(root))
    manifest_dir = Path(os.path.abspath(path.parent))
    class_set = get_class_set(class_set)
    if manifest_dir == root_abs or root_abs in manifest_dir.parents:
        stored_root = Path(os.path.relpath(root_abs, manifest_dir)).as_posix()
    else:
        stored_root = str(root_abs)
    data: dict[str, Any] = {
        'format': MANIFEST_FORMAT,
        'version': MANIFEST_VERSION,
        'root': stored_root,
        'class_set': class_set.name,
        'method': method,
        'seed': seed,
        'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'counts': {name: len(items) for name, items in splits.items()},
    }
    if BUILTIN_CLASS_SETS.get(class_set.name) is not class_set:
        data['class_set_definition'] = class_set.to_dict()  # a custom set: keep its table
    data.update(info or {})
    data['splits'] = {
        name: [
            {
                'rgb': _relative(s.rgb, root_abs),
                'label': _relative(s.label, root_abs),
                'episode': s.episode,
                'name': s.name,
            }
            for s in items
        ]
        for name, items in splits.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(data, indent=1) + '\n')
    os.replace(tmp, path)  # atomic: a reader never sees half a manifest
    return path


def load_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Read a manifest written by :func:`write_manifest`.

    Relative sample paths resolve against the manifest's root (itself relative to the
    manifest's folder when stored so). With ``check_files`` a :class:`DatasetError` lists
    the files it names that no longer exist.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        msg = f'manifest {path} does not exist; write it with `semseg data split DIR`'
        raise DatasetError(msg, path=path, kind='missing') from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = (
            f'manifest {path} is not readable JSON ({err}); re-create it with `semseg data split`'
        )
        raise DatasetError(msg, path=path, kind='unreadable') from err
    required = ('root', 'class_set', 'splits')
    if not isinstance(data, dict) or any(k not in data for k in required):
        msg = (
            f'{path} is not a semseg_ros manifest (needs keys {list(required)}); '
            're-create it with `semseg data split DIR`'
        )
        raise DatasetError(msg, path=path, kind='info')
    root = Path(data['root'])
    if not root.is_absolute():
        root = Path(os.path.normpath(path.parent.absolute() / root))
    splits: dict[str, list[Sample]] = {}
    try:
        for name, items in data['splits'].items():
            splits[name] = [
                Sample(root / e['rgb'], root / e['label'], str(e['episode']), str(e['name']))
                for e in items
            ]
    except (AttributeError, KeyError, TypeError) as err:
        msg = f'{path}: malformed "splits" entry ({err!r}); re-create it with `semseg data split`'
        raise DatasetError(msg, path=path, kind='info') from err
    if check_files:
        gone = [p for items in splits.values() for s in items for p in (s.rgb, s.label)]
        gone = [p for p in gone if not p.is_file()]
        if gone:
            shown = '\n  '.join(str(p) for p in gone[:10])
            more = f'\n  ... and {len(gone) - 10} more' if len(gone) > 10 else ''
            msg = (
                f'manifest {path} lists {len(gone)} file(s) that no longer exist under root '
                f'{root}:\n  {shown}{more}\nRestore them, or re-create the manifest with '
                f'`semseg data split {root}`'
            )
            raise DatasetError(msg, path=gone[0], kind='missing')
    info = {k: v for k, v in data.items() if k not in ('root', 'class_set', 'splits')}
    return Manifest(root=root, class_set=str(data['class_set']), splits=splits, info=info)


# --- CLI ------------------------------------------------------------------------------------


def parse_sizes(text: str) -> tuple[float, ...] | tuple[int, ...]:
    """``'3000,1000,1000'`` -> counts, ``'0.6,0.2,0.2'`` -> fractions (a '.' means fraction)."""
    parts = [p.strip() for p in text.split(',')]
    if len(parts) != len(SPLIT_NAMES):
        raise argparse.ArgumentTypeError(
            f'{text!r}: give 3 comma-separated sizes for train,val,test (3000,1000,1000 or '
            '0.6,0.2,0.2)'
        )
    try:
        if any('.' in p or 'e' in p.lower() for p in parts):
            return tuple(float(p) for p in parts)
        return tuple(int(p) for p in parts)
    except ValueError as err:
        msg = f'{text!r}: sizes must be numbers, e.g. 3000,1000,1000 or 0.6,0.2,0.2'
        raise argparse.ArgumentTypeError(msg) from err


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            'Write a train/val/test manifest for a dataset in the Lyft-Udacity layout. '
            'Default: the original split (dataA,B,C train / D val / E test) when those '
            'episodes exist, else a seeded random 60/20/20 split. Sequences of several '
            'episodes: --method episodes keeps each episode in one split.'
        ),
    )
    parser.add_argument('dir', type=Path, help='dataset root (holds dataA..dataE or CameraRGB/)')
    parser.add_argument(
        '--method',
        choices=SPLIT_METHODS,
        help='original (by episode A-E), episodes (seeded shuffle of whole episodes) or '
        'random (seeded shuffle of samples); default: see above',
    )
    parser.add_argument(
        '--sizes',
        type=parse_sizes,
        help='random split sizes for train,val,test: counts (3000,1000,1000) or fractions '
        '(0.6,0.2,0.2); default 0.6,0.2,0.2',
    )
    parser.add_argument('--seed', type=int, default=0, help='random split seed (default 0)')
    parser.add_argument(
        '--class-set',
        help='class set name or YAML recorded in the manifest (default: from DIR/dataset.json, '
        'else lyft13)',
    )
    parser.add_argument('--out', type=Path, help='manifest path (default DIR/manifest.json)')
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg data split DIR``: write the manifest; returns the exit code."""
    parser = _parser(prog)
    args = parse_args(parser, argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    if not args.dir.is_dir():
        return usage_error(parser, f'{args.dir} is not a directory')
    if args.method == 'original' and args.sizes is not None:
        return usage_error(parser, '--sizes applies to --method random or episodes only')
    try:
        class_set = (
            get_class_set(args.class_set) if args.class_set else dataset_class_set(args.dir)
        )
    except (ClassSetError, DatasetError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    try:
        scan = scan_dataset(args.dir)
        if not scan.samples:
            msg = (
                f'no image/label pairs found under {args.dir}; run `semseg data check {args.dir}`'
            )
            raise DatasetError(msg, path=args.dir, kind='layout')
        method = args.method
        if method is None:
            if args.sizes is None and has_original_episodes(scan.samples):
                method, why = 'original', 'episodes dataA..dataE found'
            else:
                method = 'random'
                why = '--sizes given' if args.sizes is not None else 'no dataA..dataE episodes'
            print(f'method: {method} ({why}; choose with --method)')
        else:
            print(f'method: {method}')
        sizes = args.sizes if args.sizes is not None else DEFAULT_FRACTIONS
        splits = make_split(scan.samples, method, sizes, args.seed)
        seed = None if method == 'original' else args.seed
        if seed is not None:
            print(f'sizes: {",".join(str(s) for s in sizes)}  seed: {seed}')
        out = args.out if args.out is not None else args.dir / 'manifest.json'
        extra: dict[str, Any] = {}
        source = _dataset_source(args.dir)
        if source:
            extra['source'] = source
        write_manifest(
            out, args.dir, splits, class_set=class_set, method=method, seed=seed, info=extra
        )
    except (DatasetError, ValueError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 1
    for name, items in splits.items():
        episodes = sorted({s.episode for s in items})
        print(f'  {name:<5} {len(items):>6} samples  episodes: {", ".join(episodes) or "-"}')
    left_out = len(scan.samples) - sum(len(v) for v in splits.values())
    if left_out:
        print(f'  {left_out} samples are in no split (the sizes do not cover the dataset)')
    if scan.unpaired or scan.ignored:
        print(
            f'warning: {len(scan.unpaired)} unpaired and {len(scan.ignored)} other files left '
            f'out; `semseg data check {args.dir}` lists them',
            file=sys.stderr,
        )
    print(f'class set: {class_set.name}')
    print(f'wrote {out}')
    return 0


def _dataset_source(root: Path) -> str | None:
    try:
        source = read_dataset_info(root).get('source')
    except DatasetError:
        return None
    return str(source) if source is not None else None


if __name__ == '__main__':
    raise SystemExit(main())
