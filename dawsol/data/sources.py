"""Real datasets (CUB, ILSVRC, OpenImages30k): where their archives come from and how they are laid out.

One table (``SOURCES``) says where each archive comes from and how to check it, one
(``LAYOUTS``) where its contents go, one (``METADATA_FILES``) which pinned wsolevaluation
metadata files each dataset needs and their sha256. ``prepare_dataset`` takes both tables
as arguments, so tests serve small archives from a local HTTP server.

Guarantees: downloads resume and are verified before use (``dawsol.data.download``); every
archive must start like the archive type its name says and extracts safely
(``dawsol.data.archives``); the dataset is built in a temporary folder that is renamed into
place only when the whole dataset validates, so a failed or interrupted prepare never leaves a
half-made dataset; a finished dataset carries a stamp, with the sha256 and size of every archive it was built from,
and a re-run only verifies it (a rebuild re-checks the kept archives against the stamp).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dawsol.atomic import atomic_write_text, remove_staging, staging_folder
from dawsol.data.archives import check_archive_type, move_tree, safe_extract
from dawsol.data.download import Remote, download, verify_file
from dawsol.data.metadata import MASK_LOCALIZATION, read_split, validate_dataset
from dawsol.errors import DawsolError
from dawsol.files import file_digest

log = logging.getLogger(__name__)

STAMP = ".dawsol-prepared.json"
METADATA_COMMIT = "96f4b88679af41f005824661f47e6fe3628af2aa"
METADATA_URL = "https://raw.githubusercontent.com/clovaai/wsolevaluation/{commit}/metadata/{path}"
_ONEDRIVE = "https://onedrive.live.com/download?cid=B7111B95B80CCC66&resid=B7111B95B80CCC66%21{res}&authkey={key}"
_IMAGENET_HELP = (
    "ImageNet may not be downloaded for you: get {name} from https://image-net.org/download-images "
    "(free account, accept the terms) and put it in {downloads}/ or pass --archive PATH"
)


@dataclass(frozen=True)
class Step:
    """Move ``source`` (a folder inside an archive, "" = its root) to ``target`` in the dataset."""

    remote: str
    source: str
    target: str
    nested_tars: bool = False  # ILSVRC train: one tar per class, extracted into <target>/<stem>/
    optional: bool = False  # skipped (with a note) when the archive is not available


SOURCES: dict[str, Remote] = {
    "CUB_200_2011.tgz": Remote(
        "CUB_200_2011.tgz",
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
        "md5:97eceeb196236b17998738112f37df78",
    ),
    "CUBV2.tar": Remote("CUBV2.tar", _ONEDRIVE.format(res="30812", key="AFMzb4akufUiWU0")),
    "segmentations.tgz": Remote(
        "segmentations.tgz",
        manual=(
            "the CUB segmentations (for PxAP on CUB test) are optional: download segmentations.tgz from the "
            "Caltech Data record of CUB-200-2011 (or DA-WSOL's Google Drive file 1KZQLpwkuF0HgmJ04P9N9lmYvvGU9-ACP) "
            "into {downloads}/ or pass --archive PATH"
        ),
    ),
    "ILSVRC2012_img_train.tar": Remote("ILSVRC2012_img_train.tar", size=147_897_477_120, manual=_IMAGENET_HELP),
    "ILSVRC2012_img_val.tar": Remote("ILSVRC2012_img_val.tar", size=6_744_924_160, manual=_IMAGENET_HELP),
    "imagenetv2-threshold0.7.tar.gz": Remote(
        "imagenetv2-threshold0.7.tar.gz",
        "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-threshold0.7.tar.gz",
        size=1_249_906_176,
    ),
    "OpenImages_images.zip": Remote("OpenImages_images.zip", _ONEDRIVE.format(res="30813", key="AHgXVPxKxO_5Fvc")),
    "OpenImages_annotations.zip": Remote(
        "OpenImages_annotations.zip", _ONEDRIVE.format(res="30811", key="AMWbBWZVQFbm4jw")
    ),
}

LAYOUTS: dict[str, list[Step]] = {
    "cub": [
        Step("CUB_200_2011.tgz", "CUB_200_2011/images", ""),
        Step("CUBV2.tar", "", ""),
        Step("segmentations.tgz", "segmentations", "masks", optional=True),
    ],
    "ilsvrc": [
        Step("ILSVRC2012_img_train.tar", "", "train", nested_tars=True),
        Step("ILSVRC2012_img_val.tar", "", "val"),
        Step("imagenetv2-threshold0.7.tar.gz", "imagenetv2-threshold0.7", "val2"),
    ],
    "openimages": [Step("OpenImages_images.zip", "", ""), Step("OpenImages_annotations.zip", "", "")],
}

_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# <wsolevaluation dataset>/<split>/<file> -> sha256 (None: large, recorded in the stamp on first download)
METADATA_FILES: dict[str, dict[str, str | None]] = {
    "cub": {
        "CUB/test/class_labels.txt": "0e65f035658267b2c7eec0d289048bb822e4a5f9a244b034c127ea7fb1367d7d",
        "CUB/test/image_ids.txt": "f654e4676187fc322ad409487faa3568bffa751438198011692e7ff01be574ca",
        "CUB/test/image_sizes.txt": "96c4e79810545b237b2a79f4623a198ce6effb290fba01790b5587b464abd33b",
        "CUB/test/localization.txt": "85d2bd87f1bfb1641ae42f36df070c34b4755f260267326d2a2d19e65a9acf00",
        "CUB/train/class_labels.txt": "4f19c23e9fdf3cfae8027a9ea8a1cec1b4ecc6a3cb6cf0fe12723c48cde82b30",
        "CUB/train/image_ids.txt": "c04cbe44e79ef2129afac49a15eb51b8f050cdef140cef4cf908cef823000b66",
        "CUB/train/image_sizes.txt": "307a9ed88a011e41b16153ed9745f4cf41054fdfb834f412f104873a42a959cd",
        "CUB/train/localization.txt": "672f41482883e8a23e9b1406b8e75aec7c74c18da39b024724c804dba3c480fd",
        "CUB/val/class_labels.txt": "36791366bc002b82df029b8d84500d731ecc4a5dea603250f134e927d7df5748",
        "CUB/val/image_ids.txt": "455f26689daf2219d42208fba21be12da219c8724eab38482210c4ac2bc57c02",
        "CUB/val/image_sizes.txt": "b0d5495ba5af9f7b1e34753cc8548be5debb267a3d7803a5408a3bc4d173ef63",
        "CUB/val/localization.txt": "08ff9afa478b3a7e29a15c173e11927c9cb1867b58ae8a541df69a4c0c830ab5",
    },
    "ilsvrc": {
        "ILSVRC/test/class_labels.txt": "a226044e3e00900291053ecb8e68640385a196c5521c793d242df9e084e898b6",
        "ILSVRC/test/image_ids.txt": "68bed6c35194a126dba32ad15f2f19596a5f1a3923ffc4ac301402d93e045583",
        "ILSVRC/test/image_sizes.txt": "dde3957c4bf3bdab41ec759386c6ebaa8bed2c1790891ec3465e3a235ed63f3e",
        "ILSVRC/test/localization.txt": "c4a9929837b61e9c2a03524f5b963945782ddc9930c4f8ea764cc10004c5ee62",
        "ILSVRC/train/class_labels.txt": None,
        "ILSVRC/train/image_ids.txt": None,
        "ILSVRC/train/image_ids_proxy.txt": None,
        "ILSVRC/train/image_sizes.txt": _EMPTY,
        "ILSVRC/train/localization.txt": _EMPTY,
        "ILSVRC/val/class_labels.txt": "316209e92831b0dd910432afe74c55f2fb33ed72ade1378d3d0954df325ea51e",
        "ILSVRC/val/image_ids.txt": "bcd13383b7fdaa8aa9cfd02228b398802cf64b20f6efe13aa4b0696b9431d993",
        "ILSVRC/val/image_sizes.txt": "4c82c4c1e14bc7f6a1a8a1fe7ab91df2ec369318b39a8b70618d6bd041cc7410",
        "ILSVRC/val/localization.txt": "4d01d6e9eab27ec860092a43f5b7480f10aadbf21234bd01ae419e9c8181ea3f",
    },
    "openimages": {
        "OpenImages/test/class_labels.txt": "38d9c771b4031770c5e366ff2c50650ec130ce24ceb4b75be96e494f89a1f959",
        "OpenImages/test/image_ids.txt": "7f279c569eb501986ecd98917ba6f116524fe744f84684ad16b3a01087c00bf8",
        "OpenImages/test/image_sizes.txt": _EMPTY,
        "OpenImages/test/localization.txt": "9d1f0bad885884f7e79913b00c5b984fc8d532ed80886bd5e72d37e3274aeb55",
        "OpenImages/train/class_labels.txt": "963b8b21ffdbabc145817f92183371fcdbe9adf3636edde878e45186c0ac9132",
        "OpenImages/train/image_ids.txt": "12c206be5ec47a8e94dbc9cb62a5e0325507335c4daa199b88b4792e4e59d084",
        "OpenImages/train/image_sizes.txt": _EMPTY,
        "OpenImages/train/localization.txt": _EMPTY,
        "OpenImages/val/class_labels.txt": "fa8500d1d6a940a4d7a2dd383cb0f3f508565a3cc71fd34a06ba1c804ec84707",
        "OpenImages/val/image_ids.txt": "32f491e7f25f2a99cb26926b85df5a442df2fa990138b2b938e52674cf4b8ab7",
        "OpenImages/val/image_sizes.txt": _EMPTY,
        "OpenImages/val/localization.txt": "74c9b64d462e423008cda2cb0d4c12bb55b69b2fe438d8e10e49dd61d21d01be",
    },
}
NUM_CLASSES = {"cub": 200, "ilsvrc": 1000, "openimages": 100}


def _recorded_archives(stamp: Path) -> dict[str, dict]:
    """The archives (name -> sha256 and size) a previous prepare recorded in ``stamp``; {} if none."""
    try:
        archives = json.loads(stamp.read_text()).get("archives", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in archives.items() if isinstance(v, dict)} if isinstance(archives, dict) else {}


def record_archive(
    path: Path, remote: Remote, recorded: Mapping[str, object] | None, stamp: Path
) -> dict[str, str | int]:
    """What the stamp records of an archive: its published checksum (already verified by
    ``verify_file``, so a large archive is not hashed twice) and size, or, for an archive without
    one, its sha256 and size; DawsolError (expected vs actual) if they differ from ``recorded``."""
    size = path.stat().st_size
    if remote.checksum:
        return {"checksum": remote.checksum, "size": size}
    if recorded and recorded.get("size") not in (None, size):
        raise DawsolError(
            f"{path}: size {size} bytes does not match the {recorded['size']} recorded in {stamp} when the dataset "
            "was built from it; the archive changed: delete it and re-download (or delete the dataset to build anew)"
        )
    sha256 = file_digest(path, "sha256")
    if recorded and recorded.get("sha256") not in (None, sha256):
        raise DawsolError(
            f"{path}: sha256 {sha256} does not match the {recorded['sha256']} recorded in {stamp} when the dataset "
            "was built from it; the archive changed: delete it and re-download (or delete the dataset to build anew)"
        )
    return {"sha256": sha256, "size": size}


def fetch_archive(remote: Remote, downloads: Path, archives: Mapping[str, Path], required: bool = True) -> Path | None:
    """The verified local archive: ``--archive``, else ``downloads/<name>``, else downloaded there."""
    path = archives.get(remote.filename) or downloads / remote.filename
    if not path.is_file():
        if not remote.url:
            if not required:
                log.info(
                    "skipping %s: %s", remote.filename, remote.manual.format(name=remote.filename, downloads=downloads)
                )
                return None
            raise DawsolError(
                f"{remote.filename} is missing: " + remote.manual.format(name=remote.filename, downloads=downloads)
            )
        log.info("downloading %s", remote.url)
        download(remote.url, path)
    verify_file(path, remote)
    check_archive_type(path)
    return path


def fetch_metadata(
    dataset: str, dest: Path, files: Mapping[str, str | None], url: str = METADATA_URL
) -> dict[str, str]:
    """Download the pinned metadata files into ``dest/metadata/<split>/``; returns their sha256."""
    sums = {}
    for name, expected in files.items():
        _, split, filename = name.split("/")
        target = dest / "metadata" / split / filename
        download(url.format(commit=METADATA_COMMIT, path=name), target)
        actual = file_digest(target, "sha256")
        if expected is not None and actual != expected:
            raise DawsolError(
                f"{name}: sha256 {actual} does not match the pinned {expected} (metadata {METADATA_COMMIT[:8]})"
            )
        sums[name] = actual
    return sums


def _write_cub_masks(build: Path) -> None:
    """CUB test masks (the Caltech segmentations) as mask lines in ``metadata/test/mask_localization.txt``."""
    meta = read_split(build / "metadata" / "test")
    lines = [f"{i},masks/{PurePosixPath(i).with_suffix('.png')}," for i in meta.image_ids]
    atomic_write_text(build / "metadata" / "test" / MASK_LOCALIZATION, "\n".join(lines))


def is_prepared(dataset_dir: Path, num_classes: int | None = None) -> bool:
    """True if ``dataset_dir`` carries a stamp and validates."""
    return (dataset_dir / STAMP).is_file() and not validate_dataset(dataset_dir, num_classes=num_classes)


def prepare_dataset(
    dataset: str,
    root: str | Path,
    archives: Sequence[Path] = (),
    *,
    sources: Mapping[str, Remote] = SOURCES,
    layouts: Mapping[str, list[Step]] = LAYOUTS,
    metadata_files: Mapping[str, Mapping[str, str | None]] = METADATA_FILES,
    metadata_url: str = METADATA_URL,
    num_classes: int | None = None,
) -> bool:
    """Prepare ``<root>/<dataset>``; True if it was built, False if it was already there.

    Archives come from ``archives`` (matched by file name), ``<root>/downloads/``, or are
    downloaded there. Everything is built in ``<root>/.<dataset>.build-*`` and renamed into
    place after it validates.
    """
    root = Path(root)
    dataset_dir = root / dataset
    num_classes = num_classes if num_classes is not None else NUM_CLASSES.get(dataset)
    remove_staging(dataset_dir, "build")  # what a killed run left
    if dataset_dir.is_dir() and is_prepared(dataset_dir, num_classes):
        log.info("%s is prepared and valid", dataset_dir)
        return False
    by_name = {}
    for path in archives:
        if path.name not in sources:
            raise DawsolError(f"--archive {path}: unknown archive name (expected one of: {', '.join(sorted(sources))})")
        by_name[path.name] = path
    downloads = root / "downloads"
    steps = layouts[dataset]
    local = {s.remote: fetch_archive(sources[s.remote], downloads, by_name, required=not s.optional) for s in steps}
    recorded = _recorded_archives(dataset_dir / STAMP)
    used = {
        name: record_archive(path, sources[name], recorded.get(name), dataset_dir / STAMP)
        for name, path in local.items()
        if path is not None
    }
    build = staging_folder(dataset_dir, "build")
    try:
        for k, step in enumerate(steps):
            archive = local[step.remote]
            if archive is None:
                continue
            log.info("extracting %s", archive)
            staging = build / f".extract-{k}"
            safe_extract(archive, staging)
            source = staging / step.source
            if not source.is_dir():
                raise DawsolError(f"{archive}: no folder {step.source!r} inside; is it the right archive?")
            target = build / step.target
            if step.nested_tars:
                for inner in sorted(source.glob("*.tar")):
                    safe_extract(inner, target / inner.stem)
            else:
                move_tree(source, target)
            shutil.rmtree(staging)
        sums = fetch_metadata(dataset, build, metadata_files[dataset], metadata_url)
        if dataset == "cub" and local.get("segmentations.tgz") is not None:
            _write_cub_masks(build)
        problems = validate_dataset(build, num_classes=num_classes)
        if problems:
            shown = "; ".join(str(p).replace(str(build), str(dataset_dir)) for p in problems[:3])
            raise DawsolError(
                f"{dataset_dir}: the archives do not have the expected layout ({len(problems)} problem(s): {shown})"
            )
        stamp = {"dataset": dataset, "archives": used, "metadata_commit": METADATA_COMMIT, "metadata_sha256": sums}
        atomic_write_text(build / STAMP, json.dumps(stamp, indent=2))
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        build.rename(dataset_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return True
