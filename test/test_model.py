"""Tests for training.model: shapes, configs, presets, gradients, traceability."""

from __future__ import annotations

import pytest

torch = pytest.importorskip('torch', reason='the training half needs torch')

from training.model import (  # noqa: E402
    PRESETS,
    UNet,
    UNetConfig,
    build_model,
    count_macs,
    count_parameters,
    preset,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Other engineers share the two cores; tiny models do not gain from more threads.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny(**overrides) -> UNetConfig:
    return UNetConfig(**{'num_classes': 5, 'base_channels': 4, 'depth': 3, **overrides})


UPSAMPLINGS = ['transpose', 'bilinear', 'nearest']


@pytest.mark.parametrize('stem_stride', [1, 2])
@pytest.mark.parametrize('upsampling', UPSAMPLINGS)
@pytest.mark.parametrize(('height', 'width'), [(37, 53), (32, 64), (1, 1), (17, 8)])
def test_output_shape_any_size(upsampling, stem_stride, height, width):
    model = build_model(tiny(upsampling=upsampling, stem_stride=stem_stride)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert out.shape == (2, 5, height, width)
    assert out.dtype == torch.float32


@pytest.mark.parametrize('pad_mode', ['replicate', 'constant'])
def test_full_camera_frame(pad_mode):
    # 600 is not a multiple of 2**depth: padded to 608 inside and cropped back.
    model = build_model(tiny(base_channels=2, depth=4, pad_mode=pad_mode)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 600, 800))
    assert out.shape == (1, 5, 600, 800)
    assert torch.isfinite(out).all()


def test_multiple_of_size_needs_no_padding_effect():
    # For sizes already a multiple of 2**depth the pad is a no-op, so both modes agree.
    torch.manual_seed(0)
    a = build_model(tiny(pad_mode='replicate')).eval()
    b = build_model(tiny(pad_mode='constant')).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_stem_stride_runs_the_first_level_at_half_resolution():
    model = build_model(tiny(stem_stride=2)).eval()
    assert model.config.size_multiple == 2 * 2**3
    seen = {}
    model.inc.register_forward_hook(lambda _m, _i, out: seen.update(inc=out.shape))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 48))  # padded to 48 x 48, first level 24 x 24
    assert seen['inc'] == (1, 4, 24, 24)
    assert out.shape == (1, 5, 40, 48)


def test_nearest_upsampling_is_a_transposed_conv_with_equal_taps():
    # Project-then-repeat (the 'nearest' decoder) equals a 2x2 stride-2 transposed
    # convolution whose four taps are the 1x1 kernel: the cheaper form of the same function.
    up = build_model(tiny(upsampling='nearest')).ups[0].up
    conv = up[0]
    transposed = torch.nn.ConvTranspose2d(conv.in_channels, conv.out_channels, 2, stride=2)
    with torch.no_grad():
        transposed.weight.copy_(conv.weight.permute(1, 0, 2, 3).expand(-1, -1, 2, 2))
        transposed.bias.copy_(conv.bias)
        x = torch.randn(1, conv.in_channels, 5, 7)
        torch.testing.assert_close(up(x), transposed(x))


def test_presets_build_and_match_docstring():
    assert set(PRESETS) == {'realtime', 'accurate'}
    realtime, accurate = build_model('realtime'), build_model('accurate')
    assert realtime.config.depth == 3 and accurate.config.depth == 5
    assert (realtime.config.stem_stride, realtime.config.upsampling) == (2, 'nearest')
    # The module docstring quotes these numbers; keep them honest.
    assert count_parameters(realtime) == pytest.approx(0.45e6, rel=0.01)
    assert count_parameters(accurate) == pytest.approx(31.1e6, rel=0.01)
    assert count_macs(realtime) == pytest.approx(4.19e9, rel=0.01)
    assert count_macs(accurate) == pytest.approx(110.9e9, rel=0.01)
    assert preset('realtime', num_classes=23).num_classes == 23
    with pytest.raises(ValueError, match='realtime'):
        preset('fast')


def test_count_macs_of_a_single_convolution():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (1, 3, 10, 12)) == 10 * 12 * 8 * 3 * 9
    up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
    assert count_macs(up, (1, 8, 5, 6)) == 5 * 6 * 8 * 4 * 4


def test_trainable_parameter_count():
    model = build_model(tiny())
    for p in model.inc.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.inc.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen


def test_config_round_trip_and_validation():
    config = tiny(upsampling='bilinear', dropout=0.1, batch_norm=False)
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert build_model(config.to_dict()).config == config
    with pytest.raises(ValueError, match='unknown UNetConfig keys'):
        UNetConfig.from_dict({**config.to_dict(), 'width': 3})
    with pytest.raises(ValueError, match="upsampling must be 'transpose', 'bilinear' or 'ne"):
        UNetConfig(upsampling='pixelshuffle')
    with pytest.raises(ValueError, match='stem_stride must be 1 or 2, got 4'):
        UNetConfig(stem_stride=4)
    with pytest.raises(ValueError, match='depth'):
        UNetConfig(depth=0)


def test_model_state_round_trip_restores_outputs(tmp_path):
    model = build_model(tiny()).eval()
    path = tmp_path / 'ckpt.pt'
    torch.save({'config': model.config.to_dict(), 'state_dict': model.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    restored = build_model(ckpt['config']).eval()
    restored.load_state_dict(ckpt['state_dict'])
    x = torch.randn(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))


@pytest.mark.parametrize('stem_stride', [1, 2])
@pytest.mark.parametrize('upsampling', UPSAMPLINGS)
def test_gradients_reach_every_parameter(upsampling, stem_stride):
    config = tiny(upsampling=upsampling, dropout=0.2, stem_stride=stem_stride)
    model = build_model(config).train()
    out = model(torch.randn(2, 3, 21, 19))
    out.logsumexp(dim=1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_eval_is_deterministic_and_batch_independent():
    model = build_model(tiny(dropout=0.5)).eval()
    x = torch.randn(3, 3, 24, 40)
    with torch.no_grad():
        first, second = model(x), model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(alone, first[1:2])


@pytest.mark.filterwarnings('ignore:`torch.jit.trace')
@pytest.mark.parametrize('stem_stride', [1, 2])
def test_trace_generalizes_to_other_sizes(stem_stride):
    # What the tracing ONNX exporter (dynamo=False, dynamic_axes) relies on: the padding is
    # recorded from the input shape, not baked in from the example input.
    model = build_model(tiny(stem_stride=stem_stride, upsampling='nearest')).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 37, 53))
        x = torch.randn(1, 3, 24, 70)
        out = traced(x)
        assert out.shape == (1, 5, 24, 70)
        torch.testing.assert_close(out, model(x))


def test_is_a_module():
    assert isinstance(build_model(tiny()), UNet)
