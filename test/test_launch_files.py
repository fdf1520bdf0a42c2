"""The launch files, checked by what can be checked without the ROS launch API.

``launch`` and ``launch_ros`` are not installable here (PyPI's ``launch`` is an unrelated
package and ``launch_ros`` is not on PyPI), so the files are parsed with ``ast`` and their
structure checked: ``generate_launch_description``, every argument with a default and a
description, the executables setup.py installs, the bridge's real launch arguments, the
topics the node uses. What they start runs for real elsewhere: the node with the same params
file and remaps in test_node.py, ``colcon build`` installing them in test_packaging.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from semseg_ros.node.params import GROUND_TRUTH_TOPIC, INPUT_TOPIC, NODE_NAME

REPO = Path(__file__).resolve().parents[1]
LAUNCH = {p.name: p for p in sorted((REPO / 'launch').glob('*.launch.py'))}

# The launch arguments of carla_ros_bridge_with_example_ego_vehicle.launch.py and of the
# files it includes (carla_ros_bridge.launch.py, carla_spawn_objects'
# carla_example_ego_vehicle.launch.py), read from carla-simulator/ros-bridge at e9063d9
# (2022-07-22). Launch configurations flow down into included files, so any of them can be
# passed to the top file.
BRIDGE_LAUNCH_ARGUMENTS = {
    # carla_ros_bridge_with_example_ego_vehicle.launch.py
    'host', 'port', 'timeout', 'role_name', 'vehicle_filter', 'spawn_point', 'town',
    'passive', 'synchronous_mode_wait_for_vehicle_control_command', 'fixed_delta_seconds',
    # carla_ros_bridge.launch.py
    'synchronous_mode', 'register_all_sensors', 'ego_vehicle_role_name',
    # carla_spawn_objects/carla_example_ego_vehicle.launch.py
    'objects_definition_file', 'spawn_point_ego_vehicle', 'spawn_sensors_only', 'control_id',
}  # fmt: skip


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding='utf-8'), filename=str(path))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Every call of ``name(...)`` or ``x.name(...)``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', None)
            if called == name:
                found.append(node)
    return found


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def literal(node: ast.expr | None):
    return ast.literal_eval(node) if node is not None else None


def value(tree: ast.Module, node: ast.expr | None):
    """A literal, or a module-level constant such as ``PACKAGE = 'semseg_ros'``."""
    if isinstance(node, ast.Name):
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets
            ):
                return literal(stmt.value)
        raise AssertionError(f'{node.id} is not a module-level constant')
    return literal(node)


def declared_arguments(tree: ast.AST) -> dict[str, ast.Call]:
    args = {}
    for call in calls(tree, 'DeclareLaunchArgument'):
        name_node = call.args[0] if call.args else keyword(call, 'name')
        args[literal(name_node)] = call
    return args


def include_arguments(tree: ast.AST, target: str) -> set[str]:
    """Keys of ``launch_arguments={...}`` of the include whose source mentions ``target``."""
    for call in calls(tree, 'IncludeLaunchDescription'):
        if target in ast.dump(call.args[0]):
            mapping = keyword(call, 'launch_arguments')
            assert isinstance(mapping, ast.Call)  # {...}.items()
            assert isinstance(mapping.func.value, ast.Dict)
            return {literal(k) for k in mapping.func.value.keys}
    raise AssertionError(f'no IncludeLaunchDescription of {target}')


def console_scripts() -> dict[str, str]:
    """``{script: 'module:function'}`` from setup.py's entry_points, read with ast."""
    for call in calls(parse(REPO / 'setup.py'), 'setup'):
        entry_points = literal(keyword(call, 'entry_points'))
        return dict(
            (part.strip() for part in line.split('=', 1))
            for line in entry_points.get('console_scripts', [])
        )
    raise AssertionError('setup.py has no setup() call')


def test_both_launch_files_exist():
    assert set(LAUNCH) == {'semseg.launch.py', 'carla_semseg.launch.py'}


@pytest.mark.parametrize('name', ['semseg.launch.py', 'carla_semseg.launch.py'])
def test_launch_file_defines_generate_launch_description(name):
    tree = parse(LAUNCH[name])
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    assert not functions['generate_launch_description'].args.args
    returns = [
        n for n in ast.walk(functions['generate_launch_description']) if isinstance(n, ast.Return)
    ]
    assert returns and all(
        isinstance(r.value, ast.Call) and r.value.func.id == 'LaunchDescription' for r in returns
    )


@pytest.mark.parametrize('name', ['semseg.launch.py', 'carla_semseg.launch.py'])
def test_every_launch_argument_has_a_default_and_a_description(name):
    args = declared_arguments(parse(LAUNCH[name]))
    assert args
    for arg, call in args.items():
        assert keyword(call, 'default_value') is not None, f'{name}: {arg} has no default_value'
        description = literal(keyword(call, 'description'))
        assert isinstance(description, str) and len(description) > 10, f'{name}: {arg}'


def test_semseg_launch_runs_the_installed_executable_with_our_topics():
    tree = parse(LAUNCH['semseg.launch.py'])
    assert {'model', 'image_topic', 'namespace', 'rviz'} <= set(declared_arguments(tree))
    nodes = {
        (value(tree, keyword(c, 'package')), literal(keyword(c, 'executable'))): c
        for c in calls(tree, 'Node')
    }
    assert set(nodes) == {('semseg_ros', 'semseg_node'), ('rviz2', 'rviz2')}
    node = nodes['semseg_ros', 'semseg_node']
    assert literal(keyword(node, 'name')) == NODE_NAME
    remapped = {literal(pair.elts[0]) for pair in keyword(node, 'remappings').elts}
    assert remapped == {INPUT_TOPIC, GROUND_TRUTH_TOPIC}


def test_setup_py_installs_the_node_executable():
    assert console_scripts().get('semseg_node') == 'semseg_ros.node:main', (
        "add 'semseg_node = semseg_ros.node:main' to setup.py's console_scripts"
    )


def test_rviz_is_optional_and_uses_our_config():
    tree = parse(LAUNCH['semseg.launch.py'])
    rviz = next(c for c in calls(tree, 'Node') if literal(keyword(c, 'executable')) == 'rviz2')
    assert 'IfCondition' in ast.dump(keyword(rviz, 'condition'))
    source = LAUNCH['semseg.launch.py'].read_text()
    for shared in ("'semseg.rviz'", "'semseg.yaml'"):
        assert shared in source
    assert literal(keyword(declared_arguments(tree)['rviz'], 'default_value')) == 'false'


def test_carla_launch_includes_the_bridge_with_its_real_arguments():
    tree = parse(LAUNCH['carla_semseg.launch.py'])
    source = LAUNCH['carla_semseg.launch.py'].read_text()
    assert "FindPackageShare('carla_ros_bridge')" in source
    passed = include_arguments(tree, 'carla_ros_bridge_with_example_ego_vehicle.launch.py')
    assert {'host', 'port', 'town', 'objects_definition_file'} <= passed
    unknown = passed - BRIDGE_LAUNCH_ARGUMENTS
    assert not unknown, f'the bridge has no launch argument(s) {unknown}'
    assert "'carla_objects.json'" in source
    assert {'host', 'port', 'town'} <= set(declared_arguments(tree))


def test_carla_launch_passes_only_arguments_semseg_launch_declares():
    carla = parse(LAUNCH['carla_semseg.launch.py'])
    passed = include_arguments(carla, 'semseg.launch.py')
    declared = set(declared_arguments(parse(LAUNCH['semseg.launch.py'])))
    assert passed <= declared, passed - declared
    assert {'model', 'image_topic', 'ground_truth', 'gt_topic', 'use_sim_time'} <= passed
    source = LAUNCH['carla_semseg.launch.py'].read_text()
    assert "'ground_truth': 'true'" in source and "'use_sim_time': 'true'" in source


def test_launch_files_reference_files_that_exist():
    for path in LAUNCH.values():
        tree = parse(path)
        for call in calls(tree, 'PathJoinSubstitution'):
            parts = call.args[0].elts
            if 'semseg_ros' not in ast.dump(parts[0]) and 'share' not in ast.dump(parts[0]):
                continue
            relative = [literal(p) for p in parts[1:]]
            if relative[0] in ('config', 'launch'):
                assert (REPO.joinpath(*relative)).is_file(), f'{path.name}: {relative}'


# --- Several cameras ------------------------------------------------------------------------


def launch_function(path: Path, name: str):
    """A plain function of a launch file (no launch import), with the module constants it
    reads: its behaviour is checked without the launch API."""
    tree = parse(path)
    keep = [
        n
        for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name == name) or isinstance(n, ast.Assign)
    ]
    namespace: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), 'exec'), namespace)
    return namespace[name]


def test_carla_launch_expands_the_camera_list_with_an_opaque_function():
    tree = parse(LAUNCH['carla_semseg.launch.py'])
    cameras = declared_arguments(tree)['cameras']
    assert literal(keyword(cameras, 'default_value')) == 'rgb_front'
    (opaque,) = calls(tree, 'OpaqueFunction')
    assert getattr(keyword(opaque, 'function'), 'id', None) == 'semseg_nodes'
    function = next(n for n in tree.body if getattr(n, 'name', '') == 'semseg_nodes')
    # The per-camera include lives in the function the OpaqueFunction runs, in a loop.
    (include,) = calls(function, 'IncludeLaunchDescription')
    assert 'semseg.launch.py' in ast.dump(include.args[0])
    assert any(isinstance(n, ast.For) for n in ast.walk(function))
    passed = include_arguments(function, 'semseg.launch.py')
    assert {'namespace', 'image_topic', 'gt_topic', 'rviz', 'rviz_config'} <= passed

    camera_list = launch_function(LAUNCH['carla_semseg.launch.py'], 'camera_list')
    assert camera_list('rgb_front') == ['rgb_front']
    assert camera_list(' rgb_front, rgb_left ,rgb_right') == ['rgb_front', 'rgb_left', 'rgb_right']
    for bad in ('', 'front', 'rgb_left,rgb_left'):
        with pytest.raises(ValueError, match=r'e\.g\. cameras:=rgb_front,rgb_left,rgb_right'):
            camera_list(bad)


def test_every_rgb_camera_has_a_segmentation_twin_and_a_place_in_the_multi_rviz():
    import json

    import yaml

    config = REPO / 'config'
    objects = json.loads((config / 'carla_objects.json').read_text())['objects']
    sensors = {s['id']: s for o in objects for s in o.get('sensors', [])}
    rgb = [i for i in sensors if i.startswith('rgb_') and i != 'rgb_view']
    assert {'rgb_front', 'rgb_left', 'rgb_right'} <= set(rgb)
    rviz = yaml.safe_load((config / 'semseg_multi.rviz').read_text())
    topics = {d['Topic']['Value'] for d in rviz['Visualization Manager']['Displays']}
    for camera in rgb:
        twin = sensors['semantic_segmentation_' + camera.removeprefix('rgb_')]
        assert twin['type'] == 'sensor.camera.semantic_segmentation'
        for key in ('spawn_point', 'image_size_x', 'image_size_y', 'fov'):
            assert twin[key] == sensors[camera][key], (camera, key)
        assert (sensors[camera]['image_size_x'], sensors[camera]['fov']) == (800, 90.0)
        assert f'/{camera}/{NODE_NAME}/overlay' in topics
