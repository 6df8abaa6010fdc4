from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from django.conf import settings

from accounts.models import User
from billing.services import subscription_assign_plan
from documents.ingestion.sniff import sniff_kind_path
from documents.ingestion.types import CONTENT_TYPES
from documents.models import Document, upload_path
from documents.services import document_delete


def bench_user(email: str) -> User:
    """A throwaway account for benchmark data, on the largest plan so that repeated runs fit its quota."""
    user, created = User.objects.get_or_create(email=email, defaults={"name": "Benchmark"})
    if created:
        user.set_unusable_password()
        user.save()
    subscription_assign_plan(user=user, plan_slug="team")
    return user


def bench_documents_clear(user: User) -> None:
    for document in Document.objects.filter(owner=user):
        document_delete(document=document)


def bench_document(user: User, source: Path, *, title: str | None = None) -> Document:
    """A queued document for `source`, stored the way an upload stores it (without the HTTP part)."""
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    kind = sniff_kind_path(source)
    document = Document(owner=user, title=title or source.stem, filename=source.name, content_type=CONTENT_TYPES[kind],
                        kind=kind.value, size_bytes=source.stat().st_size, sha256=sha256)
    relative = upload_path(document, source.name)
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    document.file.name = relative
    document.save()
    return document
