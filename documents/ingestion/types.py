"""Plain data passed between the ingestion stages (extract -> chunk -> embed -> store).

Nothing here touches Django: the stages are pure functions over these values so that they can be
tested and benchmarked without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"


CONTENT_TYPES: dict[Kind, str] = {
    Kind.PDF: "application/pdf",
    Kind.DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    Kind.HTML: "text/html",
    Kind.MARKDOWN: "text/markdown",
    Kind.TEXT: "text/plain",
}


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text from one page (PDF) or one heading section (DOCX/HTML/Markdown)."""

    text: str
    page: int | None = None  # 1-based; None where the format has no pages
    heading_path: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """A chunk before it has a vector: what the splitter produced, with where it came from."""

    ordinal: int
    text: str
    token_count: int
    page: int | None
    heading_path: tuple[str, ...]


class IngestionError(Exception):
    """A document that cannot be ingested, with a sentence the user can act on.

    `permanent` errors (encrypted, corrupt, bomb, no text) never retry; the others are transient
    (a provider outage) and go through the task's bounded retries.
    """

    permanent: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedFileType(IngestionError):
    pass


class TransientIngestionError(IngestionError):
    permanent = False
