"""The node's display parameters that change while it runs (``ros2 param set``).

``overlay_alpha``, ``color_encoding`` and ``highlight_classes`` only change how ``~/color``
and ``~/overlay`` look, so they are live; every other parameter shapes subscriptions, the
model or the scoring and is read-only (set at start). The adapter validates a change in its
``add_on_set_parameters_callback`` with :meth:`DisplaySettings.updated` (a refusal names the
value) and swaps the new, immutable :class:`DisplaySettings` in as one attribute: the worker
reads that attribute once per frame, so a frame never mixes old and new values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semseg_ros.labels import ClassSet
from semseg_ros.node.params import COLOR_ENCODINGS, ParamError, check_choice

#: Parameters that ``ros2 param set`` may change while the node runs.
LIVE_PARAMETERS = frozenset({'overlay_alpha', 'color_encoding', 'highlight_classes'})

LIVE_NOTE = ' Changes at run time (ros2 param set).'
READ_ONLY_NOTE = ' Read-only: set at start (params file, -p, launch); a change needs a restart.'


def ros_description(name: str, description: str) -> str:
    """The description the node declares: the table's, plus whether it changes live."""
    return description + (LIVE_NOTE if name in LIVE_PARAMETERS else READ_ONLY_NOTE)


def normalize_highlight(value: Any) -> tuple[str, ...]:
    """``highlight_classes`` as given (a list of names / ids, or one comma-separated string,
    as launch arguments pass it; None or empty = none) -> a tuple of stripped strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(',')
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        msg = (
            f'highlight_classes must be a list of class names or ids (or one comma-separated '
            f'string), got {value!r} ({type(value).__name__})'
        )
        raise ParamError(msg)
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            msg = f'highlight_classes: {item!r} is not a class name or id'
            raise ParamError(msg)
        text = str(item).strip()
        if text:
            out.append(text)
    return tuple(out)


def resolve_highlight(names: tuple[str, ...], palette: ClassSet) -> tuple[int, ...]:
    """Class names or ids of ``palette`` -> sorted unique ids; ParamError names a bad one."""
    lower = {name.lower(): k for k, name in enumerate(palette.names)}
    ids = set()
    for item in names:
        if item.lstrip('-').isdigit():
            class_id = int(item)
            if not 0 <= class_id < palette.num_classes:
                msg = (
                    f'highlight_classes: class id {class_id} is outside 0..'
                    f'{palette.num_classes - 1} of class set {palette.name}'
                )
                raise ParamError(msg)
            ids.add(class_id)
        elif item.lower() in lower:
            ids.add(lower[item.lower()])
        else:
            msg = (
                f'highlight_classes: no class {item!r} in class set {palette.name}; use one of '
                f'{", ".join(palette.names)} (or their ids)'
            )
            raise ParamError(msg)
    return tuple(sorted(ids))


def highlight_lut(palette: ClassSet, highlight: tuple[int, ...]) -> np.ndarray:
    """The palette's (256, 3) uint8 colour table with every class not in ``highlight`` turned
    to a light grey of its own brightness (all classes keep their colour when it is empty)."""
    lut = np.array(palette.id_to_color(np.arange(256, dtype=np.uint8)))  # (256, 3) RGB
    if not highlight:
        return lut
    grey = (lut.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) * 0.4 + 100
    others = np.ones(256, bool)
    others[list(highlight)] = False
    lut[others] = np.clip(grey[others], 0, 255).astype(np.uint8)[:, None]
    return lut


@dataclass(frozen=True, eq=False)
class DisplaySettings:
    """One consistent set of display values; replaced as a whole, never changed in place."""

    palette: ClassSet
    color_encoding: str = 'rgb8'
    overlay_alpha: float = 0.5
    highlight: tuple[int, ...] = ()  # class ids of ``palette``; empty = none highlighted
    #: (256, 3) uint8 RGB: ``lut[ids]`` is the colour mask (with the greying applied).
    lut: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice('color_encoding', self.color_encoding, COLOR_ENCODINGS)
        alpha = self.overlay_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            msg = f'overlay_alpha must be a number 0..1, got {alpha!r} ({type(alpha).__name__})'
            raise ParamError(msg)
        if not 0.0 <= alpha <= 1.0:
            raise ParamError(f'overlay_alpha {alpha} is outside 0..1: use e.g. 0.5')
        object.__setattr__(self, 'overlay_alpha', float(alpha))
        object.__setattr__(self, 'lut', highlight_lut(self.palette, self.highlight))

    @classmethod
    def create(
        cls,
        palette: ClassSet,
        *,
        color_encoding: str = 'rgb8',
        overlay_alpha: float = 0.5,
        highlight_classes: Any = (),
    ) -> DisplaySettings:
        """From parameter values (``highlight_classes`` as names or ids)."""
        highlight = resolve_highlight(normalize_highlight(highlight_classes), palette)
        return cls(palette, color_encoding, overlay_alpha, highlight)

    def updated(self, changes: Mapping[str, Any]) -> DisplaySettings:
        """A new snapshot with ``changes`` (live parameter name -> value) applied; ParamError
        (naming the value) when one is invalid. Names outside LIVE_PARAMETERS are ignored."""
        values: dict[str, Any] = {
            'color_encoding': self.color_encoding,
            'overlay_alpha': self.overlay_alpha,
            'highlight_classes': [str(k) for k in self.highlight],
        }
        values.update({k: v for k, v in changes.items() if k in LIVE_PARAMETERS})
        return DisplaySettings.create(self.palette, **values)

    def highlight_names(self) -> list[str]:
        return [self.palette.names[k] for k in self.highlight]

    def colorize(self, ids: np.ndarray) -> np.ndarray:
        """Colour mask. Shape: (H, W) uint8 ids -> (H, W, 3) uint8 RGB."""
        return self.lut[ids]
