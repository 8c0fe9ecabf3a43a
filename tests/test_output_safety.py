"""Commands that replace outputs lose nothing: a failure (a full disk, a bad device, a SIGKILL anywhere) before
the new outputs exist leaves the old ones, a rerun gives the same outputs, and nothing partial is trusted."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import evaluated_project, kill_at, prepare_tiny_data, run_in, write_project
from workflow_fixtures import write_cell, write_dataset

from dawsol import atomic
from dawsol.checkpoints.format import load_checkpoint, save_checkpoint
from dawsol.config import grid_cells, load_params
from dawsol.errors import DawsolError
from dawsol.layout import evaluate_outputs, report_outputs

CELL = "synthetic/resnet18/cam-none/seed0"
PAGE = 4096


def _footprint(folder: Path) -> int:
    """What ``folder``'s files and folders take on a tmpfs, in bytes (whole pages)."""
    pages = 1
    for path in folder.rglob("*"):
        pages += 1 if path.is_dir() or path.is_symlink() else -(-path.stat().st_size // PAGE)
    return pages * PAGE


def _mount_tmpfs(folder: Path, size: int) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    return subprocess.run(command, capture_output=True).returncode == 0


@contextlib.contextmanager
def small_disk(folder: Path, free: int, tmpfs: bool = True) -> Iterator[None]:
    """``folder`` (its contents kept) with about ``free`` bytes left for new files until the block ends.

    A real tmpfs mounted there where this process may mount one (root with CAP_SYS_ADMIN) and
    ``tmpfs``; else, so that the test runs everywhere, dawsol's ways of writing under ``folder``
    fail as on a full disk once ``free`` bytes are used (``_fail_writes_past``). When the block ends the space comes
    back: the contents are moved back onto the ordinary disk.
    """
    folder.mkdir(parents=True, exist_ok=True)
    aside = folder.with_name(f"{folder.name}.aside")
    folder.rename(aside)
    folder.mkdir()
    if not (tmpfs and _mount_tmpfs(folder, _footprint(aside) + free + PAGE)):
        folder.rmdir()
        aside.rename(folder)
        with pytest.MonkeyPatch.context() as patch:
            _fail_writes_past(folder, free, patch)
            yield
        return
    try:
        shutil.copytree(aside, folder, symlinks=True, dirs_exist_ok=True)
        yield
    finally:
        shutil.rmtree(aside)
        shutil.copytree(folder, aside, symlinks=True)
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()
        aside.rename(folder)


def _fail_writes_past(folder: Path, free: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make dawsol's ways of writing a file under ``folder`` fail as on a full disk once ``free`` bytes are used:
    ``Path.write_bytes`` (every atomic write), ``torch.save`` (checkpoints: torch's zip writer raises
    RuntimeError), ``numpy.save`` (``dawsol cams``) and matplotlib's ``savefig`` (the report's figures)."""
    import matplotlib.figure

    budget = [free]

    def spend(target: object, count: int) -> None:
        if isinstance(target, str | os.PathLike) and Path(target).resolve().is_relative_to(folder.resolve()):
            if count > budget[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            budget[0] -= count

    def measured(write: object, to_buffer: object) -> object:
        def patched(first: object, target: object, *args: object, **kwargs: object) -> object:
            buffer = io.BytesIO()
            to_buffer(first, buffer, *args, **kwargs)  # type: ignore[operator]
            spend(target, len(buffer.getvalue()))
            return write(first, target, *args, **kwargs)  # type: ignore[operator]

        return patched

    write_bytes = pathlib.Path.write_bytes
    torch_save, numpy_save, savefig = torch.save, np.save, matplotlib.figure.Figure.savefig

    def write_bytes_on_small_disk(self: Path, data: bytes) -> int:
        spend(self, len(data))
        return write_bytes(self, data)

    def torch_save_on_small_disk(obj: object, target: object, *args: object, **kwargs: object) -> None:
        try:
            measured(torch_save, torch_save)(obj, target, *args, **kwargs)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 459008 vs 458904") from None

    def numpy_save_on_small_disk(target: object, array: object, *args: object, **kwargs: object) -> None:
        buffer = io.BytesIO()
        numpy_save(buffer, array, *args, **kwargs)
        spend(target, len(buffer.getvalue()))
        numpy_save(target, array, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes_on_small_disk)
    monkeypatch.setattr(torch, "save", torch_save_on_small_disk)
    monkeypatch.setattr(np, "save", numpy_save_on_small_disk)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", measured(savefig, savefig))


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (leftover temporary files included) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dawsol: error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------------------
# dawsol.atomic.staged: the writes of one command renamed together


def test_staged_writes_appear_together_with_the_mark_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, mark = tmp_path / "a.csv", tmp_path / "sub" / "b.png", tmp_path / "metrics.json"
    for path in (a, mark):
        path.write_text("old")
    renames = []
    replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: (renames.append(Path(dst).name), replace(src, dst)))
    with atomic.staged(mark=mark):
        atomic.atomic_write_text(mark, "new mark")
        atomic.atomic_write_text(a, "first")
        atomic.atomic_write_text(b, "new")
        atomic.atomic_write_text(a, "new")  # a second write of a path replaces the first
        assert a.read_text() == "old" and mark.read_text() == "old" and not b.exists()  # nothing renamed yet
    assert (a.read_text(), b.read_text(), mark.read_text()) == ("new", "new", "new mark")
    assert renames == ["a.csv", "b.png", "metrics.json"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failure_inside_staged_leaves_every_old_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(KeyError), atomic.staged(mark=a):
        atomic.atomic_write_text(a, "new a")
        atomic.atomic_write_text(b, "new b")
        with atomic.unstaged():
            atomic.atomic_write_text(tmp_path / "cache.json", "kept")  # a cache is written at once
        raise KeyError("later failure")
    assert contents(tmp_path) == {"a.txt": b"old a", "cache.json": b"kept"}


def test_a_kill_during_the_renames_never_leaves_an_old_mark_beside_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, mark = tmp_path / "a.txt", tmp_path / "metrics.json"
    a.write_text("old")
    mark.write_text("old")
    replace = os.replace

    def dies_at_the_second_rename(src: Path, dst: Path) -> None:
        if Path(dst) == mark:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dies_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt), atomic.staged(mark=mark):
        atomic.atomic_write_text(a, "new")
        atomic.atomic_write_text(mark, "new")
    assert not mark.exists() and a.read_text() == "new"  # no mark: a rerun evaluates again


@pytest.mark.parametrize("tmpfs", [True, False], ids=["tmpfs-if-permitted", "patched-writes"])
def test_a_full_disk_is_one_line_naming_the_path_and_keeps_the_old_file(tmp_path: Path, tmpfs: bool) -> None:
    folder = tmp_path / "results"
    (folder / "table.md").parent.mkdir(parents=True)
    (folder / "table.md").write_text("old")
    with small_disk(folder, 8 * PAGE, tmpfs):
        with pytest.raises(DawsolError) as caught:
            atomic.atomic_write_bytes(folder / "table.md", b"x" * (64 * PAGE))
        message = str(caught.value)
        assert message.startswith(f"{folder / 'table.md'}: could not be written (No space left on device;")
        assert "free space there and re-run" in message and "\n" not in message
        assert contents(folder) == {"table.md": b"old"}


@pytest.mark.parametrize("tmpfs", [True, False], ids=["tmpfs-if-permitted", "patched-writes"])
def test_a_checkpoint_save_on_a_full_disk_names_it_and_keeps_the_previous(tmp_path: Path, tmpfs: bool) -> None:
    """What training (each epoch's save) and import-checkpoint write: the old checkpoint survives a full disk."""
    folder = tmp_path / "runs"
    folder.mkdir()
    save_checkpoint(folder / "checkpoint.pt", {"epoch": 1}, resume=folder / ".resume.pt")
    big = {"epoch": 2, "weights": torch.zeros(64 * PAGE // 4)}
    expected = r"checkpoint\.pt: could not be written \(torch\.save: .*unexpected pos"
    with small_disk(folder, 16 * PAGE, tmpfs), pytest.raises(DawsolError, match=expected):
        save_checkpoint(folder / "checkpoint.pt", big, resume=folder / ".resume.pt")
    assert torch.load(folder / "checkpoint.pt", weights_only=True) == {"epoch": 1}
    assert torch.load(folder / ".resume.pt", weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in folder.iterdir()) == [".resume.pt", "checkpoint.pt"]


# ---------------------------------------------------------------------------------------------------------------
# a trained cell: evaluate, cams, train on a full disk; evaluate killed anywhere


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """CELL trained and evaluated without tracking."""
    return evaluated_project(tmp_path_factory.mktemp("evaluated"), tiny_data, CELL)


def cell_dir(project: Path) -> Path:
    return project / evaluate_outputs(CELL)["metrics"].parent


def outputs_of(project: Path) -> dict[str, object]:
    """The evaluation outputs, byte for byte except the npz archive (its zip members carry a time): its arrays."""
    found: dict[str, object] = {}
    for name, path in evaluate_outputs(CELL).items():
        path = project / path
        if name == "cam_samples":
            with np.load(path) as archive:
                found[name] = {key: archive[key].tolist() for key in archive.files}
        else:
            found[name] = path.read_bytes()
    return found


def age(project: Path) -> dict[str, bytes]:
    """Make the cell's outputs recognisably old (other bytes than a rerun writes); return them."""
    for path in cell_dir(project).iterdir():
        if path.suffix == ".json":
            path.write_text(json.dumps({**json.loads(path.read_text()), "old": True}))
        else:
            path.write_bytes(path.read_bytes() + b"old")
    return contents(cell_dir(project))


@pytest.mark.slow
def test_evaluate_on_a_full_disk_keeps_the_old_outputs_and_says_where(
    tmp_path: Path, evaluated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "full"
    shutil.copytree(evaluated, project, symlinks=True)
    old = age(project)
    with small_disk(project / "results", 2 * PAGE):
        assert run_in(project, "evaluate", CELL, "--no-tracking") == 1
        err = one_line(capsys)
        assert "results/cells/" + CELL in err and "could not be written (No space left on device" in err
        assert contents(cell_dir(project)) == old  # every old output, and no temporary file left
    assert run_in(project, "evaluate", CELL, "--no-tracking") == 0  # space freed: the same outputs as before
    assert outputs_of(project) == outputs_of(evaluated)


@pytest.mark.slow
def test_cams_on_a_full_disk_keeps_the_old_folder(
    tmp_path: Path, evaluated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "cams"
    shutil.copytree(evaluated, project, symlinks=True)
    checkpoint = str(project / "runs" / CELL / "checkpoint.pt")
    command = ("cams", "--checkpoint", checkpoint, "--method", "cam", "--split", "val", "--device", "cpu")
    assert run_in(project, *command, "--out", "maps/cam") == 0
    before = contents(project / "maps")
    with small_disk(project / "maps", PAGE):
        assert run_in(project, *command, "--out", "maps/cam") == 1
        assert f"{project / 'maps' / 'cam'}: could not be written" in one_line(capsys)
        assert contents(project / "maps") == before


@pytest.mark.slow
def test_training_on_a_full_runs_disk_names_the_checkpoint_then_resumes_to_the_same_metrics(
    tmp_path: Path, tiny_data: Path, evaluated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project(tmp_path / "train", tiny_data)
    size = (evaluated / "runs" / CELL / "checkpoint.pt").stat().st_size
    with small_disk(project / "runs", size + size // 2):  # room for epoch 1's checkpoint only
        assert run_in(project, "train", CELL, "--no-tracking") == 1
        err = one_line(capsys)
        assert f"runs/{CELL}/checkpoint.pt: could not be written (torch.save: " in err and "re-run" in err
    assert load_checkpoint(project / "runs" / CELL / "checkpoint.pt")["epoch"] == 1  # the last good one, whole
    assert not list((project / "runs").rglob("*.tmp"))
    for command in ("train", "evaluate"):
        assert run_in(project, command, CELL, "--no-tracking") == 0
    assert outputs_of(project)["metrics"] == outputs_of(evaluated)["metrics"]


def kill_points(count: int) -> list[tuple[str, int]]:
    """Where a command writing ``count`` outputs is killed: at its first temporary file (before any rename), and
    at its first and last rename (the last: metrics.json's, for evaluate)."""
    return [("tempfile.mkstemp", 1), ("os.replace", 1), ("os.replace", count)]


@pytest.mark.slow
def test_evaluate_killed_anywhere_then_rerun_gives_the_same_outputs(tmp_path: Path, evaluated: Path) -> None:
    project = tmp_path / "killed"
    shutil.copytree(evaluated, project, symlinks=True)
    old = age(project)
    new = contents(cell_dir(evaluated))
    for call, nth in kill_points(len(evaluate_outputs(CELL))):
        kill_at(project, call, nth, "evaluate", CELL, "--no-tracking")
        now = {name: data for name, data in contents(cell_dir(project)).items() if not name.endswith(".tmp")}
        if "metrics.json" in now:  # what a rerun or the report trusts: a metrics.json beside its own files
            same = old if now["metrics.json"] == old["metrics.json"] else new
            assert {name: same[name] for name in now} == now, (call, nth)
            assert set(now) == set(old), (call, nth)
        if call == "tempfile.mkstemp":
            assert now == old, "a kill before the renames changed an output"
    assert run_in(project, "evaluate", CELL, "--no-tracking") == 0
    assert outputs_of(project) == outputs_of(evaluated)
    assert not [name for name in contents(cell_dir(project)) if name.endswith(".tmp")]  # the leftovers are gone


# ---------------------------------------------------------------------------------------------------------------
# dawsol report


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default grid's cells as result files, and one report of them."""
    project = tmp_path_factory.mktemp("reported")
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", project / "params.yaml")
    write_dataset(project / "data" / "synthetic")
    for cell in grid_cells(load_params(project / "params.yaml"), project / "params.yaml"):
        write_cell(project, cell)
    assert run_in(project, "report", "--no-tracking") == 0
    return project


def report_files(project: Path) -> dict[str, bytes]:
    """The report's outputs that exist, by path."""
    params = project / "params.yaml"
    paths = [path for paths in report_outputs(load_params(params), params).values() for path in paths]
    assert paths
    return {str(path): (project / path).read_bytes() for path in paths if (project / path).is_file()}


def report_leftovers(project: Path) -> list[Path]:
    return [path for path in (project / "results").rglob("*.tmp") if "cells" not in path.parts]


@pytest.mark.slow
def test_report_on_a_full_disk_keeps_the_old_report(
    tmp_path: Path, reported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "full"
    shutil.copytree(reported, project, symlinks=True)
    old = report_files(project)
    shutil.rmtree(project / "results" / "tables")
    (project / "results" / "tables").mkdir()
    with small_disk(project / "results" / "figures", 0):
        assert run_in(project, "report", "--no-tracking") == 1
        assert "results/figures/synthetic_" in one_line(capsys)
    assert not any((project / "results" / "tables").iterdir())  # the tables waited for the figures: none appeared
    assert report_files(project) == {path: data for path, data in old.items() if "tables" not in path}
    assert not report_leftovers(project)


@pytest.mark.slow
def test_report_killed_anywhere_then_rerun_gives_the_same_files(tmp_path: Path, reported: Path) -> None:
    project = tmp_path / "killed"
    shutil.copytree(reported, project, symlinks=True)
    new = report_files(project)
    for path in new:
        (project / path).write_bytes(new[path] + b"old")
    old = report_files(project)
    for call, nth in kill_points(len(new)):
        kill_at(project, call, nth, "report", "--no-tracking")
        now = report_files(project)
        assert set(now) == set(new), (call, nth)
        assert all(now[path] in (old[path], new[path]) for path in now), (call, nth)  # whole files only
        if call == "tempfile.mkstemp":
            assert now == old, "a kill before the renames changed a file"
    assert run_in(project, "report", "--no-tracking") == 0
    assert report_files(project) == new
    assert not report_leftovers(project)
