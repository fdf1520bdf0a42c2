"""The synthetic CARLA-like generator: determinism, label truth, layout and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from semseg_ros.labels import LYFT13
from training.data import synthetic
from training.data.synthetic import (
    EPISODES,
    Drive,
    SynthConfig,
    SynthError,
    benchmark,
    generate_dataset,
    main,
    render_frame,
    render_sequence,
)

SMALL = SynthConfig(width=200, height=150)
FLAT = SynthConfig(width=200, height=150, effects=False)
VEHICLES = LYFT13.id_of('Vehicles')
ROOT = Path(__file__).resolve().parents[1]


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def test_frame_shape_dtype_and_determinism():
    rgb, label = render_frame(5, 3, SMALL)
    assert rgb.shape == (150, 200, 3) and rgb.dtype == np.uint8
    assert label.shape == (150, 200) and label.dtype == np.uint8
    again_rgb, again_label = render_frame(5, 3, SMALL)
    assert np.array_equal(rgb, again_rgb) and np.array_equal(label, again_label)
    other_rgb, other_label = render_frame(6, 3, SMALL)
    assert not np.array_equal(label, other_label)
    assert not np.array_equal(rgb, other_rgb)


@pytest.mark.parametrize('index', range(6))
def test_label_is_a_function_of_the_flat_colour(index):
    """With effects off every pixel shows a material of its own class: one colour, one class.

    That also rules out anti-aliased edges, which would blend colours across classes.
    """
    rgb, label = render_frame(11, index, FLAT)
    assert label.max() < LYFT13.num_classes
    pairs = np.unique(_pack(rgb).ravel() * 16 + label.ravel())
    colours = pairs // 16
    assert len(np.unique(colours)) == len(colours), 'a colour is used by two classes'
    # The flat image holds only material colours: few distinct values, no noise.
    assert len(colours) < 256


def test_hood_rows_are_vehicles_at_every_size():
    for cfg in (SMALL, SynthConfig(width=320, height=240)):
        _, label = render_frame(2, 0, cfg)
        hood = cfg.hood_row_px
        assert hood == round(496 * cfg.height / 600)
        assert (label[hood:] == VEHICLES).all()
        # The curved top edge: the middle of the hood reaches above the first all-hood row.
        assert label[hood - 3, cfg.width // 2] == VEHICLES


def test_every_class_appears_over_a_small_set():
    counts = np.zeros(LYFT13.num_classes, np.int64)
    for i in range(30):
        _, label = render_frame(0, i, SMALL)
        counts += np.bincount(label.ravel(), minlength=LYFT13.num_classes)
    missing = [LYFT13.names[c] for c in np.nonzero(counts == 0)[0]]
    assert not missing, f'classes never drawn: {missing}'
    share = counts / counts.sum()
    assert share[LYFT13.id_of('Roads')] > 0.12
    assert share[LYFT13.id_of('Buildings')] > 0.08
    assert share[LYFT13.id_of('None')] > 0.04


def test_geometry_scales_with_image_size():
    """The same frame at two sizes is the same scene: class shares agree closely."""
    small = render_frame(4, 1, SMALL)[1]
    large = render_frame(4, 1, SynthConfig(width=400, height=300))[1]
    n = LYFT13.num_classes
    share_small = np.bincount(small.ravel(), minlength=n) / small.size
    share_large = np.bincount(large.ravel(), minlength=n) / large.size
    assert np.abs(share_small - share_large).max() < 0.02
    # Nearest-neighbour downscaling of the large label mostly reproduces the small one.
    down = cv2.resize(large, (200, 150), interpolation=cv2.INTER_NEAREST)
    assert (down == small).mean() > 0.9


def test_sequence_is_coherent_and_regenerable():
    frames = list(render_sequence(8, 6, SMALL))
    assert len(frames) == 6
    labels = [label for _, label in frames]
    step = np.mean([(labels[i] != labels[i + 1]).mean() for i in range(5)])
    other = [label for _, label in render_sequence(9, 6, SMALL)]
    across = np.mean([(a != b).mean() for a, b in zip(labels, other, strict=True)])
    assert 0 < step < across
    assert not np.array_equal(labels[0], labels[5]), 'the camera should move'
    # Any frame can be rendered alone and equals the streamed one.
    alone_rgb, alone_label = Drive(8, 6, SMALL).frame(4)
    assert np.array_equal(alone_label, labels[4])
    assert np.array_equal(alone_rgb, frames[4][0])
    with pytest.raises(IndexError):
        Drive(8, 6, SMALL).frame(6)


def test_moving_objects_move_between_frames():
    drive = Drive(1, 40, FLAT)
    _, first = drive.frame(0)
    _, later = drive.frame(39)
    assert (first != later).mean() > 0.05


@pytest.mark.parametrize('mode', ['random', 'sequence'])
def test_dataset_layout_json_and_png_round_trip(tmp_path, mode):
    out = generate_dataset(tmp_path / 'ds', 10, seed=3, mode=mode, config=SMALL, progress=False)
    info = json.loads((out / 'dataset.json').read_text())
    assert info['class_set'] == 'lyft13' and info['source'] == 'synthetic'
    assert info['image_size'] == [200, 150]
    assert info['generator']['seed'] == 3 and info['generator']['frames'] == 10
    assert info['generator']['mode'] == mode and info['generator']['version'] >= 1
    if mode == 'random':
        for ep in EPISODES:
            names = sorted(p.name for p in (out / ep / 'CameraRGB').iterdir())
            assert names == sorted(p.name for p in (out / ep / 'CameraSeg').iterdir())
            assert len(names) == 2
        path = out / 'dataC' / 'CameraSeg' / '000005.png'
        rgb, label = render_frame(3, 5, SMALL)
    else:
        assert sorted(p.name for p in out.iterdir()) == ['dataset.json', 'sequence']
        assert len(list((out / 'sequence' / 'CameraRGB').iterdir())) == 10
        path = out / 'sequence' / 'CameraSeg' / '000005.png'
        rgb, label = Drive(3, 10, SMALL).frame(5)
    seg = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert seg.shape == (150, 200, 3)
    assert np.array_equal(seg[..., 2], label), 'the class id is the red channel'
    assert not seg[..., :2].any(), 'green and blue are zero'
    image = cv2.imread(str(path).replace('CameraSeg', 'CameraRGB'))
    assert np.array_equal(image[..., ::-1], rgb)


def test_parallel_workers_write_identical_files(tmp_path):
    one = generate_dataset(tmp_path / 'one', 5, seed=1, config=SMALL, progress=False)
    two = generate_dataset(tmp_path / 'two', 5, seed=1, config=SMALL, workers=2, progress=False)
    for path in sorted(one.rglob('*.png')):
        assert path.read_bytes() == (two / path.relative_to(one)).read_bytes(), path


def test_config_and_argument_validation(tmp_path):
    with pytest.raises(SynthError, match='64x48'):
        SynthConfig(width=10, height=10)
    with pytest.raises(SynthError, match='fog_prob'):
        SynthConfig(fog_prob=1.5)
    with pytest.raises(SynthError, match='frames'):
        generate_dataset(tmp_path / 'x', 0, config=SMALL, progress=False)
    with pytest.raises(SynthError, match='mode'):
        generate_dataset(tmp_path / 'x', 1, mode='video', config=SMALL, progress=False)


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        (['--frames', '0'], ['--frames', '0']),
        (['--frames', '-3'], ['--frames', '-3']),
        (['--size', '800-600'], ["'800-600'", 'WIDTHxHEIGHT']),
        (['--size', '32x20'], ['32x20', '64x48']),
        (['--frames', 'many'], ['--frames', 'many']),
    ],
)
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, args, expected):
    assert (
        main(['--out', str(tmp_path / 'out'), '--no-progress', *args], prog='semseg data synth')
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('semseg data synth: error:')
    for text in expected:
        assert text in err


def test_cli_writes_and_refuses_to_clobber(tmp_path, capsys):
    out = tmp_path / 'out'
    args = ['--out', str(out), '--frames', '5', '--size', '160x120', '--no-progress']
    assert main(args) == 0
    assert len(list(out.glob('data?/CameraRGB/*.png'))) == 5
    assert json.loads((out / 'dataset.json').read_text())['image_size'] == [160, 120]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and '--overwrite' in err
    stale = out / 'dataA' / 'CameraRGB' / 'stale.png'
    stale.write_bytes(b'old')
    keep = out / 'notes.txt'
    keep.write_text('mine')
    assert main([*args, '--overwrite', '--sequence']) == 0
    assert not stale.exists() and keep.exists(), 'overwrite replaces only the dataset folders'
    assert len(list((out / 'sequence' / 'CameraSeg').glob('*.png'))) == 5


def test_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, '-m', 'training.data.synthetic', '--help'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '--sequence' in result.stdout and '--size' in result.stdout


def test_benchmark_reports_rates():
    result = benchmark(frames=2, width=160, height=120, warmup=0)
    assert result['size'] == [160, 120]
    assert result['render_fps'] > result['render_write_fps'] > 0


def test_module_imports_without_torch():
    code = 'import sys, training.data.synthetic; assert "torch" not in sys.modules'
    assert subprocess.run([sys.executable, '-c', code], cwd=ROOT, timeout=60).returncode == 0


def test_episode_split_is_even():
    folders = [synthetic.episode_of(i, 10) for i in range(10)]
    assert [folders.count(ep) for ep in EPISODES] == [2] * 5
