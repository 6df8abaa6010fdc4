"""Type sniffing: content decides, the filename only breaks ties between text formats."""

from __future__ import annotations

import codecs
import zipfile
from pathlib import Path

import pytest

from config.testing.datasets import DATASETS
from documents.ingestion.extract import ExtractionLimits
from documents.ingestion.sniff import EMPTY_MESSAGE, HEAD_BYTES, SUPPORTED, sniff_kind, sniff_kind_path
from documents.ingestion.types import IngestionError, Kind, UnsupportedFileType
from documents.tests import hostile_files, needs_datasets


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_pdf_is_detected_from_its_signature_whatever_its_name():
    assert sniff_kind(hostile_files.sample_pdf()[:HEAD_BYTES], "notes.txt") == Kind.PDF


def test_pdf_signature_after_leading_junk_within_1kb_is_accepted():
    head = b"\x00garbage from a mail gateway\r\n" * 20 + hostile_files.sample_pdf()
    assert head.index(b"%PDF-") < 1024
    assert sniff_kind(head[:HEAD_BYTES], "report.pdf") == Kind.PDF


def test_pdf_signature_beyond_1kb_of_junk_is_not_a_pdf():
    head = hostile_files.binary_junk(2048) + hostile_files.sample_pdf()
    with pytest.raises(UnsupportedFileType):
        sniff_kind(head[:HEAD_BYTES], "report.pdf")


def test_empty_file_is_rejected_with_its_own_message(tmp_path):
    with pytest.raises(UnsupportedFileType) as head_error:
        sniff_kind(hostile_files.zero_byte_file(), "empty.pdf")
    with pytest.raises(UnsupportedFileType) as path_error:
        sniff_kind_path(_write(tmp_path, "empty.pdf", hostile_files.zero_byte_file()))
    assert head_error.value.message == path_error.value.message == EMPTY_MESSAGE == "The file is empty."


def test_binary_junk_named_pdf_is_rejected_naming_the_mismatch(tmp_path):
    with pytest.raises(UnsupportedFileType) as error:
        sniff_kind_path(_write(tmp_path, "invoice.pdf", hostile_files.binary_junk()))
    assert "named .pdf" in error.value.message
    assert "binary data" in error.value.message
    assert SUPPORTED in error.value.message


@pytest.mark.parametrize(
    ("builder", "detected"),
    [
        (hostile_files.png_image, "a PNG image"),
        (hostile_files.elf_executable, "an executable program"),
        (hostile_files.plain_zip, "a zip archive"),
        (hostile_files.xlsx_like_zip, "an Excel workbook"),
    ],
)
def test_unsupported_binaries_are_rejected_saying_what_they_are(tmp_path, builder, detected):
    with pytest.raises(UnsupportedFileType) as error:
        sniff_kind_path(_write(tmp_path, "upload.bin", builder()))
    assert detected in error.value.message
    assert SUPPORTED in error.value.message


def test_legacy_word_file_is_rejected_as_legacy_office(tmp_path):
    with pytest.raises(UnsupportedFileType) as error:
        sniff_kind_path(_write(tmp_path, "old.doc", hostile_files.legacy_doc()))
    assert "legacy Microsoft Office" in error.value.message


def test_password_protected_docx_container_is_reported_as_password_protected(tmp_path):
    with pytest.raises(UnsupportedFileType) as error:
        sniff_kind_path(_write(tmp_path, "secret.docx", hostile_files.encrypted_docx_container()))
    assert "password-protected" in error.value.message


def test_docx_is_recognised_from_the_zip_directory_even_with_a_wrong_name(tmp_path):
    assert sniff_kind_path(_write(tmp_path, "upload.bin", hostile_files.sample_docx())) == Kind.DOCX


def test_docx_is_recognised_from_the_head_alone_by_its_word_parts():
    assert sniff_kind(hostile_files.sample_docx()[:HEAD_BYTES], None) == Kind.DOCX


def test_uploaded_name_overrides_the_stored_name_for_extension_hints(tmp_path):
    path = _write(tmp_path, "0b9f3c.upload", b"# Title\n\nSome text.\n")
    assert sniff_kind_path(path, filename="notes.txt") == Kind.TEXT
    assert sniff_kind_path(path, filename="notes.md") == Kind.MARKDOWN


def test_truncated_docx_is_reported_as_damaged(tmp_path):
    with pytest.raises(IngestionError) as error:
        sniff_kind_path(_write(tmp_path, "cut.docx", hostile_files.truncated_docx()))
    assert "DOCX is damaged" in error.value.message


@pytest.mark.parametrize("declared_count", [None, 1], ids=["counted", "count-understated"])
def test_zip_with_too_many_parts_is_refused_before_its_directory_is_parsed(tmp_path, monkeypatch, declared_count):
    path = _write(tmp_path, "many.docx", hostile_files.docx_with_many_parts(1_000, declared_count=declared_count))
    assert sniff_kind_path(path, limits=ExtractionLimits(max_zip_members=1_007)) == Kind.DOCX  # 1,007 parts in all

    def parse_directory(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole zip directory was parsed")

    monkeypatch.setattr(zipfile, "ZipFile", parse_directory)
    with pytest.raises(IngestionError) as error:
        sniff_kind_path(path, limits=ExtractionLimits(max_zip_members=1_006))
    assert error.value.message == (
        "This file is a zip archive of more than 1,006 parts, far more than a Word document has; it was not opened."
    )


@needs_datasets
@pytest.mark.parametrize(
    ("relative", "kind"),
    [
        ("docx/handbook-872p.docx", Kind.DOCX),
        ("html/example-10k.html", Kind.HTML),
        ("pdf/gnuplot.pdf", Kind.PDF),
        ("pdf/irm-2.3.59-400p.pdf", Kind.PDF),
    ],
)
def test_dataset_files_are_sniffed_as_their_kind(relative, kind):
    assert sniff_kind_path(DATASETS / relative) == kind


@pytest.mark.parametrize(
    "html",
    [
        b"<!DOCTYPE html><html><body><p>x</p></body></html>",
        b'<?xml version="1.0"?>\n<!-- generator -->\n<!-- more -->\n<html xmlns="http://www.w3.org/1999/xhtml">',
        b"\n\n  <p>A fragment that starts with a paragraph.</p>",
        b"Some preamble text\n<html><head><title>t</title></head>",
    ],
)
def test_html_is_recognised_by_its_markup_without_an_extension(html):
    assert sniff_kind(html, None) == Kind.HTML


def test_markdown_extension_wins_over_leading_raw_html():
    readme = b'<p align="center"><img src="logo.png"></p>\n\n# Project\n\nText.\n'
    assert sniff_kind(readme, "README.md") == Kind.MARKDOWN


def test_markdown_without_extension_is_recognised_by_its_structure():
    text = b"# Title\n\nIntro with a [link](https://example.com).\n\n## Part\n\n- item one\n- item two\n"
    assert sniff_kind(text, None) == Kind.MARKDOWN


def test_txt_extension_keeps_markdown_looking_text_as_text():
    assert sniff_kind(b"# Title\n\n## Part\n\n- item\n", "notes.txt") == Kind.TEXT


def test_prose_without_markup_is_text():
    assert sniff_kind(b"Dear team,\n\nthe meeting moved to Friday.\n\nRegards", None) == Kind.TEXT


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_text_with_bom_is_text(codec):
    bom = codecs.BOM_UTF16_LE if codec.endswith("le") else codecs.BOM_UTF16_BE
    assert sniff_kind(bom + "Grüße aus Köln\n".encode(codec) * 50, "letter.txt") == Kind.TEXT


def test_cp1252_text_is_text():
    assert sniff_kind("Café crème \u2013 “quoted” and so on.\n".encode("cp1252") * 20, None) == Kind.TEXT


def test_utf8_head_cut_inside_a_character_is_still_text():
    head = ("é" * 5000).encode("utf-8")[: HEAD_BYTES - 1]
    assert sniff_kind(head, "x.txt") == Kind.TEXT


def test_rtf_is_rejected_although_it_is_text():
    with pytest.raises(UnsupportedFileType) as error:
        sniff_kind(b"{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}} Hello}", "letter.doc")
    assert "RTF" in error.value.message
