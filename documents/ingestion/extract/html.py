"""HTML: the main text only, streamed through lxml's HTML pull parser and split at h1-h6."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from lxml import etree

from documents.ingestion.extract._common import (
    CharBudget,
    ExtractionLimits,
    release_element,
    split_oversized,
    update_heading_path,
)
from documents.ingestion.extract._decode import html_encoding, open_text
from documents.ingestion.extract.normalize import normalize_text
from documents.ingestion.types import IngestionError, Section

_FEED_CHARS = 64 * 1024
# A heading left open (<h2>Intro</h3>, a missing </h2>) would otherwise take the rest of the page as
# its title; update_heading_path keeps 300 characters of a title anyway.
_HEADING_CHARS = 300

# Never body text. header/footer are page chrome only outside <article>/<main> (an article's
# <header> holds its title); ix:header is inline XBRL's hidden block of machine-readable facts.
_SKIP = {
    "head",
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "aside",
    "form",
    "svg",
    "iframe",
    "object",
    "embed",
    "canvas",
    "select",
    "button",
    "dialog",
    "math",
    "ix:header",
    "ix:hidden",
}
_CHROME = {"header", "footer"}
_CONTENT_ROOTS = {"article", "main"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_PARAGRAPH_BLOCKS = {
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "blockquote",
    "pre",
    "ul",
    "ol",
    "dl",
    "section",
    "article",
    "main",
    "figure",
    "hr",
    "address",
    "details",
    "fieldset",
}
_LINE_BLOCKS = {
    "div",
    "li",
    "tr",
    "br",
    "dt",
    "dd",
    "caption",
    "figcaption",
    "summary",
    "center",
    "body",
    "header",
    "footer",
    "legend",
    "thead",
    "tbody",
    "tfoot",
    "option",
}
_CELLS = {"td", "th"}
_CELL_MARK = "\x1f"  # a control character, so it cannot collide with text and is removed by normalisation
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def _hidden(element: etree._Element) -> bool:
    if element.get("hidden") is not None or element.get("aria-hidden", "").lower() == "true":
        return True
    style = element.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))


def _tag(element: etree._Element) -> str:
    tag = element.tag
    return tag.lower() if isinstance(tag, str) else ""


class _Sink:
    """Text of the current section as raw pieces; breaks are kept as counts, not repeated newlines."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self._pending_break = 0

    def text(self, value: str | None) -> None:
        if not value:
            return
        value = _WHITESPACE.sub(" ", value)
        if value == " " and (not self.parts or self._pending_break):
            return
        if self._pending_break and self.parts:
            self.parts.append("\n" * self._pending_break)
        self._pending_break = 0
        self.parts.append(value)
        self.size += len(value)

    def newline(self, count: int) -> None:
        self._pending_break = max(self._pending_break, count)

    def cell_end(self) -> None:
        self.parts.append(_CELL_MARK)

    def take(self) -> str:
        text = self.peek()
        self.parts = []
        self.size = 0
        self._pending_break = 0
        return text

    def peek(self) -> str:
        raw = "".join(self.parts)
        lines = []
        for line in raw.split("\n"):
            if _CELL_MARK in line:
                line = " | ".join(cell.strip() for cell in line.split(_CELL_MARK) if cell.strip())
            lines.append(line.strip())
        return normalize_text("\n".join(lines), collapse_spaces=True)


def extract_html(path: Path, *, limits: ExtractionLimits, budget: CharBudget) -> Iterator[Section]:
    with path.open("rb") as handle:
        head = handle.read(8192)
    # Decoded here and fed as str, so the charset decision is ours (BOM, <meta>, UTF-8 check, cp1252)
    # rather than libxml2's. The HTML parser knows only HTML's own entities, never loads DTDs and
    # never fetches anything. huge_tree lifts libxml2's 10 MB text-node and 256-level depth caps,
    # which otherwise end the parse *silently* (a 15 MB <pre> loses everything after it); the
    # upload size bounds what a text node can cost, and deeper nesting is caught below.
    parser = etree.HTMLPullParser(
        events=("start", "end"), no_network=True, huge_tree=True, remove_comments=True, remove_pis=True
    )
    sink = _Sink()
    headings: list[tuple[int, str]] = []
    heading_path: tuple[str, ...] = ()
    skip_root: etree._Element | None = None
    root_closed = False
    heading: etree._Element | None = None  # the open heading whose text is being collected as a title
    heading_level = 0
    content_depth = 0

    def flush() -> Iterator[Section]:
        text = sink.take()
        for piece in split_oversized(text, 2 * limits.section_chars):
            budget.spend(len(piece))
            yield Section(text=piece, heading_path=heading_path)

    def end_heading(*, closed: bool) -> None:
        nonlocal heading, heading_path
        if closed:
            title = sink.take().replace("\n", " ").strip()
            if title:
                sink.text(title)
        else:
            # Never closed (a new heading or the length cap ended it): the heading is its first line,
            # and whatever else it swallowed stays as the section's text.
            title = next((line.strip() for line in sink.peek().split("\n") if line.strip()), "")
        if title:
            heading_path = update_heading_path(headings, heading_level, title)
        heading = None
        sink.newline(2)

    def handle(event: str, element: etree._Element) -> Iterator[Section]:
        nonlocal skip_root, heading, heading_level, content_depth, root_closed
        tag = _tag(element)
        if event == "end" and element.getparent() is None:
            root_closed = True
        if skip_root is not None:
            if event == "end":
                # Nothing in a skipped subtree is read: released as it ends, or a hidden <div> holding
                # millions of elements would be kept whole until it closed (~30x the upload's size).
                if element is skip_root:
                    skip_root = None
                release_element(element)
            return
        if event == "start":
            # The text just before this element: the previous sibling's tail, or the parent's leading text.
            previous = element.getprevious()
            if previous is not None:
                sink.text(previous.tail)
            elif element.getparent() is not None:
                sink.text(element.getparent().text)
            if heading is not None and sink.size > _HEADING_CHARS:
                end_heading(closed=False)
            if tag in _SKIP or (tag in _CHROME and not content_depth) or _hidden(element) or not tag:
                skip_root = element
                return
            if tag in _CONTENT_ROOTS:
                content_depth += 1
            if tag in _HEADINGS:
                if heading is not None:
                    end_heading(closed=False)  # libxml2 nests <h3> in an open <h2>; to a reader, it ends it
                yield from flush()
                heading, heading_level = element, _HEADINGS[tag]
            elif tag in _PARAGRAPH_BLOCKS:
                sink.newline(2)
            elif tag in _LINE_BLOCKS:
                sink.newline(1)
            return

        # end: the text just before the end tag.
        children = len(element)
        sink.text(element[children - 1].tail if children else element.text)
        if heading is not None and sink.size > _HEADING_CHARS:
            end_heading(closed=False)
        if tag in _CONTENT_ROOTS:
            content_depth -= 1
        if tag in _CELLS:
            sink.cell_end()
        elif element is heading:
            end_heading(closed=True)
        elif tag in _PARAGRAPH_BLOCKS:
            sink.newline(2)
        elif tag in _LINE_BLOCKS:
            sink.newline(1)
        # Cut at a block end once past the target size; past twice the target, cut anywhere, so a
        # page that is one giant inline run still streams.
        at_block = tag in _PARAGRAPH_BLOCKS or tag in _LINE_BLOCKS
        if heading is None and sink.size >= limits.section_chars * (1 if at_block else 2):
            yield from flush()
        release_element(element)

    encoding = html_encoding(path, head)
    with open_text(path, encoding) as stream:
        while chunk := stream.read(_FEED_CHARS):
            parser.feed(chunk)
            for event, element in parser.read_events():
                yield from handle(event, element)
    parser.close()
    for event, element in parser.read_events():
        yield from handle(event, element)
    if not root_closed:
        # libxml2 stops at its nesting limit without an error; every complete parse closes the root.
        raise IngestionError(
            "This HTML page could not be read completely: its markup is nested too deeply "
            "(over 2,048 levels) or broken beyond repair."
        )
    yield from flush()


