"""A stand-in ``carla`` client module: a CARLA server in process, for ``semseg data collect``.

No CARLA server runs on these machines, so the collector's process tests put this folder
first on ``PYTHONPATH``: ``import carla`` then gets a world with one map, an ego vehicle,
two cameras that deliver every tick (random BGRA pixels; tags 0..28 in the red channel of
the segmentation camera) and the calls :mod:`training.data.collect` makes (version, map,
settings, spawning, batches, weather). It is just enough for ``--vehicles 0 --walkers 0``.

Environment: ``FAKE_CARLA_TICK_S`` (seconds a tick takes, default 0) and ``FAKE_CARLA_LOG``
(a file that gets one line per settings change and destroy batch, to check the server was
left as found).
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np

VERSION = '0.9.16'
MAP = '/Game/Carla/Maps/Town10HD_Opt'


def _log(line: str) -> None:
    path = os.environ.get('FAKE_CARLA_LOG')
    if path:
        with open(path, 'a') as log:
            log.write(line + '\n')


class Location(SimpleNamespace):
    def __init__(self, x=0.0, y=0.0, z=0.0):
        super().__init__(x=x, y=y, z=z)


class Rotation(SimpleNamespace):
    def __init__(self, pitch=0.0, yaw=0.0, roll=0.0):
        super().__init__(pitch=pitch, yaw=yaw, roll=roll)


class Transform(SimpleNamespace):
    def __init__(self, location=None, rotation=None):
        super().__init__(location=location or Location(), rotation=rotation or Rotation())


class WeatherParameters:
    ClearNoon = 'ClearNoon'
    CloudyNoon = 'CloudyNoon'
    WetNoon = 'WetNoon'


class _Command:
    def __init__(self, *args):
        self.args = args

    def then(self, other):
        return self


command = SimpleNamespace(
    SpawnActor=_Command, FutureActor=object(), SetAutopilot=_Command, DestroyActor=_Command
)


class _Blueprint:
    def __init__(self, name: str) -> None:
        self.id = name
        self.attributes: dict[str, str] = {}

    def set_attribute(self, key: str, value: str) -> None:
        self.attributes[key] = value


class _Library:
    def find(self, name: str) -> _Blueprint:
        return _Blueprint(name)

    def filter(self, pattern: str) -> list[_Blueprint]:
        return [_Blueprint(pattern.replace('*', 'x'))]


class _Actor:
    next_id = 100

    def __init__(self, world: _World, blueprint: _Blueprint | None = None) -> None:
        _Actor.next_id += 1
        self.id = _Actor.next_id
        self.world = world
        self.blueprint = blueprint
        self.callback = None

    def set_autopilot(self, enabled: bool, port: int = 8000) -> None:
        pass

    def listen(self, callback) -> None:
        self.callback = callback
        self.world.sensors.append(self)

    def stop(self) -> None:
        self.callback = None

    def image(self, frame: int, rng: np.random.Generator) -> SimpleNamespace:
        width = int(self.blueprint.attributes['image_size_x'])
        height = int(self.blueprint.attributes['image_size_y'])
        bgra = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        if self.blueprint.id.endswith('semantic_segmentation'):
            bgra[..., 2] %= 29  # the tag: a cityscapes29 id (CARLA 0.9.14+)
        return SimpleNamespace(frame=frame, width=width, height=height, raw_data=bgra.tobytes())


class _Map:
    name = MAP

    def get_spawn_points(self) -> list[Transform]:
        return [Transform(Location(x=float(i))) for i in range(4)]


class _World:
    def __init__(self) -> None:
        self.settings = SimpleNamespace(synchronous_mode=False, fixed_delta_seconds=None)
        self.sensors: list[_Actor] = []
        self.frame = 1000
        self.rng = np.random.default_rng(0)

    def get_map(self) -> _Map:
        return _Map()

    def get_settings(self) -> SimpleNamespace:
        return SimpleNamespace(**vars(self.settings))

    def apply_settings(self, settings: SimpleNamespace) -> int:
        self.settings = SimpleNamespace(**vars(settings))
        _log(f'synchronous_mode={settings.synchronous_mode}')
        return self.frame

    def get_blueprint_library(self) -> _Library:
        return _Library()

    def try_spawn_actor(self, blueprint, transform) -> _Actor:
        return _Actor(self, blueprint)

    def spawn_actor(self, blueprint, transform, attach_to=None) -> _Actor:
        return _Actor(self, blueprint)

    def set_weather(self, weather) -> None:
        pass

    def get_random_location_from_navigation(self) -> Location:
        return Location()

    def tick(self) -> int:
        time.sleep(float(os.environ.get('FAKE_CARLA_TICK_S', '0')))
        self.frame += 1
        for sensor in self.sensors:
            if sensor.callback is not None:
                sensor.callback(sensor.image(self.frame, self.rng))
        return self.frame


class _TrafficManager:
    def set_random_device_seed(self, seed: int) -> None:
        pass

    def set_synchronous_mode(self, enabled: bool) -> None:
        _log(f'traffic_manager synchronous_mode={enabled}')


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.world = _World()

    def set_timeout(self, seconds: float) -> None:
        pass

    def get_server_version(self) -> str:
        return VERSION

    def get_client_version(self) -> str:
        return VERSION

    def get_world(self) -> _World:
        return self.world

    def get_available_maps(self) -> list[str]:
        return [MAP]

    def get_trafficmanager(self, port: int) -> _TrafficManager:
        return _TrafficManager()

    def apply_batch_sync(self, commands: list, do_tick: bool = False) -> list:
        return [SimpleNamespace(error='', actor_id=_Actor(self.world).id) for _ in commands]

    def apply_batch(self, commands: list) -> None:
        _log(f'destroyed {len(commands)} actors')
