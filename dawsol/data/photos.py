"""The real-photo WSOL benchmark: photographed object cutouts pasted onto real background photos.

The objects are real-photo stamps of Tux Paint (``tuxpaint-stamps-default``, GPL-2), whose alpha
channel is an exact object mask; the backgrounds are real photos of Scratch 1.4
(``Media/Backgrounds``, CC-BY-SA-3.0) and Tux Paint's templates (``tuxpaint-data``, GPL-2). All
three come from pinned Debian packages, downloaded at prepare time and verified by sha256; which
members are used, with their class, instance and scene, is the committed, hand-curated manifest
in ``photos_manifest/`` (docs/photos.md).

Object instances (photos of one animal count as one) and backgrounds (views of one place count as
one) are split disjointly between train, val and test, stratified by class and by scene. Image
``k`` of class ``c`` in a split draws from its own generator seeded by ``(seed, split, c, k)``:
a crop of one of the split's backgrounds (the class's own scenes with probability
``context_prob``, the other scenes otherwise: context leakage), then 1..``max_objects`` of the
split's instances of the class, flipped, scaled (never above ``max_upscale`` times their native
size), colour-jittered and pasted with a softened alpha edge. Masks are alpha above one half;
the ignore mask is where the alpha is partial plus a band of ``ignore_band`` pixels around each
mask's border; boxes are the masks' tight boxes, one per visible instance.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from dawsol.atomic import atomic_write_text, remove_staging, staging_folder
from dawsol.config import tree_digest
from dawsol.data.debs import read_members
from dawsol.data.download import Remote, download, verify_file
from dawsol.data.metadata import SPLITS, validate_dataset
from dawsol.data.synthetic import (
    SPLIT_INDEX,
    STAMP,
    Composite,
    holds_benchmark,
    install_folder,
    knobs_from_block,
    mask_iou,
    write_benchmark,
)
from dawsol.errors import DawsolError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the rendering changes, so that prepared data regenerates
MANIFEST_DIR = Path(__file__).with_name("photos_manifest")
PARTIAL_ALPHA = (0.02, 0.98)  # alpha strictly between these is a partial (ignored) pixel
MAX_PLACEMENT_TRIES = 20
MAX_OVERLAP_IOU = 0.15


@dataclass(frozen=True)
class Package:
    """One pinned Debian package: its file, pool path, size and sha256."""

    name: str
    filename: str
    pool_path: str  # below <mirror>/pool/main/
    size: int
    sha256: str

    def remote(self, base: str) -> Remote:
        """Where to fetch it below ``base`` (a mirror's or snapshot's ``.../debian/``) and how to check it."""
        return Remote(
            self.filename, f"{base.rstrip('/')}/pool/main/{self.pool_path}", f"sha256:{self.sha256}", self.size
        )


PACKAGES = {
    p.name: p
    for p in (
        Package(
            "tuxpaint-stamps-default",
            "tuxpaint-stamps-default_2022.06.04-1_all.deb",
            "t/tuxpaint-stamps/tuxpaint-stamps-default_2022.06.04-1_all.deb",
            160_880_444,
            "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
        ),
        Package(
            "scratch",
            "scratch_1.4.0.6~dfsg1-6.1_all.deb",
            "s/scratch/scratch_1.4.0.6%7edfsg1-6.1_all.deb",
            25_654_320,
            "36c582eb93110f64f06c4e685c41e933ccba2fa68db12f79b10bfe840b21fc10",
        ),
        Package(
            "tuxpaint-data",
            "tuxpaint-data_0.9.28-sdl2-1_all.deb",
            "t/tuxpaint/tuxpaint-data_0.9.28-sdl2-1_all.deb",
            7_855_540,
            "f5d0de8f9a70d2efc1241d19f26168cb8bf279f1b77abd3631e7a1a55c40e5e5",
        ),
    )
}

# The scenes each class is "at home" in (drawn with probability context_prob): a plausible
# pairing whose only job is to make the background predictive of the class, as the synthetic
# set's context scenes do. Fruit and vegetables share theirs, so only the object tells them apart.
CLASS_SCENES: dict[str, tuple[str, ...]] = {
    "mammal": ("ground",),
    "bird": ("water", "sky"),
    "fish": ("water",),
    "insect": ("vegetation",),
    "fruit": ("indoor", "urban"),
    "vegetable": ("indoor", "urban"),
    "flower": ("vegetation",),
}


@dataclass(frozen=True)
class PhotosConfig:
    """The generator's knobs and sources: the ``photos:`` block of params.yaml."""

    seed: int
    classes: tuple[str, ...]  # manifest classes used, in label order
    image_size: tuple[int, int]  # min and max side, pixels
    train_per_class: int
    val_per_class: int
    test_per_class: int
    split_fractions: tuple[float, float, float]  # train, val, test share of instances and backgrounds
    max_objects: int
    object_scale: tuple[float, float]  # longest side of a pasted object / shorter image side
    max_upscale: float  # never enlarge a stamp beyond this times its native size
    background_zoom: tuple[float, float]  # crop side / largest crop of the image's aspect that fits
    edge_softness: float  # sigma of the Gaussian blur of the pasted alpha, pixels
    color_jitter: float  # brightness, contrast and saturation factors drawn from 1 +- this
    context_prob: float
    ignore_band: int
    mirror: str  # a Debian mirror's .../debian/ base URL
    snapshot: str  # the fallback: a snapshot.debian.org .../archive/debian/<timestamp>/ URL

    @classmethod
    def from_params(cls, block: Mapping[str, object]) -> PhotosConfig:
        """Build from the ``photos:`` block of params.yaml (every knob is required)."""
        config = knobs_from_block(
            cls, block, "photos", "docs/photos.md", ranges=("image_size", "object_scale", "background_zoom")
        )
        unknown_classes = sorted(set(config.classes) - set(CLASS_SCENES))
        if unknown_classes or len(set(config.classes)) != len(config.classes) or len(config.classes) < 2:
            raise DawsolError(
                f"photos.classes: {list(config.classes)} must be two or more distinct manifest classes "
                f"({', '.join(CLASS_SCENES)})"
            )
        if abs(sum(config.split_fractions) - 1.0) > 1e-6 or min(config.split_fractions) <= 0:
            raise DawsolError(f"photos.split_fractions: {list(config.split_fractions)} must be positive and sum to 1")
        return config

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[split]

    def digest(self, manifest_dir: Path = MANIFEST_DIR) -> str:
        """A hash of what the data depends on: the knobs (not the URLs), the manifest and the generator version."""
        knobs = {k: v for k, v in asdict(self).items() if k not in ("mirror", "snapshot")}
        manifest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(manifest_dir.glob("*.csv"))}
        return tree_digest({"version": GENERATOR_VERSION, "manifest": manifest, **knobs})


@dataclass(frozen=True)
class ObjectPhoto:
    package: str
    member: str
    size: int
    label: str  # manifest class
    instance: str


@dataclass(frozen=True)
class BackgroundPhoto:
    package: str
    member: str
    size: int
    scene: str
    group: str  # views of one place share a group, and so a split


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != list(columns):
            raise DawsolError(f"{path}: columns {reader.fieldnames} are not {list(columns)}")
        return list(reader)


def read_manifest(directory: Path = MANIFEST_DIR) -> tuple[list[ObjectPhoto], list[BackgroundPhoto]]:
    """The curated objects and backgrounds (``objects.csv``, ``backgrounds.csv``)."""
    objects = [
        ObjectPhoto(r["package"], r["member"], int(r["size"]), r["class"], r["instance"])
        for r in _read_csv(directory / "objects.csv", ("package", "member", "size", "class", "instance"))
    ]
    backgrounds = [
        BackgroundPhoto(r["package"], r["member"], int(r["size"]), r["scene"], r["group"])
        for r in _read_csv(directory / "backgrounds.csv", ("package", "member", "size", "scene", "group"))
    ]
    return objects, backgrounds


def read_member_list(directory: Path = MANIFEST_DIR) -> dict[tuple[str, str], tuple[int, str]]:
    """The packages' member facts the manifest relies on: (package, member) -> (size, sha256)."""
    rows = _read_csv(directory / "members.csv", ("package", "member", "size", "sha256"))
    return {(r["package"], r["member"]): (int(r["size"]), r["sha256"]) for r in rows}


def _stable_key(text: str) -> int:
    return zlib.crc32(text.encode())


def assign_splits(
    groups: Sequence[str], strata: Mapping[str, str], fractions: Sequence[float], seed: int
) -> dict[str, str]:
    """Each group -> a split. Per stratum the groups are shuffled (seeded by ``seed`` and the
    stratum) and dealt out so that each split's share follows ``fractions``; the first three of
    a stratum go to train, test and val (with the default fractions), so any stratum of three or
    more groups reaches every split."""
    by_stratum: dict[str, list[str]] = {}
    for group in sorted(set(groups)):
        by_stratum.setdefault(strata[group], []).append(group)
    assignment = {}
    for stratum, members in sorted(by_stratum.items()):
        rng = np.random.default_rng([seed, _stable_key(stratum)])
        order = [members[i] for i in rng.permutation(len(members))]
        counts = dict.fromkeys(SPLITS, 0)
        for i, group in enumerate(order):
            split = max(SPLITS, key=lambda s: fractions[SPLIT_INDEX[s]] * (i + 1) - counts[s])
            counts[split] += 1
            assignment[group] = split
    return assignment


@dataclass
class SplitSources:
    """What one split may draw from: per class its instances' stamp members, and its backgrounds."""

    objects: dict[str, list[list[str]]]  # class -> instances -> members (photos of the instance)
    backgrounds: list[BackgroundPhoto]


def split_sources(
    config: PhotosConfig, objects: Sequence[ObjectPhoto], backgrounds: Sequence[BackgroundPhoto]
) -> dict[str, SplitSources]:
    """The disjoint split of instances (by class) and backgrounds (by scene); DawsolError if a split
    lacks an instance of a class or (with context_prob > 0) a background of its scenes."""
    used = [o for o in objects if o.label in config.classes]
    instance_split = assign_splits(
        [o.instance for o in used], {o.instance: o.label for o in used}, config.split_fractions, config.seed
    )
    background_split = assign_splits(
        [b.group for b in backgrounds], {b.group: b.scene for b in backgrounds}, config.split_fractions, config.seed
    )
    result = {}
    for split in SPLITS:
        per_class: dict[str, list[list[str]]] = {}
        for label in config.classes:
            instances: dict[str, list[str]] = {}
            for o in used:
                if o.label == label and instance_split[o.instance] == split:
                    instances.setdefault(o.instance, []).append(o.member)
            if not instances:
                raise DawsolError(f"photos: class {label!r} has no instance in the {split} split (too few instances)")
            per_class[label] = [instances[k] for k in sorted(instances)]
        chosen = [b for b in backgrounds if background_split[b.group] == split]
        for label in config.classes:
            if config.context_prob > 0 and not any(b.scene in CLASS_SCENES[label] for b in chosen):
                raise DawsolError(f"photos: the {split} split has no background of {label}'s scenes")
        result[split] = SplitSources(per_class, chosen)
    return result


def decode_stamp(data: bytes, name: str) -> np.ndarray:
    """An RGBA stamp as float32 in [0, 1], cropped to its alpha's bounding box."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] != 4:
        raise DawsolError(f"{name}: not an RGBA image (a stamp needs an alpha channel)")
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    rgba = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA).astype(np.float32) / scale
    ys, xs = np.nonzero(rgba[..., 3] > 0)
    if ys.size == 0:
        raise DawsolError(f"{name}: the stamp is fully transparent")
    return rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def decode_background(data: bytes, name: str) -> np.ndarray:
    """A background photo as float32 RGB in [0, 1]."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DawsolError(f"{name}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _jitter(rng: np.random.Generator, rgb: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor in 1 +- strength."""
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    grey = rgb.mean(axis=-1, keepdims=True)
    rgb = grey + (rgb - grey) * saturation
    rgb = rgb.mean() + (rgb - rgb.mean()) * contrast
    return np.clip(rgb * brightness, 0, 1)


def _background_crop(rng: np.random.Generator, photo: np.ndarray, w: int, h: int, zoom: Sequence[float]) -> np.ndarray:
    """A random crop of ``photo`` with the aspect w:h, resized to w x h, flipped half the time."""
    ph, pw = photo.shape[:2]
    fit = min(pw / w, ph / h)
    side = rng.uniform(*zoom)
    cw, ch = max(1, round(w * fit * side)), max(1, round(h * fit * side))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interpolation = cv2.INTER_AREA if cw >= w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interpolation)


def scale_stamp(rng: np.random.Generator, stamp: np.ndarray, config: PhotosConfig, w: int, h: int, shrink: float):
    """The stamp flipped at random and resized (premultiplied): (premultiplied RGB, alpha)."""
    if rng.random() < 0.5:
        stamp = stamp[:, ::-1]
    sh, sw = stamp.shape[:2]
    target = shrink * rng.uniform(*config.object_scale) * min(w, h)
    factor = min(target / max(sh, sw), config.max_upscale, 0.95 * w / sw, 0.95 * h / sh)
    size = (max(1, round(sw * factor)), max(1, round(sh * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    alpha = stamp[..., 3]
    premultiplied = np.ascontiguousarray(stamp[..., :3] * alpha[..., None])
    rgb = cv2.resize(premultiplied, size, interpolation=interpolation)
    alpha = cv2.resize(np.ascontiguousarray(alpha), size, interpolation=interpolation)
    return np.clip(rgb, 0, 1), np.clip(alpha, 0, 1)


def compose_image(
    config: PhotosConfig,
    label: str,
    sources: SplitSources,
    stamps: Mapping[str, np.ndarray],
    photos: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """One composite of class ``label``: (H x W x 3 uint8 RGB, visible instance masks, partial-alpha mask)."""
    w, h = (int(v) for v in rng.integers(config.image_size[0], config.image_size[1] + 1, size=2))
    home = [b for b in sources.backgrounds if b.scene in CLASS_SCENES[label]]
    away = [b for b in sources.backgrounds if b.scene not in CLASS_SCENES[label]] or home
    pool = home if rng.random() < config.context_prob else away
    background = pool[int(rng.integers(len(pool)))]
    image = _jitter(
        rng, _background_crop(rng, photos[background.member], w, h, config.background_zoom), 0.5 * config.color_jitter
    )
    instances = sources.objects[label]
    count = int(rng.integers(1, config.max_objects + 1))
    chosen = rng.choice(len(instances), size=count, replace=count > len(instances))
    shrink = 1.0 if count == 1 else 0.8
    masks: list[np.ndarray] = []
    partial = np.zeros((h, w), bool)
    for index in chosen:
        photos_of_instance = instances[int(index)]
        stamp = stamps[photos_of_instance[int(rng.integers(len(photos_of_instance)))]]
        rgb, alpha = scale_stamp(rng, stamp, config, w, h, shrink)
        rgb = _jitter(rng, rgb / np.maximum(alpha[..., None], 1e-6), config.color_jitter) * alpha[..., None]
        sh, sw = alpha.shape
        for _attempt in range(MAX_PLACEMENT_TRIES):
            x0, y0 = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
            canvas_alpha = np.zeros((h, w), np.float32)
            canvas_alpha[y0 : y0 + sh, x0 : x0 + sw] = alpha
            if config.edge_softness > 0:
                canvas_alpha = cv2.GaussianBlur(canvas_alpha, (0, 0), config.edge_softness)
            mask = canvas_alpha > 0.5
            if mask.any() and all(mask_iou(mask, other) < MAX_OVERLAP_IOU for other in masks):
                break
        else:
            continue  # no room for another instance: the image keeps the ones it has
        canvas_rgb = np.zeros((h, w, 3), np.float32)
        canvas_rgb[y0 : y0 + sh, x0 : x0 + sw] = rgb
        if config.edge_softness > 0:
            canvas_rgb = cv2.GaussianBlur(canvas_rgb, (0, 0), config.edge_softness)
        image = image * (1 - canvas_alpha[..., None]) + canvas_rgb  # premultiplied "over"
        opaque = canvas_alpha >= PARTIAL_ALPHA[1]
        masks = [m & ~mask for m in masks]  # later instances occlude earlier ones
        masks.append(mask)
        partial = (partial & ~opaque) | ((canvas_alpha > PARTIAL_ALPHA[0]) & ~opaque)
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return pixels, [m for m in masks if m.any()], partial


def generate(
    config: PhotosConfig, members: Mapping[str, bytes], out_dir: Path, manifest_dir: Path = MANIFEST_DIR
) -> None:
    """Write the whole benchmark (images, masks, metadata) into ``out_dir`` from the members' bytes."""
    objects, backgrounds = read_manifest(manifest_dir)
    sources = split_sources(config, objects, backgrounds)
    stamps = {o.member: decode_stamp(members[o.member], o.member) for o in objects if o.label in config.classes}
    photos = {b.member: decode_background(members[b.member], b.member) for b in backgrounds}

    def compose(split: str, label_index: int, rng: np.random.Generator) -> Composite:
        return compose_image(config, config.classes[label_index], sources[split], stamps, photos, rng)

    write_benchmark(
        out_dir,
        seed=config.seed,
        num_classes=len(config.classes),
        per_class=config.per_class,
        ignore_width=config.ignore_band,
        compose=compose,
    )


def fetch_package(package: Package, config: PhotosConfig, downloads: Path, archive: Path | None = None) -> Path:
    """The verified local ``.deb``: ``archive`` (``--archive``), else ``downloads/<file>``, else
    downloaded there from the mirror, else from the snapshot archive. A download that fails its
    check is deleted (a file the user supplied is kept), so nothing unverified stays behind."""
    if archive is not None and not archive.is_file():
        raise DawsolError(f"--archive {archive}: no such file")
    path = archive or downloads / package.filename
    fetched = False
    if not path.is_file():
        errors = []
        for base in (config.mirror, config.snapshot):
            remote = package.remote(base)
            try:
                log.info("downloading %s", remote.url)
                download(remote.url, path)
                fetched = True
                break
            except DawsolError as exc:
                errors.append(str(exc))
        if not fetched:
            raise DawsolError(
                f"{package.filename}: download failed from {package.remote(config.mirror).url} and from "
                f"{package.remote(config.snapshot).url} ({errors[-1]}); offline: copy the file from a Debian mirror "
                f"to {downloads}/ or pass --archive PATH"
            )
    try:
        verify_file(path, package.remote(config.mirror))
    except DawsolError:
        if fetched:
            path.unlink()
        raise
    return path


def read_sources(
    config: PhotosConfig,
    archives: Mapping[str, Path],
    downloads: Path,
    manifest_dir: Path = MANIFEST_DIR,
    packages: Mapping[str, Package] = PACKAGES,
) -> tuple[dict[str, bytes], dict]:
    """Every manifest member's bytes, read from the verified packages and checked against the
    committed member list; and what the stamp records of each package."""
    objects, backgrounds = read_manifest(manifest_dir)
    facts = read_member_list(manifest_dir)
    members: dict[str, bytes] = {}
    used = {}
    for package in packages.values():
        wanted = {e.member: e.size for e in (*objects, *backgrounds) if e.package == package.name}
        if not wanted:
            continue
        deb = fetch_package(package, config, downloads, archives.get(package.filename))
        log.info("reading %d members of %s", len(wanted), deb.name)
        for name, data in read_members(deb, wanted).items():
            if hashlib.sha256(data).hexdigest() != facts.get((package.name, name), (0, ""))[1]:
                raise DawsolError(f"{deb}: member {name!r} differs from the committed member list (members.csv)")
            members[name] = data
        used[package.filename] = {"sha256": package.sha256, "size": package.size}
    return members, used


def is_prepared(config: PhotosConfig, dataset_dir: Path, manifest_dir: Path = MANIFEST_DIR) -> bool:
    """True if ``dataset_dir`` holds a complete, valid benchmark made with these settings."""
    return holds_benchmark(dataset_dir, config.digest(manifest_dir), len(config.classes), config.per_class)


def prepare_photos(
    config: PhotosConfig,
    root: str | Path,
    archives: Sequence[Path] = (),
    *,
    manifest_dir: Path = MANIFEST_DIR,
    packages: Mapping[str, Package] = PACKAGES,
) -> bool:
    """Build ``<root>/photos`` unless it is already there with these settings; True if built.

    The packages come from ``archives`` (by file name), ``<root>/downloads/``, or are downloaded
    there. The data is built in a temporary sibling folder, validated, and renamed into place, so
    a failure leaves the previous dataset (or none), never a half-written one. ``manifest_dir`` and
    ``packages`` replace the committed manifest and the pinned packages (tests serve small ones).
    """
    root = Path(root)
    dataset_dir = root / "photos"
    remove_staging(dataset_dir, "build", "old")  # what a killed run left
    if dataset_dir.is_dir() and is_prepared(config, dataset_dir, manifest_dir):
        log.info("%s is up to date (settings digest %s)", dataset_dir, config.digest(manifest_dir))
        return False
    by_name = {}
    for path in archives:
        if path.name not in {p.filename for p in packages.values()}:
            known = ", ".join(p.filename for p in packages.values())
            raise DawsolError(f"--archive {path}: unknown package file name (expected one of: {known})")
        by_name[path.name] = path
    members, used = read_sources(config, by_name, root / "downloads", manifest_dir, packages)
    root.mkdir(parents=True, exist_ok=True)
    work = staging_folder(dataset_dir, "build")
    try:
        log.info("composing the photos benchmark into %s", dataset_dir)
        generate(config, members, work, manifest_dir)
        problems = validate_dataset(work, num_classes=len(config.classes))
        if problems:
            raise DawsolError(f"{dataset_dir}: the composed dataset does not validate: {problems[0]}")
        stamp = {"digest": config.digest(manifest_dir), "settings": asdict(config), "packages": used}
        atomic_write_text(work / STAMP, json.dumps(stamp, indent=2))
        install_folder(work, dataset_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True
