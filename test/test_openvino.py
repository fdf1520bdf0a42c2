"""The OpenVINO engine: the same ids as onnxruntime, auto selection, its INT8 IR, the
compiled-model cache and the fallback to onnxruntime. Skipped when openvino is absent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_export import export_tiny

from semseg_ros.engines import create_engine
from semseg_ros.engines.openvino_engine import (
    OpenVINOEngine,
    cache_dir_for,
    int8_ir_for,
    openvino_available,
    openvino_int8_path,
)
from semseg_ros.model_file import WEIGHTS_DIGEST_KEY, graph_digest, read_model_info
from semseg_ros.pipeline import InputSpec, prepare

OV_OK, OV_WHY = openvino_available()
pytestmark = pytest.mark.skipif(not OV_OK, reason=OV_WHY)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp('openvino'))


@pytest.fixture(scope='module')
def frames():
    from training.data.synthetic import render_frame

    return [render_frame(5, i)[0] for i in range(3)]


@pytest.fixture
def cache(tmp_path):
    return tmp_path / 'ov-cache'


def _batches(info, frames):
    return [prepare(f, info.input_spec)[None] for f in frames]


def test_ids_and_logits_agree_with_onnxruntime_on_rendered_frames(model, frames, cache):
    ort = create_engine(model, backend='onnxruntime', device='cpu')
    ov = create_engine(model, backend='openvino', device='cpu', cache_dir=cache, threads=1)
    assert ov.backend == 'openvino' and ov.precision == 'fp32'
    same = total = 0
    for batch in _batches(ort.info, frames):
        ids = ov.infer_ids(batch)
        assert ids.dtype == np.uint8 and ids.shape == batch.shape[:1] + batch.shape[2:]
        assert ov.infer(batch).shape == (1, ort.info.num_classes, *batch.shape[2:])
        same += int(np.count_nonzero(ids == ort.infer_ids(batch)))
        total += ids.size
    assert same / total >= 0.99  # bf16 math on CPUs with AMX: near-ties may flip


def test_fast_ids_are_the_first_maximum_of_the_logits(model, frames, cache):
    engine = create_engine(model, backend='openvino', device='cpu', cache_dir=cache)
    # Full-size input: the ids go through the upsampling and crop the logits went through.
    norm = engine.info.input_spec.normalization.to_dict()
    spec = InputSpec.from_dict({'input_size': [160, 96], 'normalization': norm})
    batch = np.stack([prepare(f, spec) for f in frames[:2]])
    np.testing.assert_array_equal(engine.infer_ids(batch), engine.infer(batch).argmax(1))


def test_confidence_is_the_graphs_output_and_the_ids_stay_the_same(model, frames, cache):
    ort = create_engine(model, backend='onnxruntime', device='cpu')
    ov = create_engine(model, backend='openvino', device='cpu', cache_dir=cache)
    assert ov.info.confidence_output == 'confidence'
    for batch in _batches(ov.info, frames):
        ids, confidence = ov.infer_ids_and_confidence(batch)
        np.testing.assert_array_equal(ids, ov.infer_ids(batch))
        _, want = ort.infer_ids_and_confidence(batch)
        assert confidence.dtype == np.uint8 and confidence.shape == want.shape
        # bf16 math on CPUs with AMX: a few levels off, on average far below one.
        diff = np.abs(confidence.astype(int) - want)
        assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())


def test_a_model_without_confidence_has_none_as_on_the_other_engines(model, tmp_path, cache):
    import onnx

    proto = onnx.load(str(model))
    kept = [o for o in proto.graph.output if o.name != 'confidence']
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    for entry in proto.metadata_props:
        if entry.key == WEIGHTS_DIGEST_KEY:
            entry.value = graph_digest(proto)
    onnx.save(proto, str(tmp_path / 'old.onnx'))
    engine = create_engine(tmp_path / 'old.onnx', backend='openvino', cache_dir=cache)
    batch = _batches(engine.info, [np.zeros((64, 96, 3), np.uint8)])[0]
    ids, confidence = engine.infer_ids_and_confidence(batch)
    assert confidence is None and ids.shape == batch.shape[:1] + batch.shape[2:]


def test_auto_on_cpu_picks_openvino_and_int8_runs_its_ir(model, frames, tmp_path, cache):
    from training.export import quantize_openvino_int8

    onnx = shutil.copy(model, tmp_path / 'm.onnx')
    engine = create_engine(onnx, device='cpu', cache_dir=cache)
    assert engine.backend == 'openvino' and engine.precision == 'fp32'
    assert 'OpenVINO on the FP32 ONNX' in engine.selection
    with pytest.raises(Exception, match=r'no m\.openvino-int8\.xml'):
        create_engine(onnx, backend='openvino', precision='int8', cache_dir=cache)
    xml = quantize_openvino_int8(onnx, frames)
    assert xml == openvino_int8_path(onnx) and xml.with_suffix('.bin').is_file()
    engine = create_engine(onnx, backend='openvino', precision='int8', cache_dir=cache)
    assert engine.precision == 'int8' and engine.source == xml
    ids = engine.infer_ids(_batches(engine.info, frames)[0])
    assert ids.dtype == np.uint8
    # With the IR beside the file, auto picks it (the fastest CPU path) and says so.
    auto = create_engine(onnx, device='cpu', cache_dir=cache)
    assert (auto.backend, auto.precision) == ('openvino', 'int8')
    assert 'm.openvino-int8.xml, the INT8 IR made from this file' in auto.selection
    # An IR made from another ONNX is refused with the fix.
    (tmp_path / 'o').mkdir()
    other = shutil.copy(export_tiny(tmp_path / 'o', seed=1), tmp_path / 'other.onnx')
    shutil.copy(xml, openvino_int8_path(other))
    shutil.copy(xml.with_suffix('.bin'), openvino_int8_path(other).with_suffix('.bin'))
    with pytest.raises(Exception, match='made from another'):
        create_engine(other, backend='openvino', precision='int8', cache_dir=cache)
    # An IR OpenVINO cannot load: FP32, with one warning that says why.
    xml.with_suffix('.bin').write_bytes(b'truncated')
    with pytest.warns(RuntimeWarning, match=r'm\.openvino-int8\.xml is unreadable') as caught:
        auto = create_engine(onnx, device='cpu', cache_dir=cache)
    assert len(caught) == 1 and 'Incorrect weights in bin file' in str(caught[0].message)
    assert (auto.backend, auto.precision) == ('openvino', 'fp32')


#: ``quantize_openvino_int8(ONNX)`` killed while saving the IR: the .bin half written.
KILLED_WHILE_SAVING = r"""
import os, signal, sys
import openvino
from training.data.synthetic import render_frame
from training.export import quantize_openvino_int8
save_model = openvino.save_model
def save_half_then_die(model, path, **kwargs):
    save_model(model, path, **kwargs)
    weights = os.path.splitext(path)[0] + '.bin'
    os.truncate(weights, os.path.getsize(weights) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
openvino.save_model = save_half_then_die
quantize_openvino_int8(sys.argv[1], [render_frame(5, 0)[0]])
"""


def test_an_ir_export_killed_while_saving_leaves_the_previous_ir(model, frames, tmp_path):
    from training.export import quantize_openvino_int8

    onnx = shutil.copy(model, tmp_path / 'm.onnx')
    xml = quantize_openvino_int8(onnx, frames[:1])
    previous = xml.read_bytes(), xml.with_suffix('.bin').read_bytes()
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(repo), os.environ.get(
        'PYTHONPATH', '')])}  # fmt: skip
    run = subprocess.run([sys.executable, '-c', KILLED_WHILE_SAVING, str(onnx)], cwd=repo,
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert (xml.read_bytes(), xml.with_suffix('.bin').read_bytes()) == previous
    assert int8_ir_for(read_model_info(onnx))[0] == xml  # still the IR of this ONNX, whole
    (stale,) = [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # hidden, one
    quantize_openvino_int8(onnx, frames[1:2])  # the next export removes it
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        'm.onnx',
        'm.openvino-int8.bin',
        'm.openvino-int8.xml',
    ]


def test_int8_onnx_on_cpu_stays_on_onnxruntime(model, tmp_path):
    from training.export import variant_path

    int8 = variant_path(model, 'int8')
    shutil.copy(model, int8)
    info = read_model_info(model)
    object.__setattr__(info, 'precision', 'int8')
    object.__setattr__(info, 'path', int8)
    assert create_engine(info, device='cpu').backend == 'onnxruntime'


def test_foreign_or_broken_cache_is_rebuilt(model, frames, cache):
    info = read_model_info(model)
    first = OpenVINOEngine(info, cache_dir=cache)
    folder = first.cache
    assert folder == cache_dir_for(first._core, cache) and (folder / 'cache.json').is_file()
    blobs = sorted(p for p in folder.iterdir() if p.name != 'cache.json')
    assert blobs, 'OpenVINO wrote no compiled blob'
    batch = _batches(info, frames)[0]
    expected = first.infer_ids(batch)
    # A cache stamped by another OpenVINO / CPU, with a corrupt blob: emptied and rebuilt.
    (folder / 'cache.json').write_text(json.dumps({'openvino': '1999.0', 'cpu': 'other'}))
    for blob in blobs:
        blob.write_bytes(b'not a blob')
    second = OpenVINOEngine(info, cache_dir=cache)
    assert json.loads((folder / 'cache.json').read_text())['openvino'] != '1999.0'
    assert all(b.read_bytes() != b'not a blob' for b in folder.iterdir() if b.suffix == '.blob')
    np.testing.assert_array_equal(second.infer_ids(batch), expected)
    # A corrupt blob under a valid stamp: not trusted either.
    for blob in folder.glob('*.blob'):
        blob.write_bytes(b'\0' * 64)
    np.testing.assert_array_equal(OpenVINOEngine(info, cache_dir=cache).infer_ids(batch), expected)


def test_a_graph_openvino_cannot_compile_falls_back_to_onnxruntime(model, tmp_path, cache):
    import onnx
    from onnx import helper

    # com.microsoft Inverse: onnxruntime runs it, OpenVINO's ONNX frontend has no such op.
    proto = onnx.load(str(model))
    graph = proto.graph
    eye = helper.make_tensor('eye', onnx.TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    zero = helper.make_tensor('zero', onnx.TensorProto.FLOAT, [], [0.0])
    graph.initializer.extend([eye, zero])
    producer = next(n for n in graph.node if 'logits' in n.output)
    producer.output[list(producer.output).index('logits')] = 'logits_raw'
    for node in graph.node:
        node.input[:] = ['logits_raw' if i == 'logits' else i for i in node.input]
    graph.node.extend([
        helper.make_node('Inverse', ['eye'], ['inv'], domain='com.microsoft'),
        helper.make_node('ReduceSum', ['inv'], ['inv_sum'], keepdims=0),
        helper.make_node('Mul', ['inv_sum', 'zero'], ['nothing']),
        helper.make_node('Add', ['logits_raw', 'nothing'], ['logits']),
    ])  # fmt: skip
    proto.opset_import.append(helper.make_opsetid('com.microsoft', 1))
    for prop in proto.metadata_props:  # a well-formed file of its own: its digest matches
        if prop.key == WEIGHTS_DIGEST_KEY:
            prop.value = graph_digest(proto)
    odd = tmp_path / 'odd.onnx'
    onnx.save(proto, str(odd))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        engine = create_engine(odd, device='cpu', cache_dir=cache)
    assert engine.backend == 'onnxruntime'
    assert len(caught) == 1 and 'OpenVINO cannot' in str(caught[0].message)
    assert 'OpenVINO cannot' in engine.selection
    with pytest.raises(Exception, match='OpenVINO cannot compile'):
        create_engine(odd, backend='openvino', device='cpu', cache_dir=cache)


def test_the_shipped_int8_ir_belongs_to_the_shipped_onnx(tmp_path):
    """models/semseg_demo.openvino-int8.xml records the sha256 of the ONNX it was made from:
    any change to the shipped ONNX (even its metadata) needs the IR made again (models/README)."""
    shipped = Path(__file__).resolve().parents[1] / 'models' / 'semseg_demo.onnx'
    engine = OpenVINOEngine(read_model_info(shipped), precision='int8', cache_dir=tmp_path)
    assert engine.info.class_set.name == 'lyft13'
