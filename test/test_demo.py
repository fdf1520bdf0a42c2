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

    # The lockstep pass: the camera waited for each mask, so every frame was segmented, and
    # the recorder's subscriptions made the node publish confidence and error images too.
    lockstep = metrics['lockstep']
    assert lockstep['replay_report'].startswith(f'lockstep: {frames} frame(s), 0 timed out')
    assert lockstep['masks_received'] == frames, lockstep['node_final_report']
    assert lockstep['confidence_images'] == lockstep['error_images'] == frames
    both = metrics['free_running_vs_lockstep']
    assert both['segmented_lockstep'] == frames
    same, common = map(int, both['masks_identical_on_common_frames'].split('/'))
    assert same == common == metrics['masks_received']  # same frames, same masks
    assert both['miou_lockstep_on_the_free_running_frames'] == both['miou_free_running']
