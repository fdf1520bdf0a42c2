"""The dataset layout facts, in one place: folders, file format, label channel, hood row.

The Lyft-Udacity CARLA dataset (and every dataset this project writes: the synthetic
generator, the CARLA collector) looks like::

    ROOT/dataset.json                       what wrote it: class set, size, episodes
    ROOT/dataA/CameraRGB/000123.png         camera image, 800x600 RGB PNG
    ROOT/dataA/CameraSeg/000123.png         label: class id in the red channel
    ROOT/dataB/...  ...  ROOT/dataE/...     episodes (the challenge's split is by episode)

and the ego car's hood covers the rows from :data:`HOOD_ROW` of a :data:`REFERENCE_HEIGHT`
row frame down. The reader (``training.data.lyft``), the generator
(``training.data.synthetic``), the collector (``training.data.carla_io``) and the Lyft
metric (:mod:`semseg_ros.metrics`) all take these facts from here. In the runtime package
because the metric is: numpy + OpenCV only.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: The episode folders of the Lyft-Udacity dataset (and of what the generator writes).
EPISODES = ('dataA', 'dataB', 'dataC', 'dataD', 'dataE')
IMAGE_DIR = 'CameraRGB'
LABEL_DIR = 'CameraSeg'
#: The JSON file at the root that says what wrote the dataset (class set, size, ...).
DATASET_INFO = 'dataset.json'
IMAGE_SUFFIX = '.png'
#: The label is this channel of the CameraSeg PNG in OpenCV's BGR(A) order: red.
LABEL_CHANNEL = 2
#: First row of the ego car's hood in the 800x600 Lyft / CARLA front camera ...
HOOD_ROW = 496
#: ... a frame this many rows high; other heights scale it (:func:`hood_row_at`).
REFERENCE_HEIGHT = 600

# PNG speed: zlib level 1 with one fixed row filter (OpenCV's default tries them all, which
# costs more than rendering a synthetic frame). Labels are long runs: RLE + the UP filter.
RGB_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
]
LABEL_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
]  # fmt: skip


def hood_row_at(height: int) -> int:
    """The hood's first row in a frame ``height`` rows high (496 at 600 rows)."""
    return round(HOOD_ROW * height / REFERENCE_HEIGHT)


def label_image(ids: np.ndarray) -> np.ndarray:
    """Class ids as a CameraSeg image. Shape: (H, W) uint8 -> (H, W, 3) uint8 BGR, id in red."""
    zeros = np.zeros_like(ids)
    channels = [zeros, zeros, zeros]
    channels[LABEL_CHANNEL] = ids
    return cv2.merge(channels)


def label_ids(image: np.ndarray) -> np.ndarray:
    """A decoded CameraSeg image back to ids: its red channel, or a 1-channel image as is.

    Shape: (H, W) or (H, W, 3|4) BGR(A) uint8 -> (H, W) uint8. Raises ValueError for other
    channel counts.
    """
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, LABEL_CHANNEL])
    msg = (
        f'a label has {image.shape[2] if image.ndim == 3 else image.ndim} channels; it must be '
        'a 1-channel id image or a 3/4-channel PNG with the ids in the red channel'
    )
    raise ValueError(msg)


def write_pair(rgb_path: Path, label_path: Path, bgr: np.ndarray, ids: np.ndarray) -> None:
    """Write one image / label pair in the layout's format: (H, W, 3) BGR and (H, W) ids.

    Each file is written whole or not at all (a temporary, then a rename: a run killed at
    any moment leaves no half PNG under a final name). Raises OSError naming the file that
    could not be written.
    """
    from semseg_ros.staged_output import atomic_write_bytes

    for path, image, params in (
        (rgb_path, bgr, RGB_PNG_PARAMS),
        (label_path, label_image(ids), LABEL_PNG_PARAMS),
    ):
        ok, encoded = cv2.imencode('.png', image, params)
        if not ok:
            raise OSError(f'could not encode {path} as PNG')
        try:
            atomic_write_bytes(Path(path), encoded.tobytes())
        except OSError as err:
            msg = f'could not write {path} ({err}); check the disk space and permissions'
            raise OSError(msg) from err
