"""ROS 2 names and environment as rmw_cyclonedds maps them to DDS (no cyclonedds needed).

Kept apart from :mod:`semseg_ros.transport.dds` so that tools without a middleware (the
offline bag tool) name topics exactly as the node does.
"""

from __future__ import annotations

import os

ROS_TOPIC_PREFIX = 'rt'
DOMAIN_ID_ENV = 'ROS_DOMAIN_ID'
MAX_DOMAIN_ID = 232  # the largest id whose RTPS port numbers still fit in 16 bits


class TransportError(RuntimeError):
    """The DDS layer refused something (bad name, domain, config); the message says the fix."""


def resolve_topic(name: str, *, node_name: str = 'semseg_node', namespace: str = '/') -> str:
    """A ROS topic name made absolute the way rcl does it.

    ``/x`` stays; ``x`` becomes ``<namespace>/x``; ``~/x`` becomes ``<namespace>/<node>/x``.
    """
    if not name or name in ('/', '~'):
        raise TransportError(f'topic name {name!r} is empty; give a name such as /camera/image')
    if not namespace.startswith('/'):
        raise TransportError(f'namespace {namespace!r} must start with "/"')
    base = namespace.rstrip('/')
    if name.startswith('~'):
        if not name.startswith('~/'):
            raise TransportError(f'topic name {name!r}: "~" must be followed by "/"')
        resolved = f'{base}/{node_name}/{name[2:]}'
    elif name.startswith('/'):
        resolved = name
    else:
        resolved = f'{base}/{name}'
    parts = resolved.split('/')[1:]
    if any(not p or not (p[0].isalpha() or p[0] == '_') for p in parts) or not all(
        c.isalnum() or c in '_/' for c in resolved
    ):
        msg = (
            f'topic name {name!r} (resolved {resolved!r}) is not a valid ROS name: tokens of '
            'letters, digits and "_" separated by single "/", not starting with a digit'
        )
        raise TransportError(msg)
    return resolved


def dds_topic_name(ros_topic: str) -> str:
    """``/carla/ego_vehicle/rgb_front/image`` -> ``rt/carla/ego_vehicle/rgb_front/image``."""
    if not ros_topic.startswith('/'):
        msg = f'{ros_topic!r} is relative; resolve it first (resolve_topic) to an absolute name'
        raise TransportError(msg)
    return ROS_TOPIC_PREFIX + ros_topic


def domain_id_from_env(environ: dict[str, str] | None = None) -> int:
    """``ROS_DOMAIN_ID`` as ROS 2 reads it: unset or empty means 0."""
    env = os.environ if environ is None else environ
    text = env.get(DOMAIN_ID_ENV, '').strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_DOMAIN_ID:
        msg = (
            f'{DOMAIN_ID_ENV}={text!r} is not a domain id; set it to an integer in '
            f'0..{MAX_DOMAIN_ID} (ROS 2 recommends 0..101) or unset it for 0'
        )
        raise TransportError(msg)
    return value
