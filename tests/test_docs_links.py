"""Every relative link in README.md and docs/*.md points to a file of the project, and an anchor to a heading."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target); a target ends at the first space (an optional "title" follows) or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def links(markdown: str) -> list[str]:
    """The link targets of a page, leaving out code blocks and inline code."""
    prose = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return LINK.findall(prose)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, repeated headings numbered as GitHub does (`-1`, `-2`, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = anchor(heading)
        count = seen.get(slug, 0)
        result.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return result


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) and not target.startswith("//")


def test_anchor_follows_github():
    assert anchor("Results of the default run") == "results-of-the-default-run"
    assert anchor("`dawsol localize`'s outputs") == "dawsol-localizes-outputs"
    assert anchor("1.5 The alignment loss $\\mathcal L_d$ with MMD") == "15-the-alignment-loss-mathcal-l_d-with-mmd"


def test_links_skip_code_and_urls():
    page = '[a](docs/a.md) `[b](b.md)` ![c](c.png "title")\n```\n[d](d.md)\n```\n[e](https://example.org)'
    assert [target for target in links(page) if is_relative(target)] == ["docs/a.md", "c.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(PROJECT_ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if not is_relative(target):
            continue
        path_part, _, fragment = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no file {os.path.relpath(destination, PROJECT_ROOT)}")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading with anchor #{fragment} in {destination.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)
