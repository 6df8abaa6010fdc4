from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import APIKey, User

KEY_SCHEME = "dk"
# Recording last use on every request would turn each API read into a write; once a minute is enough to tell
# an operator which keys are alive.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class InvalidAPIKey(Exception):
    pass


def _hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def user_create(*, email: str, password: str | None = None, name: str = "") -> User:
    return User.objects.create_user(email=email, password=password, name=name)


@transaction.atomic
def api_key_create(*, user: User, name: str) -> tuple[APIKey, str]:
    """Returns the key row and the raw key, which is shown once and never stored."""
    prefix = f"{KEY_SCHEME}_{secrets.token_hex(4)}"
    raw_key = f"{prefix}_{secrets.token_urlsafe(32)}"
    api_key = APIKey.objects.create(user=user, name=name or "API key", prefix=prefix, key_hash=_hash_key(raw_key))
    return api_key, raw_key


def api_key_revoke(*, api_key: APIKey) -> APIKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> tuple[User, APIKey]:
    """Resolves a raw key to its active user, or raises InvalidAPIKey."""
    parts = raw_key.split("_")
    if len(parts) < 3 or parts[0] != KEY_SCHEME:
        raise InvalidAPIKey("Malformed API key.")
    prefix = f"{parts[0]}_{parts[1]}"
    api_key = APIKey.objects.select_related("user").filter(prefix=prefix).first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, _hash_key(raw_key)):
        raise InvalidAPIKey("Unknown API key.")
    if api_key.revoked_at is not None:
        raise InvalidAPIKey("This API key has been revoked.")
    if not api_key.user.is_active:
        raise InvalidAPIKey("This account is disabled.")
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        APIKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key.user, api_key
