from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from documents.services.reindex import documents_reindex, documents_reindex_now, embedding_column_resize
from documents.services.store import vector_column_dimensions


class Command(BaseCommand):
    help = (
        "Re-embed documents with the configured embedding model (EMBEDDING_BACKEND / EMBEDDING_MODEL). "
        "When EMBEDDING_DIMENSIONS differs from the database column, the column is resized and the HNSW "
        "index rebuilt first, and every user's documents are re-embedded."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", metavar="EMAIL", help="only this user's documents")
        parser.add_argument(
            "--sync",
            action="store_true",
            help="embed in this process instead of queueing the work for the ingest workers",
        )

    def handle(self, *args, user: str | None, sync: bool, **options) -> None:
        owner = None
        if user:
            owner = User.objects.filter(email__iexact=user).first()
            if owner is None:
                raise CommandError(f"There is no user {user!r}.")
        wanted, current = settings.EMBEDDING_DIMENSIONS, vector_column_dimensions()
        if wanted != current:
            if owner is not None:
                raise CommandError(
                    f"The vector column has {current} dimensions and the configured model {wanted}: every "
                    "user's chunks must be rebuilt. Run `reindex` without --user."
                )
            embedding_column_resize(dimensions=wanted)
            self.stdout.write(f"Vector column resized from {current} to {wanted} dimensions; HNSW index rebuilt.")
        if sync:
            failed = 0
            for report in documents_reindex_now(user=owner):
                failed += report.outcome == "failed"
                self.stdout.write(f"document {report.document_id}: {report.outcome} {report.error}".rstrip())
            if failed:
                self.stderr.write(f"{failed} document(s) failed.")
            return
        ids = documents_reindex(user=owner)
        self.stdout.write(f"{len(ids)} document(s) queued for re-embedding with {settings.EMBEDDING_MODEL}.")
