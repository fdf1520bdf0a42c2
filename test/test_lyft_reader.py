"""The Lyft-Udacity layout reader: episodes, pairing, image/label decoding, label transforms."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from semseg_ros.labels import CARLA23, LYFT13, get_class_set
from semseg_ros.pipeline import resize_label
from training.data.lyft import (
    DatasetError,
    LabelTransform,
    Sample,
    dataset_class_set,
    find_episodes,
    load_pair,
    read_dataset_info,
    read_label,
    read_rgb,
    scan_dataset,
)

H, W = 12, 16


def write_pair(episode_dir: Path, name: str, ids: np.ndarray | None = None, seed: int = 0):
    """An RGB image and a Lyft-style label (ids in red, other values in G/B) named ``name``."""
    rng = np.random.default_rng(seed)
    if ids is None:
        ids = rng.integers(0, LYFT13.num_classes, (H, W), dtype=np.uint8)
    (episode_dir / 'CameraRGB').mkdir(parents=True, exist_ok=True)
    (episode_dir / 'CameraSeg').mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (*ids.shape, 3), dtype=np.uint8)
    seg_bgr = np.dstack([np.full_like(ids, 200), np.full_like(ids, 77), ids])  # B, G, R=ids
    assert cv2.imwrite(str(episode_dir / 'CameraRGB' / f'{name}.png'), rgb[:, :, ::-1])
    assert cv2.imwrite(str(episode_dir / 'CameraSeg' / f'{name}.png'), seg_bgr)
    return rgb, ids


@pytest.mark.parametrize('nested', [False, True], ids=['flat', 'nested'])
def test_find_episodes_flat_and_nested(tmp_path, nested):
    for letter in 'AB':
        folder = tmp_path / f'data{letter}' / (f'data{letter}' if nested else '')
        write_pair(folder, '000')
    episodes = find_episodes(tmp_path)
    assert list(episodes) == ['dataA', 'dataB']
    rgb_dir, seg_dir = episodes['dataA']
    assert rgb_dir.name == 'CameraRGB' and seg_dir.name == 'CameraSeg'
    assert rgb_dir.parent.name == 'dataA'


def test_root_is_the_episode_and_any_folder_name(tmp_path):
    root = tmp_path / 'carla_run_7'
    write_pair(root, '000')
    assert list(find_episodes(root)) == ['carla_run_7']
    write_pair(tmp_path / 'town03_morning', '000')
    assert set(find_episodes(tmp_path)) == {'carla_run_7', 'town03_morning'}


def test_episode_name_clash_uses_relative_paths(tmp_path):
    write_pair(tmp_path / 'dataA', '000')
    write_pair(tmp_path / 'dataA' / 'dataA', '001')
    assert set(find_episodes(tmp_path)) == {'dataA', 'dataA/dataA'}
    root = tmp_path / 'dataA'  # root is an episode and so is a same-named folder in it
    assert set(find_episodes(root)) == {'.', 'dataA'}
    assert len(scan_dataset(root).samples) == 2


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match='does not exist'):
        find_episodes(tmp_path / 'nope')


def test_scan_pairs_by_name_and_reports_the_rest(tmp_path):
    episode = tmp_path / 'dataA'
    for name in ('b', 'a', 'c'):
        write_pair(episode, name)
    (episode / 'CameraSeg' / 'c.png').unlink()  # image without label
    write_pair(tmp_path / 'scratch', 'x')
    (episode / 'CameraSeg' / 'orphan.png').write_bytes(
        (tmp_path / 'scratch/CameraSeg/x.png').read_bytes()
    )
    (episode / 'CameraRGB' / 'notes.txt').write_text('hi')
    result = scan_dataset(tmp_path)
    names = [(s.episode, s.name) for s in result.samples]
    assert names == [('dataA', 'a'), ('dataA', 'b'), ('scratch', 'x')]
    assert result.unpaired == sorted(
        [episode / 'CameraRGB' / 'c.png', episode / 'CameraSeg' / 'orphan.png']
    )
    assert result.ignored == [episode / 'CameraRGB' / 'notes.txt']
    assert result.episode_counts() == {'dataA': 2, 'scratch': 1}
    sample = result.samples[0]
    assert sample == Sample(episode / 'CameraRGB/a.png', episode / 'CameraSeg/a.png', 'dataA', 'a')


def test_label_is_the_red_channel_and_rgb_is_rgb_order(tmp_path):
    rgb, ids = write_pair(tmp_path, 'f')
    label = read_label(tmp_path / 'CameraSeg/f.png')
    assert label.dtype == np.uint8 and label.shape == (H, W)
    np.testing.assert_array_equal(label, ids)  # not G (77) nor B (200)
    np.testing.assert_array_equal(read_rgb(tmp_path / 'CameraRGB/f.png'), rgb)


def test_single_channel_label_is_ids(tmp_path):
    ids = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 13
    cv2.imwrite(str(tmp_path / 'gray.png'), ids)
    np.testing.assert_array_equal(read_label(tmp_path / 'gray.png'), ids)


def test_rgba_image_drops_alpha(tmp_path):
    bgra = np.zeros((H, W, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 30, 255
    cv2.imwrite(str(tmp_path / 'a.png'), bgra)
    rgb = read_rgb(tmp_path / 'a.png')
    assert rgb.shape == (H, W, 3) and tuple(rgb[0, 0]) == (30, 0, 10)


def test_truncated_png_is_detected(tmp_path):
    write_pair(tmp_path, 'f')
    path = tmp_path / 'CameraSeg/f.png'
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(DatasetError, match='truncated') as info:
        read_label(path)
    assert str(path) in str(info.value) and info.value.kind == 'truncated'
    path.write_bytes(b'')
    with pytest.raises(DatasetError, match='empty'):
        read_label(path)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / 'g.png'
    garbage.write_bytes(b'this is not an image at all')
    with pytest.raises(DatasetError, match='not a readable image') as info:
        read_rgb(garbage)
    assert str(garbage) in str(info.value) and info.value.kind == 'unreadable'
    with pytest.raises(DatasetError, match='does not exist') as info:
        read_rgb(tmp_path / 'missing.png')
    assert info.value.kind == 'missing'


def test_wrong_channel_count_and_depth(tmp_path):
    cv2.imwrite(str(tmp_path / 'gray.png'), np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetError, match='1 channel') as info:
        read_rgb(tmp_path / 'gray.png')
    assert info.value.kind == 'channels'
    cv2.imwrite(str(tmp_path / 'deep.png'), np.zeros((H, W), np.uint16))
    with pytest.raises(DatasetError, match='8-bit'):
        read_label(tmp_path / 'deep.png')


def test_dataset_info_and_class_set(tmp_path):
    assert read_dataset_info(tmp_path) == {}
    assert dataset_class_set(tmp_path) is LYFT13
    (tmp_path / 'dataset.json').write_text(json.dumps({'class_set': 'carla23'}))
    assert dataset_class_set(tmp_path) is CARLA23
    (tmp_path / 'dataset.json').write_text(json.dumps({'class_set': 'nope'}))
    with pytest.raises(DatasetError, match=r'dataset\.json'):
        dataset_class_set(tmp_path)
    (tmp_path / 'dataset.json').write_text('{broken')
    with pytest.raises(DatasetError, match='not readable JSON'):
        read_dataset_info(tmp_path)


def test_resize_label_is_nearest_only():
    label = np.array([[1, 2], [3, 4]], np.uint8)
    up = resize_label(label, (4, 4))
    assert up.shape == (4, 4) and set(np.unique(up)) == {1, 2, 3, 4}
    np.testing.assert_array_equal(up[:2, :2], 1)
    down = resize_label(np.kron(label, np.ones((3, 3), np.uint8)), (2, 2))
    np.testing.assert_array_equal(down, label)
    with pytest.raises(ValueError, match='width, height'):
        resize_label(label, (0, 4))


def _ids(class_set, *names):
    return [class_set.id_of(n) for n in names]


def test_label_transform_merge_hood_and_crop_lyft13():
    roads, lines, vehicles, none, walls = _ids(
        LYFT13, 'Roads', 'RoadLines', 'Vehicles', 'None', 'Walls'
    )
    label = np.full((10, 4), walls, np.uint8)
    label[0:2] = lines
    label[:, 0] = vehicles
    out = LabelTransform(merge_roadlines=True, hood_row=6).apply(label, LYFT13)
    assert out.shape == label.shape
    assert np.all(out[0:2, 1:] == roads)
    assert np.all(out[:6, 0] == vehicles) and np.all(out[6:, 0] == none)
    assert np.all(out[2:, 1:] == walls)
    assert label[0, 1] == lines  # the input is not modified

    t = LabelTransform(crop_top=2, crop_bottom=3)
    assert t.apply(label, LYFT13).shape == (5, 4)
    image = np.zeros((10, 4, 3), np.uint8)
    assert t.crop(image).shape == (5, 4, 3)
    assert LabelTransform().is_identity


def test_hood_rows_count_in_the_uncropped_image():
    vehicles, none = _ids(LYFT13, 'Vehicles', 'None')
    label = np.full((10, 2), vehicles, np.uint8)
    out = LabelTransform(hood_row=6, crop_bottom=2).apply(label)
    assert out.shape == (8, 2)
    assert np.all(out[:6] == vehicles) and np.all(out[6:] == none)


@pytest.mark.parametrize('name', ['carla23', 'cityscapes29'])
def test_label_transform_by_name_in_newer_sets(name):
    cs = get_class_set(name)
    vehicle_names = ['Vehicles'] if name == 'carla23' else ['Car', 'Truck', 'Bus', 'Bicycle']
    vehicle_ids = _ids(cs, *vehicle_names)
    roads, lines = _ids(cs, 'Roads', 'RoadLines')
    label = np.zeros((4, len(vehicle_ids) + 1), np.uint8)
    label[:, : len(vehicle_ids)] = vehicle_ids
    label[:, -1] = lines
    out = LabelTransform(merge_roadlines=True, hood_row=2).apply(label, cs)
    np.testing.assert_array_equal(out[:2, :-1], label[:2, :-1])
    assert np.all(out[2:, :-1] == 0)  # None / Unlabeled
    assert np.all(out[:, -1] == roads)
    if name == 'cityscapes29':
        rider = cs.id_of('Rider')  # a person, not a vehicle: kept
        assert (
            LabelTransform(hood_row=0).apply(np.full((2, 2), rider, np.uint8), cs)[0, 0] == rider
        )


@pytest.mark.parametrize(
    'kwargs, match',
    [
        ({'hood_row': -1}, 'hood_row'),
        ({'crop_top': -2}, 'crop_top'),
        ({'crop_bottom': 1.5}, 'crop_bottom'),
        ({'hood_row': True}, 'hood_row'),
        ({'merge_roadlines': 'yes'}, 'merge_roadlines'),
    ],
)
def test_label_transform_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelTransform(**kwargs)


def test_label_transform_errors_at_apply_time():
    with pytest.raises(ValueError, match='removes all 4 rows'):
        LabelTransform(crop_top=2, crop_bottom=2).apply(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match='uint8'):
        LabelTransform().apply(np.zeros((4, 4), np.int32))
    from semseg_ros.labels import class_set_from_dict

    tiny = class_set_from_dict(
        {
            'name': 'tiny',
            'classes': [{'name': 'A', 'color': [0, 0, 0]}, {'name': 'B', 'color': [1, 1, 1]}],
        }
    )
    with pytest.raises(ValueError, match='lacks'):
        LabelTransform(merge_roadlines=True).apply(np.zeros((2, 2), np.uint8), tiny)
    with pytest.raises(ValueError, match='vehicle class'):
        LabelTransform(hood_row=1).apply(np.zeros((2, 2), np.uint8), tiny)


def test_load_pair_transforms_and_validates(tmp_path):
    ids = np.full((H, W), LYFT13.id_of('Roads'), np.uint8)
    rgb, _ = write_pair(tmp_path, 'f', ids)
    sample = scan_dataset(tmp_path).samples[0]
    image, label = load_pair(sample, LabelTransform(crop_top=1, crop_bottom=2))
    assert image.shape == (H - 3, W, 3) and label.shape == (H - 3, W)
    np.testing.assert_array_equal(image, rgb[1 : H - 2])

    write_pair(tmp_path, 'f', np.full((H, W), 20, np.uint8))
    with pytest.raises(DatasetError, match=r'ids \[20\] outside') as info:
        load_pair(sample)
    assert str(sample.label) in str(info.value)
    assert load_pair(sample, class_set='carla23')[1][0, 0] == 20  # 20 is Dynamic there

    cv2.imwrite(str(sample.label), np.zeros((H // 2, W), np.uint8))
    with pytest.raises(DatasetError, match='must match') as info:
        load_pair(sample)
    assert info.value.kind == 'size_mismatch'
