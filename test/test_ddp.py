"""Multi-process training: torchrun + DistributedDataParallel on CPU with the gloo backend."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip('torch', reason='the training half needs torch')

from training.checkpoint import load_checkpoint  # noqa: E402
from training.train import read_log  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import write_tiny_dataset  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not torch.distributed.is_available(), reason='torch without distributed')
def test_torchrun_two_ranks_on_cpu(tmp_path):
    data = write_tiny_dataset(tmp_path / 'data', frames=16)
    out = tmp_path / 'run'
    cmd = [
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
        '--master_addr', '127.0.0.1', '--master_port', str(free_port()), '-m', 'training.train',
        '--config', 'training/configs/tiny.yaml', '--data-dir', str(data), '--out', str(out),
        '--device', 'cpu', '--no-progress',
        '--set', 'data.synthetic=null', 'train.batch_size=2', 'train.checkpoint_every_steps=1',
    ]  # fmt: skip
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}
    # Own session: on a timeout the launcher and both ranks are killed together.
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f'torchrun did not finish in 100 s:\n{stdout[-2000:]}\n{stderr[-2000:]}')
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['world_size'] == 2 and summary['finished']
    # 8 train frames / 2 ranks / batch 2 = 2 steps per epoch, 2 epochs.
    assert summary['step'] == 4
    assert stdout.count('done:') == 1
    # DDP kept the replicas identical: every rank's weight checksum is the same.
    assert summary['ranks_in_sync'], summary['rank_weight_checksums']
    # One writer (rank 0): one set of checkpoints, one log line per step, no temp files left.
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        ['best.pt', 'config.yaml', 'last.pt', 'log.jsonl', 'manifest.json', 'summary.json', 'tb']
    )
    assert [e['step'] for e in read_log(out)] == [1, 2, 3, 4]
    ckpt = load_checkpoint(out / 'last.pt')
    assert ckpt.step == 4 and ckpt.metrics['world_size'] == 2
    assert stdout.count('epoch 2/2') == 1  # rank 0 alone reports
