from __future__ import annotations

import json
import resource
from dataclasses import asdict
from pathlib import Path

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
            self.stdout.write(json.dumps(asdict(report) | {"peak_rss_bytes": _peak_rss_bytes()}, default=str))
            return
        self.stdout.write(f"document {document_id}: {report.outcome} {report.error}".rstrip())


def _peak_rss_bytes() -> int:
    """This process's own peak resident memory.

    Not ru_maxrss: Linux carries it over exec, so a process started by a big parent (fork, then exec) reports
    the parent's size. VmHWM belongs to the current address space, created fresh at exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
