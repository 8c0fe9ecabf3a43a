"""Hostile archives (issue 15): bombs, forged sizes, links and special members, a full disk; good ones still extract."""

from __future__ import annotations

import errno
import io
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import dawsol.data.archives as archives
from dawsol.errors import DawsolError

BOMB = 8 << 20  # 8 MiB of zeros: ~8 KiB compressed, a ratio of ~1000


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _bomb(path: Path) -> None:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ok.txt", "ok")
            zf.writestr("zeros.bin", bytes(BOMB))
    else:
        _tar(path, [("ok.txt", b"ok"), ("zeros.bin", bytes(BOMB))])


def _refused(archive: Path, dest: Path) -> str:
    """The message safe_extract refuses ``archive`` with, after checking it left nothing and kept the archive."""
    kept = archive.read_bytes()
    beside = sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []
    with pytest.raises(DawsolError) as info:
        archives.safe_extract(archive, dest)
    message = str(info.value)
    assert message.startswith(f"{archive}: ") and "\n" not in message
    assert "delete" not in message  # never tells the user to throw away an archive that may be good
    assert list(dest.iterdir()) == [] and sorted(p.name for p in dest.parent.iterdir()) == sorted([*beside, dest.name])
    assert archive.read_bytes() == kept
    return message


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.tgz"])
@pytest.mark.parametrize("limit", ["ratio", "total", "disk"])
def test_bombs_are_refused_and_leave_nothing(tmp_path: Path, monkeypatch, name: str, limit: str) -> None:
    archive = tmp_path / name
    _bomb(archive)
    if limit == "ratio":
        monkeypatch.setattr(archives, "RATIO_FLOOR", 1 << 20)
    elif limit == "total":
        monkeypatch.setattr(archives, "MAX_EXTRACT_BYTES", 4 << 20)
    else:
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=archives.DISK_MARGIN + (4 << 20)))
    message = _refused(archive, tmp_path / "out" / "dest")
    assert "8.0 MiB" in message  # what the members declare
    expected = {"ratio": "compression ratio of ", "total": "over the 4.0 MiB limit", "disk": "4.0 MiB to spare"}[limit]
    advice = "data.root" if limit == "disk" else "right archive"
    assert expected in message and advice in message


def test_a_zip_member_larger_than_it_declares_is_stopped(tmp_path: Path, monkeypatch) -> None:
    """zipfile itself stops at the declared size (then fails the CRC); a reader that trusted a forged size would not,
    so this stands in such a stream: the bytes written are counted against the declared size."""
    archive = tmp_path / "forged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.bin", bytes(1000))
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *args, **kwargs: io.BytesIO(bytes(BOMB)))
    message = _refused(archive, tmp_path / "out" / "dest")
    assert "'small.bin' holds more than the 1000 bytes it declares" in message


def _zip_with(path: Path, mode: int, inside: bool = False) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", "ok")
        info = zipfile.ZipInfo("data")
        info.create_system, info.external_attr = 3, mode << 16
        zf.writestr(info, "real")
        if inside:
            zf.writestr("data/x.txt", "x")  # once gave NotADirectoryError


@pytest.mark.parametrize(
    ("mode", "inside", "problem"),
    [
        (stat.S_IFLNK | 0o777, False, "symlink"),
        (stat.S_IFLNK | 0o777, True, "symlink"),
        (stat.S_IFIFO | 0o644, False, "special file"),
        (stat.S_IFCHR | 0o644, False, "special file"),
    ],
)
def test_zip_links_and_special_files_are_refused(tmp_path: Path, mode: int, inside: bool, problem: str) -> None:
    archive = tmp_path / "links.zip"
    _zip_with(archive, mode, inside)
    message = _refused(archive, tmp_path / "out" / "dest")
    assert f"refusing member 'data' ({problem})" in message and "right archive" in message


@pytest.mark.parametrize(
    "members",
    [
        [_folder("sub"), _link("d", "sub"), ("d/f.txt", b"through the link")],
        [("f.txt", b"a file"), _link("l", "f.txt"), ("l/x.txt", b"under a file")],  # once NotADirectoryError
        [("a", b"a file"), ("a/b.txt", b"under a file")],
    ],
    ids=["through-a-folder-link", "under-a-file-link", "under-a-file"],
)
def test_tar_members_inside_files_or_links_are_refused(tmp_path: Path, members: list) -> None:
    archive = tmp_path / "through.tar"
    _tar(archive, members)
    message = _refused(archive, tmp_path / "out" / "dest")
    assert "refusing member" in message and "other members inside it" in message and "right archive" in message


@pytest.mark.parametrize(
    "link", [_link("s", "d/l/../outside.txt"), _link("h", "d/l/../outside.txt", tarfile.LNKTYPE)], ids=["sym", "hard"]
)
def test_tar_links_escaping_through_other_links_are_refused(tmp_path: Path, link: tarfile.TarInfo) -> None:
    """``d/l -> ..`` stays inside, and ``d/l/../outside.txt`` looks inside, but on disk it is the folder's parent."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "outside.txt").write_text("not yours")
    archive = tmp_path / "escape.tar"
    _tar(archive, [_folder("d"), _link("d/l", ".."), link])
    message = _refused(archive, tmp_path / "out" / "dest")
    assert f"refusing member {link.name!r}" in message and "right archive" in message
    assert (tmp_path / "out" / "outside.txt").read_text() == "not yours"


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after its first MiB."""

    def write(self, data) -> int:
        if self.tell() + len(data) > 1 << 20:
            raise OSError(errno.ENOSPC, "No space left on device", self.name)
        return super().write(data)


@pytest.mark.parametrize("name", ["full.zip", "full.tgz"])
def test_a_full_disk_does_not_blame_the_archive(tmp_path: Path, monkeypatch, name: str) -> None:
    archive = tmp_path / name
    _bomb(archive)
    monkeypatch.setattr(archives, "open", _FullDisk, raising=False)  # the zip writer's open
    monkeypatch.setattr(tarfile, "bltn_open", _FullDisk)  # tarfile's
    message = _refused(archive, tmp_path / "out" / "dest")
    assert "No space left on device" in message and "free disk space" in message


@pytest.mark.parametrize("name", ["good.zip", "good.tgz"])
def test_a_good_archive_extracts_at_the_limits(tmp_path: Path, monkeypatch, name: str) -> None:
    archive = tmp_path / name
    files = {"a/one.txt": b"one" * 1000, "a/b/two.bin": bytes(range(256)) * 40, "three.txt": b""}
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a/", "")
            for member, data in files.items():
                zf.writestr(member, data)
    else:
        _tar(archive, [_folder("a"), *files.items(), _link("a/b/link", "../one.txt")])
    total = sum(len(data) for data in files.values())
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=archives.DISK_MARGIN + total))
    monkeypatch.setattr(archives, "MAX_EXTRACT_BYTES", total)
    monkeypatch.setattr(archives, "RATIO_FLOOR", 0)
    monkeypatch.setattr(archives, "MAX_RATIO", -(-total // archive.stat().st_size))
    dest = tmp_path / "out" / "dest"
    archives.safe_extract(archive, dest)
    for member, data in files.items():
        assert (dest / member).read_bytes() == data
    if name.endswith(".tgz"):
        assert (dest / "a/b/link").read_bytes() == files["a/one.txt"]
    assert [p.name for p in dest.parent.iterdir()] == ["dest"]  # no temporary folder left beside it


@pytest.mark.parametrize(
    ("name", "archive_size", "total"),
    [
        ("ILSVRC2012_img_train.tar", 147_897_477_120, 147_000_000_000),  # 1000 class tars, about 1:1
        ("ILSVRC2012_img_val.tar", 6_744_924_160, 6_740_000_000),
        ("CUB_200_2011.tgz", 1_150_585_339, 1_200_000_000),
        ("OpenImages_images.zip", 30_000_000_000, 30_500_000_000),  # JPEGs do not compress
        ("OpenImages_annotations.zip", 50_000_000, 400_000_000),  # masks and CSV: ~8x
        ("metadata.tgz", 20_000, 2_000_000),  # small text compresses 100x and more: harmless below RATIO_FLOOR
    ],
)
def test_real_dataset_archives_pass_the_default_limits(name: str, archive_size: int, total: int) -> None:
    archives.check_extraction_size(Path(name), total, archive_size, free=total + archives.DISK_MARGIN)
