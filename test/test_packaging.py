"""The package builds with colcon as ROS users do, and its manifest is sound."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# rosdep keys outside the ROS distribution itself, each checked in ros/rosdistro's
# rosdep/python.yaml (2026-08-22). Add a key here only after checking it resolves there.
VERIFIED_ROSDEP_KEYS = {
    'python3-numpy',
    'python3-opencv',
    'python3-yaml',
    'python3-tqdm',
    'python3-onnxruntime-pip',
    'python3-pytest',
}
ROS_PACKAGES = {
    'rclpy',
    'sensor_msgs',
    'std_msgs',
    'diagnostic_msgs',
    'rosgraph_msgs',
    'launch',
    'launch_ros',
    'rviz2',
}


def test_package_xml_is_format_3_ament_python_with_resolvable_keys():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'semseg_ros'
    assert root.findtext('export/build_type') == 'ament_python'
    depends = {e.text for e in root if e.tag.endswith('depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs'} <= depends
    unverified = depends - VERIFIED_ROSDEP_KEYS - ROS_PACKAGES
    assert not unverified, f'check these rosdep keys in ros/rosdistro first: {unverified}'


def test_ament_resource_marker_and_setup_cfg_script_dir():
    assert (REPO / 'resource' / 'semseg_ros').is_file()
    assert 'script_dir=$base/lib/semseg_ros' in (REPO / 'setup.cfg').read_text()


def test_colcon_build_installs_package_config_and_entry_point(tmp_path):
    colcon = shutil.which('colcon', path=str(Path(sys.executable).parent)) or shutil.which(
        'colcon'
    )
    if colcon is None:
        pytest.skip('colcon is not installed: pip install colcon-common-extensions')
    (tmp_path / 'src').mkdir()
    (tmp_path / 'src' / 'semseg_ros').symlink_to(REPO)
    result = subprocess.run(
        [colcon, 'build', '--base-paths', 'src', '--event-handlers', 'console_direct-'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = tmp_path / 'install' / 'semseg_ros'
    share = prefix / 'share' / 'semseg_ros'
    assert (share / 'package.xml').is_file()
    assert (share / 'config' / 'class_sets' / 'example.yaml').is_file()
    for launch_file in (REPO / 'launch').glob('*.launch.py'):
        assert (share / 'launch' / launch_file.name).is_file()
    for config_file in (REPO / 'config').glob('*.*'):
        assert (share / 'config' / config_file.name).is_file()
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'semseg_ros'
    assert marker.is_file()

    # `ros2 run semseg_ros semseg` finds executables in lib/<package>.
    script = prefix / 'lib' / 'semseg_ros' / 'semseg'
    site = next(prefix.glob('lib/python3*/site-packages'))
    env = {**os.environ, 'PYTHONPATH': str(site)}
    help_run = subprocess.run(
        [sys.executable, str(script), '--help'], capture_output=True, text=True, env=env
    )
    assert help_run.returncode == 0, help_run.stderr
    assert 'data' in help_run.stdout
    assert (site / 'training' / 'data').is_dir()
