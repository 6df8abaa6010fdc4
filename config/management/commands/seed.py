import importlib

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the data every installation needs (plans, model prices). Safe to run again."

    def handle(self, *args, **options) -> None:
        for app in settings.INSTALLED_APPS:
            try:
                seeds = importlib.import_module(f"{app}.seeds")
            except ModuleNotFoundError as exc:
                if exc.name == f"{app}.seeds":
                    continue
                raise
            for line in seeds.run():
                self.stdout.write(f"{app}: {line}")
