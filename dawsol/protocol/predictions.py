"""A separate classifier's predictions for the two-stage Top-1 Loc: one CSV dialect for every command.

``image_id,predicted_label`` per line; a header line (its second field not an integer) may come
first; blank lines are skipped. ``dawsol metrics --predictions`` reads one split's file and
``dawsol evaluate --predictions`` one file for val and test: every id must belong to one of the
splits evaluated, no id may appear twice, and a split the file speaks of must be covered whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from dawsol.errors import DawsolError


def _is_label(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def read_predictions(
    path: Path, splits: Mapping[str, Sequence[str]], evaluated: Mapping[str, Sequence[str]] | None = None
) -> dict[str, dict[str, int]]:
    """The predictions of each split in ``splits`` (name -> its image ids) that the file covers.

    ``evaluated`` (default: all of ``splits``) are the ids that will be scored, e.g. a sampled val
    subset: a split the file speaks of must cover those. Raises a DawsolError naming the file and
    line for a malformed line, an id of no split, a second prediction for an id, a split covered
    in part, or a file that covers none of them.
    """
    owner = {image_id: split for split, ids in splits.items() for image_id in ids}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DawsolError(f"{path}: cannot read the predictions ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DawsolError(f"{path}: the predictions are not a UTF-8 text file") from None
    found: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        image_id, _, value = line.rpartition(",")
        image_id = image_id.strip()
        if number == 1 and image_id and not _is_label(value) and image_id not in owner:
            continue  # a header row
        if not image_id or not _is_label(value):
            raise DawsolError(f"{path}:{number}: expected 'image_id,predicted_class', got {line!r}")
        if image_id not in owner:
            where = "the split's image_ids.txt" if len(splits) == 1 else f"the {' or '.join(splits)} split"
            raise DawsolError(f"{path}:{number}: image {image_id!r} is not in the split ({where})")
        if image_id in found:
            raise DawsolError(f"{path}:{number}: a second prediction for image {image_id!r}")
        found[image_id] = int(value)
    covered: dict[str, dict[str, int]] = {}
    for split, all_ids in splits.items():
        ids = (evaluated or splits)[split]
        spoken = any(i in found for i in all_ids)
        missing = [i for i in ids if i not in found]
        if (spoken and missing) or (not found and ids):
            count = f"{len(missing)} of {len(ids)} missing"
            raise DawsolError(f"{path}: no prediction for image {missing[0]!r} of the {split} split ({count})")
        if spoken:
            covered[split] = {i: found[i] for i in ids}
    return covered
