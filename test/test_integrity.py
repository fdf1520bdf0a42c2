"""Model integrity: an export records a digest of its weights; every loader checks it.

A model whose weights were damaged after export (a bad copy, a truncated download patched up,
a disk error) is refused by the node, ``semseg bag`` and ``semseg evaluate`` with a message
naming the file; an older export without the digest loads with one warning.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip('onnx')

from semseg_ros.model_file import (  # noqa: E402
    WEIGHTS_DIGEST_KEY,
    ModelFileError,
    read_model_info,
    read_onnx_metadata,
)
from semseg_ros.node.core import NodeCore  # noqa: E402
from semseg_ros.node.params import NodeStartupError  # noqa: E402

from test_bag import export_tiny_model  # noqa: E402  isort: skip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp('model'))


def damaged_copy(model: Path, out: Path, nbytes: int = 200) -> Path:
    """``model`` with ``nbytes`` of its largest weight tensor zeroed in place, file size kept."""
    proto = onnx.load(str(model))
    weights = max(proto.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    data = bytearray(model.read_bytes())
    start = data.index(weights) + len(weights) // 2
    data[start : start + nbytes] = bytes(nbytes)
    out.write_bytes(bytes(data))
    return out


def without_digest(model: Path, out: Path) -> Path:
    proto = onnx.load(str(model))
    kept = [p for p in proto.metadata_props if p.key != WEIGHTS_DIGEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(out))
    return out


def test_an_export_records_the_digest_of_its_graph(model):
    meta = read_onnx_metadata(model)
    proto = onnx.load(str(model))
    import hashlib

    assert meta[WEIGHTS_DIGEST_KEY] == hashlib.sha256(proto.graph.SerializeToString()).hexdigest()
    assert read_model_info(model).weights_sha256 == meta[WEIGHTS_DIGEST_KEY]


def test_damaged_weights_are_refused_naming_the_file(model, tmp_path):
    bad = damaged_copy(model, tmp_path / 'damaged.onnx')
    assert bad.stat().st_size == model.stat().st_size
    with pytest.raises(ModelFileError, match=r'damaged\.onnx is damaged: its weights do not'):
        read_model_info(bad)
    with pytest.raises(NodeStartupError, match=r'damaged\.onnx is damaged'):
        NodeCore.start({'model_path': str(bad), 'backend': 'onnxruntime', 'device': 'cpu'},
                       log_warning=print)  # fmt: skip


def test_the_node_process_bag_and_evaluate_refuse_a_damaged_model(model, tmp_path, ros_env):
    bad = damaged_copy(model, tmp_path / 'damaged.onnx')
    node = subprocess.run(
        [sys.executable, '-m', 'semseg_ros.node', '--ros-args', '-p', f'model_path:={bad}'],
        env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = (node.stdout + node.stderr).strip().splitlines()
    assert node.returncode == 1 and len(lines) == 1, lines
    assert '[FATAL]' in lines[0] and f'{bad} is damaged' in lines[0], lines
    print(lines[0])
    bag = subprocess.run(
        [sys.executable, '-m', 'semseg_ros.cli', 'bag', str(tmp_path / 'in'),
         str(tmp_path / 'out'), '--model', str(bad)],
        env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bag.returncode == 1 and f'{bad} is damaged' in bag.stderr, bag.stderr
    from training.evaluate import EvaluationError, load_segmenter

    with pytest.raises(EvaluationError, match=r'damaged\.onnx is damaged'):
        load_segmenter(bad, 'onnxruntime', 'cpu')


def test_a_model_without_a_digest_loads_with_one_warning(model, tmp_path):
    old = without_digest(model, tmp_path / 'old.onnx')
    warnings: list[str] = []
    core = NodeCore.start({'model_path': str(old), 'backend': 'onnxruntime', 'device': 'cpu'},
                          log_warning=warnings.append)  # fmt: skip
    assert core.segmenter.model_info.weights_sha256 == ''
    assert len(warnings) == 1 and 'records no weights digest' in warnings[0]
    assert str(old) in warnings[0]
    quiet: list[str] = []
    NodeCore.start({'model_path': str(model), 'backend': 'onnxruntime', 'device': 'cpu'},
                   log_warning=quiet.append)  # fmt: skip
    assert quiet == []


def test_add_digest_makes_an_older_export_checkable(model, tmp_path):
    from training.export import main

    old = without_digest(model, tmp_path / 'old.onnx')
    assert main(['--add-digest', str(old)]) == 0
    assert read_model_info(old).weights_sha256 == read_model_info(model).weights_sha256
    with pytest.raises(ModelFileError, match='is damaged'):
        read_model_info(damaged_copy(old, tmp_path / 'old-damaged.onnx'))


def test_upgrade_gives_an_older_export_the_new_outputs_and_keeps_its_weights(model, tmp_path):
    from training.export import main

    proto = onnx.load(str(without_digest(model, tmp_path / 'plain.onnx')))
    # An export from before the ids and confidence heads: logits only.
    for field in (proto.graph.output, proto.graph.node, proto.graph.initializer):
        kept = [x for x in field if not x.name.startswith(('ids', 'confidence'))]
        del field[:]
        field.extend(kept)
    onnx.save(proto, str(tmp_path / 'old.onnx'))
    old = tmp_path / 'old.onnx'
    assert read_model_info(old).confidence_output is None

    assert main(['--upgrade', str(old)]) == 0
    info = read_model_info(old)  # the new digest reads back and matches
    assert info.confidence_output == 'confidence' and info.weights_sha256
    upgraded = onnx.load(str(old))
    assert [o.name for o in upgraded.graph.output] == ['logits', 'ids', 'confidence']
    weights = {t.name: t.raw_data for t in proto.graph.initializer}
    assert all(weights[t.name] == t.raw_data for t in upgraded.graph.initializer
               if t.name in weights)  # fmt: skip
    assert main(['--upgrade', str(old)]) == 0  # nothing left to add: unchanged
    assert read_model_info(old).sha256 == info.sha256
    # A damaged file is refused before anything is certified again.
    damaged = damaged_copy(old, tmp_path / 'damaged.onnx')
    assert main(['--upgrade', str(damaged)]) == 1
