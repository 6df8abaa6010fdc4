from django.core.management.base import BaseCommand

from config.bench import run


class Command(BaseCommand):
    help = "Run the benchmarks (all, or those whose names start with the given prefixes)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("names", nargs="*")

    def handle(self, *args, names: list[str], **options) -> None:
        run(names or None)
