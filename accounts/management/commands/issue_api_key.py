from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import api_key_create, user_create
from accounts.signals import plan_assign_requested


class Command(BaseCommand):
    help = "Issue an API key for a user and print it alone on the last line."

    def add_arguments(self, parser) -> None:
        parser.add_argument("email")
        parser.add_argument("--create", action="store_true", help="Create the user (unusable password) if missing.")
        parser.add_argument("--plan", help="Put the user on this plan (slug).")
        parser.add_argument("--name", default="CLI key", help="A name for the key.")

    def handle(self, *args, email: str, create: bool, plan: str | None, name: str, **options) -> None:
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            if not create:
                raise CommandError(f"No user with email {email}. Pass --create to make one.")
            user = user_create(email=email)
            self.stdout.write(f"Created user {user.email}.")
        if plan:
            # Billing owns plans; it answers through this signal so accounts does not import it.
            responses = plan_assign_requested.send(sender=self.__class__, user=user, plan_slug=plan)
            if not responses:
                raise CommandError("Plans are not available in this installation.")
            for _, message in responses:
                self.stdout.write(str(message))
        api_key, raw_key = api_key_create(user=user, name=name)
        self.stdout.write(f"API key {api_key.prefix}… for {user.email}:")
        self.stdout.write(raw_key)
