"""`semseg data check`: every problem is found and names its file; outputs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from semseg_ros.labels import LYFT13
from training.data.check import (
    check_dataset,
    draw_class_frequencies,
    main,
    write_report,
)
from training.data.lyft import DatasetError

H, W = 12, 16
ROADS, VEHICLES = LYFT13.id_of('Roads'), LYFT13.id_of('Vehicles')


def write_pair(episode_dir: Path, name: str, size=(W, H), label_value: int = ROADS) -> None:
    w, h = size
    (episode_dir / 'CameraRGB').mkdir(parents=True, exist_ok=True)
    (episode_dir / 'CameraSeg').mkdir(parents=True, exist_ok=True)
    ids = np.full((h, w), label_value, np.uint8)
    ids[h // 2 :] = VEHICLES if label_value == ROADS else label_value
    seg = np.dstack([np.full_like(ids, 99), np.full_like(ids, 99), ids])  # junk in G, B
    assert cv2.imwrite(
        str(episode_dir / 'CameraRGB' / f'{name}.png'), np.zeros((h, w, 3), np.uint8)
    )
    assert cv2.imwrite(str(episode_dir / 'CameraSeg' / f'{name}.png'), seg)


def make_clean(root: Path, letters: str = 'ABCDE', nested: bool = False) -> Path:
    for letter in letters:
        episode = root / f'data{letter}' / (f'data{letter}' if nested else '')
        for i in range(2):
            write_pair(episode, f'{i:03d}')
    return root


@pytest.mark.parametrize('nested', [False, True])
def test_clean_dataset(tmp_path, nested):
    report = check_dataset(make_clean(tmp_path, nested=nested), expected_size=(W, H))
    assert report.ok and report.problems == []
    assert report.total_pairs == report.clean_pairs == 10
    assert report.episodes == {f'data{c}': 2 for c in 'ABCDE'}
    freqs = report.frequencies_by_name()
    assert freqs['Roads'] == pytest.approx(0.5) and freqs['Vehicles'] == pytest.approx(0.5)
    assert sum(report.class_pixels) == 10 * H * W
    assert report.class_frequencies[ROADS] == pytest.approx(0.5)


def test_every_problem_is_found_and_names_its_file(tmp_path):
    root = make_clean(tmp_path, letters='AB')
    a_rgb, a_seg = tmp_path / 'dataA/CameraRGB', tmp_path / 'dataA/CameraSeg'
    # unpaired both ways
    (a_seg / '001.png').rename(a_seg / '900.png')
    # truncated label, unreadable image
    write_pair(tmp_path / 'dataB', '010')
    data = (tmp_path / 'dataB/CameraSeg/010.png').read_bytes()
    (tmp_path / 'dataB/CameraSeg/010.png').write_bytes(data[: len(data) // 2])
    write_pair(tmp_path / 'dataB', '011')
    (tmp_path / 'dataB/CameraRGB/011.png').write_bytes(b'not a png')
    # wrong size (both files) and a pair of different sizes
    write_pair(tmp_path / 'dataB', '020', size=(8, 6))
    write_pair(tmp_path / 'dataB', '021')
    cv2.imwrite(str(tmp_path / 'dataB/CameraSeg/021.png'), np.zeros((H, W // 2), np.uint8))
    # out-of-set label values, a stray file, an empty episode
    write_pair(tmp_path / 'dataB', '030', label_value=200)
    (a_rgb / 'Thumbs.db').write_bytes(b'x')
    (tmp_path / 'dataF/CameraRGB').mkdir(parents=True)

    report = check_dataset(root, expected_size=(W, H))
    by_kind: dict[str, list] = {}
    for problem in report.problems:
        by_kind.setdefault(problem.kind, []).append(problem)

    def paths(kind):
        return sorted(p.path for p in by_kind.get(kind, []))

    assert paths('unpaired') == [a_rgb / '001.png', a_seg / '900.png']
    assert paths('truncated') == [tmp_path / 'dataB/CameraSeg/010.png']
    assert paths('unreadable') == [tmp_path / 'dataB/CameraRGB/011.png']
    assert paths('wrong_size') == [
        tmp_path / f'dataB/{d}/020.png' for d in ('CameraRGB', 'CameraSeg')
    ]
    assert paths('size_mismatch') == [tmp_path / 'dataB/CameraSeg/021.png']
    assert paths('bad_values') == [tmp_path / 'dataB/CameraSeg/030.png']
    assert '200: 192 px' in by_kind['bad_values'][0].detail
    assert paths('unexpected_file') == [a_rgb / 'Thumbs.db']
    assert paths('empty_episode') == [tmp_path / 'dataF']
    assert not report.ok and report.out_of_set_pixels == {200: H * W}
    assert report.total_pairs == 2 + 1 + 5 and report.clean_pairs == 3


def test_most_common_size_and_dataset_json(tmp_path):
    make_clean(tmp_path, letters='A')
    write_pair(tmp_path / 'dataA', '099', size=(8, 6))
    report = check_dataset(tmp_path)
    assert report.expected_size == (W, H) and report.size_source == 'most common'
    assert {p.kind for p in report.problems} == {'wrong_size'}
    (tmp_path / 'dataset.json').write_text(
        json.dumps({'class_set': 'carla23', 'image_size': [8, 6]})
    )
    report = check_dataset(tmp_path)
    assert report.class_set.name == 'carla23' and report.expected_size == (8, 6)
    assert len(report.problems) == 4  # now the two 16x12 pairs are the wrong ones
    (tmp_path / 'dataset.json').write_text('{oops')
    with pytest.raises(DatasetError, match='not readable JSON'):
        check_dataset(tmp_path)
    report = check_dataset(tmp_path, class_set='lyft13')
    assert [p.path.name for p in report.problems if p.kind == 'info'] == ['dataset.json']


def test_empty_dataset_is_a_problem(tmp_path):
    report = check_dataset(tmp_path)
    assert [p.kind for p in report.problems] == ['empty_dataset']
    assert report.problems[0].path == tmp_path


def test_root_as_episode_and_workers_agree(tmp_path):
    for i in range(6):
        write_pair(tmp_path / 'run', f'{i}')
    write_pair(tmp_path / 'run', 'bad', label_value=77)
    one = check_dataset(tmp_path / 'run', workers=1)
    two = check_dataset(tmp_path / 'run', workers=2)
    assert one.episodes == {'run': 7}
    assert one.to_dict() == two.to_dict()
    assert [p.kind for p in two.problems] == ['bad_values']


def test_chart_is_drawn_with_a_row_per_class(tmp_path):
    report = check_dataset(make_clean(tmp_path, letters='A'))
    chart = draw_class_frequencies(report)
    assert chart.dtype == np.uint8 and chart.ndim == 3 and chart.shape[1] >= 600
    # The Roads bar (palette 128,64,128 -> BGR 128,64,128) is drawn.
    assert np.any(np.all(chart == (128, 64, 128), axis=-1))
    paths = write_report(report, tmp_path / 'out')
    assert cv2.imread(str(paths['chart'])).shape == chart.shape


def test_cli_exit_codes_and_outputs(tmp_path, capsys):
    root = make_clean(tmp_path / 'ds', letters='AB')
    assert main([str(root), '--size', f'{W}x{H}']) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith('OK')
    for name in ('report.json', 'report.txt', 'class_frequencies.png'):
        assert (root / 'check' / name).is_file()
    assert json.loads((root / 'check/report.json').read_text())['ok'] is True

    bad = root / 'dataA/CameraSeg/000.png'
    bad.write_bytes(bad.read_bytes()[:30])
    out_dir = tmp_path / 'reports'
    assert main([str(root), '--out', str(out_dir), '--workers', '1']) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith('FAILED') and 'problem' in last
    text = (out_dir / 'report.txt').read_text()
    assert str(bad) in text and 'truncated' in text

    assert main([str(tmp_path / 'nope')]) == 2
    assert main([str(root), '--size', 'big']) == 2
    assert main([str(root), '--class-set', 'nope']) == 2
    assert main([str(root), '--workers', '0']) == 2
