from __future__ import annotations

import json
import resource
from dataclasses import asdict

from django.core.management.base import BaseCommand, CommandError

from documents.models import Document
from documents.services import document_ingest


class Command(BaseCommand):
    help = (
        "Ingest one document in this process, as a worker would (for debugging and benchmarks). "
        "Prints the run's report; --json adds the process's peak memory."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("document_id", type=int)
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON object on stdout")

    def handle(self, *args, document_id: int, as_json: bool, **options) -> None:
        if not Document.objects.filter(id=document_id).exists():
            raise CommandError(f"There is no document {document_id}.")
        report = document_ingest(document_id=document_id)
        if as_json:
            self.stdout.write(
                json.dumps(
                    asdict(report)
                    | {
                        # ru_maxrss is in KiB on Linux; the PDF reader runs in a child, counted separately.
                        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                        "children_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                    },
                    default=str,
                )
            )
            return
        self.stdout.write(f"document {document_id}: {report.outcome} {report.error}".rstrip())
