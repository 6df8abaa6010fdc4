from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.redis_service import RedisUnavailable, ensure_redis_daemon


class Command(BaseCommand):
    help = "Check that Redis answers at REDIS_URL; start a local redis-server in the background if not."

    def handle(self, *args, **options) -> None:
        try:
            started = ensure_redis_daemon(settings.REDIS_URL)
        except RedisUnavailable as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write("Started a local redis-server." if started else f"Redis is up at {settings.REDIS_URL}.")
