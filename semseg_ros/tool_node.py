"""The rclpy node a ``semseg`` tool (replay, record, the transport benchmark) runs in.

:func:`tool_node` sets the shipped Fast DDS profile (unless the user set one), initialises
rclpy on a context of its own *without* rclpy's signal handlers, and creates the node. The
tools stop on a :class:`~semseg_ros.stop_signal.StopSignal` instead: rclpy's handlers shut
the context down at once, so a recorder could not write its bag's index and a replay could
not wait for its last frames to be acknowledged. :func:`message_class` finds rclpy's message
class for a ``pkg/msg/Type`` name (what bags and topic specs carry).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from semseg_ros.ros_env import use_fastdds_profile


class MessageTypeError(ValueError):
    """A ROS message type that is malformed or not installed; the message says the fix."""


def message_class(ros_type: str) -> type:
    """``'sensor_msgs/msg/Image'`` -> ``sensor_msgs.msg.Image`` (rclpy's generated class)."""
    parts = ros_type.split('/')
    if len(parts) != 3 or parts[1] != 'msg' or not parts[0] or not parts[2]:
        msg = f'{ros_type!r} is not a message type; write it as pkg/msg/Type'
        raise MessageTypeError(msg)
    package, _, name = parts
    try:
        module = importlib.import_module(f'{package}.msg')
        return getattr(module, name)
    except (ImportError, AttributeError) as err:
        msg = (
            f'message type {ros_type} is not installed ({err}); source the ROS 2 install '
            f"that has {package}, or pip install 'ros-kilted-{package.replace('_', '-')}'"
        )
        raise MessageTypeError(msg) from err


@contextmanager
def tool_node(name: str) -> Iterator[Any]:
    """An ``rclpy.node.Node`` named ``name`` on its own context, shut down on exit.

    Reads the environment (``ROS_DOMAIN_ID``, ``ROS_AUTOMATIC_DISCOVERY_RANGE``, the Fast DDS
    profile) like any ROS 2 process; installs no signal handlers.
    """
    use_fastdds_profile()
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(args=[name], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = rclpy.create_node(name, context=context)
        yield node
    finally:
        if node is not None:
            node.destroy_node()
        context.try_shutdown()
