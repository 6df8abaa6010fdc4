import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import APIKey, User
from accounts.services import api_key_create, api_key_revoke
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys/"


def bearer(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def test_key_is_stored_hashed_and_shown_once_on_creation():
    user = UserFactory()
    client = APIClient()
    client.force_authenticate(user)
    response = client.post(KEYS_URL, {"name": "ci"}, format="json")
    assert response.status_code == 201
    raw_key = response.json()["key"]
    stored = APIKey.objects.get(id=response.json()["id"])
    assert raw_key not in (stored.key_hash, stored.prefix)
    assert raw_key.startswith(stored.prefix + "_")
    listing = client.get(KEYS_URL).json()
    assert listing["count"] == 1
    assert "key" not in listing["results"][0]
    assert listing["results"][0]["prefix"] == stored.prefix


def test_bearer_key_authenticates_and_records_last_use():
    user = UserFactory()
    api_key, raw_key = api_key_create(user=user, name="script")
    response = bearer(raw_key).get(KEYS_URL)
    assert response.status_code == 200
    assert response.json()["results"][0]["id"] == api_key.id
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None


@pytest.mark.parametrize("raw_key", ["dk_00000000_not-a-real-key", "garbage", "dk_"])
def test_unknown_key_gets_401_json(raw_key):
    response = bearer(raw_key).get(KEYS_URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthenticated"


def test_revoked_key_gets_401_saying_so():
    api_key, raw_key = api_key_create(user=UserFactory(), name="old")
    api_key_revoke(api_key=api_key)
    response = bearer(raw_key).get(KEYS_URL)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_revoke_through_the_api_disables_the_key():
    user = UserFactory()
    api_key, raw_key = api_key_create(user=user, name="to revoke")
    client = bearer(raw_key)
    assert client.delete(f"{KEYS_URL}{api_key.id}/").status_code == 204
    assert client.get(KEYS_URL).status_code == 401


def test_a_key_with_the_right_prefix_but_wrong_secret_is_refused():
    api_key, _ = api_key_create(user=UserFactory(), name="real")
    forged = f"{api_key.prefix}_{'A' * 43}"
    assert bearer(forged).get(KEYS_URL).status_code == 401


def test_other_users_key_is_404_on_revoke():
    theirs, _ = api_key_create(user=UserFactory(), name="theirs")
    _, mine = api_key_create(user=UserFactory(), name="mine")
    assert bearer(mine).delete(f"{KEYS_URL}{theirs.id}/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_key_guessing_is_cut_off_with_429(settings, ratelimit_clock_stopped):
    _, good_key = api_key_create(user=UserFactory(), name="good")
    allowed = int(settings.API_KEY_FAILURE_RATE.split("/")[0])
    for attempt in range(allowed + 1):  # the attempt that goes over the limit still gets its 401
        assert bearer(f"dk_{attempt:08x}_guess").get(KEYS_URL).status_code == 401
    response = bearer(good_key).get(KEYS_URL)
    assert response.status_code == 429
    assert "failed API key attempts" in response.json()["error"]["message"]


def test_issue_api_key_creates_the_user_and_prints_a_working_key_last():
    out = io.StringIO()
    call_command("issue_api_key", "new@example.com", "--create", "--name", "cli", stdout=out)
    raw_key = out.getvalue().strip().splitlines()[-1]
    user = User.objects.get(email="new@example.com")
    assert not user.has_usable_password()
    assert bearer(raw_key).get(KEYS_URL).status_code == 200
    assert user.api_keys.get().name == "cli"


def test_issue_api_key_for_a_missing_user_without_create_fails():
    with pytest.raises(CommandError, match="--create"):
        call_command("issue_api_key", "nobody@example.com")
