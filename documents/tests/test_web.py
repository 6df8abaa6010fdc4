"""The documents page and its no-JavaScript fallbacks."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse

from documents.models import Document
from documents.tests import hostile_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _named(data: bytes, name: str) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def test_page_requires_login():
    response = Client().get(reverse("documents"))

    assert response.status_code == 302
    assert reverse("login") in response["Location"]


def test_page_lists_own_documents_with_status_and_errors(browser, post_file, other_user):
    failed_id = post_file(hostile_files.sample_pdf(), name="mine.pdf").json()["id"]
    Document.objects.filter(id=failed_id).update(status="failed", error="This PDF is password-protected.")
    theirs = Client()
    theirs.force_login(other_user)
    theirs.post(reverse("document_upload"), {"file": _named(b"their secret notes\n", "theirs.txt")})
    assert Document.objects.filter(owner=other_user, filename="theirs.txt").exists()

    response = browser.get(reverse("documents"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "mine.pdf" in page and "This PDF is password-protected." in page
    assert "theirs.txt" not in page
    assert 'src="/static/documents/documents.js"' in page
    assert [item["id"] for item in response.context["documents_json"]] == [failed_id]


def test_form_upload_of_several_files_reports_each(browser, user):
    response = browser.post(
        reverse("document_upload"),
        {
            "file": [_named(hostile_files.sample_markdown(), "guide.md"), _named(hostile_files.png_image(), "x.pdf")],
        },
        follow=True,
    )

    texts = [str(message) for message in response.context["messages"]]
    assert any("guide.md was uploaded" in text for text in texts)
    assert any(text.startswith("x.pdf:") and "PNG image" in text for text in texts)
    assert list(Document.objects.filter(owner=user).values_list("filename", flat=True)) == ["guide.md"]


def test_delete_asks_for_confirmation_then_deletes(browser, post_file):
    document_id = post_file(hostile_files.sample_pdf()).json()["id"]
    url = reverse("document_delete", args=[document_id])

    confirm = browser.get(url)
    assert confirm.status_code == 200 and b"Delete" in confirm.content
    assert Document.objects.filter(id=document_id).exists()

    response = browser.post(url)
    assert response.status_code == 302
    assert not Document.objects.filter(id=document_id).exists()


def test_delete_page_of_another_users_document_is_404(post_file, other_user):
    document_id = post_file(hostile_files.sample_pdf()).json()["id"]
    stranger = Client()
    stranger.force_login(other_user)

    assert stranger.get(reverse("document_delete", args=[document_id])).status_code == 404
    assert stranger.post(reverse("document_delete", args=[document_id])).status_code == 404
    assert Document.objects.filter(id=document_id).exists()


def test_admin_lists_documents(post_file, django_user_model):
    post_file(hostile_files.sample_pdf(), name="admin-visible.pdf")
    admin = django_user_model.objects.create_superuser("admin@example.com", "a-long-password-123")
    client = Client()
    client.force_login(admin)

    response = client.get("/admin/documents/document/")

    assert response.status_code == 200
    assert b"admin-visible" in response.content
