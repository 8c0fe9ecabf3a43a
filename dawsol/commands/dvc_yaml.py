"""``dawsol dvc-yaml``: generate (or check) dvc.yaml from the grid of params.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

from dawsol.atomic import atomic_write_text
from dawsol.config import load_params
from dawsol.errors import DawsolError
from dawsol.layout import DVC_YAML
from dawsol.pipeline.dvcfile import render_dvc_yaml
from dawsol.pipeline.stages import cli

HELP = "write dvc.yaml (the DVC stages over the grid) from params.yaml, or check that it is current"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(DVC_YAML), help="the file to write or check (default: dvc.yaml)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the generated one")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.profile)
    text = render_dvc_yaml(params, args.params, args.profile)
    out = Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            regenerate = cli(
                "dvc-yaml",
                *(["--out", out.as_posix()] if out != DVC_YAML else []),
                source=args.params,
                profile=args.profile,
            )
            raise DawsolError(
                f"{out} is out of date with {args.params} (its stages are not the grid's): "
                f"run `{regenerate}`, then `dvc repro` or `dvc exp run` again, and commit {out}"
            )
        return 0
    atomic_write_text(out, text)
    return 0
