"""Filesystem faults are one line naming the path (a file in the way, a missing or read-only place), and a
waiting lock says that it waits and for what."""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
from pathlib import Path

import pytest

from dawsol import tracking
from dawsol.atomic import filesystem_error
from dawsol.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_an_unwritable_out_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    in_the_way = tmp_path / "results"
    in_the_way.write_text("a file where a folder should be")
    metadata = tmp_path / "metadata" / "test"
    metadata.mkdir(parents=True)
    (metadata / "image_ids.txt").write_text("a.png")
    (metadata / "class_labels.txt").write_text("a.png,0")
    (metadata / "image_sizes.txt").write_text("a.png,10,10")
    (metadata / "localization.txt").write_text("a.png,1,1,5,5")
    argv = ["metrics", "--metadata", str(metadata), "--baseline", "center", "--size", "8", "-q"]
    assert main([*argv, "--out", str(in_the_way / "m.json")]) == 1
    assert f"{in_the_way}: a file is in the way of a folder" in _one_line(capsys)
    assert main(["settings", "--out-dir", str(in_the_way / "runs"), "--params", str(PROJECT_ROOT / "params.yaml")]) == 1
    assert f"{in_the_way}" in _one_line(capsys)


@pytest.mark.parametrize(("code", "hint"), [(errno.EROFS, "a read-only file system"), (errno.EACCES, "no permission")])
def test_a_read_only_place_names_the_target_not_the_temporary_file(code: int, hint: str) -> None:
    failure = filesystem_error(OSError(code, "refused", "results/cells/x/.metrics.json.abc123.tmp"))
    assert failure is not None and str(failure).startswith(f"results/cells/x: {hint}")
    assert filesystem_error(OSError(errno.EIO, "I/O error", "x")) is None  # not a fault of the place: as it is


@pytest.mark.slow
def test_a_locked_store_says_it_waits_and_for_what(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tracking.init_store()
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="locked"):
            tracking.with_retry(tracking.relocate_artifacts, tmp_path / "mlflow.db", "file:///x/mlartifacts", timeout=2)
    waited = [r.getMessage() for r in caplog.records if "locked by another process" in r.getMessage()]
    assert len(waited) == 1 and "waiting for it, up to 2 s" in waited[0] and "mlflow.db" in waited[0]
