"""Tests for training.datasets and training.train: shapes, resume (exact and after SIGKILL),
checkpoints, bad input, the CLI doors. Every run is a few seconds on tiny in-code data."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='the training half needs torch')

from semseg_ros.labels import LYFT13  # noqa: E402
from training.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from training.config import AugmentConfig, load_config  # noqa: E402
from training.data.lyft import DatasetError, scan_dataset  # noqa: E402
from training.data.splits import load_manifest, random_split, write_manifest  # noqa: E402
from training.datasets import (  # noqa: E402
    EpochSampler,
    SegmentationDataset,
    class_pixel_counts,
    split_samples,
)
from training.train import (  # noqa: E402
    TrainError,
    lr_factor,
    main,
    measure_loader_throughput,
    read_log,
    train,
)

REPO = Path(__file__).resolve().parents[1]


def write_tiny_dataset(root: Path, frames: int = 12, size=(64, 48), seed: int = 0) -> Path:
    """Frames of sky/buildings over road with a car and a road line: lyft13 ids, red channel."""
    rng = np.random.default_rng(seed)
    w, h = size
    for sub in ('CameraRGB', 'CameraSeg'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        label = np.full((h, w), 1, np.uint8)
        label[h // 2 :] = 7
        x = int(rng.integers(0, w - 12))
        label[h // 3 : h // 3 + 10, x : x + 12] = 10
        line = int(rng.integers(0, w - 2))
        label[h // 2 :, line : line + 2] = 6
        noise = rng.integers(-20, 20, (h, w, 3))
        rgb = np.clip(LYFT13.id_to_color(label) + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'CameraRGB' / f'{i:05d}.png'), rgb[..., ::-1])
        seg = np.zeros((h, w, 3), np.uint8)
        seg[..., 2] = label  # BGR: the id is the red channel
        cv2.imwrite(str(root / 'CameraSeg' / f'{i:05d}.png'), seg)
    return root


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp('tiny') / 'data')


def tiny_config(data_dir: Path, *overrides: str):
    return load_config(
        'tiny',
        [
            f'data.data_dir={data_dir}',
            'data.synthetic=null',
            'train.batch_size=2',  # 6 train frames: 3 steps per epoch
            'train.image_every=0',
            *overrides,
        ],
    )


def run(config, out: Path, **kwargs):
    return train(config, out=out, progress=False, **kwargs)


# --- datasets -------------------------------------------------------------------------------


def make_manifest(data_dir: Path, path: Path, sizes=(0.5, 0.25, 0.25)) -> Path:
    splits = random_split(scan_dataset(data_dir).samples, sizes, seed=0)
    return write_manifest(path, data_dir, splits, class_set='lyft13', method='random', seed=0)


def test_dataset_shapes_dtypes_and_cache(data_dir, tmp_path):
    manifest = load_manifest(make_manifest(data_dir, tmp_path / 'm.json'))
    samples = manifest.splits['train']
    kwargs = {'input_size': (40, 32), 'augment': AugmentConfig(), 'seed': 3}
    plain = SegmentationDataset(samples, LYFT13, **kwargs)
    cached = SegmentationDataset(samples, LYFT13, cache=True, **kwargs)
    assert cached.cached and not plain.cached
    for key in (0, (2, 1)):  # unaugmented, and augmented for epoch 2
        image, label = cached[key]
        assert image.shape == (3, 32, 40) and image.dtype == torch.float32
        assert label.shape == (32, 40) and label.dtype == torch.int64
        torch.testing.assert_close(plain[key][0], image)
        assert torch.equal(plain[key][1], label)
    assert not torch.equal(cached[(0, 1)][0], cached[(1, 1)][0])  # epochs differ
    counts = class_pixel_counts(cached)
    assert counts.sum() == len(samples) * 32 * 40
    assert counts[[1, 6, 7, 10]].all() and counts[[0, 2, 3]].sum() == 0


def test_label_outside_class_set_names_the_file(data_dir, tmp_path):
    root = write_tiny_dataset(tmp_path / 'bad', frames=4)
    seg = np.zeros((48, 64, 3), np.uint8)
    seg[..., 2] = 40  # id 40: not in lyft13
    bad = root / 'CameraSeg' / '00002.png'
    cv2.imwrite(str(bad), seg)
    samples = scan_dataset(root).samples
    with pytest.raises(DatasetError, match=r'00002.png holds ids \[40\] outside class set'):
        SegmentationDataset(samples, LYFT13, input_size=(64, 48), cache=True)
    config = tiny_config(root, 'data.split_sizes=[0.5, 0.25, 0.25]')
    assert main(['--config', 'tiny', '--data-dir', str(root), '--out', str(tmp_path / 'o')]) == 2
    with pytest.raises(DatasetError, match=r'00002\.png'):
        run(config, tmp_path / 'run')


def test_missing_and_empty_splits_are_explained(data_dir, tmp_path):
    path = make_manifest(data_dir, tmp_path / 'empty.json', sizes=(10, 0, 2))
    with pytest.raises(DatasetError) as info:
        run(tiny_config(data_dir, f'data.manifest={path}'), tmp_path / 'run')
    message = str(info.value)
    assert "'val' split" in message and 'empty.json' in message and 'semseg data split' in message
    samples = scan_dataset(data_dir).samples
    only_train = tmp_path / 'only_train.json'
    write_manifest(only_train, data_dir, {'train': samples}, class_set='lyft13', method='random')
    with pytest.raises(
        DatasetError, match=r"only_train.json has no 'val' split \(it has \['train'\]"
    ):
        split_samples(load_manifest(only_train), 'val', only_train)


def test_epoch_sampler_shards_and_resumes():
    full = EpochSampler(10, seed=1, epoch=3).indices()
    assert sorted(full) == list(range(10))
    assert full == EpochSampler(10, seed=1, epoch=3).indices()
    assert full != EpochSampler(10, seed=1, epoch=4).indices()
    assert EpochSampler(10, seed=1, epoch=3, start=4).indices() == full[4:]
    ranks = [EpochSampler(10, seed=1, epoch=3, rank=r, world_size=3).indices() for r in range(3)]
    assert all(len(r) == 3 for r in ranks)
    assert len({i for r in ranks for i in r}) == 9
    assert list(EpochSampler(4, seed=0, epoch=2)) == [
        (2, i) for i in EpochSampler(4, seed=0, epoch=2).indices()
    ]


def test_lr_schedule():
    kw = {'total_steps': 100, 'warmup_steps': 10}
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(100, **kw) == pytest.approx(0.0)
    assert lr_factor(55, **kw, schedule='cosine') == pytest.approx(0.5)
    assert lr_factor(100, **kw, schedule='cosine', min_ratio=0.1) == pytest.approx(0.1)
    poly = [lr_factor(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(poly))


# --- training runs --------------------------------------------------------------------------


def test_train_writes_checkpoints_then_resume_continues(data_dir, tmp_path):
    out = tmp_path / 'run'
    summary = run(tiny_config(data_dir, 'train.image_every=2'), out)
    assert summary['step'] == 6 and summary['epoch'] == 2 and summary['finished']
    for name in (
        'config.yaml',
        'manifest.json',
        'last.pt',
        'best.pt',
        'log.jsonl',
        'summary.json',
    ):
        assert (out / name).is_file(), name
    assert any((out / 'tb').iterdir())
    assert 0.0 <= summary['test']['miou'] <= 1.0
    ckpt = load_checkpoint(out / 'last.pt')
    assert ckpt.epoch == 2 and ckpt.step == 6 and ckpt.batches_done == 0
    assert ckpt.get_class_set().names == LYFT13.names
    assert ckpt.input_size == [64, 48] and ckpt.get_normalization() is not None
    assert ckpt.train_config['model']['base_channels'] == 4
    assert ckpt.metrics['val']['miou'] == summary['val']['miou']
    assert ckpt.best_miou == summary['best_miou']
    for field in ('optimizer_state', 'scheduler_state', 'scaler_state', 'rng_state'):
        assert getattr(ckpt, field) is not None, field
    ckpt.build_model()  # self-describing: rebuilds without the config
    # The resolved config was saved and trains again as is.
    assert (
        load_config(out / 'config.yaml').to_dict()
        == tiny_config(data_dir, 'train.image_every=2').to_dict()
    )

    with pytest.raises(TrainError, match='already holds a run'):
        run(tiny_config(data_dir), out)
    more = run(tiny_config(data_dir, 'train.epochs=3'), out, resume='auto')
    assert more['step'] == 9 and more['epoch'] == 3
    assert [e['step'] for e in read_log(out)] == list(range(1, 10))


def test_resume_is_exact(data_dir, tmp_path):
    straight = run(tiny_config(data_dir), tmp_path / 'a')
    # Stop mid-epoch (step 4 is batch 1 of epoch 2), then resume from last.pt.
    stopped = run(tiny_config(data_dir, 'train.max_steps=4'), tmp_path / 'b')
    assert stopped['step'] == 4 and not stopped['finished']
    assert load_checkpoint(tmp_path / 'b' / 'last.pt').batches_done == 1
    resumed = run(tiny_config(data_dir), tmp_path / 'b', resume=tmp_path / 'b' / 'last.pt')
    assert resumed['step'] == straight['step'] == 6
    a = load_checkpoint(tmp_path / 'a' / 'last.pt').model_state
    b = load_checkpoint(tmp_path / 'b' / 'last.pt').model_state
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)
    losses_a = [e['loss'] for e in read_log(tmp_path / 'a')]
    losses_b = [e['loss'] for e in read_log(tmp_path / 'b')]
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-6)
    assert resumed['best_miou'] == pytest.approx(straight['best_miou'])


@pytest.mark.slow
def test_sigkill_mid_epoch_loses_at_most_one_interval(data_dir, tmp_path):
    out = tmp_path / 'killed'
    every = 3
    args = [
        '--config', 'tiny', '--data-dir', str(data_dir), '--out', str(out), '--no-progress',
        '--set', 'data.synthetic=null', 'train.batch_size=2', 'train.image_every=0',
        'train.epochs=30', f'train.checkpoint_every_steps={every}',
    ]  # fmt: skip
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, '-m', 'training.train', *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            log = out / 'log.jsonl'
            if log.is_file() and len(log.read_text().splitlines()) >= 2 * every + 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    logged = [e['step'] for e in read_log(out)]
    ckpt = load_checkpoint(out / 'last.pt')
    assert max(logged) - ckpt.step <= every
    assert ckpt.step % 3 != 0 or ckpt.batches_done == 0  # mid-epoch checkpoints are possible
    resumed = subprocess.run(
        [sys.executable, '-m', 'training.train', *args, '--resume'],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [e['step'] for e in read_log(out)] == list(range(1, 91))
    # ... and the result is the uninterrupted run's.
    config = tiny_config(data_dir, 'train.epochs=30', f'train.checkpoint_every_steps={every}')
    run(config, tmp_path / 'straight')
    a = load_checkpoint(tmp_path / 'straight' / 'last.pt').model_state
    b = load_checkpoint(out / 'last.pt').model_state
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def finished_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('finished') / 'run'
    run(tiny_config(data_dir, 'train.epochs=1'), out)
    return out


@pytest.mark.parametrize(
    ('override', 'needle'),
    [
        (
            'model.base_channels=8',
            "model config differs (checkpoint vs config): {'base_channels': (4, 8)}",
        ),
        ('data.class_set=carla23', 'class set lyft13 (13 classes) != carla23 (23 classes)'),
    ],
)
def test_resume_from_incompatible_checkpoint(data_dir, finished_run, tmp_path, override, needle):
    with pytest.raises(CheckpointError) as info:
        run(tiny_config(data_dir, override), tmp_path / 'new', resume=finished_run / 'last.pt')
    assert needle in str(info.value) and 'cannot resume from' in str(info.value)


def test_resume_from_corrupt_or_missing_checkpoint(data_dir, finished_run, tmp_path, capsys):
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes((finished_run / 'last.pt').read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r'corrupt\.pt is corrupt'):
        run(tiny_config(data_dir), tmp_path / 'new', resume=corrupt)
    argv = ['--config', 'tiny', '--data-dir', str(data_dir), '--out', str(tmp_path / 'o')]
    assert main([*argv, '--resume', str(tmp_path / 'nope.pt')]) == 2
    assert 'nope.pt does not exist' in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_requested_without_gpu(data_dir, tmp_path, capsys):
    with pytest.raises(TrainError, match=r'no CUDA GPU is available.*use --device cpu'):
        run(tiny_config(data_dir, 'train.device=cuda'), tmp_path / 'run')
    argv = ['--config', 'tiny', '--data-dir', str(data_dir), '--device', 'cuda']
    assert main([*argv, '--out', str(tmp_path / 'o')]) == 2
    assert 'no CUDA GPU' in capsys.readouterr().err


def test_missing_data_dir_without_synthetic(tmp_path, capsys):
    argv = ['--config', 'tiny', '--data-dir', str(tmp_path / 'nowhere'), '--out', str(tmp_path)]
    assert main([*argv, '--set', 'data.synthetic=null']) == 2
    err = capsys.readouterr().err
    assert 'nowhere does not exist' in err and 'data.synthetic' in err


def test_bad_config_value_on_the_command_line(capsys):
    assert main(['--config', 'tiny', '--set', 'optim.lr=fast']) == 2
    assert 'optim.lr must be a number' in capsys.readouterr().err


# --- the doors ------------------------------------------------------------------------------


def test_main_with_direct_flags(data_dir, tmp_path, capsys):
    out = tmp_path / 'cli'
    argv = ['--config', 'tiny', '--data-dir', str(data_dir), '--out', str(out), '--epochs', '1']
    assert main([*argv, '--set', 'optim.lr=1e-3', 'train.batch_size=3', '--no-progress']) == 0
    saved = load_config(out / 'config.yaml')
    assert saved.train.epochs == 1 and saved.optim.lr == pytest.approx(1e-3)
    assert saved.data.data_dir == str(data_dir)
    assert 'best val mIoU' in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_synthetic_data_is_generated_when_missing(tmp_path):
    synthetic = pytest.importorskip('training.data.synthetic')
    try:
        synthetic.render_frame(0, 0, synthetic.SynthConfig(width=64, height=48))
    except Exception as err:  # the generator is someone else's work in progress
        pytest.skip(f'synthetic generator not usable yet: {err!r}')
    data = tmp_path / 'synth'
    config = load_config(
        'tiny',
        [
            f'data.data_dir={data}',
            'data.synthetic.frames=10',
            'train.epochs=1',
            'train.image_every=0',
        ],
    )
    summary = run(config, tmp_path / 'run')
    assert summary['finished'] and scan_dataset(data).samples
    assert summary['manifest'] == str(tmp_path / 'run' / 'manifest.json')


def test_measure_loader_throughput(data_dir):
    result = measure_loader_throughput(tiny_config(data_dir), batches=2)
    assert result['loader_images_per_s'] > 0 and result['step_images_per_s'] > 0


def test_runs_as_a_file_and_as_a_module(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    as_file = subprocess.run(
        [sys.executable, str(REPO / 'training' / 'train.py'), '--help'],
        cwd=tmp_path,  # not the repo: the script must find the repo root itself
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_file.returncode == 0, as_file.stderr
    assert '--resume' in as_file.stdout and '--measure-loader' in as_file.stdout
    from semseg_ros.cli import COMMANDS

    assert COMMANDS['train'].load() is main
