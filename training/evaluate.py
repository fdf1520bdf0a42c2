"""``semseg evaluate``: score a checkpoint on a dataset split.

Every frame goes through the one per-frame path (:mod:`semseg_ros.pipeline`: prepare ->
model -> argmax -> restore_ids) and is scored at the label's full resolution against the
full-frame label, with the project's one metric implementation (:mod:`semseg_ros.metrics`).

Ground truth is brought to the model's class set first: labels of another set (a carla23
dataset for a lyft13 model) are mapped with :func:`semseg_ros.labels.remap`, then relabelled
the way the checkpoint was trained (``merge_roadlines`` / ``hood_row`` of its
``label_transform``; ``--raw-labels`` skips that). Rows the model never sees
(``crop_top`` / ``crop_bottom``) count as predicted background, so scores cover the whole
frame. The Lyft challenge score always uses its own definition: RoadLines merged into
Roads, vehicle pixels of the ego hood (rows >= 496 of 600, scaled for other heights)
removed, and the measured end-to-end FPS as the speed penalty.

Writes ``metrics.json``, ``confusion_matrix.png`` and ``iou_per_class.png`` into ``--out``
(default ``eval_<split>/`` next to the checkpoint) and prints a table.

CLI: ``semseg evaluate --checkpoint runs/x/best.pt --split test`` or
``python -m training.evaluate ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from semseg_ros.cli import device_arg, parse_args, positive_int, usage_error
from semseg_ros.dataset_layout import hood_row_at
from semseg_ros.devices import DEVICE_HELP
from semseg_ros.engines import EngineError
from semseg_ros.labels import UNKNOWN_ID, ClassSet, ClassSetError, get_class_set, remap
from semseg_ros.metrics import (
    ConfusionMatrix,
    LyftCounts,
    lyft_binary_counts,
    lyft_class_ids,
    lyft_score,
)
from semseg_ros.model_file import ModelFileError, unverified_warning
from semseg_ros.segmenter import Segmenter

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .data.lyft import (
    DatasetError,
    LabelTransform,
    Sample,
    dataset_class_set,
    read_label,
    read_rgb,
    scan_dataset,
)
from .data.splits import (
    DEFAULT_FRACTIONS,
    SPLIT_NAMES,
    load_manifest,
    make_split,
    resolve_method,
)

MANIFEST_NAME = 'manifest.json'


class EvaluationError(ValueError):
    """Bad input to an evaluation (split, data location); the message says how to fix it."""


# --- Which samples ---------------------------------------------------------------------------


@dataclass
class EvalData:
    """The samples of one split and the class set their labels are in."""

    samples: list[Sample]
    class_set: ClassSet
    info: dict[str, Any]  # where they came from, for metrics.json


@dataclass(frozen=True)
class DataSource:
    """Where the split comes from, and how to split a folder that has no manifest."""

    manifest: Path | None = None
    data_dir: Path | None = None
    #: For a folder without a manifest, as ``semseg train`` splits it: auto (original when
    #: dataA..dataE exist, else random), original or random, with these sizes and seed.
    method: str = 'auto'
    sizes: tuple[float, ...] = DEFAULT_FRACTIONS
    seed: int = 0
    #: The labels' class set when the training config overrode the manifest's.
    class_set: str | None = None
    from_checkpoint: bool = False


def data_source_from_checkpoint(checkpoint: Checkpoint, path: Path | None) -> DataSource | None:
    """The data a checkpoint was trained on, as ``semseg train`` resolved it.

    ``data.manifest`` if set; else ``DATA_DIR/manifest.json``; else the ``manifest.json``
    that training wrote into the run folder (next to the checkpoint); else ``DATA_DIR`` split
    with the config's ``split`` / ``split_sizes`` / ``split_seed``. ``None`` when the training
    config records no data location. Flat ``'data.manifest'`` keys are read too.
    """
    config = checkpoint.train_config or {}
    data = config.get('data')
    data = data if isinstance(data, Mapping) else {}

    def get(key: str, default: Any = None) -> Any:
        value = data.get(key, config.get(f'data.{key}'))
        return default if value is None else value

    common = {'class_set': get('class_set'), 'from_checkpoint': True}
    if get('manifest'):
        return DataSource(manifest=Path(get('manifest')), **common)
    data_dir = Path(get('data_dir')) if get('data_dir') else None
    if data_dir is not None and (data_dir / MANIFEST_NAME).is_file():
        return DataSource(manifest=data_dir / MANIFEST_NAME, **common)
    if path is not None and (path.parent / MANIFEST_NAME).is_file():
        return DataSource(manifest=path.parent / MANIFEST_NAME, **common)
    if data_dir is None:
        return None
    sizes = tuple(get('split_sizes', DEFAULT_FRACTIONS))
    return DataSource(
        data_dir=data_dir, method=get('split', 'auto'), sizes=sizes, seed=get('split_seed', 0),
        **common,
    )  # fmt: skip


def _pick_split(splits: Mapping[str, list[Sample]], split: str, where: str) -> list[Sample]:
    if split not in splits:
        msg = (
            f'{where} has no {split!r} split (it has {sorted(splits)}); choose one with --split '
            'or write a manifest with `semseg data split DIR`'
        )
        raise EvaluationError(msg)
    if not splits[split]:
        counts = {k: len(v) for k, v in splits.items()}
        msg = (
            f'the {split!r} split of {where} is empty (counts: {counts}); choose another '
            '--split or re-split the dataset with `semseg data split DIR --sizes ...`'
        )
        raise EvaluationError(msg)
    return splits[split]


def load_split(source: DataSource, split: str = 'test') -> EvalData:
    """The samples of ``split`` from a manifest, or from a dataset folder.

    A folder uses its ``manifest.json`` when it has one, else the split ``semseg train``
    would make of it (``info['note']`` then says so, since it may not be the training split).
    """
    manifest, data_dir = source.manifest, source.data_dir
    if manifest is None and data_dir is not None and (data_dir / MANIFEST_NAME).is_file():
        manifest = data_dir / MANIFEST_NAME
    if manifest is not None:
        loaded = load_manifest(manifest)
        samples = _pick_split(loaded.splits, split, f'manifest {manifest}')
        info = {'manifest': str(manifest), 'root': str(loaded.root)}
        return EvalData(list(samples), loaded.get_class_set(), info)
    if data_dir is None:
        raise EvaluationError('pass --manifest PATH or --data-dir DIR')
    scan = scan_dataset(data_dir)
    if not scan.samples:
        msg = f'no image/label pairs found under {data_dir}; run `semseg data check {data_dir}`'
        raise EvaluationError(msg)
    method = resolve_method(source.method, scan.samples)
    try:
        splits = make_split(scan.samples, method, source.sizes, source.seed)
    except ValueError as err:
        raise EvaluationError(f'{data_dir}: {err}') from err
    if method == 'original':
        described = 'original (dataA,B,C / D / E)'
    else:
        sizes = '/'.join(f'{s:g}' for s in source.sizes)
        described = f'{method} {sizes}, seed {source.seed}'
    samples = _pick_split(splits, split, f'dataset {data_dir} ({described} split)')
    note = (
        f'{data_dir} has no {MANIFEST_NAME}: used the {described} split; pass the manifest the '
        'model was trained with (--manifest) to be sure no training image is scored'
    )
    info = {'data_dir': str(data_dir), 'split_method': described, 'note': note}
    return EvalData(list(samples), dataset_class_set(data_dir), info)


# --- Ground truth ----------------------------------------------------------------------------


def _read_ground_truth(sample: Sample, shape: tuple[int, int], class_set: ClassSet) -> np.ndarray:
    """The label of ``sample``, checked against its image size and its class set."""
    label = read_label(sample.label)  # (H, W) uint8
    if label.shape != shape:
        msg = (
            f'{sample.rgb} is {shape[1]}x{shape[0]} but its label {sample.label} is '
            f'{label.shape[1]}x{label.shape[0]}; they must match (run `semseg data check`)'
        )
        raise DatasetError(msg, path=sample.label, kind='size_mismatch')
    if int(label.max()) >= class_set.num_classes:
        ids = np.unique(label)
        bad = ids[(ids >= class_set.num_classes) & (ids != UNKNOWN_ID)]
        if bad.size:
            msg = (
                f'{sample.label} holds ids {bad.tolist()} outside class set {class_set.name!r} '
                f"(ids 0..{class_set.num_classes - 1}); pass the dataset's class set with "
                '--gt-class-set (e.g. carla23), or run `semseg data check` to list such files'
            )
            raise DatasetError(msg, path=sample.label, kind='values')
    return label


# --- Evaluation ------------------------------------------------------------------------------


def _provenance(checkpoint: Checkpoint, path: str) -> dict[str, Any]:
    config = checkpoint.train_config or {}
    name = next((config[k] for k in ('name', 'config_name', 'config') if config.get(k)), None)
    return {
        'path': path,
        'epoch': checkpoint.epoch,
        'step': checkpoint.step,
        'train_config': None if name is None else str(name),
        'model_config': checkpoint.model_config,
        'best_miou': None if not np.isfinite(checkpoint.best_miou) else checkpoint.best_miou,
    }


def _rate(count: int, seconds: float) -> float | None:
    return count / seconds if seconds > 0 else None


#: Suffixes of exported models (run through the Segmenter); anything else is a checkpoint.
MODEL_SUFFIXES = ('.onnx', '.engine')


def load_segmenter(
    target: str | Path | Checkpoint, backend: str, device: str
) -> tuple[Segmenter, Checkpoint | None, str]:
    """The :class:`Segmenter` that runs ``target``, the checkpoint behind it, and its name.

    A checkpoint (a file or in memory) runs on the torch engine; an exported model
    (``.onnx``, ``.engine``) on ``backend``, with the checkpoint its provenance names when
    that file is here (else ``None``).
    """
    from semseg_ros.engines.torch_engine import TorchEngine

    if isinstance(target, Checkpoint) or Path(target).suffix not in MODEL_SUFFIXES:
        if isinstance(target, Checkpoint):
            checkpoint, source = target, '<in memory>'
        else:
            checkpoint, source = load_checkpoint(target), str(target)
        engine = TorchEngine(checkpoint.build_model('cpu'), checkpoint.model_info(source),
                             device=device)  # fmt: skip
        return Segmenter(engine), checkpoint, source
    try:
        segmenter = Segmenter.from_model(target, backend=backend, device=device)
    except (EngineError, ModelFileError, ValueError) as err:
        raise EvaluationError(str(err)) from err
    warning = unverified_warning(segmenter.model_info)
    if warning:
        print(f'warning: {warning}', file=sys.stderr)
    recorded = segmenter.model_info.provenance.get('checkpoint')
    if recorded and Path(recorded).is_file():
        return segmenter, load_checkpoint(recorded), str(recorded)
    return segmenter, None, str(target)


def score(
    segmenter: Segmenter,
    samples: Sequence[Sample],
    label_set: ClassSet,
    *,
    relabel: LabelTransform | None = None,
    batch_size: int = 1,
    progress: bool | None = False,
) -> Scores:
    """Run ``samples`` through ``segmenter`` and score them at full frame resolution.

    Labels of ``label_set`` are mapped onto the model's set (unknown ids not counted),
    then ``relabel``-ed for the confusion matrix; the Lyft counts use the mapped labels.
    """
    model_set = segmenter.class_set
    same_set = label_set.names == model_set.names
    relabel = relabel or LabelTransform()
    try:
        lyft_class_ids(model_set)
        has_lyft = True
    except ClassSetError:
        has_lyft = False  # a custom set without Roads / vehicles: no Lyft score
    scores = Scores(ConfusionMatrix(model_set.num_classes), LyftCounts() if has_lyft else None)
    segmenter.warm_up(min(batch_size, max(1, len(samples))))
    bar = tqdm(total=len(samples), unit='img', disable=None if progress is None else not progress)
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        t0 = time.perf_counter()
        frames = [read_rgb(s.rgb) for s in batch]
        results = segmenter.segment_batch(frames)
        e2e = time.perf_counter() - t0
        model_s = sum(r.timings.infer for r in results)
        scores.e2e_times.append(e2e)
        scores.model_times.append(model_s)
        scores.e2e_per_image.append(e2e / len(batch))
        scores.model_per_image.append(model_s / len(batch))
        for sample, frame, result in zip(batch, frames, results, strict=True):
            scores.sizes.add((frame.shape[1], frame.shape[0]))
            gt = _read_ground_truth(sample, frame.shape[:2], label_set)
            if not same_set:
                gt = remap(gt, label_set, model_set)  # unknown -> 255, not counted
            target = gt if relabel.is_identity else relabel.apply(gt, model_set)
            scores.cm.update(result.ids, target)
            if scores.lyft is not None:
                hood = hood_row_at(frame.shape[0])
                scores.lyft += lyft_binary_counts(result.ids, gt, model_set, hood_row=hood)
        bar.update(len(batch))
    bar.close()
    return scores


@dataclass
class Scores:
    """What :func:`score` measured: the confusion matrix, Lyft counts and times (seconds)."""

    cm: ConfusionMatrix
    lyft: LyftCounts | None  # None: the class set has no Roads / vehicles
    e2e_times: list[float] = field(default_factory=list)  # per batch
    model_times: list[float] = field(default_factory=list)
    e2e_per_image: list[float] = field(default_factory=list)
    model_per_image: list[float] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height) seen


def evaluate(
    checkpoint_path: str | Path | Checkpoint,
    *,
    backend: str = 'auto',
    manifest: str | Path | None = None,
    data_dir: str | Path | None = None,
    split: str = 'test',
    batch_size: int = 1,
    device: str = 'cpu',
    gt_class_set: str | ClassSet | None = None,
    limit: int | None = None,
    raw_labels: bool = False,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Run a checkpoint, or an exported model, over a split and return the JSON-ready metrics.

    An exported model (``.onnx`` in any precision, ``.engine``) runs through the node's
    :class:`~semseg_ros.segmenter.Segmenter` on ``backend``; its data and label relabelling
    come from the checkpoint its provenance names, when that file is here.
    ``manifest`` / ``data_dir`` default to the ones the checkpoint's training config
    recorded. ``gt_class_set`` overrides the labels' class set (default: the manifest's or
    the dataset's). ``progress=None`` shows a bar on a terminal only.

    Keys: ``miou``, ``pixel_accuracy``, ``iou`` / ``precision`` / ``recall`` per class name,
    ``matrix`` (rows ground truth), ``lyft`` (:func:`semseg_ros.metrics.lyft_score`, FPS
    penalised; ``None`` for a class set without Roads and vehicles), ``timing``,
    ``num_images``, ``checkpoint`` (provenance), ``class_set``, ``dataset``, ``labels``.
    """
    if batch_size < 1:
        raise EvaluationError(f'batch size must be at least 1, got {batch_size}')
    if limit is not None and limit < 1:
        raise EvaluationError(f'limit must be at least 1, got {limit}')
    segmenter, checkpoint, source = load_segmenter(checkpoint_path, backend, device)
    exported = segmenter.model_info.path.suffix in MODEL_SUFFIXES
    model_set = segmenter.class_set

    if manifest is not None or data_dir is not None:
        where = DataSource(
            manifest=None if manifest is None else Path(manifest),
            data_dir=None if data_dir is None else Path(data_dir),
        )
    else:
        if checkpoint is None:
            msg = (
                f'{checkpoint_path} names no checkpoint that is here to say what data it was '
                'trained on; pass --manifest PATH or --data-dir DIR'
            )
            raise EvaluationError(msg)
        ckpt_path = None if source == '<in memory>' else Path(source)
        found = data_source_from_checkpoint(checkpoint, ckpt_path)
        if found is None:
            msg = (
                f'checkpoint {source} records no data.manifest or data.data_dir in its training '
                'config; pass --manifest PATH or --data-dir DIR'
            )
            raise EvaluationError(msg)
        where = found
    data = load_split(where, split)
    if gt_class_set is None and where.class_set:  # the trainer read the labels as this set
        gt_class_set = where.class_set
    gt_set = get_class_set(gt_class_set) if gt_class_set is not None else data.class_set
    same_set = gt_set.names == model_set.names
    if not same_set:
        remap(np.zeros(1, np.uint8), gt_set, model_set)  # fail now if there is no mapping
    # Score the targets the model was trained for (merged road lines, hood as background);
    # the crop is not applied: cropped rows are scored as predicted background.
    # (An exported model without its checkpoint: labels as stored.)
    trained = (checkpoint.label_transform if checkpoint is not None else None) or {}
    relabel = (
        LabelTransform()
        if raw_labels
        else LabelTransform(
            merge_roadlines=bool(trained.get('merge_roadlines', False)),
            hood_row=trained.get('hood_row'),
        )
    )
    samples = data.samples[:limit] if limit is not None else data.samples
    scores = score(
        segmenter, samples, gt_set, relabel=relabel, batch_size=batch_size, progress=progress
    )
    cm = scores.cm
    n = len(samples)
    e2e_fps = _rate(n, sum(scores.e2e_times))
    timing = {
        'device': segmenter.backend_name,
        'batch_size': batch_size,
        'torch_threads': torch.get_num_threads(),
        'model_images_per_s': _rate(n, sum(scores.model_times)),
        'model_ms_per_image_median': 1000.0 * float(np.median(scores.model_per_image)),
        'end_to_end_images_per_s': e2e_fps,
        'end_to_end_ms_per_image_median': 1000.0 * float(np.median(scores.e2e_per_image)),
        'measures': (
            'model: the engine (host->device copy, forward, argmax, ids back); end to end: '
            'image decode, prepare, model, resize back to the frame (labels and metrics '
            'excluded)'
        ),
    }
    summary = cm.to_dict(model_set)
    return {
        'split': split,
        'num_images': n,
        'image_sizes': sorted([list(s) for s in scores.sizes]),
        **{k: summary[k] for k in ('miou', 'pixel_accuracy', 'iou', 'precision', 'recall')},
        'pixels': summary['pixels'],
        'lyft': lyft_score(scores.lyft, fps=e2e_fps) if scores.lyft is not None else None,
        'timing': timing,
        # An exported model: the checkpoint it came from, when that file is here (else None).
        'checkpoint': _provenance(checkpoint, source) if checkpoint is not None else None,
        **({'model': segmenter.model_info.summary()} if exported else {}),
        'class_set': model_set.name,
        'class_names': list(model_set.names),
        'class_colors': model_set.colors.tolist(),
        'input': segmenter.input_spec.to_dict(),
        'dataset': {
            **data.info,
            'class_set': gt_set.name,
            'remapped': not same_set,
            'from_checkpoint': where.from_checkpoint,
        },
        'labels': {
            'merge_roadlines': relabel.merge_roadlines,
            'hood_row': relabel.hood_row,
            'cropped_rows': 'scored as predicted background (id 0)',
            'ignore_index': cm.ignore_index,
        },
        'matrix': summary['matrix'],
    }


# --- Reporting -------------------------------------------------------------------------------


def write_report(metrics: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``metrics.json``, ``confusion_matrix.png`` and ``iou_per_class.png`` in ``out_dir``."""
    from .plots import plot_confusion_matrix, plot_iou_per_class

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / 'metrics.json'
    json_path.write_text(json.dumps(metrics, indent=1) + '\n')
    names = metrics['class_names']
    what = f'{_scored(metrics)} on {metrics["split"]} ({metrics["num_images"]} img)'
    cm_path = plot_confusion_matrix(
        np.array(metrics['matrix']),
        names,
        out_dir / 'confusion_matrix.png',
        title=f'Confusion matrix, row-normalized\n{what}',
    )
    miou = metrics['miou']
    iou_path = plot_iou_per_class(
        metrics['iou'],
        np.array(metrics['class_colors'], np.uint8),
        out_dir / 'iou_per_class.png',
        miou=miou,
        title=f'IoU per class\n{what}',
    )
    return [json_path, cm_path, iou_path]


def _fmt(value: float | None, spec: str = '.3f') -> str:
    return '-' if value is None else format(value, spec)


def _scored(metrics: Mapping[str, Any]) -> str:
    """The file that was run: the exported model, else the checkpoint."""
    model = metrics.get('model')
    return str(model['path'] if model else metrics['checkpoint']['path'])


def format_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text summary: one row per class, then mIoU, the Lyft score and the speed."""
    ckpt = metrics['checkpoint']
    data = metrics['dataset']
    source = data.get('manifest') or data.get('data_dir')
    lines = []
    if metrics.get('model'):
        model = metrics['model']
        lines.append(f'model {model["path"]} ({model["precision"]}, {model["class_set"]})')
    if ckpt is not None:
        lines.append(
            f'{"from " if metrics.get("model") else ""}checkpoint {ckpt["path"]} (epoch '
            f'{ckpt["epoch"]}, step {ckpt["step"]}, config {ckpt["train_config"] or "-"})'
        )
    lines += [
        f'split {metrics["split"]}: {metrics["num_images"]} images from {source}; '
        f'model classes {metrics["class_set"]}, labels {data["class_set"]}'
        + (' (remapped)' if data['remapped'] else ''),
        '',
        f'{"class":<14}{"IoU":>7}{"prec":>7}{"recall":>8}{"gt pixels":>12}',
    ]
    gt_pixels = np.array(metrics['matrix']).sum(axis=1)
    for i, name in enumerate(metrics['class_names']):
        lines.append(
            f'{name:<14}{_fmt(metrics["iou"][name]):>7}{_fmt(metrics["precision"][name]):>7}'
            f'{_fmt(metrics["recall"][name]):>8}{int(gt_pixels[i]):>12}'
        )
    lines += [
        '',
        f'mIoU {_fmt(metrics["miou"])}   pixel accuracy {_fmt(metrics["pixel_accuracy"])}',
    ]
    lyft = metrics.get('lyft')
    if lyft is not None:
        lines.append(
            f'Lyft: F_road(b=0.5) {_fmt(lyft["f_road"])}  F_vehicle(b=2) '
            f'{_fmt(lyft["f_vehicle"])}  score {_fmt(lyft["score"], ".2f")} at '
            f'{_fmt(lyft["fps"], ".1f")} FPS (penalty {lyft["fps_penalty"]:.2f})'
        )
    t = metrics['timing']
    lines.append(
        f'speed ({t["device"]}, batch {t["batch_size"]}): model '
        f'{_fmt(t["model_images_per_s"], ".1f")} img/s '
        f'(median {t["model_ms_per_image_median"]:.1f} ms), end to end '
        f'{_fmt(t["end_to_end_images_per_s"], ".1f")} img/s '
        f'(median {t["end_to_end_ms_per_image_median"]:.1f} ms)'
    )
    return '\n'.join(lines)


# --- CLI -------------------------------------------------------------------------------------


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            'Score a checkpoint or an exported model on a dataset split: IoU per class, mIoU, '
            'pixel accuracy, precision/recall, the Lyft challenge score and the speed. Writes '
            'metrics.json, confusion_matrix.png and iou_per_class.png.'
        ),
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--checkpoint', type=Path, help='a training checkpoint (run in PyTorch)')
    what.add_argument(
        '--model',
        type=Path,
        help='an exported model (.onnx FP32/FP16/INT8, .engine), run through the Segmenter '
        'as the node runs it',
    )
    parser.add_argument(
        '--backend',
        default='auto',
        choices=('auto', 'onnxruntime', 'tensorrt', 'torch'),
        help='engine for --model (default auto)',
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        '--manifest',
        type=Path,
        help="split manifest (default: the one recorded in the checkpoint's training config)",
    )
    data.add_argument(
        '--data-dir',
        type=Path,
        help='dataset root; uses DIR/manifest.json when present, else the default split',
    )
    parser.add_argument('--split', choices=SPLIT_NAMES, default='test', help='default: test')
    parser.add_argument(
        '--out',
        type=Path,
        help='output folder (default: CHECKPOINT_DIR/eval_SPLIT, or MODEL_DIR/eval_SPLIT_STEM)',
    )
    parser.add_argument('--batch-size', type=positive_int, default=1, help='default 1')
    parser.add_argument(
        '--device', type=device_arg, default='auto', help=f'{DEVICE_HELP} (default: auto)'
    )
    parser.add_argument('--limit', type=positive_int, help='only the first N images of the split')
    parser.add_argument(
        '--gt-class-set',
        help='class set of the labels when the dataset does not declare it (e.g. carla23); '
        "mapped onto the model's set",
    )
    parser.add_argument(
        '--raw-labels',
        action='store_true',
        help="score against the labels as stored, without the checkpoint's merge_roadlines / "
        'hood_row relabelling',
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg evaluate``: 0 on success, 2 on bad input (message on stderr, no traceback)."""
    parser = _parser(prog)
    args = parse_args(parser, argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    target = args.checkpoint if args.checkpoint is not None else args.model
    if args.model is not None and args.model.suffix not in MODEL_SUFFIXES:
        msg = f'--model takes {"/".join(MODEL_SUFFIXES)} files; pass a checkpoint as --checkpoint'
        return usage_error(parser, msg)
    try:
        metrics = evaluate(
            target,
            backend=args.backend,
            manifest=args.manifest,
            data_dir=args.data_dir,
            split=args.split,
            batch_size=args.batch_size,
            device=args.device,
            gt_class_set=args.gt_class_set,
            limit=args.limit,
            raw_labels=args.raw_labels,
            progress=None,
        )
    except (CheckpointError, DatasetError, EvaluationError, EngineError, ClassSetError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    default_out = target.parent / (
        f'eval_{args.split}' if args.model is None else f'eval_{args.split}_{target.stem}'
    )
    out = args.out if args.out is not None else default_out
    paths = write_report(metrics, out)
    print(format_table(metrics))
    note = metrics['dataset'].get('note')
    if note:
        print(f'note: {note}', file=sys.stderr)
    print('wrote ' + ', '.join(str(p) for p in paths))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
