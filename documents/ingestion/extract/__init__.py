"""Text extraction: a file on disk -> a lazy stream of `Section`s, bounded in memory and time.

`extract_sections` is a generator: nothing is read until it is iterated, each format holds at most
about `ExtractionLimits.section_chars` of text at a time (plus, for PDFs, one page), and every
problem with the file surfaces as an `IngestionError` carrying a sentence the user can act on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from documents.ingestion.extract._common import CharBudget, ExtractionLimits
from documents.ingestion.extract.docx import extract_docx
from documents.ingestion.extract.html import extract_html
from documents.ingestion.extract.markdown import extract_markdown
from documents.ingestion.extract.normalize import normalize_text
from documents.ingestion.extract.pdf import extract_pdf, pdf_page_count
from documents.ingestion.extract.text import extract_text
from documents.ingestion.types import IngestionError, Kind, Section, TransientIngestionError

__all__ = ["ExtractionLimits", "extract_sections", "normalize_text", "pdf_page_count"]

_EXTRACTORS = {
    Kind.PDF: extract_pdf,
    Kind.DOCX: extract_docx,
    Kind.HTML: extract_html,
    Kind.MARKDOWN: extract_markdown,
    Kind.TEXT: extract_text,
}
_NAMES = {Kind.PDF: "PDF", Kind.DOCX: "DOCX", Kind.HTML: "HTML", Kind.MARKDOWN: "Markdown", Kind.TEXT: "text"}


def extract_sections(path: Path, kind: Kind, *, limits: ExtractionLimits | None = None) -> Iterator[Section]:
    """Yield the document's text as sections, in document order.

    PDF: one section per page with text (1-based `page`, heading path from the bookmarks); pages
    without text are skipped, and a PDF with no text at all fails. DOCX/HTML/Markdown: one section
    per heading (and per rendered page for DOCX where Word recorded page breaks), carrying the
    heading path; long sections are cut at paragraph boundaries. Text: paragraph-bounded pieces.
    """
    limits = limits or ExtractionLimits()
    budget = CharBudget(limits.max_total_chars)
    produced = False
    try:
        for section in _EXTRACTORS[Kind(kind)](Path(path), limits=limits, budget=budget):
            produced = True
            yield section
    except IngestionError:
        raise
    except FileNotFoundError:
        raise  # a bug or a storage race, not the user's file
    except SoftTimeLimitExceeded:
        raise  # the task ran out of time, the file may be fine: the ingestion service says so
    except OSError as exc:
        raise TransientIngestionError("The uploaded file could not be read from storage; it will be retried.") from exc
    except (MemoryError, RecursionError) as exc:
        raise IngestionError("This file is too complex to read within the memory limits.") from exc
    except Exception as exc:  # no raw library error may reach the user for a bad file
        raise IngestionError(f"This {_NAMES[Kind(kind)]} file could not be read ({type(exc).__name__}).") from exc
    if not produced:
        raise IngestionError(f"This {_NAMES[Kind(kind)]} file contains no text.")
