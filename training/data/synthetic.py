"""Synthetic CARLA-like street scenes, written in the Lyft-Udacity layout.

The real dataset (Kaggle "lyft-udacity-challenge") cannot be downloaded everywhere, so this
module draws look-alike frames: a pinhole camera at about 1.6 m looking down a generated
street with road, lane markings, sidewalks, buildings, walls, fences, trees, poles, signs,
cars, pedestrians, clutter and the ego hood, in the ``lyft13`` class set.

How a frame is made (one code path for single frames and for drives):

1. A *world* is a flat list of convex 3D polygons, each with a material slot (uint8) and a
   painter's sort key (layer, depth, sequence). Materials map to a colour and a lyft13 id.
2. A camera pose at time ``t`` projects them (near-plane clipping, back-face culling) and
   ``cv2.fillConvexPoly`` paints the slots far-to-near into a material map with
   ``LINE_8`` (no anti-aliasing).
3. ``label = class_of[material]`` and ``image = colour_of[material]`` + texture + camera
   effects. The label and the image come from the same painted pixels, so they agree
   exactly; fog, rain, blur and noise touch only the image, as a real camera does.

Output layout (``generate_dataset``)::

    OUT/dataA/CameraRGB/000000.png  OUT/dataA/CameraSeg/000000.png  ... through dataE
    OUT/sequence/CameraRGB, OUT/sequence/CameraSeg                   (sequence mode)
    OUT/dataset.json

The label PNG is 3-channel with the class id in the red channel (G = B = 0), like CARLA's.
Every frame is a pure function of ``(seed, index)``: any frame can be regenerated alone and
reruns give identical bytes. Torch-free: numpy and OpenCV only.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from semseg_ros.dataset_layout import (
    DATASET_INFO,
    EPISODES,
    HOOD_ROW,
    IMAGE_DIR,
    LABEL_DIR,
    REFERENCE_HEIGHT,
    write_pair,
)
from semseg_ros.labels import LYFT13
from semseg_ros.staged_output import StagedEntries, recover

GENERATOR_VERSION = 1

_ID = {name: LYFT13.id_of(name) for name in LYFT13.names}
NONE, BUILDINGS, FENCES, OTHER = _ID['None'], _ID['Buildings'], _ID['Fences'], _ID['Other']
PEDESTRIANS, POLES, ROADLINES, ROADS = (
    _ID['Pedestrians'],
    _ID['Poles'],
    _ID['RoadLines'],
    _ID['Roads'],
)
SIDEWALKS, VEGETATION, VEHICLES, WALLS = (
    _ID['Sidewalks'],
    _ID['Vegetation'],
    _ID['Vehicles'],
    _ID['Walls'],
)
TRAFFIC_SIGNS = _ID['TrafficSigns']

# Seed-sequence tags keep the random-frame and drive streams apart for the same seed.
_TAG_FRAME, _TAG_DRIVE = 1, 2
_K = 8  # vertices per stored polygon; smaller polygons repeat their last vertex
_SHIFT = 2  # fillConvexPoly sub-pixel bits: quarter-pixel vertices, still no anti-aliasing
_NEAR = 0.25  # near clipping plane, metres


class SynthError(ValueError):
    """Invalid generator settings or output folder; the message names the value and the fix."""


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the generator. Geometry is in metres, so it scales with the image size."""

    width: int = 800
    height: int = 600
    #: First row that is all hood at ``height == 600``; scaled for other heights.
    hood_row: int = HOOD_ROW
    fov_deg: float = 90.0  # CARLA's default camera (and the Lyft data's)
    camera_height: float = 1.6
    draw_distance: float = 180.0
    fog_prob: float = 0.12
    rain_prob: float = 0.18
    blur_prob: float = 0.3
    overcast_prob: float = 0.25
    #: False: flat material colours only (no texture, sky gradient, weather, blur or noise).
    effects: bool = True
    speed_mps: float = 10.0  # sequence mode: ego speed (0.5 m per frame at 20 Hz)
    fps: float = 20.0

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 48:
            msg = f'image size {self.width}x{self.height} is too small; use at least 64x48'
            raise SynthError(msg)
        if not 0 < self.hood_row <= REFERENCE_HEIGHT:
            msg = f'hood_row {self.hood_row} must be in 1..{REFERENCE_HEIGHT} (rows of 600)'
            raise SynthError(msg)
        for name in ('fog_prob', 'rain_prob', 'blur_prob', 'overcast_prob'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SynthError(f'{name} must be a probability in 0..1, got {value}')
        if not 20.0 <= self.fov_deg <= 150.0:
            raise SynthError(f'fov_deg must be in 20..150 degrees, got {self.fov_deg}')
        if self.speed_mps < 0 or self.fps <= 0:
            msg = f'speed_mps must be >= 0 and fps > 0, got {self.speed_mps}, {self.fps}'
            raise SynthError(msg)

    @property
    def hood_row_px(self) -> int:
        """First all-hood row at this image height."""
        return round(self.hood_row * self.height / REFERENCE_HEIGHT)

    @property
    def focal_px(self) -> float:
        return self.width / 2 / math.tan(math.radians(self.fov_deg) / 2)


# --- materials ------------------------------------------------------------------------------

# Face orientations of solids, in the order _solid returns them; shading is per orientation.
_MINUS_X, _PLUS_X, _TOP, _FRONT, _BACK = range(5)


class _Materials:
    """Materials of a world: colour (RGB float), lyft13 id and texture amplitude.

    A world may use any number of them; each frame packs the ones it shows into the 256
    values of its uint8 material map (:func:`_render`).
    """

    def __init__(self, shade: np.ndarray):
        self.shade = shade  # (5,) brightness per face orientation (sun side, sky light)
        self._keys: dict[tuple, int | np.ndarray] = {}
        self._rows: list[tuple[np.ndarray, int, int]] = []

    def flat(self, cls: int, rgb: Sequence[float], amp: int = 12) -> int:
        r, g, b = (min(max(round(float(c)), 0), 255) for c in rgb)
        key = (cls, r, g, b, amp)
        slot = self._keys.get(key)
        if slot is None:
            slot = self._keys[key] = len(self._rows)
            self._rows.append(((r, g, b), cls, amp))
        return slot

    def shaded(self, cls: int, rgb: Sequence[float], amp: int = 12) -> np.ndarray:
        """(5,) materials: ``rgb`` lit for each face orientation of a solid."""
        key = ('shaded', cls, *(float(c) for c in rgb), amp)
        slots = self._keys.get(key)
        if slots is None:
            base = np.asarray(rgb, np.float32)
            slots = np.array([self.flat(cls, base * s, amp) for s in self.shade], np.int32)
            self._keys[key] = slots
        return slots

    def freeze(self) -> None:
        """Pack into arrays ``rgb`` (M, 3) float32, ``cls`` (M,) uint8, ``amp`` (M,) int16."""
        self.rgb = np.array([r[0] for r in self._rows], np.float32)
        self.cls = np.array([r[1] for r in self._rows], np.uint8)
        self.amp = np.array([r[2] for r in self._rows], np.int16)


# --- geometry -------------------------------------------------------------------------------


def _pad(polys: np.ndarray) -> np.ndarray:
    """(n, k, 3) -> (n, 8, 3), repeating the last vertex (harmless for filling and clipping)."""
    k = polys.shape[1]
    if k == _K:
        return polys
    return polys[:, np.minimum(np.arange(_K), k - 1), :]


_BOX_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], np.float64)


def _solid(x0, x1, y0, y1, z0, z1, inset_x=0.0, inset_front=0.0, inset_back=0.0):
    """A box (or a frustum when insets are given): 5 faces (no bottom) and their normals.

    Faces in the order -x, +x, top, front (-z), back (+z). Shape: (5, 8, 3), (5, 3). The
    normals are the box's even for a frustum: they only decide culling, and the insets
    used here (car cabins) are too small to change which faces the camera sees.
    """
    a0, a1 = x0 + inset_x, x1 - inset_x
    c0, c1 = z0 + inset_front, z1 - inset_back
    b0, b1, b2, b3 = (x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1)
    t0, t1, t2, t3 = (a0, y1, c0), (a1, y1, c0), (a1, y1, c1), (a0, y1, c1)
    faces = np.array(
        [
            [b0, b3, t3, t0, t0, t0, t0, t0],
            [b1, b2, t2, t1, t1, t1, t1, t1],
            [t0, t1, t2, t3, t3, t3, t3, t3],
            [b0, b1, t1, t0, t0, t0, t0, t0],
            [b3, b2, t2, t3, t3, t3, t3, t3],
        ],
        np.float64,
    )
    return faces, _BOX_NORMALS


def _rects(axis: int, c, a0, a1, b0, b1) -> np.ndarray:
    """Axis-aligned rectangles in the plane ``coord[axis] = c``, spanning ``a0..a1`` on the
    next axis and ``b0..b1`` on the one after (cyclic x, y, z). Broadcasting -> (n, 4, 3).
    """
    c, a0, a1, b0, b1 = np.broadcast_arrays(c, a0, a1, b0, b1)
    out = np.empty((c.size, 4, 3))
    ia, ib = (axis + 1) % 3, (axis + 2) % 3
    out[:, :, axis] = c.reshape(-1, 1)
    out[:, 0, ia], out[:, 1, ia], out[:, 2, ia], out[:, 3, ia] = (
        a0.ravel(),
        a1.ravel(),
        a1.ravel(),
        a0.ravel(),
    )
    out[:, 0, ib], out[:, 1, ib], out[:, 2, ib], out[:, 3, ib] = (
        b0.ravel(),
        b0.ravel(),
        b1.ravel(),
        b1.ravel(),
    )
    return out


def _rect_x(x, z0, z1, y0, y1) -> np.ndarray:
    """Rectangles in the plane x = const (facades). Broadcasting -> (n, 4, 3)."""
    return _rects(0, x, y0, y1, z0, z1)


def _rect_z(z, x0, x1, y0, y1) -> np.ndarray:
    """Rectangles in the plane z = const (facing the camera). Broadcasting -> (n, 4, 3)."""
    return _rects(2, z, x0, x1, y0, y1)


def _rect_y(y, x0, x1, z0, z1) -> np.ndarray:
    """Rectangles in the plane y = const (ground). Broadcasting -> (n, 4, 3)."""
    return _rects(1, y, z0, z1, x0, x1)


_OCTAGON = np.exp(1j * (np.arange(8) * np.pi / 4 + np.pi / 8))


def _disc_z(cx, cy, z, rx, ry) -> np.ndarray:
    """An octagon (ellipse) in the plane z = const, facing the camera. Shape: (1, 8, 3)."""
    out = np.empty((1, 8, 3))
    out[0, :, 0] = cx + rx * _OCTAGON.real
    out[0, :, 1] = cy + ry * _OCTAGON.imag
    out[0, :, 2] = z
    return out


_UP = np.array([0.0, 1.0, 0.0])
_MINUS_Z = np.array([0.0, 0.0, -1.0])

# Painter's layers, drawn in this order; within a layer far-to-near by the object's depth.
_L_TERRAIN, _L_YARD, _L_ROAD, _L_ROAD_DETAIL, _L_SIDEWALK, _L_MARKING = 0, 1, 2, 3, 4, 5
_L_BACKROW, _L_LOTS, _L_CORRIDOR = 10, 11, 12


class _Scene:
    """Accumulates polygons of a world; ``finish`` packs them into flat arrays."""

    def __init__(self) -> None:
        self.parts: list[tuple] = []

    def add(
        self,
        polys: np.ndarray,
        slots,
        *,
        layer: int,
        zkey: float = 0.0,
        normals=None,
        batch: bool = False,
        vz: float = 0.0,
        osc=None,
        phase: float = 0.0,
        omega: float = 0.0,
    ) -> None:
        """Add polygons. ``batch``: they never overlap, so they may share one fill call.

        ``vz`` (m/s) moves them along the street; ``osc`` (3,) amplitude swings them by
        ``osc * sin(omega t + phase)`` (walking legs and arms).
        """
        polys = np.asarray(polys, np.float64)
        if polys.ndim == 2:
            polys = polys[None]
        n = len(polys)
        if n == 0:
            return
        if polys.shape[1] != _K:
            polys = _pad(polys)
        # Per-call values stay scalars here and are expanded once in finish(): a world has
        # thousands of small calls and per-call numpy overhead would dominate.
        motion = (vz, *(osc if osc is not None else (0.0, 0.0, 0.0)), phase, omega)
        self.parts.append((polys, slots, normals, layer, zkey, batch, motion))

    def add_solid(self, solid, slots5: np.ndarray, **kw) -> None:
        faces, normals = solid
        self.add(faces, slots5, normals=normals, **kw)

    def finish(self) -> _Geometry:
        polys = np.concatenate([p[0] for p in self.parts])
        counts = np.array([len(p[0]) for p in self.parts])
        slot = np.concatenate([np.broadcast_to(p[1], (len(p[0]),)) for p in self.parts])
        normal = np.zeros((len(polys), 3))
        offset = 0
        for p, n in zip(self.parts, counts, strict=True):
            if p[2] is not None:
                normal[offset : offset + n] = p[2]
            offset += n
        batch = np.array([p[5] for p in self.parts])
        # A batch call is one group; otherwise every polygon is its own group.
        sizes = np.where(batch, 1, counts)  # group ids each call takes
        first = np.cumsum(sizes) - sizes
        within = np.arange(len(polys)) - np.repeat(np.cumsum(counts) - counts, counts)
        group = np.repeat(first, counts) + np.where(np.repeat(batch, counts), 0, within)
        return _Geometry(
            polys=polys,
            slot=slot.astype(np.int32),
            normal=normal,
            layer=np.repeat(np.array([p[3] for p in self.parts], np.int32), counts),
            zkey=np.repeat(np.array([p[4] for p in self.parts], np.float64), counts),
            seq=np.arange(len(polys)),
            group=group,
            motion=np.repeat(np.array([p[6] for p in self.parts], np.float64), counts, axis=0),
            zmin=polys[..., 2].min(1),
            zmax=polys[..., 2].max(1),
        )


@dataclass
class _Geometry:
    polys: np.ndarray  # (N, 8, 3) world metres: x right, y up, z forward along the street
    slot: np.ndarray  # (N,) material slot
    normal: np.ndarray  # (N, 3) outward normal, zero = never culled (billboards, ground)
    layer: np.ndarray  # (N,) painter's layer
    zkey: np.ndarray  # (N,) object depth key: objects are drawn far (large z) to near
    seq: np.ndarray  # (N,) insertion order: order of parts within an object
    group: np.ndarray  # (N,) polygons sharing a group never overlap and may share a fill call
    motion: np.ndarray  # (N, 6) vz, osc x/y/z, phase, omega
    zmin: np.ndarray  # (N,) at t = 0
    zmax: np.ndarray


# --- look: lighting and weather -------------------------------------------------------------


@dataclass
class _Look:
    gain: np.ndarray  # (3,) brightness x colour temperature
    shade: np.ndarray  # (5,) per face orientation
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    fog: float  # visibility in metres, 0 = clear
    fog_rgb: np.ndarray
    rain: bool
    blur_sigma: float
    noise: int  # sensor noise amplitude added to every material's texture amplitude
    tex_offset: tuple[int, int]


def _sample_look(rng: np.random.Generator, cfg: SynthConfig) -> _Look:
    # A fixed number of draws whatever the settings: the street that follows must not
    # change with the image size or with effects on/off.
    u = rng.random(16)

    def between(k: int, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * u[k])

    brightness = between(0, 0.78, 1.18)
    temp = between(1, -1.0, 1.0)
    gain = brightness * np.array([1 + 0.07 * temp, 1.0, 1 - 0.09 * temp], np.float32)
    strength = between(2, 0.12, 0.42)
    lit, dark = 1.0, 1.0 - strength
    sun_left = u[3] < 0.5  # sunlit faces: those facing -x when the sun is on the left
    shade = np.array(
        [lit if sun_left else dark, dark if sun_left else lit, 1.08, 1 - strength / 2, dark],
        np.float32,
    )
    rain = bool(cfg.effects and u[4] < cfg.rain_prob)
    fog = between(5, 45, 160) if cfg.effects and u[6] < cfg.fog_prob else 0.0
    if rain or fog or u[7] < cfg.overcast_prob:
        grey = between(8, 150, 200)
        sky_top = np.array([grey - 12, grey - 6, grey + 4], np.float32)
        sky_horizon = np.array([grey + 18, grey + 20, grey + 22], np.float32)
        shade = 1 - (1 - shade) * 0.35  # diffuse light: faces differ less
    else:
        sky_top = np.array([between(8, 40, 95), between(9, 100, 145), between(10, 190, 235)])
        sky_horizon = np.array([between(11, 170, 205), between(12, 195, 220), 235.0])
    blur = between(13, 0.5, 1.3) if cfg.effects and u[14] < cfg.blur_prob else 0.0
    return _Look(
        gain=gain,
        shade=shade,
        sky_top=np.asarray(sky_top, np.float32),
        sky_horizon=np.asarray(sky_horizon, np.float32),
        fog=fog,
        fog_rgb=np.array([198, 200, 204], np.float32) * brightness,
        rain=rain,
        blur_sigma=blur,
        noise=2 + int(4 * u[15]) if cfg.effects else 0,
        tex_offset=(int(u[15] * 7919) % cfg.height, int(u[13] * 104729) % cfg.width),
    )


# --- world building -------------------------------------------------------------------------

_BUILDING_RGB = np.array(
    [
        [196, 180, 150], [168, 92, 70], [140, 140, 138], [214, 208, 196], [120, 96, 80],
        [176, 160, 132], [150, 110, 90], [110, 118, 128], [200, 170, 120], [180, 186, 190],
        [132, 70, 56], [90, 92, 96],
    ],
    np.float32,
)  # fmt: skip
_CAR_RGB = np.array(
    [
        [225, 225, 228], [30, 30, 34], [150, 152, 158], [170, 28, 30], [30, 60, 140],
        [40, 80, 60], [220, 180, 40], [100, 104, 110], [90, 30, 40], [200, 200, 190],
    ],
    np.float32,
)  # fmt: skip
_CLOTH_RGB = np.array(
    [
        [40, 44, 60], [180, 30, 40], [220, 220, 215], [60, 90, 150], [30, 30, 30],
        [120, 100, 70], [70, 120, 70], [200, 160, 60], [110, 110, 120], [150, 70, 120],
    ],
    np.float32,
)  # fmt: skip
_SKIN_RGB = np.array([[224, 180, 150], [190, 140, 105], [140, 95, 65], [95, 65, 45]], np.float32)
_SIGN_RGB = np.array(
    [[200, 30, 35], [30, 80, 170], [235, 200, 40], [230, 230, 230], [30, 120, 60]], np.float32
)
_GREEN_RGB = np.array([[70, 105, 45], [55, 90, 40], [95, 125, 55], [80, 110, 35]], np.float32)


@dataclass
class _Street:
    lane_w: float
    lanes: int  # per direction
    park_w: float  # parking strip width, each side (0 = none)
    half: float  # x of the curbs (road is -half..half)
    sidewalk: float
    curb: float
    ego_x: float
    crossings: list[tuple[float, float]]  # (z start, width) of cross streets
    end: float | None  # z of a T-junction ending the street, or None


def _sample_street(rng: np.random.Generator, z1: float, *, sequence: bool) -> _Street:
    lane_w = rng.uniform(3.3, 4.0)
    lanes = 2 if rng.random() < 0.35 else 1
    park_w = 2.3 if rng.random() < 0.35 else 0.0
    half = lanes * lane_w + park_w
    ego_lane = rng.integers(0, lanes)
    ego_x = (ego_lane + 0.5) * lane_w
    crossings = []
    if sequence:
        z = rng.uniform(40, 110)
        while z < z1 - 20:
            width = rng.uniform(9, 14)
            crossings.append((z, width))
            z += width + rng.uniform(70, 160)
        end = None
    else:
        if rng.random() < 0.5:
            crossings.append((rng.uniform(22, 110), rng.uniform(9, 14)))
        end = rng.uniform(95, 170) if rng.random() < 0.35 else None
        if end is not None and crossings and crossings[0][0] + crossings[0][1] + 20 > end:
            crossings = []
    return _Street(
        lane_w=lane_w,
        lanes=lanes,
        park_w=park_w,
        half=half,
        sidewalk=rng.uniform(2.0, 4.0),
        curb=0.15,
        ego_x=ego_x,
        crossings=crossings,
        end=end,
    )


def _free_ranges(
    z0: float, z1: float, cuts: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """[z0, z1] minus the (start, end) intervals in ``cuts``."""
    out, z = [], z0
    for a, b in sorted(cuts):
        if a > z:
            out.append((z, min(a, z1)))
        z = max(z, b)
    if z < z1:
        out.append((z, z1))
    return [(a, b) for a, b in out if b - a > 0.5]


class _WorldBuilder:
    """Generates one street: static structure and the traffic on it."""

    def __init__(
        self, rng: np.random.Generator, look: _Look, z0: float, z1: float, *, sequence: bool
    ):
        self.rng, self.z0, self.z1, self.sequence = rng, z0, z1, sequence
        self.mats = _Materials(look.shade)
        self.scene = _Scene()
        self.st = _sample_street(rng, z1, sequence=sequence)
        pick = rng.choice(len(_BUILDING_RGB), 6, replace=False)
        self.building_rgb = _BUILDING_RGB[pick] * rng.uniform(0.9, 1.1, (6, 1))
        self.car_rgb = _CAR_RGB[rng.choice(len(_CAR_RGB), 6, replace=False)]
        self.cloth_rgb = _CLOTH_RGB[rng.choice(len(_CLOTH_RGB), 6, replace=False)]
        self.grass_terrain = rng.random() < 0.6
        self.street_trees = [rng.random() < 0.55, rng.random() < 0.55]
        self.glass = [
            self.mats.flat(BUILDINGS, rgb, 6)
            for rgb in ([60, 72, 86], [105, 125, 140], [40, 46, 54], [150, 140, 110])
        ]

    # Intervals along z where the side structure (lots, sidewalks) is interrupted.
    def _cuts(self) -> list[tuple[float, float]]:
        st = self.st
        cuts = [(zc - st.sidewalk, zc + w + st.sidewalk) for zc, w in st.crossings]
        if st.end is not None:
            cuts.append((st.end - st.sidewalk, self.z1 + 1000))
        return cuts

    def build(self) -> tuple[_Geometry, _Materials, _Street]:
        self._ground()
        for side in (-1, 1):
            self._back_row(side)
            self._lots(side)
            self._furniture(side)
        self._crossing_furniture()
        if self.st.end is not None:
            self._t_junction()
        self._traffic()
        self._pedestrians()
        return self.scene.finish(), self.mats, self.st

    # --- ground ---
    def _ground(self) -> None:
        st, m, sc, rng = self.st, self.mats, self.scene, self.rng
        z0, z1 = self.z0, self.z1 + 600
        if self.grass_terrain:
            terrain = m.flat(VEGETATION, _GREEN_RGB[rng.integers(4)] * 1.05, 22)
        else:
            terrain = m.flat(NONE, [118, 108, 96], 16)
        sc.add(_rect_y(-0.02, -300, 300, z0, z1), terrain, layer=_L_TERRAIN)
        grey = rng.uniform(70, 105)
        road = m.flat(ROADS, [grey, grey, grey + 3], 13)
        road_end = st.end if st.end is not None else z1
        sc.add(_rect_y(0.0, -st.half, st.half, z0, road_end), road, layer=_L_ROAD)
        for zc, w in st.crossings:
            sc.add(_rect_y(0.0, -300, 300, zc, zc + w), road, layer=_L_ROAD)
        if st.end is not None:
            w = rng.uniform(9, 13)
            self.end_width = w
            sc.add(_rect_y(0.0, -300, 300, st.end, st.end + w), road, layer=_L_ROAD)
        # Asphalt patches and manholes: the same class in another shade.
        patch = m.flat(ROADS, [grey * 0.82, grey * 0.82, grey * 0.84], 10)
        n = int((self.z1 - self.z0) / 25)
        zs = rng.uniform(self.z0, road_end, n)
        xs = rng.uniform(-st.half + 0.5, st.half - 2.5, n)
        lengths, widths = rng.uniform(1.0, 6.0, n), rng.uniform(0.8, 2.5, n)
        sc.add(_rect_y(0.005, xs, xs + widths, zs, zs + lengths), patch, layer=_L_ROAD_DETAIL)
        # Sidewalks: raised top + curb face, interrupted at cross streets.
        sw_grey = rng.uniform(135, 175)
        walk = m.flat(SIDEWALKS, [sw_grey, sw_grey * 0.97, sw_grey * 0.93], 14)
        curb = m.flat(SIDEWALKS, [sw_grey * 1.1, sw_grey * 1.08, sw_grey * 1.05], 8)
        for side in (-1, 1):
            xa, xb = side * st.half, side * (st.half + st.sidewalk)
            for a, b in _free_ranges(self.z0, self.z1, self._cuts_sidewalk()):
                sc.add(_rect_y(st.curb, min(xa, xb), max(xa, xb), a, b), walk, layer=_L_SIDEWALK)
                sc.add(
                    _rect_x(xa, a, b, 0.0, st.curb), curb, normals=(-side, 0, 0), layer=_L_SIDEWALK
                )
            # Sidewalks along the cross streets.
            for zc, w in st.crossings + ([(st.end, self.end_width)] if st.end is not None else []):
                far = 300 * side
                for za, zb in ((zc - st.sidewalk, zc), (zc + w, zc + w + st.sidewalk)):
                    if st.end is not None and zc == st.end and za > zc:
                        continue  # the far side of a T-junction is a full-width walk below
                    sc.add(
                        _rect_y(st.curb, min(xa, far), max(xa, far), za, zb),
                        walk,
                        layer=_L_SIDEWALK,
                    )
        if st.end is not None:
            za = st.end + self.end_width
            sc.add(_rect_y(st.curb, -300, 300, za, za + st.sidewalk), walk, layer=_L_SIDEWALK)
            sc.add(_rect_z(za, -300, 300, 0.0, st.curb), curb, normals=_MINUS_Z, layer=_L_SIDEWALK)
        if not self.grass_terrain:
            self.yard = m.flat(VEGETATION, _GREEN_RGB[rng.integers(4)], 22)
        else:
            self.yard = terrain
        self._markings(road_end)

    def _cuts_sidewalk(self) -> list[tuple[float, float]]:
        st = self.st
        cuts = [(zc, zc + w) for zc, w in st.crossings]
        if st.end is not None:
            cuts.append((st.end, self.z1 + 1000))
        return cuts

    def _markings(self, road_end: float) -> None:
        st, rng, sc = self.st, self.rng, self.scene
        white = self.mats.flat(ROADLINES, [225, 225, 215], 8)
        yellow = self.mats.flat(ROADLINES, [225, 185, 60], 8)
        width = rng.uniform(0.12, 0.16)
        ranges = _free_ranges(self.z0, road_end, [(zc - 1, zc + w + 1) for zc, w in st.crossings])
        dash, gap = rng.uniform(2.5, 3.5), rng.uniform(4.0, 7.0)
        centre = yellow if rng.random() < 0.5 else white
        double = st.lanes == 2 or rng.random() < 0.3
        xs_dashed = [i * st.lane_w * s for s in (-1, 1) for i in range(1, st.lanes)]
        if not double:
            xs_dashed.append(0.0)
        for a, b in ranges:
            starts = np.arange(a + rng.uniform(0, gap), b - dash, dash + gap)
            for x in xs_dashed:
                polys = _rect_y(0.01, x - width / 2, x + width / 2, starts, starts + dash)
                sc.add(polys, white if x else centre, layer=_L_MARKING, batch=True)
            # Solid lines in 10 m pieces, so that clipping and culling stay local.
            seg = np.arange(a, b, 10.0)
            seg_end = np.minimum(seg + 10.0, b)
            solid_x = []
            if double:
                solid_x += [-0.12 - width / 2, 0.12 + width / 2]
            if st.park_w == 0:
                solid_x += [-(st.half - 0.3), st.half - 0.3]
            else:
                solid_x += [-(st.half - st.park_w), st.half - st.park_w]
            for x in solid_x:
                polys = _rect_y(0.01, x - width / 2, x + width / 2, seg, seg_end)
                sc.add(polys, centre if abs(x) < 0.5 else white, layer=_L_MARKING, batch=True)
        # Zebra crossings and stop lines before each cross street.
        for zc, w in st.crossings + ([(st.end, 0.0)] if st.end is not None else []):
            xs = np.arange(-st.half + 0.4, st.half - 0.4, 1.0)
            for za in (zc - 4.0, zc + w + 1.0) if w else (zc - 4.0,):
                sc.add(
                    _rect_y(0.01, xs, xs + 0.5, za, za + 3.0), white, layer=_L_MARKING, batch=True
                )
            stop = _rect_y(0.01, 0.0, st.half - st.park_w, zc - 4.6, zc - 4.2)
            sc.add(stop, white, layer=_L_MARKING)

    # --- lots along the street ---
    def _lots(self, side: int) -> None:
        st, rng = self.st, self.rng
        edge = st.half + st.sidewalk  # |x| of the sidewalk's outer edge
        for a, b in _free_ranges(self.z0, self.z1 + 20, self._cuts()):
            z = a
            while b - z > 3.0:
                length = min(rng.uniform(9, 26), b - z)
                if b - z - length < 6:
                    length = b - z
                kind = rng.choice(
                    ['building', 'park', 'walled', 'fenced'], p=[0.55, 0.17, 0.14, 0.14]
                )
                getattr(self, f'_lot_{kind}')(side, edge, z, z + length)
                z += length

    def _building(self, side, x_front, z0, z1, height, *, layer, zkey, windows=True, rgb=None):
        rng, m, sc = self.rng, self.mats, self.scene
        depth = rng.uniform(10, 20)
        xa, xb = side * x_front, side * (x_front + depth)
        rgb = self.building_rgb[rng.integers(6)] if rgb is None else rgb
        slots = m.shaded(BUILDINGS, rgb, 14)
        sc.add_solid(
            _solid(min(xa, xb), max(xa, xb), 0.0, height, z0, z1), slots, layer=layer, zkey=zkey
        )
        if rng.random() < 0.3 and height > 8:
            # A darker cornice band under the roof line.
            band = m.shaded(BUILDINGS, rgb * 0.75, 10)
            sc.add(
                _rect_x(xa, z0, z1, height - 0.6, height),
                band[_MINUS_X if side > 0 else _PLUS_X],
                normals=(-side, 0, 0),
                layer=layer,
                zkey=zkey,
            )
        if not windows:
            return
        floor = rng.uniform(2.9, 3.6)
        floors = int((height - 1.0) / floor)
        spacing = rng.uniform(2.4, 4.0)
        win_w = rng.uniform(0.9, min(1.8, spacing - 0.5))
        win_h = rng.uniform(1.2, min(1.9, floor - 0.8))
        glass = self.glass[rng.integers(len(self.glass))]
        if floors >= 1:
            n_cols = max(int((z1 - z0 - 1.0) / spacing), 0)
            if n_cols:
                margin = (z1 - z0 - n_cols * spacing) / 2
                zs = z0 + margin + spacing * np.arange(n_cols) + (spacing - win_w) / 2
                ys = 1.0 + floor * np.arange(1, floors)
                if rng.random() < 0.5:
                    ys = np.concatenate([[0.9], ys])  # windows on the ground floor too
                zz, yy = np.meshgrid(zs, ys)
                wins = _rect_x(xa, zz.ravel(), zz.ravel() + win_w, yy.ravel(), yy.ravel() + win_h)
                sc.add(wins, glass, normals=(-side, 0, 0), layer=layer, zkey=zkey, batch=True)
            # The front (-z) face shows when the building before it is lower or missing.
            n_front = int((depth - 1.0) / spacing)
            if n_front:
                xs = x_front + 0.8 + spacing * np.arange(n_front)
                ys = 1.0 + floor * np.arange(1, floors)
                xx, yy = np.meshgrid(xs, ys)
                x0s = side * xx.ravel()
                x1s = side * (xx.ravel() + win_w)
                wins = _rect_z(
                    z0, np.minimum(x0s, x1s), np.maximum(x0s, x1s), yy.ravel(), yy.ravel() + win_h
                )
                sc.add(wins, glass, normals=_MINUS_Z, layer=layer, zkey=zkey, batch=True)
        # A door or a shop window at street level.
        door_z = rng.uniform(z0 + 0.5, max(z1 - 2.5, z0 + 0.6))
        door_rgb = [60, 45, 35] if rng.random() < 0.6 else [70, 80, 90]
        door = m.flat(BUILDINGS, door_rgb, 8)
        sc.add(
            _rect_x(xa, door_z, door_z + rng.uniform(1.0, 2.2), 0.0, 2.3),
            door,
            normals=(-side, 0, 0),
            layer=layer,
            zkey=zkey,
        )

    def _lot_building(self, side, edge, z0, z1) -> None:
        rng = self.rng
        setback = 0.0 if rng.random() < 0.5 else rng.uniform(1.5, 6.0)
        gap0 = 0.0 if rng.random() < 0.6 else rng.uniform(1.0, 4.0)
        if z1 - z0 - gap0 < 4:
            gap0 = 0.0
        height = rng.uniform(5.0, 16.0) if rng.random() < 0.8 else rng.uniform(16.0, 35.0)
        if setback > 0:
            self._yard(side, edge, z0, z1)
            if rng.random() < 0.5:
                self._hedge(side, edge + 0.6, z0 + gap0, z1, zkey=z0)
        self._building(side, edge + setback, z0 + gap0, z1, height, layer=_L_LOTS, zkey=z0)

    def _yard(self, side, edge, z0, z1) -> None:
        if self.grass_terrain:
            return
        xa, xb = side * edge, side * (edge + 40)
        self.scene.add(_rect_y(0.0, min(xa, xb), max(xa, xb), z0, z1), self.yard, layer=_L_YARD)

    def _hedge(self, side, x, z0, z1, *, zkey) -> None:
        rng = self.rng
        slots = self.mats.shaded(VEGETATION, _GREEN_RGB[rng.integers(4)] * 0.9, 26)
        h, w = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.2)
        xa, xb = side * x, side * (x + w)
        self.scene.add_solid(
            _solid(min(xa, xb), max(xa, xb), 0.0, h, z0, z1), slots, layer=_L_LOTS, zkey=zkey
        )

    def _tree(self, x, z, *, layer, zkey, size=1.0) -> None:
        rng, m, sc = self.rng, self.mats, self.scene
        trunk_h = rng.uniform(2.0, 3.5) * size
        r = rng.uniform(1.4, 2.8) * size
        bark = m.shaded(VEGETATION, [85, 65, 45], 18)
        tw = 0.14 * size + 0.06
        sc.add_solid(
            _solid(x - tw, x + tw, 0.0, trunk_h + r * 0.5, z - tw, z + tw),
            bark,
            layer=layer,
            zkey=zkey,
        )
        green = _GREEN_RGB[rng.integers(4)]
        # Three overlapping blobs in two shades give a ragged crown.
        for k, (dx, dy, s, shade) in enumerate(
            ((0, 0, 1.0, 1.0), (-0.45, -0.35, 0.7, 0.85), (0.5, -0.25, 0.7, 0.92))
        ):
            slot = m.flat(VEGETATION, green * shade, 28)
            blob = _disc_z(x + dx * r, trunk_h + r + dy * r, z - 0.01 * k, r * s * 1.05, r * s)
            sc.add(blob, slot, layer=layer, zkey=zkey)

    def _lot_park(self, side, edge, z0, z1) -> None:
        rng = self.rng
        self._yard(side, edge, z0, z1)
        # Back to front within the lot: far trees, then near trees, then the fence or wall.
        n = int(rng.integers(1, 4))
        xs = np.sort(rng.uniform(edge + 2.0, edge + 14.0, n))[::-1]
        for x in xs:
            self._tree(
                side * x,
                rng.uniform(z0 + 1, max(z1 - 1, z0 + 1.5)),
                layer=_L_LOTS,
                zkey=z0,
                size=rng.uniform(1.0, 1.6),
            )
        if rng.random() < 0.5:
            self._hedge(side, edge + 0.3, z0, z1, zkey=z0)
        elif rng.random() < 0.5:
            self._fence(side, edge + 0.15, z0, z1, zkey=z0)
        else:
            self._wall(side, edge + 0.15, z0, z1, zkey=z0, height=rng.uniform(0.5, 1.2))

    def _lot_walled(self, side, edge, z0, z1) -> None:
        rng = self.rng
        self._yard(side, edge, z0, z1)
        if rng.random() < 0.7:
            self._building(
                side,
                edge + rng.uniform(3, 8),
                z0 + 1,
                z1 - 1,
                rng.uniform(6, 16),
                layer=_L_LOTS,
                zkey=z0,
            )
        else:
            self._tree(
                side * (edge + rng.uniform(3, 8)), (z0 + z1) / 2, layer=_L_LOTS, zkey=z0, size=1.4
            )
        self._wall(side, edge + 0.1, z0, z1, zkey=z0, height=rng.uniform(1.2, 3.0))

    def _lot_fenced(self, side, edge, z0, z1) -> None:
        rng = self.rng
        self._yard(side, edge, z0, z1)
        if rng.random() < 0.6:
            self._building(
                side,
                edge + rng.uniform(4, 9),
                z0 + 1,
                z1 - 1,
                rng.uniform(5, 12),
                layer=_L_LOTS,
                zkey=z0,
            )
        if rng.random() < 0.6:
            self._tree(
                side * (edge + rng.uniform(2, 4)), rng.uniform(z0, z1), layer=_L_LOTS, zkey=z0
            )
        self._fence(side, edge + 0.15, z0, z1, zkey=z0)

    def _wall(self, side, x, z0, z1, *, zkey, height) -> None:
        rng = self.rng
        rgb = [[150, 140, 125], [120, 110, 100], [170, 160, 150], [140, 95, 80]][rng.integers(4)]
        slots = self.mats.shaded(WALLS, rgb, 18)
        t = rng.uniform(0.2, 0.4)
        xa, xb = side * x, side * (x + t)
        self.scene.add_solid(
            _solid(min(xa, xb), max(xa, xb), 0.0, height, z0, z1), slots, layer=_L_LOTS, zkey=zkey
        )

    def _fence(self, side, x, z0, z1, *, zkey) -> None:
        rng, sc = self.rng, self.scene
        rgb = [[230, 228, 220], [120, 85, 55], [60, 90, 60], [95, 98, 104]][rng.integers(4)]
        slots = self.mats.shaded(FENCES, rgb, 12)
        h = rng.uniform(1.0, 2.0)
        normal = (-side, 0, 0)
        if rng.random() < 0.5:
            # Pickets (see-through): thin boards with gaps.
            pitch = rng.uniform(0.18, 0.3)
            zs = np.arange(z0 + 0.05, z1 - 0.1, pitch)
            boards = _rect_x(side * x, zs, zs + pitch * 0.55, 0.0, h)
            sc.add(
                boards,
                slots[_MINUS_X if side > 0 else _PLUS_X],
                normals=normal,
                layer=_L_LOTS,
                zkey=zkey,
                batch=True,
            )
            rails = _rect_x(
                side * (x - 0.02), z0, z1, [0.25 * h, 0.7 * h], [0.25 * h + 0.1, 0.7 * h + 0.1]
            )
        else:
            # Metal bars: posts and rails only, with wide gaps.
            zs = np.arange(z0 + 0.05, z1 - 0.05, rng.uniform(0.12, 0.2))
            bars = _rect_x(side * x, zs, zs + 0.035, 0.0, h)
            sc.add(
                bars,
                slots[_MINUS_X if side > 0 else _PLUS_X],
                normals=normal,
                layer=_L_LOTS,
                zkey=zkey,
                batch=True,
            )
            rails = _rect_x(side * (x - 0.02), z0, z1, [0.1, h - 0.08], [0.18, h])
        sc.add(rails, slots[_TOP], normals=normal, layer=_L_LOTS, zkey=zkey, batch=True)

    def _back_row(self, side: int) -> None:
        rng, st = self.rng, self.st
        z = self.z0 - rng.uniform(0, 20)
        while z < self.z1 + 40:
            length = rng.uniform(12, 40)
            if rng.random() < 0.8:
                x = st.half + st.sidewalk + rng.uniform(24, 45)
                rgb = self.building_rgb[rng.integers(6)] * 0.9
                self._building(
                    side,
                    x,
                    z,
                    z + length,
                    rng.uniform(10, 40),
                    layer=_L_BACKROW,
                    zkey=z,
                    windows=False,
                    rgb=rgb,
                )
            elif self.grass_terrain:
                x = st.half + st.sidewalk + rng.uniform(20, 35)
                self._tree(side * x, z + length / 2, layer=_L_BACKROW, zkey=z, size=2.2)
            z += length + rng.uniform(0, 10)

    def _t_junction(self) -> None:
        st, rng = self.st, self.rng
        z = st.end + self.end_width + st.sidewalk
        x = -60.0
        while x < 60:
            w = rng.uniform(10, 25)
            rgb = self.building_rgb[rng.integers(6)]
            slots = self.mats.shaded(BUILDINGS, rgb, 14)
            h = rng.uniform(8, 30)
            setback = 0.0 if rng.random() < 0.7 else rng.uniform(1, 4)
            self.scene.add_solid(
                _solid(x, x + w, 0, h, z + setback, z + setback + 15),
                slots,
                layer=_L_LOTS,
                zkey=z + setback,
            )
            floor, spacing = 3.2, rng.uniform(2.6, 3.8)
            xs = np.arange(x + 1.0, x + w - 1.5, spacing)
            ys = 1.0 + floor * np.arange(1, int(h / floor))
            xx, yy = np.meshgrid(xs, ys)
            wins = _rect_z(z + setback, xx.ravel(), xx.ravel() + 1.2, yy.ravel(), yy.ravel() + 1.5)
            glass = self.glass[rng.integers(len(self.glass))]
            self.scene.add(
                wins, glass, normals=_MINUS_Z, layer=_L_LOTS, zkey=z + setback, batch=True
            )
            x += w

    # --- street furniture (the corridor: drawn after the lots, sorted by depth) ---
    def _furniture(self, side: int) -> None:
        rng, st = self.rng, self.st
        ranges = _free_ranges(self.z0, self.z1, self._cuts())
        curb_x = st.half + 0.45
        for a, b in ranges:
            for z in np.arange(a + rng.uniform(2, 20), b, rng.uniform(18, 34)):
                self._lamp(side, curb_x, z)
                if rng.random() < 0.3:
                    self._sign(side * (curb_x + 0.1), z + 0.3, rng.uniform(2.2, 2.8), post=False)
            for z in np.arange(a + rng.uniform(3, 30), b, rng.uniform(22, 50)):
                self._sign(side * (st.half + 0.35), z, rng.uniform(2.0, 2.6), post=True)
            if self.street_trees[side > 0]:
                for z in np.arange(a + rng.uniform(1, 10), b, rng.uniform(8, 14)):
                    self._tree(side * (st.half + 1.0), z, layer=_L_CORRIDOR, zkey=z)
            n = rng.poisson((b - a) / 16)
            for z in rng.uniform(a, b, n):
                x = st.half + (st.sidewalk - 0.7 if rng.random() < 0.5 else 0.7)
                self._clutter(side * x, z)

    def _lamp(self, side, x, z) -> None:
        m, sc, rng = self.mats, self.scene, self.rng
        slots = m.shaded(POLES, [120, 122, 125], 8)
        h = rng.uniform(6.0, 8.0)
        xp = side * x
        sc.add_solid(
            _solid(xp - 0.09, xp + 0.09, self.st.curb, h, z - 0.09, z + 0.09),
            slots,
            layer=_L_CORRIDOR,
            zkey=z,
        )
        arm = rng.uniform(1.2, 2.4)
        xa = xp - side * arm
        sc.add_solid(
            _solid(min(xp, xa), max(xp, xa), h - 0.12, h, z - 0.05, z + 0.05),
            slots,
            layer=_L_CORRIDOR,
            zkey=z,
        )
        sc.add_solid(
            _solid(xa - 0.25, xa + 0.25, h - 0.3, h - 0.1, z - 0.15, z + 0.15),
            slots,
            layer=_L_CORRIDOR,
            zkey=z,
        )

    def _sign(self, x, z, height, *, post: bool) -> None:
        m, sc, rng = self.mats, self.scene, self.rng
        if post:
            slots = m.shaded(POLES, [140, 142, 146], 6)
            sc.add_solid(
                _solid(x - 0.04, x + 0.04, self.st.curb, height + 0.4, z - 0.04, z + 0.04),
                slots,
                layer=_L_CORRIDOR,
                zkey=z,
            )
        s = rng.uniform(0.55, 0.9)
        y = height
        shape = rng.integers(4)
        if shape == 0:
            plate = _rect_z(z - 0.06, x - s / 2, x + s / 2, y - s / 2, y + s / 2)
        elif shape == 1:
            plate = _disc_z(x, y, z - 0.06, s / 2, s / 2)
        elif shape == 2:
            plate = np.array(
                [
                    [
                        [x - s / 2, y - s / 2.5, z - 0.06],
                        [x + s / 2, y - s / 2.5, z - 0.06],
                        [x, y + s / 2, z - 0.06],
                    ]
                ]
            )
        else:
            plate = _rect_z(z - 0.06, x - s * 0.7, x + s * 0.7, y - s * 0.3, y + s * 0.3)
        rgb = _SIGN_RGB[rng.integers(len(_SIGN_RGB))]
        sc.add(plate, m.flat(TRAFFIC_SIGNS, rgb, 6), normals=_MINUS_Z, layer=_L_CORRIDOR, zkey=z)
        # A white inner field, as on most real signs.
        inner = (plate - plate.mean(1, keepdims=True)) * 0.62 + plate.mean(1, keepdims=True)
        inner[..., 2] -= 0.01
        sc.add(
            inner,
            m.flat(TRAFFIC_SIGNS, [235, 235, 230], 4),
            normals=_MINUS_Z,
            layer=_L_CORRIDOR,
            zkey=z,
        )

    def _clutter(self, x, z) -> None:
        rng, m, sc = self.rng, self.mats, self.scene
        y0 = self.st.curb
        kind = rng.integers(5)
        if kind == 0:  # bin
            slots = m.shaded(
                OTHER, [[50, 90, 60], [70, 70, 75], [40, 60, 110]][rng.integers(3)], 10
            )
            sc.add_solid(
                _solid(x - 0.3, x + 0.3, y0, y0 + 1.0, z - 0.3, z + 0.3),
                slots,
                layer=_L_CORRIDOR,
                zkey=z - 0.3,
            )
        elif kind == 1:  # bench: seat, backrest
            slots = m.shaded(OTHER, [120, 80, 50], 14)
            sc.add_solid(
                _solid(x - 0.25, x + 0.25, y0 + 0.4, y0 + 0.5, z - 0.9, z + 0.9),
                slots,
                layer=_L_CORRIDOR,
                zkey=z - 0.9,
            )
            sc.add_solid(
                _solid(x - 0.05, x + 0.05, y0, y0 + 0.95, z - 0.9, z + 0.9),
                slots,
                layer=_L_CORRIDOR,
                zkey=z - 0.9,
            )
        elif kind == 2:  # boxes / crates
            slots = m.shaded(OTHER, [160, 120, 75], 18)
            s = rng.uniform(0.4, 0.9)
            sc.add_solid(
                _solid(x - s / 2, x + s / 2, y0, y0 + s, z - s / 2, z + s / 2),
                slots,
                layer=_L_CORRIDOR,
                zkey=z - s / 2,
            )
        elif kind == 3:  # hydrant
            slots = m.shaded(OTHER, [190, 40, 35], 8)
            sc.add_solid(
                _solid(x - 0.15, x + 0.15, y0, y0 + 0.75, z - 0.15, z + 0.15),
                slots,
                layer=_L_CORRIDOR,
                zkey=z - 0.15,
            )
        else:  # utility cabinet
            slots = m.shaded(OTHER, [110, 120, 110], 10)
            sc.add_solid(
                _solid(x - 0.35, x + 0.35, y0, y0 + 1.4, z - 0.6, z + 0.6),
                slots,
                layer=_L_CORRIDOR,
                zkey=z - 0.6,
            )

    def _crossing_furniture(self) -> None:
        st, m, sc = self.st, self.mats, self.scene
        for zc, _w in st.crossings + ([(st.end, 0.0)] if st.end is not None else []):
            pole = m.shaded(POLES, [90, 92, 95], 6)
            head = m.shaded(TRAFFIC_SIGNS, [40, 40, 38], 6)
            x, z = st.half + 0.5, zc - 1.0
            sc.add_solid(
                _solid(x - 0.1, x + 0.1, st.curb, 6.0, z - 0.1, z + 0.1),
                pole,
                layer=_L_CORRIDOR,
                zkey=z,
            )
            arm_end = max(st.half - st.park_w - 2 * st.lane_w, 0.5)
            sc.add_solid(
                _solid(arm_end, x, 5.8, 5.95, z - 0.06, z + 0.06), pole, layer=_L_CORRIDOR, zkey=z
            )
            for hx in (arm_end + 0.3, x - 2.5):
                sc.add_solid(
                    _solid(hx - 0.2, hx + 0.2, 4.7, 5.8, z - 0.15, z + 0.15),
                    head,
                    layer=_L_CORRIDOR,
                    zkey=z,
                )
                lit = self.rng.integers(3)
                for k, rgb in enumerate(([220, 40, 30], [230, 170, 20], [40, 210, 90])):
                    lamp = m.flat(TRAFFIC_SIGNS, rgb if k == lit else np.array(rgb) * 0.3, 4)
                    y = 5.55 - k * 0.35
                    sc.add(
                        _disc_z(hx, y, z - 0.16, 0.11, 0.11),
                        lamp,
                        normals=_MINUS_Z,
                        layer=_L_CORRIDOR,
                        zkey=z,
                    )
            # A pole on the left corner too.
            sc.add_solid(
                _solid(-x - 0.1, -x + 0.1, st.curb, 4.2, z - 0.1, z + 0.1),
                pole,
                layer=_L_CORRIDOR,
                zkey=z,
            )
            sc.add_solid(
                _solid(-x - 0.2, -x + 0.2, 3.1, 4.2, z - 0.15, z + 0.15),
                head,
                layer=_L_CORRIDOR,
                zkey=z,
            )

    # --- moving things ---
    def _car(self, x, z, *, facing_us: bool, vz: float) -> None:
        rng, m, sc = self.rng, self.mats, self.scene
        kind = rng.choice(3, p=[0.7, 0.2, 0.1])
        length, width = [(4.4, 1.8), (4.8, 1.95), (6.5, 2.2)][kind]
        length *= rng.uniform(0.92, 1.08)
        body_top = [1.0, 1.2, 2.6][kind]
        roof = [1.45, 1.8, 2.7][kind]
        rgb = self.car_rgb[rng.integers(len(self.car_rgb))]
        paint = m.shaded(VEHICLES, rgb, 5)
        dark = m.shaded(VEHICLES, [22, 22, 24], 4)
        glass = m.shaded(VEHICLES, [40, 52, 62], 3)
        x0, x1, z0, z1 = x - width / 2, x + width / 2, z, z + length
        kw = {'layer': _L_CORRIDOR, 'zkey': z0, 'vz': vz}
        for wz in (z0 + 0.75, z1 - 0.85):
            # One dark box per axle: the wheels and the shadow between them.
            sc.add_solid(_solid(x0 + 0.02, x1 - 0.02, 0.0, 0.64, wz - 0.32, wz + 0.32), dark, **kw)
        sc.add_solid(_solid(x0, x1, 0.32, body_top, z0, z1), paint, **kw)
        if kind < 2:
            front_in, back_in = (1.2, 0.5) if facing_us else (0.5, 1.2)
            cab_z0 = z0 + (0.9 if facing_us else 0.7)
            cab_z1 = z1 - (0.7 if facing_us else 0.9)
            sc.add_solid(
                _solid(
                    x0 + 0.06,
                    x1 - 0.06,
                    body_top,
                    roof,
                    cab_z0,
                    cab_z1,
                    0.12,
                    front_in * 0.5,
                    back_in * 0.5,
                ),
                glass,
                **kw,
            )
            top = _rect_y(
                roof, x0 + 0.2, x1 - 0.2, cab_z0 + front_in * 0.5, cab_z1 - back_in * 0.5
            )
            sc.add(top, paint[_TOP], normals=_UP, **kw)
        else:
            # Van/truck: a windscreen band across the tall box.
            band = _rect_z(z0, x0 + 0.15, x1 - 0.15, 1.5, 2.3)
            sc.add(band, glass[_FRONT], normals=_MINUS_Z, **kw)
        # Lamps and plate on the face towards us.
        lamp_rgb = [235, 230, 200] if facing_us else [200, 25, 25]
        lamp = m.flat(VEHICLES, lamp_rgb, 3)
        ly = body_top - 0.3
        lamps = _rect_z(z0 - 0.01, [x0 + 0.1, x1 - 0.4], [x0 + 0.4, x1 - 0.1], ly, ly + 0.15)
        sc.add(lamps, lamp, normals=_MINUS_Z, batch=True, **kw)
        plate = m.flat(VEHICLES, [225, 225, 220], 3)
        sc.add(_rect_z(z0 - 0.01, x - 0.26, x + 0.26, 0.45, 0.57), plate, normals=_MINUS_Z, **kw)

    def _traffic(self) -> None:
        rng, st = self.rng, self.st
        drive_end = (st.end - 3) if st.end is not None else self.z1
        if not self.sequence:
            drive_end = min(drive_end, 130.0)  # farther cars are a few pixels
        speed_ours = rng.uniform(10.0, 12.0) if self.sequence else 0.0
        speed_theirs = -rng.uniform(8.0, 12.0) if self.sequence else 0.0
        lanes = [((i + 0.5) * st.lane_w, False, speed_ours) for i in range(st.lanes)]
        lanes += [(-(i + 0.5) * st.lane_w, True, speed_theirs) for i in range(st.lanes)]
        for x, facing_us, vz in lanes:
            ours = not facing_us and abs(x - st.ego_x) < 0.1
            z = rng.uniform(7.0, 30.0) if ours else rng.uniform(3.0, 25.0)
            if ours and self.sequence:
                z += 8.0  # keep clear of the ego car
            if ours and rng.random() < 0.35 and not self.sequence:
                z += rng.uniform(20, 60)
            limit = drive_end if not facing_us else self.z1 + 200
            gap_lo, gap_hi = (15, 60) if facing_us else (18, 70)
            while z < limit - 6:
                if not self._in_crossing(z, 7.0):
                    jitter = rng.uniform(-0.25, 0.25)
                    self._car(x + jitter, z, facing_us=facing_us, vz=vz)
                z += rng.uniform(gap_lo, gap_hi) + 5
        if st.park_w:
            for side in (-1, 1):
                if rng.random() < 0.4:
                    continue
                x = side * (st.half - st.park_w / 2)
                z = self.z0 + rng.uniform(0, 8)
                while z < drive_end - 6:
                    if not self._in_crossing(z, 10.0) and rng.random() < 0.5:
                        self._car(x, z, facing_us=side < 0, vz=0.0)
                    z += rng.uniform(6.0, 14.0)

    def _in_crossing(self, z: float, margin: float) -> bool:
        return any(zc - margin < z < zc + w + 2 for zc, w in self.st.crossings)

    def _pedestrian(self, x, z, vz: float) -> None:
        rng, m, sc = self.rng, self.mats, self.scene
        h = rng.uniform(1.55, 1.9)
        y0 = self.st.curb
        shirt = m.flat(PEDESTRIANS, self.cloth_rgb[rng.integers(6)], 10)
        pants = m.flat(PEDESTRIANS, self.cloth_rgb[rng.integers(6)] * 0.7, 8)
        skin = m.flat(PEDESTRIANS, _SKIN_RGB[rng.integers(len(_SKIN_RGB))], 6)
        hair = m.flat(PEDESTRIANS, [35, 28, 22], 6)
        walking = vz != 0.0
        omega = 2 * np.pi * abs(vz) / 1.4 if walking else 0.0
        phase = rng.uniform(0, 2 * np.pi)
        kw = {'layer': _L_CORRIDOR, 'zkey': z - 0.2, 'vz': vz, 'omega': omega}
        hip, shoulder = y0 + 0.5 * h, y0 + 0.82 * h
        leg_w, sw = 0.075 * h, 0.13 * h
        for k, dx in enumerate((-0.055 * h, 0.055 * h)):
            leg = _rect_z(z, x + dx - leg_w / 2, x + dx + leg_w / 2, y0, hip + 0.02)
            sc.add(leg, pants, osc=(0, 0.05, 0), phase=phase + np.pi * k, **kw)
        torso = np.array(
            [
                [
                    [x - sw, shoulder, z - 0.01],
                    [x + sw, shoulder, z - 0.01],
                    [x + sw * 0.8, hip - 0.02, z - 0.01],
                    [x - sw * 0.8, hip - 0.02, z - 0.01],
                ]
            ]
        )
        sc.add(torso, shirt, **kw)
        for k, dx in enumerate((-sw - 0.03 * h, sw + 0.03 * h)):
            arm = _rect_z(z - 0.02, x + dx - 0.03 * h, x + dx + 0.03 * h, hip - 0.05 * h, shoulder)
            sc.add(arm, shirt, osc=(0, 0.04, 0), phase=phase + np.pi * (1 - k), **kw)
        head_y = y0 + 0.92 * h
        sc.add(_disc_z(x, head_y, z - 0.02, 0.062 * h, 0.075 * h), skin, **kw)
        sc.add(_disc_z(x, head_y + 0.04 * h, z - 0.03, 0.064 * h, 0.045 * h), hair, **kw)

    def _pedestrians(self) -> None:
        rng, st = self.rng, self.st
        span = self.z1 - self.z0
        n = rng.poisson(span / (14 if self.sequence else 28)) + (0 if self.sequence else 2)
        for k in range(n):
            side = rng.choice([-1, 1])
            x = side * (st.half + rng.uniform(0.8, st.sidewalk - 0.4))
            if k < 2 and not self.sequence:
                z = rng.uniform(6, 35)  # someone close enough to see
            else:
                z = rng.uniform(self.z0 + 5, self.z1)
            if self._in_crossing(z, 0.0):
                continue
            vz = rng.choice([-1, 1]) * rng.uniform(0.9, 1.6) if rng.random() < 0.8 else 0.0
            self._pedestrian(x, z, vz if self.sequence else 0.0)


# --- camera and rendering -------------------------------------------------------------------


@dataclass
class _Camera:
    pos: np.ndarray  # (3,) world
    rot: np.ndarray  # (3, 3) columns: camera right, up, forward in world coordinates
    f: float
    cx: float
    cy: float


def _camera(cfg: SynthConfig, pos, yaw: float, pitch: float, roll: float) -> _Camera:
    """Angles in radians; pitch > 0 looks down, yaw > 0 turns right, roll about the axis."""
    cy_, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy_, 0, sy], [0, 1, 0], [-sy, 0, cy_]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return _Camera(
        np.asarray(pos, np.float64), ry @ rx @ rz, cfg.focal_px, cfg.width / 2, cfg.height / 2
    )


def _clip(poly: np.ndarray, axis: int, bound: float, keep_above: bool) -> np.ndarray:
    """Sutherland-Hodgman: keep the part of a convex polygon (m, d) on one side of a plane."""
    d = poly[:, axis] - bound
    if not keep_above:
        d = -d
    inside = d >= 0
    if inside.all():
        return poly
    if not inside.any():
        return poly[:0]
    out = []
    nxt = np.roll(poly, -1, 0)
    dn = np.roll(d, -1)
    for p, q, dp, dq in zip(poly, nxt, d, dn, strict=True):
        if dp >= 0:
            out.append(p)
        if (dp >= 0) != (dq >= 0):
            out.append(p + (q - p) * (dp / (dp - dq)))
    return np.array(out)


@dataclass
class _World:
    geo: _Geometry
    mats: _Materials
    look: _Look
    street: _Street
    sky: np.ndarray  # (24,) materials of the sky bands, top to horizon
    hood: tuple[int, int]  # materials of the hood paint and its highlight


def _build_world(
    rng: np.random.Generator, cfg: SynthConfig, z0: float, z1: float, *, sequence: bool
) -> _World:
    look = _sample_look(rng, cfg)
    geo, mats, street = _WorldBuilder(rng, look, z0, z1, sequence=sequence).build()
    w = (np.arange(_SKY_BANDS) / (_SKY_BANDS - 1))[:, None] ** 0.8
    sky_rgb = (look.sky_top * (1 - w) + look.sky_horizon * w) / look.gain
    sky = np.array([mats.flat(NONE, rgb, 3) for rgb in sky_rgb], np.int32)
    paint = _CAR_RGB[rng.integers(len(_CAR_RGB))] * 0.8
    hood = (mats.flat(VEHICLES, paint, 4), mats.flat(VEHICLES, paint * 1.35, 3))
    mats.freeze()
    return _World(geo, mats, look, street, sky, hood)


def _project(geo: _Geometry, cam: _Camera, t: float, cfg: SynthConfig):
    """Visible polygons at time ``t`` in painter's order.

    Returns ``(pts, slots, groups, depths, layers)``, far to near: ``pts`` a list of (m, 2)
    int32 vertex arrays in 1/2**_SHIFT pixels, the rest (n,) arrays (world material, fill
    group, mean camera depth in metres, painter's layer).
    """
    polys, zmin, zmax, zkey = geo.polys, geo.zmin, geo.zmax, geo.zkey
    moving = np.nonzero(geo.motion[:, 0] != 0)[0] if t else np.zeros(0, int)
    if len(moving):
        vz, osc, phase, omega = (
            geo.motion[moving, 0],
            geo.motion[moving, 1:4],
            geo.motion[moving, 4],
            geo.motion[moving, 5],
        )
        offset = osc * np.sin(omega * t + phase)[:, None]
        offset[:, 2] += vz * t
        polys = polys.copy()
        polys[moving] += offset[:, None, :]
        zmin, zmax, zkey = zmin.copy(), zmax.copy(), zkey.copy()
        zmin[moving] += offset[:, 2]
        zmax[moving] += offset[:, 2]
        zkey[moving] += vz * t
    cz = cam.pos[2]
    sel = np.nonzero((zmax > cz - 2.0) & (zmin < cz + cfg.draw_distance))[0]
    p = polys[sel]
    centre = p.mean(1)
    normal = geo.normal[sel]
    facing = (normal * (cam.pos - centre)).sum(1)
    keep = (facing > 0) | ~normal.any(1)
    sel, p = sel[keep], p[keep]
    pc = (p - cam.pos) @ cam.rot  # (n, 8, 3) camera coordinates: x right, y up, z forward
    z = pc[..., 2]
    front = z.min(1) >= _NEAR
    partial = ~front & (z.max(1) >= _NEAR)
    W, H = cfg.width, cfg.height
    guard = 4.0 * max(W, H)  # pixel coordinates beyond this are clipped in 2D first

    def to_px(q: np.ndarray) -> np.ndarray:
        uv = np.empty((*q.shape[:-1], 2))
        uv[..., 0] = cam.cx + cam.f * q[..., 0] / q[..., 2]
        uv[..., 1] = cam.cy - cam.f * q[..., 1] / q[..., 2]
        return uv

    uv = to_px(pc[front])
    onscreen = (
        (uv[..., 0].max(1) >= 0)
        & (uv[..., 0].min(1) <= W)
        & (uv[..., 1].max(1) >= 0)
        & (uv[..., 1].min(1) <= H)
    )
    within = onscreen & (np.abs(uv).max((1, 2)) < guard)
    idx_front = np.nonzero(front)[0]
    pts: list[np.ndarray] = list(np.round(uv[within] * (1 << _SHIFT)).astype(np.int32))
    kept = list(idx_front[within])
    # Polygons crossing the near plane or far off screen: clip one by one (a few per frame).
    redo = list(np.nonzero(partial)[0]) + list(idx_front[onscreen & ~within])
    for i in redo:
        q = _clip(pc[i], 2, _NEAR, True)
        if len(q) < 3:
            continue
        q2 = to_px(q)
        for axis, lim in ((0, W), (1, H)):
            q2 = _clip(q2, axis, -guard / 4, True)
            if len(q2) < 3:
                break
            q2 = _clip(q2, axis, lim + guard / 4, False)
            if len(q2) < 3:
                break
        if len(q2) < 3:
            continue
        pts.append(np.round(q2 * (1 << _SHIFT)).astype(np.int32))
        kept.append(i)
    kept_arr = np.asarray(kept, int)
    glob = sel[kept_arr]
    # Painter's order: layer, then far-to-near object depth, then insertion order.
    order = np.lexsort((geo.seq[glob], -zkey[glob], geo.layer[glob]))
    depth = pc[kept_arr, :, 2].mean(1)
    return (
        [pts[k] for k in order],
        geo.slot[glob][order],
        geo.group[glob][order],
        depth[order],
        geo.layer[glob][order],
    )


_SKY_BANDS = 24
_NOISE_TILES: dict[tuple[int, int], np.ndarray] = {}


def _noise_tile(H: int, W: int) -> np.ndarray:
    """(2H, 2W) int16 texture noise, fine grain plus blotches; fixed, so outputs are stable."""
    tile = _NOISE_TILES.get((H, W))
    if tile is None:
        rng = np.random.default_rng(20180601)
        fine = rng.normal(0, 1, (2 * H, 2 * W)).astype(np.float32)
        coarse = rng.normal(0, 1, (2 * H // 8 + 1, 2 * W // 8 + 1)).astype(np.float32)
        coarse = cv2.resize(coarse, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC)
        tile = np.clip((0.7 * fine + 0.6 * coarse) * 45, -127, 127).astype(np.int16)
        _NOISE_TILES[(H, W)] = tile
    return tile


def _palette(world: _World, used: np.ndarray) -> np.ndarray:
    """(256, 3) uint8 RGB of the packed materials ``used`` under this look.

    Colours are unique per class, so with effects off the label is a function of the colour.
    """
    mats, look = world.mats, world.look
    rgb = mats.rgb[used] * look.gain
    cls = mats.cls[used]
    if look.rain:
        wet = np.isin(cls, (ROADS, SIDEWALKS, ROADLINES))
        rgb[wet] *= 0.72
        rgb = (0.75 * rgb + 0.25 * rgb.mean(1, keepdims=True)) * 0.85
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(used)] = np.clip(np.round(rgb), 0, 255)
    # Collisions between classes are rare; nudge the later material's blue by one.
    owner: dict[int, int] = {}
    for s in range(len(used)):
        while True:
            key = int(pal[s, 0]) << 16 | int(pal[s, 1]) << 8 | int(pal[s, 2])
            if owner.setdefault(key, int(cls[s])) == cls[s]:
                break
            pal[s, 2] = (int(pal[s, 2]) + 1) % 256
    return pal


def _pack(world: _World, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map world materials to uint8 values. Returns ``(used, packed)``: ``used[v]`` is the
    material painted as value ``v``, ``packed`` the values of ``slots``.
    """
    fixed = np.concatenate([world.sky, world.hood])
    shown, inverse = np.unique(slots, return_inverse=True)
    extra = ~np.isin(shown, fixed)
    used = np.concatenate([fixed, shown[extra]])
    value_of_shown = np.empty(len(shown), np.int64)
    value_of_shown[extra] = len(fixed) + np.arange(extra.sum())
    value_of_shown[~extra] = np.searchsorted(fixed, shown[~extra], sorter=np.argsort(fixed))
    value_of_shown[~extra] = np.argsort(fixed)[value_of_shown[~extra]]
    inverse = value_of_shown[inverse]
    if len(used) > 256:
        # More than 256 materials in view (never seen in practice): fold the extras into the
        # nearest colour of the same class, so the label stays right.
        cls, rgb = world.mats.cls[used], world.mats.rgb[used]
        remap = np.arange(len(used))
        for v in range(256, len(used)):
            same = np.nonzero(cls[:256] == cls[v])[0]
            if len(same):
                remap[v] = same[np.argmin(np.abs(rgb[same] - rgb[v]).sum(1))]
        if (remap >= 256).any():
            raise RuntimeError('more than 256 classes of material in one frame')
        used, inverse = used[:256], remap[inverse]
    return used, inverse.astype(np.int32)


def _render(world: _World, cam: _Camera, t: float, cfg: SynthConfig, rng: np.random.Generator):
    """BGR image (H, W, 3) uint8 and label (H, W) uint8 of ``world`` at time ``t``."""
    H, W = cfg.height, cfg.width
    look, mats = world.look, world.mats
    pts, slots, groups, depths, layers = _project(world.geo, cam, t, cfg)
    used, packed = _pack(world, slots)
    value = {int(m): v for v, m in enumerate(used)}  # world material -> uint8 value
    mat = np.empty((H, W), np.uint8)
    # Sky: horizontal bands from the top down to the horizon, darker blue at the top.
    fwd = cam.rot[2]  # the street's direction (world +z) in camera coordinates
    horizon = float(np.clip(cam.cy - cam.f * fwd[1] / fwd[2], 1, H))
    edges = np.linspace(0, horizon, _SKY_BANDS + 1).round().astype(int)
    for k in range(_SKY_BANDS):
        mat[edges[k] : edges[k + 1]] = value[int(world.sky[k])]
    mat[edges[-1] :] = value[int(world.sky[-1])]
    depth_map = _ground_depth(cam, cfg) if look.fog > 0 else None
    n = len(pts)
    i = 0
    while i < n:
        # Runs of one batch (non-overlapping polygons of one material) share a fill call.
        j = i + 1
        while j < n and groups[j] == groups[i] and packed[j] == packed[i]:
            j += 1
        if j - i == 1:
            cv2.fillConvexPoly(mat, pts[i], int(packed[i]), cv2.LINE_8, _SHIFT)
            if depth_map is not None and layers[i] >= _L_BACKROW:
                cv2.fillConvexPoly(depth_map, pts[i], float(depths[i]), cv2.LINE_8, _SHIFT)
        else:
            cv2.fillPoly(mat, pts[i:j], int(packed[i]), cv2.LINE_8, _SHIFT)
        i = j
    _draw_hood(mat, cfg, value[world.hood[0]], value[world.hood[1]])
    pal = _palette(world, used)
    class_lut = np.zeros(256, np.uint8)
    class_lut[: len(used)] = mats.cls[used]
    label = cv2.LUT(mat, class_lut)
    bgr_lut = np.ascontiguousarray(pal[:, ::-1]).reshape(256, 1, 3)
    image = cv2.LUT(cv2.merge((mat, mat, mat)), bgr_lut)
    if not cfg.effects:
        return image, label
    amp = np.zeros(256, np.int16)
    amp[: len(used)] = mats.amp[used] + look.noise
    amp[[value[int(m)] for m in world.sky]] = 2 + look.noise // 2
    oy, ox = look.tex_offset
    tex = _noise_tile(H, W)[oy : oy + H, ox : ox + W] * cv2.LUT(mat, amp.astype(np.uint8)).astype(
        np.int16
    )
    tex >>= 6
    image = cv2.add(image, cv2.merge((tex, tex, tex)), dtype=cv2.CV_8U)
    if depth_map is not None:
        a = 1.0 - np.exp(-depth_map / look.fog)  # (H, W) fog opacity
        fog_bgr = np.ascontiguousarray(look.fog_rgb[::-1])
        image = (image * (1 - a[..., None]) + fog_bgr * a[..., None]).astype(np.uint8)
    if look.rain:
        _rain_streaks(image, rng)
    if look.blur_sigma:
        image = cv2.GaussianBlur(image, (0, 0), look.blur_sigma)
    return image, label


def _ground_depth(cam: _Camera, cfg: SynthConfig) -> np.ndarray:
    """(H, W) float32 distance along the optical axis to the ground (y = 0) per row; sky = 1e4."""
    v = np.arange(cfg.height, dtype=np.float64)
    d_cam = np.stack([np.zeros_like(v), -(v - cam.cy) / cam.f, np.ones_like(v)], -1)
    d_world_y = d_cam @ cam.rot[1]
    with np.errstate(divide='ignore'):
        depth = np.where(d_world_y < -1e-6, -cam.pos[1] / d_world_y, 1e4)
    return np.repeat(np.minimum(depth, 1e4).astype(np.float32)[:, None], cfg.width, 1)


def _rain_streaks(image: np.ndarray, rng: np.random.Generator) -> None:
    H, W = image.shape[:2]
    layer = np.zeros_like(image)
    n = int(W * H / 2500)
    x = rng.integers(0, W, n)
    y = rng.integers(0, H, n)
    length = rng.integers(H // 40 + 2, H // 15 + 3, n)
    for xi, yi, li in zip(x.tolist(), y.tolist(), length.tolist(), strict=True):
        cv2.line(layer, (xi, yi), (xi + li // 6, yi + li), (200, 200, 200), 1, cv2.LINE_AA)
    cv2.addWeighted(image, 1.0, layer, 0.18, 0, dst=image)


def _draw_hood(mat: np.ndarray, cfg: SynthConfig, paint: int, highlight: int) -> None:
    """The ego car's hood: every row from ``hood_row_px`` down, under a curved top edge."""
    H, W = mat.shape
    row = cfg.hood_row_px
    xs = np.linspace(0, W, 33)
    s = (xs - W / 2) / (W / 2)
    top = row - 0.045 * H * (1 - s**2)  # highest in the middle, at ``row`` on both sides
    poly = np.concatenate([np.stack([xs, top], 1), [[W, H], [0, H]]])
    cv2.fillConvexPoly(mat, np.round(poly * 4).astype(np.int32), paint, cv2.LINE_8, 2)
    mat[row:] = paint
    # A lighter reflection band along the front edge.
    inner = np.abs(s) < 0.7
    upper = np.stack([xs[inner], top[inner] + 0.012 * H], 1)
    lower = np.stack([xs[inner], top[inner] + 0.03 * H], 1)[::-1]
    band = np.round(np.concatenate([upper, lower]) * 4).astype(np.int32)
    cv2.fillPoly(mat, [band], highlight, cv2.LINE_8, 2)


# --- public API -----------------------------------------------------------------------------


def _random_frame_bgr(seed: int, index: int, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([_TAG_FRAME, seed, index])
    world = _build_world(rng, cfg, -12.0, cfg.draw_distance, sequence=False)
    st = world.street
    cam = _camera(
        cfg,
        (st.ego_x + rng.normal(0, 0.25), cfg.camera_height + rng.uniform(-0.12, 0.12), 0.0),
        yaw=math.radians(rng.normal(0, 1.5)),
        pitch=math.radians(rng.normal(6.0, 1.2)),
        roll=math.radians(rng.normal(0, 0.8)),
    )
    return _render(world, cam, 0.0, cfg, rng)


def _check_seed(seed: int, index: int = 0) -> None:
    if seed < 0 or index < 0:
        raise SynthError(f'seed and index must be >= 0, got seed={seed}, index={index}')


def render_frame(
    seed: int, index: int, config: SynthConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One random street frame, a pure function of ``(seed, index)``.

    Returns ``(rgb, label)``: (H, W, 3) uint8 RGB and (H, W) uint8 lyft13 class ids.
    """
    cfg = config or SynthConfig()
    _check_seed(seed, index)
    bgr, label = _random_frame_bgr(seed, index, cfg)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), label


class Drive:
    """A drive down one generated street: the camera moves ``speed_mps / fps`` metres per
    frame, other cars drive at their own speeds and pedestrians walk.

    Frame ``i`` is a pure function of ``(seed, i)``; the street is built once per object.
    """

    def __init__(self, seed: int, n_frames: int, config: SynthConfig | None = None):
        _check_seed(seed)
        if n_frames <= 0:
            raise SynthError(f'a drive needs n_frames > 0, got {n_frames}')
        self.seed, self.n_frames = seed, n_frames
        self.config = cfg = config or SynthConfig()
        self.step = cfg.speed_mps / cfg.fps
        rng = np.random.default_rng([_TAG_DRIVE, seed])
        length = n_frames * self.step + cfg.draw_distance + 20
        self.world = _build_world(rng, cfg, -25.0, length, sequence=True)
        self._x = self.world.street.ego_x + rng.normal(0, 0.15)
        self._pitch = math.radians(rng.normal(6.0, 1.0))
        self._wobble = rng.uniform(0, 2 * np.pi, 3)

    def __len__(self) -> int:
        return self.n_frames

    def _frame_bgr(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.n_frames:
            raise IndexError(f'frame {index} is outside this drive of {self.n_frames} frames')
        cfg = self.config
        t = index / cfg.fps
        w = self._wobble
        # Smooth suspension pitch/roll and a slow lane drift: small, continuous in t.
        cam = _camera(
            cfg,
            (self._x + 0.15 * math.sin(0.3 * t + w[0]), cfg.camera_height, index * self.step),
            yaw=math.radians(0.4 * math.sin(0.25 * t + w[1])),
            pitch=self._pitch + math.radians(0.35 * math.sin(2.1 * t + w[2])),
            roll=math.radians(0.3 * math.sin(1.3 * t + w[1])),
        )
        rng = np.random.default_rng([_TAG_DRIVE, self.seed, index])
        return _render(self.world, cam, t, cfg, rng)

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, label)`` of frame ``index``: (H, W, 3) uint8 RGB, (H, W) uint8 ids."""
        bgr, label = self._frame_bgr(index)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), label

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(self.n_frames):
            yield self.frame(i)


def render_sequence(
    seed: int, n_frames: int, config: SynthConfig | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``n_frames`` temporally coherent ``(rgb, label)`` frames of one drive (:class:`Drive`)."""
    return iter(Drive(seed, n_frames, config))


def episode_of(index: int, frames: int) -> str:
    """The episode folder (dataA..dataE) of frame ``index``: frames spread evenly over five."""
    return EPISODES[index * len(EPISODES) // frames]


def _write_pair(rgb_path: Path, seg_path: Path, bgr: np.ndarray, label: np.ndarray) -> None:
    try:
        write_pair(rgb_path, seg_path, bgr, label)  # CARLA's CameraSeg format: id in red
    except OSError as err:
        raise SynthError(str(err)) from err


def _write_random(out: str, seed: int, cfg: SynthConfig, frames: int, indices: list[int]) -> int:
    for i in indices:
        bgr, label = _random_frame_bgr(seed, i, cfg)
        ep = Path(out) / episode_of(i, frames)
        name = f'{i:06d}.png'
        _write_pair(ep / IMAGE_DIR / name, ep / LABEL_DIR / name, bgr, label)
    return len(indices)


def _write_drive(
    out: str, seed: int, cfg: SynthConfig, frames: int, folder: str, indices: list[int]
) -> int:
    drive = Drive(seed, frames, cfg)
    base = Path(out) / folder
    for i in indices:
        bgr, label = drive._frame_bgr(i)
        name = f'{i:06d}.png'
        _write_pair(base / IMAGE_DIR / name, base / LABEL_DIR / name, bgr, label)
    return len(indices)


def _single_thread_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


def generate_dataset(
    out_dir: str | Path,
    frames: int,
    seed: int = 0,
    *,
    mode: str = 'random',
    config: SynthConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    sequence_name: str = 'sequence',
) -> Path:
    """Write ``frames`` synthetic frames and ``dataset.json`` under ``out_dir``; returns it.

    ``mode='random'``: independent frames spread over dataA..dataE (the original split is
    train A,B,C / val D / test E). ``mode='sequence'``: one drive in ``out_dir/sequence_name``.
    An existing non-empty ``out_dir`` is refused unless ``overwrite``, which replaces only
    the generator's own folders and ``dataset.json``.
    """
    cfg = config or SynthConfig()
    out = Path(out_dir)
    if mode not in ('random', 'sequence'):
        raise SynthError(f"mode must be 'random' or 'sequence', got {mode!r}")
    if not isinstance(frames, (int, np.integer)) or frames <= 0:
        raise SynthError(f'frames must be a positive integer, got {frames!r}; e.g. --frames 100')
    if workers < 1:
        raise SynthError(f'workers must be >= 1, got {workers}')
    _check_seed(seed)
    if not sequence_name or '/' in sequence_name or sequence_name in EPISODES:
        raise SynthError(
            f'sequence folder name {sequence_name!r} must be a plain name other than dataA..dataE'
        )
    # Written beside OUT and swapped in when complete (the old dataset stays until then);
    # what a killed run left is cleaned (or the dataset it replaced put back) first.
    staged = StagedEntries(out, (*EPISODES, sequence_name, DATASET_INFO))
    recover(out.parent, out.name, out, staged.entries)
    if out.exists() and not out.is_dir():
        raise SynthError(f'output path {out} exists and is not a directory; choose another --out')
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SynthError(
            f'output directory {out} exists and is not empty; pass --overwrite to replace '
            'its dataset, or choose another --out'
        )
    final, out = out, staged.open()
    try:
        _generate(out, frames, seed, mode, cfg, workers, progress, sequence_name)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    return final


def _generate(
    out: Path,
    frames: int,
    seed: int,
    mode: str,
    cfg: SynthConfig,
    workers: int,
    progress: bool,
    sequence_name: str,
) -> None:
    folders = [sequence_name] if mode == 'sequence' else list(EPISODES)
    for folder in folders:
        for sub in (IMAGE_DIR, LABEL_DIR):
            (out / folder / sub).mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    with tqdm(total=frames, unit='frame', desc='synth', disable=not progress) as bar:
        if workers == 1:
            drive = Drive(seed, frames, cfg) if mode == 'sequence' else None
            for i in range(frames):
                if drive is None:
                    _write_random(str(out), seed, cfg, frames, [i])
                else:
                    bgr, label = drive._frame_bgr(i)
                    base, name = out / sequence_name, f'{i:06d}.png'
                    _write_pair(base / IMAGE_DIR / name, base / LABEL_DIR / name, bgr, label)
                bar.update(1)
        else:
            # Contiguous chunks, so that a drive's street is built once per chunk.
            size = max(1, min(32, -(-frames // (workers * 4))))
            chunks = [list(range(a, min(a + size, frames))) for a in range(0, frames, size)]
            if mode == 'random':
                tasks = [(_write_random, (str(out), seed, cfg, frames, c)) for c in chunks]
            else:
                args = (str(out), seed, cfg, frames, sequence_name)
                tasks = [(_write_drive, (*args, c)) for c in chunks]
            # 'spawn': a forked child inherits OpenCV's thread pool in an unusable state and
            # can hang on its first parallel call.
            ctx = multiprocessing.get_context('spawn')
            with ProcessPoolExecutor(workers, ctx, initializer=_single_thread_worker) as pool:
                futures = [pool.submit(fn, *fn_args) for fn, fn_args in tasks]
                for fut in as_completed(futures):
                    bar.update(fut.result())
    info = {
        'class_set': LYFT13.name,
        'class_names': list(LYFT13.names),
        'source': 'synthetic',
        'image_size': [cfg.width, cfg.height],
        'hood_row': cfg.hood_row_px,
        'frames': frames,
        'episodes': folders,
        'generator': {
            'name': 'training.data.synthetic',
            'version': GENERATOR_VERSION,
            'seed': seed,
            'frames': frames,
            'mode': mode,
            'config': asdict(cfg),
        },
    }
    if mode == 'random':
        # The original Lyft split by episode: train A, B, C / val D / test E.
        info['split'] = {'train': list(EPISODES[:3]), 'val': [EPISODES[3]], 'test': [EPISODES[4]]}
    else:
        info['sequence'] = {'folder': sequence_name, 'fps': cfg.fps, 'speed_mps': cfg.speed_mps}
    (out / DATASET_INFO).write_text(json.dumps(info, indent=2) + '\n')


def benchmark(
    frames: int = 40,
    *,
    width: int = 800,
    height: int = 600,
    seed: int = 0,
    mode: str = 'random',
    warmup: int = 3,
) -> dict:
    """Frames/s of the generator on one core: render only, and render + both PNG writes.

    Figures come from the median time per frame. OpenCV is held to one thread meanwhile.
    """
    cfg = SynthConfig(width=width, height=height)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    render_s, write_s = [], []
    try:
        drive = Drive(seed, frames + warmup, cfg) if mode == 'sequence' else None
        with tempfile.TemporaryDirectory(prefix='synth-bench-') as tmp:
            for i in range(frames + warmup):
                t0 = time.perf_counter()
                if drive is not None:
                    bgr, label = drive._frame_bgr(i)
                else:
                    bgr, label = _random_frame_bgr(seed, i, cfg)
                t1 = time.perf_counter()
                _write_pair(Path(tmp) / 'rgb.png', Path(tmp) / 'seg.png', bgr, label)
                t2 = time.perf_counter()
                if i >= warmup:
                    render_s.append(t1 - t0)
                    write_s.append(t2 - t1)
    finally:
        cv2.setNumThreads(threads)
    render = np.asarray(render_s)
    total = render + np.asarray(write_s)
    return {
        'frames': frames,
        'size': [width, height],
        'mode': mode,
        'render_ms_median': float(np.median(render) * 1e3),
        'render_ms_p90': float(np.percentile(render, 90) * 1e3),
        'write_ms_median': float(np.median(write_s) * 1e3),
        'render_fps': float(1.0 / np.median(render)),
        'render_write_fps': float(1.0 / np.median(total)),
    }


# --- command line ---------------------------------------------------------------------------


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + exit, so main returns 2
        raise SynthError(f'{message} (see --help)')


def parse_size(text: str) -> tuple[int, int]:
    """``'800x600'`` -> ``(800, 600)``; raises :class:`SynthError` naming the bad value."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SynthError(f'--size must be WIDTHxHEIGHT such as 800x600, got {text!r}')
    return int(parts[0]), int(parts[1])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg data synth`` / ``python -m training.data.synthetic``: write a dataset."""
    prog = prog or 'python -m training.data.synthetic'
    parser = _ArgumentParser(
        prog=prog,
        description='Write a synthetic CARLA-like dataset (lyft13 labels) in the Lyft-Udacity '
        'layout: OUT/dataA..dataE/CameraRGB|CameraSeg/NNNNNN.png and OUT/dataset.json.',
    )
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--frames', type=int, default=100, help='number of frames (default 100)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument(
        '--sequence',
        action='store_true',
        help='one coherent drive at 20 Hz instead of random frames',
    )
    parser.add_argument(
        '--sequence-name', default='sequence', help='folder of the drive (default: sequence)'
    )
    parser.add_argument(
        '--size', default='800x600', help='image size WIDTHxHEIGHT (default 800x600)'
    )
    parser.add_argument('--workers', type=int, default=1, help='processes (default 1)')
    parser.add_argument(
        '--no-effects',
        action='store_true',
        help='flat colours: no texture, weather, blur or noise',
    )
    parser.add_argument(
        '--overwrite', action='store_true', help='replace the dataset in a non-empty --out'
    )
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    try:
        args = parser.parse_args(argv)
        width, height = parse_size(args.size)
        if args.frames <= 0:
            raise SynthError(
                f'--frames must be a positive number of frames, got {args.frames}; '
                'e.g. --frames 100'
            )
        cfg = SynthConfig(width=width, height=height, effects=not args.no_effects)
        start = time.perf_counter()
        out = generate_dataset(
            args.out,
            args.frames,
            args.seed,
            mode='sequence' if args.sequence else 'random',
            config=cfg,
            workers=args.workers,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            sequence_name=args.sequence_name,
        )
    except SynthError as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    rate = args.frames / (time.perf_counter() - start)
    print(f'wrote {args.frames} frames ({width}x{height}) to {out} at {rate:.1f} frames/s')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
