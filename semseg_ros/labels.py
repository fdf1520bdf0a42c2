"""Class sets: the one table of class ids, names and palette colours for the whole project.

Three CARLA generations are built in (docs/architecture.md, Class sets):

* ``lyft13``        CARLA 0.8 - 0.9.9, the Lyft-Udacity challenge dataset (13 classes)
* ``carla23``       CARLA 0.9.10 - 0.9.13, the version the released ROS bridge pins (23 classes)
* ``cityscapes29``  CARLA 0.9.14+, Cityscapes ids (29 classes)

Custom sets load from YAML (:func:`load_class_set`).  Every conversion here is a lookup
table applied with numpy fancy indexing: no Python loop ever runs per pixel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Value written for a colour that is not in the palette (:meth:`ClassSet.color_to_id`)
#: and for a source id that has no target in a mapping LUT.
UNKNOWN_ID = 255


class ClassSetError(ValueError):
    """A class set, colour or mapping is invalid; the message says which and how to fix it."""


@dataclass(frozen=True, eq=False)
class ClassSet:
    """An ordered set of classes: id ``i`` is ``names[i]`` drawn in ``colors[i]`` (RGB).

    Ids are dense from 0 and fit in a uint8 (at most 255 classes; 255 is reserved as
    :data:`UNKNOWN_ID`).
    """

    name: str
    names: tuple[str, ...]
    colors: np.ndarray  # (N, 3) uint8, RGB
    #: Per target set, ``{source class name: target class name}`` for names that differ.
    #: Classes absent from it map to the target class of the same name.
    maps_to: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        colors = np.asarray(self.colors)
        if colors.ndim != 2 or colors.shape[1] != 3:
            raise ClassSetError(
                f'class set {self.name!r}: colors must have shape (N, 3), got {colors.shape}'
            )
        if len(self.names) != len(colors):
            raise ClassSetError(
                f'class set {self.name!r}: {len(self.names)} names but {len(colors)} colours; '
                'give exactly one colour per class'
            )
        if not 1 <= len(self.names) < UNKNOWN_ID:
            raise ClassSetError(
                f'class set {self.name!r}: needs 1 to {UNKNOWN_ID - 1} classes, '
                f'got {len(self.names)}'
            )
        if np.any((colors < 0) | (colors > 255)):
            raise ClassSetError(f'class set {self.name!r}: colour components must be 0..255')
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ClassSetError(f'class set {self.name!r}: duplicate class names {duplicates}')
        keys = _pack_rgb(colors.astype(np.uint8))
        if len(np.unique(keys)) != len(keys):
            clash = [
                self.names[i] for i in range(len(keys)) if np.count_nonzero(keys == keys[i]) > 1
            ]
            raise ClassSetError(
                f'class set {self.name!r}: classes {clash} share a colour; colours must be '
                'unique so that a colour maps back to exactly one id'
            )
        frozen = colors.astype(np.uint8)
        frozen.setflags(write=False)
        object.__setattr__(self, 'colors', frozen)
        order = np.argsort(keys)
        object.__setattr__(self, '_sorted_keys', keys[order])
        object.__setattr__(self, '_sorted_ids', order.astype(np.uint8))
        lut = np.zeros((256, 3), np.uint8)
        lut[: len(frozen)] = frozen
        lut.setflags(write=False)
        object.__setattr__(self, '_palette_lut', lut)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f'ClassSet({self.name!r}, {len(self)} classes)'

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def palette_lut(self) -> np.ndarray:
        """(256, 3) uint8 RGB: row ``i`` is the colour of id ``i``; ids past the set are black."""
        return self._palette_lut  # type: ignore[attr-defined]

    def id_of(self, class_name: str) -> int:
        """The id of ``class_name``; raises :class:`ClassSetError` listing the valid names."""
        try:
            return self.names.index(class_name)
        except ValueError as err:
            msg = f'class set {self.name!r} has no class {class_name!r}; it has {list(self.names)}'
            raise ClassSetError(msg) from err

    def id_to_color(self, ids: np.ndarray) -> np.ndarray:
        """Colorize a class-id image. Shape: (...,) uint8 -> (..., 3) uint8 RGB."""
        ids = np.asarray(ids)
        if ids.dtype != np.uint8:
            ids = ids.astype(np.uint8)
        return self._palette_lut[ids]  # type: ignore[attr-defined]

    def color_to_id(self, rgb: np.ndarray, *, unknown: int = UNKNOWN_ID) -> np.ndarray:
        """Map palette colours back to ids. Shape: (..., 3) uint8 RGB -> (...,) uint8.

        Colours not in the palette become ``unknown`` (default 255), never a wrong class.
        """
        rgb = np.asarray(rgb)
        if rgb.shape[-1:] != (3,):
            raise ClassSetError(f'color_to_id expects (..., 3) RGB, got shape {rgb.shape}')
        ids = self._color_lut()[_pack_rgb(rgb)]  # (...,) uint8: one gather
        if unknown != UNKNOWN_ID:
            ids = np.where(ids == UNKNOWN_ID, np.uint8(unknown), ids)
        return ids

    def _color_lut(self) -> np.ndarray:
        """(2**24,) uint8: packed RGB -> id, UNKNOWN_ID elsewhere. 16 MB, built on first use:
        the node scores a ground-truth frame per camera frame, and a search over the palette
        (np.searchsorted) cost 20 ms of its 800x600 frame; the table costs ~4 ms."""
        lut = self.__dict__.get('_color_lut_table')
        if lut is None:
            lut = np.full(1 << 24, UNKNOWN_ID, np.uint8)
            lut[self._sorted_keys] = self._sorted_ids  # type: ignore[attr-defined]
            lut.setflags(write=False)
            object.__setattr__(self, '_color_lut_table', lut)
        return lut

    def to_dict(self) -> dict:
        """A plain-data description (for YAML files and model metadata)."""
        return {
            'name': self.name,
            'classes': [
                {'name': n, 'color': [int(c) for c in col]}
                for n, col in zip(self.names, self.colors, strict=True)
            ],
            **({'maps_to': {k: dict(v) for k, v in self.maps_to.items()}} if self.maps_to else {}),
        }


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...,) int32 key ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _build(name: str, table: list[tuple[str, tuple[int, int, int]]], maps_to=None) -> ClassSet:
    return ClassSet(
        name=name,
        names=tuple(n for n, _ in table),
        colors=np.array([c for _, c in table], np.uint8),
        maps_to=maps_to or {},
    )


# --- The built-in sets: the tables of docs/architecture.md, Class sets. ---------------------

_LYFT13 = [
    ('None', (0, 0, 0)),
    ('Buildings', (70, 70, 70)),
    ('Fences', (190, 153, 153)),
    ('Other', (72, 0, 90)),
    ('Pedestrians', (220, 20, 60)),
    ('Poles', (153, 153, 153)),
    ('RoadLines', (157, 234, 50)),
    ('Roads', (128, 64, 128)),
    ('Sidewalks', (244, 35, 232)),
    ('Vegetation', (107, 142, 35)),
    ('Vehicles', (0, 0, 255)),
    ('Walls', (102, 102, 156)),
    ('TrafficSigns', (220, 220, 0)),
]

# CARLA 0.9.10 kept ids 0-12 (with new colours for three of them) and added 13-22.
_CARLA23 = [
    ('None', (0, 0, 0)),
    ('Buildings', (70, 70, 70)),
    ('Fences', (100, 40, 40)),
    ('Other', (55, 90, 80)),
    ('Pedestrians', (220, 20, 60)),
    ('Poles', (153, 153, 153)),
    ('RoadLines', (157, 234, 50)),
    ('Roads', (128, 64, 128)),
    ('Sidewalks', (244, 35, 232)),
    ('Vegetation', (107, 142, 35)),
    ('Vehicles', (0, 0, 142)),
    ('Walls', (102, 102, 156)),
    ('TrafficSigns', (220, 220, 0)),
    ('Sky', (70, 130, 180)),
    ('Ground', (81, 0, 81)),
    ('Bridge', (150, 100, 100)),
    ('RailTrack', (230, 150, 140)),
    ('GuardRail', (180, 165, 180)),
    ('TrafficLight', (250, 170, 30)),
    ('Static', (110, 190, 160)),
    ('Dynamic', (170, 120, 50)),
    ('Water', (45, 60, 150)),
    ('Terrain', (145, 170, 100)),
]

# CARLA 0.9.14 renumbered to the Cityscapes ids.
_CITYSCAPES29 = [
    ('Unlabeled', (0, 0, 0)),
    ('Roads', (128, 64, 128)),
    ('Sidewalks', (244, 35, 232)),
    ('Buildings', (70, 70, 70)),
    ('Walls', (102, 102, 156)),
    ('Fences', (190, 153, 153)),
    ('Poles', (153, 153, 153)),
    ('TrafficLight', (250, 170, 30)),
    ('TrafficSigns', (220, 220, 0)),
    ('Vegetation', (107, 142, 35)),
    ('Terrain', (152, 251, 152)),
    ('Sky', (70, 130, 180)),
    ('Pedestrians', (220, 20, 60)),
    ('Rider', (255, 0, 0)),
    ('Car', (0, 0, 142)),
    ('Truck', (0, 0, 70)),
    ('Bus', (0, 60, 100)),
    ('Train', (0, 80, 100)),
    ('Motorcycle', (0, 0, 230)),
    ('Bicycle', (119, 11, 32)),
    ('Static', (110, 190, 160)),
    ('Dynamic', (170, 120, 50)),
    ('Other', (55, 90, 80)),
    ('Water', (45, 60, 150)),
    ('RoadLines', (157, 234, 50)),
    ('Ground', (81, 0, 81)),
    ('Bridge', (150, 100, 100)),
    ('RailTrack', (230, 150, 140)),
    ('GuardRail', (180, 165, 180)),
]

# --- Mappings between sets: {source name: target name} for the names that differ. ----------
# lyft13 is the coarsest set, so newer ground truth maps onto it for evaluating lyft13 models.
# The choices follow what CARLA 0.8 labelled these things: there was no sky, terrain or ground
# class (sky was None, grass Vegetation), guard rails were Fences and traffic lights were drawn
# with the signs.
_NEWER_TO_LYFT13 = {
    'Sky': 'None',
    'Ground': 'Other',
    'Bridge': 'Other',
    'RailTrack': 'Other',
    'GuardRail': 'Fences',
    'TrafficLight': 'TrafficSigns',
    'Static': 'Other',
    'Dynamic': 'Other',
    'Water': 'Other',
    'Terrain': 'Vegetation',
}
_CITYSCAPES_VEHICLES = ('Car', 'Truck', 'Bus', 'Train', 'Motorcycle', 'Bicycle')

_MAPS_TO: dict[str, dict[str, dict[str, str]]] = {
    'lyft13': {
        'carla23': {},
        'cityscapes29': {'None': 'Unlabeled', 'Vehicles': 'Car'},
    },
    'carla23': {
        'lyft13': dict(_NEWER_TO_LYFT13),
        'cityscapes29': {'None': 'Unlabeled', 'Vehicles': 'Car'},
    },
    'cityscapes29': {
        'lyft13': {
            **_NEWER_TO_LYFT13,
            'Unlabeled': 'None',
            'Rider': 'Pedestrians',
            **dict.fromkeys(_CITYSCAPES_VEHICLES, 'Vehicles'),
        },
        'carla23': {
            'Unlabeled': 'None',
            'Rider': 'Pedestrians',
            **dict.fromkeys(_CITYSCAPES_VEHICLES, 'Vehicles'),
        },
    },
}

BUILTIN_CLASS_SETS: dict[str, ClassSet] = {
    'lyft13': _build('lyft13', _LYFT13, _MAPS_TO['lyft13']),
    'carla23': _build('carla23', _CARLA23, _MAPS_TO['carla23']),
    'cityscapes29': _build('cityscapes29', _CITYSCAPES29, _MAPS_TO['cityscapes29']),
}

LYFT13 = BUILTIN_CLASS_SETS['lyft13']
CARLA23 = BUILTIN_CLASS_SETS['carla23']
CITYSCAPES29 = BUILTIN_CLASS_SETS['cityscapes29']


def get_class_set(name_or_path: str | Path | ClassSet) -> ClassSet:
    """A built-in set by name (``lyft13``, ``carla23``, ``cityscapes29``) or a YAML file."""
    if isinstance(name_or_path, ClassSet):
        return name_or_path
    key = str(name_or_path)
    if key in BUILTIN_CLASS_SETS:
        return BUILTIN_CLASS_SETS[key]
    if key.endswith(('.yaml', '.yml')) or Path(key).is_file():
        return load_class_set(key)
    msg = (
        f'unknown class set {key!r}: use one of {sorted(BUILTIN_CLASS_SETS)} '
        'or the path of a class-set YAML file'
    )
    raise ClassSetError(msg)


def class_set_from_dict(data: Mapping, *, source: str = '<dict>') -> ClassSet:
    """Build a set from ``{name, classes: [{name, color: [r, g, b]}, ...], maps_to?}``."""
    if not isinstance(data, Mapping) or 'name' not in data or 'classes' not in data:
        raise ClassSetError(
            f'{source}: a class set needs the keys "name" and "classes" '
            '(a list of {name: ..., color: [r, g, b]})'
        )
    classes = data['classes']
    if not isinstance(classes, list) or not classes:
        raise ClassSetError(f'{source}: "classes" must be a non-empty list')
    names, colors = [], []
    for i, entry in enumerate(classes):
        if not isinstance(entry, Mapping) or 'name' not in entry or 'color' not in entry:
            raise ClassSetError(
                f'{source}: class #{i} must be a mapping with "name" and "color", got {entry!r}'
            )
        color = entry['color']
        if (
            not isinstance(color, (list, tuple))
            or len(color) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        ):
            raise ClassSetError(
                f'{source}: class {entry["name"]!r} colour must be [r, g, b] with integers '
                f'0..255, got {color!r}'
            )
        names.append(str(entry['name']))
        colors.append(color)
    maps_to = data.get('maps_to') or {}
    if not isinstance(maps_to, Mapping) or not all(
        isinstance(v, Mapping) for v in maps_to.values()
    ):
        raise ClassSetError(
            f'{source}: "maps_to" must be {{target set: {{source class: target class}}}}'
        )
    try:
        return ClassSet(
            name=str(data['name']),
            names=tuple(names),
            colors=np.array(colors, np.uint8),
            maps_to={str(k): {str(a): str(b) for a, b in v.items()} for k, v in maps_to.items()},
        )
    except ClassSetError as err:
        raise ClassSetError(f'{source}: {err}') from err


def load_class_set(path: str | Path) -> ClassSet:
    """Load a custom class set from YAML (format: see ``config/class_sets/example.yaml``)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ClassSetError(f'class set file {path} does not exist') from err
    except yaml.YAMLError as err:
        raise ClassSetError(f'class set file {path} is not valid YAML: {err}') from err
    return class_set_from_dict(data, source=str(path))


def mapping_table(source: ClassSet, target: ClassSet) -> dict[str, str]:
    """``{source class name: target class name}`` for every source class.

    Uses the source set's ``maps_to[target.name]`` entries, then same-name matches.
    Raises :class:`ClassSetError` naming every source class that has no target.
    """
    if source.name == target.name and source.names == target.names:
        return {n: n for n in source.names}
    overrides = dict(source.maps_to.get(target.name, {}))
    table, missing = {}, []
    for name in source.names:
        dst = overrides.get(name, name)
        if dst in target.names:
            table[name] = dst
        else:
            missing.append(name)
    if missing:
        msg = (
            f'no mapping from {source.name} to {target.name} for classes {missing}; add them '
            f'under "maps_to: {{{target.name}: {{...}}}}" in the {source.name} class-set YAML'
        )
        raise ClassSetError(msg)
    return table


def mapping_lut(source: ClassSet, target: ClassSet) -> np.ndarray:
    """(256,) uint8 LUT: ``lut[source_id]`` is the target id; ids outside ``source`` stay 255.

    Apply it as ``lut[ids]`` (any shape, uint8).
    """
    lut = np.full(256, UNKNOWN_ID, np.uint8)
    for src_name, dst_name in mapping_table(source, target).items():
        lut[source.id_of(src_name)] = target.id_of(dst_name)
    return lut


def remap(ids: np.ndarray, source: ClassSet, target: ClassSet) -> np.ndarray:
    """Convert a class-id image from ``source`` ids to ``target`` ids (unknown ids -> 255)."""
    return mapping_lut(source, target)[np.asarray(ids, np.uint8)]
