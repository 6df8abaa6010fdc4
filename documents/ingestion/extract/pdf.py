"""PDF text, one section per page, through pdfium (pypdfium2)."""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path

from documents.ingestion.extract import _pdfium_child
from documents.ingestion.extract._common import CharBudget, ExtractionLimits
from documents.ingestion.extract.normalize import normalize_text
from documents.ingestion.types import IngestionError, Section

logger = logging.getLogger(__name__)

_CHILD_SCRIPT = Path(_pdfium_child.__file__)
_MAX_FRAME = 64 * 1024 * 1024

PASSWORD_MESSAGE = "This PDF is password-protected; remove the password and upload it again."
NO_TEXT_MESSAGE = (
    "This PDF has no text layer (it looks like a scan or contains only images), and OCR is not supported; "
    "export it with text or run OCR on it, then upload it again."
)


def _damaged(reason: str) -> IngestionError:
    return IngestionError(f"This PDF is damaged and could not be read ({reason}).")


def _error_from_event(code: str, detail: str, page_index: int | None, limits: ExtractionLimits) -> IngestionError:
    if code == "password":
        return IngestionError(PASSWORD_MESSAGE)
    if code == "security":
        return IngestionError(
            "This PDF uses an encryption scheme that cannot be opened; save an unencrypted copy and upload it again."
        )
    if code == "too_many_pages":
        return IngestionError(
            f"This PDF has {int(detail):,} pages, more than the limit of {limits.max_pages:,}; "
            "split it into smaller files and upload them separately."
        )
    if code == "page_too_long":
        return IngestionError(
            f"Page {page_index + 1} of this PDF holds {int(detail):,} characters, far more than a real page "
            f"(limit {limits.max_page_chars:,}); the file looks malformed or malicious and was not processed."
        )
    reasons = {
        "format": "its structure is broken or the file is truncated",
        "file": "the file could not be read",
    }
    return _damaged(reasons.get(code, detail or "unknown error"))


class _ChildEvents:
    """Runs `_pdfium_child.py` with memory/CPU limits and reads its framed events with timeouts."""

    def __init__(self, path: Path, *, limits: ExtractionLimits, count_only: bool) -> None:
        options = {
            "path": str(path),
            "max_pages": limits.max_pages,
            "max_page_chars": limits.max_page_chars,
            "count_only": count_only,
            "memory_bytes": limits.pdf_memory_bytes,
            "cpu_seconds": limits.pdf_cpu_seconds,
        }
        self._limits = limits
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child, closed in close()
        # -I: ignore PYTHON* variables and the user site; the child needs only the stdlib and pypdfium2.
        self._process = subprocess.Popen(
            [sys.executable, "-I", str(_CHILD_SCRIPT), json.dumps(options)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            close_fds=True,
        )
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._process.stdout, selectors.EVENT_READ)
        self.current_page: int | None = None

    def _read_exact(self, size: int, deadline: float) -> bytes | None:
        chunks = []
        fd = self._process.stdout.fileno()
        while size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise self._timeout()
            chunk = os.read(fd, min(size, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _timeout(self) -> IngestionError:
        self.close()
        where = "opening it" if self.current_page is None else f"page {self.current_page + 1}"
        return IngestionError(
            f"This PDF took too long to read (over {self._limits.pdf_page_seconds:g} s on {where}); "
            "it may be malformed or deliberately hostile."
        )

    def _crash(self) -> IngestionError:
        returncode = self._process.wait()
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 2000))
        logger.warning("pdfium child exited with %s: %s", returncode, self._stderr.read().decode(errors="replace"))
        where = "while opening it" if self.current_page is None else f"on page {self.current_page + 1}"
        if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return IngestionError(
                f"This PDF took too long to read (the reader ran out of CPU time {where}); "
                "it may be malformed or deliberately hostile."
            )
        return IngestionError(
            f"This PDF could not be read safely: the reader ran out of memory or crashed {where} "
            "(a damaged file or a decompression bomb)."
        )

    def __iter__(self) -> Iterator[tuple]:
        while True:
            deadline = time.monotonic() + self._limits.pdf_page_seconds
            header = self._read_exact(4, deadline)
            if header is None:
                raise self._crash()
            (size,) = struct.unpack(">I", header)
            if size > _MAX_FRAME:
                self.close()
                raise _damaged("the reader sent an invalid reply")
            payload = self._read_exact(size, deadline)
            if payload is None:
                raise self._crash()
            event = tuple(json.loads(payload))
            if event[0] == "done":
                return
            if event[0] in ("page", "page_failed"):
                self.current_page = event[1] + 1
            elif event[0] == "outline":
                self.current_page = 0
            yield event

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._selector.close()
        self._process.stdout.close()
        self._stderr.close()


def _events(path: Path, *, limits: ExtractionLimits, count_only: bool = False) -> Iterator[tuple]:
    if not path.is_file():
        raise FileNotFoundError(path)  # our bug or a storage race, not a fault of the user's file
    if not limits.pdf_isolation:
        yield from _pdfium_child.iter_events(
            path, max_pages=limits.max_pages, max_page_chars=limits.max_page_chars, count_only=count_only
        )
        return
    child = _ChildEvents(path, limits=limits, count_only=count_only)
    try:
        yield from child
    finally:
        child.close()


def pdf_page_count(path: Path, *, limits: ExtractionLimits | None = None) -> int:
    """The number of pages, read without extracting any text (for progress reporting).

    Raises `IngestionError` for the same unreadable files as `extract_pdf`.
    """
    limits = limits or ExtractionLimits()
    for event in _events(path, limits=limits, count_only=True):
        if event[0] == "count":
            return event[1]
        if event[0] == "error":
            raise _error_from_event(event[1], event[2], event[3], limits)
    raise _damaged("no pages found")


class _OutlinePaths:
    """Heading path per page from the PDF's bookmarks: the innermost bookmark starting at or before it."""

    def __init__(self, entries: list[list]) -> None:
        stack: list[tuple[int, str]] = []
        located: list[tuple[int, int, tuple[str, ...]]] = []
        for order, (level, title, page_index) in enumerate(entries):
            while stack and stack[-1][0] >= level:
                stack.pop()
            title = normalize_text(title, collapse_spaces=True).strip()
            stack.append((level, title))
            located.append((page_index, order, tuple(t for _, t in stack if t)))
        located.sort()
        self._pages = [page_index for page_index, _, _ in located]
        self._paths = [path for _, _, path in located]

    def for_page(self, page_index: int) -> tuple[str, ...]:
        position = bisect_right(self._pages, page_index)
        return self._paths[position - 1] if position else ()


def extract_pdf(path: Path, *, limits: ExtractionLimits, budget: CharBudget) -> Iterator[Section]:
    outline = _OutlinePaths([])
    pages_seen = pages_failed = 0
    yielded = False
    for event in _events(path, limits=limits):
        kind = event[0]
        if kind == "error":
            raise _error_from_event(event[1], event[2], event[3], limits)
        if kind == "outline":
            outline = _OutlinePaths(event[1])
        elif kind == "page_failed":
            # Viewers show a broken page as blank and go on; so do we, and fail only if all are broken.
            pages_seen += 1
            pages_failed += 1
            logger.info("skipping unreadable PDF page %s of %s: %s", event[1] + 1, path.name, event[2])
        elif kind == "page":
            pages_seen += 1
            text = normalize_text(event[2], collapse_spaces=True, join_hyphens=True)
            if not text.strip():
                continue
            budget.spend(len(text))
            yielded = True
            yield Section(text=text, page=event[1] + 1, heading_path=outline.for_page(event[1]))
    if not yielded:
        if pages_seen and pages_failed == pages_seen:
            raise _damaged("none of its pages could be loaded")
        raise IngestionError(NO_TEXT_MESSAGE)
