"""pdfium page reader, run either in-process or as a sandboxed child (`python _pdfium_child.py`).

This file imports nothing from the project so that it can run as a bare script: the parent starts
it with `sys.executable`, lowers the address-space and CPU limits here, and reads framed events from
stdout. pdfium terminates the process (SIGABRT) when an allocation fails, so running it in a child
whose memory is capped is what turns a decompression bomb into an error instead of a dead worker.

Events (tuples): ("count", n), ("outline", [(level, title, page_index), ...]), ("page", index, text),
("page_failed", index, detail), ("error", code, detail, page_index_or_None).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_OUTLINE_ENTRIES = 5_000


def _open(path: Path) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(path)
    except OSError as exc:
        raise _Failure("file", str(exc)) from exc
    except pdfium.PdfiumError as exc:
        code = {
            pdfium.raw.FPDF_ERR_PASSWORD: "password",
            pdfium.raw.FPDF_ERR_SECURITY: "security",
            pdfium.raw.FPDF_ERR_FORMAT: "format",
            pdfium.raw.FPDF_ERR_FILE: "file",
        }.get(exc.err_code, "unknown")
        raise _Failure(code, str(exc)) from exc


class _Failure(Exception):
    def __init__(self, code: str, detail: str, page: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.page = page


def _outline(document: Any) -> list[tuple[int, str, int]]:
    entries = []
    try:
        for bookmark in document.get_toc(max_depth=9):
            dest = bookmark.get_dest()
            index = dest.get_index() if dest is not None else None
            if index is not None:
                entries.append((bookmark.level, bookmark.get_title()[:300], index))
            if len(entries) >= MAX_OUTLINE_ENTRIES:
                break
    except Exception:  # a broken outline only costs the heading paths
        return []
    return entries


def iter_events(path: Path, *, max_pages: int, max_page_chars: int, count_only: bool = False) -> Iterator[tuple]:
    import pypdfium2 as pdfium

    try:
        document = _open(path)
    except _Failure as failure:
        yield ("error", failure.code, failure.detail, None)
        return
    try:
        page_count = len(document)
        yield ("count", page_count)
        if count_only:
            return
        if page_count > max_pages:
            yield ("error", "too_many_pages", str(page_count), None)
            return
        yield ("outline", _outline(document))
        for index in range(page_count):
            try:
                page = document[index]
            except pdfium.PdfiumError as exc:
                yield ("page_failed", index, str(exc))
                continue
            try:
                textpage = page.get_textpage()
                try:
                    chars = textpage.count_chars()
                    if chars > max_page_chars:
                        yield ("error", "page_too_long", str(chars), index)
                        return
                    text = textpage.get_text_range() if chars > 0 else ""
                finally:
                    textpage.close()
            except pdfium.PdfiumError as exc:
                yield ("page_failed", index, str(exc))
                continue
            finally:
                page.close()
            yield ("page", index, text)
    finally:
        document.close()


def _write_event(stream: Any, event: tuple) -> None:
    # json escapes lone surrogates, which pdfium can produce from broken font maps.
    payload = json.dumps(event).encode("ascii")
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def _die_with_parent() -> None:
    # If the worker is killed (time limit, OOM killer), the reader must not outlive it.
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the CPU limit and SIGPIPE still end it
        pass


def _limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    import resource

    def lower(which: int, soft: int, hard: int) -> None:
        # Limits inherited from the worker (its own RLIMIT_AS, say) may already be tighter: keep those.
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))

    lower(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    lower(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5)
    lower(resource.RLIMIT_CORE, 0, 0)  # an aborting pdfium must not leave core files


def main() -> None:
    options = json.loads(sys.argv[1])
    import pypdfium2  # noqa: F401 - imported before the cap so the cap measures pdfium's work

    _die_with_parent()
    _limit_resources(options["memory_bytes"], options["cpu_seconds"])
    out = sys.stdout.buffer
    for event in iter_events(
        Path(options["path"]),
        max_pages=options["max_pages"],
        max_page_chars=options["max_page_chars"],
        count_only=options["count_only"],
    ):
        _write_event(out, event)
    _write_event(out, ("done",))


if __name__ == "__main__":
    main()
