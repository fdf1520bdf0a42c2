"""Record training data from a live CARLA server in the Lyft-Udacity layout.

``semseg data collect --frames 1000 --out data/carla`` (or ``python -m training.data.collect``)
connects to a running server, and for each town of ``--town``: runs it in synchronous mode
with a fixed step, drives an ego vehicle on Traffic Manager autopilot among NPC vehicles and
walkers, and saves every ``--every``-th tick the RGB camera's image and the semantic
segmentation camera's raw tags (same pose, size and FOV), only when both cameras delivered
that same frame. The weather changes every ``--weather-every`` saved frames. Output::

    OUT/<Town>/CameraRGB/000000.png   OUT/<Town>/CameraSeg/000000.png   (tag in the red channel)
    OUT/dataset.json                   class set (from the server version), CARLA versions,
                                       towns, weather, camera intrinsics, sync statistics

The server is always left as found (asynchronous, no actors of ours, Traffic Manager
asynchronous), on errors, Ctrl+C and SIGTERM too: see
:class:`training.data.carla_io.SyncSession`. Works with the ``carla`` 0.9.16 client and the
0.9.13 API the ROS bridge uses: only calls both have are made. ``carla`` is imported when
the command runs, not with this module.

OUT is written beside itself, in ``.OUT.partial-<pid>/new/OUT``
(:mod:`semseg_ros.staged_output`), and moved into place with its ``dataset.json`` when the run
ends, however it ends short of a SIGKILL: OUT is never frames without the dataset.json that
names their class set. What a killed run wrote stays in that hidden folder until the next
run for the same OUT deletes it.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from semseg_ros.staged_output import StagedEntries, recover

from .carla_io import (
    COLLECTOR_VERSION,
    CollectError,
    DatasetWriter,
    FrameMatcher,
    ServerUnavailableError,
    SyncSession,
    camera_bgr,
    camera_intrinsics,
    check_output_dir,
    check_versions,
    class_set_for_version,
    episode_names,
    map_name,
    resolve_town,
    segmentation_ids,
    split_frames,
    weather_order,
)

log = logging.getLogger(__name__)

#: The ROS bridge's example ego vehicle and the pose of its front cameras (metres, degrees
#: in the vehicle frame), so the collected views match what the node sees at run time.
EGO_BLUEPRINT = 'vehicle.audi.tt'
CAMERA_MOUNT = {'x': 2.0, 'y': 0.0, 'z': 2.0, 'roll': 0.0, 'pitch': 0.0, 'yaw': 0.0}
#: Loading a map takes much longer than any other call.
LOAD_WORLD_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CollectConfig:
    """Settings of one collection run (the command's options)."""

    out: Path
    frames: int
    host: str = '127.0.0.1'
    port: int = 2000
    timeout: float = 10.0
    towns: tuple[str, ...] = ()  # empty: the map the server has loaded
    every: int = 10
    width: int = 800
    height: int = 600
    fov: float = 90.0
    vehicles: int = 30
    walkers: int = 20
    seed: int = 0
    delta: float = 0.05
    weather_every: int = 100  # saved frames; 0 keeps the server's weather
    warmup: int = 40  # ticks before the first save: cars settle, auto-exposure adapts
    tm_port: int = 8000
    allow_version_mismatch: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, value: object, what: str) -> None:
            if not ok:
                raise CollectError(f'--{option} must be {what}, got {value!r}')

        need(self.frames > 0, 'frames', self.frames, 'a positive number of frames, e.g. 1000')
        need(self.every >= 1, 'every', self.every, 'at least 1 tick between saved frames')
        need(16 <= self.width <= 8192, 'width', self.width, 'in 16..8192 pixels')
        need(16 <= self.height <= 8192, 'height', self.height, 'in 16..8192 pixels')
        need(0 < self.fov < 180, 'fov', self.fov, 'in (0, 180) degrees')
        need(self.vehicles >= 0, 'vehicles', self.vehicles, '>= 0')
        need(self.walkers >= 0, 'walkers', self.walkers, '>= 0')
        need(self.seed >= 0, 'seed', self.seed, '>= 0')
        # CARLA's physics substeps (max_substep_delta_time 0.01 x max_substeps 10) cover 0.1 s.
        need(0 < self.delta <= 0.1, 'delta', self.delta, 'in (0, 0.1] seconds, e.g. 0.05')
        need(self.weather_every >= 0, 'weather-every', self.weather_every, '>= 0 (0: never)')
        need(self.warmup >= 0, 'warmup', self.warmup, '>= 0 ticks')
        need(self.timeout > 0, 'timeout', self.timeout, 'a positive number of seconds')
        need(1 <= self.port <= 65535, 'port', self.port, 'a TCP port in 1..65535')
        need(1 <= self.tm_port <= 65535, 'tm-port', self.tm_port, 'a TCP port in 1..65535')
        need(self.port != self.tm_port, 'tm-port', self.tm_port, 'different from --port')
        need(all(t.strip() for t in self.towns), 'town', ','.join(self.towns), 'map names')
        need(len(self.towns) <= self.frames, 'town', ','.join(self.towns), 'at most --frames')


# --- talking to the server ------------------------------------------------------------------


def import_carla() -> ModuleType:
    """The ``carla`` client module, or a :class:`CollectError` saying how to install it."""
    try:
        import carla
    except ImportError as err:
        msg = (
            f'the CARLA Python client is not installed ({err}); `pip install semseg_ros[carla]` '
            '(or `pip install carla==0.9.16`; for another server version, the client from '
            "the server's PythonAPI/carla/dist/)"
        )
        raise CollectError(msg) from err
    return carla


def connect(carla: ModuleType, host: str, port: int, timeout: float) -> tuple[Any, str]:
    """A ``carla.Client`` that has reached the server, and the server's version."""
    client = carla.Client(host, port)
    client.set_timeout(timeout)
    try:
        version = client.get_server_version()
    except RuntimeError as err:  # the client's time-out ("time-out of 2000ms while waiting ...")
        msg = (
            f'no CARLA server answered at {host}:{port} within {timeout:g} s; start one, e.g. '
            f'`./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}` in the CARLA folder (it '
            f'also uses port {port + 1}), or pass its --host/--port ({err})'
        )
        raise ServerUnavailableError(msg) from err
    return client, version


def _plan_towns(client: Any, cfg: CollectConfig) -> list[str]:
    """Full map paths to visit; the loaded map when ``--town`` was not given."""
    if not cfg.towns:
        return [client.get_world().get_map().name]
    available = client.get_available_maps()
    return [resolve_town(town, available) for town in cfg.towns]


def _load_town(client: Any, town: str, timeout: float) -> Any:
    world = client.get_world()
    if map_name(world.get_map().name) == map_name(town):
        return world
    log.info('loading %s', map_name(town))
    client.set_timeout(max(timeout, LOAD_WORLD_TIMEOUT_S))
    try:
        return client.load_world(town)
    finally:
        client.set_timeout(timeout)


def _camera(carla: ModuleType, world: Any, kind: str, cfg: CollectConfig, ego: Any) -> Any:
    bp = world.get_blueprint_library().find(f'sensor.camera.{kind}')
    bp.set_attribute('image_size_x', str(cfg.width))
    bp.set_attribute('image_size_y', str(cfg.height))
    bp.set_attribute('fov', str(cfg.fov))
    bp.set_attribute('sensor_tick', '0.0')  # every tick; frames are picked by tick count
    m = CAMERA_MOUNT
    pose = carla.Transform(
        carla.Location(x=m['x'], y=m['y'], z=m['z']),
        carla.Rotation(pitch=m['pitch'], yaw=m['yaw'], roll=m['roll']),
    )
    return world.spawn_actor(bp, pose, attach_to=ego)


def _spawn_ego(world: Any, rng: random.Random, tm_port: int) -> Any:
    library = world.get_blueprint_library()
    found = library.filter(EGO_BLUEPRINT)
    bp = found[0] if len(found) else rng.choice(library.filter('vehicle.*'))
    bp.set_attribute('role_name', 'hero')
    points = world.get_map().get_spawn_points()
    rng.shuffle(points)
    for point in points:
        ego = world.try_spawn_actor(bp, point)
        if ego is not None:
            ego.set_autopilot(True, tm_port)
            return ego
    msg = f'no free spawn point for the ego vehicle among {len(points)}; use fewer --vehicles'
    raise CollectError(msg)


def _spawn_traffic(
    carla: ModuleType,
    client: Any,
    world: Any,
    session: SyncSession,
    cfg: CollectConfig,
    rng: random.Random,
) -> None:
    """NPC vehicles on autopilot and walkers with AI controllers, registered in ``session``."""
    spawn, future = carla.command.SpawnActor, carla.command.FutureActor
    library = world.get_blueprint_library()
    cars = list(library.filter('vehicle.*'))
    points = world.get_map().get_spawn_points()
    rng.shuffle(points)
    batch = [
        spawn(rng.choice(cars), point).then(carla.command.SetAutopilot(future, True, cfg.tm_port))
        for point in points[: cfg.vehicles]
    ]
    for response in client.apply_batch_sync(batch, True):
        if not response.error:
            session.add_vehicle(response.actor_id)
    if cfg.walkers == 0:
        return
    if hasattr(world, 'set_pedestrians_seed'):  # newer clients: reproducible walkers
        world.set_pedestrians_seed(cfg.seed)
    people = list(library.filter('walker.pedestrian.*'))
    spots = [world.get_random_location_from_navigation() for _ in range(cfg.walkers)]
    batch = [spawn(rng.choice(people), carla.Transform(loc)) for loc in spots if loc is not None]
    walker_ids = [r.actor_id for r in client.apply_batch_sync(batch, True) if not r.error]
    ai = library.find('controller.ai.walker')
    batch = [spawn(ai, carla.Transform(), walker) for walker in walker_ids]
    for walker, response in zip(walker_ids, client.apply_batch_sync(batch, True), strict=True):
        controller = None if response.error else world.get_actor(response.actor_id)
        session.add_walker(walker, controller)
    world.tick()  # controllers need one tick before they can start
    for controller in session.controllers:
        controller.start()
        target = world.get_random_location_from_navigation()
        if target is not None:
            controller.go_to_location(target)
        controller.set_max_speed(1.0 + rng.random() * 0.5)  # walking pace, m/s


def _record_town(
    carla: ModuleType,
    client: Any,
    world: Any,
    cfg: CollectConfig,
    frames: int,
    writer: DatasetWriter,
    sync_stats: dict[str, int],
    rng: random.Random,
) -> None:
    """Save ``frames`` pairs from ``world``; the session leaves the server clean after."""
    traffic_manager = client.get_trafficmanager(cfg.tm_port)
    traffic_manager.set_random_device_seed(cfg.seed)
    presets = weather_order(dir(carla.WeatherParameters), rng.randrange(2**31))
    destroy = carla.command.DestroyActor
    matcher = FrameMatcher()
    session = SyncSession(client, world, traffic_manager, delta=cfg.delta, destroy_command=destroy)
    try:
        with session:
            _drive_and_save(
                carla, client, world, cfg, frames, writer, rng, session, matcher, presets
            )
    finally:
        for key, value in matcher.report().items():
            sync_stats[key] = sync_stats.get(key, 0) + value
        if session.cleanup_errors:
            log.warning('the server may keep some state: %s', '; '.join(session.cleanup_errors))


def _drive_and_save(
    carla: ModuleType,
    client: Any,
    world: Any,
    cfg: CollectConfig,
    frames: int,
    writer: DatasetWriter,
    rng: random.Random,
    session: SyncSession,
    matcher: FrameMatcher,
    presets: list[str],
) -> None:
    """Inside a :class:`SyncSession`: spawn the ego, cameras and traffic, then tick and save."""
    ego = _spawn_ego(world, rng, cfg.tm_port)
    session.add_vehicle(ego.id)
    sinks = {'rgb': matcher.rgb_queue, 'semantic_segmentation': matcher.seg_queue}
    for kind, sink in sinks.items():
        sensor = _camera(carla, world, kind, cfg, ego)
        session.add_sensor(sensor)
        sensor.listen(sink.put)
    _spawn_traffic(carla, client, world, session, cfg, rng)
    saved = ticks = changes = 0
    next_weather = 0 if cfg.weather_every and presets else frames
    max_ticks = cfg.warmup + 3 * frames * cfg.every + 100
    while saved < frames:
        if saved >= next_weather:  # takes effect from the next tick on
            preset = presets[changes % len(presets)]
            world.set_weather(getattr(carla.WeatherParameters, preset))
            writer.note_weather(preset)
            changes += 1
            next_weather = saved + cfg.weather_every
        frame = world.tick()
        ticks += 1
        # Wait for both images every tick, so the server never runs ahead of the sensors.
        pair = matcher.get(frame, timeout=cfg.timeout)
        due = ticks > cfg.warmup and (ticks - cfg.warmup) % cfg.every == 0
        if due and pair is not None:
            writer.write(camera_bgr(pair[0]), segmentation_ids(pair[1]))
            saved += 1
        if ticks >= max_ticks:
            msg = (
                f'the cameras delivered {saved} of {frames} frames in {ticks} ticks '
                f'({matcher.report()}); is the server overloaded? try a smaller size'
            )
            raise CollectError(msg)


@dataclass(frozen=True)
class CollectResult:
    out: Path
    frames: int
    class_set: str
    server_version: str
    seconds: float


def collect(cfg: CollectConfig, *, progress: bool = True) -> CollectResult:
    """Run one collection against the server of ``cfg``; see the module docstring.

    Raises :class:`CollectError` (:class:`ServerUnavailableError`, ``VersionMismatchError``,
    ``TownNotFoundError``, ...) with the fix in the message. On any exit the server is
    restored and ``dataset.json`` describes the frames written so far.
    """
    recover(cfg.out.parent, cfg.out.name, cfg.out.parent, [cfg.out.name])  # what kills left
    check_output_dir(cfg.out)  # before connecting: fail fast, and leave no empty folder
    carla = import_carla()
    client, server_version = connect(carla, cfg.host, cfg.port, cfg.timeout)
    client_version = client.get_client_version()
    warning = check_versions(
        client_version, server_version, allow_mismatch=cfg.allow_version_mismatch
    )
    if warning:
        log.warning(warning)
    towns = _plan_towns(client, cfg)
    class_set = class_set_for_version(server_version)
    staged = StagedEntries.for_folder(cfg.out)  # moved to cfg.out with its dataset.json
    writer = DatasetWriter(staged.open(), class_set)
    rng = random.Random(cfg.seed)
    stats: dict[str, int] = {}
    start = time.perf_counter()
    complete = False
    try:
        for town, name, count in zip(
            towns, episode_names(towns), split_frames(cfg.frames, len(towns)), strict=True
        ):
            world = _load_town(client, town, cfg.timeout)
            writer.start_episode(name, map_name(town))
            if progress:
                print(f'{map_name(town)}: recording {count} frames', file=sys.stderr)
            _record_town(carla, client, world, cfg, count, writer, stats, rng)
        complete = True
    except RuntimeError as err:  # what the carla client raises: time-outs, RPC errors
        msg = (
            f'the CARLA server at {cfg.host}:{cfg.port} failed during the run ({err}); '
            f'the frames written so far are in {cfg.out}'
        )
        raise CollectError(msg) from err
    finally:  # also after Ctrl+C: what was written is a usable dataset
        if writer.episodes:
            writer.write_info(
                image_size=[cfg.width, cfg.height],
                complete=complete,
                carla={'server_version': server_version, 'client_version': client_version},
                camera={
                    'fov_deg': cfg.fov,
                    'intrinsics': camera_intrinsics(cfg.width, cfg.height, cfg.fov),
                    'mount': CAMERA_MOUNT,
                    'ego': EGO_BLUEPRINT,
                },
                sync=stats,
                collector={
                    'name': 'training.data.collect',
                    'version': COLLECTOR_VERSION,
                    'config': {**asdict(cfg), 'out': str(cfg.out), 'towns': list(cfg.towns)},
                    'seconds': round(time.perf_counter() - start, 2),
                },
            )
            staged.commit()  # OUT appears whole, frames and dataset.json together
        staged.discard()  # nothing written: nothing left behind
    seconds = time.perf_counter() - start
    return CollectResult(cfg.out, writer.frames, class_set, server_version, seconds)


# --- command line ---------------------------------------------------------------------------


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + exit, so main returns 2
        raise CollectError(f'{message} (see --help)')


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = _ArgumentParser(
        prog=prog,
        description='Drive a live CARLA server and record RGB + semantic segmentation pairs '
        'in the Lyft-Udacity layout (OUT/<Town>/CameraRGB|CameraSeg, OUT/dataset.json). '
        'Needs a running CARLA server (see docs/carla_collect.md).',
    )
    add = p.add_argument
    add('--out', required=True, type=Path, help='output folder (must be new or empty)')
    add('--frames', required=True, type=int, help='frames to save in all, shared by the towns')
    add('--host', default='127.0.0.1', help='CARLA server host (default 127.0.0.1)')
    add('--port', type=int, default=2000, help='CARLA RPC port (default 2000)')
    add('--timeout', type=float, default=10.0, help='seconds to wait for the server (default 10)')
    add('--town', default='', help='comma-separated maps, e.g. Town01,Town10HD_Opt; frames are '
        'shared between them (default: the map the server has loaded)')  # fmt: skip
    add(
        '--every',
        type=int,
        default=10,
        help='save every K-th tick (default 10: 2 frames per simulated second at --delta 0.05)',
    )
    add('--width', type=int, default=800, help='image width (default 800)')
    add('--height', type=int, default=600, help='image height (default 600)')
    add('--fov', type=float, default=90.0, help='horizontal field of view, degrees (default 90)')
    add('--vehicles', type=int, default=30, help='NPC vehicles (default 30)')
    add('--walkers', type=int, default=20, help='NPC walkers (default 20)')
    add('--seed', type=int, default=0, help='random seed (default 0)')
    add('--delta', type=float, default=0.05, help='fixed simulation step, s (default 0.05)')
    add('--weather-every', type=int, default=100, help='change the weather every M saved '
        'frames (default 100; 0: keep the weather the server has)')  # fmt: skip
    add('--warmup', type=int, default=40, help='ticks before the first save (default 40)')
    add('--tm-port', type=int, default=8000, help='Traffic Manager port (default 8000)')
    add('--allow-version-mismatch', action='store_true',
        help='go on (with a warning) when the client and server versions differ')  # fmt: skip
    return p


def config_from_args(args: argparse.Namespace) -> CollectConfig:
    towns = tuple(t.strip() for t in args.town.split(',')) if args.town.strip() else ()
    return CollectConfig(
        out=args.out,
        frames=args.frames,
        host=args.host,
        port=args.port,
        timeout=args.timeout,
        towns=towns,
        every=args.every,
        width=args.width,
        height=args.height,
        fov=args.fov,
        vehicles=args.vehicles,
        walkers=args.walkers,
        seed=args.seed,
        delta=args.delta,
        weather_every=args.weather_every,
        warmup=args.warmup,
        tm_port=args.tm_port,
        allow_version_mismatch=args.allow_version_mismatch,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg data collect`` / ``python -m training.data.collect``: record a dataset."""
    prog = prog or 'python -m training.data.collect'
    logging.basicConfig(level=logging.INFO, format=f'{prog}: %(levelname)s: %(message)s')
    try:
        cfg = config_from_args(build_parser(prog).parse_args(argv))
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except CollectError as err:  # a bad option: usage error
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2
    # SIGTERM (`timeout`, docker stop, systemd) ends the run like Ctrl+C: server put back,
    # the frames so far moved into place with their dataset.json.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = collect(cfg)
    except CollectError as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f'{prog}: interrupted; the CARLA server was put back as it was, and '
            f'{cfg.out / "dataset.json"} lists the frames written so far',
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f'wrote {result.frames} frames ({result.class_set}, CARLA {result.server_version}) '
        f'to {result.out} in {result.seconds:.0f} s'
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
