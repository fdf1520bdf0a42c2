"""config/: the node's params file, the bridge's objects.json and the rviz2 view."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import yaml

from semseg_ros.node.live_params import normalize_highlight
from semseg_ros.node.params import NODE_NAME, OUTPUT_TOPICS, PARAMETERS, NodeParams

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'config'


# --- semseg.yaml ------------------------------------------------------------------------------


def test_params_file_lists_every_parameter():
    document = yaml.safe_load((CONFIG / 'semseg.yaml').read_text())
    (section,) = document.values()
    listed = set(section['ros__parameters'])
    assert listed == {p.name for p in PARAMETERS}


def test_params_file_defaults_are_typed_as_declared():
    # rclpy infers a parameter's type from the declared default: a YAML `1` for a float
    # parameter would be rejected at start, so the file must use the declared types.
    document = yaml.safe_load((CONFIG / 'semseg.yaml').read_text())
    (section,) = document.values()
    for f in dataclasses.fields(NodeParams):
        value = section['ros__parameters'][f.name]
        if f.name == 'highlight_classes':  # rcl's YAML has no empty list: '' stands for none
            assert normalize_highlight(value) == f.default
            continue
        assert type(value) is type(f.default), f.name


# --- carla_objects.json -----------------------------------------------------------------------


def objects() -> list[dict]:
    return json.loads((CONFIG / 'carla_objects.json').read_text())['objects']


def ego() -> dict:
    (vehicle,) = [o for o in objects() if o['type'].startswith('vehicle.')]
    return vehicle


def sensor(sensor_id: str) -> dict:
    return next(s for s in ego()['sensors'] if s['id'] == sensor_id)


def test_ego_vehicle_is_the_bridge_example():
    vehicle = ego()
    assert (vehicle['id'], vehicle['type']) == ('ego_vehicle', 'vehicle.tesla.model3')
    ids = [s['id'] for s in vehicle['sensors']]
    assert len(ids) == len(set(ids))
    types = {s['type'] for s in vehicle['sensors']}
    assert {
        'sensor.pseudo.tf', 'sensor.pseudo.odom', 'sensor.pseudo.objects',
        'sensor.pseudo.speedometer', 'actor.pseudo.control',
    } <= types  # fmt: skip
    assert sensor('control')['type'] == 'actor.pseudo.control'  # set_initial_pose's control_id
    # carla_manual_control (started by the example launch) shows rgb_view.
    assert sensor('rgb_view')['type'] == 'sensor.camera.rgb'


def test_ground_truth_camera_lines_up_with_the_rgb_camera():
    rgb = sensor('rgb_front')
    seg = sensor('semantic_segmentation_front')
    assert rgb['type'] == 'sensor.camera.rgb'
    assert seg['type'] == 'sensor.camera.semantic_segmentation'
    assert (rgb['image_size_x'], rgb['image_size_y'], rgb['fov']) == (800, 600, 90.0)
    for key in ('spawn_point', 'image_size_x', 'image_size_y', 'fov'):
        assert seg[key] == rgb[key], key
    assert set(rgb['spawn_point']) == {'x', 'y', 'z', 'roll', 'pitch', 'yaw'}


def test_every_object_has_a_type_and_an_id():
    for obj in [*objects(), *ego()['sensors']]:
        assert isinstance(obj['type'], str) and isinstance(obj['id'], str)


# --- semseg.rviz ------------------------------------------------------------------------------


def image_displays() -> dict[str, dict]:
    rviz = yaml.safe_load((CONFIG / 'semseg.rviz').read_text())
    displays = rviz['Visualization Manager']['Displays']
    return {d['Name']: d['Topic'] for d in displays if d['Class'] == 'rviz_default_plugins/Image'}


def launch_default(argument: str) -> str:
    tree = ast.parse((REPO / 'launch' / 'semseg.launch.py').read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, 'id', '') == 'DeclareLaunchArgument'
            and ast.literal_eval(node.args[0]) == argument
        ):
            default = next(k.value for k in node.keywords if k.arg == 'default_value')
            return ast.literal_eval(default)
    raise AssertionError(argument)


def test_rviz_shows_camera_colour_mask_overlay_confidence_and_errors():
    topics = {name: topic['Value'] for name, topic in image_displays().items()}
    node = f'/{NODE_NAME}/'
    assert topics == {
        'Camera': launch_default('image_topic'),
        'Segmentation': node + OUTPUT_TOPICS['color'].removeprefix('~/'),
        'Overlay': node + OUTPUT_TOPICS['overlay'].removeprefix('~/'),
        'Confidence': node + OUTPUT_TOPICS['confidence'].removeprefix('~/'),
        'Errors': node + OUTPUT_TOPICS['error'].removeprefix('~/'),
    }


def test_rviz_qos_matches_every_publisher():
    # Best effort subscribers match reliable publishers (the bridge, semseg_node) and
    # best-effort ones; a reliable subscriber would show nothing from a best-effort camera.
    for name, topic in image_displays().items():
        assert topic['Reliability Policy'] == 'Best Effort', name
        assert topic['Durability Policy'] == 'Volatile', name
        assert (topic['History Policy'], topic['Depth']) == ('Keep Last', 1), name
