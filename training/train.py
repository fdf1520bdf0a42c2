"""Train a UNet from a YAML config: resumable, reproducible, TensorBoard, torchrun for multi-GPU.

Three doors, one implementation (:func:`main`)::

    semseg train --config training/configs/cpu.yaml --out runs/train/cpu_default
    python -m training.train --data-dir /data/lyft --set optim.lr=1e-3 model.base_channels=8
    python3 training/train.py --data-dir /data/lyft          # the original project's habit
    torchrun --nproc_per_node 4 -m training.train --config training/configs/gpu.yaml ...

The run folder ``OUT`` receives ``config.yaml`` (the resolved config), ``manifest.json``
(when the data dir had none), ``last.pt`` (every ``train.checkpoint_every_steps`` steps and
at each epoch end), ``best.pt`` (best validation mIoU), ``log.jsonl`` (one line per step),
``summary.json`` and ``tb/`` (TensorBoard). ``--resume`` continues a killed run exactly: the
seeded shuffle, per-sample augmentation seeds, optimizer, LR schedule and RNG states all come
back, so the remaining steps see the same batches as an uninterrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ''):  # `python3 training/train.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import training  # noqa: F401 - the package the relative imports below resolve in

    __package__ = 'training'

import argparse
import gc
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from semseg_ros.cli import parse_args
from semseg_ros.devices import torch_device
from semseg_ros.labels import ClassSet, ClassSetError, get_class_set
from semseg_ros.metrics import ConfusionMatrix

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from .config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    load_config,
    save_config,
)
from .data.lyft import DatasetError, scan_dataset
from .data.splits import (
    Manifest,
    load_manifest,
    make_split,
    resolve_method,
    write_manifest,
)
from .datasets import (
    EpochSampler,
    SegmentationDataset,
    class_pixel_counts,
    split_samples,
)
from .losses import CombinedLoss, build_loss, class_weights_from_frequencies
from .model import UNet, build_model, count_parameters

LOG_FILE = 'log.jsonl'
SUMMARY_FILE = 'summary.json'


class TrainError(RuntimeError):
    """The run cannot start or continue as configured; the message says why and the fix."""


# --- Small pure pieces ----------------------------------------------------------------------


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = 'poly',
    power: float = 0.9,
    min_ratio: float = 0.0,
) -> float:
    """The LR multiplier for optimizer step ``step`` (0-based): linear warmup, then decay.

    Warmup rises linearly to 1 over ``warmup_steps`` steps; then ``poly`` decays as
    ``(1 - t) ** power`` and ``cosine`` as ``(1 + cos(pi t)) / 2`` with ``t`` the fraction of
    the post-warmup steps done, from 1 down to ``min_ratio``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if schedule == 'poly':
        decay = (1.0 - t) ** power
    elif schedule == 'cosine':
        decay = 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == 'constant':
        decay = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'poly', 'cosine' or 'constant'")
    return min_ratio + (1.0 - min_ratio) * decay


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python / numpy / torch RNG states as tensors and plain data (``weights_only``-safe)."""
    np_state = np.random.get_state()
    py = random.getstate()  # (version, 625 ints, gauss_next)
    state: dict[str, Any] = {
        'python': {
            'version': py[0],
            'state': torch.tensor(py[1], dtype=torch.int64),
            'gauss': py[2],
        },
        'numpy': {
            'keys': torch.from_numpy(np_state[1].astype(np.int64)),
            'pos': int(np_state[2]),
            'has_gauss': int(np_state[3]),
            'cached_gaussian': float(np_state[4]),
        },
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state['python']
    random.setstate((py['version'], tuple(py['state'].tolist()), py['gauss']))
    n = state['numpy']
    np.random.set_state(
        ('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
         n['cached_gaussian'])
    )  # fmt: skip
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


# --- Distributed --------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0')), world)
    if not dist.is_initialized():
        backend = 'nccl' if device_kind == 'cuda' else 'gloo'
        if device_kind == 'cuda':
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


# --- Setup ------------------------------------------------------------------------------


def train_device(requested: str, info: DistInfo = DistInfo()) -> torch.device:
    """``train.device`` here (:func:`semseg_ros.devices.torch_device`); under torchrun a plain
    ``cuda`` is the worker's local-rank GPU. A missing GPU: :class:`TrainError`."""
    try:
        return torch_device(requested, local_rank=info.local_rank if info.enabled else None)
    except ValueError as err:
        raise TrainError(f'train.device: {err}') from err


def generate_synthetic(config: Config, *, progress: bool = True) -> None:
    """Write ``config.data.synthetic`` frames into the (missing) ``data.data_dir``."""
    from .data import synthetic

    syn = config.data.synthetic
    assert syn is not None and config.data.data_dir is not None
    synth_config = None
    if syn.size is not None:
        synth_config = synthetic.SynthConfig(width=syn.size[0], height=syn.size[1])
    workers = max(1, min(syn.workers, os.cpu_count() or 1))
    print(
        f'generating {syn.frames} synthetic frames (seed {syn.seed}, {workers} worker(s)) '
        f'into {config.data.data_dir}'
    )
    start = time.perf_counter()
    # Into a temp folder renamed at the end: a run killed mid-way leaves no half dataset
    # that a rerun would mistake for a finished one.
    final = Path(config.data.data_dir)
    tmp = final.with_name(f'.{final.name}.partial')
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    synthetic.generate_dataset(
        tmp,
        frames=syn.frames,
        seed=syn.seed,
        config=synth_config,
        workers=workers,
        progress=progress,
    )
    os.replace(tmp, final)
    print(f'  done in {time.perf_counter() - start:.1f} s')


def prepare_manifest(
    config: Config, out: Path, info: DistInfo = DistInfo(), *, progress: bool = True
) -> Path:
    """The manifest to train from: data.manifest, DATA_DIR/manifest.json, or a new one in OUT.

    A missing data dir is generated first when the config has ``data.synthetic``.
    """
    data = config.data
    if data.manifest is not None:
        return Path(data.manifest)
    root = Path(data.data_dir or '')
    if not root.is_dir():
        if data.synthetic is None:
            msg = (
                f'data dir {root} does not exist; pass --data-dir with the folder holding '
                'dataA..dataE (or CameraRGB/ + CameraSeg/), or add data.synthetic: {frames: N, '
                'seed: S} to the config to generate one'
            )
            raise DatasetError(msg, path=root, kind='layout')
        if info.is_main:
            generate_synthetic(config, progress=progress)
        barrier(info)
    if (root / 'manifest.json').is_file():
        return root / 'manifest.json'
    path = out / 'manifest.json'
    if info.is_main:
        scan = scan_dataset(root)
        if not scan.samples:
            msg = f'no image/label pairs under {root}; run `semseg data check {root}`'
            raise DatasetError(msg, path=root, kind='layout')
        method = resolve_method(data.split, scan.samples)
        try:
            splits = make_split(scan.samples, method, data.split_sizes, data.split_seed)
        except ValueError as err:
            raise ConfigError(f'data.split / data.split_sizes: {err}') from err
        seed = None if method == 'original' else data.split_seed
        from .data.lyft import dataset_class_set

        class_set = get_class_set(data.class_set) if data.class_set else dataset_class_set(root)
        write_manifest(path, root, splits, class_set=class_set, method=method, seed=seed)
        counts = ', '.join(f'{k} {len(v)}' for k, v in splits.items())
        print(f'wrote {path} ({method} split: {counts})')
    barrier(info)
    return path


@dataclass
class RunData:
    manifest: Manifest
    manifest_path: Path
    class_set: ClassSet
    train: SegmentationDataset
    val: SegmentationDataset
    test: SegmentationDataset | None


def build_datasets(
    config: Config, manifest_path: Path, *, progress: bool = False, with_test: bool = True
) -> RunData:
    """Train (augmented) / val / test datasets of the manifest; train and val must be non-empty."""
    manifest = load_manifest(manifest_path)
    class_set = get_class_set(config.data.class_set) if config.data.class_set else None
    class_set = class_set or manifest.get_class_set()
    common: dict[str, Any] = {
        'input_size': config.data.input_size,
        'label_transform': config.data.label_transform(),
        'normalization': config.normalization.build(),
        'seed': config.train.seed,
        'cache': config.data.cache,
        'progress': progress,
    }
    train_samples = split_samples(manifest, 'train', manifest_path)
    val_samples = split_samples(manifest, 'val', manifest_path)
    train = SegmentationDataset(
        train_samples,
        class_set,
        augment=config.augment,
        crop_size=config.data.train_crop,
        name='train',
        **common,
    )
    val = SegmentationDataset(val_samples, class_set, name='val', **common)
    test = None
    if with_test and manifest.splits.get('test'):
        common['cache'] = False  # read once at the end; not worth the RAM during training
        test = SegmentationDataset(manifest.splits['test'], class_set, name='test', **common)
    return RunData(manifest, manifest_path, class_set, train, val, test)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # the workers are the parallelism; nested OpenCV threads only contend
    torch.set_num_threads(1)


def make_loader(
    dataset: SegmentationDataset,
    sampler: Any,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    drop_last: bool,
    pin_memory: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers else None,
        # A private generator: the loader's base seed must not consume the global torch RNG,
        # or a resumed run (one loader fewer) would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and batch-norm parameters (1-D tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    o = config.optim
    groups = [
        {'params': decay, 'weight_decay': o.weight_decay},
        {'params': no_decay, 'weight_decay': 0.0},
    ]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]))


def build_criterion(config: Config, train_set: SegmentationDataset) -> tuple[nn.Module, Any]:
    """The loss, with alpha / weights from the training split's class frequencies if asked."""
    lc = config.loss
    weights = None
    counts = None
    weighted = any(part in ('focal', 'ce') for part in lc.name.split('+'))
    if lc.alpha_from_frequencies and weighted:
        counts = class_pixel_counts(train_set)
        weights = class_weights_from_frequencies(counts, lc.alpha_method)
    criterion = build_loss(
        lc.name,
        class_weights=weights,
        gamma=lc.gamma,
        ignore_index=lc.ignore_index,
        dice_weight=lc.dice_weight,
    )
    return criterion, counts


# --- Evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    device: torch.device,
    batch_size: int = 8,
    criterion: nn.Module | None = None,
    info: DistInfo = DistInfo(),
    channels_last: bool = False,
    amp: bool = False,
) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of ``model`` on ``dataset`` (ConfusionMatrix).

    Under DDP each rank scores every ``world_size``-th sample and the matrices are summed.
    """
    was_training = model.training
    model.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))
    loader = make_loader(
        dataset, indices, batch_size=batch_size, num_workers=0, seed=0, drop_last=False
    )
    cm = ConfusionMatrix(dataset.class_set.num_classes)
    loss_sum, loss_n = 0.0, 0
    for image, label in loader:
        image = image.to(device, non_blocking=True)  # (N, 3, H, W)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        label = label.to(device, non_blocking=True)  # (N, H, W)
        with _autocast(device, amp):
            logits = model(image)  # (N, C, H, W)
        if criterion is not None:
            loss_sum += float(criterion(logits.float(), label)) * len(label)
            loss_n += len(label)
        cm.update(logits.argmax(1).cpu().numpy(), label.cpu().numpy())
    if info.enabled:
        stats = torch.tensor(cm.matrix, dtype=torch.float64, device=device)
        dist.all_reduce(stats)
        totals = torch.tensor([loss_sum, loss_n], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        cm = ConfusionMatrix.from_matrix(stats.cpu().numpy().round().astype(np.int64))
        loss_sum, loss_n = float(totals[0]), int(totals[1])
    model.train(was_training)
    names = dataset.class_set.names
    result = {
        'miou': cm.miou(),
        'pixel_accuracy': cm.pixel_accuracy(),
        'iou': {
            n: (None if math.isnan(v) else float(v)) for n, v in zip(names, cm.iou(), strict=True)
        },
        'frames': len(dataset),
    }
    if criterion is not None:
        result['loss'] = loss_sum / max(1, loss_n)
    return result


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.float16)
    return nullcontext()


@torch.no_grad()
def val_prediction_grid(
    model: nn.Module, dataset: SegmentationDataset, count: int, device: torch.device
) -> np.ndarray:
    """Rows of input | ground truth | prediction | overlay for the first ``count`` samples."""
    from semseg_ros.visualize import caption, contact_sheet, label_panel

    was_training = model.training
    model.eval()
    rows = []
    for i in range(min(count, len(dataset))):
        rgb, gt = dataset.read(i)
        image, _ = dataset[i]
        pred = model(image[None].to(device)).argmax(1)[0].cpu().numpy().astype(np.uint8)
        panel = label_panel(
            rgb, pred, dataset.class_set, titles=('input', 'prediction', 'overlay')
        )
        w = rgb.shape[1]
        gt_tile = caption(dataset.class_set.id_to_color(gt), 'ground truth')
        rows.append(np.hstack([panel[:, :w], gt_tile, panel[:, w:]]))
    model.train(was_training)
    return contact_sheet(rows)


# --- The run ------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> UNet:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def _resolve_resume(resume: str | Path | None, out: Path) -> Path | None:
    if resume is None:
        return None
    if str(resume) == 'auto':
        path = out / 'last.pt'
        return path if path.is_file() else None
    return Path(resume)


def _configure_torch(config: Config, device: torch.device) -> None:
    t = config.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    if device.type == 'cpu':
        # Bitwise-reproducible CPU kernels; warn_only keeps ops without a deterministic
        # variant usable (none of the UNet's need it).
        torch.use_deterministic_algorithms(t.deterministic, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = not t.deterministic
        torch.backends.cudnn.deterministic = t.deterministic


def train(
    config: Config,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run training as configured; returns the summary (also written to ``OUT/summary.json``).

    ``out`` defaults to ``runs/train/<config.name>``. ``resume`` is a checkpoint path, or
    ``'auto'`` for ``OUT/last.pt`` when it exists. torch's thread count and determinism
    switches are restored on return, so calling this from other code has no lasting effect.
    """
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        return _train(config, out=out, resume=resume, progress=progress)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])


@dataclass
class Run:
    """Everything one training run holds: settings, data, model, optimizer and position."""

    config: Config
    out: Path
    info: DistInfo
    device: torch.device
    manifest: Path
    data: RunData
    model: UNet  # the weights; ``net`` is what the steps call (DDP-wrapped when distributed)
    net: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    use_amp: bool
    steps_per_epoch: int
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batches_done: int = 0  # batches of the current epoch already consumed
    best_miou: float = float('-inf')
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    class_counts: np.ndarray | None = None  # pixels per class of the train split, if counted

    def say(self, *args: Any) -> None:
        if self.info.is_main:
            print(*args)


def _train(
    config: Config, *, out: str | Path | None, resume: str | Path | None, progress: bool
) -> dict[str, Any]:
    """The loop: set up, then per epoch train steps, validate and checkpoint; then test."""
    wall_start = time.perf_counter()
    run = setup_run(config, out, resume, progress=progress)
    t = config.train
    logger = RunLogger(run)
    stopped_early = False
    images_seen = 0
    train_start = time.perf_counter()
    try:
        run.model.train()
        while run.epoch < t.epochs and not stopped_early:
            bar = _progress_bar(
                epoch_loader(run), progress and run.info.is_main, run.epoch, t.epochs,
                run.batches_done, run.steps_per_epoch,
            )  # fmt: skip
            tick = time.perf_counter()
            for image, label in bar:
                stats = train_step(run, image, label)
                images = len(label) * run.info.world_size
                images_seen += images
                ips = images / max(1e-9, time.perf_counter() - tick)
                logger.log_step(run, stats, ips)
                if hasattr(bar, 'set_postfix'):
                    bar.set_postfix(
                        loss=f'{stats.loss:.4f}', lr=f'{stats.lr:.2e}', img_s=f'{ips:.1f}'
                    )
                if t.max_steps is not None and run.step >= t.max_steps:
                    stopped_early = True
                    break
                if t.checkpoint_every_steps and run.step % t.checkpoint_every_steps == 0:
                    save_run(run, 'last.pt')
                tick = time.perf_counter()
            if hasattr(bar, 'close'):
                bar.close()
            if stopped_early and run.batches_done < run.steps_per_epoch:
                save_run(run, 'last.pt')
                run.say(f'stopped at train.max_steps={t.max_steps} (step {run.step}); --resume '
                        'continues')  # fmt: skip
                break
            end_epoch(run, logger, last=run.epoch + 1 == t.epochs or stopped_early)
    finally:
        logger.close()
    train_s = time.perf_counter() - train_start
    summary = summarize(run, train_s=train_s, images_seen=images_seen)
    summary['wall_s'] = time.perf_counter() - wall_start
    if run.info.is_main:
        (run.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + '\n')
    return summary


def setup_run(
    config: Config, out: str | Path | None, resume: str | Path | None, *, progress: bool
) -> Run:
    """Device, ranks, data, model, optimizer and schedule; the resumed state when asked."""
    config.validate()
    t, o = config.train, config.optim
    device_kind = train_device(t.device).type  # fail on a missing GPU before anything else
    info = init_distributed(device_kind)
    device = train_device(t.device, info)
    out = Path(out) if out is not None else Path('runs/train') / config.name
    resume_path = _resolve_resume(resume, out)
    if resume_path is None and (out / 'last.pt').is_file():
        msg = (
            f'{out} already holds a run (last.pt); pass --resume to continue it, or choose '
            'another --out'
        )
        raise TrainError(msg)
    checkpoint = load_checkpoint(resume_path) if resume_path is not None else None
    _configure_torch(config, device)
    seed_everything(t.seed)
    say = print if info.is_main else (lambda *a, **k: None)

    out.mkdir(parents=True, exist_ok=True)
    manifest_path = prepare_manifest(config, out, info, progress=progress and info.is_main)
    data = build_datasets(config, manifest_path, progress=progress and info.is_main)
    class_set = data.class_set
    model_config = config.model.unet_config(class_set.num_classes)
    if checkpoint is not None:
        check_compatible(
            checkpoint, model_config=model_config, class_set=class_set, source=str(resume_path)
        )
        if list(checkpoint.input_size) != list(config.data.input_size):
            say(
                f'warning: {resume_path} was trained at input size {checkpoint.input_size}, '
                f'this config feeds {config.data.input_size}'
            )
    if info.is_main:
        save_config(config, out / 'config.yaml')

    model = build_model(model_config).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion, class_counts = build_criterion(config, data.train)
    criterion = criterion.to(device)
    optimizer = build_optimizer(model, config)

    per_rank = len(data.train) // info.world_size
    steps_per_epoch = per_rank // t.batch_size
    if steps_per_epoch == 0:
        msg = (
            f'the train split has {len(data.train)} samples: fewer than one batch of '
            f'{t.batch_size} per rank ({info.world_size} rank(s)); lower train.batch_size '
            'or add training data'
        )
        raise TrainError(msg)
    total_steps = t.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            total_steps=total_steps,
            warmup_steps=o.warmup_steps,
            schedule=o.schedule,
            power=o.poly_power,
            min_ratio=o.min_lr_ratio,
        ),
    )
    use_amp = t.amp and device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp)
    run = Run(
        config, out, info, device, manifest_path, data, model, model, criterion, optimizer,
        scheduler, scaler, use_amp, steps_per_epoch, class_counts=class_counts,
    )  # fmt: skip
    if checkpoint is not None:
        _restore(run, checkpoint, resume_path)
    else:
        if resume is not None:
            say(f'--resume {resume}: no {out / "last.pt"} yet, starting a new run')
        if info.is_main:
            # Steps of a run killed before its first checkpoint are redone from scratch.
            (out / LOG_FILE).unlink(missing_ok=True)
    if info.enabled:
        run.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None
        )
    say(
        f'train {len(data.train)} / val {len(data.val)} / test '
        f'{len(data.test) if data.test else 0} frames ({class_set.name}, '
        f'{class_set.num_classes} classes) at {config.data.input_size[0]}x'
        f'{config.data.input_size[1]}; model {config.model.preset} '
        f'{count_parameters(model) / 1e6:.2f} M params; {device} x{info.world_size}'
        f'{" AMP" if use_amp else ""}; {steps_per_epoch} steps/epoch, {total_steps} steps'
    )
    return run


def _restore(run: Run, checkpoint: Checkpoint, path: Path) -> None:
    """Weights, optimizer, schedule, scaler, RNG and position of a ``last.pt`` to resume."""
    run.model.load_state_dict(checkpoint.model_state)
    if checkpoint.optimizer_state is None:
        msg = f'{path} has no optimizer state (an exported checkpoint); cannot resume'
        raise CheckpointError(msg)
    run.optimizer.load_state_dict(checkpoint.optimizer_state)
    if checkpoint.scheduler_state:
        run.scheduler.load_state_dict(checkpoint.scheduler_state)
    if checkpoint.scaler_state:
        run.scaler.load_state_dict(checkpoint.scaler_state)
    if checkpoint.rng_state:
        set_rng_state(checkpoint.rng_state)
    run.epoch, run.step = checkpoint.epoch, checkpoint.step
    run.batches_done, run.best_miou = checkpoint.batches_done, checkpoint.best_miou
    run.metrics = dict(checkpoint.metrics)
    run.resumed = True
    run.say(f'resumed from {path}: epoch {run.epoch}, step {run.step}, batch {run.batches_done}')
    _truncate_log(run.out / LOG_FILE, run.step)


def epoch_loader(run: Run) -> DataLoader:
    """This rank's batches of the current epoch, past the ones already consumed."""
    t = run.config.train
    sampler = EpochSampler(
        len(run.data.train),
        seed=t.seed,
        epoch=run.epoch,
        rank=run.info.rank,
        world_size=run.info.world_size,
        start=run.batches_done * t.batch_size,
    )
    return make_loader(
        run.data.train,
        sampler,
        batch_size=t.batch_size,
        num_workers=run.config.data.num_workers,
        seed=t.seed + run.epoch,
        drop_last=True,
        pin_memory=run.device.type == 'cuda',
    )


@dataclass
class StepStats:
    loss: float
    terms: dict[str, float]  # the loss terms of a combined loss, unweighted
    lr: float  # the rate this step used
    grad_norm: float | None  # before clipping; None without optim.grad_clip


def train_step(run: Run, image: torch.Tensor, label: torch.Tensor) -> StepStats:
    """One optimizer step on one batch. Shape: image (N, 3, H, W), label (N, H, W)."""
    t, o = run.config.train, run.config.optim
    image = image.to(run.device, non_blocking=True)  # (N, 3, H, W) float32
    if t.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    label = label.to(run.device, non_blocking=True)  # (N, H, W) int64
    with _autocast(run.device, run.use_amp):
        logits = run.net(image)  # (N, C, H, W)
        if isinstance(run.criterion, CombinedLoss):
            terms = run.criterion.terms(logits, label)
            loss = sum(run.criterion.weights[k] * v for k, v in terms.items())
        else:
            terms = {}
            loss = run.criterion(logits, label)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    grad_norm = None
    if o.grad_clip:
        run.scaler.unscale_(run.optimizer)
        grad_norm = float(nn.utils.clip_grad_norm_(run.model.parameters(), o.grad_clip))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    lr = run.optimizer.param_groups[0]['lr']
    run.scheduler.step()
    run.step += 1
    run.batches_done += 1
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        msg = (
            f'loss became {loss_value} at step {run.step}; lower optim.lr or enable '
            'optim.grad_clip (last.pt holds the last good state)'
        )
        raise TrainError(msg)
    return StepStats(loss_value, {k: float(v.detach()) for k, v in terms.items()}, lr, grad_norm)


class RunLogger:
    """Rank 0's ``log.jsonl`` (every step) and TensorBoard (every ``log_every`` steps)."""

    def __init__(self, run: Run) -> None:
        self.log = None
        self.writer = None
        if not run.info.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        purge = run.step if run.resumed else None
        self.writer = SummaryWriter(str(run.out / 'tb'), purge_step=purge)
        counts = run.class_counts
        if counts is not None and not run.resumed:
            freq = counts / max(1, counts.sum())
            self.writer.add_text('data/class_frequency', ', '.join(
                f'{n} {f:.4f}' for n, f in zip(run.data.class_set.names, freq, strict=True)
            ))  # fmt: skip
        self.log = open(run.out / LOG_FILE, 'a')  # noqa: SIM115 - closed by close()

    def log_step(self, run: Run, stats: StepStats, images_per_s: float) -> None:
        t, step = run.config.train, run.step
        if self.log is not None:
            entry = {'step': step, 'epoch': run.epoch, 'loss': stats.loss, 'lr': stats.lr}
            entry.update(stats.terms)
            self.log.write(json.dumps(entry) + '\n')
            self.log.flush()
        if self.writer is None:
            return
        if t.log_every and step % t.log_every == 0:
            self.writer.add_scalar('train/loss', stats.loss, step)
            for k, v in stats.terms.items():
                self.writer.add_scalar(f'train/loss_{k}', v, step)
            self.writer.add_scalar('train/lr', stats.lr, step)
            self.writer.add_scalar('train/images_per_s', images_per_s, step)
            if stats.grad_norm is not None:
                self.writer.add_scalar('train/grad_norm', stats.grad_norm, step)
        if t.image_every and step % t.image_every == 0:
            grid = val_prediction_grid(run.model, run.data.val, t.num_images, run.device)
            self.writer.add_image('val/predictions', grid, step, dataformats='HWC')

    def log_val(self, step: int, val: dict[str, Any]) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar('val/loss', val['loss'], step)
        self.writer.add_scalar('val/miou', val['miou'], step)
        self.writer.add_scalar('val/pixel_accuracy', val['pixel_accuracy'], step)
        for name, iou in val['iou'].items():
            if iou is not None:
                self.writer.add_scalar(f'val_iou/{name}', iou, step)
        self.writer.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.writer is not None:
            self.writer.close()


def end_epoch(run: Run, logger: RunLogger, *, last: bool) -> None:
    """Close an epoch: validate when due (keeping ``best.pt``), always write ``last.pt``."""
    t = run.config.train
    run.epoch += 1
    run.batches_done = 0
    if not ((t.val_every and run.epoch % t.val_every == 0) or last):
        save_run(run, 'last.pt')
        return
    val = validate(
        run.model,
        run.data.val,
        device=run.device,
        batch_size=t.batch_size,
        criterion=run.criterion,
        info=run.info,
        channels_last=t.channels_last,
        amp=run.use_amp,
    )
    run.metrics = {'epoch': run.epoch, 'step': run.step, 'val': val}
    improved = val['miou'] > run.best_miou
    if improved:
        run.best_miou = val['miou']
    run.say(
        f'epoch {run.epoch}/{t.epochs} step {run.step}: val loss {val["loss"]:.4f} '
        f'mIoU {val["miou"]:.4f} pixel acc {val["pixel_accuracy"]:.4f}'
        f'{" (best)" if improved else ""}'
    )
    logger.log_val(run.step, val)
    save_run(run, 'last.pt')
    if improved:
        save_run(run, 'best.pt')


def run_checkpoint(run: Run) -> Checkpoint:
    """The run as a checkpoint: the model and its contract, plus what resuming needs."""
    config = run.config
    return Checkpoint(
        model_config=run.model.config.to_dict(),
        class_set=run.data.class_set.to_dict(),
        normalization=config.normalization.build().to_dict(),
        input_size=list(config.data.input_size),
        model_state={k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()},
        label_transform=_label_transform_dict(config),
        train_config=config.to_dict(),
        epoch=run.epoch,
        step=run.step,
        metrics={**run.metrics, 'world_size': run.info.world_size},
        best_miou=run.best_miou,
        optimizer_state=run.optimizer.state_dict(),
        scheduler_state=run.scheduler.state_dict(),
        scaler_state=run.scaler.state_dict(),
        rng_state=rng_state(),
        batches_done=run.batches_done,
    )


def save_run(run: Run, name: str) -> None:
    """``OUT/name`` from rank 0, between barriers: no reader sees a step some rank skipped."""
    barrier(run.info)
    if run.info.is_main:
        save_checkpoint(run_checkpoint(run), run.out / name)
    barrier(run.info)


def summarize(run: Run, *, train_s: float, images_seen: int) -> dict[str, Any]:
    """The run's summary; a finished run's ``best.pt`` is scored on the test split."""
    t, info, device = run.config.train, run.info, run.device
    summary: dict[str, Any] = {
        'out': str(run.out),
        'manifest': str(run.manifest),
        'epoch': run.epoch,
        'step': run.step,
        'finished': run.epoch >= t.epochs,
        'best_miou': None if run.best_miou == float('-inf') else run.best_miou,
        'val': run.metrics.get('val'),
        'train_s': train_s,
        'train_images_per_s': images_seen / train_s if train_s > 0 else None,
        'world_size': info.world_size,
        'device': str(device),
    }
    if info.enabled:
        summary['rank_weight_checksums'] = _rank_checksums(run.model, device)
        summary['ranks_in_sync'] = len(set(summary['rank_weight_checksums'])) == 1
    test = run.data.test
    best_path = run.out / 'best.pt'
    if summary['finished'] and t.test_at_end and test is not None and best_path.is_file():
        run.model.load_state_dict(load_checkpoint(best_path, map_location=device).model_state)
        summary['test'] = validate(
            run.model, test, device=device, batch_size=t.batch_size, info=info, amp=run.use_amp
        )
        summary['test']['checkpoint'] = str(best_path)
        run.say(
            f'test mIoU (best.pt, {len(test)} frames, at the model input size): '
            f'{summary["test"]["miou"]:.4f}; full-frame scores: semseg evaluate --checkpoint '
            f'{best_path}'
        )
    return summary


def _label_transform_dict(config: Config) -> dict[str, Any]:
    lt = config.data.label_transform()
    return {
        'merge_roadlines': lt.merge_roadlines,
        'hood_row': lt.hood_row,
        'crop_top': lt.crop_top,
        'crop_bottom': lt.crop_bottom,
    }


def _rank_checksums(model: nn.Module, device: torch.device) -> list[float]:
    """Each rank's sum of |weights| (float64), gathered: equal on all ranks if DDP kept sync."""
    total = sum(p.detach().double().abs().sum() for p in model.parameters())
    local = torch.tensor([float(total)], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [float(g.item()) for g in gathered]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step``: a resumed run re-does those steps and logs them again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)['step'] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            break  # a line cut short by a kill: everything after it is gone too
    path.write_text(''.join(f'{line}\n' for line in kept))


def _progress_bar(loader, enabled: bool, epoch: int, epochs: int, done: int, total: int):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(
        loader,
        desc=f'epoch {epoch + 1}/{epochs}',
        initial=done,
        total=total,
        unit='batch',
        dynamic_ncols=True,
        leave=False,
    )


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The per-step log of a run folder (``OUT/log.jsonl``)."""
    path = Path(out) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- Throughput -----------------------------------------------------------------------------


def measure_loader_throughput(config: Config, batches: int = 20) -> dict[str, float]:
    """Images/s of the training data loader alone vs. of the train step alone (on device).

    The loader pass reads ``batches`` augmented batches exactly as training does (cache,
    workers); the step pass repeats forward + backward + AdamW on one batch. The loader keeps
    up when its rate exceeds the step's (on CPU both share the same cores, so a real run
    gets somewhat less than either).
    """
    config.validate()
    t = config.train
    device = train_device(t.device)
    _configure_torch(config, device)
    seed_everything(t.seed)
    with tempfile.TemporaryDirectory(prefix='semseg_measure_') as tmp:
        manifest_path = prepare_manifest(config, Path(tmp))
        data = build_datasets(config, manifest_path, with_test=False)
    sampler = EpochSampler(len(data.train), seed=t.seed, epoch=0)
    loader = make_loader(
        data.train,
        sampler,
        batch_size=t.batch_size,
        num_workers=config.data.num_workers,
        seed=t.seed,
        drop_last=True,
    )
    batches = max(1, min(batches, len(sampler) // t.batch_size - 1))
    it = iter(loader)
    image, label = next(it)  # starts the workers; not timed
    start = time.perf_counter()
    for _ in range(batches):
        image, label = next(it)
    loader_s = time.perf_counter() - start
    del it

    model = build_model(config.model.unet_config(data.class_set.num_classes)).to(device).train()
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion, _ = build_criterion(config, data.train)
    criterion = criterion.to(device)
    optimizer = build_optimizer(model, config)
    image, label = image.to(device), label.to(device)  # (N, 3, H, W), (N, H, W)
    if t.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)

    def one_step() -> None:
        loss = criterion(model(image), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    one_step()  # warm-up (allocator, kernels)
    steps = max(1, min(batches, 10))
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    step_s = time.perf_counter() - start
    return {
        'loader_images_per_s': batches * t.batch_size / loader_s,
        'step_images_per_s': steps * t.batch_size / step_s,
        'batch_size': t.batch_size,
        'num_workers': config.data.num_workers,
        'input_size': list(config.data.input_size),
        'torch_threads': torch.get_num_threads(),
        'device': str(device),
    }


# --- CLI ------------------------------------------------------------------------------------


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            'Train a UNet on a dataset in the Lyft-Udacity layout. Without --config the CPU '
            'config is used, which generates a synthetic dataset on first use. Multi-GPU: '
            'torchrun --nproc_per_node N -m training.train ...'
        ),
    )
    parser.add_argument(
        '--config',
        default=str(DEFAULT_CONFIG),
        help='YAML config, or the name of a shipped one (cpu, gpu, tiny); default '
        'training/configs/cpu.yaml',
    )
    parser.add_argument(
        '--data-dir', help='dataset root (sets data.data_dir, clears data.manifest)'
    )
    parser.add_argument('--manifest', help='train from this manifest (sets data.manifest)')
    parser.add_argument('--out', type=Path, help='run folder (default runs/train/<config name>)')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        metavar='PATH|auto',
        help='continue from a checkpoint; bare --resume or "auto" means OUT/last.pt if present',
    )
    parser.add_argument(
        '--set',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        dest='overrides',
        help='override config values, e.g. --set optim.lr=1e-3 model.base_channels=8',
    )
    parser.add_argument('--epochs', type=int, help='sets train.epochs')
    parser.add_argument('--batch-size', type=int, help='sets train.batch_size')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), help='sets train.device')
    parser.add_argument(
        '--measure-loader',
        nargs='?',
        type=int,
        const=20,
        metavar='BATCHES',
        help='only measure data-loader vs train-step throughput (images/s) and exit',
    )
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``semseg train``: returns the exit code (0 ok, 1 failed run, 2 bad input)."""
    parser = _parser(prog)
    summary: dict[str, Any] | None = None
    args = parse_args(parser, argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides += [f'data.data_dir={json.dumps(args.data_dir)}', 'data.manifest=null']
    if args.manifest is not None:
        overrides.append(f'data.manifest={json.dumps(args.manifest)}')
    for flag, key in (('epochs', 'train.epochs'), ('batch_size', 'train.batch_size')):
        if getattr(args, flag) is not None:
            overrides.append(f'{key}={getattr(args, flag)}')
    if args.device is not None:
        overrides.append(f'train.device={args.device}')
    try:
        config = load_config(args.config, overrides)
        if args.measure_loader is not None:
            result = measure_loader_throughput(config, args.measure_loader)
            print(json.dumps(result, indent=1))
            ratio = result['loader_images_per_s'] / result['step_images_per_s']
            print(
                f'data loader {result["loader_images_per_s"]:.1f} img/s vs train step '
                f'{result["step_images_per_s"]:.1f} img/s ({ratio:.1f}x)'
            )
            return 0
        summary = train(config, out=args.out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DatasetError, CheckpointError, ClassSetError, TrainError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{parser.prog}: interrupted; continue with --resume', file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            # The DDP wrapper of the finished run sits in reference cycles (its reducer's
            # hooks); left to the interpreter's exit, its gloo work is torn down during
            # finalization and the rank aborts ("terminate called without an active
            # exception", ~1 run in 20 here). Collect it while the process group is alive.
            gc.collect()
            if summary is not None:
                # Leave together; not on errors: a dead peer would make the barrier hang.
                dist.barrier()
            dist.destroy_process_group()
    if int(os.environ.get('RANK', '0')) != 0:
        return 0
    best = summary['best_miou']
    print(
        f'done: {summary["step"]} steps, best val mIoU '
        f'{"n/a" if best is None else f"{best:.4f}"}, {summary["wall_s"]:.0f} s; '
        f'checkpoints in {summary["out"]}'
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
