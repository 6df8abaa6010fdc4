"""Limits and the section accumulator shared by the format extractors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from documents.ingestion.extract.normalize import normalize_text
from documents.ingestion.types import IngestionError, Section

if TYPE_CHECKING:
    from lxml import etree


@dataclass(frozen=True, slots=True)
class ExtractionLimits:
    """Caps that keep a hostile or absurd file from exhausting the worker.

    The defaults fit real documents with a wide margin (the largest dataset file, an 872-page
    handbook, is ~2.5 M characters); the product's own plan limits (pages, tokens) are applied by
    the caller and should be lower.
    """

    max_pages: int = 5_000
    # A dense A4 page of 6 pt text holds ~20 k characters; far more means a generated/bomb page.
    max_page_chars: int = 200_000
    max_total_chars: int = 100_000_000
    # Sections are cut at a paragraph boundary once they pass this size, so that no format ever
    # holds more than about this much text at once (a hard cut happens at 2x for walls of text).
    section_chars: int = 16_000
    # DOCX (zip) guards, checked against the zip directory before anything is decompressed.
    max_unpacked_bytes: int = 256 * 1024 * 1024
    max_compression_ratio: int = 100
    max_zip_members: int = 10_000
    # PDF parsing runs in a child process by default: pdfium aborts the whole process when an
    # allocation fails, so a memory cap can only be enforced from outside it.
    pdf_isolation: bool = True
    pdf_memory_bytes: int = 1 << 30
    pdf_page_seconds: float = 30.0
    pdf_cpu_seconds: int = 600


class CharBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, amount: int) -> None:
        self.used += amount
        if self.used > self.limit:
            raise IngestionError(
                f"This document holds more than {self.limit:,} characters of text, which is over the limit; "
                "split it into smaller files and upload them separately."
            )


_SPLIT_POINTS = (re.compile(r"\n\n"), re.compile(r"\n"), re.compile(r"\s"))


def cut_point(text: str, size: int) -> int:
    """Where to cut `text` so the first piece is at most `size` long: the last paragraph, line or word end."""
    for pattern in _SPLIT_POINTS:
        ends = [match.start() for match in pattern.finditer(text, size // 2, size)]
        if ends:
            return ends[-1]
    return size


def split_oversized(text: str, size: int) -> Iterator[str]:
    """Cut `text` into pieces of at most `size` characters, preferring paragraph, line, then word ends."""
    while len(text) > size:
        cut = cut_point(text, size)
        yield text[:cut]
        text = text[cut:].lstrip("\n")
    if text:
        yield text


class SectionBuffer:
    """Collects paragraphs under one heading path / page and hands out bounded `Section`s."""

    def __init__(self, *, limits: ExtractionLimits, budget: CharBudget, collapse_spaces: bool) -> None:
        self._limits = limits
        self._budget = budget
        self._collapse_spaces = collapse_spaces
        self._parts: list[str] = []
        self._size = 0
        self.heading_path: tuple[str, ...] = ()
        self.page: int | None = None

    @property
    def size(self) -> int:
        return self._size

    def add(self, text: str, separator: str = "\n\n") -> None:
        """Append one paragraph (callers flush at boundaries they choose, see `add_paragraph`)."""
        if self._parts:
            self._parts.append(separator)
        self._parts.append(text)
        self._size += len(text) + len(separator)

    def add_paragraph(self, text: str, separator: str = "\n\n") -> Iterator[Section]:
        """Append one paragraph; yields a section when the buffer has grown past the soft size."""
        self.add(text, separator)
        if self._size >= self._limits.section_chars:
            yield from self.flush()

    def flush(self) -> Iterator[Section]:
        if not self._parts:
            return
        raw = "".join(self._parts)
        self._parts = []
        self._size = 0
        text = normalize_text(raw, collapse_spaces=self._collapse_spaces)
        if not text.strip():
            return
        for piece in split_oversized(text, 2 * self._limits.section_chars):
            self._budget.spend(len(piece))
            yield Section(text=piece, page=self.page, heading_path=self.heading_path)


def update_heading_path(path: list[tuple[int, str]], level: int, title: str) -> tuple[str, ...]:
    """Pop headings at or below `level` and push the new one; returns the titles as the path."""
    while path and path[-1][0] >= level:
        path.pop()
    path.append((level, title[:300]))
    return tuple(t for _, t in path)


def release_element(element: etree._Element) -> None:
    """Drop an ended element of a streamed (iterparse) tree, whose text has been taken, and the finished siblings
    before it: end events arrive in document order, so only the open ancestors stay, each holding at most its
    current child. The tail stays: it is read when the next sibling starts or the parent ends."""
    element.clear(keep_tail=True)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]
