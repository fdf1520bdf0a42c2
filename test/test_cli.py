"""The `semseg` command: discoverable subcommands, clear errors, no torch for the runtime."""

from __future__ import annotations

import subprocess
import sys

import pytest

from semseg_ros.cli import COMMANDS, Command, main


def _leaves(tree, prefix=()):
    for name, entry in tree.items():
        if isinstance(entry, Command):
            yield (*prefix, name), entry
        else:
            yield from _leaves(entry, (*prefix, name))


def test_top_level_help_lists_every_command(capsys):
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_group_help_lists_its_subcommands_with_summaries(capsys):
    assert main(['data', '--help']) == 0
    out = capsys.readouterr().out
    for name, entry in COMMANDS['data'].items():
        assert name in out and entry.summary in out


def test_no_arguments_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert 'usage: semseg' in capsys.readouterr().err


def test_unknown_command_names_it_and_the_choices(capsys):
    assert main(['data', 'frobnicate']) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and 'synth' in err


@pytest.mark.parametrize(('path', 'command'), list(_leaves(COMMANDS)), ids=lambda v: str(v))
def test_every_subcommand_has_help(path, command, capsys):
    try:
        code = main([*path, '--help'])
    except SystemExit as exit_info:  # argparse exits; some mains catch it and return
        code = exit_info.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f'usage: semseg {" ".join(path)}')


def test_help_and_data_commands_do_not_import_torch():
    # The runtime half and the data tools must work where torch is not installed.
    code = """
import contextlib, io, sys
from semseg_ros.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(['--help'])
import semseg_ros.labels, semseg_ros.visualize, semseg_ros.bench, semseg_ros.demo
import training.data.lyft, training.data.splits, training.data.check
import training.data.synthetic, training.data.preview, training.data.collect
assert 'torch' not in sys.modules, 'torch was imported'
"""
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_training_command_without_its_dependencies_names_the_install():
    # torch is missing: `semseg train` says so and how to install it, without a traceback.
    code = """
import sys
sys.modules['torch'] = None  # an import of torch now fails as if it were not installed
from semseg_ros.cli import main
sys.exit(main(['train', '--help']))
"""
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert 'semseg train: ' in result.stderr and 'torch' in result.stderr
    assert 'pip install semseg_ros[train]' in result.stderr
    assert 'Traceback' not in result.stderr
