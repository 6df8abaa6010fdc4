"""DOCX: the main document part streamed with a hardened lxml parser, split at headings.

python-docx is not used on purpose: it loads the whole part into a tree, and it would read a zip bomb
before anything could check it. Here the zip directory is vetted first, then `word/document.xml`
is streamed through `iterparse` with entity expansion, DTD loading and network access off, and
elements are dropped as soon as they have been read. Headers, footers, footnotes and comments live
in other parts and are never opened.
"""

from __future__ import annotations

import logging
import posixpath
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lxml import etree

from documents.ingestion.extract._common import (
    CharBudget,
    ExtractionLimits,
    SectionBuffer,
    release_element,
    update_heading_path,
)
from documents.ingestion.extract.normalize import normalize_text
from documents.ingestion.types import IngestionError, Section
from documents.ingestion.zipdir import zip_member_count

logger = logging.getLogger(__name__)

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_OFFICE_DOCUMENT = "/officeDocument"
_STYLES = "/styles"
_RATIO_MIN_BYTES = 1 << 20  # small members compress arbitrarily well (runs of zeros) and are harmless
_SMALL_PART_BYTES = 16 << 20  # rels and styles are parsed whole; they are tiny in real files

ZIP_BOMB_MESSAGE = "This DOCX is too large when unpacked (possible zip bomb)."
ENTITY_BOMB_MESSAGE = (
    "This DOCX contains XML entity definitions that would expand enormously (an entity bomb); "
    "Word never writes these, so the file was not processed."
)
_TEXT_TAGS = {W + "t"}
_BREAK_TAGS = {W + "br", W + "cr"}
# Text inside these never shows in the document body: deleted revisions, field codes, and the
# VML fallback copy of drawings whose DrawingML version (mc:Choice) is read instead.
_SKIP_TAGS = {
    W + "del",
    W + "delText",
    W + "instrText",
    W + "moveFrom",
    _MC + "Fallback",
    W + "pPrChange",
    W + "rPrChange",
    W + "sectPrChange",
    W + "tblPrChange",
    W + "trPrChange",
    W + "tcPrChange",
}


def _damaged(reason: str) -> IngestionError:
    return IngestionError(f"This DOCX is damaged and could not be read ({reason}).")


def _parser_options() -> dict:
    # resolve_entities=False stops both billion-laughs expansion and external entities (XXE);
    # huge_tree=False keeps libxml2's own caps on text node size and nesting depth.
    return {"resolve_entities": False, "no_network": True, "load_dtd": False, "huge_tree": False}


def _vet_archive(archive: zipfile.ZipFile, limits: ExtractionLimits) -> None:
    members = archive.infolist()
    if len(members) > limits.max_zip_members:
        raise IngestionError(
            f"This DOCX has {len(members):,} parts, more than the {limits.max_zip_members:,} allowed; "
            "it does not look like a real Word document."
        )
    total = 0
    for member in members:
        if member.flag_bits & 0x1:
            raise IngestionError("This DOCX is password-protected; remove the password and upload it again.")
        total += member.file_size
        ratio = member.file_size / max(member.compress_size, 1)
        if total > limits.max_unpacked_bytes or (
            member.file_size > _RATIO_MIN_BYTES and ratio > limits.max_compression_ratio
        ):
            raise IngestionError(ZIP_BOMB_MESSAGE)


def _read_small(archive: zipfile.ZipFile, name: str) -> bytes | None:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > _SMALL_PART_BYTES:
        raise IngestionError(ZIP_BOMB_MESSAGE)
    return archive.read(info)


def _parse_small(data: bytes) -> etree._Element:
    parser = etree.XMLParser(**_parser_options())
    return etree.fromstring(data, parser)


def _relationship_target(archive: zipfile.ZipFile, rels_name: str, base_dir: str, type_suffix: str) -> str | None:
    data = _read_small(archive, rels_name)
    if data is None:
        return None
    for rel in _parse_small(data).iter(_RELS + "Relationship"):
        if rel.get("Type", "").endswith(type_suffix) and rel.get("TargetMode") != "External":
            target = rel.get("Target", "")
            if target.startswith("/"):
                return target.lstrip("/")
            return posixpath.normpath(posixpath.join(base_dir, target))
    return None


def _heading_levels(archive: zipfile.ZipFile, styles_name: str | None) -> dict[str, int]:
    """Paragraph style id -> heading level (Title 0, heading N -> N), from names or outline levels.

    Style ids are localised (a German Word writes "berschrift1"), but style names and outline levels
    are not, so both are read from styles.xml, following basedOn chains.
    """
    data = _read_small(archive, styles_name) if styles_name else None
    if data is None:
        return {f"Heading{n}": n for n in range(1, 10)} | {"Title": 0}
    names: dict[str, str] = {}
    outline: dict[str, int] = {}
    based_on: dict[str, str] = {}
    for style in _parse_small(data).iter(W + "style"):
        if style.get(W + "type") != "paragraph":
            continue
        style_id = style.get(W + "styleId") or ""
        name = style.find(W + "name")
        names[style_id] = (name.get(W + "val") or "").lower() if name is not None else ""
        level = style.find(f"{W}pPr/{W}outlineLvl")
        if level is not None and (level.get(W + "val") or "").isdigit():
            outline[style_id] = int(level.get(W + "val"))
        parent = style.find(W + "basedOn")
        if parent is not None:
            based_on[style_id] = parent.get(W + "val") or ""
    levels = {}
    for style_id, name in names.items():
        if name == "title":
            levels[style_id] = 0
            continue
        if name.startswith("heading ") and name[8:].isdigit():
            levels[style_id] = int(name[8:])
            continue
        current, hops = style_id, 0
        while current and hops < 20:
            if current in outline:
                if outline[current] < 9:  # outline level 9 means body text
                    levels[style_id] = outline[current] + 1
                break
            current, hops = based_on.get(current, ""), hops + 1
    return levels


def _has_rendered_page_breaks(archive: zipfile.ZipFile, name: str) -> bool:
    """Whether Word recorded where its pages broke (w:lastRenderedPageBreak), scanning the part in chunks."""
    needle = b"lastRenderedPageBreak"
    tail = b""
    with archive.open(name) as stream:
        while chunk := stream.read(1 << 20):
            if needle in tail + chunk[: len(needle)] or needle in chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


class _Paragraph:
    __slots__ = ("outline_level", "page", "parts", "style")

    def __init__(self, page: int | None) -> None:
        self.parts: list[str] = []
        self.style: str | None = None
        self.outline_level: int | None = None
        self.page = page


def _iter_document(
    stream: IO[bytes],
    levels: dict[str, int],
    *,
    count_pages: bool,
    limits: ExtractionLimits,
    budget: CharBudget,
) -> Iterator[Section]:
    buffer = SectionBuffer(limits=limits, budget=budget, collapse_spaces=True)
    headings: list[tuple[int, str]] = []
    page = 1 if count_pages else None
    buffer.page = page
    paragraphs: list[_Paragraph] = []  # a stack: text boxes nest paragraphs inside paragraphs
    cells: list[list[str]] = []  # the open table cells, innermost last
    rows: list[list[str]] = []  # the open table rows, innermost last
    skip_depth = 0
    context = etree.iterparse(
        stream, events=("start", "end"), remove_comments=True, remove_pis=True, **_parser_options()
    )
    for event, element in context:
        tag = element.tag
        if event == "start":
            if tag in _SKIP_TAGS:
                skip_depth += 1
            elif skip_depth:
                continue
            elif tag == W + "p":
                paragraphs.append(_Paragraph(page))
            elif tag == W + "tc":
                cells.append([])
            elif tag == W + "tr":
                rows.append([])
            elif tag == W + "lastRenderedPageBreak" and page is not None:
                page += 1
            continue

        if tag in _SKIP_TAGS:
            skip_depth -= 1
        elif skip_depth:
            pass  # nothing in it is read, but it is released below like everything else
        elif tag in _TEXT_TAGS:
            if paragraphs and element.text:
                paragraphs[-1].parts.append(element.text)
        elif tag == W + "tab" and paragraphs:
            paragraphs[-1].parts.append(" ")
        elif tag in _BREAK_TAGS and paragraphs:
            if element.get(W + "type") not in ("page", "column"):
                paragraphs[-1].parts.append("\n")
        elif tag == W + "noBreakHyphen" and paragraphs:
            paragraphs[-1].parts.append("-")
        elif tag == W + "pStyle" and paragraphs:
            paragraphs[-1].style = element.get(W + "val")
        elif tag == W + "outlineLvl" and paragraphs:
            value = element.get(W + "val") or ""
            paragraphs[-1].outline_level = int(value) + 1 if value.isdigit() and int(value) < 9 else None
        elif tag == W + "p" and paragraphs:
            paragraph = paragraphs.pop()
            text = "".join(paragraph.parts).strip()
            if cells:
                if text:
                    cells[-1].append(text)
            elif text:
                level = paragraph.outline_level
                if level is None and paragraph.style is not None:
                    level = levels.get(paragraph.style)
                if level is not None or paragraph.page != buffer.page:
                    yield from buffer.flush()
                    buffer.page = paragraph.page
                if level is not None:
                    title = normalize_text(text, collapse_spaces=True).replace("\n", " ").strip()
                    buffer.heading_path = update_heading_path(headings, level, title)
                yield from buffer.add_paragraph(text)
        elif tag == W + "tc" and cells:
            cell = " ".join(cells.pop()).strip()
            if rows and cell:
                rows[-1].append(cell)
        elif tag == W + "tr" and rows:
            row = " | ".join(rows.pop())
            if row and cells:
                cells[-1].append(row)  # a table nested in a cell becomes part of that cell
            elif row:
                yield from buffer.add_paragraph(row, separator="\n")

        # Every ended element, skipped or not, whatever its container: what it held has been read into
        # `paragraphs`/`cells`/`rows`, and one kept element type (a deleted run, a bookmark in a
        # hyperlink) would let a 1 MB upload grow a tree of ~16x its unpacked size.
        release_element(element)
    yield from buffer.flush()


def extract_docx(path: Path, *, limits: ExtractionLimits, budget: CharBudget) -> Iterator[Section]:
    # Before ZipFile, which parses the whole directory as it opens (a million members: 460 MB, 13 s).
    if zip_member_count(path, limit=limits.max_zip_members) > limits.max_zip_members:
        raise IngestionError(
            f"This DOCX has more than {limits.max_zip_members:,} parts, the most allowed; "
            "it does not look like a real Word document."
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise _damaged("it is not a valid zip archive") from exc
    with archive:
        _vet_archive(archive, limits)
        try:
            document = _relationship_target(archive, "_rels/.rels", "", _OFFICE_DOCUMENT) or "word/document.xml"
            if document not in archive.NameToInfo:
                raise _damaged("it has no main document part")
            base, name = posixpath.split(document)
            styles = _relationship_target(archive, posixpath.join(base, "_rels", name + ".rels"), base, _STYLES)
            levels = _heading_levels(archive, styles if styles in archive.NameToInfo else None)
            count_pages = _has_rendered_page_breaks(archive, document)
            with archive.open(document) as stream:
                yield from _iter_document(stream, levels, count_pages=count_pages, limits=limits, budget=budget)
        except etree.XMLSyntaxError as exc:
            if "entity" in str(exc.msg).lower():
                # libxml2 refuses entity definitions that amplify (billion laughs) even unexpanded.
                raise IngestionError(ENTITY_BOMB_MESSAGE) from exc
            logger.info("DOCX XML error in %s: %s", path.name, exc.msg)
            raise _damaged("its XML is not well-formed") from exc
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise _damaged(str(exc) or type(exc).__name__) from exc
