"""End-to-end: the documents page in Chromium against the real ASGI server and ingest worker."""

from __future__ import annotations

import pytest

from accounts.tests.factories import PASSWORD, UserFactory
from config.testing.browser import horizontal_overflow, sign_in, tab_to, unnamed_fields
from documents.models import Document
from documents.tests import hostile_files

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _log_in(page, user) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard/")


def test_upload_several_files_watch_them_finish_and_delete_one(page, celery_workers, screenshot):
    user = UserFactory()
    _log_in(page, user)
    page.get_by_role("link", name="Documents").first.click()
    page.wait_for_url("**/documents/")

    page.set_input_files("#upload-input", files=[
        {"name": "sample.pdf", "mimeType": "application/pdf", "buffer": hostile_files.sample_pdf()},
        {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": hostile_files.image_only_pdf()},
        {"name": "photo.pdf", "mimeType": "application/pdf", "buffer": hostile_files.png_image()},
    ])

    ready = page.locator("#documents-body tr", has_text="sample.pdf")
    ready.locator(".status-ready").wait_for(timeout=60_000)
    failed = page.locator("#documents-body tr", has_text="scan.pdf")
    failed.locator(".status-failed").wait_for(timeout=60_000)
    rejected = page.locator("#documents-body tr", has_text="photo.pdf")
    screenshot(page, "documents-errors")
    assert "no text layer" in failed.inner_text()
    assert "PNG image" in rejected.inner_text()
    cells = ready.locator("td")
    assert cells.nth(3).inner_text() == "3"  # pages
    assert int(cells.nth(4).inner_text()) == Document.objects.get(owner=user, filename="sample.pdf").chunk_count

    page.once("dialog", lambda dialog: dialog.accept())
    ready.get_by_role("link", name="Delete").click()
    ready.wait_for(state="detached", timeout=10_000)
    assert not Document.objects.filter(owner=user, filename="sample.pdf").exists()
    # The browser logs the refused upload's 415 itself; anything else would be a script error.
    unexpected = [error for error in page.console_errors if "status of 415" not in error]
    assert unexpected == [], unexpected


def test_upload_by_keyboard_only_and_the_page_fits_a_phone(page, celery_workers, asgi_server, screenshot):
    user = UserFactory()
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, user, asgi_server).goto("/documents/")
    assert unnamed_fields(page) == []

    # Listening from here, not only from expect_file_chooser: Playwright turns the interception of file choosers on
    # without waiting for it, so a key pressed right after can reach the page before it is on.
    page.on("filechooser", lambda chooser: None)
    tab_to(page, "#upload-input")
    with page.expect_file_chooser(timeout=5_000) as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(files=[
        {"name": "keyboard.pdf", "mimeType": "application/pdf", "buffer": hostile_files.sample_pdf()},
    ])

    row = page.locator("#documents-body tr", has_text="keyboard.pdf")
    row.locator(".status-ready").wait_for(timeout=60_000)
    assert row.locator("progress").get_attribute("value") == "100"
    assert Document.objects.get(owner=user, filename="keyboard.pdf").status == Document.Status.READY
    assert horizontal_overflow(page) == 0, "the documents page scrolls sideways on a phone"
    screenshot(page, "documents-phone")
    assert page.console_errors == [], page.console_errors
