"""Shared test settings.

Tests marked ``slow`` are end-to-end runs. ``make test`` runs them at a small size;
``SEMSEG_TEST_SCALE=full`` runs them at the real size (800x600 frames, longer streams).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class TestScale:
    full: bool

    def pick(self, small, full):
        """``small`` in ``make test``, ``full`` under SEMSEG_TEST_SCALE=full."""
        return full if self.full else small


@pytest.fixture(scope='session')
def test_scale() -> TestScale:
    value = os.environ.get('SEMSEG_TEST_SCALE', 'small')
    if value not in ('small', 'full'):
        raise pytest.UsageError(f"SEMSEG_TEST_SCALE must be 'small' or 'full', got {value!r}")
    return TestScale(full=value == 'full')


# --- ROS 2 ------------------------------------------------------------------------------------
# Every test that touches ROS gets a graph of its own: a domain id nobody else in this run uses,
# and discovery on localhost only, so tests never see each other or anything on the network.
# Processes the tests start inherit this environment (see semseg_ros.ros_env).

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.pop('ROS_STATIC_PEERS', None)
os.environ.setdefault('PYTHONUNBUFFERED', '1')


@pytest.fixture
def ros_domain_id():
    """A ROS_DOMAIN_ID for this test alone: leased, so no other test session on this machine
    holds it at the same time (see ros_graph.lease_domain_id)."""
    from ros_graph import lease_domain_id

    with lease_domain_id() as domain_id:
        yield domain_id


@pytest.fixture
def ros_env(ros_domain_id) -> dict[str, str]:
    """The environment for processes of this test's graph (domain, localhost, Fast DDS profile)."""
    from ros_graph import graph_environment

    return graph_environment(ros_domain_id)


@pytest.fixture
def ros_context(ros_domain_id):
    """An initialized rclpy context on this test's domain; shut down after the test."""
    rclpy = pytest.importorskip('rclpy', reason='ROS 2 is not installed: pip install -e .[ros]')
    from semseg_ros.ros_env import use_fastdds_profile

    use_fastdds_profile()  # read when the first participant of this process is created
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)
