"""semseg export: ONNX with metadata, verified vs torch; FP16 / INT8 variants; the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from semseg_ros.engines.onnxruntime_engine import OnnxRuntimeEngine
from semseg_ros.labels import LYFT13
from semseg_ros.model_file import FORMAT_KEY, read_model_info
from semseg_ros.pipeline import Normalization
from training.checkpoint import Checkpoint, save_checkpoint
from training.export import (
    DEFAULT_OPSET,
    convert_fp16,
    export_onnx,
    main,
    pad_inputs,
    quantize_int8,
)
from training.model import UNetConfig, build_model

INPUT_SIZE = (64, 32)  # (w, h) the tiny model is fed
CROP = (8, 4)  # rows cropped top / bottom of the frame


def make_checkpoint(
    path: Path, *, seed: int = 0, base_channels: int = 4, pad_mode: str = 'replicate'
) -> Path:
    """A tiny random-weight lyft13 checkpoint with a row crop (shared by the engine tests)."""
    torch.manual_seed(seed)
    config = UNetConfig(
        num_classes=LYFT13.num_classes, base_channels=base_channels, depth=2, pad_mode=pad_mode
    )
    model = build_model(config)
    # Non-trivial batch-norm statistics, so the export's BN folding is exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    checkpoint = Checkpoint(
        model_config=config.to_dict(),
        class_set=LYFT13.to_dict(),
        normalization=Normalization().to_dict(),
        input_size=list(INPUT_SIZE),
        model_state=model.state_dict(),
        label_transform={'crop_top': CROP[0], 'crop_bottom': CROP[1]},
        train_config={'name': 'test_tiny'},
    )
    return save_checkpoint(checkpoint, path)


def export_tiny(folder: Path, **kwargs) -> Path:
    checkpoint = make_checkpoint(folder / 'tiny.pt', **kwargs)
    out = folder / 'tiny.onnx'
    export_onnx(checkpoint, out)
    return out


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp('export'))


def test_onnx_passes_checker_with_opset_and_dynamic_axes(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[''] == DEFAULT_OPSET >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']
    assert dims[1].dim_value == 3


def test_metadata_describes_the_model(exported):
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert meta[FORMAT_KEY] == '1'
    info = read_model_info(exported)
    assert info.class_set is LYFT13
    assert info.input_spec.input_size == INPUT_SIZE
    assert (info.input_spec.crop_top, info.input_spec.crop_bottom) == CROP
    assert info.input_spec.normalization == Normalization()
    assert info.output_kind == 'logits' and info.precision == 'fp32'
    assert info.provenance['train_config'] == 'test_tiny'
    assert len(info.provenance['checkpoint_sha256']) == 64


@pytest.mark.parametrize('shape', [(3, 3, 45, 70), (1, 3, 16, 16)])
def test_onnxruntime_matches_torch_at_other_sizes(exported, shape):
    """The traced graph generalizes: other batch sizes and sizes not a padding multiple."""
    from training.checkpoint import load_checkpoint

    model = load_checkpoint(exported.with_suffix('.pt')).build_model()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    got, ids = ort.InferenceSession(str(exported)).run(['logits', 'ids'], {'image': x})
    assert got.shape == expected.shape == (shape[0], LYFT13.num_classes, *shape[2:])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(ids, expected.argmax(1))


@pytest.mark.parametrize('pad_mode', ['replicate', 'constant'])
def test_pads_have_a_static_length_and_follow_the_input_size(tmp_path, exported, pad_mode):
    """onnx-tensorrt's Pad importer wants a pads input of known length: 8 values (NCHW),
    still computed from the input's shape, never ``ConstantOfShape(8 - len(pad))``."""
    if pad_mode == 'replicate':
        path = exported
    else:
        path = tmp_path / 'constant.onnx'
        export_onnx(make_checkpoint(tmp_path / 'constant.pt', pad_mode='constant'), path)
    pads = pad_inputs(path)
    assert len(pads) == 1  # the UNet's padding to a multiple of 2 ** depth
    for pad in pads:
        assert pad['pads_shape'] == [8]
        assert 'ConstantOfShape' not in pad['computed_from']
        # The amounts follow the input size: the graph stays dynamic.
        assert 'Shape' in pad['computed_from']
    from training.checkpoint import load_checkpoint

    model = load_checkpoint(path.with_suffix('.pt')).build_model()
    session = ort.InferenceSession(str(path))
    for shape in [(2, 3, 45, 70), (1, 3, 17, 33)]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got, ids = session.run(['logits', 'ids'], {'image': x})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(ids, expected.argmax(1))


@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'int8'])
def test_ids_output_is_the_argmax_of_the_logits(exported, precision):
    # The graph's second output: class ids as uint8, first maximum on ties like numpy.
    rng = np.random.default_rng(2)
    if precision == 'fp16':
        path = convert_fp16(exported)[0]
    elif precision == 'int8':
        path = quantize_int8(exported, [rng.integers(0, 256, (48, 80, 3), np.uint8)])
    else:
        path = exported
    assert read_model_info(path).ids_output == 'ids'
    x = rng.standard_normal((2, 3, 40, 56)).astype(np.float32)
    logits, ids = ort.InferenceSession(str(path)).run(['logits', 'ids'], {'image': x})
    assert ids.dtype == np.uint8 and ids.shape == (2, 40, 56)
    np.testing.assert_array_equal(ids, logits.argmax(1))
    assert read_model_info(path).confidence_output == 'confidence'
    (confidence,) = ort.InferenceSession(str(path)).run(['confidence'], {'image': x})
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)  # (N, C, h, w) softmax
    expected = (probabilities.max(1) * 255).astype(np.uint8)  # (N, h, w)
    assert confidence.dtype == np.uint8 and confidence.shape == (2, 40, 56)
    assert np.abs(confidence.astype(int) - expected).max() <= 1  # float rounding at the cast

    # The engine serves ids from a session without the confidence head (onnxruntime would
    # run it for every frame otherwise) and opens one with it when confidence is asked for.
    engine = OnnxRuntimeEngine(read_model_info(path), device='cpu')
    assert [o.name for o in engine._session.get_outputs()] == ['logits', 'ids']
    np.testing.assert_array_equal(engine.infer_ids(x), ids)
    assert engine._full_session is None
    np.testing.assert_array_equal(engine.infer_ids_and_confidence(x)[1], confidence)


def test_fp16_variant_agrees_with_fp32(exported):
    path, agreement = convert_fp16(exported)
    assert path.name == 'tiny.fp16.onnx'
    assert agreement >= 0.99
    info = read_model_info(path)
    assert info.precision == 'fp16'
    # FP32 I/O kept (and the uint8 ids and confidence)
    dtypes = [t.dtype for t in info.inputs + info.outputs]
    assert dtypes == ['float32', 'float32', 'uint8', 'uint8']
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_int8_variant_is_quantized_and_runs(exported):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(3)]
    path = quantize_int8(exported, frames)
    info = read_model_info(path)
    assert info.precision == 'int8'
    assert info.provenance['int8_calibration_frames'] == 3
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    x = rng.standard_normal((1, 3, 32, 64)).astype(np.float32)
    out = ort.InferenceSession(str(path)).run(None, {'image': x})[0]
    assert out.shape == (1, LYFT13.num_classes, 32, 64)


def test_cli_exports_and_reports(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / 'm.pt')
    assert (
        main(['--checkpoint', str(checkpoint), '--out', str(tmp_path / 'm.onnx'), '--fp16']) == 0
    )
    out = capsys.readouterr().out
    assert 'max abs diff' in out and 'argmax agreement' in out
    assert (tmp_path / 'm.onnx').is_file() and (tmp_path / 'm.fp16.onnx').is_file()


def test_cli_missing_checkpoint_names_file_and_fix(tmp_path, capsys):
    assert main(['--checkpoint', str(tmp_path / 'nope.pt')]) == 1
    err = capsys.readouterr().err
    assert 'nope.pt' in err and 'semseg train' in err


def test_cli_tensorrt_without_tensorrt_is_a_clear_error(exported, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip('TensorRT is installed here; the engine tests cover it')
    except ImportError:
        pass
    assert main(['--onnx', str(exported), '--tensorrt']) == 1
    assert 'TensorRT is not installed' in capsys.readouterr().err
