"""The one preprocessing path: uint8 RGB image -> normalized float32 CHW model input.

Training (the PyTorch dataset), export (metadata written into the ONNX file) and the node
(the per-frame segmenter) all use :class:`Normalization` and :func:`resize_image` from here,
so a model always sees at run time exactly what it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass

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
