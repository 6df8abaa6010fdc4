import pytest
from django.urls import reverse

from accounts.tests.factories import UserFactory
from billing.seeds import run as seed_billing
from chat.models import Conversation
from documents.models import Document

pytestmark = pytest.mark.django_db


def _document(owner, title: str, status: str = "ready", error: str = "") -> Document:
    return Document.objects.create(
        owner=owner, title=title, filename=f"{title}.pdf", content_type="application/pdf", kind="pdf",
        size_bytes=10, sha256=title.ljust(64, "0"), file=f"documents/{owner.id}/{title}", status=status, error=error,
    )


def test_landing_page_lists_the_plans(client):
    list(seed_billing())
    body = client.get(reverse("home")).content.decode()
    for plan in ("Free", "Pro", "Team"):
        assert plan in body


def test_dashboard_shows_only_my_documents_usage_and_conversations(client):
    list(seed_billing())
    me, someone = UserFactory(), UserFactory()
    _document(me, "my-report", error="")
    _document(me, "broken-scan", status="failed", error="This PDF has no text layer.")
    _document(someone, "their-secret")
    Conversation.objects.create(owner=me, title="Quarterly numbers")
    Conversation.objects.create(owner=someone, title="Their chat")
    client.force_login(me)
    body = client.get(reverse("dashboard")).content.decode()
    assert "my-report" in body and "broken-scan" in body
    assert "This PDF has no text layer." in body
    assert "their-secret" not in body and "Their chat" not in body
    assert "Quarterly numbers" in body
    assert "tokens" in body
