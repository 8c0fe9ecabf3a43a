"""Real-dataset preparation against a local HTTP server: resume, checksums, layout, safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from http_fixtures import serving

from dawsol.data import download as downloader
from dawsol.data.archives import safe_extract
from dawsol.data.download import Remote, download
from dawsol.data.metadata import SplitMetadata, read_split, validate_dataset, write_split
from dawsol.data.sources import (
    LAYOUTS,
    METADATA_COMMIT,
    STAMP,
    Step,
    prepare_dataset,
)
from dawsol.errors import DawsolError


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without waiting (the waits themselves: test_retries_wait_longer_each_time_and_say_so)."""
    monkeypatch.setattr(downloader, "RETRY_WAIT_S", 0.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ThreadingHTTPServer, Path, str]]:
    served = tmp_path / "served"
    served.mkdir()
    with serving(served) as (httpd, url):
        yield httpd, served, url


def _jpeg(width: int = 12, height: int = 10) -> bytes:
    ok, encoded = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return encoded.tobytes()


def _png_mask() -> bytes:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:9] = 200
    ok, encoded = cv2.imencode(".png", mask)
    assert ok
    return encoded.tobytes()


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


CLASSES = ("001.Alpha", "002.Beta")
SPLIT_IDS = {
    "train": [f"{c}/{c[4:]}_{k}.jpg" for c in CLASSES for k in range(2)],
    "val": [f"{c}/{k}000.jpg" for c in CLASSES for k in range(1)],
    "test": [f"{c}/{c[4:]}_t{k}.jpg" for c in CLASSES for k in range(2)],
}


def make_fake_cub(served: Path, base_url: str, images_prefix: str = "CUB_200_2011/images") -> dict:
    """A tiny CUB: archives, metadata files and the tables that point at them."""
    _tar(
        served / "CUB_200_2011.tgz", {f"{images_prefix}/{i}": _jpeg() for s in ("train", "test") for i in SPLIT_IDS[s]}
    )
    _tar(served / "CUBV2.tar", {i: _jpeg() for i in SPLIT_IDS["val"]}, mode="w")
    _tar(served / "segmentations.tgz", {f"segmentations/{i[:-4]}.png": _png_mask() for i in SPLIT_IDS["test"]})
    metadata_files = {}
    for split, ids in SPLIT_IDS.items():
        meta = SplitMetadata(image_ids=ids, labels={i: CLASSES.index(i.split("/")[0]) for i in ids})
        meta.sizes = {i: (12, 10) for i in ids}
        meta.boxes = {i: [(1, 1, 8, 7)] for i in ids}
        folder = served / "meta" / METADATA_COMMIT / "metadata" / "CUB" / split
        write_split(folder, meta)
        for f in sorted(folder.iterdir()):
            metadata_files[f"CUB/{split}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()

    def md5(name: str) -> str:
        return "md5:" + hashlib.md5((served / name).read_bytes()).hexdigest()

    sources = {
        "CUB_200_2011.tgz": Remote("CUB_200_2011.tgz", f"{base_url}/CUB_200_2011.tgz", md5("CUB_200_2011.tgz")),
        "CUBV2.tar": Remote("CUBV2.tar", f"{base_url}/CUBV2.tar", size=(served / "CUBV2.tar").stat().st_size),
        "segmentations.tgz": Remote("segmentations.tgz", manual="put {name} in {downloads}"),
    }
    return {
        "sources": sources,
        "layouts": LAYOUTS,
        "metadata_files": {"cub": metadata_files},
        "metadata_url": f"{base_url}/meta/{{commit}}/metadata/{{path}}",
        "num_classes": 2,
    }


def test_cub_end_to_end_then_a_rerun_only_verifies(server, tmp_path: Path) -> None:
    httpd, served, url = server
    tables = make_fake_cub(served, url)
    root = tmp_path / "data"
    masks = tmp_path / "elsewhere" / "segmentations.tgz"
    masks.parent.mkdir()
    (served / "segmentations.tgz").rename(masks)
    assert prepare_dataset("cub", root, [masks], **tables)
    cub = root / "cub"
    assert validate_dataset(cub, num_classes=2) == []
    assert (cub / "001.Alpha/Alpha_0.jpg").is_file() and (cub / "002.Beta/0000.jpg").is_file()
    test = read_split(cub / "metadata/test")
    assert test.masks["001.Alpha/Alpha_t0.jpg"] == ["masks/001.Alpha/Alpha_t0.png"]
    assert test.boxes["001.Alpha/Alpha_t0.jpg"] == [(1, 1, 8, 7)]
    assert (root / "downloads/CUB_200_2011.tgz").is_file()
    assert not list(root.glob(".cub.build-*"))
    requests = len(httpd.requests)
    assert not prepare_dataset("cub", root, **tables)
    assert len(httpd.requests) == requests  # verified, nothing fetched


def test_a_killed_rebuild_is_removed_by_the_next_prepare(server, tmp_path: Path) -> None:
    """A prepare killed while rebuilding leaves its build folder beside the old dataset; the next prepare finds the
    dataset valid and still removes the build folder."""
    _, served, url = server
    tables = make_fake_cub(served, url)
    root = tmp_path / "data"
    assert prepare_dataset("cub", root, **tables)
    leftover = root / ".cub.build-killed" / ".extract-0"  # as a kill during the extraction leaves it
    leftover.mkdir(parents=True)
    (leftover / "half.jpg").write_bytes(b"half")
    assert not prepare_dataset("cub", root, **tables)
    assert sorted(path.name for path in root.iterdir()) == ["cub", "downloads"]


def test_prepare_without_optional_masks(server, tmp_path: Path) -> None:
    _, served, url = server
    assert prepare_dataset("cub", tmp_path / "data", **make_fake_cub(served, url))
    assert not (tmp_path / "data/cub/metadata/test/mask_localization.txt").exists()


def test_an_interrupted_transfer_resumes_with_range(server, tmp_path: Path) -> None:
    httpd, served, url = server
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (served / "blob.bin").write_bytes(payload)
    httpd.cut = 1
    download(f"{url}/blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == payload
    assert httpd.requests[-1][1] == f"bytes={len(payload) // 2}-"
    # interrupted across runs: the .part stays, and the next run asks only for the rest
    httpd.cut = 1
    with pytest.raises(DawsolError, match=r"download failed .* re-run to resume"):
        download(f"{url}/blob.bin", tmp_path / "again.bin", retries=0)
    assert (tmp_path / "again.bin.part").stat().st_size == len(payload) // 2
    download(f"{url}/blob.bin", tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == payload and not (tmp_path / "again.bin.part").exists()
    # a server without Range support restarts the file
    httpd.ranges, httpd.cut = False, 1
    download(f"{url}/blob.bin", tmp_path / "third.bin")
    assert (tmp_path / "third.bin").read_bytes() == payload


def test_retries_wait_longer_each_time_and_say_so(server, tmp_path: Path, monkeypatch, caplog) -> None:
    httpd, served, url = server
    payload = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (served / "blob.bin").write_bytes(payload)
    monkeypatch.setattr(downloader, "RETRY_WAIT_S", 2.0)
    monkeypatch.setattr(downloader, "MAX_RETRY_WAIT_S", 5.0)
    waits: list[float] = []
    httpd.failures = [503, 502, 429, 500]
    with caplog.at_level("WARNING", logger="dawsol.data.download"):
        download(f"{url}/blob.bin", tmp_path / "blob.bin", sleep=waits.append)
    assert (tmp_path / "blob.bin").read_bytes() == payload
    assert waits == [2.0, 4.0, 5.0, 5.0]  # doubling, bounded
    assert "retry 1 of 5 in 2 s" in caplog.text and "retry 4 of 5 in 5 s" in caplog.text
    # out of retries: the same waits, then one line
    waits.clear()
    httpd.failures = [503] * 3
    with pytest.raises(DawsolError, match=r"download failed \(HTTP Error 503.* after 2 retries; re-run"):
        download(f"{url}/blob.bin", tmp_path / "again.bin", retries=2, sleep=waits.append)
    assert waits == [2.0, 4.0]
    # an error no retry mends is not retried
    requests = len(httpd.requests)
    with pytest.raises(DawsolError, match="HTTP Error 404"):
        download(f"{url}/missing.bin", tmp_path / "missing.bin", sleep=waits.append)
    assert len(httpd.requests) == requests + 1 and waits == [2.0, 4.0]


def test_a_download_shows_its_progress(server, tmp_path: Path, capsys, caplog) -> None:
    _, served, url = server
    (served / "big.bin").write_bytes(bytes(5 * downloader.CHUNK))
    download(f"{url}/big.bin", tmp_path / "bar.bin", progress=True)
    err = capsys.readouterr().err
    assert "bar.bin" in err and "5.00M" in err  # tqdm's bar on stderr, in bytes
    with caplog.at_level("INFO", logger="dawsol.data.download"):
        download(f"{url}/big.bin", tmp_path / "log.bin", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("log.bin: ")]
    assert lines == [f"log.bin: {k}.0 MiB of 5.0 MiB ({20 * k}%)" for k in range(1, 6)]  # a line per tenth passed


def test_an_interrupted_prepare_completes_on_rerun(server, tmp_path: Path) -> None:
    httpd, served, url = server
    tables = make_fake_cub(served, url)
    httpd.cut = 100  # every response is cut: the first run fails with parts left behind
    with pytest.raises(DawsolError, match="re-run to resume"):
        prepare_dataset("cub", tmp_path / "data", **tables)
    assert not (tmp_path / "data/cub").exists()
    httpd.cut = 0
    assert prepare_dataset("cub", tmp_path / "data", **tables)
    assert validate_dataset(tmp_path / "data/cub", num_classes=2) == []


def test_a_corrupt_archive_names_file_and_both_checksums(server, tmp_path: Path) -> None:
    _, served, url = server
    tables = make_fake_cub(served, url)
    good = tables["sources"]["CUB_200_2011.tgz"].checksum.split(":")[1]
    downloads = tmp_path / "data/downloads"
    downloads.mkdir(parents=True)
    (downloads / "CUB_200_2011.tgz").write_bytes(b"garbage")
    actual = hashlib.md5(b"garbage").hexdigest()
    with pytest.raises(DawsolError) as info:
        prepare_dataset("cub", tmp_path / "data", **tables)
    message = str(info.value)
    assert "CUB_200_2011.tgz" in message and good in message and actual in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]


def test_a_wrong_layout_leaves_nothing_behind(server, tmp_path: Path) -> None:
    _, served, url = server
    tables = make_fake_cub(served, url, images_prefix="CUB/pictures")
    with pytest.raises(DawsolError, match=r"no folder 'CUB_200_2011/images' inside"):
        prepare_dataset("cub", tmp_path / "data", **tables)
    tables = make_fake_cub(served, url)
    _tar(served / "CUBV2.tar", {"001.Alpha/other.jpg": _jpeg()}, mode="w")  # not the ids the metadata lists
    tables["sources"]["CUBV2.tar"] = Remote("CUBV2.tar", f"{url}/CUBV2.tar")
    with pytest.raises(DawsolError, match=r"do not have the expected layout .*image file missing"):
        prepare_dataset("cub", tmp_path / "data2", **tables)
    for root in (tmp_path / "data", tmp_path / "data2"):
        assert sorted(p.name for p in root.iterdir()) == ["downloads"]


def test_manual_archives_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DawsolError, match=r"ILSVRC2012_img_train.tar is missing: .*image-net.org.*--archive"):
        prepare_dataset("ilsvrc", tmp_path / "data")
    with pytest.raises(DawsolError, match="unknown archive name"):
        prepare_dataset("ilsvrc", tmp_path / "data", [tmp_path / "imagenet.tar"])


def _evil_tar(path: Path, kind: str) -> None:
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            info = tarfile.TarInfo("inside/link")
            info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
            tf.addfile(info)
        elif kind == "hardlink":
            info = tarfile.TarInfo("hard")
            info.type, info.linkname = tarfile.LNKTYPE, "../outside.txt"
            tf.addfile(info)
        else:
            info = tarfile.TarInfo({"absolute": "/tmp/dawsol-evil.txt", "dotdot": "a/../../evil.txt"}[kind])
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "hardlink"])
def test_members_escaping_the_folder_are_refused(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "evil.tar"
    _evil_tar(archive, kind)
    dest = tmp_path / "box" / "dest"
    with pytest.raises(DawsolError, match=r"evil\.tar: refusing member"):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []  # checked before anything is written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "evil.tar"]
    assert not Path("/tmp/dawsol-evil.txt").exists()


def test_zip_members_escaping_the_folder_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(DawsolError, match=r"refusing member '\.\./evil\.txt'"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()


def test_links_inside_the_folder_are_fine(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("a/file.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("b/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../a/file.txt"
        tf.addfile(link)
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest/b/link").read_text() == "hi"


def _leaves_only_downloads(root: Path) -> bool:
    return sorted(p.name for p in root.iterdir()) == ["downloads"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_zip_with_a_bad_crc_is_one_line_and_leaves_nothing(server, tmp_path: Path, compression: int) -> None:
    _, served, url = server
    tables = make_fake_cub(served, url)
    archive = served / "CUBV2.zip"
    images = {
        i: np.random.default_rng(k).integers(0, 256, 2000, np.uint8).tobytes() for k, i in enumerate(SPLIT_IDS["val"])
    }
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for name, data in images.items():
            zf.writestr(name, data)
    data = bytearray(archive.read_bytes())
    data[200] ^= 0xFF  # inside the first member's data
    archive.write_bytes(bytes(data))
    tables["sources"]["CUBV2.zip"] = Remote("CUBV2.zip", f"{url}/CUBV2.zip")
    tables["layouts"] = {"cub": [Step("CUB_200_2011.tgz", "CUB_200_2011/images", ""), Step("CUBV2.zip", "", "")]}
    with pytest.raises(DawsolError) as info:
        prepare_dataset("cub", tmp_path / "data", **tables)
    message = str(info.value)
    assert "CUBV2.zip" in message and "corrupt" in message and "re-download" in message and "\n" not in message
    assert _leaves_only_downloads(tmp_path / "data")
    with pytest.raises(DawsolError, match=r"CUBV2\.zip: (member .* is )?corrupt"):
        safe_extract(archive, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []  # checked before anything is written


def test_a_truncated_tar_gz_is_one_line_and_leaves_nothing(server, tmp_path: Path) -> None:
    _, served, url = server
    tables = make_fake_cub(served, url)
    big = {
        f"CUB_200_2011/images/{i}": np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes()
        for i in SPLIT_IDS["train"]
    }
    _tar(served / "CUB_200_2011.tgz", big)
    data = (served / "CUB_200_2011.tgz").read_bytes()
    (served / "CUB_200_2011.tgz").write_bytes(data[: len(data) * 2 // 3])  # the server sends only this much
    tables["sources"]["CUB_200_2011.tgz"] = Remote("CUB_200_2011.tgz", f"{url}/CUB_200_2011.tgz")  # no checksum
    with pytest.raises(DawsolError) as info:
        prepare_dataset("cub", tmp_path / "data", **tables)
    message = str(info.value)
    archive = str(tmp_path / "data/downloads/CUB_200_2011.tgz")
    assert message.startswith(archive) and "truncated" in message[len(archive) :] and "\n" not in message
    assert _leaves_only_downloads(tmp_path / "data")


@pytest.mark.parametrize(
    ("name", "expected"), [("CUBV2.tar", "a tar archive"), ("CUB_200_2011.tgz", "a gzip-compressed tar archive")]
)
def test_an_html_page_saved_as_the_archive_is_refused(server, tmp_path: Path, name: str, expected: str) -> None:
    _, served, url = server
    tables = make_fake_cub(served, url)
    (served / name).write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>")
    tables["sources"][name] = Remote(name, f"{url}/{name}")  # no checksum, no size, like the OneDrive remotes
    with pytest.raises(DawsolError) as info:
        prepare_dataset("cub", tmp_path / "data", **tables)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "data/downloads" / name))
    assert f"expected {expected} but found an HTML page" in message and "\n" not in message
    assert _leaves_only_downloads(tmp_path / "data")


def test_a_kept_archive_that_changed_since_the_build_is_reported(server, tmp_path: Path) -> None:
    _, served, url = server
    tables = make_fake_cub(served, url)
    tables["sources"]["CUBV2.tar"] = Remote("CUBV2.tar", f"{url}/CUBV2.tar")  # nothing to check it against
    root = tmp_path / "data"
    assert prepare_dataset("cub", root, **tables)
    kept = root / "downloads/CUBV2.tar"
    original = kept.read_bytes()
    recorded = json.loads((root / "cub" / STAMP).read_text())["archives"]
    assert set(recorded) == {"CUB_200_2011.tgz", "CUBV2.tar"}
    assert recorded["CUBV2.tar"] == {"sha256": hashlib.sha256(original).hexdigest(), "size": len(original)}
    published = tables["sources"]["CUB_200_2011.tgz"].checksum  # verified already: recorded, not hashed again
    assert recorded["CUB_200_2011.tgz"] == {
        "checksum": published,
        "size": (root / "downloads/CUB_200_2011.tgz").stat().st_size,
    }
    # the dataset loses an image, so the next prepare rebuilds it from the kept archives
    (root / "cub" / SPLIT_IDS["val"][0]).unlink()
    changed = bytearray(original)
    changed[600] ^= 0xFF  # inside the first member's data: still a valid tar of the same size
    kept.write_bytes(bytes(changed))
    with pytest.raises(DawsolError) as info:
        prepare_dataset("cub", root, **tables)
    message = str(info.value)
    assert message.startswith(str(kept)) and "\n" not in message
    assert recorded["CUBV2.tar"]["sha256"] in message and hashlib.sha256(changed).hexdigest() in message
    assert sorted(p.name for p in root.iterdir()) == ["cub", "downloads"]  # nothing half-made, the old dataset kept
    kept.write_bytes(original[:-512])
    with pytest.raises(DawsolError, match=rf"size {len(original) - 512} bytes does not match the {len(original)}"):
        prepare_dataset("cub", root, **tables)
    kept.write_bytes(original)  # the archive it was built from: the rebuild goes through
    assert prepare_dataset("cub", root, **tables)
    assert validate_dataset(root / "cub", num_classes=2) == []
