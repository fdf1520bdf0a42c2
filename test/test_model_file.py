"""The model file contract: metadata round trip, engine cache names, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from semseg_ros.labels import CARLA23, LYFT13, class_set_from_dict
from semseg_ros.model_file import (
    EngineTarget,
    ModelFileError,
    engine_cache_complete,
    engine_cache_path,
    metadata_dict,
    profile_tag,
    read_engine_sidecar,
    read_model_info,
    read_onnx_metadata,
    sidecar_path,
    write_engine_sidecar,
)
from semseg_ros.pipeline import InputSpec, Normalization

SPEC = InputSpec((40, 24), crop_top=6, crop_bottom=2, normalization=Normalization(
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), channel_order='BGR'))  # fmt: skip


def write_model(path: Path, meta: dict[str, str] | None, *, classes: int = 13) -> Path:
    """A 1x1-conv 'segmentation model' built with onnx.helper (no torch needed)."""
    weight = helper.make_tensor(
        'w', TensorProto.FLOAT, [classes, 3, 1, 1], np.ones(classes * 3, np.float32)
    )
    graph = helper.make_graph(
        [helper.make_node('Conv', ['image', 'w'], ['logits'])],
        'g',
        [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['batch', 3, 'h', 'w'])],
        [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', classes, 'h', 'w'])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    for key, value in (meta or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_round_trip_builtin_set(tmp_path):
    path = write_model(tmp_path / 'm.onnx', metadata_dict(LYFT13, SPEC, provenance={'a': 1}))
    info = read_model_info(path)
    assert info.class_set is LYFT13  # the built-in object, mappings included
    assert info.input_spec == SPEC
    assert info.opset == 17 and info.provenance == {'a': 1}
    assert [t.name for t in info.inputs] == ['image'] and info.in_channels == 3
    assert info.outputs[0].shape == ('batch', 13, 'h', 'w')
    assert info.outputs[0].dtype == 'float32'
    assert len(info.sha256) == 64


def test_reader_agrees_with_onnx_package(tmp_path):
    meta = metadata_dict(CARLA23, SPEC, precision='fp16')
    path = write_model(tmp_path / 'm.onnx', meta, classes=23)
    assert read_onnx_metadata(path) == {
        p.key: p.value for p in onnx.load(str(path)).metadata_props
    }


def test_round_trip_custom_set(tmp_path):
    custom = class_set_from_dict(
        {
            'name': 'mine',
            'classes': [{'name': 'bg', 'color': [0, 0, 0]}, {'name': 'road', 'color': [1, 2, 3]}],
            'maps_to': {'lyft13': {'bg': 'None', 'road': 'Roads'}},
        }
    )
    path = write_model(tmp_path / 'm.onnx', metadata_dict(custom, SPEC), classes=2)
    info = read_model_info(path)
    assert info.class_set.names == ('bg', 'road')
    assert info.class_set.colors.tolist() == [[0, 0, 0], [1, 2, 3]]
    assert info.class_set.maps_to['lyft13']['road'] == 'Roads'


def test_missing_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(ModelFileError, match=r'missing\.onnx does not exist.*semseg export'):
        read_model_info(tmp_path / 'missing.onnx')


@pytest.mark.parametrize(
    ('name', 'data', 'hint'),
    [
        ('garbage.onnx', b'\xff\xfe not a model at all', 'semseg export'),
        ('model.pt', b'PK\x03\x04' + bytes(200), 'PyTorch checkpoint'),
        ('text.onnx', b'hello world\n', 'not an ONNX model'),
    ],
)
def test_not_onnx_is_a_clear_error(tmp_path, name, data, hint):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match='not an ONNX model') as info:
        read_model_info(path)
    assert name in str(info.value) and hint in str(info.value)


def test_onnx_without_metadata(tmp_path):
    path = write_model(tmp_path / 'plain.onnx', None)
    with pytest.raises(ModelFileError, match=r'plain\.onnx has no semseg_ros metadata.*export'):
        read_model_info(path)


def test_unknown_class_set(tmp_path):
    meta = metadata_dict(LYFT13, SPEC)
    meta['class_set'] = 'cityscapes99'
    del meta['class_names'], meta['palette']
    path = write_model(tmp_path / 'm.onnx', meta)
    with pytest.raises(ModelFileError, match=r"class set 'cityscapes99' is not built in"):
        read_model_info(path)


def test_builtin_name_with_other_classes_is_rejected(tmp_path):
    meta = metadata_dict(LYFT13, SPEC)
    meta['class_names'] = json.dumps([f'c{i}' for i in range(13)])
    path = write_model(tmp_path / 'm.onnx', meta)
    with pytest.raises(ModelFileError, match='differ from the built-in'):
        read_model_info(path)


def test_newer_metadata_format_is_rejected(tmp_path):
    meta = metadata_dict(LYFT13, SPEC) | {'semseg_ros.format': '99'}
    with pytest.raises(ModelFileError, match='format 99'):
        read_model_info(write_model(tmp_path / 'm.onnx', meta))


def test_metadata_naming_absent_tensors(tmp_path):
    meta = metadata_dict(LYFT13, SPEC, output_name='scores')
    with pytest.raises(ModelFileError, match="output 'scores'"):
        read_model_info(write_model(tmp_path / 'm.onnx', meta))


def test_engine_cache_name_changes_with_every_input(tmp_path):
    onnx_path = tmp_path / 'model.onnx'
    target = EngineTarget('NVIDIA H200', (9, 0), '10.13.0', 'fp16')
    base = engine_cache_path(onnx_path, target, 'ab' * 32)
    assert base == tmp_path / 'model.NVIDIA_H200-sm90-trt10.13.0-fp16-abababababab.engine'
    others = [
        EngineTarget('NVIDIA L4', (8, 9), '10.13.0'),  # another GPU
        EngineTarget('NVIDIA H200', (9, 0), '11.0.0'),  # another TensorRT
        EngineTarget('NVIDIA H200', (9, 0), '10.13.0', 'fp32'),  # another precision
    ]
    variants = [engine_cache_path(onnx_path, t, 'ab' * 32) for t in others]
    variants.append(engine_cache_path(onnx_path, target, 'cd' * 32))  # another ONNX
    assert len({base, *variants}) == 5


def test_engine_sidecar_round_trip_and_absence(tmp_path):
    onnx_path = write_model(tmp_path / 'model.onnx', metadata_dict(LYFT13, SPEC))
    info = read_model_info(onnx_path)
    target = EngineTarget('NVIDIA H200', (9, 0), '10.13.0')
    engine = engine_cache_path(onnx_path, target, info.sha256)
    engine.write_bytes(b'serialized')
    write_engine_sidecar(engine, info, target)
    loaded, built_for = read_engine_sidecar(engine)
    assert built_for == target
    assert loaded.input_spec == SPEC and loaded.class_set is LYFT13
    assert read_model_info(engine).input_spec == SPEC
    sidecar_path(engine).unlink()
    with pytest.raises(ModelFileError, match=r'has no metadata file.*semseg export --tensorrt'):
        read_model_info(engine)


def test_engine_cache_name_holds_the_profile(tmp_path):
    onnx_path = tmp_path / 'model.onnx'
    target = EngineTarget('NVIDIA H200', (9, 0), '11.4.0', 'fp16')
    assert profile_tag(8, (384, 288)) == 'b8-384x288'
    assert profile_tag(1, (384, 288), (800, 600)) == 'b1-384x288to800x600'
    assert profile_tag(1, (384, 288), (100, 600)) == 'b1-384x288to384x600'
    names = {
        engine_cache_path(onnx_path, target, 'ab' * 32, profile).name
        for profile in ('b8-384x288', 'b1-384x288', 'b1-384x288to800x600')
    }
    assert len(names) == 3
    assert 'model.NVIDIA_H200-sm90-trt11.4.0-fp16-b8-384x288-abababababab.engine' in names


def test_engine_sidecar_is_atomic_and_a_cache_entry_needs_both(tmp_path):
    onnx_path = write_model(tmp_path / 'model.onnx', metadata_dict(LYFT13, SPEC))
    info = read_model_info(onnx_path)
    target = EngineTarget('NVIDIA H200', (9, 0), '11.4.0')
    engine = engine_cache_path(onnx_path, target, 'cd' * 32, 'b8-40x24')
    write_engine_sidecar(
        engine, info, target, parsed=tmp_path / 'model.fp16.onnx', parsed_sha256='cd' * 32
    )
    assert not engine_cache_complete(engine)  # the sidecar alone is no cache entry
    engine.write_bytes(b'serialized')
    assert engine_cache_complete(engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ['model.onnx', engine.name, engine.name + '.json']
    )  # no temporary file left behind
    side = json.loads(sidecar_path(engine).read_text())
    assert side['parsed'].endswith('model.fp16.onnx') and side['parsed_sha256'] == 'cd' * 32
    assert side['onnx_sha256'] == info.sha256


def test_a_graph_without_its_confidence_head_keeps_everything_else(tmp_path):
    import onnxruntime as ort
    from test_export import export_tiny

    from semseg_ros.model_file import onnx_without_outputs

    data = export_tiny(tmp_path).read_bytes()
    pruned = onnx.load_from_string(onnx_without_outputs(data, {'confidence'}))
    onnx.checker.check_model(pruned)
    full = onnx.load_from_string(data)
    assert [o.name for o in pruned.graph.output] == ['logits', 'ids']
    assert [n.name for n in pruned.graph.node] == [
        n.name for n in full.graph.node if not n.name.startswith('confidence')
    ]
    assert not any(t.name.startswith('confidence') for t in pruned.graph.initializer)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    run = {
        name: ort.InferenceSession(proto.SerializeToString()).run(['logits', 'ids'], {'image': x})
        for name, proto in (('full', full), ('pruned', pruned))
    }
    np.testing.assert_array_equal(run['full'][1], run['pruned'][1])
    np.testing.assert_array_equal(run['full'][0], run['pruned'][0])
    # Nothing to drop, or a subgraph whose outer-scope reads it cannot see: bytes unchanged.
    assert onnx_without_outputs(data, {'no such output'}) == data
    branch = helper.make_graph([], 'branch', [], [helper.make_tensor_value_info(
        'logits', TensorProto.FLOAT, None)])  # fmt: skip
    full.graph.node.append(helper.make_node('If', ['cond'], ['z'], then_branch=branch,
                                            else_branch=branch))  # fmt: skip
    with_subgraph = full.SerializeToString()
    assert onnx_without_outputs(with_subgraph, {'confidence'}) == with_subgraph
