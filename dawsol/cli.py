"""The ``dawsol`` command: one subcommand per pipeline stage.

Each subcommand lives in ``dawsol/commands/<name>.py`` with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy libraries
(torch, mlflow) inside ``run`` so that ``dawsol --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from dawsol import __version__
from dawsol.atomic import filesystem_error
from dawsol.errors import DawsolError

# name -> module, in the order `dawsol --help` lists them.
COMMANDS: dict[str, str] = {
    "cells": "dawsol.commands.cells",
    "resolve": "dawsol.commands.resolve",
    "prepare": "dawsol.commands.prepare",
    "validate": "dawsol.commands.validate",
    "settings": "dawsol.commands.settings",
    "dvc-yaml": "dawsol.commands.dvc_yaml",
    "report": "dawsol.commands.report",
    "metrics": "dawsol.commands.metrics",
    "train": "dawsol.commands.train",
    "evaluate": "dawsol.commands.evaluate",
    "import-checkpoint": "dawsol.commands.import_checkpoint",
    "localize": "dawsol.commands.localize",
    "cams": "dawsol.commands.cams",
    "tracking": "dawsol.commands.tracking",
    "estimate": "dawsol.commands.estimate",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="dawsol",
        description="DA-WSOL (CVPR 2022) reproducibility pipeline: prepare data, train and evaluate cells, report.",
    )
    parser.add_argument("--version", action="version", version=f"dawsol {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    common.add_argument("--profile", default=None, help="named overlay from params.yaml 'profiles'")
    common.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, parents=[common], help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    try:
        parser = build_parser()  # reads the component registries, which refuse a bad declaration
    except DawsolError as exc:
        print(f"dawsol: error: {exc}", file=sys.stderr)
        return 1
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides after an option (argparse takes positionals in one run only)
        if not isinstance(getattr(args, "overrides", None), list) or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except DawsolError as exc:
        print(f"dawsol: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # before OSError, its base: the reader left (`dawsol cells | head`), end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141  # 128 + SIGPIPE
    except OSError as exc:
        failure = filesystem_error(exc)
        if failure is None:
            raise
        print(f"dawsol: error: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dawsol: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
