"""Extraction: every format on generated samples, every hostile file, streaming, and the real datasets."""

from __future__ import annotations

import inspect
import json
import resource
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pypdfium2
import pytest
from celery.exceptions import SoftTimeLimitExceeded

import documents.ingestion.extract as extract_module
from config.testing.datasets import DATASETS
from documents.ingestion.extract import ExtractionLimits, extract_sections, normalize_text, pdf_page_count
from documents.ingestion.extract.docx import ENTITY_BOMB_MESSAGE, ZIP_BOMB_MESSAGE
from documents.ingestion.extract.pdf import NO_TEXT_MESSAGE, PASSWORD_MESSAGE
from documents.ingestion.types import IngestionError, Kind, Section
from documents.tests import hostile_files, needs_datasets

INLINE_PDF = ExtractionLimits(pdf_isolation=False)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _extract(tmp_path: Path, name: str, data: bytes, kind: Kind, **limits) -> list[Section]:
    return list(extract_sections(_write(tmp_path, name, data), kind, limits=ExtractionLimits(**limits)))


def _all_text(sections: list[Section]) -> str:
    return "\n".join(section.text for section in sections)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_extract_sections_is_a_lazy_generator(tmp_path):
    missing = tmp_path / "not-there.pdf"
    sections = extract_sections(missing, Kind.PDF)
    assert inspect.isgenerator(sections)
    with pytest.raises(FileNotFoundError):
        next(sections)


def test_abandoning_a_pdf_stream_early_ends_the_reader_process(tmp_path):
    before = {child.pid for child in psutil.Process().children()}
    sections = extract_sections(_write(tmp_path, "a.pdf", hostile_files.sample_pdf()), Kind.PDF)
    first = next(sections)
    assert len({child.pid for child in psutil.Process().children()} - before) == 1
    sections.close()
    assert first.page == 1
    assert {child.pid for child in psutil.Process().children()} - before == set()


def test_normalize_removes_nul_and_control_characters():
    assert normalize_text("a\x00b\x07c\x1bd\x7fe\x85f") == "abcdef"


def test_normalize_replaces_ligatures_odd_spaces_and_invisible_characters():
    text = "\ufb01ne \ufb02ow\u00a0and\u2009thin\u200bzero soft\u00adhyphen\ufeff"
    assert normalize_text(text, collapse_spaces=True) == "fine flow and thinzero softhyphen"


def test_normalize_drops_lone_surrogates_so_text_encodes_as_utf8():
    cleaned = normalize_text("ok\ud800 then\udfff end")
    assert cleaned == "ok then end"
    cleaned.encode("utf-8")


def test_normalize_folds_line_endings_and_blank_runs_but_keeps_indentation():
    assert normalize_text("a\r\n\r\n\r\n\r\n    b  \rc") == "a\n\n    b\nc"


def test_normalize_joins_hyphenated_line_ends_only_before_lowercase():
    text = "extrac-\ntion and Jean-\nPaul in 2020-\n2021"
    assert normalize_text(text, join_hyphens=True) == "extraction and Jean-\nPaul in 2020-\n2021"


@pytest.mark.parametrize("limits", [ExtractionLimits(), INLINE_PDF], ids=["isolated", "inline"])
def test_pdf_yields_one_section_per_page_with_1_based_numbers(tmp_path, limits):
    sections = list(extract_sections(_write(tmp_path, "a.pdf", hostile_files.sample_pdf()), Kind.PDF, limits=limits))
    assert [section.page for section in sections] == [1, 2, 3]
    for section, lines in zip(sections, hostile_files.SAMPLE_PDF_PAGES, strict=True):
        assert lines[0].split()[0] in section.text


def test_pdf_word_hyphenated_across_lines_is_joined(tmp_path):
    sections = _extract(tmp_path, "a.pdf", hostile_files.sample_pdf(), Kind.PDF)
    assert "text extraction from portable documents" in sections[1].text


def test_pdf_page_count_is_read_without_extracting(tmp_path):
    path = _write(tmp_path, "a.pdf", hostile_files.sample_pdf())
    assert pdf_page_count(path) == 3
    assert pdf_page_count(path, limits=INLINE_PDF) == 3


def test_encrypted_pdf_fixture_really_is_encrypted_with_its_password(tmp_path):
    document = pypdfium2.PdfDocument(hostile_files.encrypted_pdf(), password=hostile_files.PDF_PASSWORD)
    try:
        assert "apples" in document[0].get_textpage().get_text_range()
    finally:
        document.close()


@pytest.mark.parametrize("limits", [ExtractionLimits(), INLINE_PDF], ids=["isolated", "inline"])
def test_encrypted_pdf_fails_with_password_reason(tmp_path, limits):
    path = _write(tmp_path, "locked.pdf", hostile_files.encrypted_pdf())
    with pytest.raises(IngestionError) as error:
        list(extract_sections(path, Kind.PDF, limits=limits))
    assert error.value.message == PASSWORD_MESSAGE
    with pytest.raises(IngestionError):
        pdf_page_count(path, limits=limits)


def test_pdf_encrypted_with_an_empty_user_password_is_read(tmp_path):
    # Permission-only encryption ("no copying") is common and every reader opens it without asking.
    sections = _extract(tmp_path, "restricted.pdf", hostile_files.encrypted_pdf(password=""), Kind.PDF)
    assert [section.page for section in sections] == [1, 2, 3]


def test_truncated_pdf_fails_as_damaged(tmp_path):
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "cut.pdf", hostile_files.truncated_pdf(), Kind.PDF)
    assert error.value.message.startswith("This PDF is damaged and could not be read (")


def test_scanned_pdf_without_text_layer_fails_saying_ocr_is_not_supported(tmp_path):
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "scan.pdf", hostile_files.image_only_pdf(), Kind.PDF)
    assert error.value.message == NO_TEXT_MESSAGE
    assert "OCR is not supported" in error.value.message


@pytest.mark.parametrize("payload", [b" ", b"BT /F1 1 Tf (A) Tj ET "], ids=["whitespace", "text-operators"])
def test_pdf_decompression_bomb_fails_cleanly_without_growing_the_worker(tmp_path, payload):
    path = _write(tmp_path, "bomb.pdf", hostile_files.pdf_decompression_bomb(payload=payload))
    assert path.stat().st_size < 64 * 1024
    rss_before = _peak_rss_mb()
    pages = []
    with pytest.raises(IngestionError) as error:
        for section in extract_sections(path, Kind.PDF, limits=ExtractionLimits(pdf_memory_bytes=1 << 30)):
            pages.append(section.page)
    assert pages == [1]  # the normal first page still came through before the bomb page
    assert "decompression bomb" in error.value.message
    assert "page 2" in error.value.message
    assert _peak_rss_mb() - rss_before < 200  # the 1 GiB was inflated (and refused) in the child


def test_pdf_page_that_takes_too_long_is_abandoned(tmp_path):
    path = _write(tmp_path, "slow.pdf", hostile_files.pdf_decompression_bomb())
    with pytest.raises(IngestionError) as error:
        list(extract_sections(path, Kind.PDF, limits=ExtractionLimits(pdf_page_seconds=0.2)))
    assert "took too long" in error.value.message


def test_pdf_over_the_page_cap_is_refused_before_extraction(tmp_path):
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "a.pdf", hostile_files.sample_pdf(), Kind.PDF, max_pages=2)
    assert "has 3 pages, more than the limit of 2" in error.value.message


def test_pdf_page_with_implausible_amount_of_text_is_refused(tmp_path):
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "a.pdf", hostile_files.sample_pdf(), Kind.PDF, max_page_chars=20)
    assert error.value.message.startswith("Page 1 of this PDF holds")


def test_total_text_cap_stops_a_document_midway(tmp_path):
    path = _write(tmp_path, "a.pdf", hostile_files.sample_pdf())
    received = []
    with pytest.raises(IngestionError) as error:
        for section in extract_sections(path, Kind.PDF, limits=ExtractionLimits(max_total_chars=100)):
            received.append(section.page)
    assert received == [1]
    assert "more than 100 characters" in error.value.message


@needs_datasets
@pytest.mark.parametrize(
    ("name", "pages"), [("gnuplot.pdf", 311), ("irm-2.3.59-400p.pdf", 400)], ids=["gnuplot", "irm"]
)
def test_real_pdfs_extract_with_correct_page_numbers(name, pages):
    path = DATASETS / "pdf" / name
    assert pdf_page_count(path) == pages
    numbers = [section.page for section in extract_sections(path, Kind.PDF)]
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 1
    assert numbers[-1] in (pages, pages - 1)
    assert len(numbers) >= pages - 5  # only a few near-empty pages may be skipped


@needs_datasets
def test_pdf_bookmarks_become_heading_paths():
    # gnuplot's outline: "I Gnuplot" > "Seeking-assistance" starts on page 22.
    sections = {s.page: s for s in extract_sections(DATASETS / "pdf" / "gnuplot.pdf", Kind.PDF)}
    assert sections[22].heading_path == ("I Gnuplot", "Seeking-assistance")
    assert sections[1].heading_path == ()


@pytest.fixture
def docx_sections(tmp_path) -> list[Section]:
    return _extract(tmp_path, "sample.docx", hostile_files.sample_docx(), Kind.DOCX)


def test_docx_sections_follow_headings_with_their_paths(docx_sections):
    paths = [section.heading_path for section in docx_sections]
    root = ("Docent Handbook",)
    assert paths == [
        root,
        (*root, "Introduction"),
        (*root, "Introduction", "Background"),
        (*root, "Usage"),
        (*root, "Usage"),
        (*root, "Appendix"),
        (*root, "Custom chapter"),
    ]


def test_docx_heading_is_found_through_style_name_and_outline_level(docx_sections):
    by_path = {section.heading_path[-1]: section.text for section in docx_sections}
    assert by_path["Background"].startswith("Background")  # style id "berschrift2", name "heading 2"
    assert by_path["Appendix"].startswith("Appendix")  # direct outline level on the paragraph
    assert by_path["Custom chapter"].startswith("Custom chapter")  # custom style with an outline level


def test_docx_table_rows_are_joined_cell_by_cell(docx_sections):
    text = _all_text(docx_sections)
    assert "Fruit | Colour\nApple | Red\nPear" in text


def test_docx_headers_and_footers_are_never_extracted(docx_sections):
    text = _all_text(docx_sections)
    assert hostile_files.DOCX_HEADER_TEXT not in text
    assert hostile_files.DOCX_FOOTER_TEXT not in text


def test_docx_text_box_is_read_once_not_from_its_fallback_copy(docx_sections):
    assert _all_text(docx_sections).count("Boxed note") == 1


def test_docx_tracked_deletions_are_dropped(docx_sections):
    text = _all_text(docx_sections)
    assert "deleted passage" not in text
    assert "Background paragraph with a tab and a kept ending." in text


def test_docx_rendered_page_breaks_give_page_numbers(docx_sections):
    pages = [(section.heading_path[-1], section.page) for section in docx_sections]
    assert pages[:4] == [("Docent Handbook", 1), ("Introduction", 1), ("Background", 1), ("Usage", 1)]
    assert pages[4:] == [("Usage", 2), ("Appendix", 2), ("Custom chapter", 2)]


def test_docx_without_rendered_page_breaks_has_no_page_numbers(tmp_path):
    sections = _extract(tmp_path, "a.docx", hostile_files.sample_docx(rendered_page_breaks=False), Kind.DOCX)
    assert sections
    assert {section.page for section in sections} == {None}


def test_docx_zip_bomb_is_refused_before_unpacking(tmp_path):
    data = hostile_files.docx_zip_bomb()
    assert len(data) < 2 * 1024 * 1024
    rss_before = _peak_rss_mb()
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "bomb.docx", data, Kind.DOCX)
    assert error.value.message == ZIP_BOMB_MESSAGE
    assert _peak_rss_mb() - rss_before < 50


def test_docx_zip_bomb_with_understated_sizes_is_cut_off_at_the_declared_size(tmp_path):
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "bomb.docx", hostile_files.docx_zip_bomb(lie_about_size=True), Kind.DOCX)
    assert error.value.message.startswith("This DOCX is damaged and could not be read")


@pytest.mark.parametrize("declared_count", [None, 1], ids=["counted", "count-understated"])
def test_docx_with_too_many_parts_is_refused_before_its_directory_is_parsed(tmp_path, monkeypatch, declared_count):
    data = hostile_files.docx_with_many_parts(1_000, declared_count=declared_count)
    assert _extract(tmp_path, "ok.docx", data, Kind.DOCX, max_zip_members=1_007)  # 1,007 parts in all

    def parse_directory(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole zip directory was parsed")

    monkeypatch.setattr(zipfile, "ZipFile", parse_directory)
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "many.docx", data, Kind.DOCX, max_zip_members=1_006)
    assert error.value.message == (
        "This DOCX has more than 1,006 parts, the most allowed; it does not look like a real Word document."
    )


def test_docx_billion_laughs_is_refused(tmp_path):
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "laughs.docx", hostile_files.docx_entity_bomb(), Kind.DOCX)
    assert error.value.message == ENTITY_BOMB_MESSAGE


def test_docx_small_entity_declarations_are_left_unexpanded(tmp_path):
    sections = _extract(tmp_path, "lol.docx", hostile_files.docx_entity_bomb(levels=3), Kind.DOCX)
    text = _all_text(sections)
    assert "Before the bomb" in text
    assert "lol" not in text


def test_docx_external_entity_is_not_resolved(tmp_path):
    sections = _extract(tmp_path, "xxe.docx", hostile_files.docx_external_entity(), Kind.DOCX)
    text = _all_text(sections)
    assert text.startswith("Leaked:")
    assert "root:" not in text


def test_truncated_docx_fails_as_damaged(tmp_path):
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "cut.docx", hostile_files.truncated_docx(), Kind.DOCX)
    assert error.value.message.startswith("This DOCX is damaged and could not be read")


@needs_datasets
def test_handbook_docx_keeps_headings_and_leaves_out_headers_and_footers():
    sections = list(extract_sections(DATASETS / "docx" / "handbook-872p.docx", Kind.DOCX))
    text = _all_text(sections)
    # Running footer lines of the handbook (they appear only in its footer parts).
    assert "Effective October 1, 2012" not in text
    assert "Handbook for Chapter 13 Standing Trustee" not in text
    assert "The United States Trustee appoints and supervises standing trustees" in text
    chapters = {section.heading_path[0] for section in sections if section.heading_path}
    assert "CHAPTER 1 \u2013 INTRODUCTION" in chapters
    assert max(len(section.text) for section in sections) <= 2 * ExtractionLimits().section_chars


@pytest.fixture
def html_sections(tmp_path) -> list[Section]:
    return _extract(tmp_path, "page.html", hostile_files.sample_html(), Kind.HTML)


def test_html_drops_scripts_navigation_forms_and_hidden_elements(html_sections):
    text = _all_text(html_sections)
    leaked = [marker for marker in hostile_files.HTML_CHROME_MARKERS if marker in text]
    assert leaked == []


def test_html_sections_split_at_headings_with_paths(html_sections):
    assert [section.heading_path for section in html_sections] == [
        ("Annual Report",),
        ("Annual Report", "Revenue"),
        ("Annual Report", "Revenue", "By region"),
        ("Annual Report", "Risks"),
        ("Annual Report", "Article title"),
    ]


def test_html_article_header_is_content_not_chrome(html_sections):
    assert html_sections[-1].text == "Article title\n\nArticle body."


def test_html_blocks_become_lines_and_whitespace_is_normalised(html_sections):
    assert "Intro paragraph with bold text and a café spread over two lines." in html_sections[0].text
    assert "Risk text.\nSecond line." in html_sections[3].text
    assert "Visible words." in html_sections[2].text


def test_html_table_cells_are_joined_per_row(html_sections):
    assert "Year | Revenue\n2023 | $ 1,000" in html_sections[1].text


@pytest.mark.parametrize("declared", [True, False], ids=["meta-charset", "undeclared"])
def test_html_in_windows_1252_is_decoded(tmp_path, declared):
    sections = _extract(tmp_path, "old.html", hostile_files.cp1252_html(declared=declared), Kind.HTML)
    assert _all_text(sections) == "Café crème \u2013 “quoted”"


def test_html_parser_does_not_resolve_external_entities(tmp_path):
    doctype = b'<!DOCTYPE html [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    page = doctype + b"<html><body><p>Leak &x; here</p></body></html>"
    text = _all_text(_extract(tmp_path, "xxe.html", page, Kind.HTML))
    assert "Leak" in text
    assert "root:" not in text


def test_html_nested_beyond_the_parser_limit_fails_instead_of_losing_text(tmp_path):
    page = b"<html><body>" + b"<div>" * 5_000 + b"deep" + b"</div>" * 5_000 + b"<p>after</p></body></html>"
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "deep.html", page, Kind.HTML)
    assert "nested too deeply" in error.value.message


def test_html_text_node_over_10_mb_is_read_to_the_end(tmp_path):
    page = b"<html><body><pre>" + b"word " * (2_200_000) + b"</pre><p>The tail survives.</p></body></html>"
    sections = _extract(tmp_path, "big.html", page, Kind.HTML)
    assert sections[-1].text.endswith("The tail survives.")
    assert sum(section.text.count("word") for section in sections) == 2_200_000
    assert max(len(section.text) for section in sections) <= 2 * ExtractionLimits().section_chars


def test_html_heading_left_open_ends_at_its_first_line_and_later_headings_still_split(tmp_path):
    sections = _extract(tmp_path, "open.html", hostile_files.html_unclosed_heading(lines=20), Kind.HTML)
    assert [section.heading_path for section in sections] == [
        ("Report",),
        ("Report", "Intro"),
        ("Report", "Intro", "Part 1"),
        ("Report", "Intro", "Part 2"),
        ("Report", "Intro", "Part 3"),
    ]
    assert sections[1].text.startswith("Intro\nIntro line 0 of the page body.\nIntro line 1")
    assert sections[-1].text == "Part 3\n\nText of part 3."


def test_html_heading_left_open_does_not_hold_the_rest_of_the_page(tmp_path):
    path = _write(tmp_path, "open.html", hostile_files.html_unclosed_heading())  # ~2.2 MB
    tracemalloc.start()
    try:
        sections = [(section.heading_path, len(section.text)) for section in extract_sections(path, Kind.HTML)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # a few sections' worth; held in the heading, the page took 28 MB
    assert len(sections) > 50
    assert sections[-1][0] == ("Report", "Intro", "Part 3")
    assert max(size for _, size in sections) <= 2 * ExtractionLimits().section_chars


@pytest.mark.parametrize(
    ("kind", "name"),
    [(Kind.HTML, "HTML"), (Kind.MARKDOWN, "Markdown"), (Kind.TEXT, "text")],
)
def test_file_without_any_text_fails_saying_so(tmp_path, kind, name):
    data = b"<html><body><script>x()</script>\n \n</body></html>" if kind == Kind.HTML else b"\n \n\t\n"
    with pytest.raises(IngestionError) as error:
        _extract(tmp_path, "blank", data, kind)
    assert error.value.message == f"This {name} file contains no text."


@needs_datasets
def test_10k_inline_xbrl_header_is_dropped_and_body_kept():
    sections = list(extract_sections(DATASETS / "html" / "example-10k.html", Kind.HTML))
    text = _all_text(sections)
    assert "SECURITIES AND EXCHANGE COMMISSION" in text
    assert "ANNUAL REPORT PURSUANT TO SECTION 13 OR 15(d)" in text
    # Durations that only exist as hidden XBRL facts inside <ix:header>.
    assert "P2Y4M6D" not in text
    assert "P1Y10M13D" not in text
    assert max(len(section.text) for section in sections) <= 2 * ExtractionLimits().section_chars


@pytest.fixture
def markdown_sections(tmp_path) -> list[Section]:
    return _extract(tmp_path, "guide.md", hostile_files.sample_markdown(), Kind.MARKDOWN)


def test_markdown_splits_at_atx_and_setext_headings_with_paths(markdown_sections):
    assert [section.heading_path for section in markdown_sections] == [
        (),
        ("Guide",),
        ("Guide", "Install"),
        ("Setext Title",),
        ("Setext Title", "Sub setext"),
        ("Setext Title", "Sub setext", "Deep"),
    ]


def test_markdown_hash_inside_fenced_code_is_not_a_heading(markdown_sections):
    guide = markdown_sections[1]
    assert '```python\n# not a heading\nprint("hi")\n```' in guide.text
    assert all("not a heading" not in "".join(section.heading_path) for section in markdown_sections)


def test_markdown_text_is_kept_as_markdown(markdown_sections):
    assert markdown_sections[1].text.startswith("# Guide\n\nSome guide text.")
    assert markdown_sections[3].text.startswith("Setext Title\n============")


def test_markdown_front_matter_is_not_read_for_headings(tmp_path):
    data = b"---\ntitle: Notes\n# a YAML comment\ntags: [a]\n---\n\nIntro.\n\n# Real heading\n\nBody.\n"
    sections = _extract(tmp_path, "notes.md", data, Kind.MARKDOWN)
    assert [section.heading_path for section in sections] == [(), ("Real heading",)]
    assert sections[0].text.startswith("---\ntitle: Notes\n# a YAML comment")


def test_markdown_leading_rule_without_closing_line_keeps_headings_and_streams(tmp_path):
    path = _write(tmp_path, "rule.md", hostile_files.markdown_unclosed_front_matter())  # ~400 KB
    first_paths = []
    count = 0
    tracemalloc.start()
    try:
        for section in extract_sections(path, Kind.MARKDOWN):
            count += 1
            if count <= 3:
                first_paths.append(section.heading_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # a section at a time; read as front matter, the file took 2.5 MB
    assert first_paths == [(), ("Heading 0",), ("Heading 1",)]
    assert count == 10_001


def test_markdown_without_headings_is_cut_into_bounded_sections(tmp_path):
    paragraph = "A sentence of plain prose that goes on for a while. " * 10
    data = ("\n\n".join([paragraph] * 200)).encode()
    sections = _extract(tmp_path, "long.md", data, Kind.MARKDOWN, section_chars=2_000)
    assert len(sections) > 10
    assert max(len(section.text) for section in sections) <= 4_000


def test_text_in_utf16_with_bom_is_decoded(tmp_path):
    data = "\ufeffGrüße aus Köln.\n\nZweiter Absatz.".encode("utf-16-le")
    assert _all_text(_extract(tmp_path, "a.txt", data, Kind.TEXT)) == "Grüße aus Köln.\n\nZweiter Absatz."


def test_text_that_is_not_utf8_falls_back_to_windows_1252(tmp_path):
    data = "Café \u2013 “quoted”".encode("cp1252")
    assert _all_text(_extract(tmp_path, "a.txt", data, Kind.TEXT)) == "Café \u2013 “quoted”"


def test_text_loses_nul_bytes_and_control_characters(tmp_path):
    sections = _extract(tmp_path, "a.txt", b"before\x00after\x01\x02 end\n", Kind.TEXT)
    assert _all_text(sections) == "beforeafter end"


def test_large_text_file_streams_in_bounded_sections(tmp_path):
    paragraph = "Words that fill a paragraph of a long plain text file, line after line.\n" * 8
    path = _write(tmp_path, "big.txt", (paragraph + "\n").encode() * 20_000)  # ~11.5 MB
    tracemalloc.start()
    try:
        total = 0
        longest = 0
        for section in extract_sections(path, Kind.TEXT, limits=ExtractionLimits(section_chars=4_000)):
            total += len(section.text)
            longest = max(longest, len(section.text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 6_000_000
    assert longest <= 8_000
    assert peak < 1_000_000  # a few sections' worth, never the file


def test_text_without_any_line_break_is_still_cut(tmp_path):
    sections = _extract(tmp_path, "wall.txt", b"word " * 20_000, Kind.TEXT, section_chars=1_000)
    assert len(sections) >= 40
    assert max(len(section.text) for section in sections) <= 2_000


def test_running_out_of_time_is_not_reported_as_an_unreadable_file(tmp_path, monkeypatch):
    def out_of_time(path: Path, *, limits: ExtractionLimits, budget: object) -> Iterator[Section]:
        yield Section(text="First page.", page=1)
        raise SoftTimeLimitExceeded()  # what Celery's signal handler raises wherever the task happens to be

    monkeypatch.setitem(extract_module._EXTRACTORS, Kind.PDF, out_of_time)
    sections = extract_sections(_write(tmp_path, "slow.pdf", hostile_files.sample_pdf()), Kind.PDF)
    assert next(sections).text == "First page."
    with pytest.raises(SoftTimeLimitExceeded):
        next(sections)


@pytest.mark.parametrize("kind", list(Kind))
def test_garbage_in_any_format_raises_only_ingestion_errors(tmp_path, kind):
    path = _write(tmp_path, "junk", hostile_files.binary_junk())
    try:
        sections = list(extract_sections(path, kind))
    except IngestionError as error:
        assert error.message.endswith(".")
    else:
        assert all("\x00" not in section.text for section in sections)


_MEASURE_EXTRACTION = """
import json, sys
from pathlib import Path
from documents.ingestion.extract import ExtractionLimits, extract_sections
from documents.ingestion.types import Kind
def peak_mb():  # VmHWM: this process' own peak (ru_maxrss starts from the parent's at the fork)
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
before = peak_mb()
text = "".join(s.text for s in extract_sections(Path(sys.argv[1]), Kind(sys.argv[2]), limits=ExtractionLimits()))
print(json.dumps({"grown_mb": peak_mb() - before, "tail": text[-40:]}))
"""


@pytest.mark.parametrize(("name", "kind", "builder"), [
    ("flood.docx", Kind.DOCX, hostile_files.docx_run_flood),
    ("deleted.docx", Kind.DOCX, hostile_files.docx_deletion_flood),
    ("bookmarks.docx", Kind.DOCX, hostile_files.docx_bookmark_flood),
    ("flood.html", Kind.HTML, hostile_files.html_hidden_flood),
])
def test_a_flood_of_tiny_elements_is_read_in_flat_memory(tmp_path, name, kind, builder):
    """Run in a process of its own, whose peak RSS is this extraction's alone."""
    path = _write(tmp_path, name, builder())
    done = subprocess.run([sys.executable, "-c", _MEASURE_EXTRACTION, str(path), kind.value],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2], check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])

    assert measured["tail"].endswith("After the flood.")
    assert measured["grown_mb"] < 60, measured  # kept whole, the tree grew by 150-300 MB
