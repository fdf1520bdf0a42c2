"""Class sets: the built-in tables are CARLA's, conversions are exact and round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from semseg_ros.labels import (
    BUILTIN_CLASS_SETS,
    CARLA23,
    CITYSCAPES29,
    LYFT13,
    UNKNOWN_ID,
    ClassSetError,
    class_set_from_dict,
    get_class_set,
    load_class_set,
    mapping_lut,
    mapping_table,
    remap,
)


def test_builtin_sizes_and_spot_values_match_design():
    assert (len(LYFT13), len(CARLA23), len(CITYSCAPES29)) == (13, 23, 29)
    assert LYFT13.names[10] == 'Vehicles' and tuple(LYFT13.colors[10]) == (0, 0, 255)
    assert LYFT13.names[6] == 'RoadLines' and tuple(LYFT13.colors[6]) == (157, 234, 50)
    # carla23 keeps ids 0-12 but recolours Fences, Other and Vehicles.
    assert CARLA23.names[:13] == LYFT13.names
    assert tuple(CARLA23.colors[2]) == (100, 40, 40)
    assert tuple(CARLA23.colors[3]) == (55, 90, 80)
    assert tuple(CARLA23.colors[10]) == (0, 0, 142)
    assert CARLA23.names[13:] == (
        'Sky', 'Ground', 'Bridge', 'RailTrack', 'GuardRail', 'TrafficLight', 'Static',
        'Dynamic', 'Water', 'Terrain',
    )  # fmt: skip
    assert CITYSCAPES29.names[14] == 'Car' and tuple(CITYSCAPES29.colors[14]) == (0, 0, 142)
    assert CITYSCAPES29.names[24] == 'RoadLines'
    assert tuple(CITYSCAPES29.colors[10]) == (152, 251, 152)


@pytest.mark.parametrize('class_set', BUILTIN_CLASS_SETS.values(), ids=BUILTIN_CLASS_SETS)
def test_color_id_round_trip_for_every_class(class_set):
    ids = np.arange(class_set.num_classes, dtype=np.uint8).reshape(1, -1).repeat(3, axis=0)
    colors = class_set.id_to_color(ids)
    assert colors.shape == (*ids.shape, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(class_set.color_to_id(colors), ids)


def test_color_to_id_marks_unknown_colours_instead_of_guessing():
    rgb = np.array([[[0, 0, 255], [1, 2, 3], [128, 64, 128]]], np.uint8)
    np.testing.assert_array_equal(LYFT13.color_to_id(rgb), [[10, UNKNOWN_ID, 7]])
    np.testing.assert_array_equal(LYFT13.color_to_id(rgb, unknown=0), [[10, 0, 7]])


def test_color_to_id_rejects_non_rgb_arrays():
    with pytest.raises(ClassSetError, match=r'\(\.\.\., 3\)'):
        LYFT13.color_to_id(np.zeros((4, 4), np.uint8))


def test_carla_bridge_palette_image_maps_to_lyft13_ids():
    # What the CARLA 0.9.13 segmentation camera publishes: CityScapesPalette colours.
    carla_ids = np.array([[13, 10, 22], [18, 6, 7]], np.uint8)  # Sky Vehicles Terrain / ...
    palette_bgr = CARLA23.id_to_color(carla_ids)[..., ::-1]  # the bridge sends bgra8
    lyft = remap(CARLA23.color_to_id(palette_bgr[..., ::-1]), CARLA23, LYFT13)
    expected = [['None', 'Vehicles', 'Vegetation'], ['TrafficSigns', 'RoadLines', 'Roads']]
    assert [[LYFT13.names[i] for i in row] for row in lyft] == expected


def test_cityscapes_vehicle_classes_all_become_lyft_vehicles():
    table = mapping_table(CITYSCAPES29, LYFT13)
    for name in ('Car', 'Truck', 'Bus', 'Train', 'Motorcycle', 'Bicycle'):
        assert table[name] == 'Vehicles'
    assert table['Rider'] == 'Pedestrians' and table['Unlabeled'] == 'None'


@pytest.mark.parametrize('source', BUILTIN_CLASS_SETS.values(), ids=BUILTIN_CLASS_SETS)
@pytest.mark.parametrize('target', BUILTIN_CLASS_SETS.values(), ids=BUILTIN_CLASS_SETS)
def test_every_builtin_pair_maps_every_class(source, target):
    lut = mapping_lut(source, target)
    assert np.all(lut[: source.num_classes] < target.num_classes)
    assert np.all(lut[source.num_classes :] == UNKNOWN_ID)


def test_lyft13_to_carla23_and_back_is_identity():
    ids = np.arange(13, dtype=np.uint8)
    np.testing.assert_array_equal(remap(remap(ids, LYFT13, CARLA23), CARLA23, LYFT13), ids)


def test_out_of_set_ids_stay_unknown_through_mapping_and_colour_black():
    ids = np.array([3, 200], np.uint8)
    np.testing.assert_array_equal(remap(ids, LYFT13, CARLA23), [3, UNKNOWN_ID])
    np.testing.assert_array_equal(LYFT13.id_to_color(ids)[1], [0, 0, 0])


CUSTOM_YAML = """\
name: two_wheels
classes:
  - {name: Background, color: [0, 0, 0]}
  - {name: Road, color: [128, 64, 128]}
  - {name: Bike, color: [119, 11, 32]}
maps_to:
  lyft13: {Background: None, Road: Roads, Bike: Vehicles}
"""


def test_custom_set_from_yaml_converts_and_maps(tmp_path):
    path = tmp_path / 'two_wheels.yaml'
    path.write_text(CUSTOM_YAML)
    custom = get_class_set(path)
    assert custom.name == 'two_wheels' and custom.names == ('Background', 'Road', 'Bike')
    np.testing.assert_array_equal(remap(np.array([0, 1, 2]), custom, LYFT13), [0, 7, 10])
    assert load_class_set(path).to_dict() == custom.to_dict()


def test_custom_set_without_mapping_names_the_unmapped_classes(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text(CUSTOM_YAML.split('maps_to')[0])
    with pytest.raises(ClassSetError, match=r"\['Background', 'Road', 'Bike'\].*maps_to"):
        mapping_lut(load_class_set(path), LYFT13)


@pytest.mark.parametrize(
    ('data', 'message'),
    [
        ({'classes': []}, 'needs the keys "name" and "classes"'),
        ({'name': 'x', 'classes': []}, 'non-empty list'),
        ({'name': 'x', 'classes': [{'name': 'a'}]}, 'class #0'),
        ({'name': 'x', 'classes': [{'name': 'a', 'color': [0, 0, 300]}]}, 'integers 0..255'),
        (
            {'name': 'x', 'classes': [{'name': 'a', 'color': [1, 1, 1]}] * 2},
            'duplicate class names',
        ),
        (
            {
                'name': 'x',
                'classes': [{'name': 'a', 'color': [1, 1, 1]}, {'name': 'b', 'color': [1, 1, 1]}],
            },
            'share a colour',
        ),
    ],
)
def test_invalid_custom_sets_say_what_is_wrong(data, message):
    with pytest.raises(ClassSetError, match=message):
        class_set_from_dict(data, source='my.yaml')


def test_unknown_names_and_missing_files_are_clear(tmp_path):
    with pytest.raises(ClassSetError, match=r"unknown class set 'carla99'.*lyft13"):
        get_class_set('carla99')
    with pytest.raises(ClassSetError, match='does not exist'):
        get_class_set(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: [unclosed')
    with pytest.raises(ClassSetError, match='not valid YAML'):
        load_class_set(bad)
    with pytest.raises(ClassSetError, match="no class 'Sky'"):
        LYFT13.id_of('Sky')


def test_shipped_example_class_set_loads():
    from pathlib import Path

    example = Path(__file__).parents[1] / 'config' / 'class_sets' / 'example.yaml'
    custom = load_class_set(example)
    assert mapping_lut(custom, LYFT13)[: custom.num_classes].max() < 13


def test_palette_is_read_only():
    with pytest.raises(ValueError, match='read-only'):
        LYFT13.colors[0, 0] = 1
