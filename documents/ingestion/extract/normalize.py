"""Text clean-up shared by every format: what reaches the database must be valid, NUL-free UTF-8."""

from __future__ import annotations

import re

_SPACE = " "
_DROP = None

# One replacement table: control characters (Postgres rejects NUL; the others are invisible noise),
# invisible format characters, odd spaces and ligatures. \t and \n survive; \r is folded before.
_TABLE: dict[int, str | None] = {code: _DROP for code in range(0x20) if code not in (0x09, 0x0A)}
_TABLE.update({code: _DROP for code in range(0x7F, 0xA0)})
_TABLE.update(
    {
        0x0B: "\n",  # vertical tab and form feed separate lines/pages: keep the break
        0x0C: "\n",
        0x00A0: _SPACE,  # no-break space
        0x1680: _SPACE,
        **{code: _SPACE for code in range(0x2000, 0x200B)},  # en/em/thin/hair spaces
        0x202F: _SPACE,
        0x205F: _SPACE,
        0x3000: _SPACE,
        0x00AD: _DROP,  # soft hyphen: only a line-breaking hint
        0x200B: _DROP,  # zero-width space
        0x2060: _DROP,  # word joiner
        0xFEFF: _DROP,  # byte order mark / zero-width no-break space
        0xFFFE: _DROP,  # noncharacters; pdfium uses U+FFFE to mark a hyphen it removed at a line end
        0xFFFF: _DROP,
        0x2028: "\n",
        0x2029: "\n\n",
        0xFB00: "ff",
        0xFB01: "fi",
        0xFB02: "fl",
        0xFB03: "ffi",
        0xFB04: "ffl",
        0xFB05: "st",
        0xFB06: "st",
    }
)

_NEEDS_TABLE = re.compile("[" + "".join(re.escape(chr(code)) for code in sorted(_TABLE)) + "]")


def _replacement(match: re.Match[str]) -> str:
    return _TABLE[ord(match.group())] or ""


_SURROGATES = re.compile("[\ud800-\udfff]")
_BLANK_RUNS = re.compile(r"\n{3,}")
# A word broken at a line end ("extrac-\ntion"). Only joined before a lowercase letter, so that
# "Jean-\nPaul" or "2020-\n2021" keep their hyphen; "well-\nknown" loses it, which is the cheap trade.
_LINE_END_HYPHEN = re.compile(r"(?<=[^\W\d_])[-\u2010\x02]\n(?=[a-zß-öø-ÿ])")
_HYPHEN_BREAKS = ("-\n", "\u2010\n", "\x02\n")


def normalize_text(text: str, *, collapse_spaces: bool = False, join_hyphens: bool = False) -> str:
    """Clean one run of extracted text.

    Line breaks become \\n, control and invisible characters go, ligatures and exotic spaces become
    their plain forms, trailing spaces go and blank-line runs shrink to one blank line. Lone
    surrogates (which could not be stored as UTF-8) are dropped. Indentation is kept unless
    `collapse_spaces`, which also folds every run of spaces and tabs into one space. The cheap
    substring checks first matter: this runs on every page, and most pages need none of the fixes.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if join_hyphens and any(marker in text for marker in _HYPHEN_BREAKS):
        text = _LINE_END_HYPHEN.sub("", text)
    # re.sub with a lookup beats str.translate(dict) by ~10x here: translate pays per character,
    # this pays per replaced character, and those are rare.
    text = _NEEDS_TABLE.sub(_replacement, text)
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("", text)
    if collapse_spaces:
        text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    else:
        text = "\n".join(line.rstrip() for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")
