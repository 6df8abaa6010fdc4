"""Choosing a text encoding for a file without reading it all into memory."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import TextIO

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_FALLBACK = "cp1252"
# WHATWG maps these labels to windows-1252, and so do browsers: the bytes 0x80-0x9F are cp1252 in practice.
_AS_CP1252 = {"ascii", "latin_1", "iso8859_1", "cp1252"}
_DECLARED_CHARSET = re.compile(
    rb"""<meta[^>]{0,500}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})|<\?xml[^>]{0,200}?encoding\s*=\s*["']([A-Za-z0-9._:-]{1,40})""",
    re.IGNORECASE,
)


def bom_encoding(head: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return None


def is_utf8_file(path: Path, *, chunk_size: int = 256 * 1024) -> bool:
    """True when the whole file decodes as UTF-8, checked in chunks (a 100 MB file takes ~0.1 s)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(chunk_size):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _python_codec(label: str) -> str | None:
    try:
        name = codecs.lookup(label).name.replace("-", "_")
    except LookupError:
        return None
    if name in _AS_CP1252:
        return _FALLBACK
    if name.startswith(("utf_16", "utf_32")):
        return None  # a UTF-16 declaration without a BOM is a lie: the declaration itself was ASCII
    return name


def text_encoding(path: Path, head: bytes) -> str:
    """BOM, else UTF-8 if the whole file is valid UTF-8, else cp1252 (decoded with replacement)."""
    return bom_encoding(head) or ("utf-8" if is_utf8_file(path) else _FALLBACK)


def html_encoding(path: Path, head: bytes) -> str:
    """BOM, else the <meta charset>/XML declaration in the first bytes, else as `text_encoding`."""
    bom = bom_encoding(head)
    if bom:
        return bom
    match = _DECLARED_CHARSET.search(head[:8192])
    if match:
        declared = _python_codec((match.group(1) or match.group(2)).decode("ascii"))
        if declared == "utf_8":
            # Declared UTF-8 files are often not: fall back rather than fill the text with U+FFFD.
            return "utf-8" if is_utf8_file(path) else _FALLBACK
        if declared:
            return declared
    return text_encoding(path, head)


def open_text(path: Path, encoding: str) -> TextIO:
    # newline=None folds \r\n and \r into \n; replacement keeps going past the odd invalid byte.
    return path.open("r", encoding=encoding, errors="replace", newline=None)
