"""The ROS 2 process environment semseg's commands, tests and demo run in (no rclpy import).

Two things, both read by the middleware when ``rclpy.init`` creates the DDS participant, so
they must be in ``os.environ`` before that:

* the shipped Fast DDS profile ``config/fastdds_large_data.xml`` (large shared-memory segments:
  ~5 ms instead of ~15 ms per 800x600 bgra8 frame, see the file), set as
  ``FASTDDS_DEFAULT_PROFILES_FILE`` unless the user already set one;
* for tests, the demo and the benchmarks: an isolated graph, i.e. a ``ROS_DOMAIN_ID`` of its
  own and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, so that runs never see each other or
  anything else on the network.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

PACKAGE = 'semseg_ros'
FASTDDS_PROFILE_NAME = 'fastdds_large_data.xml'
PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
#: Domain ids handed out for isolated graphs; 0 (everyone's default) is never used.
DOMAIN_IDS = range(1, 200)


def share_file(*parts: str) -> Path | None:
    """A file of this package's ``share/`` tree: the source checkout's copy first (``config/``
    next to ``semseg_ros/``), then the installed one (pip's ``sys.prefix/share``, or the
    ament index of a colcon install). None when neither exists."""
    candidates = [
        Path(__file__).resolve().parents[1].joinpath(*parts),
        Path(sys.prefix, 'share', PACKAGE, *parts),
    ]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE), *parts))
    except Exception:  # not installed with colcon, or no ament index: fine
        pass
    return next((path for path in candidates if path.is_file()), None)


def fastdds_profile() -> Path | None:
    """The shipped Fast DDS profile (``config/fastdds_large_data.xml``), if found."""
    return share_file('config', FASTDDS_PROFILE_NAME)


def use_fastdds_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point ``FASTDDS_DEFAULT_PROFILES_FILE`` at the shipped profile unless already set.

    Call before ``rclpy.init``. Returns the profile in force (the user's own wins), or None.
    """
    env = os.environ if environ is None else environ
    if env.get(PROFILE_ENV):
        return env[PROFILE_ENV]
    profile = fastdds_profile()
    if profile is not None:
        env[PROFILE_ENV] = str(profile)
    return env.get(PROFILE_ENV)


def isolated_environment(
    domain_id: int, base: Mapping[str, str] | None = None, *, fastdds_profile: bool = True
) -> dict[str, str]:
    """``base`` (default ``os.environ``) for a ROS 2 graph of its own: ``ROS_DOMAIN_ID``,
    discovery on localhost only, and (``fastdds_profile``) the shipped Fast DDS profile."""
    if domain_id not in DOMAIN_IDS:
        msg = f'domain id {domain_id} is outside {DOMAIN_IDS.start}..{DOMAIN_IDS.stop - 1}'
        raise ValueError(msg)
    env = dict(os.environ if base is None else base)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_STATIC_PEERS', None)
    if fastdds_profile:
        use_fastdds_profile(env)
    else:
        env.pop(PROFILE_ENV, None)
    return env


def random_domain_id() -> int:
    """A domain id for an isolated graph (the demo, a benchmark); tests count their own."""
    import random

    return random.SystemRandom().choice(DOMAIN_IDS)
