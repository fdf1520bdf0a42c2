"""The pure parts of the CARLA collector: everything that can be tested without a server.

* versions: :func:`parse_version`, :func:`class_set_for_version`, :func:`check_versions`
* maps and weather: :func:`resolve_town`, :func:`split_frames`, :func:`weather_order`
* camera data: :func:`decode_bgra`, :func:`camera_bgr`, :func:`segmentation_ids`,
  :func:`camera_intrinsics`, and :class:`FrameMatcher` (pairs the two cameras by frame id)
* output: :class:`DatasetWriter` (the Lyft-Udacity layout + ``dataset.json``)
* server state: :class:`SyncSession`, which switches a world to synchronous mode and puts
  it back, with every actor destroyed, however the run ends

:mod:`training.data.collect` holds the small part that talks to a live server. Nothing here
imports ``carla``; the session takes the carla objects (or test doubles) as arguments.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from semseg_ros.dataset_layout import DATASET_INFO, IMAGE_DIR, LABEL_DIR, write_pair
from semseg_ros.labels import get_class_set
from semseg_ros.staged_output import atomic_write_bytes

log = logging.getLogger(__name__)

COLLECTOR_VERSION = 1

#: CARLA's weather presets (``carla.WeatherParameters.<name>``), noon then sunset then night.
#: Night presets exist only from 0.9.14 on: the collector keeps the ones the client has.
WEATHER_PRESETS = (
    'ClearNoon', 'CloudyNoon', 'WetNoon', 'WetCloudyNoon', 'SoftRainNoon', 'MidRainyNoon',
    'HardRainNoon', 'ClearSunset', 'CloudySunset', 'WetSunset', 'WetCloudySunset',
    'SoftRainSunset', 'MidRainSunset', 'HardRainSunset', 'ClearNight', 'CloudyNight',
    'WetNight', 'WetCloudyNight', 'SoftRainNight', 'MidRainyNight', 'HardRainNight',
)  # fmt: skip


class CollectError(RuntimeError):
    """The collector cannot go on; the message names the value or the server, and the fix."""


class ServerUnavailableError(CollectError):
    """No CARLA server answered at host:port within the timeout."""


class VersionMismatchError(CollectError):
    """The ``carla`` client and the server are different CARLA versions."""


class TownNotFoundError(CollectError):
    """The server has no map of the requested name."""


# --- versions and class sets ----------------------------------------------------------------

_VERSION = re.compile(r'^\s*v?(\d+)\.(\d+)(?:\.(\d+))?')


def parse_version(text: str) -> tuple[int, int, int]:
    """``'0.9.13'`` -> ``(0, 9, 13)``; build suffixes are ignored (``'0.9.9-dirty'``)."""
    match = _VERSION.match(str(text))
    if match is None:
        msg = f'cannot read a CARLA version from {text!r}; expected something like "0.9.13"'
        raise CollectError(msg)
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def class_set_for_version(version: str) -> str:
    """The semantic tags a CARLA server of ``version`` writes (docs/architecture.md, Class sets).

    lyft13 before 0.9.10, carla23 for 0.9.10 - 0.9.13, cityscapes29 from 0.9.14 on.
    """
    parsed = parse_version(version)
    if parsed < (0, 9, 10):
        return 'lyft13'
    if parsed <= (0, 9, 13):
        return 'carla23'
    return 'cityscapes29'


def check_versions(client: str, server: str, *, allow_mismatch: bool = False) -> str | None:
    """Compare the ``carla`` client's and the server's versions (build suffixes ignored).

    Returns None when they agree and a warning when they differ and ``allow_mismatch``;
    otherwise raises :class:`VersionMismatchError` naming both and the fix. The RPC
    messages change between releases, so a mismatch may fail later in obscure ways.
    """
    if parse_version(client) == parse_version(server):
        return None
    text = (
        f'the carla client is {client} but the server at the other end is {server}; '
        'install the matching client (`pip install carla==<server version>` where a wheel '
        "exists for your Python, or the one in the server's PythonAPI/carla/dist/)"
    )
    if not allow_mismatch:
        raise VersionMismatchError(f'{text}, or pass --allow-version-mismatch to try anyway')
    return f'{text}; going on because of --allow-version-mismatch'


# --- maps, frame budget, weather ------------------------------------------------------------


def map_name(path: str) -> str:
    """A map's own name: ``'/Game/Carla/Maps/Town10HD_Opt'`` -> ``'Town10HD_Opt'``."""
    return str(path).rstrip('/').rsplit('/', 1)[-1]


def resolve_town(requested: str, available: Iterable[str]) -> str:
    """The entry of ``available`` (``client.get_available_maps()``) that ``requested`` names.

    Matches the full path or the map's own name, ignoring case. Raises
    :class:`TownNotFoundError` listing the maps the server has.
    """
    available = list(available)
    wanted = requested.strip().lower()
    for path in available:
        if wanted in (path.lower(), map_name(path).lower()):
            return path
    names = sorted({map_name(p) for p in available})
    msg = (
        f'the CARLA server has no map {requested!r}; available: {", ".join(names) or "none"} '
        "(pass one of them to --town; more maps come with the server's AdditionalMaps package)"
    )
    raise TownNotFoundError(msg)


def split_frames(total: int, parts: int) -> list[int]:
    """Share ``total`` frames between ``parts`` towns as evenly as possible, earlier first."""
    if parts < 1 or total < 0:
        raise ValueError(f'split_frames needs total >= 0 and parts >= 1, got {total}, {parts}')
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def episode_names(towns: Sequence[str]) -> list[str]:
    """One folder name per town; a town listed again gets ``_2``, ``_3``, ..."""
    seen: dict[str, int] = {}
    names = []
    for town in towns:
        name = map_name(town)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f'{name}_{seen[name]}')
    return names


def weather_order(available: Iterable[str], seed: int) -> list[str]:
    """The presets of :data:`WEATHER_PRESETS` that ``available`` has, in a seeded order."""
    have = set(available)
    order = [name for name in WEATHER_PRESETS if name in have]
    random.Random(seed).shuffle(order)
    return order


# --- camera data ----------------------------------------------------------------------------


def decode_bgra(raw: bytes | memoryview | np.ndarray, width: int, height: int) -> np.ndarray:
    """A CARLA camera buffer as an image. Shape: flat (H * W * 4,) uint8 -> (H, W, 4) BGRA.

    A view of ``raw``, not a copy: copy it before the sensor's buffer is reused.
    """
    data = np.frombuffer(raw, np.uint8) if not isinstance(raw, np.ndarray) else raw.ravel()
    expected = height * width * 4
    if data.dtype != np.uint8 or data.size != expected:
        msg = (
            f'camera buffer has {data.size} {data.dtype} values, expected {height}x{width}x4 = '
            f'{expected} uint8 (BGRA); was the sensor given another image_size_x/y?'
        )
        raise CollectError(msg)
    return data.reshape(height, width, 4)


def camera_bgr(image: Any) -> np.ndarray:
    """An RGB camera's image (``carla.Image``) as (H, W, 3) uint8 **BGR**, OpenCV's order."""
    return decode_bgra(image.raw_data, image.width, image.height)[:, :, :3].copy()


def segmentation_ids(image: Any) -> np.ndarray:
    """A semantic segmentation camera's raw tags (``ColorConverter.Raw``): (H, W) uint8.

    The tag is in the **red** channel, index 2 of the BGRA buffer.
    """
    return decode_bgra(image.raw_data, image.width, image.height)[:, :, 2].copy()


def camera_intrinsics(width: int, height: int, fov_deg: float) -> dict[str, Any]:
    """Pinhole intrinsics of a CARLA camera (square pixels, principal point at the centre)."""
    focal = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    cx, cy = width / 2.0, height / 2.0
    return {
        'fx': focal,
        'fy': focal,
        'cx': cx,
        'cy': cy,
        'K': [[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]],
    }


class FrameMatcher:
    """Pairs the RGB and segmentation images of one simulator frame from two sensor queues.

    The sensors' callbacks put images (anything with a ``frame`` attribute, e.g.
    ``carla.Image``) in :attr:`rgb_queue` and :attr:`seg_queue` (given, or made here).
    :meth:`get` returns both images of one frame: older images are stale (dropped and
    counted), a newer one is kept for its own frame.
    """

    def __init__(
        self,
        rgb: queue.Queue | None = None,
        seg: queue.Queue | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Where the sensor callbacks put their images: ``sensor.listen(matcher.rgb_queue.put)``.
        self.rgb_queue: queue.Queue = queue.Queue() if rgb is None else rgb
        self.seg_queue: queue.Queue = queue.Queue() if seg is None else seg
        self._queues = {'rgb': self.rgb_queue, 'seg': self.seg_queue}
        self._held: dict[str, Any] = {}  # an image of a later frame than the one asked for
        self._clock = clock
        self.paired = 0
        self.stale = 0  # images older than the frame asked for, dropped
        self.missed = 0  # frames for which one camera delivered nothing in time

    def get(self, frame: int, timeout: float) -> tuple[Any, Any] | None:
        """``(rgb, seg)`` of ``frame``, or None when either is not there within ``timeout`` s."""
        deadline = self._clock() + timeout
        rgb = self._take('rgb', frame, deadline)
        seg = self._take('seg', frame, deadline)
        if rgb is None or seg is None:
            self.missed += 1
            return None
        self.paired += 1
        return rgb, seg

    def _take(self, name: str, frame: int, deadline: float) -> Any | None:
        item = self._held.pop(name, None)
        while True:
            if item is None:
                try:
                    item = self._queues[name].get(timeout=max(0.0, deadline - self._clock()))
                except queue.Empty:
                    return None
            if item.frame == frame:
                return item
            if item.frame > frame:
                self._held[name] = item
                return None
            self.stale += 1
            item = None

    def report(self) -> dict[str, int]:
        return {'paired': self.paired, 'stale_dropped': self.stale, 'missed_frames': self.missed}


# --- output ---------------------------------------------------------------------------------


class DatasetWriter:
    """Writes ``OUT/<episode>/CameraRGB|CameraSeg/NNNNNN.png`` and ``OUT/dataset.json``.

    The label PNG is 3-channel with the raw tag in the red channel (G = B = 0), as CARLA's
    and the Kaggle dataset's are, so :func:`training.data.lyft.read_label` reads it back.
    """

    def __init__(self, out_dir: str | Path, class_set: str) -> None:
        self.out = Path(out_dir)
        check_output_dir(self.out)
        self.class_set = get_class_set(class_set)
        self.episodes: dict[str, dict[str, Any]] = {}
        self._current: str | None = None

    def start_episode(self, name: str, town: str) -> None:
        if name in self.episodes:
            raise CollectError(f'episode {name!r} was already written to {self.out}')
        for sub in (IMAGE_DIR, LABEL_DIR):
            (self.out / name / sub).mkdir(parents=True, exist_ok=True)
        self.episodes[name] = {'town': town, 'frames': 0, 'weather': []}
        self._current = name

    def note_weather(self, preset: str) -> None:
        """Record that frames from the next one on are taken in weather ``preset``."""
        episode = self._episode()
        episode['weather'].append({'from_frame': episode['frames'], 'preset': preset})

    def write(self, bgr: np.ndarray, ids: np.ndarray) -> Path:
        """Write one pair: (H, W, 3) uint8 BGR and (H, W) uint8 ids. Returns the RGB path."""
        if bgr.shape[:2] != ids.shape or bgr.ndim != 3 or ids.dtype != np.uint8:
            msg = f'image {bgr.shape} and label {ids.shape} {ids.dtype} do not form a pair'
            raise CollectError(msg)
        episode = self._episode()
        name = f'{episode["frames"]:06d}.png'
        base = self.out / self._current  # type: ignore[operator]
        try:
            write_pair(base / IMAGE_DIR / name, base / LABEL_DIR / name, bgr, ids)
        except BaseException as err:  # an error, Ctrl+C or SIGTERM between the two files
            for path in (base / IMAGE_DIR / name, base / LABEL_DIR / name):
                path.unlink(missing_ok=True)  # no image without its label
            if isinstance(err, OSError):
                raise CollectError(str(err)) from err
            raise
        episode['frames'] += 1
        return base / IMAGE_DIR / name

    @property
    def frames(self) -> int:
        return sum(e['frames'] for e in self.episodes.values())

    def write_info(self, **fields: Any) -> Path:
        """Write ``dataset.json``: the class set, size, episodes, plus ``fields``."""
        info = {
            'class_set': self.class_set.name,
            'class_names': list(self.class_set.names),
            'source': 'carla',
            'frames': self.frames,
            'episodes': list(self.episodes),
            'split': None,  # one town per episode: split by episode (semseg data split)
            'towns': self.episodes,
            **fields,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / DATASET_INFO
        atomic_write_bytes(path, (json.dumps(info, indent=2) + '\n').encode())  # whole or none
        return path

    def _episode(self) -> dict[str, Any]:
        if self._current is None:
            raise CollectError('DatasetWriter: call start_episode() before writing frames')
        return self.episodes[self._current]


def check_output_dir(out: Path) -> None:
    """Refuse an output path that is a file or a non-empty folder (never mix two runs)."""
    if out.exists() and not out.is_dir():
        raise CollectError(
            f'output path {out} exists and is not a directory; choose another --out'
        )
    if out.is_dir() and any(out.iterdir()):
        msg = f'output directory {out} is not empty; choose a new --out (or delete this one)'
        raise CollectError(msg)


# --- server state ---------------------------------------------------------------------------


class WorldLike(Protocol):
    """The part of ``carla.World`` that :class:`SyncSession` uses."""

    def get_settings(self) -> Any: ...

    def apply_settings(self, settings: Any) -> Any: ...


class TrafficManagerLike(Protocol):
    def set_synchronous_mode(self, mode: bool) -> Any: ...


class ClientLike(Protocol):
    def apply_batch(self, commands: list[Any]) -> Any: ...


class StoppableActor(Protocol):
    """A sensor (stops listening) or a walker AI controller (stops walking)."""

    id: int

    def stop(self) -> Any: ...


class SyncSession:
    """Synchronous mode with a fixed step for the ``with`` block, and a clean server after.

    On entry: remembers the world's settings, turns on the Traffic Manager's synchronous
    mode, then the world's (``fixed_delta_seconds = delta``). Register every actor spawned
    inside with :meth:`add_sensor`, :meth:`add_walker` and :meth:`add_vehicle`.

    On exit, however the block ends (an error, Ctrl+C), :meth:`restore` runs: sensors stop
    listening, the Traffic Manager and then the world go back to the original (asynchronous)
    settings, so the server runs on its own again and needs no tick to act on what follows;
    the sensors are destroyed, then the walker controllers stop, then controllers, walkers
    and vehicles are destroyed, each with one ``apply_batch`` of ``DestroyActor``. A step that
    fails is logged and the later steps still run.

    ``destroy_command`` builds one destroy command from an actor id (``carla.command.
    DestroyActor``); it is a parameter so the order can be tested without carla.
    """

    def __init__(
        self,
        client: ClientLike,
        world: WorldLike,
        traffic_manager: TrafficManagerLike,
        *,
        delta: float,
        destroy_command: Callable[[int], Any],
    ) -> None:
        self.client = client
        self.world = world
        self.traffic_manager = traffic_manager
        self.delta = delta
        self.destroy_command = destroy_command
        self.original_settings: Any = None
        self.sensors: list[StoppableActor] = []
        self.controllers: list[StoppableActor] = []
        self.walker_ids: list[int] = []
        self.vehicle_ids: list[int] = []
        self.cleanup_errors: list[str] = []

    def __enter__(self) -> SyncSession:
        self.original_settings = self.world.get_settings()
        if self.original_settings.synchronous_mode:
            self.original_settings = None  # someone else's; leave it alone
            msg = (
                'the CARLA server is already in synchronous mode: another client (e.g. the ROS '
                'bridge, or a script that crashed) is ticking it; stop that client, or restart '
                'the server, then run the collector again'
            )
            raise CollectError(msg)
        try:
            self.traffic_manager.set_synchronous_mode(True)
            settings = self.world.get_settings()
            settings.synchronous_mode = True
            settings.fixed_delta_seconds = self.delta
            self.world.apply_settings(settings)
        except BaseException:
            self.restore()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def add_sensor(self, sensor: StoppableActor) -> None:
        self.sensors.append(sensor)

    def add_walker(self, walker_id: int, controller: StoppableActor | None = None) -> None:
        self.walker_ids.append(walker_id)
        if controller is not None:
            self.controllers.append(controller)

    def add_vehicle(self, vehicle_id: int) -> None:
        self.vehicle_ids.append(vehicle_id)

    def restore(self) -> None:
        """Put the server back as it was; see the class docstring for the order. Idempotent."""
        for sensor in self.sensors:
            self._step(f'stop sensor {sensor.id}', sensor.stop)
        tm_sync = self.traffic_manager.set_synchronous_mode
        self._step('turn off Traffic Manager synchronous mode', tm_sync, False)
        if self.original_settings is not None:
            self._step('restore world settings', self.world.apply_settings, self.original_settings)
            self.original_settings = None
        self._destroy('sensors', [s.id for s in self.sensors])
        for controller in self.controllers:
            self._step(f'stop walker controller {controller.id}', controller.stop)
        others = [c.id for c in self.controllers] + self.walker_ids + self.vehicle_ids
        self._destroy('walkers and vehicles', others)
        self.sensors, self.controllers, self.walker_ids, self.vehicle_ids = [], [], [], []

    def _destroy(self, what: str, ids: list[int]) -> None:
        if ids:
            commands = [self.destroy_command(i) for i in ids]
            self._step(f'destroy {len(ids)} {what}', self.client.apply_batch, commands)

    def _step(self, what: str, func: Callable[..., Any], *args: Any) -> None:
        try:
            func(*args)
        except Exception as err:  # keep cleaning up; the server must not keep our actors
            self.cleanup_errors.append(f'{what}: {err}')
            log.warning('CARLA cleanup: could not %s: %s', what, err)
