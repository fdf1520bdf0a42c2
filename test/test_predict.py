"""``semseg predict``: outputs per image, folder recursion and naming, every bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semseg_ros import cli
from semseg_ros.devices import torch_device
from semseg_ros.labels import CARLA23, LYFT13
from semseg_ros.pipeline import InputSpec, Normalization
from semseg_ros.segmenter import Segmenter
from training.checkpoint import Checkpoint, save_checkpoint
from training.data.lyft import read_rgb
from training.model import UNetConfig, build_model
from training.predict import OUTPUT_SUFFIXES, collect_images, main

H, W = 48, 64


def make_checkpoint(path: Path, *, crop=(6, 2), input_size=(24, 20)) -> Path:
    torch.manual_seed(1)
    config = UNetConfig(num_classes=LYFT13.num_classes, base_channels=4, depth=2)
    model = build_model(config)
    with torch.no_grad():  # a spread of classes rather than one winner everywhere
        model.head.bias.copy_(torch.randn(LYFT13.num_classes) * 0.3)
    checkpoint = Checkpoint(
        model_config=config.to_dict(),
        class_set=LYFT13.to_dict(),
        normalization=Normalization().to_dict(),
        input_size=list(input_size),
        model_state=model.state_dict(),
        label_transform={'crop_top': crop[0], 'crop_bottom': crop[1]},
    )
    return save_checkpoint(checkpoint, path)


def write_image(path: Path, seed: int = 0, size=(H, W)) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    return rgb


def write_label(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.dstack([np.zeros_like(ids), np.zeros_like(ids), ids]))


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp('ckpt') / 'best.pt')


def outputs(stem: Path) -> list[Path]:
    return [stem.with_name(stem.name + s) for s in OUTPUT_SUFFIXES]


def test_outputs_per_image_shapes_dtypes_and_content(tmp_path, ckpt):
    rgb = write_image(tmp_path / 'in' / 'street.png')
    out = tmp_path / 'out'
    assert main(['--checkpoint', str(ckpt), str(tmp_path / 'in'), '--out', str(out)]) == 0
    mask_p, color_p, overlay_p, grid_p = outputs(out / 'street')
    mask = cv2.imread(str(mask_p), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (H, W) and mask.dtype == np.uint8  # one channel: the ids
    assert mask.max() < LYFT13.num_classes
    assert (mask[:6] == 0).all() and (mask[H - 2 :] == 0).all()  # cropped rows: background
    # The same ids as running the pipeline directly.
    expected = Segmenter.from_model(ckpt, backend='torch', device='cpu').segment(rgb).ids
    np.testing.assert_array_equal(mask, expected)
    color = read_rgb(color_p)
    np.testing.assert_array_equal(color, LYFT13.id_to_color(mask))
    overlay = read_rgb(overlay_p)
    assert overlay.shape == (H, W, 3)
    grid = read_rgb(grid_p)
    assert grid.shape[1] == 3 * 4 * W  # image | prediction | overlay, 64 px tiles enlarged x4
    assert grid.shape[0] > 4 * H


def test_lyft_layout_adds_ground_truth_panel_and_mirrors_folders(tmp_path, ckpt, capsys):
    root = tmp_path / 'data'
    for episode in ('dataA', 'dataB'):
        write_image(root / episode / 'CameraRGB' / '000.png')
        write_label(root / episode / 'CameraSeg' / '000.png', np.full((H, W), 7, np.uint8))
    write_image(root / 'dataB' / 'extra' / 'photo.JPG', size=(30, 40))  # jpg, nested, odd size
    (root / '.hidden').mkdir()
    write_image(root / '.hidden' / 'x.png')
    out = tmp_path / 'out'
    assert main(['--checkpoint', str(ckpt), str(root), '--out', str(out)]) == 0
    assert 'skipped 2 label files in CameraSeg/' in capsys.readouterr().out
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob('*.png'))
    assert made == sorted(
        f'{stem}{s}'
        for stem in ('dataA/CameraRGB/000', 'dataB/CameraRGB/000', 'dataB/extra/photo')
        for s in OUTPUT_SUFFIXES
    )
    with_gt = read_rgb(out / 'dataA' / 'CameraRGB' / '000_grid.png')
    assert with_gt.shape[1] == 4 * 4 * W  # + ground truth
    # The ground-truth tile is the Roads colour throughout (below its caption).
    gt_tile = with_gt[30 : 30 + 4 * H - 10, 3 * 4 * W + 2 : 4 * 4 * W - 2]
    assert (gt_tile == LYFT13.colors[7]).all()
    photo = cv2.imread(str(out / 'dataB' / 'extra' / 'photo_mask.png'), cv2.IMREAD_UNCHANGED)
    assert photo.shape == (30, 40)


def test_ground_truth_of_another_class_set_is_remapped(tmp_path, ckpt):
    write_image(tmp_path / 'ep' / 'CameraRGB' / 'f.png')
    write_label(tmp_path / 'ep' / 'CameraSeg' / 'f.png', np.full((H, W), 13, np.uint8))  # Sky
    out = tmp_path / 'out'
    argv = ['--checkpoint', str(ckpt), str(tmp_path / 'ep' / 'CameraRGB' / 'f.png')]
    assert main([*argv, '--out', str(out), '--gt-class-set', 'carla23']) == 0
    grid = read_rgb(out / 'f_grid.png')
    gt_tile = grid[30 : 30 + 4 * H - 10, 3 * 4 * W + 2 : 4 * 4 * W - 2]
    assert (gt_tile == LYFT13.colors[0]).all()  # carla23 Sky is lyft13 None
    assert CARLA23.names[13] == 'Sky'


def test_same_names_from_two_inputs_do_not_overwrite(tmp_path):
    write_image(tmp_path / 'a' / 'img.png')
    write_image(tmp_path / 'b' / 'img.png')
    jobs = collect_images([tmp_path / 'a' / 'img.png', tmp_path / 'b' / 'img.png'])
    assert [j.out_stem.as_posix() for j in jobs] == ['img', 'img_2']


def test_outputs_inside_the_input_folder_are_not_read_back(tmp_path):
    write_image(tmp_path / 'in' / 'img.png')
    write_image(tmp_path / 'in' / 'out' / 'img_color.png')
    jobs = collect_images([tmp_path / 'in'], tmp_path / 'in' / 'out')
    assert [j.path.name for j in jobs] == ['img.png']


def test_limit_and_batch_size(tmp_path, ckpt):
    for i in range(5):
        write_image(tmp_path / 'in' / f'{i}.png', seed=i, size=(H + i, W - i))  # mixed sizes
    out = tmp_path / 'out'
    argv = ['--checkpoint', str(ckpt), str(tmp_path / 'in'), '--out', str(out)]
    assert main([*argv, '--limit', '4', '--batch-size', '3']) == 0
    masks = sorted(out.glob('*_mask.png'))
    assert [p.name for p in masks] == [f'{i}_mask.png' for i in range(4)]
    for i, p in enumerate(masks):
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (H + i, W - i)


def test_segmenter_matches_spec_of_the_checkpoint(ckpt):
    segmenter = Segmenter.from_model(ckpt)  # a checkpoint: the torch engine
    assert segmenter.backend_name.startswith('torch')
    assert segmenter.input_spec == InputSpec((24, 20), 6, 2, Normalization())
    results = segmenter.segment_batch(
        [np.zeros((H, W, 3), np.uint8), np.zeros((30, 50, 3), np.uint8)]
    )
    assert [r.ids.shape for r in results] == [(H, W), (30, 50)]
    assert sum(r.timings.infer for r in results) > 0


# --- Bad input -------------------------------------------------------------------------------


def test_unreadable_image_is_named_skipped_and_fails_at_the_end(tmp_path, ckpt, capsys):
    write_image(tmp_path / 'in' / 'good.png')
    (tmp_path / 'in' / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    (tmp_path / 'in' / 'empty.jpg').write_bytes(b'')
    out = tmp_path / 'out'
    code = main(['--checkpoint', str(ckpt), str(tmp_path / 'in'), '--out', str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert f'skipping {tmp_path / "in" / "bad.png"}' in err
    assert 'empty.jpg is empty' in err and '2 image(s) failed' in err
    assert all(p.is_file() for p in outputs(out / 'good'))
    assert not list(out.glob('bad*'))


def test_no_images_found_names_the_paths(tmp_path, ckpt, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('x')
    code = cli.main(['predict', '--checkpoint', str(ckpt), str(tmp_path / 'empty'), '--out', 'o'])
    err = capsys.readouterr().err
    assert code == 2 and f'no images found in {tmp_path / "empty"}' in err


def test_only_labels_found_says_they_were_skipped(tmp_path, ckpt, capsys):
    write_label(tmp_path / 'CameraSeg' / '0.png', np.zeros((4, 4), np.uint8))
    assert main(['--checkpoint', str(ckpt), str(tmp_path), '--out', str(tmp_path / 'o')]) == 2
    assert '1 label files in CameraSeg/ folders skipped' in capsys.readouterr().err


def test_missing_input_path(tmp_path, ckpt, capsys):
    code = main(['--checkpoint', str(ckpt), str(tmp_path / 'nope.png'), '--out', 'o'])
    assert code == 2 and 'nope.png does not exist' in capsys.readouterr().err


def test_missing_checkpoint(tmp_path, capsys):
    write_image(tmp_path / 'a.png')
    code = main(['--checkpoint', str(tmp_path / 'x.pt'), str(tmp_path / 'a.png'), '--out', 'o'])
    err = capsys.readouterr().err
    assert code == 2 and 'x.pt does not exist' in err and 'Traceback' not in err


def test_cuda_without_cuda(tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    write_image(tmp_path / 'a.png')
    argv = ['--checkpoint', str(ckpt), str(tmp_path / 'a.png'), '--out', 'o', '--device', 'cuda']
    assert main(argv) == 2
    assert '--device cpu' in capsys.readouterr().err
    with pytest.raises(ValueError, match='unknown device'):
        torch_device('tpu7')
    assert torch_device('auto').type == 'cpu'


@pytest.mark.parametrize(
    'extra', [['--alpha', '1.5'], ['--batch-size', '0'], ['--limit', 'x'], []]
)
def test_usage_errors_return_2(tmp_path, ckpt, capsys, extra):
    argv = ['--checkpoint', str(ckpt), *extra]
    if extra:
        argv += [str(tmp_path), '--out', 'o']  # [] alone: no inputs and no --out
    assert main(argv) == 2
    assert 'error' in capsys.readouterr().err
