import pytest
from django.test import RequestFactory
from rest_framework.test import APIClient

from accounts.services import api_key_create
from accounts.tests.factories import UserFactory
from config.api import server_error

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/keys/-5/",
        "/api/v1/keys/abc/",
        "/api/v1/no-such-thing/",
        # Found by schemathesis: `.` stops at a newline, so a `^.*$` catch-all let Django's HTML 404 through.
        "/api/v1/chat/messages/%C2%A3M%28%0A%09/stream",
    ],
)
def test_unknown_api_paths_answer_404_in_the_api_error_format(path):
    _, raw_key = api_key_create(user=UserFactory(), name="k")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found."}}


def test_server_errors_on_api_paths_are_json():
    response = server_error(RequestFactory().get("/api/v1/documents/"))
    assert response.status_code == 500
    assert b'"server_error"' in response.content
