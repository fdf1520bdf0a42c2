"""``semseg evaluate``: metrics against an independent computation, outputs, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semseg_ros import cli
from semseg_ros.dataset_layout import hood_row_at
from semseg_ros.labels import CARLA23, LYFT13, ClassSet, remap
from semseg_ros.metrics import ConfusionMatrix, lyft_binary_counts
from semseg_ros.pipeline import Normalization
from semseg_ros.segmenter import Segmenter
from training import evaluate as evaluate_module
from training import predict as predict_module
from training.checkpoint import Checkpoint, save_checkpoint
from training.data.lyft import LabelTransform, Sample, read_label
from training.data.splits import write_manifest
from training.evaluate import evaluate, format_table
from training.model import UNetConfig, build_model

H, W = 48, 64
#: Rows 8..43 are fed to the model; the hood starts at row 40 (496 of 600, scaled to 48).
TRANSFORM = {'merge_roadlines': True, 'hood_row': 40, 'crop_top': 8, 'crop_bottom': 4}


def scene_ids(seed: int, *, sky: int = 0) -> np.ndarray:
    """A street-like (H, W) label: sky, buildings, road with a line, a car, sidewalk, hood."""
    rng = np.random.default_rng(seed)
    ids = np.full((H, W), sky, np.uint8)
    ids[6 : H // 2, : int(rng.integers(20, 40))] = 1  # Buildings
    ids[H // 2 :] = 7  # Roads
    ids[H // 2 :, W // 2 - 1 : W // 2 + 1] = 6  # RoadLines
    ids[H // 2 :, :6] = 8  # Sidewalks
    x = int(rng.integers(8, 44))
    ids[H // 2 - 6 : H // 2 + 6, x : x + 12] = 10  # a car
    ids[40:] = 10  # the ego hood
    return ids


def write_pair(episode: Path, name: str, ids: np.ndarray, class_set: ClassSet, seed: int):
    rng = np.random.default_rng(seed)
    rgb = class_set.colors[ids].astype(np.int16) + rng.integers(-20, 21, (*ids.shape, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    (episode / 'CameraRGB').mkdir(parents=True, exist_ok=True)
    (episode / 'CameraSeg').mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(episode / 'CameraRGB' / f'{name}.png'), rgb[:, :, ::-1])
    seg = np.dstack([np.zeros_like(ids), np.zeros_like(ids), ids])  # ids in red (BGR)
    assert cv2.imwrite(str(episode / 'CameraSeg' / f'{name}.png'), seg)
    return Sample(episode / 'CameraRGB' / f'{name}.png', episode / 'CameraSeg' / f'{name}.png',
                  episode.name, name)  # fmt: skip


def make_dataset(
    root: Path, n: int = 4, *, class_set: ClassSet = LYFT13, splits=None, manifest=None
) -> Path:
    """``n`` pairs in ``root/dataA``, all in the test split; returns the manifest path."""
    sky = 13 if class_set is CARLA23 else 0
    samples = [
        write_pair(root / 'dataA', f'{i:03d}', scene_ids(i, sky=sky), class_set, i)
        for i in range(n)
    ]
    if class_set is not LYFT13:
        (root / 'dataset.json').write_text(json.dumps({'class_set': class_set.name}))
    splits = splits if splits is not None else {'train': [], 'test': samples}
    manifest = manifest or root / 'manifest.json'
    return write_manifest(manifest, root, splits, class_set=class_set, method='random')


def make_checkpoint(
    path: Path,
    *,
    input_size=(32, 18),
    label_transform=TRANSFORM,
    train_config=None,
    seed: int = 0,
) -> Path:
    torch.manual_seed(seed)
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
        label_transform=dict(label_transform),
        train_config=train_config or {'name': 'tiny_test'},
        epoch=3,
        step=42,
    )
    return save_checkpoint(checkpoint, path)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    manifest = make_dataset(root / 'data')
    ckpt = make_checkpoint(root / 'run' / 'best.pt')
    return root, manifest, ckpt


@pytest.fixture(scope='module')
def evaluated(setup):
    """``semseg evaluate`` run once with default --out; returns (metrics, out dir)."""
    _, manifest, ckpt = setup
    code = cli.main(
        ['evaluate', '--checkpoint', str(ckpt), '--manifest', str(manifest), '--device', 'cpu']
    )
    assert code == 0
    out = ckpt.parent / 'eval_test'
    return json.loads((out / 'metrics.json').read_text()), out


def test_metrics_equal_a_confusion_matrix_of_the_masks_predict_wrote(setup, evaluated, tmp_path):
    root, _, ckpt = setup
    metrics, _ = evaluated
    rgb_dir = root / 'data' / 'dataA' / 'CameraRGB'
    pred_out = tmp_path / 'pred'
    argv = ['--checkpoint', str(ckpt), str(rgb_dir), '--out', str(pred_out), '--device', 'cpu']
    assert predict_module.main(argv) == 0

    relabel = LabelTransform(merge_roadlines=True, hood_row=40)
    cm, raw_cm = ConfusionMatrix(13), ConfusionMatrix(13)
    counts = None
    for label_path in sorted((root / 'data' / 'dataA' / 'CameraSeg').glob('*.png')):
        mask = cv2.imread(str(pred_out / f'{label_path.stem}_mask.png'), cv2.IMREAD_UNCHANGED)
        gt = read_label(label_path)
        assert mask.shape == gt.shape == (H, W) and mask.dtype == np.uint8
        # The cropped rows are predicted as background, at full resolution.
        assert (mask[:8] == 0).all() and (mask[H - 4 :] == 0).all()
        cm.update(mask, relabel.apply(gt, LYFT13))
        raw_cm.update(mask, gt)
        c = lyft_binary_counts(mask, gt, LYFT13, hood_row=hood_row_at(H))
        counts = c if counts is None else counts + c

    assert metrics['num_images'] == 4
    assert metrics['matrix'] == cm.matrix.tolist()
    assert metrics['miou'] == pytest.approx(cm.miou())
    assert metrics['pixel_accuracy'] == pytest.approx(cm.pixel_accuracy())
    for name, value in zip(LYFT13.names, cm.iou(), strict=True):
        assert metrics['iou'][name] == (None if np.isnan(value) else pytest.approx(value))
    assert np.count_nonzero(cm.matrix.sum(axis=0)) > 1  # several classes predicted

    from semseg_ros.metrics import lyft_score

    expected = lyft_score(counts, fps=metrics['timing']['end_to_end_images_per_s'])
    for key in ('f_road', 'f_vehicle', 'score', 'fps_penalty'):
        assert metrics['lyft'][key] == pytest.approx(expected[key], nan_ok=True)

    raw = evaluate(ckpt, manifest=setup[1], raw_labels=True)
    assert raw['matrix'] == raw_cm.matrix.tolist()
    assert raw['labels']['merge_roadlines'] is False


def test_metrics_json_has_provenance_timing_and_class_set(evaluated, setup):
    metrics, _ = evaluated
    assert metrics['checkpoint']['epoch'] == 3 and metrics['checkpoint']['step'] == 42
    assert metrics['checkpoint']['train_config'] == 'tiny_test'
    assert metrics['checkpoint']['path'] == str(setup[2])
    assert metrics['class_set'] == 'lyft13' and metrics['class_names'] == list(LYFT13.names)
    assert metrics['split'] == 'test' and metrics['image_sizes'] == [[W, H]]
    assert metrics['input'] == {
        'input_size': [32, 18],
        'crop_top': 8,
        'crop_bottom': 4,
        'normalization': Normalization().to_dict(),
    }
    timing = metrics['timing']
    for key in ('model_images_per_s', 'end_to_end_images_per_s'):
        assert timing[key] > 0
    assert 0 < timing['model_ms_per_image_median'] <= timing['end_to_end_ms_per_image_median']
    assert metrics['lyft']['fps'] == pytest.approx(timing['end_to_end_images_per_s'])
    assert set(metrics['precision']) == set(metrics['recall']) == set(LYFT13.names)


def test_figures_exist_and_are_not_blank(evaluated):
    _, out = evaluated
    for name, min_size in (
        ('confusion_matrix.png', (500, 500)),
        ('iou_per_class.png', (400, 600)),
    ):
        image = cv2.imread(str(out / name))
        assert image is not None, name
        assert image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1]
        assert image.std() > 10  # drawn on, not a blank canvas
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_table_names_every_class_and_the_scores(evaluated):
    metrics, _ = evaluated
    table = format_table(metrics)
    for name in LYFT13.names:
        assert name in table
    assert 'mIoU' in table and 'Lyft' in table and 'img/s' in table and 'tiny_test' in table


def test_batch_size_and_limit(setup):
    _, manifest, ckpt = setup
    metrics = evaluate(ckpt, manifest=manifest, batch_size=3, limit=3)
    assert metrics['num_images'] == 3 and metrics['timing']['batch_size'] == 3
    assert sum(map(sum, metrics['matrix'])) == 3 * H * W


def test_carla23_labels_are_remapped_onto_a_lyft13_model(tmp_path, setup):
    ckpt = setup[2]
    manifest = make_dataset(tmp_path / 'c23', 2, class_set=CARLA23)
    metrics = evaluate(ckpt, manifest=manifest, raw_labels=True)
    assert metrics['dataset']['class_set'] == 'carla23' and metrics['dataset']['remapped']
    gt = [read_label(p) for p in sorted((tmp_path / 'c23' / 'dataA' / 'CameraSeg').iterdir())]
    assert any((g == 13).any() for g in gt)  # CARLA's Sky, which lyft13 calls None
    cm = ConfusionMatrix(13)
    results = Segmenter.from_model(ckpt, device='cpu').segment_batch(
        [cv2.imread(str(p))[:, :, ::-1].copy() for p in
         sorted((tmp_path / 'c23' / 'dataA' / 'CameraRGB').iterdir())]
    )  # fmt: skip
    pred_ids = [r.ids for r in results]
    for pred, g in zip(pred_ids, gt, strict=True):
        cm.update(pred, remap(g, CARLA23, LYFT13))
    assert metrics['matrix'] == cm.matrix.tolist()


def test_data_location_defaults_to_the_checkpoints_training_config(tmp_path, setup):
    _, manifest, _ = setup
    ckpt = make_checkpoint(
        tmp_path / 'best.pt', train_config={'name': 'x', 'data': {'manifest': str(manifest)}}
    )
    assert evaluate(ckpt)['dataset']['manifest'] == str(manifest)
    ckpt = make_checkpoint(
        tmp_path / 'flat.pt', train_config={'data.data_dir': str(manifest.parent)}
    )
    assert evaluate(ckpt)['dataset']['manifest'] == str(manifest.parent / 'manifest.json')


def test_run_folder_manifest_and_split_settings_follow_the_trainer(tmp_path, setup):
    # `semseg train` writes OUT/manifest.json next to best.pt when DATA_DIR has none.
    run_manifest = make_dataset(tmp_path / 'd', 2, manifest=tmp_path / 'run' / 'manifest.json')
    train_config = {'data': {'data_dir': str(tmp_path / 'd'), 'split_seed': 7}}
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pt', train_config=train_config)
    metrics = evaluate(ckpt)
    assert metrics['dataset']['manifest'] == str(run_manifest)
    assert metrics['dataset']['from_checkpoint'] is True
    run_manifest.unlink()  # lost: split DATA_DIR the way the config says
    from training.checkpoint import load_checkpoint
    from training.evaluate import data_source_from_checkpoint

    source = data_source_from_checkpoint(load_checkpoint(ckpt), ckpt)
    assert source.data_dir == tmp_path / 'd' and source.seed == 7 and source.manifest is None


def test_data_dir_without_manifest_uses_the_default_split_and_says_so(tmp_path, setup, capsys):
    make_dataset(tmp_path / 'd', 5)
    (tmp_path / 'd' / 'manifest.json').unlink()
    out = tmp_path / 'out'
    argv = ['--checkpoint', str(setup[2]), '--data-dir', str(tmp_path / 'd'), '--out', str(out)]
    assert evaluate_module.main(argv) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['num_images'] == 1  # 20 % of 5, seeded random split
    assert 'random' in metrics['dataset']['split_method']
    assert '--manifest' in capsys.readouterr().err


def test_exported_models_score_like_their_checkpoint_through_the_segmenter(tmp_path, setup):
    from training.export import export_onnx, quantize_int8

    _, manifest, ckpt = setup
    onnx_path = tmp_path / 'model.onnx'
    export_onnx(ckpt, onnx_path)
    reference = evaluate(ckpt, manifest=manifest)
    metrics = evaluate(onnx_path, manifest=manifest, backend='onnxruntime')  # exact fp32
    assert metrics['miou'] == pytest.approx(reference['miou'], abs=1e-6)
    assert metrics['matrix'] == reference['matrix']  # the same pixels, the same classes
    assert metrics['timing']['device'] == 'onnxruntime (CPU, fp32)'
    assert metrics['model']['precision'] == 'fp32'
    # The source checkpoint (named in the model's provenance) supplies the relabelling.
    assert metrics['labels']['merge_roadlines'] == reference['labels']['merge_roadlines']
    frames = [np.zeros((18, 32, 3), np.uint8), np.full((18, 32, 3), 200, np.uint8)]
    int8 = evaluate(quantize_int8(onnx_path, frames), manifest=manifest)
    assert int8['model']['precision'] == 'int8' and 0.0 <= int8['miou'] <= 1.0


def test_exported_model_without_its_checkpoint_needs_the_data(capsys, tmp_path, setup):
    from training.export import export_onnx

    _, manifest, _ = setup
    ckpt = make_checkpoint(tmp_path / 'gone.pt')
    onnx_path = tmp_path / 'model.onnx'
    export_onnx(ckpt, onnx_path)
    ckpt.unlink()
    code, err = run_cli(capsys, '--model', str(onnx_path))
    assert code == 2 and 'pass --manifest PATH or --data-dir DIR' in err
    out = tmp_path / 'out'
    argv = ['--model', str(onnx_path), '--manifest', str(manifest), '--out', str(out)]
    assert run_cli(capsys, *argv)[0] == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['labels']['merge_roadlines'] is False  # no checkpoint: labels as stored
    assert metrics['checkpoint'] is None and metrics['model']['path'] == str(onnx_path)
    assert f'model {onnx_path} (fp32, lyft13)' in format_table(metrics)
    code, err = run_cli(capsys, '--model', str(ckpt.with_suffix('.txt')))
    assert code == 2 and '--model takes .onnx/.engine files' in err


# --- Bad input: exit 2 and a message that names the thing and the fix -------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(['evaluate', *argv])
    captured = capsys.readouterr()
    return code, captured.err


def test_missing_checkpoint(capsys, tmp_path, setup):
    code, err = run_cli(capsys, '--checkpoint', str(tmp_path / 'nope.pt'), '--manifest', 'm')
    assert code == 2
    assert 'nope.pt does not exist' in err and 'Traceback' not in err


def test_corrupt_checkpoint(capsys, tmp_path, setup):
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a checkpoint at all')
    code, err = run_cli(capsys, '--checkpoint', str(bad), '--manifest', str(setup[1]))
    assert code == 2 and 'bad.pt is corrupt' in err and 'Traceback' not in err


def test_no_data_location_anywhere(capsys, tmp_path):
    ckpt = make_checkpoint(tmp_path / 'best.pt')
    code, err = run_cli(capsys, '--checkpoint', str(ckpt))
    assert code == 2 and 'records no data.manifest' in err and '--manifest PATH' in err


def test_missing_and_empty_splits(capsys, setup):
    _, manifest, ckpt = setup
    code, err = run_cli(capsys, '--checkpoint', str(ckpt), '--manifest', str(manifest),
                        '--split', 'val')  # fmt: skip
    assert code == 2 and "no 'val' split" in err and "['test', 'train']" in err
    code, err = run_cli(capsys, '--checkpoint', str(ckpt), '--manifest', str(manifest),
                        '--split', 'train')  # fmt: skip
    assert code == 2 and "'train' split" in err and 'is empty' in err


def test_labels_outside_the_class_set(capsys, tmp_path, setup):
    manifest = make_dataset(tmp_path / 'd', 1)
    label = tmp_path / 'd' / 'dataA' / 'CameraSeg' / '000.png'
    ids = read_label(label)
    ids[0, :5] = 17
    cv2.imwrite(str(label), ids)
    code, err = run_cli(capsys, '--checkpoint', str(setup[2]), '--manifest', str(manifest))
    assert code == 2
    assert '000.png holds ids [17] outside class set' in err and '--gt-class-set' in err


def test_a_carla23_dataset_read_as_lyft13_suggests_the_class_set(capsys, tmp_path, setup):
    manifest = make_dataset(tmp_path / 'c23', 1, class_set=CARLA23)
    (tmp_path / 'c23' / 'dataset.json').unlink()
    data = json.loads(manifest.read_text())
    data['class_set'] = 'lyft13'
    manifest.write_text(json.dumps(data))
    code, err = run_cli(capsys, '--checkpoint', str(setup[2]), '--manifest', str(manifest))
    assert code == 2 and 'ids [13]' in err and '--gt-class-set' in err
    out = tmp_path / 'o'
    code, _ = run_cli(capsys, '--checkpoint', str(setup[2]), '--manifest', str(manifest),
                      '--gt-class-set', 'carla23', '--out', str(out))  # fmt: skip
    assert code == 0 and (out / 'metrics.json').is_file()


def test_cuda_requested_without_cuda(capsys, monkeypatch, setup):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    code, err = run_cli(capsys, '--checkpoint', str(setup[2]), '--manifest', str(setup[1]),
                        '--device', 'cuda')  # fmt: skip
    assert code == 2 and 'torch.cuda.is_available() is False' in err and '--device cpu' in err


def test_usage_errors_return_2(capsys):
    assert evaluate_module.main([]) == 2
    assert '--checkpoint' in capsys.readouterr().err
    assert evaluate_module.main(['--checkpoint', 'x', '--split', 'nope']) == 2
    assert evaluate_module.main(['--help']) == 0


def test_module_door_runs_the_same_main():
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, '-m', 'training.evaluate', '--help'], capture_output=True, text=True
    )
    assert run.returncode == 0 and '--checkpoint' in run.stdout and '--raw-labels' in run.stdout
