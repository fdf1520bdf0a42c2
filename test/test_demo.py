"""``make demo`` at a small size: the three ROS 2 processes and every file it promises."""

from __future__ import annotations

import json

import pytest

pytest.importorskip('rclpy', reason='ROS 2 is not installed: pip install -e .[ros]')

from semseg_ros.demo import run_demo


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_accounts_for_every_frame(tmp_path, ros_domain_id):
    frames = 8
    metrics = run_demo(tmp_path / 'demo', frames=frames, rate=10.0, domain_id=ros_domain_id)
    for name in ('drive.gif', 'contact_sheet.png', 'metrics.json', 'data_samples.png'):
        assert (tmp_path / 'demo' / name).stat().st_size > 0, name
    assert json.loads((tmp_path / 'demo' / 'metrics.json').read_text())['miou'] == metrics['miou']
    assert metrics['frames_published'] == frames
    assert 0 < metrics['masks_received'] <= frames
    drops = metrics['drops']
    received = metrics['frames_received_by_node']
    assert received + drops['lost in transport'] == frames, metrics['node_final_report']
    assert (
        metrics['masks_received']
        + drops['stale']
        + drops['bad input']
        + drops['failed']
        + (drops['skipped (no subscriber)'])
        == received
    ), metrics['node_final_report']
    assert 0.3 < metrics['miou'] <= 1.0  # the shipped model on its own kind of data
