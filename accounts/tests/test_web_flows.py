import re

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_sign_up_creates_the_user_and_logs_them_in(client):
    response = client.post(
        reverse("signup"),
        {"email": "Ada@Example.com", "name": "Ada", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert response.url == reverse("dashboard")
    user = User.objects.get(email="ada@example.com")
    assert user.check_password(PASSWORD)
    assert client.get(reverse("dashboard")).context["user"] == user


def test_sign_up_with_a_taken_email_explains_the_problem(client):
    UserFactory(email="taken@example.com")
    response = client.post(
        reverse("signup"), {"email": "taken@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert User.objects.filter(email="taken@example.com").count() == 1


def test_log_in_and_log_out(client):
    user = UserFactory()
    response = client.post(reverse("login"), {"username": user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("dashboard")).status_code == 302


def test_wrong_password_is_refused(client):
    user = UserFactory()
    response = client.post(reverse("login"), {"username": user.email, "password": "wrong password"})
    assert response.status_code == 200
    assert "correct email" in response.content.decode().lower()


def test_dashboard_requires_log_in(client):
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_password_change(client):
    user = UserFactory()
    client.force_login(user)
    new_password = "a brand new passphrase 42"
    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": new_password, "new_password2": new_password},
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new_password)


def test_password_reset_sends_a_link_that_sets_a_new_password(client):
    user = UserFactory(email="forgetful@example.com")
    response = client.post(reverse("password_reset"), {"email": "forgetful@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/accounts/password/reset/\S+/)", mail.outbox[0].body).group(1)
    form_url = client.get(link).url  # Django swaps the token for a session-held one
    new_password = "reset passphrase 2026"
    response = client.post(form_url, {"new_password1": new_password, "new_password2": new_password})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new_password)


def test_login_brute_force_is_answered_with_429(client, settings, ratelimit_clock_stopped):
    user = UserFactory()
    attempts = int(settings.LOGIN_RATE.split("/")[0])
    for _ in range(attempts):
        assert client.post(reverse("login"), {"username": user.email, "password": "guess"}).status_code == 200
    response = client.post(reverse("login"), {"username": user.email, "password": PASSWORD})
    assert response.status_code == 429
    assert response["Retry-After"]


def test_sign_ups_from_one_address_are_limited_with_429(client, settings, ratelimit_clock_stopped):
    allowed = int(settings.SIGNUP_RATE.split("/")[0])
    for index in range(allowed):
        form = {"email": f"user{index}@example.com", "password1": PASSWORD, "password2": PASSWORD}
        assert client.post(reverse("signup"), form).status_code == 302
        client.post(reverse("logout"))

    response = client.post(reverse("signup"), {"email": "one.more@example.com", "password1": PASSWORD,
                                               "password2": PASSWORD})

    assert response.status_code == 429
    assert response["Retry-After"]
    assert User.objects.count() == allowed
    assert client.get(reverse("signup")).status_code == 200  # the form itself is still shown


def test_web_api_key_page_shows_a_new_key_once_and_revokes(client):
    user = UserFactory()
    client.force_login(user)
    response = client.post(reverse("api_keys"), {"name": "laptop"}, follow=True)
    raw_key = re.search(r'data-testid="new-key">([^<]+)<', response.content.decode()).group(1)
    assert raw_key.startswith("dk_")
    listing = client.get(reverse("api_keys")).content.decode()
    assert raw_key not in listing
    assert "_".join(raw_key.split("_")[:2]) in listing  # the prefix identifies it
    key = user.api_keys.get()
    client.post(reverse("api_key_revoke", args=[key.id]))
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_cannot_revoke_someone_elses_key(client):
    from accounts.services import api_key_create

    owner_key, _ = api_key_create(user=UserFactory(), name="theirs")
    client.force_login(UserFactory())
    assert client.post(reverse("api_key_revoke", args=[owner_key.id])).status_code == 404
    owner_key.refresh_from_db()
    assert owner_key.revoked_at is None
