"""The PyTorch dataset over one split of a manifest, its sampler, and class frequencies.

Per sample: :func:`~training.data.lyft.load_pair` (decode, validate ids against the class
set, label transform incl. crop) -> resize to ``input_size`` (image
:func:`~semseg_ros.pipeline.resize_image`, label :func:`~semseg_ros.pipeline.resize_label`)
-> :func:`~training.augment.augment_pair` (training only) -> ``Normalization.apply`` ->
tensors. The decoded, resized uint8 pairs can be cached in RAM (``cache=True``): an 800x600
PNG pair is decoded once per run instead of once per epoch. The cache is filled in the main
process before the loader starts, so forked workers share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from semseg_ros.labels import ClassSet
from semseg_ros.pipeline import Normalization, resize_image, resize_label

from .augment import augment_pair, sample_rng
from .config import AugmentConfig
from .data.lyft import DatasetError, LabelTransform, Sample, load_pair
from .data.splits import Manifest


def split_samples(manifest: Manifest, split: str, manifest_path: str | Path) -> list[Sample]:
    """The samples of ``split``; a :class:`DatasetError` naming split, manifest and fix if none."""
    if split not in manifest.splits:
        msg = (
            f'manifest {manifest_path} has no {split!r} split (it has '
            f'{sorted(manifest.splits)}); re-create it with `semseg data split {manifest.root}` '
            'or point data.manifest at one with train/val/test splits'
        )
        raise DatasetError(msg, path=manifest_path, kind='layout')
    samples = manifest.splits[split]
    if not samples:
        msg = (
            f'the {split!r} split of manifest {manifest_path} is empty (counts: '
            f'{manifest.counts}); re-create it with larger sizes, e.g. `semseg data split '
            f'{manifest.root} --method random --sizes 0.6,0.2,0.2`'
        )
        raise DatasetError(msg, path=manifest_path, kind='layout')
    return samples


class SegmentationDataset(Dataset):
    """One split as ``(image, label)`` tensors: float32 (3, H, W) and int64 (H, W).

    An index is either an ``int`` (the whole frame, no augmentation: validation, test) or,
    from :class:`EpochSampler`, an ``(epoch, index)`` pair: augmented (when ``augment`` is
    given) and cropped to ``crop_size`` with randomness seeded by ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_set: ClassSet,
        *,
        input_size: Sequence[int],
        label_transform: LabelTransform | None = None,
        normalization: Normalization | None = None,
        augment: AugmentConfig | None = None,
        crop_size: Sequence[int] | None = None,
        seed: int = 0,
        cache: bool = False,
        cache_threads: int | None = None,
        progress: bool = False,
        name: str = 'split',
    ) -> None:
        if not samples:
            raise DatasetError(f'the {name!r} split has no samples', kind='layout')
        self.samples = list(samples)
        self.class_set = class_set
        self.input_size = (int(input_size[0]), int(input_size[1]))  # (width, height)
        self.label_transform = label_transform or LabelTransform()
        self.normalization = normalization or Normalization()
        self.augment = augment
        #: (width, height) of the training samples: random crops when smaller than input_size.
        self.crop_size = (
            self.input_size if crop_size is None else (int(crop_size[0]), int(crop_size[1]))
        )
        self.seed = seed
        self.name = name
        self._images: np.ndarray | None = None  # (N, h, w, 3) uint8
        self._labels: np.ndarray | None = None  # (N, h, w) uint8
        if cache:
            self.fill_cache(threads=cache_threads, progress=progress)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, transformed, resized pair. Shape: (h, w, 3) uint8 RGB, (h, w) uint8 ids."""
        if self._images is not None and self._labels is not None:
            return self._images[index], self._labels[index]
        rgb, label = load_pair(self.samples[index], self.label_transform, self.class_set)
        return resize_image(rgb, self.input_size), resize_label(label, self.input_size)

    def fill_cache(self, *, threads: int | None = None, progress: bool = False) -> None:
        """Decode every pair once into two contiguous uint8 arrays (OpenCV drops the GIL)."""
        if self._images is not None:
            return
        w, h = self.input_size
        n = len(self.samples)
        images = np.empty((n, h, w, 3), np.uint8)
        labels = np.empty((n, h, w), np.uint8)

        def fill(i: int) -> None:
            images[i], labels[i] = self.read(i)

        threads = threads or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            jobs = pool.map(fill, range(n))
            if progress:
                from tqdm import tqdm

                jobs = tqdm(jobs, total=n, desc=f'decode {self.name}', unit='img', leave=False)
            for _ in jobs:
                pass
        self._images, self._labels = images, labels

    @property
    def cached(self) -> bool:
        return self._images is not None

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        rgb, label = self.read(int(index))
        if epoch is not None and (self.augment is not None or self.crop_size != self.input_size):
            rng = sample_rng(self.seed, int(epoch), int(index))
            augment = self.augment or AugmentConfig(enabled=False)
            rgb, label = augment_pair(rgb, label, rng, augment, self.crop_size)
        image = self.normalization.apply(rgb)  # (3, h, w) float32
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))  # (h, w)


def class_pixel_counts(dataset: SegmentationDataset) -> np.ndarray:
    """(C,) int64 pixels per class over the dataset's (resized, unaugmented) labels.

    Computed on the training split only: the focal alpha must not peek at val / test.
    """
    num_classes = dataset.class_set.num_classes
    counts = np.zeros(num_classes, np.int64)
    for i in range(len(dataset)):
        _, label = dataset.read(i)
        counts += np.bincount(label.ravel(), minlength=num_classes)[:num_classes]
    return counts


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch shuffle, sharded over ranks, resumable mid-epoch; yields (epoch, idx).

    The order is :class:`torch.utils.data.DistributedSampler`'s (same seed + epoch -> same
    permutation, ``indices[rank::world_size]``, tail dropped so every rank gets as many),
    and ``start`` skips the first ``start`` samples of this rank (a resumed epoch).
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.size, self.seed, self.epoch = size, seed, epoch
        self.rank, self.world_size, self.start, self.shuffle = rank, world_size, start, shuffle
        self.per_rank = size // world_size

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        order = order[: self.per_rank * self.world_size]
        return order[self.rank :: self.world_size][self.start :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.indices()])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)
