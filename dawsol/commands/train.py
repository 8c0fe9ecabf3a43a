"""``dawsol train <cell>``: train one cell, resuming from its checkpoint."""

from __future__ import annotations

import argparse

from dawsol.commands.cell_args import add_cell_arguments, cell_settings

HELP = "train one cell (resumes from runs/<cell>/checkpoint.pt; a finished cell is left as is; DDP under torchrun)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cell_arguments(parser)
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda", "mps"], default=None, help="default: train.device of the cell"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def run(args: argparse.Namespace) -> int:
    import sys

    from dawsol.threads import use_threads

    params, settings = cell_settings(args)
    use_threads(settings.train.threads)  # before torch loads below

    from dawsol.config import grid_imports
    from dawsol.distributed import launch_command, run_launcher, shutdown
    from dawsol.errors import DawsolError
    from dawsol.pipeline.stages import train_gpus
    from dawsol.runtime import Interrupted
    from dawsol.training import train_cell
    from dawsol.training.cell import trainer_lock

    imported = grid_imports(params, args.params)
    if settings.cell in imported:
        raise DawsolError(
            f"{settings.cell.name} is imported (imports in {args.params}), not trained: "
            f"run dawsol import-checkpoint {imported[settings.cell]} --cell {settings.cell.name}"
        )
    device = args.device or settings.train.device
    if device in ("auto", "cuda"):  # a multi-GPU cell started as one process: run it under torchrun
        command = launch_command(train_gpus(params, settings.cell), _dawsol_args(args))
        if command is not None:
            with trainer_lock(settings.cell):  # the ranks torchrun starts run under this process's lock
                return run_launcher(command)
    try:
        train_cell(settings, device_name=args.device, tracking=not args.no_tracking)
    except Interrupted as exc:
        print(f"dawsol: {exc}", file=sys.stderr)
        return 143
    finally:
        shutdown()  # leave the torchrun process group, if train_cell joined one
    return 0


def _dawsol_args(args: argparse.Namespace) -> list[str]:
    """This command's own arguments, for the processes torchrun starts."""
    words = ["train", args.cell, *args.overrides, "--params", args.params]
    if args.profile:
        words += ["--profile", args.profile]
    if args.device:
        words += ["--device", args.device]
    if args.no_tracking:
        words.append("--no-tracking")
    return words
