"""The one per-frame module: what a model is fed, and how its ids come back to the frame.

Training (the PyTorch dataset), export (the metadata written into the ONNX file), the
runtime :class:`~semseg_ros.segmenter.Segmenter` (every backend) and the offline tools all
turn a camera frame into model input and model ids back into a full-frame mask with the
functions here, so a model sees at run time exactly what it saw in training and a mask means
the same thing wherever it was produced::

    frame (H, W, 3) uint8 RGB
      -> crop rows [crop_top, H - crop_bottom)  -> resize_image to input_size  -> normalize
      -> model -> logits (N, C, h, w) -> argmax -> ids (h, w)
      -> resize_label (nearest) to (H - crop_top - crop_bottom, W) -> cropped rows filled

numpy + OpenCV only: the runtime half never imports torch (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

# ImageNet statistics: the usual convention, and harmless for a model trained from scratch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """``x = (pixel / 255 - mean) / std`` per channel, channels in ``channel_order``."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = 'RGB'

    def __post_init__(self) -> None:
        if self.channel_order not in ('RGB', 'BGR'):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f'mean and std need 3 values each, got {self.mean} and {self.std}')
        if any(s <= 0 for s in self.std):
            raise ValueError(f'std values must be positive, got {self.std}')
        object.__setattr__(self, 'mean', tuple(float(m) for m in self.mean))
        object.__setattr__(self, 'std', tuple(float(s) for s in self.std))

    def _scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        # Folded into one multiply-add: x * scale + shift == (x / 255 - mean) / std.
        mean, std = np.array(self.mean, np.float32), np.array(self.std, np.float32)
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)

    def apply(self, rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalize an RGB image. Shape: (H, W, 3) uint8 RGB -> (3, H, W) float32.

        ``out`` (3, H, W) float32 is filled in place when given (reusable per-frame buffer).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f'expected an (H, W, 3) RGB image, got shape {rgb.shape}')
        if self.channel_order == 'BGR':
            rgb = rgb[..., ::-1]
        scale, shift = self._scale_shift()
        if out is None:
            out = np.empty((3, *rgb.shape[:2]), np.float32)
        for c in range(3):  # per channel: strided HWC read, contiguous CHW write
            np.multiply(rgb[..., c], scale[c], out=out[c], dtype=np.float32)
            out[c] += shift[c]
        return out

    def to_dict(self) -> dict:
        return {
            'mean': list(self.mean),
            'std': list(self.std),
            'channel_order': self.channel_order,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        return cls(
            mean=tuple(data['mean']),
            std=tuple(data['std']),
            channel_order=data.get('channel_order', 'RGB'),
        )


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a camera image to ``size`` = (width, height): area when shrinking, else linear.

    Only for images. Class-id images are resized with :func:`resize_label` only, since
    interpolating ids invents classes.
    """
    width, height = size
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    shrinking = width < rgb.shape[1] and height < rgb.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a class-id image to ``size`` = (width, height) with nearest-neighbour only.

    The one label resize of the project: any interpolating filter blends ids into ids of
    other classes. Uses OpenCV's INTER_NEAREST_EXACT (pixel-centre aligned, like PIL).
    Shape: (H, W) -> (height, width), dtype kept.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f'resize_label expects an (H, W) id image, got shape {label.shape}')
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError(f'resize_label size must be (width, height) positive ints, got {size}')
    width, height = int(size[0]), int(size[1])
    if label.shape == (height, width):
        return label
    return cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def _is_count(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class InputSpec:
    """What a model is fed: frame rows cropped, resized to ``input_size``, normalized.

    ``input_size`` is (width, height) of the model input *after* cropping; ``crop_top`` /
    ``crop_bottom`` are rows of the original frame (e.g. sky and the ego hood) the model
    never sees. A checkpoint and an exported model's metadata carry exactly these fields.
    """

    input_size: tuple[int, int]
    crop_top: int = 0
    crop_bottom: int = 0
    normalization: Normalization = field(default_factory=Normalization)

    def __post_init__(self) -> None:
        size = tuple(self.input_size) if isinstance(self.input_size, Sequence) else ()
        if len(size) != 2 or not all(_is_count(v) and v > 0 for v in size):
            msg = f'input_size must be (width, height), two positive ints; got {self.input_size!r}'
            raise ValueError(msg)
        for name in ('crop_top', 'crop_bottom'):
            value = getattr(self, name)
            if not _is_count(value) or value < 0:
                raise ValueError(f'{name} must be a non-negative int (rows), got {value!r}')
        if not isinstance(self.normalization, Normalization):
            msg = (
                'normalization must be a semseg_ros.pipeline.Normalization, got '
                f'{type(self.normalization).__name__}; build it with Normalization.from_dict'
            )
            raise TypeError(msg)
        object.__setattr__(self, 'input_size', (int(size[0]), int(size[1])))
        object.__setattr__(self, 'crop_top', int(self.crop_top))
        object.__setattr__(self, 'crop_bottom', int(self.crop_bottom))

    @classmethod
    def from_checkpoint_fields(
        cls,
        input_size: Sequence[int],
        label_transform: Mapping[str, Any] | None,
        normalization: Mapping[str, Any] | Normalization,
    ) -> InputSpec:
        """From a checkpoint's plain fields: ``input_size`` [w, h], the ``label_transform``
        dict (only its ``crop_top`` / ``crop_bottom`` matter here) and the normalization dict.
        """
        transform = dict(label_transform or {})
        if not isinstance(normalization, Normalization):
            normalization = Normalization.from_dict(dict(normalization))
        return cls(
            input_size=tuple(input_size),  # type: ignore[arg-type]
            crop_top=transform.get('crop_top', 0) or 0,
            crop_bottom=transform.get('crop_bottom', 0) or 0,
            normalization=normalization,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict` (the form model metadata stores)."""
        try:
            return cls.from_checkpoint_fields(
                data['input_size'],
                {'crop_top': data.get('crop_top', 0), 'crop_bottom': data.get('crop_bottom', 0)},
                data['normalization'],
            )
        except KeyError as err:
            msg = f'an input spec needs the key {err}; it has {sorted(data)}'
            raise ValueError(msg) from err

    def to_dict(self) -> dict[str, Any]:
        return {
            'input_size': list(self.input_size),
            'crop_top': self.crop_top,
            'crop_bottom': self.crop_bottom,
            'normalization': self.normalization.to_dict(),
        }

    def cropped_height(self, frame_height: int) -> int:
        """Rows left of a ``frame_height``-row frame after cropping; raises if none are."""
        rows = frame_height - self.crop_top - self.crop_bottom
        if rows < 1:
            msg = (
                f'crop_top={self.crop_top} + crop_bottom={self.crop_bottom} removes all '
                f'{frame_height} rows of the frame; the model was made for taller frames'
            )
            raise ValueError(msg)
        return rows


def prepare(rgb: np.ndarray, spec: InputSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Frame -> model input: crop rows, :func:`resize_image`, :meth:`Normalization.apply`.

    Shape: (H, W, 3) uint8 RGB -> (3, h, w) float32 with (w, h) = ``spec.input_size``.
    ``out`` (3, h, w) float32, e.g. one row of a batch buffer, is filled in place.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        msg = f'prepare expects an (H, W, 3) uint8 RGB frame, got {rgb.dtype} {rgb.shape}'
        raise ValueError(msg)
    rows = spec.cropped_height(rgb.shape[0])
    cropped = rgb[spec.crop_top : spec.crop_top + rows]  # (H - t - b, W, 3), a view
    resized = resize_image(cropped, spec.input_size)  # (h, w, 3)
    width, height = spec.input_size
    if out is not None and (out.shape != (3, height, width) or out.dtype != np.float32):
        msg = f'prepare: out must be (3, {height}, {width}) float32, got {out.dtype} {out.shape}'
        raise ValueError(msg)
    return spec.normalization.apply(resized, out=out)


def logits_to_ids(logits: np.ndarray) -> np.ndarray:
    """Per-pixel argmax (first maximum on ties). Shape: (N, C, h, w) -> (N, h, w) uint8.

    A single (C, h, w) map gives (h, w).
    """
    logits = np.asarray(logits)
    if logits.ndim not in (3, 4):
        msg = f'logits must be (N, C, h, w) or (C, h, w), got shape {logits.shape}'
        raise ValueError(msg)
    num_classes = logits.shape[-3]
    if not 1 <= num_classes <= 256:
        msg = f'logits have {num_classes} classes on axis -3; uint8 ids need 1..256'
        raise ValueError(msg)
    return np.argmax(logits, axis=-3).astype(np.uint8)


def restore_ids(
    ids_small: np.ndarray,
    spec: InputSpec,
    frame_shape: Sequence[int],
    fill_id: int = 0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Model-size ids -> full-frame ids: nearest resize, then the cropped rows re-inserted.

    The rows removed by ``spec.crop_top`` / ``crop_bottom`` are filled with ``fill_id``
    (the background class). Nearest-neighbour only: interpolating ids invents classes.
    Shape: (h, w) integer ids, ``frame_shape`` (H, W) or (H, W, C) -> (H, W) uint8.
    """
    ids_small = np.asarray(ids_small)
    if ids_small.ndim != 2 or ids_small.dtype.kind not in 'ui':
        msg = f'restore_ids expects (h, w) integer ids, got {ids_small.dtype} {ids_small.shape}'
        raise ValueError(msg)
    if not 0 <= fill_id <= 255:
        raise ValueError(f'fill_id must be a uint8 class id (0..255), got {fill_id}')
    height, width = int(frame_shape[0]), int(frame_shape[1])
    rows = spec.cropped_height(height)
    if ids_small.dtype != np.uint8:
        if ids_small.size and int(ids_small.max()) > 255:
            raise ValueError('restore_ids: class ids above 255 do not fit a uint8 mask')
        ids_small = ids_small.astype(np.uint8)
    if out is None:
        out = np.empty((height, width), np.uint8)
    elif out.shape != (height, width) or out.dtype != np.uint8:
        msg = f'restore_ids: out must be ({height}, {width}) uint8, got {out.dtype} {out.shape}'
        raise ValueError(msg)
    out[: spec.crop_top] = fill_id
    out[spec.crop_top + rows :] = fill_id
    band = out[spec.crop_top : spec.crop_top + rows]  # (H - t - b, W) view into out
    if ids_small.shape == band.shape:
        band[...] = ids_small
    else:
        band[...] = resize_label(ids_small, (width, rows))
    return out
