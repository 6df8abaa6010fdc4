"""Plain text: decoded in chunks and cut into sections at paragraph boundaries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from documents.ingestion.extract._common import CharBudget, ExtractionLimits, cut_point
from documents.ingestion.extract._decode import open_text, text_encoding
from documents.ingestion.extract.normalize import normalize_text
from documents.ingestion.types import Section

_HEAD_BYTES = 4096


def _section(raw: str, budget: CharBudget) -> Section | None:
    text = normalize_text(raw)
    if not text.strip():
        return None
    budget.spend(len(text))
    return Section(text=text)


def extract_text(path: Path, *, limits: ExtractionLimits, budget: CharBudget) -> Iterator[Section]:
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES)
    size = limits.section_chars
    pending = ""
    with open_text(path, text_encoding(path, head)) as stream:
        while chunk := stream.read(size):
            pending += chunk
            # Keep up to 2x the target so each cut can land on a paragraph end rather than mid-line.
            while len(pending) >= 2 * size:
                cut = cut_point(pending, 2 * size)
                if section := _section(pending[:cut], budget):
                    yield section
                pending = pending[cut:]
    if section := _section(pending, budget):
        yield section
