"""ROS 2 topic names resolved the way rcl resolves them, without ROS.

Kept free of rclpy so that tools without a middleware (the offline bag tool) name topics
exactly as the node does, and so that a bad name is refused before any process starts.
"""

from __future__ import annotations


class TopicNameError(ValueError):
    """A topic name or namespace that ROS 2 would refuse; the message says the fix."""


def resolve_topic(name: str, *, node_name: str = 'semseg_node', namespace: str = '/') -> str:
    """A ROS topic name made absolute the way rcl does it.

    ``/x`` stays; ``x`` becomes ``<namespace>/x``; ``~/x`` becomes ``<namespace>/<node>/x``.
    """
    if not name or name in ('/', '~'):
        raise TopicNameError(f'topic name {name!r} is empty; give a name such as /camera/image')
    if not namespace.startswith('/'):
        raise TopicNameError(f'namespace {namespace!r} must start with "/"')
    base = namespace.rstrip('/')
    if name.startswith('~'):
        if not name.startswith('~/'):
            raise TopicNameError(f'topic name {name!r}: "~" must be followed by "/"')
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
        raise TopicNameError(msg)
    return resolved
