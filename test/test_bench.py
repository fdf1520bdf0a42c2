"""``make bench`` at smoke size: every section runs and writes its rows (the figures themselves
are measured on a quiet machine, not asserted here)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from semseg_ros import bench


def run(tmp_path, *sections: str) -> list[dict]:
    assert bench.main(['--quick', '--only', ','.join(sections), '--out', str(tmp_path)]) == 0
    return json.loads((tmp_path / 'bench.json').read_text())['rows']


def test_labels_section_times_the_lut_conversions(tmp_path):
    rows = run(tmp_path, 'labels')
    assert {r['case'] for r in rows} == {'id_to_color', 'color_to_id', 'remap carla23->lyft13'}
    assert all(r['unit'] == 'ms' and r['median'] > 0 for r in rows)


@pytest.mark.slow
def test_transport_section_compares_the_shipped_profile_with_fast_dds_defaults(tmp_path):
    pytest.importorskip('rclpy', reason='ROS 2 is not installed: pip install -e .[ros]')
    rows = {r['case']: r for r in run(tmp_path, 'transport')}
    assert len(rows) == 4 and all('2 processes' in r['note'] for r in rows.values())
    shipped = next(r for case, r in rows.items() if 'shipped profile, reliable' in case)
    received, sent = map(int, re.search(r'received (\d+)/(\d+)', shipped['note']).groups())
    assert received == sent and 'lost 0' in shipped['note']  # reliable: nothing lost


def test_gpu_section_runs_on_cuda_or_says_why_not(tmp_path):
    rows = run(tmp_path, 'gpu')
    assert rows and all(r['section'] == 'gpu' for r in rows)
    if not torch.cuda.is_available():
        (row,) = rows  # one row: the skip and its reason
        assert (
            row['note'].startswith('skipped: no CUDA (')
            and 'semseg bench --only gpu' in row['note']
        )
        return
    cases = {r['case'] for r in rows}
    for variant in (
        'fp16_channels_last',
        'fp16_channels_last_graphs',
        'fp16_channels_last_compile',
    ):
        assert {
            f'{variant} batch {b} {p}' for b in (1, 8) for p in ('engine', 'segmenter')
        } <= cases
    assert 'memory-traffic floor' in cases


@pytest.mark.slow
def test_cameras_section_runs_one_node_process_per_camera(tmp_path):
    pytest.importorskip('rclpy', reason='ROS 2 is not installed: pip install -e .[ros]')
    rows = {r['case']: r for r in run(tmp_path, 'cameras')}
    for camera in ('1 camera: rgb_front', '2 cameras: rgb_front', '2 cameras: rgb_left'):
        assert rows[f'{camera} output']['unit'] == 'Hz'
        assert rows[f'{camera} output']['median'] > 0, rows  # every node published masks
        assert rows[f'{camera} node CPU']['median'] > 0
        assert 0 <= rows[f'{camera} stale drops']['median'] <= 100


@pytest.mark.slow
def test_threads_section_runs_the_node_at_its_default_and_another_setting(tmp_path):
    pytest.importorskip('rclpy', reason='ROS 2 is not installed: pip install -e .[ros]')
    rows = {r['case']: r for r in run(tmp_path, 'threads')}
    settings = [r for case, r in rows.items() if case.endswith('processing p50')]
    assert len(settings) == 2 and all(r['median'] > 0 for r in settings)
    assert sum('the node default' in r['note'] for r in settings) == 1
    verdict = next(r for case, r in rows.items() if case.startswith('default ('))
    assert verdict['unit'] == 'x' and 'target >= 1x' in verdict['note']
