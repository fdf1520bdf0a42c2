"""The package builds with colcon as ROS users do, and its manifest is sound."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
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


def colcon_workspace(root: Path) -> str:
    """``root/src/semseg_ros`` -> this checkout, as a ROS user's workspace; returns colcon."""
    colcon = shutil.which('colcon', path=str(Path(sys.executable).parent)) or shutil.which(
        'colcon'
    )
    if colcon is None:
        pytest.skip('colcon is not installed: pip install colcon-common-extensions')
    (root / 'src').mkdir()
    (root / 'src' / 'semseg_ros').symlink_to(REPO)
    return colcon


def test_colcon_build_installs_package_config_and_entry_point(tmp_path):
    colcon = colcon_workspace(tmp_path)
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
    # The training half installs as semseg_ros_training, never as a top-level `training`.
    assert (site / 'semseg_ros_training' / 'data').is_dir()
    assert (site / 'semseg_ros_training' / 'configs' / 'cpu.yaml').is_file()
    assert not (site / 'training').exists()


def test_colcon_symlink_install_builds_and_runs_from_the_sources(tmp_path):
    colcon = colcon_workspace(tmp_path)
    # The ROS developer's loop: build once, edit the sources, rerun without rebuilding.
    result = subprocess.run(
        [colcon, 'build', '--symlink-install', '--base-paths', 'src',
         '--event-handlers', 'console_direct-'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    build = tmp_path / 'build' / 'semseg_ros'  # what colcon's python path hook adds
    assert (build / 'semseg_ros_training').resolve() == REPO / 'training'
    script = tmp_path / 'install' / 'semseg_ros' / 'lib' / 'semseg_ros' / 'semseg'
    env = {**os.environ, 'PYTHONPATH': str(build)}
    run = subprocess.run([sys.executable, str(script), 'export', '--help'], cwd=tmp_path,
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert run.returncode == 0 and '--upgrade' in run.stdout, run.stderr


# What a wheel needs to build: setup.py's inputs (package data, data_files, the README).
WHEEL_SOURCES = [
    'setup.py', 'setup.cfg', 'pyproject.toml', 'README.md', 'package.xml',
    'resource', 'launch', 'config', 'models', 'semseg_ros', 'training',
]  # fmt: skip

# Run inside the installed copy, next to a decoy top-level `training` that raises on import.
INSTALLED_CHECK = """
import contextlib, importlib, io, sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
from semseg_ros.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(['--help']) == 0
assert 'torch' not in sys.modules, 'semseg --help imported torch'
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(['export', '--help'])
    except SystemExit as exit_info:
        code = exit_info.code
assert code == 0 and out.getvalue().startswith('usage: semseg export'), out.getvalue()
from semseg_ros.training_half import package_name, training_module
assert package_name() == 'semseg_ros_training', package_name()
for name in ('semseg_ros', 'semseg_ros_training.export', 'semseg_ros_training.train'):
    module = importlib.import_module(name)
    assert site in Path(module.__file__).resolve().parents, (name, module.__file__)
assert training_module('config').load_config('cpu').model is not None  # configs/ shipped
assert 'training' not in sys.modules, 'the decoy training package was imported'
print('installed copy ok')
"""


def test_wheel_installs_training_half_as_semseg_ros_training(tmp_path):
    """The wheel holds semseg_ros_training/ and no top-level training/; installed next to
    another distribution's `training`, the CLI's training commands use semseg_ros_training."""
    pytest.importorskip('torch', reason='the installed check runs `semseg export --help`')
    src = tmp_path / 'src'  # a clean copy: no stale build/ of the checkout ends up in the wheel
    src.mkdir()
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.engine')
    for name in WHEEL_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '--no-input']
    dist = tmp_path / 'dist'
    build = subprocess.run(
        [*pip, 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob('semseg_ros-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split('/')[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert 'training' not in tops
    assert {'semseg_ros', 'semseg_ros_training'} <= tops
    for module in ('train.py', 'export.py', 'data/synthetic.py', 'configs/cpu.yaml'):
        assert f'semseg_ros_training/{module}' in names

    site = tmp_path / 'site'
    install = subprocess.run(
        [*pip, 'install', '--no-deps', '--no-compile', '-q', '--target', str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert not (site / 'training').exists()
    # Another distribution's top-level `training`, in the same site-packages.
    (site / 'training').mkdir()
    (site / 'training' / '__init__.py').write_text(
        "raise ImportError('decoy: another distribution owns this training package')\n"
    )
    env = {**os.environ, 'PYTHONPATH': str(site)}
    check = subprocess.run(
        [sys.executable, '-c', INSTALLED_CHECK, str(site)],
        cwd=tmp_path,  # not the checkout: its training/ must not be importable
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'installed copy ok' in check.stdout
    # The console script pip wrote runs a training-half command from the installed copy.
    script = subprocess.run(
        [sys.executable, str(site / 'bin' / 'semseg'), 'data', 'synth', '--help'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0, script.stderr
    assert script.stdout.startswith('usage: semseg data synth')
