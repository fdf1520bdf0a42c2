"""Pictures of class-id images: colour masks, overlays, labelled panels and contact sheets.

One definition of the overlay, shared by the node, the demo and the offline tools.  All
images here are uint8 RGB (H, W, 3); class-id images are uint8 (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from semseg_ros.labels import ClassSet


def overlay(rgb: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend a colour mask over an image: ``(1 - alpha) * rgb + alpha * color_mask``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'overlay alpha must be within 0..1, got {alpha}')
    if rgb.shape != color_mask.shape:
        raise ValueError(f'overlay: image {rgb.shape} and mask {color_mask.shape} differ in shape')
    return cv2.addWeighted(rgb, 1.0 - alpha, color_mask, alpha, 0.0)


def error_image(
    rgb: np.ndarray,
    pred_ids: np.ndarray,
    gt_ids: np.ndarray,
    *,
    ignore_id: int = 255,
    dim: float = 0.4,
) -> np.ndarray:
    """Where the mask disagrees with ground truth: red over the camera image dimmed to
    ``dim`` (pixels whose truth is ``ignore_id`` never count as wrong).

    Shape: rgb (H, W, 3) uint8, pred_ids / gt_ids (H, W) uint8 -> (H, W, 3) uint8 RGB.
    """
    if pred_ids.shape != gt_ids.shape or rgb.shape[:2] != pred_ids.shape:
        msg = f'error_image: image {rgb.shape}, mask {pred_ids.shape}, truth {gt_ids.shape}'
        raise ValueError(msg + ' differ in size')
    out = (rgb.astype(np.float32) * dim).astype(np.uint8)
    out[(pred_ids != gt_ids) & (gt_ids != ignore_id)] = (255, 0, 0)
    return out


def caption(image: np.ndarray, text: str, *, height: int = 22) -> np.ndarray:
    """The image with a dark strip of text above it."""
    strip = np.full((height, image.shape[1], 3), 32, np.uint8)
    scale = height / 30
    cv2.putText(
        strip, text, (6, height - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1,
        cv2.LINE_AA,
    )  # fmt: skip
    return np.vstack([strip, image])


def label_panel(
    rgb: np.ndarray,
    ids: np.ndarray,
    class_set: ClassSet,
    *,
    alpha: float = 0.5,
    titles: Sequence[str] = ('image', 'classes', 'overlay'),
) -> np.ndarray:
    """One row: image | colour mask | overlay, each captioned."""
    color = class_set.id_to_color(ids)
    tiles = [rgb, color, overlay(rgb, color, alpha)]
    return np.hstack([caption(t, title) for t, title in zip(tiles, titles, strict=True)])


def legend(class_set: ClassSet, *, width: int, ids: Sequence[int] | None = None) -> np.ndarray:
    """A strip of colour swatches with class names, wrapped to ``width`` pixels."""
    ids = range(class_set.num_classes) if ids is None else ids
    cell_w, cell_h = 150, 22
    per_row = max(1, width // cell_w)
    rows = -(-len(ids) // per_row)
    strip = np.full((rows * cell_h + 4, width, 3), 255, np.uint8)
    for k, class_id in enumerate(ids):
        x, y = (k % per_row) * cell_w + 4, (k // per_row) * cell_h + 4
        color = tuple(int(c) for c in class_set.colors[class_id])
        cv2.rectangle(strip, (x, y), (x + 16, y + 14), color, -1)
        cv2.rectangle(strip, (x, y), (x + 16, y + 14), (0, 0, 0), 1)
        name = f'{class_id} {class_set.names[class_id]}'
        cv2.putText(
            strip, name, (x + 22, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
            cv2.LINE_AA,
        )  # fmt: skip
    return strip


def contact_sheet(rows: Sequence[np.ndarray], *, gap: int = 4) -> np.ndarray:
    """Stack rows of possibly different widths on a white background."""
    if not rows:
        raise ValueError('contact_sheet needs at least one row')
    width = max(r.shape[1] for r in rows)
    padded = []
    for row in rows:
        canvas = np.full((row.shape[0] + gap, width, 3), 255, np.uint8)
        canvas[: row.shape[0], : row.shape[1]] = row
        padded.append(canvas)
    return np.vstack(padded)


def fit_width(image: np.ndarray, width: int) -> np.ndarray:
    """Resize a picture (not a class-id image) to ``width`` keeping its aspect ratio."""
    if image.shape[1] == width:
        return image
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def write_rgb(path, image: np.ndarray) -> None:
    """Write an RGB image (PNG/JPEG by extension); raises OSError naming the file on failure."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write image {path}: check the folder exists and is writable')
