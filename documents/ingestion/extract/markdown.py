"""Markdown: sections split at ATX and setext headings, text kept as Markdown for the chunker."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from documents.ingestion.extract._common import (
    CharBudget,
    ExtractionLimits,
    SectionBuffer,
    update_heading_path,
)
from documents.ingestion.extract._decode import open_text, text_encoding
from documents.ingestion.extract.normalize import normalize_text
from documents.ingestion.types import Section

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Lines that open a block of their own: a setext underline below them is not a heading.
_BLOCK_START = re.compile(r"^ {0,3}(?:[-*+>|<]|\d{1,9}[.)])|^ {4}|^\t")
_MAX_LINE = 64 * 1024
# A leading "---" is front matter only if it is closed this early; otherwise it is a thematic break, or
# one line would turn a whole file into front matter (no headings, nothing flushed until the end).
_FRONT_MATTER_CHARS = 8 * 1024


def _lines(stream: TextIO) -> Iterator[str]:
    # readline(limit) so that a file without newlines still streams in bounded pieces.
    while line := stream.readline(_MAX_LINE):
        yield line.rstrip("\n")


def _front_matter(lines: Iterator[str]) -> tuple[list[str], int]:
    """The lines read ahead to look for front matter, and how many of them it spans (0: there is none)."""
    ahead: list[str] = []
    size = 0
    for line in lines:
        ahead.append(line)
        size += len(line) + 1
        stripped = line.strip()
        if len(ahead) == 1 and stripped != "---":
            break
        if len(ahead) > 1 and stripped in ("---", "..."):
            return ahead, len(ahead)
        if size > _FRONT_MATTER_CHARS:
            break
    return ahead, 0


def _title(text: str) -> str:
    return normalize_text(text, collapse_spaces=True).strip()


def extract_markdown(path: Path, *, limits: ExtractionLimits, budget: CharBudget) -> Iterator[Section]:
    with path.open("rb") as handle:
        head = handle.read(4096)
    buffer = SectionBuffer(limits=limits, budget=budget, collapse_spaces=False)
    headings: list[tuple[int, str]] = []
    hard_limit = 2 * limits.section_chars
    # The current paragraph is held back from the buffer until it ends, because a setext underline
    # ("===" / "---") below it turns it into a heading that must start a new section.
    paragraph: list[str] = []
    paragraph_size = 0
    fence: str | None = None

    def push_paragraph() -> None:
        nonlocal paragraph_size
        if paragraph:
            buffer.add("\n".join(paragraph), "\n")
            paragraph.clear()
            paragraph_size = 0

    with open_text(path, text_encoding(path, head)) as stream:
        lines = _lines(stream)
        ahead, front_matter = _front_matter(lines)
        for number, line in enumerate(itertools.chain(ahead, lines)):
            stripped = line.strip()
            if number < front_matter:
                buffer.add(line, "\n")
            elif fence is not None:
                buffer.add(line, "\n")
                if stripped.startswith(fence) and not stripped.strip(fence[0]):
                    fence = None
                elif buffer.size >= hard_limit:
                    yield from buffer.flush()
            elif match := _FENCE.match(line):
                push_paragraph()
                fence = match.group(1)
                buffer.add(line, "\n")
            elif match := _ATX.match(line):
                push_paragraph()
                yield from buffer.flush()
                buffer.heading_path = update_heading_path(headings, len(match.group(1)), _title(match.group(2) or ""))
                buffer.add(line, "\n")
            elif paragraph and _SETEXT.match(line) and not _BLOCK_START.match(paragraph[0]):
                yield from buffer.flush()
                level = 1 if stripped.startswith("=") else 2
                buffer.heading_path = update_heading_path(headings, level, _title(" ".join(paragraph)))
                paragraph.append(line)
                push_paragraph()
            elif not stripped:
                push_paragraph()
                buffer.add("", "\n")
                if buffer.size >= limits.section_chars:
                    yield from buffer.flush()
            else:
                paragraph.append(line)
                paragraph_size += len(line) + 1
                if paragraph_size >= hard_limit:
                    push_paragraph()
                    yield from buffer.flush()
    push_paragraph()
    yield from buffer.flush()
