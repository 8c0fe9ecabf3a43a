"""The synthetic WSOL benchmark: small RGB scenes with DA-WSOL's failure modes built in.

Each image holds 1..``max_objects`` objects of one class. An object is a large elliptic
**body** with a striped texture shared by every class (object-like and distinct from any
background, but only weakly class-specific: its colour leans towards the class colour by
``body_class_signal``) and a small **part** attached at its rim, whose shape and colour
identify the class exactly (the bird's head). A classifier can therefore get by on the part,
and a plain CAM lights the part and misses most of the body (part domination). The
**background** is the class's own context scene with probability ``context_prob`` (ducks on
water) and another class's otherwise, so background pixels are predictive too (context
leakage). Textured clutter, random object size, aspect, rotation, position and count complete
the scene. Every split gets tight boxes; val and test also get OpenImages-style instance
masks and an ignore mask (a band of ``ignore_band`` pixels around each object's border).

Everything is deterministic from ``synthetic.seed``: image ``k`` of class ``c`` in a split
draws from its own generator seeded by ``(seed, split, c, k)``. The writer of the splits, the check of a
prepared folder and the reader of the params block serve the photos benchmark too (``photos.py``).
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from dawsol.atomic import atomic_write_bytes, atomic_write_text, remove_staging, staging_folder
from dawsol.config import tree_digest
from dawsol.data.metadata import SPLITS, SplitMetadata, read_split, validate_dataset, write_split
from dawsol.errors import DawsolError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the rendering changes, so that prepared data regenerates
STAMP = ".dawsol-prepared.json"
SUPERSAMPLE = 4
SPLIT_INDEX = {split: i for i, split in enumerate(SPLITS)}
PART_SHAPES = ("circle", "triangle", "square", "diamond", "star", "hexagon", "cross", "crescent")
# the body texture shared by every class: dark and light stripe colours (RGB, 0-1)
BODY_DARK = np.array([0.30, 0.24, 0.18])
BODY_LIGHT = np.array([0.78, 0.68, 0.52])
# context scenes: (base colour, second colour, pattern)
CONTEXTS = (
    ((0.10, 0.30, 0.62), (0.30, 0.55, 0.85), "waves"),  # water
    ((0.18, 0.48, 0.14), (0.35, 0.70, 0.25), "blades"),  # grass
    ((0.80, 0.70, 0.45), (0.92, 0.84, 0.60), "grain"),  # sand
    ((0.45, 0.68, 0.92), (0.92, 0.95, 1.00), "clouds"),  # sky
    ((0.86, 0.88, 0.92), (0.60, 0.64, 0.72), "speckle"),  # snow
    ((0.05, 0.20, 0.10), (0.20, 0.38, 0.18), "blotches"),  # forest
    ((0.42, 0.42, 0.44), (0.25, 0.25, 0.27), "cracks"),  # rock
    ((0.35, 0.15, 0.45), (0.95, 0.55, 0.30), "gradient"),  # dusk
)


Knobs = TypeVar("Knobs")


def knobs_from_block(
    cls: type[Knobs], block: Mapping[str, Any], section: str, doc: str, ranges: Sequence[str]
) -> Knobs:
    """The dataclass ``cls`` from the ``section:`` block of params.yaml (the synthetic and the photos benchmark):
    every field required and no other key (a DawsolError names the first, pointing to ``doc``), lists as tuples,
    each field of ``ranges`` a [min, max] pair."""
    known = {f.name for f in fields(cls)}
    unknown, missing = sorted(set(block) - known), sorted(known - set(block))
    if unknown:
        raise DawsolError(f"{section}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    if missing:
        raise DawsolError(f"{section}.{missing[0]} is missing in params.yaml (see {doc})")
    config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})
    for name in ranges:
        low, high = getattr(config, name)
        if low > high:
            raise DawsolError(f"{section}.{name}: [{low}, {high}] must be [min, max]")
    return config


@dataclass(frozen=True)
class SyntheticConfig:
    """The generator's knobs: the ``synthetic:`` block of params.yaml."""

    seed: int
    num_classes: int
    image_size: tuple[int, int]  # min and max side, pixels
    train_per_class: int
    val_per_class: int
    test_per_class: int
    max_objects: int
    object_scale: tuple[float, float]  # body length / shorter image side
    aspect: tuple[float, float]  # body length / body width
    part_scale: float  # part diameter / body length
    body_class_signal: float  # 0..0.5
    context_prob: float
    clutter: float
    ignore_band: int

    @classmethod
    def from_params(cls, block: Mapping[str, Any]) -> SyntheticConfig:
        """Build from the ``synthetic:`` block of params.yaml (every knob is required)."""
        return knobs_from_block(
            cls, block, "synthetic", "docs/synthetic-benchmark.md", ranges=("image_size", "object_scale", "aspect")
        )

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[split]

    def digest(self) -> str:
        """A hash of the settings and the generator version: equal digests, equal data."""
        return tree_digest({"version": GENERATOR_VERSION, **asdict(self)})


@dataclass(frozen=True)
class ClassStyle:
    part_shape: str
    part_color: np.ndarray
    context: int


def class_style(label: int, num_classes: int) -> ClassStyle:
    """The class's part (shape and saturated colour) and its context scene."""
    hue = (label / num_classes + 0.03) % 1.0
    color = np.array(colorsys.hsv_to_rgb(hue, 0.95, 1.0))
    return ClassStyle(PART_SHAPES[label % len(PART_SHAPES)], color, label % len(CONTEXTS))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random grid, bicubically upsampled."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def render_background(rng: np.random.Generator, context: int, h: int, w: int) -> np.ndarray:
    """A context scene (H x W x 3 float RGB in [0, 1])."""
    base, second, pattern = CONTEXTS[context]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    if pattern == "waves":
        t = 0.5 + 0.5 * np.sin(yy / rng.uniform(2.0, 3.5) + 1.5 * np.sin(xx / rng.uniform(6, 10) + phase))
        t = t**3
    elif pattern == "blades":
        t = _smooth_noise(rng, h, w, 4) * 0.4 + (rng.random((1, w)) ** 2).astype(np.float32) * 0.6
    elif pattern == "grain":
        t = _smooth_noise(rng, h, w, 5) * 0.5 + rng.random((h, w)).astype(np.float32) * 0.5
    elif pattern == "clouds":
        t = _smooth_noise(rng, h, w, 5) ** 2
    elif pattern == "speckle":
        t = (rng.random((h, w)) > 0.93).astype(np.float32) + 0.3 * _smooth_noise(rng, h, w, 3)
    elif pattern == "blotches":
        t = (_smooth_noise(rng, h, w, 7) > 0.55).astype(np.float32) * 0.8 + 0.2 * rng.random((h, w))
    elif pattern == "cracks":
        t = 0.3 * _smooth_noise(rng, h, w, 6)
        canvas = np.zeros((h, w), np.float32)
        for _ in range(6):
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(canvas, p0, p1, 1.0, 1)
        t = t + canvas
    else:  # gradient
        t = yy / max(h - 1, 1) * 0.8 + 0.2 * _smooth_noise(rng, h, w, 3)
    t = np.clip(t, 0, 1)[..., None]
    return (1 - t) * np.array(base, np.float32) + t * np.array(second, np.float32)


def _to_low(hi: np.ndarray, h: int, w: int) -> np.ndarray:
    """Supersampled binary coverage -> anti-aliased alpha at H x W."""
    return cv2.resize(hi.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


def _part_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[np.ndarray]:
    def ring(n: int, radius: float, offset: float = 0.0) -> np.ndarray:
        angles = rot + offset + np.arange(n) * 2 * math.pi / n
        return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)

    if shape == "triangle":
        return [ring(3, r * 1.15)]
    if shape == "square":
        return [ring(4, r * 1.1, math.pi / 4)]
    if shape == "diamond":
        pts = ring(4, 1.0)
        return [np.stack([cx + (pts[:, 0] - cx) * r * 1.25, cy + (pts[:, 1] - cy) * r * 0.8], axis=1)]
    if shape == "star":
        outer, inner = ring(5, r * 1.3), ring(5, r * 0.55, math.pi / 5)
        return [np.stack([outer, inner], axis=1).reshape(-1, 2)]
    if shape == "hexagon":
        return [ring(6, r)]
    if shape == "cross":
        c, s, a, b = math.cos(rot), math.sin(rot), r * 1.2, r * 0.42
        bars = []
        for u, v in ((a, b), (b, a)):
            corners = np.array([[-u, -v], [u, -v], [u, v], [-u, v]])
            bars.append(
                np.stack([cx + corners[:, 0] * c - corners[:, 1] * s, cy + corners[:, 0] * s + corners[:, 1] * c], 1)
            )
        return bars
    return [ring(24, r)]  # circle; crescent is cut out of it by the caller


def _draw_part(hi_h: int, hi_w: int, shape: str, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Supersampled binary mask of a part centred at (cx, cy) (in supersampled pixels)."""
    canvas = np.zeros((hi_h, hi_w), np.uint8)
    cv2.fillPoly(canvas, [np.round(p).astype(np.int32) for p in _part_polygon(shape, cx, cy, r, rot)], 1)
    if shape == "crescent":
        cut = np.zeros_like(canvas)
        offset = 0.55 * r
        centre = (round(cx + offset * math.cos(rot)), round(cy + offset * math.sin(rot)))
        cv2.circle(cut, centre, round(r * 0.85), 1, -1)
        canvas &= 1 - cut
    return canvas.astype(bool)


@dataclass
class _Object:
    body: np.ndarray  # supersampled binary
    part: np.ndarray  # supersampled binary
    stripes: np.ndarray  # H x W stripe value in [0, 1]


def _place_object(
    rng: np.random.Generator, config: SyntheticConfig, style: ClassStyle, h: int, w: int, scale: float
) -> _Object:
    s = SUPERSAMPLE
    length = scale * min(h, w)
    aspect = rng.uniform(*config.aspect)
    a, b = length / 2, length / 2 / aspect
    theta = rng.uniform(0, math.pi)
    ext_x = math.sqrt((a * math.cos(theta)) ** 2 + (b * math.sin(theta)) ** 2)
    ext_y = math.sqrt((a * math.sin(theta)) ** 2 + (b * math.cos(theta)) ** 2)
    cx = rng.uniform(min(ext_x + 1, w / 2), max(w - ext_x - 1, w / 2))
    cy = rng.uniform(min(ext_y + 1, h / 2), max(h - ext_y - 1, h / 2))
    # body, supersampled
    yy, xx = np.mgrid[0 : h * s, 0 : w * s].astype(np.float32)
    u = (xx + 0.5) / s - cx
    v = (yy + 0.5) / s - cy
    along = u * math.cos(theta) + v * math.sin(theta)
    across = -u * math.sin(theta) + v * math.cos(theta)
    body = (along / a) ** 2 + (across / b) ** 2 <= 1.0
    # stripes across the long axis, at the low resolution
    ly, lx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    low_along = (lx - cx) * math.cos(theta) + (ly - cy) * math.sin(theta)
    period = rng.uniform(3.0, 5.0)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * low_along / period + rng.uniform(0, 2 * math.pi))
    # the part, on the rim at a random angle, half outside the body
    phi = rng.uniform(0, 2 * math.pi)
    radius = config.part_scale * length / 2
    rim_u, rim_v = a * math.cos(phi), b * math.sin(phi)
    norm = math.hypot(rim_u / a**2, rim_v / b**2)
    nu, nv = rim_u / a**2 / norm, rim_v / b**2 / norm  # outward normal in the body frame
    pu, pv = rim_u + 0.35 * radius * nu, rim_v + 0.35 * radius * nv
    px = cx + pu * math.cos(theta) - pv * math.sin(theta)
    py = cy + pu * math.sin(theta) + pv * math.cos(theta)
    part = _draw_part(h * s, w * s, style.part_shape, px * s, py * s, radius * s, rng.uniform(0, 2 * math.pi))
    return _Object(body=body, part=part, stripes=stripes)


def _add_clutter(rng: np.random.Generator, image: np.ndarray, strength: float) -> None:
    """Textured distractors: noisy blobs and strokes in random muted colours, in place."""
    h, w = image.shape[:2]
    for _ in range(int(rng.poisson(6 * strength))):
        color = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.9)))
        layer = np.zeros((h, w), np.float32)
        if rng.random() < 0.5:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(2, max(3, w // 6))), int(rng.integers(2, max(3, h // 6))))
            cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
            layer *= 0.5 + 0.5 * rng.random((h, w)).astype(np.float32)
        else:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(layer, p0, p1, 1.0, int(rng.integers(1, 3)), cv2.LINE_AA)
        alpha = (layer * strength * 1.4).clip(0, 1)[..., None]
        image[:] = image * (1 - alpha) + color * alpha


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def generate_image(
    config: SyntheticConfig, label: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One scene of class ``label``: (H x W x 3 uint8 RGB image, visible binary instance masks)."""
    style = class_style(label, config.num_classes)
    w, h = (int(v) for v in rng.integers(config.image_size[0], config.image_size[1] + 1, size=2))
    context = style.context
    if rng.random() >= config.context_prob and len(CONTEXTS) > 1:
        context = int((style.context + rng.integers(1, len(CONTEXTS))) % len(CONTEXTS))
    image = render_background(rng, context, h, w)
    _add_clutter(rng, image, config.clutter)
    count = int(rng.integers(1, config.max_objects + 1))
    shrink = 1.0 if count == 1 else 0.8
    objects: list[_Object] = []
    for _ in range(count):
        for _attempt in range(20):
            obj = _place_object(rng, config, style, h, w, shrink * rng.uniform(*config.object_scale))
            if all(mask_iou(obj.body, other.body) < 0.15 for other in objects):
                objects.append(obj)
                break
    masks: list[np.ndarray] = []
    for obj in objects:
        # the body colour: the shared stripes, tinted towards the class colour by body_class_signal
        # and towards a random colour by as much again, so body colour is only a weak cue
        tint = config.body_class_signal
        noise_color = np.array(colorsys.hsv_to_rgb(rng.random(), 0.9, 1.0))
        lean = tint * style.part_color + tint * noise_color
        dark = (1 - 2 * tint) * BODY_DARK + lean * 0.45
        light = (1 - 2 * tint) * BODY_LIGHT + lean
        brightness = rng.uniform(0.8, 1.2)
        body_alpha = _to_low(obj.body, h, w)[..., None]
        kernel = np.ones((2 * SUPERSAMPLE - 1, 2 * SUPERSAMPLE - 1), np.uint8)
        inner = cv2.erode(obj.body.astype(np.uint8), kernel).astype(bool)
        rim_alpha = _to_low(obj.body & ~inner, h, w)[..., None]
        texture = (dark + (light - dark) * obj.stripes[..., None]) * brightness
        image[:] = image * (1 - body_alpha) + texture * body_alpha
        image[:] = image * (1 - 0.6 * rim_alpha) + BODY_DARK * 0.3 * (0.6 * rim_alpha)
        part_alpha = _to_low(obj.part, h, w)[..., None]
        inner_part = cv2.erode(obj.part.astype(np.uint8), kernel).astype(bool)
        part_rim = _to_low(obj.part & ~inner_part, h, w)[..., None]
        image[:] = image * (1 - part_alpha) + style.part_color * part_alpha
        image[:] = image * (1 - 0.7 * part_rim)
        visible = (body_alpha[..., 0] >= 0.5) | (part_alpha[..., 0] >= 0.5)
        masks = [m & ~visible for m in masks]  # later objects occlude earlier ones
        masks.append(visible)
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return pixels, [m for m in masks if m.any()]


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def ignore_band(masks: list[np.ndarray], width: int) -> np.ndarray:
    """The ignore mask: a band of ``width`` pixels on both sides of every object border."""
    band = np.zeros_like(masks[0], dtype=bool)
    if width == 0:
        return band
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    for mask in masks:
        m = mask.astype(np.uint8)
        band |= cv2.dilate(m, kernel).astype(bool) & ~cv2.erode(m, kernel).astype(bool)
    return band


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise DawsolError(f"{path}: could not write the image (disk full or not writable?)")


# what a generator makes of one image: the RGB image, its instance masks, and the pixels to ignore besides the band
# around each mask's border (None: only the band)
Composite = tuple[np.ndarray, list[np.ndarray], np.ndarray | None]


def write_benchmark(
    out_dir: Path,
    *,
    seed: int,
    num_classes: int,
    per_class: Callable[[str], int],
    ignore_width: int,
    compose: Callable[[str, int, np.random.Generator], Composite],
) -> None:
    """Write every split's images, masks and metadata into ``out_dir`` (the synthetic and the photos benchmark).

    Image ``k`` of class ``label`` in ``split`` is ``compose(split, label, rng)`` with its own generator seeded
    by ``(seed, split, label, k)``; every split gets its boxes (the masks' tight boxes), val and test also the
    instance masks and an ignore mask (a band of ``ignore_width`` pixels around each mask's border, plus what
    ``compose`` adds).
    """
    for split in SPLITS:
        meta = SplitMetadata(image_ids=[], labels={})
        with_masks = split != "train"
        for label in range(num_classes):
            for k in range(per_class(split)):
                rng = np.random.default_rng([seed, SPLIT_INDEX[split], label, k])
                image, masks, also_ignored = compose(split, label, rng)
                image_id = f"{split}/{label:03d}/{k:05d}.png"
                write_png(out_dir / image_id, image)
                meta.image_ids.append(image_id)
                meta.labels[image_id] = label
                meta.sizes[image_id] = (image.shape[1], image.shape[0])
                meta.boxes[image_id] = [tight_box(m) for m in masks]
                if with_masks:
                    stem = f"masks/{split}/{label:03d}/{k:05d}"
                    meta.masks[image_id] = [f"{stem}_m{i}.png" for i in range(len(masks))]
                    meta.ignore_masks[image_id] = f"{stem}_ignore.png"
                    for name, mask in zip(meta.masks[image_id], masks, strict=True):
                        write_png(out_dir / name, mask.astype(np.uint8) * 255)
                    ignore = ignore_band(masks, ignore_width)
                    if also_ignored is not None:
                        ignore = ignore | also_ignored
                    write_png(out_dir / f"{stem}_ignore.png", ignore.astype(np.uint8) * 255)
        write_split(out_dir / "metadata" / split, meta)


def generate(config: SyntheticConfig, out_dir: Path) -> None:
    """Write the whole benchmark (images, masks, metadata) into ``out_dir``."""

    def compose(split: str, label: int, rng: np.random.Generator) -> Composite:
        return (*generate_image(config, label, rng), None)

    write_benchmark(
        out_dir,
        seed=config.seed,
        num_classes=config.num_classes,
        per_class=config.per_class,
        ignore_width=config.ignore_band,
        compose=compose,
    )


def holds_benchmark(dataset_dir: Path, digest: str, num_classes: int, per_class: Callable[[str], int]) -> bool:
    """True if ``dataset_dir``'s stamp records ``digest`` and it holds a valid benchmark of ``num_classes``
    classes with ``per_class(split)`` images each (the synthetic and the photos benchmark); a missing or
    unreadable stamp is False."""
    try:
        recorded = json.loads((dataset_dir / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if recorded.get("digest") != digest:
        return False
    counts = [len(read_split(dataset_dir / "metadata" / s).image_ids) for s in SPLITS]
    expected = [num_classes * per_class(s) for s in SPLITS]
    return counts == expected and not validate_dataset(dataset_dir, num_classes=num_classes)


def is_prepared(config: SyntheticConfig, dataset_dir: Path) -> bool:
    """True if ``dataset_dir`` holds a complete, valid benchmark made with these settings."""
    return holds_benchmark(dataset_dir, config.digest(), config.num_classes, config.per_class)


def prepare_synthetic(config: SyntheticConfig, dataset_dir: str | Path) -> bool:
    """Generate the benchmark into ``dataset_dir`` unless it is already there; True if generated.

    The data is built in a temporary sibling folder and swapped in by rename, so an
    interrupted run leaves the previous dataset (or none), never a half-written one.
    """
    dataset_dir = Path(dataset_dir)
    remove_staging(dataset_dir, "build", "old")  # what a killed run left
    if dataset_dir.is_dir() and is_prepared(config, dataset_dir):
        log.info("%s is up to date (settings digest %s)", dataset_dir, config.digest())
        return False
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    work = staging_folder(dataset_dir, "build")
    try:
        log.info("generating the synthetic benchmark into %s", dataset_dir)
        generate(config, work)
        atomic_write_text(work / STAMP, json.dumps({"digest": config.digest(), "settings": asdict(config)}, indent=2))
        install_folder(work, dataset_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def install_folder(work: Path, dataset_dir: Path) -> None:
    """Put the finished folder ``work`` in the place of ``dataset_dir`` by renames (the old one, if any, is removed)."""
    if dataset_dir.exists():
        old = staging_folder(dataset_dir, "old")  # named as remove_staging finds it, should this be killed here
        old.rmdir()
        dataset_dir.rename(old)
        work.rename(dataset_dir)
        shutil.rmtree(old)
    else:
        work.rename(dataset_dir)


def sample_grid(dataset_dir: str | Path, out_path: str | Path, split: str = "test", per_class: int = 2) -> None:
    """A PNG grid for the docs: per class, images (with GT boxes), and their masks (red, ignore yellow)."""
    dataset_dir = Path(dataset_dir)
    meta = read_split(dataset_dir / "metadata" / split)
    cell = 80
    by_class: dict[int, list[str]] = {}
    for image_id in meta.image_ids:
        by_class.setdefault(meta.labels[image_id], []).append(image_id)
    rows = []
    for label in sorted(by_class):
        tiles = []
        for image_id in by_class[label][:per_class]:
            image = cv2.imread(str(dataset_dir / image_id))
            boxed = image.copy()
            for x0, y0, x1, y1 in meta.boxes.get(image_id, []):
                cv2.rectangle(boxed, (x0, y0), (x1, y1), (0, 255, 0), 1)
            overlay = (image * 0.35).astype(np.uint8)
            if image_id in meta.masks:
                fg = np.zeros(image.shape[:2], bool)
                for mask_path in meta.masks[image_id]:
                    fg |= cv2.imread(str(dataset_dir / mask_path), cv2.IMREAD_GRAYSCALE) > 0
                ignore_path = meta.ignore_masks.get(image_id)
                if ignore_path:
                    ig = (cv2.imread(str(dataset_dir / ignore_path), cv2.IMREAD_GRAYSCALE) > 0) & ~fg
                    overlay[ig] = (0, 220, 255)
                overlay[fg] = (0.5 * overlay[fg] + np.array([0, 0, 160])).astype(np.uint8)
            for tile in (image, boxed, overlay):
                tiles.append(cv2.resize(tile, (cell, cell), interpolation=cv2.INTER_NEAREST))
                tiles.append(np.full((cell, 2, 3), 255, np.uint8))
            tiles.append(np.full((cell, 6, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows, axis=0)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", grid)
    if not ok:
        raise DawsolError(f"{out_path}: could not encode the sample grid")
    atomic_write_bytes(out_path, encoded.tobytes())
