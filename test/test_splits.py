"""Splits (original A-E and seeded random), the manifest round trip and the split CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from semseg_ros.labels import CARLA23, class_set_from_dict
from training.data.lyft import DatasetError, Sample, scan_dataset
from training.data.splits import (
    episode_split,
    has_original_episodes,
    load_manifest,
    main,
    make_split,
    original_split,
    random_split,
    write_manifest,
)


def write_pair(episode_dir: Path, name: str) -> None:
    for sub in ('CameraRGB', 'CameraSeg'):
        (episode_dir / sub).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(episode_dir / sub / f'{name}.png'), np.zeros((4, 6, 3), np.uint8))


def make_lyft(root: Path, per_episode: int = 4, letters: str = 'ABCDE', nested: bool = False):
    for letter in letters:
        episode = root / f'data{letter}'
        if nested:
            episode = episode / f'data{letter}'
        for i in range(per_episode):
            write_pair(episode, f'{i:03d}')
    return root


def fake_samples(n: int, episode: str = 'run') -> list[Sample]:
    return [Sample(Path(f'{i}.png'), Path(f'{i}s.png'), episode, f'{i:04d}') for i in range(n)]


@pytest.mark.parametrize('nested', [False, True])
def test_original_split_by_episode(tmp_path, nested):
    samples = scan_dataset(make_lyft(tmp_path, 2, nested=nested)).samples
    assert has_original_episodes(samples)
    splits = original_split(samples)
    assert {k: len(v) for k, v in splits.items()} == {'train': 6, 'val': 2, 'test': 2}
    assert {s.episode for s in splits['train']} == {'dataA', 'dataB', 'dataC'}
    assert {s.episode for s in splits['val']} == {'dataD'}
    assert {s.episode for s in splits['test']} == {'dataE'}


def test_original_split_says_what_is_missing(tmp_path):
    samples = scan_dataset(make_lyft(tmp_path, 1, letters='ABC')).samples
    assert not has_original_episodes(samples)
    with pytest.raises(DatasetError, match=r"\['dataD', 'dataE'\]"):
        original_split(samples)
    with pytest.raises(DatasetError, match=r'not among dataA\.\.dataE'):
        original_split(fake_samples(3, 'town03') + scan_dataset(make_lyft(tmp_path, 1)).samples)


def test_random_split_is_deterministic_and_order_independent():
    samples = fake_samples(50)
    a = random_split(samples, (30, 10, 10), seed=3)
    b = random_split(list(reversed(samples)), (30, 10, 10), seed=3)
    c = random_split(samples, (30, 10, 10), seed=4)
    assert a == b and a != c
    assert [len(a[k]) for k in ('train', 'val', 'test')] == [30, 10, 10]
    everything = [s for v in a.values() for s in v]
    assert sorted(everything) == sorted(samples)  # disjoint and complete


def test_random_split_fractions_use_every_sample():
    splits = random_split(fake_samples(11), (0.6, 0.2, 0.2), seed=0)
    assert sum(len(v) for v in splits.values()) == 11
    assert len(splits['train']) in (6, 7)
    assert [len(v) for v in random_split(fake_samples(100), (0.29, 0.71, 0)).values()] == [
        29,
        71,
        0,
    ]
    partial = random_split(fake_samples(10), {'train': 0.5, 'val': 0.1}, seed=0)
    assert [len(v) for v in partial.values()] == [5, 1, 0]


@pytest.mark.parametrize(
    'sizes, match',
    [
        ((30, 20, 10), 'need 60 samples but the dataset has 50'),
        ((0.7, 0.2, 0.2), 'sum to at most 1'),
        ((1, 2), '3 values'),
        ((-1, 2, 3), 'negative'),
        ({'train': 1, 'holdout': 2}, 'holdout'),
    ],
)
def test_random_split_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        random_split(fake_samples(50), sizes)


def drives(*lengths: int) -> list[Sample]:
    """Episodes 'drive0', 'drive1', ... of the given frame counts."""
    return [s for i, n in enumerate(lengths) for s in fake_samples(n, f'drive{i}')]


def test_episode_split_keeps_every_episode_in_one_split():
    samples = drives(10, 12, 8, 9, 11, 10, 7, 13, 10, 10)  # 100 frames, 10 drives
    splits = episode_split(samples, (0.6, 0.2, 0.2), seed=1)
    episodes = {name: {s.episode for s in items} for name, items in splits.items()}
    assert not (episodes['train'] & episodes['val'] or episodes['train'] & episodes['test'])
    assert not episodes['val'] & episodes['test']
    assert sorted(s for v in splits.values() for s in v) == sorted(samples)  # all used
    # Sizes are met by whole episodes, so approximately.
    assert [len(splits[k]) for k in ('train', 'val', 'test')] == pytest.approx(
        [60, 20, 20], abs=13
    )
    # Deterministic, independent of input order, different with another seed.
    assert episode_split(list(reversed(samples)), (0.6, 0.2, 0.2), seed=1) == splits
    assert make_split(samples, 'episodes', (0.6, 0.2, 0.2), 1) == splits
    assert episode_split(samples, (0.6, 0.2, 0.2), seed=2) != splits


def test_episode_split_counts_leave_surplus_episodes_out():
    splits = episode_split(drives(5, 5, 5, 5, 5, 5), (10, 5, 0), seed=0)
    assert [len(splits[k]) for k in ('train', 'val', 'test')] == [10, 5, 0]


def test_episode_split_needs_an_episode_per_split():
    with pytest.raises(ValueError, match=r'needs as many episodes; the dataset has 2 .*random'):
        episode_split(drives(20, 20), (0.6, 0.2, 0.2))
    assert [len(v) for v in episode_split(drives(20, 20), (0.5, 0.5, 0)).values()] == [20, 20, 0]


def test_make_split_resolves_auto_and_rejects_unknown_methods(tmp_path):
    lyft = scan_dataset(make_lyft(tmp_path, 2)).samples
    assert make_split(lyft, 'auto') == original_split(lyft)
    assert make_split(fake_samples(10), 'auto', seed=3) == random_split(fake_samples(10), seed=3)
    with pytest.raises(ValueError, match="one of \\('original', 'episodes', 'random'\\)"):
        make_split(fake_samples(10), 'stratified')


def test_manifest_round_trip_is_relative_to_root(tmp_path):
    root = make_lyft(tmp_path / 'ds', 2)
    splits = original_split(scan_dataset(root).samples)
    path = write_manifest(
        root / 'manifest.json', root, splits, class_set='lyft13', method='original'
    )
    data = json.loads(path.read_text())
    assert data['root'] == '.' and data['class_set'] == 'lyft13' and data['method'] == 'original'
    assert data['counts'] == {'train': 6, 'val': 2, 'test': 2} and data['seed'] is None
    assert data['splits']['val'][0]['rgb'] == 'dataD/CameraRGB/000.png' and 'created' in data

    moved = tmp_path / 'elsewhere'
    root.rename(moved)  # dataset and manifest move together: still loads
    manifest = load_manifest(moved / 'manifest.json')
    assert manifest.root == moved and manifest.class_set == 'lyft13'
    assert manifest.counts == {'train': 6, 'val': 2, 'test': 2}
    assert manifest.splits['test'][0].rgb == moved / 'dataE/CameraRGB/000.png'
    assert manifest.info['method'] == 'original'


def test_manifest_outside_root_and_custom_class_set(tmp_path):
    root = make_lyft(tmp_path / 'ds', 1, letters='A')
    splits = random_split(scan_dataset(root).samples, (1, 0, 0), seed=7)
    custom = class_set_from_dict(
        {
            'name': 'mine',
            'classes': [{'name': 'a', 'color': [0, 0, 0]}, {'name': 'b', 'color': [9, 9, 9]}],
        }
    )
    path = write_manifest(
        tmp_path / 'out/m.json', root, splits, class_set=custom, method='random', seed=7
    )
    manifest = load_manifest(path)
    assert manifest.root == root.absolute() and manifest.info['seed'] == 7
    assert manifest.get_class_set().names == ('a', 'b')
    assert (
        load_manifest(
            write_manifest(tmp_path / 'm2.json', root, splits, class_set=CARLA23, method='random')
        ).get_class_set()
        is CARLA23
    )


def test_manifest_names_missing_files(tmp_path):
    root = make_lyft(tmp_path, 1)
    path = write_manifest(
        tmp_path / 'manifest.json',
        root,
        original_split(scan_dataset(root).samples),
        class_set='lyft13',
        method='original',
    )
    gone = tmp_path / 'dataB/CameraSeg/000.png'
    gone.unlink()
    with pytest.raises(DatasetError, match='1 file') as info:
        load_manifest(path)
    assert str(gone) in str(info.value)
    assert load_manifest(path, check_files=False).counts['train'] == 3
    with pytest.raises(DatasetError, match='does not exist'):
        load_manifest(tmp_path / 'none.json')


def test_cli_defaults_to_original_when_episodes_exist(tmp_path, capsys):
    make_lyft(tmp_path, 2)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'method: original' in out and 'wrote' in out
    assert load_manifest(tmp_path / 'manifest.json').info['method'] == 'original'


def test_cli_random_for_a_single_folder(tmp_path, capsys):
    for i in range(10):
        write_pair(tmp_path / 'run', f'{i}')
    (tmp_path / 'run/dataset.json').write_text(
        json.dumps({'class_set': 'carla23', 'source': 'carla'})
    )
    out_path = tmp_path / 'm.json'
    assert main([str(tmp_path / 'run'), '--out', str(out_path), '--seed', '5']) == 0
    assert 'method: random' in capsys.readouterr().out
    manifest = load_manifest(out_path)
    assert manifest.counts == {'train': 6, 'val': 2, 'test': 2}
    assert manifest.class_set == 'carla23' and manifest.info['source'] == 'carla'
    assert main([str(tmp_path / 'run'), '--sizes', '5,2,1', '--out', str(out_path)]) == 0
    assert load_manifest(out_path).counts == {'train': 5, 'val': 2, 'test': 1}


def test_cli_episode_split(tmp_path, capsys):
    for episode in range(5):
        for i in range(4):
            write_pair(tmp_path / f'drive{episode}', f'{i}')
    assert main([str(tmp_path), '--method', 'episodes', '--sizes', '0.6,0.2,0.2']) == 0
    out = capsys.readouterr().out
    assert 'method: episodes' in out
    manifest = load_manifest(tmp_path / 'manifest.json')
    assert manifest.info['method'] == 'episodes' and manifest.counts == {
        'train': 12,
        'val': 4,
        'test': 4,
    }
    assert len({s.episode for s in manifest.splits['val']}) == 1


def test_cli_errors(tmp_path, capsys):
    make_lyft(tmp_path, 1, letters='AB')
    assert main([str(tmp_path), '--method', 'original']) == 1
    assert 'dataC' in capsys.readouterr().err
    assert main([str(tmp_path), '--sizes', '1,2']) == 2
    assert main([str(tmp_path), '--method', 'original', '--sizes', '1,1,0']) == 2
    assert main([str(tmp_path / 'nope')]) == 2
    assert main([str(tmp_path), '--sizes', '9,9,9']) == 1
    assert 'need 27 samples' in capsys.readouterr().err
