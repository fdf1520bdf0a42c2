"""Augmentation of image + label pairs, in numpy / OpenCV (runs in the data-loader workers).

One call, :func:`augment_pair`, applies in this order: random scale + crop (one crop window
in source pixels, then one resize to the output size), horizontal flip, colour jitter
(hue, brightness, contrast, saturation), Gaussian blur, Gaussian noise. Geometric steps move
image and label together; photometric ones touch only the image.

The label is only ever resized by :func:`semseg_ros.pipeline.resize_label` (nearest
neighbour) and padded by reflection, so it never holds an id the input label did not.

Randomness comes from one ``numpy.random.Generator`` per sample, seeded by
:func:`sample_rng` from ``(seed, epoch, sample index)``: the augmentation of a sample does not
depend on which worker draws it, how many workers there are, or whether the run was resumed.
"""

from __future__ import annotations

import cv2
import numpy as np

from semseg_ros.pipeline import resize_image, resize_label

from .config import AugmentConfig


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample of one epoch: a pure function of its three arguments."""
    return np.random.default_rng([seed, epoch, index])


def scale_crop(
    rgb: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float],
    out_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Zoom by a random factor in ``scale`` and take a random ``out_size`` (w, h) window.

    ``s = 1`` keeps the input's pixel scale: the window is ``out_size / s`` source pixels,
    resized once to ``out_size`` (so an ``out_size`` smaller than the input is a random crop
    at full resolution). A zoom out whose window exceeds the image pads it by reflection,
    image and label alike. Shape: (H, W, 3), (H, W) -> (h, w, 3), (h, w).
    """
    out_w, out_h = out_size
    H, W = label.shape
    s = float(rng.uniform(scale[0], scale[1]))
    crop_w = max(1, round(out_w / s))
    crop_h = max(1, round(out_h / s))
    pad_x, pad_y = max(0, crop_w - W), max(0, crop_h - H)
    if pad_x or pad_y:
        left, top = int(rng.integers(0, pad_x + 1)), int(rng.integers(0, pad_y + 1))
        border = (top, pad_y - top, left, pad_x - left)
        rgb = cv2.copyMakeBorder(rgb, *border, cv2.BORDER_REFLECT_101)
        label = cv2.copyMakeBorder(label, *border, cv2.BORDER_REFLECT_101)
        H, W = label.shape
    x0 = int(rng.integers(0, W - crop_w + 1))
    y0 = int(rng.integers(0, H - crop_h + 1))
    rgb = rgb[y0 : y0 + crop_h, x0 : x0 + crop_w]
    label = label[y0 : y0 + crop_h, x0 : x0 + crop_w]
    return (
        resize_image(np.ascontiguousarray(rgb), (out_w, out_h)),
        resize_label(np.ascontiguousarray(label), (out_w, out_h)),
    )


def color_jitter(
    rgb: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> np.ndarray:
    """Random hue shift, then brightness, contrast and saturation factors in ``1 +- x``.

    Shape: (H, W, 3) uint8 RGB -> same.
    """
    # Draw every factor up front so the stream of random numbers does not depend on which
    # parts are enabled.
    h_shift = rng.uniform(-hue, hue)
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    if hue > 0:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # OpenCV 8-bit hue runs 0..179
        lut = ((np.arange(256) + round(h_shift * 180)) % 180).astype(np.uint8)
        hsv[..., 0] = lut[hsv[..., 0]]
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    x = rgb.astype(np.float32) * np.float32(b)  # (H, W, 3)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W) luma
    if contrast > 0:
        x = (x - gray.mean()) * np.float32(c) + gray.mean()
        gray = (gray - gray.mean()) * np.float32(c) + gray.mean()
    if saturation > 0:
        x = gray[..., None] + (x - gray[..., None]) * np.float32(s)
    return np.clip(x, 0, 255).astype(np.uint8)


def augment_pair(
    rgb: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
    out_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one training pair. Shape: (H, W, 3) uint8, (H, W) uint8 -> out_size (w, h).

    ``out_size`` defaults to the input's size; a smaller one is a random crop (training on
    crops, inferring on whole frames). With ``config.enabled`` false only that crop is done.
    """
    if rgb.shape[:2] != label.shape:
        raise ValueError(f'augment_pair: image {rgb.shape} and label {label.shape} differ')
    in_size = (label.shape[1], label.shape[0])
    out_size = in_size if out_size is None else (int(out_size[0]), int(out_size[1]))
    scale = (float(config.scale[0]), float(config.scale[1])) if config.enabled else (1.0, 1.0)
    if scale != (1.0, 1.0) or out_size != in_size:
        rgb, label = scale_crop(rgb, label, rng, scale, out_size)
    if not config.enabled:
        return np.ascontiguousarray(rgb), np.ascontiguousarray(label)
    if rng.random() < config.hflip:
        rgb, label = rgb[:, ::-1], label[:, ::-1]
    rgb = color_jitter(
        np.ascontiguousarray(rgb),
        rng,
        brightness=config.brightness,
        contrast=config.contrast,
        saturation=config.saturation,
        hue=config.hue,
    )
    blur_draw, kernel_draw, noise_draw = rng.random(), rng.random(), rng.random()
    if blur_draw < config.blur:
        k = 3 if kernel_draw < 0.5 else 5
        rgb = cv2.GaussianBlur(rgb, (k, k), 0)
    if noise_draw < config.noise and config.noise_std > 0:
        noise = rng.normal(0.0, config.noise_std, rgb.shape).astype(np.float32)
        rgb = np.clip(rgb.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(label)
