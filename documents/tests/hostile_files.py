"""Builders for valid, broken and hostile upload files, generated at runtime as bytes.

Nothing here is stored on disk in the repository: every file is built from first principles (raw PDF
syntax, zipfile, zlib) so that the fixtures are small, reviewable and need no third-party writer. Later
integration tests reuse these builders to push the same files through the upload -> ingestion path.
"""

from __future__ import annotations

import hashlib
import io
import random
import string
import struct
import zlib
from collections.abc import Iterator, Sequence

_PASSWORD_PADDING = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("cp1252") + b")"


def _text_content(lines: Sequence[str], *, font_size: int = 12) -> bytes:
    ops = [b"BT", b"/F1 %d Tf" % font_size, b"%d TL" % (font_size + 4), b"72 740 Td"]
    for line in lines:
        ops.append(_pdf_string(line) + b" Tj T*")
    ops.append(b"ET")
    return b"\n".join(ops) + b"\n"


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


class _StandardSecurity:
    """PDF Standard security handler, revision 3 (RC4, 128-bit): ISO 32000-1 algorithms 2, 3 and 5.

    Written out here because pypdfium2 cannot write encrypted files and this keeps pypdf out of the
    test dependencies.
    """

    key_length = 16
    permissions = -3904  # print/copy bits cleared: a typical "protected" document

    def __init__(self, *, user_password: str, owner_password: str, file_id: bytes) -> None:
        self.file_id = file_id
        user = (user_password.encode("latin-1") + _PASSWORD_PADDING)[:32]
        owner = (owner_password.encode("latin-1") + _PASSWORD_PADDING)[:32]

        owner_key = hashlib.md5(owner).digest()
        for _ in range(50):
            owner_key = hashlib.md5(owner_key).digest()
        o_value = _rc4(owner_key, user)
        for i in range(1, 20):
            o_value = _rc4(bytes(b ^ i for b in owner_key), o_value)
        self.o_value = o_value

        key = hashlib.md5(user + o_value + struct.pack("<i", self.permissions) + file_id).digest()
        for _ in range(50):
            key = hashlib.md5(key[: self.key_length]).digest()
        self.key = key[: self.key_length]

        u_value = _rc4(self.key, hashlib.md5(_PASSWORD_PADDING + file_id).digest())
        for i in range(1, 20):
            u_value = _rc4(bytes(b ^ i for b in self.key), u_value)
        self.u_value = u_value + bytes(16)

    def encrypt(self, number: int, data: bytes) -> bytes:
        object_key = hashlib.md5(self.key + struct.pack("<i", number)[:3] + b"\x00\x00").digest()
        return _rc4(object_key[: min(self.key_length + 5, 16)], data)

    def dictionary(self) -> bytes:
        return b"<< /Filter /Standard /V 2 /R 3 /Length 128 /P %d /O <%s> /U <%s> >>" % (
            self.permissions,
            self.o_value.hex().encode(),
            self.u_value.hex().encode(),
        )


class _PdfWriter:
    """Just enough of a PDF serializer: numbered objects, optional streams, a classic xref table."""

    def __init__(self) -> None:
        self._objects: list[tuple[bytes, bytes | None]] = []

    def reserve(self) -> int:
        self._objects.append((b"null", None))
        return len(self._objects)

    def set(self, number: int, body: bytes, stream: bytes | None = None) -> None:
        self._objects[number - 1] = (body, stream)

    def add(self, body: bytes, stream: bytes | None = None) -> int:
        number = self.reserve()
        self.set(number, body, stream)
        return number

    def serialize(self, *, root: int, security: _StandardSecurity | None = None) -> bytes:
        trailer = b"/Root %d 0 R" % root
        if security is not None:
            # The encryption dictionary holds no strings or streams, so it needs no encrypting itself.
            encrypt = self.add(security.dictionary())
            file_id = security.file_id.hex().encode()
            trailer += b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (encrypt, file_id, file_id)
        out = io.BytesIO()
        out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, (body, stream) in enumerate(self._objects, start=1):
            offsets.append(out.tell())
            out.write(b"%d 0 obj\n" % number)
            if stream is None:
                out.write(body)
            else:
                if security is not None:
                    stream = security.encrypt(number, stream)
                out.write(body[:-2] + b" /Length %d >>\nstream\n" % len(stream))
                out.write(stream + b"\nendstream")
            out.write(b"\nendobj\n")
        xref_at = out.tell()
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1))
        for offset in offsets:
            out.write(b"%010d 00000 n \n" % offset)
        out.write(b"trailer\n<< /Size %d %s >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, trailer, xref_at))
        return out.getvalue()


def _build_pdf(
    page_streams: Sequence[bytes | tuple[bytes, bytes]],
    *,
    image: bool = False,
    security: _StandardSecurity | None = None,
) -> bytes:
    writer = _PdfWriter()
    catalog = writer.reserve()
    pages = writer.reserve()
    font = writer.add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    resources = b"/Font << /F1 %d 0 R >>" % font
    if image:
        # An 8x8 grey checkerboard: a page with pixels and no text operators, like a scan.
        pixels = bytes((0 if (x + y) % 2 else 255) for y in range(8) for x in range(8))
        image_ref = writer.add(
            b"<< /Type /XObject /Subtype /Image /Width 8 /Height 8 /ColorSpace /DeviceGray /BitsPerComponent 8 >>",
            pixels,
        )
        resources += b" /XObject << /Im1 %d 0 R >>" % image_ref
    kids = []
    for content in page_streams:
        # A page is either a plain content stream or (filter entries, already encoded stream).
        stream_filter, data = content if isinstance(content, tuple) else (b"", content)
        content_ref = writer.add(b"<< " + stream_filter + b" >>", data)
        kids.append(
            writer.add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << %s >> "
                b"/Contents %d 0 R >>" % (pages, resources, content_ref)
            )
        )
    kid_refs = b" ".join(b"%d 0 R" % kid for kid in kids)
    writer.set(pages, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kid_refs, len(kids)))
    writer.set(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % pages)
    return writer.serialize(root=catalog, security=security)


SAMPLE_PDF_PAGES: tuple[tuple[str, ...], ...] = (
    ("Docent sample document", "Page one talks about apples and orchards."),
    ("The second page covers text extrac-", "tion from portable documents."),
    ("Page three closes with pears and plums.",),
)
PDF_PASSWORD = "s3cret"


def sample_pdf(pages: Sequence[Sequence[str]] = SAMPLE_PDF_PAGES) -> bytes:
    """A small valid PDF with one text page per entry of `pages` (three by default)."""
    return _build_pdf([_text_content(lines) for lines in pages])


def encrypted_pdf(password: str = PDF_PASSWORD) -> bytes:
    """The sample PDF encrypted with a user password (RC4-128), so it cannot be opened without it.

    With password="" it is a "permissions only" PDF: encrypted, but any reader may open it.
    """
    security = _StandardSecurity(user_password=password, owner_password="owner-" + password, file_id=bytes(range(16)))
    return _build_pdf([_text_content(lines) for lines in SAMPLE_PDF_PAGES], security=security)


def truncated_pdf() -> bytes:
    """A real PDF cut in half, as an interrupted upload or a broken disk would leave it."""
    data = sample_pdf()
    return data[: len(data) // 2]


def image_only_pdf(page_count: int = 2) -> bytes:
    """A PDF whose pages only paint an image and carry no text layer: what a scanner produces."""
    return _build_pdf([b"q 400 0 0 400 100 200 cm /Im1 Do Q\n"] * page_count, image=True)


def _repeated_deflate(chunk: bytes, repeats: int) -> bytes:
    """zlib data inflating to `chunk * repeats`, built in milliseconds.

    A full flush resets the compressor, so every chunk after the first compresses to the same bytes:
    compress the chunk once and repeat its output instead of deflating gigabytes.
    """
    compressor = zlib.compressobj(9)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    header, block = first[:2], first[2:]
    checksum = 1
    for _ in range(repeats):
        checksum = zlib.adler32(chunk, checksum)
    # b"\x03\x00" is an empty final fixed-Huffman block: it ends the deflate stream.
    return header + block * repeats + b"\x03\x00" + struct.pack(">I", checksum)


def pdf_decompression_bomb(inflated_bytes: int = 1 << 30, payload: bytes = b" ") -> bytes:
    """A two-page PDF: a normal first page, then a content stream inflating to `inflated_bytes` (1 GiB).

    The stream is deflated twice (/Filter [/FlateDecode /FlateDecode]) so the file stays a few KB.
    `payload` is what the stream repeats: whitespace by default, or text operators such as
    b"BT /F1 1 Tf (A) Tj ET " for a page that would hold hundreds of millions of characters.
    """
    chunk_size = 1 << 20
    chunk = (payload * (chunk_size // len(payload) + 1))[: chunk_size - chunk_size % len(payload)]
    inner = _repeated_deflate(chunk, max(1, inflated_bytes // len(chunk)))
    outer = zlib.compress(inner, 9)
    bomb = (b"/Filter [/FlateDecode /FlateDecode]", outer)
    return _build_pdf([_text_content(["A page before the bomb."]), bomb])


class _ZipEntry:
    def __init__(self, name: str, data: bytes | None = None) -> None:
        self.name = name.encode()
        self.crc = 0
        self.size = 0
        self.compressed = b""
        if data is not None:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            self.compressed = compressor.compress(data) + compressor.flush()
            self.crc = zlib.crc32(data)
            self.size = len(data)


def _zip(
    entries: Sequence[_ZipEntry], *, declared_sizes: dict[str, int] | None = None, declared_count: int | None = None
) -> bytes:
    """A zip written by hand, so that an entry's declared size, or the member count, can differ from the truth."""
    declared_sizes = declared_sizes or {}
    count = len(entries) if declared_count is None else declared_count
    out = io.BytesIO()
    central = []
    for entry in entries:
        size = declared_sizes.get(entry.name.decode(), entry.size)
        offset = out.tell()
        fields = (20, 0, 8, 0, 0x21, entry.crc, len(entry.compressed), size, len(entry.name), 0)
        out.write(b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", *fields) + entry.name + entry.compressed)
        central.append(
            b"PK\x01\x02"
            + struct.pack(
                "<HHHHHHIIIHHHHHII",
                20,
                20,
                0,
                8,
                0,
                0x21,
                entry.crc,
                len(entry.compressed),
                size,
                len(entry.name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + entry.name
        )
    directory_at = out.tell()
    directory = b"".join(central)
    out.write(directory)
    out.write(
        b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(directory), directory_at, 0)
    )
    return out.getvalue()


_W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_R_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_DOC_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"

_CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/word/document.xml"
 ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>
<Override PartName="/word/styles.xml"
 ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.styles+xml"/>
<Override PartName="/word/header1.xml"
 ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.header+xml"/>
<Override PartName="/word/footer1.xml"
 ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.footer+xml"/>
</Types>"""
_PACKAGE_RELS = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="{_REL_NS}">
<Relationship Id="rId1" Type="{_DOC_REL}/officeDocument" Target="word/document.xml"/>
</Relationships>"""
_DOCUMENT_RELS = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="{_REL_NS}">
<Relationship Id="rId1" Type="{_DOC_REL}/styles" Target="styles.xml"/>
<Relationship Id="rId2" Type="{_DOC_REL}/header" Target="header1.xml"/>
<Relationship Id="rId3" Type="{_DOC_REL}/footer" Target="footer1.xml"/>
</Relationships>"""


def _style(style_id: str, name: str, outline: int | None = None) -> str:
    ppr = f'<w:pPr><w:outlineLvl w:val="{outline}"/></w:pPr>' if outline is not None else ""
    return f'<w:style w:type="paragraph" w:styleId="{style_id}"><w:name w:val="{name}"/>{ppr}</w:style>'


_STYLES_XML = (
    f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:styles xmlns:w="{_W_NS}">'
    + _style("Normal", "Normal")
    + _style("Title", "Title")
    + _style("Heading1", "heading 1", 0)
    # A German Word names its style ids after the localised names; the name stays "heading 2".
    + _style("berschrift2", "heading 2", 1)
    + _style("Chapter", "Chapter Heading", 0)
    + "</w:styles>"
)
DOCX_HEADER_TEXT = "CONFIDENTIAL RUNNING HEADER"
DOCX_FOOTER_TEXT = "Running footer with page number"


def _part(tag: str, body: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<w:{tag} xmlns:w="{_W_NS}" xmlns:r="{_R_NS}">{body}</w:{tag}>'
    )


def _p(text: str, style: str | None = None, *, extra_ppr: str = "", runs: str = "") -> str:
    ppr = ""
    if style or extra_ppr:
        ppr = "<w:pPr>" + (f'<w:pStyle w:val="{style}"/>' if style else "") + extra_ppr + "</w:pPr>"
    return f'<w:p>{ppr}<w:r><w:t xml:space="preserve">{text}</w:t></w:r>{runs}</w:p>'


def _table(rows: Sequence[Sequence[str]]) -> str:
    cells = "".join("<w:tr>" + "".join(f"<w:tc>{_p(cell)}</w:tc>" for cell in row) + "</w:tr>" for row in rows)
    return f"<w:tbl>{cells}</w:tbl>"


_PAGE_BREAK_RUN = '<w:r><w:lastRenderedPageBreak/><w:t xml:space="preserve"> Page two starts here.</w:t></w:r>'
_TEXT_BOX = (
    '<w:r><mc:AlternateContent xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006">'
    '<mc:Choice Requires="wps"><w:drawing><w:txbxContent><w:p><w:r><w:t>Boxed note</w:t></w:r></w:p>'
    "</w:txbxContent></w:drawing></mc:Choice>"
    "<mc:Fallback><w:pict><w:txbxContent><w:p><w:r><w:t>Boxed note</w:t></w:r></w:p></w:txbxContent></w:pict>"
    "</mc:Fallback></mc:AlternateContent></w:r>"
)


def _sample_document_xml(*, rendered_page_breaks: bool) -> str:
    body = "".join(
        [
            _p("Docent Handbook", "Title"),
            _p("Introduction", "Heading1"),
            _p("The introduction talks about apples.", runs=_TEXT_BOX),
            _p("Background", "berschrift2"),
            '<w:p><w:r><w:t xml:space="preserve">Background paragraph with a tab</w:t><w:tab/>'
            '<w:t xml:space="preserve">and a </w:t></w:r>'
            '<w:del w:id="1" w:author="Reviewer"><w:r><w:delText>deleted passage</w:delText></w:r></w:del>'
            "<w:r><w:t>kept ending.</w:t></w:r></w:p>",
            _table([["Fruit", "Colour"], ["Apple", "Red"], ["Pear", ""]]),
            _p("Usage", "Heading1"),
            _p("Usage text on the first page.", runs=_PAGE_BREAK_RUN if rendered_page_breaks else ""),
            _p("More usage text on page two."),
            _p("Appendix", extra_ppr='<w:outlineLvl w:val="0"/>'),
            _p("Appendix body."),
            _p("Custom chapter", "Chapter"),
            _p("Chapter body."),
        ]
    )
    section = '<w:sectPr><w:headerReference w:type="default" r:id="rId2"/><w:footerReference w:type="default" r:id="rId3"/></w:sectPr>'  # noqa: E501
    return _part("document", f"<w:body>{body}{section}</w:body>")


def _docx(
    document_xml: bytes | str,
    *,
    extra: Sequence[_ZipEntry] = (),
    declared_sizes: dict[str, int] | None = None,
    declared_count: int | None = None,
    document_entry: _ZipEntry | None = None,
) -> bytes:
    if isinstance(document_xml, str):
        document_xml = document_xml.encode()
    entries = [
        _ZipEntry("[Content_Types].xml", _CONTENT_TYPES.encode()),
        _ZipEntry("_rels/.rels", _PACKAGE_RELS.encode()),
        _ZipEntry("word/_rels/document.xml.rels", _DOCUMENT_RELS.encode()),
        _ZipEntry("word/styles.xml", _STYLES_XML.encode()),
        _ZipEntry("word/header1.xml", _part("hdr", _p(DOCX_HEADER_TEXT)).encode()),
        _ZipEntry("word/footer1.xml", _part("ftr", _p(DOCX_FOOTER_TEXT)).encode()),
        document_entry or _ZipEntry("word/document.xml", document_xml),
        *extra,
    ]
    return _zip(entries, declared_sizes=declared_sizes, declared_count=declared_count)


def sample_docx(*, rendered_page_breaks: bool = True) -> bytes:
    """A DOCX with Title/Heading styles (one localised), an outline-level heading, a table, a text box,
    a tracked deletion, a header and a footer. With `rendered_page_breaks`, Word's page marker puts
    the second half of "Usage" on page 2."""
    return _docx(_sample_document_xml(rendered_page_breaks=rendered_page_breaks))


def truncated_docx() -> bytes:
    data = sample_docx()
    return data[: len(data) // 2]


def _bomb_entry(name: str, unpacked_bytes: int) -> _ZipEntry:
    entry = _ZipEntry(name)
    chunk = b" " * (1 << 20)
    repeats = max(1, unpacked_bytes // len(chunk))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    entry.compressed = block * repeats + b"\x03\x00"
    crc = 0
    for _ in range(repeats):
        crc = zlib.crc32(chunk, crc)
    entry.crc = crc
    entry.size = repeats * len(chunk)
    return entry


def docx_zip_bomb(unpacked_bytes: int = 1 << 30, *, lie_about_size: bool = False) -> bytes:
    """A DOCX whose document.xml inflates to `unpacked_bytes` (1 GiB) from about 1 MB.

    With `lie_about_size`, the zip headers declare 1 KB instead, as a bomb built to slip past
    directory checks would.
    """
    entry = _bomb_entry("word/document.xml", unpacked_bytes)
    declared = {"word/document.xml": 1024} if lie_about_size else None
    return _docx(b"", document_entry=entry, declared_sizes=declared)


def docx_with_many_parts(extra_parts: int = 1_000, *, declared_count: int | None = None) -> bytes:
    """The sample DOCX plus `extra_parts` empty members, as a directory flood would pad it out.

    With `declared_count`, the end record states that member count instead of the real one, as a file
    built to slip past a check of that number would (zipfile reads the directory by its size in bytes).
    """
    extra = [_ZipEntry(f"word/media/empty{n}.xml") for n in range(extra_parts)]
    return _docx(_sample_document_xml(rendered_page_breaks=False), extra=extra, declared_count=declared_count)


def docx_entity_bomb(levels: int = 9) -> bytes:
    """A DOCX whose document.xml declares "billion laughs" entities: ~10^9 "lol"s if expanded."""
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels + 1)]
    doctype = "<!DOCTYPE w:document [" + "".join(entities) + "]>"
    body = f"<w:body><w:p><w:r><w:t>Before the bomb &lol{levels}; after</w:t></w:r></w:p></w:body>"
    xml = f'<?xml version="1.0" encoding="UTF-8"?>{doctype}<w:document xmlns:w="{_W_NS}">{body}</w:document>'
    return _docx(xml)


def docx_external_entity(target: str = "file:///etc/passwd") -> bytes:
    """A DOCX whose document.xml pulls an external entity (XXE) into the text."""
    doctype = f'<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "{target}">]>'
    body = "<w:body><w:p><w:r><w:t>Leaked: &xxe;</w:t></w:r></w:p></w:body>"
    xml = f'<?xml version="1.0" encoding="UTF-8"?>{doctype}<w:document xmlns:w="{_W_NS}">{body}</w:document>'
    return _docx(xml)


def xlsx_like_zip() -> bytes:
    """An Office zip that is a spreadsheet, not a Word document."""
    return _zip([_ZipEntry("[Content_Types].xml", b"<Types/>"), _ZipEntry("xl/workbook.xml", b"<workbook/>")])


def plain_zip() -> bytes:
    return _zip([_ZipEntry("notes.txt", b"just a note")])


def zero_byte_file() -> bytes:
    return b""


def binary_junk(size: int = 64 * 1024, seed: int = 20240601) -> bytes:
    """Deterministic random bytes: what a corrupted download or an arbitrary binary looks like."""
    return random.Random(seed).randbytes(size)


def png_image() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def elf_executable() -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 2, 0x3E, 1) + binary_junk(4096, seed=7)


_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def legacy_doc() -> bytes:
    """The start of an OLE2 compound file, as a Word 97-2003 .doc begins."""
    return _OLE2_MAGIC + bytes(504) + binary_junk(4096, seed=97)


def encrypted_docx_container() -> bytes:
    """What Word saves for a password-protected .docx: an OLE2 file holding an "EncryptedPackage" stream."""
    return _OLE2_MAGIC + bytes(504) + "EncryptedPackage".encode("utf-16-le") + binary_junk(4096, seed=98)


HTML_CHROME_MARKERS = (
    "SCRIPT TEXT",
    "STYLE RULE",
    "SITE HEADER LINK",
    "NAV ITEM",
    "HIDDEN XBRL FACT",
    "HIDDEN PARAGRAPH",
    "ASIDE TEXT",
    "FORM LABEL",
    "NOSCRIPT TEXT",
    "TEMPLATE TEXT",
    "SVG TEXT",
    "SITE FOOTER",
    "SCRIPT TWO",
    "INVISIBLE SPAN",
    "Sample page title",
    "DISPLAY NONE DIV",
)


def docx_run_flood(runs: int = 400_000) -> bytes:
    """One paragraph of `runs` tiny runs (~16x its unpacked size as a parser tree kept whole). Random words keep
    the archive under the zip-bomb guard's ratio, as a real attack would."""
    rng = random.Random(7)
    words = ("".join(rng.choice(string.ascii_lowercase) for _ in range(3)) for _ in range(runs))
    flood = "".join(f'<w:r><w:t xml:space="preserve">{word} </w:t></w:r>' for word in words)
    return _docx(_part("document", f"<w:body><w:p>{flood}</w:p>{_p('After the flood.')}</w:body>"))


def _flood_words(count: int) -> Iterator[str]:
    # Random words keep the archive under the zip-bomb guard's ratio, as a real attack would.
    rng = random.Random(7)
    return ("".join(rng.choice(string.ascii_lowercase) for _ in range(3)) for _ in range(count))


def docx_deletion_flood(runs: int = 250_000) -> bytes:
    """One tracked deletion (w:del) wrapping `runs` deleted runs: text that is skipped, never read."""
    flood = "".join(f"<w:r><w:rPr><w:b/></w:rPr><w:delText>{word} </w:delText></w:r>" for word in _flood_words(runs))
    deleted = f'<w:p><w:del w:id="1" w:author="Reviewer">{flood}</w:del></w:p>'
    return _docx(_part("document", f"<w:body>{deleted}{_p('After the flood.')}</w:body>"))


def docx_bookmark_flood(bookmarks: int = 400_000) -> bytes:
    """A hyperlink holding `bookmarks` empty bookmark marks: children of a container other than body or paragraph."""
    flood = "".join(f'<w:bookmarkStart w:id="{n}" w:name="{word}"/>' for n, word in enumerate(_flood_words(bookmarks)))
    link = f'<w:p><w:hyperlink w:anchor="top">{flood}<w:r><w:t>Link text.</w:t></w:r></w:hyperlink></w:p>'
    return _docx(_part("document", f"<w:body>{link}{_p('After the flood.')}</w:body>"))


def html_hidden_flood(elements: int = 600_000) -> bytes:
    """A hidden block holding `elements` tiny elements, then visible text (~30x its size as a tree kept whole)."""
    flood = "<i>ab</i>" * elements
    return f"<html><body><div hidden>{flood}</div><p>After the flood.</p></body></html>".encode()


def html_unclosed_heading(lines: int = 50_000, parts: int = 3) -> bytes:
    """A heading closed with the wrong tag (<h2>Intro</h3>), then `lines` <div> lines and `parts` <h3> subsections.

    A <div> does not close a heading in libxml2's HTML parser (a <p> would), so all of it sits inside the <h2>.
    """
    intro = "".join(f"<div>Intro line {n} of the page body.</div>" for n in range(lines))
    subsections = "".join(f"<h3>Part {n}</h3><div>Text of part {n}.</div>" for n in range(1, parts + 1))
    return f"<html><body><h1>Report</h1><h2>Intro</h3>{intro}{subsections}</body></html>".encode()


def sample_html() -> bytes:
    """A page with headings, a table and every kind of chrome that must not reach the text
    (each piece of chrome carries one of `HTML_CHROME_MARKERS`)."""
    return """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sample page title</title>
<style>.STYLE_RULE { color: red } /* STYLE RULE */</style>
<script>var secret = "SCRIPT TEXT";</script></head>
<body>
<header class="site"><a href="/">SITE HEADER LINK</a></header>
<nav><ul><li>NAV ITEM</li></ul></nav>
<main>
<h1>Annual Report</h1>
<p>Intro paragraph with <b>bold</b> text and&nbsp;a caf\u00e9
   spread over   two lines.</p>
<div><ix:header>HIDDEN XBRL FACT</ix:header></div>
<div style="display: none">DISPLAY NONE DIV</div>
<h2>Revenue</h2>
<p>Revenue grew.</p>
<table><tr><th>Year</th><th>Revenue</th></tr><tr><td>2023</td><td></td><td>$ 1,000</td></tr></table>
<h3>By region</h3>
<p>Europe led.</p>
<p hidden>HIDDEN PARAGRAPH</p>
<p>Visible <span style="VISIBILITY:hidden">INVISIBLE SPAN</span>words.</p>
<h2>Risks</h2>
<p>Risk text.<br>Second line.</p>
<article><header><h2>Article title</h2></header><p>Article body.</p></article>
<aside>ASIDE TEXT</aside>
<form><input type="hidden" value="FORM VALUE"><label>FORM LABEL</label></form>
<noscript>NOSCRIPT TEXT</noscript>
<template>TEMPLATE TEXT</template>
<svg><text>SVG TEXT</text></svg>
</main>
<footer>SITE FOOTER</footer>
<script>document.write("SCRIPT TWO")</script>
</body></html>
""".encode()


def cp1252_html(*, declared: bool) -> bytes:
    """An HTML page in Windows-1252, with or without a <meta charset> saying so."""
    meta = '<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">' if declared else ""
    body = "<p>Caf\u00e9 cr\u00e8me \u2013 \u201cquoted\u201d</p>"
    return f"<html><head>{meta}</head><body>{body}</body></html>".encode("cp1252")


SAMPLE_MARKDOWN = """---
title: Sample
---

Intro before any heading.

# Guide

Some guide text.

```python
# not a heading
print("hi")
```

## Install
Step one.

Setext Title
============

Under the setext title.

Sub setext
----------

Text under sub.

### Deep ###
Deep text.
"""


def sample_markdown() -> bytes:
    return SAMPLE_MARKDOWN.encode()


def markdown_unclosed_front_matter(headings: int = 10_000) -> bytes:
    """Markdown opening with a "---" line that nothing closes, then `headings` headed sections."""
    body = "".join(f"# Heading {n}\n\nText under heading {n}.\n\n" for n in range(headings))
    return ("---\n\n" + body).encode()
