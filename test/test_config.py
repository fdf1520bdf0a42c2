"""Tests for training.config: YAML loading, --set overrides, validation errors, round trip."""

from __future__ import annotations

import pytest

pytest.importorskip('torch', reason='the training half needs torch')

from training.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    save_config,
)
from training.model import UNetConfig


@pytest.mark.parametrize('name', ['cpu', 'gpu', 'tiny'])
def test_shipped_configs_load_and_validate(name):
    config = load_config(CONFIG_DIR / f'{name}.yaml', ['data.data_dir=/some/data'])
    assert isinstance(config, Config)
    assert config.model.unet_config(13).num_classes == 13


def test_default_config_is_cpu_and_self_contained():
    config = load_config('cpu')
    assert config.data.synthetic is not None and config.data.synthetic.frames > 0
    assert config.train.device in ('auto', 'cpu')


def test_gpu_config_is_full_resolution_with_amp():
    config = load_config('gpu', ['data.data_dir=/data'])
    assert config.data.input_size[0] >= 640 and config.data.input_size[1] >= 480
    assert config.train.amp and config.model.preset == 'accurate'


def test_overrides_parse_yaml_values():
    config = load_config(
        'tiny',
        ['optim.lr=1e-3', 'model.base_channels=8', 'data.cache=false', 'data.input_size=[96, 64]'],
    )
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.model.base_channels == 8
    expected = UNetConfig(
        num_classes=13, base_channels=8, depth=2, stem_stride=2, upsampling='nearest'
    )  # the realtime preset's other fields
    assert config.model.unet_config(13) == expected
    assert config.data.cache is False
    assert config.data.input_size == [96, 64]


def test_override_creates_optional_section():
    config = load_config('tiny', ['data.synthetic=null', 'data.synthetic.frames=7'])
    assert config.data.synthetic.frames == 7 and config.data.synthetic.seed == 0


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('data: {data_dir: d}\noptim: {lr: 3e-3}\n')
    assert load_config(path).optim.lr == pytest.approx(3e-3)


@pytest.mark.parametrize(
    ('override', 'needle'),
    [
        ('optim.learning_rate=1', "unknown key(s) ['learning_rate']"),
        ('optimizer.lr=1', "unknown key(s) ['optimizer']"),
        ('optim.lr=fast', 'optim.lr must be a number'),
        ('train.epochs=2.5', 'train.epochs must be an integer'),
        ('data.cache=maybe', 'data.cache must be true or false'),
        ('optim.schedule=step', "optim.schedule must be one of ['poly', 'cosine', 'constant']"),
        ('loss.name=hinge', "loss.name 'hinge' is unknown"),
        ('model.preset=huge', "model.preset 'huge' is unknown"),
        ('model.depth=9', 'depth must be 1..7'),
        ('data.input_size=[64]', 'data.input_size must be [width, height]'),
        ('augment.scale=[2, 1]', 'augment.scale must be [min, max]'),
        ('train.batch_size=0', 'train.batch_size must be >= 1'),
        ('data.crop_top=-1', 'crop_top must be a non-negative int'),
        ('normalization.std=[0, 1, 1]', 'std values must be positive'),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config('tiny', [override])
    assert needle in str(info.value)
    assert 'tiny.yaml' in str(info.value)  # the file is named too


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"valid keys are \['lr', 'weight_decay'"):
        load_config('tiny', ['optim.lrr=1'])


@pytest.mark.parametrize('text', ['optim.lr', '=3', 'optim..lr=3'])
def test_malformed_set_is_explained(text):
    with pytest.raises(ConfigError, match=r'section\.key=value'):
        parse_override(text)


def test_set_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match='is a value, not a section'):
        load_config('tiny', ['optim.lr.x=1'])


def test_missing_file_lists_shipped_configs(tmp_path):
    with pytest.raises(ConfigError, match=r'does not exist; shipped configs: cpu.yaml, gpu.yaml'):
        load_config(tmp_path / 'nope.yaml')


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('data: [unclosed\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(bad)
    bad.write_text('- a\n- b\n')
    with pytest.raises(ConfigError, match='must hold a mapping'):
        load_config(bad)


def test_data_source_required(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('train: {epochs: 1}\n')
    with pytest.raises(ConfigError, match=r'data\.data_dir or data\.manifest must be set'):
        load_config(path)


def test_base_config_is_extended(tmp_path):
    (tmp_path / 'base.yaml').write_text('data: {data_dir: d, input_size: [96, 64]}\n')
    child = tmp_path / 'child.yaml'
    child.write_text('base: base.yaml\ndata: {cache: false}\n')
    config = load_config(child)
    assert config.data.input_size == [96, 64] and config.data.cache is False
    (tmp_path / 'base.yaml').write_text('base: child.yaml\n')
    with pytest.raises(ConfigError, match='form a loop'):
        load_config(child)


def test_saved_config_round_trips(tmp_path):
    config = load_config('tiny', ['optim.lr=2e-3', 'data.hood_row=40'])
    path = save_config(config, tmp_path / 'config.yaml')
    again = load_config(path)
    assert again == config
    assert config_from_dict(config.to_dict()) == config
    assert config.data.label_transform().hood_row == 40
