"""Deciding what an upload is from its bytes, not from its name or the browser's content type.

The filename only breaks ties between formats that are all plain text (Markdown vs text); binary
content that is not a supported document is refused, whatever it is called.
"""

from __future__ import annotations

import codecs
import re
import zipfile
from pathlib import Path, PurePath

from documents.ingestion.extract import ExtractionLimits
from documents.ingestion.types import IngestionError, Kind, UnsupportedFileType
from documents.ingestion.zipdir import zip_member_count

HEAD_BYTES = 8192
PDF_JUNK_ALLOWANCE = 1024  # readers accept %PDF- anywhere in the first 1 KB; so do we

SUPPORTED = "upload a PDF, Word (.docx), HTML, Markdown or plain-text file"
EMPTY_MESSAGE = "The file is empty."

_MARKDOWN_EXTENSIONS = {".md", ".markdown", ".mdown", ".mkd", ".mkdn", ".mdwn"}
_TEXT_EXTENSIONS = {".txt", ".text", ".log", ".rst", ".csv", ".tsv"}
_HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}

_ZIP = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENCRYPTED_OOXML = "EncryptedPackage".encode("utf-16-le")

# Checked only once the content is known not to be text, so short magics ("BM") cannot misfire.
_BINARY_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"BM", "a BMP image"),
    (8, b"WEBP", "a WebP image"),
    (8, b"WAVE", "an audio file"),
    (4, b"ftyp", "a video, audio or HEIC image file"),
    (0, b"ID3", "an audio file"),
    (0, b"OggS", "an audio or video file"),
    (0, b"\x7fELF", "an executable program"),
    (0, b"MZ", "a Windows executable program"),
    (0, b"\xcf\xfa\xed\xfe", "an executable program"),
    (0, b"\xca\xfe\xba\xbe", "an executable program or Java class"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"Rar!\x1a\x07", "a RAR archive"),
    (0, b"BZh", "a bzip2 archive"),
    (0, b"\xfd7zXZ\x00", "an xz archive"),
    (257, b"ustar", "a tar archive"),
    (0, b"SQLite format 3\x00", "an SQLite database"),
)
_TEXT_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"{\\rtf", "an RTF document (save it as .docx or PDF)"),
    (b"%!PS", "a PostScript file (convert it to PDF)"),
)

_HTML_START = re.compile(
    r"<(?:!doctype\s+html|html|head|body|script|iframe|h[1-6]|div|font|table|a|style|title|b|br|p|meta|link"
    r"|section|article|main|span|ul|ol)[\s>/]",
    re.IGNORECASE,
)
_HTML_ANYWHERE = re.compile(r"<!doctype\s+html|<html[\s>]|<body[\s>]|<head[\s>]", re.IGNORECASE)
_PROLOG = re.compile(r"\s*(?:<\?xml[^>]*>|<!--.*?-->|<!doctype\s+(?!html)[^>]*>)", re.IGNORECASE | re.DOTALL)

_MD_STRONG = re.compile(r"^(?:#{1,6}[ \t]+\S|```|~~~|(?:=+|-+)[ \t]*$)", re.MULTILINE)
_MD_WEAK = re.compile(
    r"\[[^\]\n]+\]\([^)\s]+\)|\*\*[^*\n]+\*\*|^[ \t]{0,3}[-*+][ \t]+\S|^\|.*\|[ \t]*$|^>[ \t]", re.MULTILINE
)

_ALLOWED_CONTROLS = {0x09, 0x0A, 0x0C, 0x0D}
_CP1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}


def _unsupported(detected: str, filename: str | None) -> UnsupportedFileType:
    suffix = PurePath(filename).suffix.lower() if filename else ""
    if suffix in {".pdf", ".docx", ".html", ".htm", ".md", ".txt"}:
        return UnsupportedFileType(
            f"This file is named {suffix} but its content is {detected}, not a supported document; {SUPPORTED}."
        )
    return UnsupportedFileType(f"This file is {detected}, which is not supported; {SUPPORTED}.")


def _decode_head(head: bytes) -> str | None:
    """The head as text if it plausibly is text (BOM, valid UTF-8 or clean 8-bit), else None."""
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if head.startswith(bom):
            # An incremental decoder tolerates a character cut off at the end of the head.
            text = codecs.getincrementaldecoder(codec)("replace").decode(head[len(bom) :])
            return text if _mostly_printable(text) else None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        if sum(1 for byte in head if byte in _CP1252_UNDEFINED) > len(head) // 100:
            return None
        text = head.decode("latin-1")
    return text if _mostly_printable(text) else None


def _mostly_printable(text: str) -> bool:
    if not text:
        return True
    controls = sum(1 for char in text if (ord(char) < 0x20 and ord(char) not in _ALLOWED_CONTROLS) or char == "\x7f")
    return controls <= len(text) // 100


def _looks_like_html(text: str) -> bool:
    position = 0
    while match := _PROLOG.match(text, position):
        if match.end() == position:
            break
        position = match.end()
    rest = text[position:].lstrip()
    return bool(_HTML_START.match(rest)) or bool(_HTML_ANYWHERE.search(text[:4096]))


def _looks_like_markdown(text: str) -> bool:
    strong = len(_MD_STRONG.findall(text))
    weak = len(_MD_WEAK.findall(text))
    return strong >= 3 or (strong >= 1 and strong + weak >= 3)


def _describe_zip(names: set[str] | None, head: bytes) -> str | None:
    """Kind of Office/zip container from its member names (or, without them, the local headers in `head`)."""

    def has(prefix: str) -> bool:
        if names is not None:
            return any(name.startswith(prefix) for name in names)
        return prefix.encode() in head

    if (names is not None and "word/document.xml" in names) or (names is None and has("word/")):
        return None
    if has("xl/"):
        return "an Excel workbook (.xlsx)"
    if has("ppt/"):
        return "a PowerPoint presentation (.pptx)"
    if has("META-INF/container.xml") or b"application/epub+zip" in head:
        return "an EPUB e-book"
    if has("mimetype") and (has("content.xml") or b"opendocument" in head):
        return "an OpenDocument file (.odt/.ods/.odp)"
    return "a zip archive"


def _sniff_text(text: str, filename: str | None) -> Kind:
    suffix = PurePath(filename).suffix.lower() if filename else ""
    if suffix in _MARKDOWN_EXTENSIONS:
        return Kind.MARKDOWN  # READMEs often open with raw HTML (<p align=center>), still Markdown
    if _looks_like_html(text) or suffix in _HTML_EXTENSIONS:
        return Kind.HTML
    if suffix in _TEXT_EXTENSIONS:
        return Kind.TEXT
    return Kind.MARKDOWN if _looks_like_markdown(text) else Kind.TEXT


def sniff_kind(head: bytes, filename: str | None) -> Kind:
    """The document kind from the first few KB of the file (`HEAD_BYTES` is plenty).

    ZIP containers can only be told apart reliably from their central directory at the end of the
    file; from the head alone a ZIP counts as DOCX when its local headers name `word/` parts. Use
    `sniff_kind_path` when the whole file is at hand. Raises `UnsupportedFileType` otherwise.
    """
    if not head:
        raise UnsupportedFileType(EMPTY_MESSAGE)
    if b"%PDF-" in head[: PDF_JUNK_ALLOWANCE + 5]:
        return Kind.PDF
    if head.startswith((_ZIP, _EMPTY_ZIP)):
        described = _describe_zip(None, head)
        if described is None:
            return Kind.DOCX
        raise _unsupported(described, filename)
    if head.startswith(_OLE2):
        raise _ole2_error(_ENCRYPTED_OOXML in head)
    text = _decode_head(head)
    if text is not None:
        stripped = text.lstrip("\ufeff \t\r\n").encode("utf-8", "replace")
        for signature, detected in _TEXT_SIGNATURES:
            if stripped.startswith(signature):
                raise _unsupported(detected, filename)
        return _sniff_text(text, filename)
    for offset, signature, detected in _BINARY_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            raise _unsupported(detected, filename)
    raise _unsupported("binary data of an unknown kind", filename)


def _ole2_error(encrypted: bool) -> UnsupportedFileType:
    if encrypted:
        # Word stores a password-protected .docx inside an OLE2 container as "EncryptedPackage".
        return UnsupportedFileType("This Word document is password-protected; remove the password and upload it again.")
    return UnsupportedFileType(
        "This file is a legacy Microsoft Office document (.doc/.xls/.ppt), which is not supported; "
        "save it as .docx or PDF and upload it again."
    )


def _contains(path: Path, needle: bytes, *, chunk_size: int = 1 << 20) -> bool:
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


def sniff_kind_path(path: Path, *, filename: str | None = None, limits: ExtractionLimits | None = None) -> Kind:
    """The document kind of a file on disk; `filename` is the name it was uploaded as (default: its own).

    This is what ingestion calls: unlike `sniff_kind`, it reads a ZIP's central directory to tell a
    DOCX from other Office files and zips, and scans OLE2 containers for Word's password protection.
    A ZIP with more members than `limits.max_zip_members` is refused before its directory is parsed.
    """
    path = Path(path)
    filename = filename if filename is not None else path.name
    limits = limits or ExtractionLimits()
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    if head.startswith((_ZIP, _EMPTY_ZIP)) and b"%PDF-" not in head[: PDF_JUNK_ALLOWANCE + 5]:
        # This runs in the web process, where parsing a directory of a million members would take
        # hundreds of MB and seconds of CPU.
        if zip_member_count(path, limit=limits.max_zip_members) > limits.max_zip_members:
            raise IngestionError(
                f"This file is a zip archive of more than {limits.max_zip_members:,} parts, far more than a "
                "Word document has; it was not opened."
            )
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            if PurePath(filename).suffix.lower() == ".docx":
                raise IngestionError(
                    "This DOCX is damaged and could not be read (its zip directory is broken or the file is truncated)."
                ) from exc
            raise _unsupported("a damaged zip archive", filename) from exc
        described = _describe_zip(names, head)
        if described is None:
            return Kind.DOCX
        raise _unsupported(described, filename)
    if head.startswith(_OLE2):
        raise _ole2_error(_contains(path, _ENCRYPTED_OOXML))
    return sniff_kind(head, filename)
