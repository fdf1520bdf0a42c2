"""The ``semseg`` command: one entry point, one subcommand per step of the project.

Each subcommand is the ``main(argv, prog)`` of the module that implements it, so every step
has two doors and one implementation: ``semseg data synth ...`` and
``python -m training.data.synthetic ...`` run the same function.  Modules are imported only
when their command runs, so ``semseg --help`` never imports torch.  The training half's
commands name their module inside it (``training=True``): installed, that package is
``semseg_ros_training`` (:mod:`semseg_ros.training_half`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def positive_int(text: str) -> int:
    """argparse type for counts that must be >= 1 (``--batch-size``, ``--workers``, ...)."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from err
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit code argparse chose (0 after ``--help``, 2 on
    a usage error): every subcommand's ``main`` returns that code instead of exiting::

        args = parse_args(parser, argv)
        if isinstance(args, int):
            return args
    """
    try:
        return parser.parse_args(argv)
    except SystemExit as err:
        return int(err.code or 0)


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """A usage error found after parsing, reported as argparse reports its own (usage line,
    ``PROG: error: MESSAGE`` on stderr), returned as its exit code 2 instead of exiting."""
    parser.print_usage(sys.stderr)
    print(f'{parser.prog}: error: {message}', file=sys.stderr)
    return 2


def device_arg(text: str) -> str:
    """argparse type for ``--device``: :func:`semseg_ros.devices.parse_device`."""
    from semseg_ros.devices import parse_device

    try:
        return parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


@dataclass(frozen=True)
class Command:
    target: str  # 'package.module:function', called as function(argv, prog) -> int
    summary: str
    # True: target is 'module:function' inside the training half (training_half.py).
    training: bool = False

    def load(self) -> Callable[..., int]:
        module_name, func_name = self.target.split(':')
        if self.training:
            from semseg_ros.training_half import training_module

            return getattr(training_module(module_name), func_name)
        return getattr(importlib.import_module(module_name), func_name)


CommandTree = dict[str, 'Command | CommandTree']

COMMANDS: CommandTree = {
    'data': {
        'synth': Command(
            'data.synthetic:main',
            'write a synthetic CARLA-like dataset in the Lyft-Udacity layout',
            training=True,
        ),
        'check': Command(
            'data.check:main',
            'validate a dataset: counts, class frequencies, and every problem by file',
            training=True,
        ),
        'split': Command(
            'data.splits:main',
            'write a train/val/test manifest (original A,B,C/D/E or seeded random split)',
            training=True,
        ),
        'collect': Command(
            'data.collect:main',
            'drive a live CARLA server and record RGB + segmentation pairs in the same layout',
            training=True,
        ),
        'show': Command(
            'data.preview:main',
            'draw a grid of dataset samples: image | colour label | overlay',
            training=True,
        ),
    },
    'train': Command(
        'train:main',
        'train a UNet from a YAML config (resume, TensorBoard, torchrun for multi-GPU)',
        training=True,
    ),
    'evaluate': Command(
        'evaluate:main',
        'score a checkpoint on a split: IoU per class, mIoU, Lyft score, confusion matrix',
        training=True,
    ),
    'predict': Command(
        'predict:main',
        'segment images or folders with a checkpoint: colour masks and side-by-side grids',
        training=True,
    ),
    'export': Command(
        'export:main',
        'export a checkpoint to ONNX with metadata (+ FP16, INT8); --tensorrt builds the engine',
        training=True,
    ),
    'replay': Command(
        'semseg_ros.replay:main',
        'publish a dataset or bag as the CARLA bridge camera topics (rclpy)',
    ),
    'record': Command(
        'semseg_ros.record:main',
        'record ROS 2 topics to a bag (mcap or sqlite3) with rclpy, no rosbag2 needed',
    ),
    'bag': Command(
        'semseg_ros.bag:main',
        'segment the camera topic of a ROS 2 bag into a new bag with mask/color/overlay',
    ),
    'demo': Command(
        'semseg_ros.demo:main',
        'run the end-to-end demo on synthetic data and write what it shows to runs/demo/',
    ),
    'bench': Command(
        'semseg_ros.bench:main',
        'run the benchmarks and print a table (also written as JSON)',
    ),
    'gpu-check': Command(
        'semseg_ros.gpu_check:main',
        'on a CUDA machine: GPU tests, train/resume/export, ids agreement, benchmark (JSON + log)',
    ),
}

_DESCRIPTION = 'semseg_ros: real-time semantic segmentation for CARLA and ROS 2.'


def _usage(prog: str, tree: CommandTree) -> str:
    width = max(len(name) for name in tree) + 2
    lines = [f'usage: {prog} <command> [options]', '', _DESCRIPTION, '', 'commands:']
    for name, entry in tree.items():
        if isinstance(entry, Command):
            summary = entry.summary
        else:
            summary = 'subcommands: ' + ', '.join(entry)
        lines.append(f'  {name.ljust(width)}{summary}')
    lines += ['', f'Run "{prog} <command> --help" for the options of a command.']
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None, prog: str = 'semseg') -> int:
    """Dispatch ``argv`` down the command tree; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    tree: CommandTree = COMMANDS
    while True:
        if not args or args[0] in ('-h', '--help'):
            print(_usage(prog, tree), file=sys.stdout if args else sys.stderr)
            return 0 if args else 2
        if args[0] == '--version' and tree is COMMANDS:
            from semseg_ros import __version__

            print(f'semseg_ros {__version__}')
            return 0
        name, args = args[0], args[1:]
        entry = tree.get(name)
        if entry is None:
            print(
                f'{prog}: unknown command {name!r}; choose from: {", ".join(tree)}',
                file=sys.stderr,
            )
            return 2
        prog = f'{prog} {name}'
        if isinstance(entry, Command):
            try:
                command = entry.load()
            except ModuleNotFoundError as err:
                if not entry.training:
                    raise
                print(f'{prog}: {err}', file=sys.stderr)  # what is missing, and the install
                return 1
            return int(command(args, prog) or 0)
        tree = entry


if __name__ == '__main__':
    raise SystemExit(main())
