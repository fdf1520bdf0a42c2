"""The Lyft-Udacity CARLA dataset layout: find episodes, pair files, read images and labels.

Layout (the Kaggle "lyft-udacity-challenge" dataset, the synthetic generator and the CARLA
collector all write it)::

    ROOT/dataA/CameraRGB/*.png    ROOT/dataA/CameraSeg/*.png     (flat)
    ROOT/dataA/dataA/CameraRGB    ROOT/dataA/dataA/CameraSeg     (nested Kaggle copies)
    ROOT/CameraRGB                ROOT/CameraSeg                 (root is the one episode)
    ROOT/dataset.json             optional: {"class_set": "lyft13", "image_size": [w, h], ...}

An RGB image and its label pair by file name. The label is the **red channel** of the
CameraSeg PNG (a single-channel PNG holds the ids directly). Labels are only ever resized
with nearest-neighbour (:func:`semseg_ros.pipeline.resize_label`), since any other
filter invents class ids.

This module is torch-free (numpy + OpenCV) so the data tools run without the trainer.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from semseg_ros.dataset_layout import DATASET_INFO, IMAGE_DIR, IMAGE_SUFFIX, LABEL_DIR, label_ids
from semseg_ros.labels import LYFT13, ClassSet, ClassSetError, class_set_from_dict, get_class_set

#: Class names that count as a vehicle for hood removal. lyft13 and carla23 have one
#: 'Vehicles' class; cityscapes29 (CARLA 0.9.14+) splits it, and the ego vehicle may be any
#: of these. 'Rider' is a person on a vehicle, not the vehicle, so it is not listed.
VEHICLE_CLASS_NAMES = ('Vehicles', 'Car', 'Truck', 'Bus', 'Train', 'Motorcycle', 'Bicycle')
#: Class names that mean "no class" (id 0 in every built-in set), the first one present wins.
BACKGROUND_CLASS_NAMES = ('None', 'Unlabeled')

# Every PNG ends with this exact chunk: length 0, type IEND, CRC. A file without it was cut
# short (interrupted download or copy). OpenCV 5 rejects such a file (imdecode -> None),
# older builds returned a half-grey image; checking the bytes names the cause either way.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_IEND = b'\x00\x00\x00\x00IEND\xaeB`\x82'


class DatasetError(ValueError):
    """A dataset file or folder is missing or invalid; the message names it and the fix.

    ``kind`` is a short machine-readable tag (``missing``, ``unreadable``, ``truncated``,
    ``channels``, ``depth``, ``size_mismatch``, ``values``, ``layout``, ``info``) and
    ``path`` the offending file, so that ``semseg data check`` can group problems.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, kind: str = 'invalid'):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.kind = kind


# --- Finding and pairing files -------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Sample:
    """One RGB image and its label. ``name`` is the shared file stem (``'00042'``)."""

    rgb: Path
    label: Path
    episode: str
    name: str


@dataclass
class ScanResult:
    """What :func:`scan_dataset` found under a root."""

    root: Path
    #: Paired samples, sorted by (episode, name).
    samples: list[Sample]
    #: PNGs that have no partner of the same name on the other side, sorted.
    unpaired: list[Path]
    #: Anything else inside CameraRGB/CameraSeg (not a ``.png`` file), sorted.
    ignored: list[Path] = field(default_factory=list)
    #: Episode name -> (rgb_dir, seg_dir), as :func:`find_episodes` returns it.
    episodes: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def episode_counts(self) -> dict[str, int]:
        """Pairs per episode, every episode listed (0 for an empty one)."""
        counts = dict.fromkeys(self.episodes, 0)
        for sample in self.samples:
            counts[sample.episode] = counts.get(sample.episode, 0) + 1
        return counts


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        what = 'is not a directory' if root.exists() else 'does not exist'
        msg = (
            f'dataset root {root} {what}; pass the folder that holds dataA..dataE '
            f'(or {IMAGE_DIR}/ and {LABEL_DIR}/)'
        )
        raise DatasetError(msg, path=root, kind='layout')


def find_episodes(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """Every folder under ``root`` (``root`` included) holding CameraRGB/ and/or CameraSeg/.

    Returns ``{episode name: (rgb_dir, seg_dir)}`` sorted by name. The name is the folder's
    own name (``dataA`` for both ``root/dataA`` and the nested ``root/dataA/dataA``; the
    root's own name when root is the episode). If two folders share a name, both are named
    by their path relative to root instead. A side that is absent is still returned (its
    path does not exist) so its partner's files show up as unpaired rather than vanish.
    """
    root = Path(root)
    _require_dir(root)
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop, or the same folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        if IMAGE_DIR in dirnames or LABEL_DIR in dirnames:
            found.append(Path(dirpath))
        # Never descend into the image folders (thousands of files) or hidden folders.
        dirnames[:] = sorted(
            d for d in dirnames if d not in (IMAGE_DIR, LABEL_DIR) and d[0] != '.'
        )
    names: dict[Path, str] = {}
    for folder in found:
        names[folder] = (root.absolute().name or '.') if folder == root else folder.name
    counts = Counter(names.values())
    for folder, name in names.items():
        if counts[name] > 1:  # relative paths are unique; '.' is the root itself
            names[folder] = folder.relative_to(root).as_posix()
    return {
        name: (folder / IMAGE_DIR, folder / LABEL_DIR)
        for folder, name in sorted(names.items(), key=lambda item: item[1])
    }


def _list_dir(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """``({stem: png path}, [other entries])`` of one image folder (missing folder: empty)."""
    pngs: dict[str, Path] = {}
    other: list[Path] = []
    if not folder.is_dir():
        return pngs, other
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() == IMAGE_SUFFIX:
            pngs[entry.stem] = entry
        else:
            other.append(entry)
    return pngs, other


def scan_dataset(root: str | Path) -> ScanResult:
    """Find all episodes under ``root`` and pair their files by name.

    Nothing is dropped silently: every entry of every CameraRGB/CameraSeg folder ends up in
    ``samples``, ``unpaired`` or ``ignored``. Files are listed, not opened.
    """
    root = Path(root)
    episodes = find_episodes(root)
    samples: list[Sample] = []
    unpaired: list[Path] = []
    ignored: list[Path] = []
    for episode, (rgb_dir, seg_dir) in episodes.items():
        rgbs, rgb_other = _list_dir(rgb_dir)
        segs, seg_other = _list_dir(seg_dir)
        ignored += rgb_other + seg_other
        for stem in sorted(rgbs.keys() & segs.keys()):
            samples.append(Sample(rgbs[stem], segs[stem], episode, stem))
        unpaired += [rgbs[s] for s in rgbs.keys() - segs.keys()]
        unpaired += [segs[s] for s in segs.keys() - rgbs.keys()]
    samples.sort(key=lambda s: (s.episode, s.name))
    return ScanResult(root, samples, sorted(unpaired), sorted(ignored), episodes)


def read_dataset_info(root: str | Path) -> dict[str, Any]:
    """The contents of ``root/dataset.json``, or ``{}`` when there is none (Kaggle copies)."""
    path = Path(root) / DATASET_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f'{path} is not readable JSON ({err}); fix or delete it'
        raise DatasetError(msg, path=path, kind='info') from err
    if not isinstance(info, dict):
        msg = f'{path} must hold a JSON object, got {type(info).__name__}; fix or delete it'
        raise DatasetError(msg, path=path, kind='info')
    return info


def dataset_class_set(root: str | Path, default: str | ClassSet = 'lyft13') -> ClassSet:
    """The class set ``root/dataset.json`` declares (a name, YAML path or inline definition).

    Falls back to ``default`` when there is no dataset.json or it names no class set (the
    Kaggle dataset has none and is lyft13).
    """
    info = read_dataset_info(root)
    declared = info.get('class_set')
    if declared is None:
        return get_class_set(default)
    source = str(Path(root) / DATASET_INFO)
    try:
        if isinstance(declared, dict):
            return class_set_from_dict(declared, source=source)
        return get_class_set(str(declared))
    except ClassSetError as err:
        msg = f'{source}: "class_set" is invalid: {err}'
        raise DatasetError(msg, path=source, kind='info') from err


# --- Reading images and labels -------------------------------------------------------------


def _read_image(path: str | Path) -> np.ndarray:
    """Decode an image file as stored (any channel count), with errors that name the cause."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        msg = f'{path} does not exist; restore it, or re-run the scan if it was deleted'
        raise DatasetError(msg, path=path, kind='missing') from err
    except OSError as err:
        msg = f'{path} cannot be read ({err.strerror}); check its permissions and the disk'
        raise DatasetError(msg, path=path, kind='unreadable') from err
    if not data:
        msg = f'{path} is empty (0 bytes); re-extract or re-download it, or delete the pair'
        raise DatasetError(msg, path=path, kind='truncated')
    if data.startswith(_PNG_SIGNATURE) and not data.endswith(_PNG_IEND) and _PNG_IEND not in data:
        msg = (
            f'{path} is a truncated PNG ({len(data)} bytes, no IEND chunk: the file was cut '
            'short); re-extract or re-download it, or delete the pair'
        )
        raise DatasetError(msg, path=path, kind='truncated')
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        image = None
        cause = f': {err}'
    else:
        cause = ''
    if image is None:
        msg = (
            f'{path} is not a readable image (OpenCV could not decode it{cause}); '
            're-extract or re-download it, or delete the pair'
        )
        raise DatasetError(msg, path=path, kind='unreadable')
    if image.dtype != np.uint8:
        msg = (
            f'{path} has {image.dtype} pixels; images and labels must be 8-bit PNGs '
            '(convert it, e.g. with cv2.imwrite after .astype(np.uint8))'
        )
        raise DatasetError(msg, path=path, kind='depth')
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a camera image. Shape: (H, W, 3) uint8, **RGB** order (OpenCV's BGR is swapped).

    A 4-channel PNG (BGRA, as the CARLA bridge publishes) loses its alpha channel.
    """
    image = _read_image(path)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    msg = (
        f'{path} has {channels} channel(s); a camera image needs 3 (RGB) or 4 (RGBA). Is it '
        f'a label in the {IMAGE_DIR} folder?'
    )
    raise DatasetError(msg, path=path, kind='channels')


def read_label(path: str | Path) -> np.ndarray:
    """Read a label. Shape: (H, W) uint8 class ids.

    The ids are the red channel of a colour PNG (OpenCV's channel 2); a single-channel PNG
    holds the ids directly.
    """
    image = _read_image(path)
    try:
        return label_ids(image)
    except ValueError as err:
        raise DatasetError(f'{path}: {err}', path=path, kind='channels') from err


# --- Label preprocessing -------------------------------------------------------------------


def _check_rows(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        what = 'a non-negative int or None' if allow_none else 'a non-negative int'
        raise ValueError(f'LabelTransform.{name} must be {what} (rows), got {value!r}')


@dataclass(frozen=True)
class LabelTransform:
    """The label preprocessing of the Lyft challenge, by class name so any class set works.

    * ``merge_roadlines``: RoadLines becomes Roads (the challenge scores them as one class).
    * ``hood_row``: vehicle pixels (:data:`VEHICLE_CLASS_NAMES`) at rows >= ``hood_row``
      become the background class (None / Unlabeled): the ego car's hood, ~row 496 of 600.
      Rows count in the original, uncropped image.
    * ``crop_top`` / ``crop_bottom``: rows removed from the top / bottom of both the image
      (:meth:`crop`) and the label (:meth:`apply` crops after relabelling).
    """

    merge_roadlines: bool = False
    hood_row: int | None = None
    crop_top: int = 0
    crop_bottom: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.merge_roadlines, (bool, np.bool_)):
            msg = (
                'LabelTransform.merge_roadlines must be true or false, '
                f'got {self.merge_roadlines!r}'
            )
            raise ValueError(msg)
        _check_rows('hood_row', self.hood_row, allow_none=True)
        _check_rows('crop_top', self.crop_top)
        _check_rows('crop_bottom', self.crop_bottom)

    @property
    def is_identity(self) -> bool:
        return (
            not self.merge_roadlines
            and self.hood_row is None
            and self.crop_top == 0
            and self.crop_bottom == 0
        )

    def lookup_tables(self, class_set: ClassSet | str = LYFT13) -> tuple[np.ndarray, np.ndarray]:
        """(256,) uint8 LUTs ``(above_hood, hood)``: the id map above and below ``hood_row``.

        Raises :class:`ValueError` naming the missing class when the set lacks one it needs.
        """
        class_set = get_class_set(class_set)
        lut = np.arange(256, dtype=np.uint8)
        if self.merge_roadlines:
            missing = [n for n in ('RoadLines', 'Roads') if n not in class_set.names]
            if missing:
                msg = (
                    f'merge_roadlines needs classes RoadLines and Roads, but class set '
                    f'{class_set.name!r} lacks {missing}; turn merge_roadlines off for it'
                )
                raise ValueError(msg)
            lut[class_set.id_of('RoadLines')] = class_set.id_of('Roads')
        hood_lut = lut.copy()
        if self.hood_row is not None:
            vehicles = [class_set.id_of(n) for n in VEHICLE_CLASS_NAMES if n in class_set.names]
            background = [n for n in BACKGROUND_CLASS_NAMES if n in class_set.names]
            if not vehicles or not background:
                msg = (
                    f'hood removal needs a vehicle class (one of {list(VEHICLE_CLASS_NAMES)}) '
                    f'and a background class (one of {list(BACKGROUND_CLASS_NAMES)}); class '
                    f'set {class_set.name!r} has {list(class_set.names)}; set hood_row to None'
                )
                raise ValueError(msg)
            hood_lut[vehicles] = class_set.id_of(background[0])
        return lut, hood_lut

    def _crop_rows(self, array: np.ndarray, what: str) -> np.ndarray:
        height = array.shape[0]
        if self.crop_top + self.crop_bottom >= height:
            msg = (
                f'crop_top={self.crop_top} + crop_bottom={self.crop_bottom} removes all '
                f'{height} rows of the {what}; crop fewer rows'
            )
            raise ValueError(msg)
        return array[self.crop_top : height - self.crop_bottom]

    def crop(self, image: np.ndarray) -> np.ndarray:
        """Remove ``crop_top``/``crop_bottom`` rows. Shape: (H, W, ...) -> (H - t - b, W, ...)."""
        return self._crop_rows(np.asarray(image), 'image')

    def apply(self, label: np.ndarray, class_set: ClassSet | str = LYFT13) -> np.ndarray:
        """Relabel (merge, hood) then crop. Shape: (H, W) uint8 -> (H - t - b, W) uint8."""
        label = np.asarray(label)
        if label.ndim != 2 or label.dtype != np.uint8:
            msg = (
                'LabelTransform.apply expects an (H, W) uint8 id image, '
                f'got {label.dtype} {label.shape}'
            )
            raise ValueError(msg)
        if self.merge_roadlines or self.hood_row is not None:
            lut, hood_lut = self.lookup_tables(class_set)
            label = lut[label]
            if self.hood_row is not None and self.hood_row < label.shape[0]:
                label[self.hood_row :] = hood_lut[label[self.hood_row :]]
        return self._crop_rows(label, 'label')


def load_pair(
    sample: Sample,
    transform: LabelTransform | None = None,
    class_set: ClassSet | str = LYFT13,
    *,
    validate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one sample as ``(rgb, label)``: (H, W, 3) uint8 RGB and (H, W) uint8 ids.

    The two must have the same size. With ``validate`` (default) an id outside the class set
    raises :class:`DatasetError` here, instead of an opaque index error deep in the loss.
    ``transform`` crops both and relabels the label.
    """
    class_set = get_class_set(class_set)
    rgb = read_rgb(sample.rgb)
    label = read_label(sample.label)
    if rgb.shape[:2] != label.shape:
        msg = (
            f'{sample.rgb} is {rgb.shape[1]}x{rgb.shape[0]} but its label {sample.label} is '
            f'{label.shape[1]}x{label.shape[0]}; they must match (run `semseg data check`)'
        )
        raise DatasetError(msg, path=sample.label, kind='size_mismatch')
    if validate:
        top = int(label.max())
        if top >= class_set.num_classes:
            bad = np.unique(label[label >= class_set.num_classes])
            msg = (
                f'{sample.label} holds ids {bad.tolist()} outside class set {class_set.name!r} '
                f'(ids 0..{class_set.num_classes - 1}); is this the right class set? '
                '(run `semseg data check` to list all such files)'
            )
            raise DatasetError(msg, path=sample.label, kind='values')
    if transform is not None and not transform.is_identity:
        rgb = transform.crop(rgb)
        label = transform.apply(label, class_set)
    return rgb, label
