"""The wsolevaluation metadata format: read, write and validate ``metadata/<split>/``.

Files per split (plain text, comma-separated, no header, no final newline):

- ``image_ids.txt``: ``<image_id>`` per line; sets the evaluation order.
- ``image_ids_proxy.txt`` (optional): the proxy training subset (ILSVRC train).
- ``class_labels.txt``: ``<image_id>,<label>`` with 0-based labels.
- ``image_sizes.txt``: ``<image_id>,<width>,<height>``; empty for OpenImages.
- ``localization.txt``: box lines ``<image_id>,x0,y0,x1,y1`` (inclusive corners, original
  pixels, several lines per image) or mask lines ``<image_id>,<mask_png>,<ignore_png>``
  (one line per instance; only an image's first line names the ignore PNG).
- ``mask_localization.txt`` (dawsol's extension): mask lines for a split that also has box
  lines (the synthetic benchmark, CUB test with its segmentations), so that box metrics and
  PxAP / pIoU both apply. A split without boxes keeps its mask lines in ``localization.txt``,
  exactly as wsolevaluation ships OpenImages.

Image ids are paths relative to the dataset folder; mask paths are relative to the mask root
(the dataset folder unless ``data.mask_root`` says otherwise).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dawsol.atomic import atomic_write_text
from dawsol.data.groundtruth import mask_fits
from dawsol.errors import DawsolError

SPLITS = ("train", "val", "test")
IMAGE_IDS = "image_ids.txt"
PROXY_IDS = "image_ids_proxy.txt"
CLASS_LABELS = "class_labels.txt"
IMAGE_SIZES = "image_sizes.txt"
LOCALIZATION = "localization.txt"
MASK_LOCALIZATION = "mask_localization.txt"

Box = tuple[int, int, int, int]
# What reading an image or mask file gave: its (width, height), why it is unreadable, or None if missing
FileRead = tuple[int, int] | str | None
# The errors PIL raises for a file that is not a readable image (DecompressionBombError is none of the others)
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# 16-bit grey levels, which Pillow's RGB conversion clips to white: scaled to 8 bits instead
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# modes with no defined 8-bit range, refused by name
UNCONVERTIBLE_MODES = {"I": "32-bit integer pixels", "F": "32-bit floating-point pixels"}
# Bytes that are not UTF-8, as errors="surrogateescape" decodes them
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


@dataclass
class SplitMetadata:
    """One split's metadata; every mapping is keyed by image id."""

    image_ids: list[str]
    labels: dict[str, int]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (width, height)
    boxes: dict[str, list[Box]] = field(default_factory=dict)  # (x0, y0, x1, y1) inclusive
    masks: dict[str, list[str]] = field(default_factory=dict)
    ignore_masks: dict[str, str | None] = field(default_factory=dict)
    proxy_ids: list[str] | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (file, 1-based line or None) and what."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


def _lines(path: Path) -> list[str]:
    """The lines of a metadata file as wsolevaluation reads them (a final newline is tolerated).

    Bytes that are not UTF-8 come back as lone surrogates (``errors="surrogateescape"``).
    """
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _ints(fields: list[str]) -> list[int] | None:
    try:
        return [int(f) for f in fields]
    except ValueError:
        return None


class _Parser:
    """Parses one split folder, collecting format problems instead of stopping at the first."""

    def __init__(self, split_dir: Path) -> None:
        self.split_dir = split_dir
        self.problems: list[Problem] = []
        # (file, line) of each record, so that validation can point at it
        self.label_lines: dict[str, int] = {}
        self.size_lines: dict[str, int] = {}
        self.id_lines: dict[str, int] = {}
        self.box_lines: list[tuple[str, int, str, Box]] = []  # (file, line, image_id, box)
        self.mask_lines: list[tuple[str, int, str, str, str]] = []  # (file, line, id, mask, ignore)
        self.duplicate_ids: list[tuple[int, str, int]] = []  # (line, id, first line)
        self.duplicate_labels: list[tuple[int, str]] = []
        self.duplicate_sizes: list[tuple[int, str]] = []
        self.proxy_lines: list[tuple[int, str]] = []

    def _problem(self, name: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(str(self.split_dir / name), line, message))

    def _read(self, name: str) -> list[tuple[int, str]]:
        """(1-based line number, line) of ``name``; a line that is not UTF-8 is reported and left out."""
        numbered = []
        for n, line in enumerate(_lines(self.split_dir / name), 1):
            bad = _NOT_UTF8.search(line)
            if bad:
                byte = ord(bad.group()) - 0xDC00
                self._problem(name, n, f"not UTF-8 (byte {byte:#04x} at column {bad.start() + 1}); save it as UTF-8")
            else:
                numbered.append((n, line))
        return numbered

    def parse(self) -> SplitMetadata:
        meta = SplitMetadata(image_ids=[], labels={})
        ids_path = self.split_dir / IMAGE_IDS
        if not ids_path.is_file():
            self._problem(IMAGE_IDS, None, "missing file")
        else:
            for n, line in self._read(IMAGE_IDS):
                if not line:
                    self._problem(IMAGE_IDS, n, "empty line")
                elif line in self.id_lines:
                    self.duplicate_ids.append((n, line, self.id_lines[line]))
                else:
                    self.id_lines[line] = n
                    meta.image_ids.append(line)
        self._parse_labels(meta)
        self._parse_sizes(meta)
        for name in (LOCALIZATION, MASK_LOCALIZATION):
            if (self.split_dir / name).is_file():
                self._parse_localization(name, meta)
        proxy_path = self.split_dir / PROXY_IDS
        if proxy_path.is_file():
            meta.proxy_ids = []
            for n, line in self._read(PROXY_IDS):
                self.proxy_lines.append((n, line))
                meta.proxy_ids.append(line)
        return meta

    def _parse_labels(self, meta: SplitMetadata) -> None:
        path = self.split_dir / CLASS_LABELS
        if not path.is_file():
            self._problem(CLASS_LABELS, None, "missing file")
            return
        for n, line in self._read(CLASS_LABELS):
            fields = line.split(",")
            values = _ints(fields[1:]) if len(fields) == 2 else None
            if values is None:
                self._problem(CLASS_LABELS, n, f"expected '<image_id>,<int label>', got {line!r}")
            elif fields[0] in meta.labels:
                self.duplicate_labels.append((n, fields[0]))
            else:
                meta.labels[fields[0]] = values[0]
                self.label_lines[fields[0]] = n

    def _parse_sizes(self, meta: SplitMetadata) -> None:
        path = self.split_dir / IMAGE_SIZES
        if not path.is_file():
            return
        for n, line in self._read(IMAGE_SIZES):
            fields = line.split(",")
            values = _ints(fields[1:]) if len(fields) == 3 else None
            if values is None:
                self._problem(IMAGE_SIZES, n, f"expected '<image_id>,<width>,<height>', got {line!r}")
            elif fields[0] in meta.sizes:
                self.duplicate_sizes.append((n, fields[0]))
            elif values[0] <= 0 or values[1] <= 0:
                self._problem(IMAGE_SIZES, n, f"non-positive size {values[0]}x{values[1]} for {fields[0]}")
            else:
                meta.sizes[fields[0]] = (values[0], values[1])
                self.size_lines[fields[0]] = n

    def _parse_localization(self, name: str, meta: SplitMetadata) -> None:
        kinds: set[str] = set()
        for n, line in self._read(name):
            fields = line.split(",")
            image_id = fields[0]
            values = _ints(fields[1:]) if len(fields) == 5 else None
            if values is not None and name == LOCALIZATION:
                kinds.add("box")
                box: Box = (values[0], values[1], values[2], values[3])
                meta.boxes.setdefault(image_id, []).append(box)
                self.box_lines.append((name, n, image_id, box))
            elif len(fields) == 3 and fields[1]:
                kinds.add("mask")
                mask, ignore = fields[1], fields[2]
                self.mask_lines.append((name, n, image_id, mask, ignore))
                if image_id in meta.masks:
                    meta.masks[image_id].append(mask)
                    if ignore:
                        self._problem(
                            name, n, f"ignore mask on a later line of {image_id} (only the first may have one)"
                        )
                else:
                    meta.masks[image_id] = [mask]
                    meta.ignore_masks[image_id] = ignore or None
            else:
                expected = "<image_id>,x0,y0,x1,y1 or " if name == LOCALIZATION else ""
                self._problem(name, n, f"expected '{expected}<image_id>,<mask>,<ignore>', got {line!r}")
        if len(kinds) > 1:
            self._problem(name, None, f"mixes box and mask lines (put masks in {MASK_LOCALIZATION})")


def read_split(split_dir: str | Path) -> SplitMetadata:
    """Read ``metadata/<split>/`` and check it as ``dawsol validate`` does, less the image and mask files (every
    command that reads a split reads it here, so none checks less); the first problem is a DawsolError naming
    file and line."""
    split_dir = Path(split_dir)
    parser = _Parser(split_dir)
    meta = parser.parse()
    problems = _check_split(split_dir.name, parser, meta, split_dir.parent.parent, None, None, None)
    if problems:
        more = f" (and {len(problems) - 1} more; run `dawsol validate`)" if len(problems) > 1 else ""
        raise DawsolError(f"{problems[0]}{more}")
    return meta


def _join(lines: list[str]) -> str:
    return "\n".join(lines)


def _mask_lines(meta: SplitMetadata) -> list[str]:
    lines = []
    for image_id in meta.image_ids:
        for k, mask in enumerate(meta.masks.get(image_id, [])):
            ignore = (meta.ignore_masks.get(image_id) or "") if k == 0 else ""
            lines.append(f"{image_id},{mask},{ignore}")
    return lines


def write_split(split_dir: str | Path, meta: SplitMetadata) -> None:
    """Write ``meta`` in the wsolevaluation format (each file atomically, no final newline).

    Box lines go to ``localization.txt``; mask lines go there too when the split has no
    boxes, else to ``mask_localization.txt``.
    """
    split_dir = Path(split_dir)
    ids = meta.image_ids
    atomic_write_text(split_dir / IMAGE_IDS, _join(ids))
    atomic_write_text(split_dir / CLASS_LABELS, _join([f"{i},{meta.labels[i]}" for i in ids]))
    atomic_write_text(
        split_dir / IMAGE_SIZES, _join([f"{i},{meta.sizes[i][0]},{meta.sizes[i][1]}" for i in ids if i in meta.sizes])
    )
    box_lines = [f"{i},{x0},{y0},{x1},{y1}" for i in ids for x0, y0, x1, y1 in meta.boxes.get(i, [])]
    mask_lines = _mask_lines(meta)
    if box_lines:
        atomic_write_text(split_dir / LOCALIZATION, _join(box_lines))
    else:
        atomic_write_text(split_dir / LOCALIZATION, _join(mask_lines))
    if box_lines and mask_lines:
        atomic_write_text(split_dir / MASK_LOCALIZATION, _join(mask_lines))
    else:
        (split_dir / MASK_LOCALIZATION).unlink(missing_ok=True)
    if meta.proxy_ids is not None:
        atomic_write_text(split_dir / PROXY_IDS, _join(meta.proxy_ids))
    else:
        (split_dir / PROXY_IDS).unlink(missing_ok=True)


def mode_problem(mode: str) -> str | None:
    """Why an image of PIL ``mode`` cannot become the 8-bit RGB a model reads, or None."""
    if mode in UNCONVERTIBLE_MODES:
        return f"image mode {mode} ({UNCONVERTIBLE_MODES[mode]}) has no 8-bit range; save it as 8-bit RGB or grey"
    return None


def to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """``image`` as 8-bit RGB: 16-bit grey scaled (not clipped), every other 8-bit mode by Pillow's conversion;
    a mode with no 8-bit range is a DawsolError naming ``path``."""
    problem = mode_problem(image.mode)
    if problem is not None:
        raise DawsolError(f"{path}: {problem}")
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.uint32)
        return Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def _read_file(path: Path, decode: bool) -> FileRead:
    """The (width, height) of the image at ``path``, why it is unreadable, or None if it is missing.

    Only the header is read unless ``decode``, which decodes every pixel as well (and so finds
    truncated or corrupt image data); the decompression-bomb check applies either way.
    """
    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return mode_problem(image.mode) or image.size
    except IMAGE_ERRORS as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


def _read_chunk(paths: Sequence[Path], decode: bool) -> list[FileRead]:
    """``_read_file`` of each path: one task of the pool."""
    return [_read_file(path, decode) for path in paths]


def _read_files(paths: Sequence[Path], decode: bool, workers: int, progress: bool) -> dict[Path, FileRead]:
    """``_read_file`` of every path on ``workers`` threads (file reads and PIL's decoders release the GIL)."""
    # chunks keep the number of futures small on a million-image split and still spread a small one
    size = max(1, min(256, len(paths) // (4 * workers)))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    read: dict[Path, FileRead] = {}
    desc = "decoding images" if decode else "reading image headers"
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(paths), desc=desc, unit="file", disable=not progress) as bar,
    ):
        for chunk, results in zip(chunks, pool.map(functools.partial(_read_chunk, decode=decode), chunks), strict=True):
            read.update(zip(chunk, results, strict=True))
            bar.update(len(chunk))
    return read


def _files(parser: _Parser, dataset_dir: Path, mask_root: Path) -> set[Path]:
    """The image and mask files a parsed split names."""
    images = {dataset_dir / image_id for image_id in parser.id_lines}
    masks = {mask_root / path for *_, mask, ignore in parser.mask_lines for path in (mask, ignore) if path}
    return images | masks


def _check_split(
    split: str,
    parser: _Parser,
    meta: SplitMetadata,
    dataset_dir: Path,
    mask_root: Path | None,
    num_classes: int | None,
    read: Mapping[Path, FileRead] | None,
) -> list[Problem]:
    """Every problem of a parsed split; its image and mask files only where ``read`` holds what reading them
    gave (``validate_dataset``), its metadata alone otherwise (``read_split``)."""
    split_dir = parser.split_dir
    problems = parser.problems

    def add(name: str, line: int | None, message: str) -> None:
        problems.append(Problem(str(split_dir / name), line, message))

    known = parser.id_lines
    for n, image_id, first in parser.duplicate_ids:
        add(IMAGE_IDS, n, f"duplicate image id {image_id} (first on line {first})")
    actual: dict[str, tuple[int, int]] = {}  # image id -> (width, height) of its file
    for image_id, n in known.items():
        path = dataset_dir / image_id
        result = read[path] if read is not None else ()
        if result is None:
            add(IMAGE_IDS, n, f"image file missing: {path}")
        elif isinstance(result, str):
            add(IMAGE_IDS, n, f"image {path} unreadable: {result}")
        elif result:  # () where the files are not read
            actual[image_id] = result
        if (split_dir / CLASS_LABELS).is_file() and image_id not in meta.labels:
            add(IMAGE_IDS, n, f"{image_id} has no label in {CLASS_LABELS}")

    for n, image_id in parser.duplicate_labels:
        add(CLASS_LABELS, n, f"duplicate image id {image_id}")
    for image_id, label in meta.labels.items():
        n = parser.label_lines[image_id]
        if image_id not in known:
            add(CLASS_LABELS, n, f"unknown image id {image_id} (not in {IMAGE_IDS})")
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            add(CLASS_LABELS, n, f"label {label} of {image_id} out of range ({bound})")

    for n, image_id in parser.duplicate_sizes:
        add(IMAGE_SIZES, n, f"duplicate image id {image_id}")
    for image_id, (w, h) in meta.sizes.items():
        n = parser.size_lines[image_id]
        if image_id not in known:
            add(IMAGE_SIZES, n, f"unknown image id {image_id} (not in {IMAGE_IDS})")
        elif image_id in actual and actual[image_id] != (w, h):
            aw, ah = actual[image_id]
            add(IMAGE_SIZES, n, f"size {w}x{h} of {image_id}, but {dataset_dir / image_id} is {aw}x{ah}")

    for name, n, image_id, (x0, y0, x1, y1) in parser.box_lines:
        if image_id not in known:
            add(name, n, f"unknown image id {image_id} (not in {IMAGE_IDS})")
        if x1 < x0 or y1 < y0:
            add(name, n, f"box ({x0},{y0},{x1},{y1}) of {image_id} has x1 < x0 or y1 < y0")
        if min(x0, y0) < 0:
            add(name, n, f"box ({x0},{y0},{x1},{y1}) of {image_id} has a negative coordinate")
        if image_id in meta.sizes:
            w, h = meta.sizes[image_id]
            if x1 >= w or y1 >= h:
                add(name, n, f"box ({x0},{y0},{x1},{y1}) of {image_id} lies outside the {w}x{h} image")
        else:
            add(name, n, f"box of {image_id} but no size for it in {IMAGE_SIZES}")

    for name, n, image_id, mask, ignore in parser.mask_lines:
        if image_id not in known:
            add(name, n, f"unknown image id {image_id} (not in {IMAGE_IDS})")
        image_size = actual.get(image_id, meta.sizes.get(image_id))
        if read is None or mask_root is None:
            continue
        for path in [mask_root / p for p in (mask, ignore) if p]:
            result = read[path]
            if result is None:
                add(name, n, f"mask file missing: {path}")
            elif isinstance(result, str):
                add(name, n, f"mask {path} unreadable: {result}")
            elif image_size is not None and not mask_fits(result, image_size):
                iw, ih = image_size
                add(name, n, f"mask {path} is {result[0]}x{result[1]} but image {image_id} is {iw}x{ih}")

    if split in ("val", "test"):
        if (split_dir / IMAGE_IDS).is_file() and not known:
            add(IMAGE_IDS, None, f"no images: the {split} split is empty (evaluation needs at least one)")
        for image_id, n in known.items():
            if image_id not in meta.boxes and image_id not in meta.masks:
                add(IMAGE_IDS, n, f"{image_id} has no box or mask ({split} images need localization labels)")
            elif meta.boxes and image_id not in meta.boxes:
                add(IMAGE_IDS, n, f"{image_id} has no box in {LOCALIZATION} (the box metrics would leave it out)")
            elif meta.masks and image_id not in meta.masks:
                add(IMAGE_IDS, n, f"{image_id} has no mask (the mask metrics would leave it out)")
        if not meta.boxes and (split_dir / MASK_LOCALIZATION).is_file():
            add(LOCALIZATION, None, f"no box lines, but {MASK_LOCALIZATION} says this split has boxes")

    seen: set[str] = set()
    for n, image_id in parser.proxy_lines:
        if image_id not in known:
            add(PROXY_IDS, n, f"unknown image id {image_id} (not in {IMAGE_IDS})")
        if image_id in seen:
            add(PROXY_IDS, n, f"duplicate image id {image_id}")
        seen.add(image_id)
    return problems


def validate_dataset(
    dataset_dir: str | Path,
    mask_root: str | Path | None = None,
    num_classes: int | None = None,
    *,
    decode: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> list[Problem]:
    """Every problem of a prepared dataset, with file and line; an empty list means valid.

    Checks each split of ``metadata/{train,val,test}``: malformed or non-UTF-8 lines, unknown
    or duplicate image ids, labels outside ``0..num_classes-1`` (only ``< 0`` when not given),
    boxes with x1 < x0 / y1 < y0 or outside the image, empty val/test splits and val/test
    images without localization labels, and missing image or mask files (masks relative to
    ``mask_root``, default the dataset folder). Every image and mask is opened with PIL: files
    that are no image or a decompression bomb (``Image.MAX_IMAGE_PIXELS``) are reported, each
    image's size is compared with ``image_sizes.txt`` and each mask's with its image's. Only
    headers are read unless ``decode``, which also decodes every pixel (finds truncated or
    corrupt data; much slower). ``workers`` threads read the files; ``progress`` shows a bar.
    """
    if workers < 1:
        raise DawsolError(f"--workers must be at least 1, got {workers}")
    dataset_dir = Path(dataset_dir)
    root = Path(mask_root) if mask_root is not None else dataset_dir
    if not dataset_dir.is_dir():
        return [Problem(str(dataset_dir), None, "dataset folder not found (run `dawsol prepare <dataset>`)")]
    parsed: dict[str, tuple[_Parser, SplitMetadata]] = {}
    for split in SPLITS:
        parser = _Parser(dataset_dir / "metadata" / split)
        if parser.split_dir.is_dir():
            parsed[split] = (parser, parser.parse())
    paths = sorted(set().union(*(_files(parser, dataset_dir, root) for parser, _ in parsed.values())))
    read = _read_files(paths, decode, workers, progress)
    problems: list[Problem] = []
    for split in SPLITS:
        if split in parsed:
            problems.extend(_check_split(split, *parsed[split], dataset_dir, root, num_classes, read))
        else:
            problems.append(Problem(str(dataset_dir / "metadata" / split), None, "split folder missing"))
    return problems
