"""GET /api/v1/usage/, and how billing's refusals reach API clients through config.api's exception handler
(exercised by two small DRF views that call the services the way chat and documents do)."""

from __future__ import annotations

import socket
import uuid
from decimal import Decimal

import pytest
from django.urls import include, path
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from accounts.tests.factories import UserFactory
from billing.http import limit_exceeded_event, limit_exceeded_message
from billing.limiter import LimitExceeded
from billing.services import MB, limits_check_upload, llm_reserve, llm_settle, usage_record
from billing.tests.factories import ModelPriceFactory, PlanFactory, subscribe

pytestmark = pytest.mark.django_db

MODEL = "gpt-4o-mini"


class ReserveApi(APIView):
    def post(self, request):
        reservation = llm_reserve(user=request.user, model=MODEL, prompt_tokens=int(request.data["prompt_tokens"]),
                                  max_tokens=int(request.data["max_tokens"]), request_id=uuid.uuid4().hex,
                                  stream=False)
        return Response({"request_id": reservation.request_id}, headers=reservation.headers())


class UploadApi(APIView):
    def post(self, request):
        limits_check_upload(user=request.user, size_bytes=int(request.data["size_bytes"]),
                            document_count=int(request.data["document_count"]),
                            storage_bytes=int(request.data["storage_bytes"]))
        return Response(status=201)


urlpatterns = [
    path("api/v1/", include("billing.api_urls")),
    path("test/reserve/", ReserveApi.as_view()),
    path("test/upload/", UploadApi.as_view()),
]


@pytest.fixture
def price():
    return ModelPriceFactory(model=MODEL, input_per_million=Decimal("0.15"), output_per_million=Decimal("0.60"))


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _user(**plan_fields):
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(**plan_fields))
    return user


@pytest.mark.urls(__name__)
def test_usage_reports_tokens_by_kind_and_model_cost_quota_and_limits(price):
    embedding_price = ModelPriceFactory(model="text-embedding-3-small", kind="embedding",
                                        input_per_million=Decimal("0.02"), output_per_million=Decimal("0"))
    user = _user(monthly_token_quota=10_000, requests_per_minute=30, chat_models=[MODEL])
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=4_000, max_tokens=1_000, request_id="c1")
    chat = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=4_000, completion_tokens=500,
                      latency_ms=10, request_id="c1")
    embedding = usage_record(user=user, kind="embedding", model="text-embedding-3-small", prompt_tokens=3_600,
                             request_id="e1")

    response = _client(user).get("/api/v1/usage/")

    assert response.status_code == 200
    body = response.json()
    assert body["plan"]["slug"] == user.subscription.plan.slug
    assert set(body["period"]) == {"start", "end"}
    assert body["tokens"]["total"] == body["used"] == 8_100
    assert body["tokens"]["by_kind"]["chat"] == {
        "requests": 1, "prompt_tokens": 4_000, "completion_tokens": 500, "total_tokens": 4_500,
        "cost": str(chat.cost),
    }
    assert body["tokens"]["by_kind"]["embedding"]["total_tokens"] == 3_600
    assert {row["model"] for row in body["tokens"]["by_model"]} == {MODEL, embedding_price.model}
    assert Decimal(body["cost"]) == chat.cost + embedding.cost
    assert (body["quota"], body["remaining"], body["percent_used"]) == (10_000, 1_900, 81.0)
    assert body["warning_80"] is True
    assert body["limits"]["requests_per_minute"] == 30
    assert body["limits"]["chat_models"] == [MODEL]
    assert body["current"]["rpm"] == {"limit": 30, "used": 1, "remaining": 29, "reset_seconds": 60}


@pytest.mark.urls(__name__)
def test_usage_has_no_warning_below_80_percent(price):
    user = _user(monthly_token_quota=10_000)
    usage_record(user=user, kind="chat", model=MODEL, prompt_tokens=7_999, request_id="c1")

    body = _client(user).get("/api/v1/usage/").json()

    assert (body["warning_80"], body["exhausted"]) == (False, False)


@pytest.mark.urls(__name__)
def test_usage_needs_authentication():
    assert APIClient().get("/api/v1/usage/").status_code == 401


@pytest.mark.urls(__name__)
def test_rate_limited_call_is_429_with_retry_after_and_ietf_ratelimit_headers(price):
    user = _user(requests_per_minute=2, tokens_per_minute=100_000)
    client = _client(user)
    ok = [client.post("/test/reserve/", {"prompt_tokens": 10, "max_tokens": 10}, format="json") for _ in range(2)]

    response = client.post("/test/reserve/", {"prompt_tokens": 10, "max_tokens": 10}, format="json")

    assert [r.status_code for r in ok] == [200, 200]
    assert '"rpm";r=0' in ok[1]["RateLimit"]
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["code"], error["limit"]) == ("rate_limited", "rpm")
    assert 1 <= error["retry_after"] <= 60
    assert "2 requests per minute" in error["message"]
    assert response["Retry-After"] == str(error["retry_after"])
    assert '"rpm";q=2;w=60' in response["RateLimit-Policy"]
    assert '"tpm";q=100000;qu="tokens";w=60' in response["RateLimit-Policy"]
    assert '"rpm";r=0;t=' in response["RateLimit"]


@pytest.mark.urls(__name__)
def test_exhausted_quota_is_429_quota_exceeded(price):
    user = _user(monthly_token_quota=1_000)
    usage_record(user=user, kind="chat", model=MODEL, prompt_tokens=990, request_id="c1")

    response = _client(user).post("/test/reserve/", {"prompt_tokens": 10, "max_tokens": 10}, format="json")

    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["code"], error["limit"]) == ("quota_exceeded", "quota")
    assert "monthly token quota" in error["message"]
    assert '"quota";r=10' in response["RateLimit"]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"size_bytes": 11 * MB, "document_count": 0, "storage_bytes": 0}, 413, "file_too_large"),
        ({"size_bytes": 1, "document_count": 5, "storage_bytes": 0}, 403, "document_limit"),
        ({"size_bytes": 2 * MB, "document_count": 1, "storage_bytes": 19 * MB}, 403, "storage_limit"),
        ({"size_bytes": 1 * MB, "document_count": 4, "storage_bytes": 19 * MB}, 201, None),
    ],
)
def test_upload_limits_answer_with_their_status_and_a_message(payload, status, code):
    user = _user(max_file_size_mb=10, max_documents=5, max_storage_mb=20)

    response = _client(user).post("/test/upload/", payload, format="json")

    assert response.status_code == status
    if code:
        assert response.json()["error"]["code"] == code
        assert "plan" in response.json()["error"]["message"]


@pytest.mark.urls(__name__)
def test_model_outside_the_plan_is_403(price):
    ModelPriceFactory(model="gpt-4.1")
    user = _user(chat_models=["gpt-4.1"])

    response = _client(user).post("/test/reserve/", {"prompt_tokens": 10, "max_tokens": 10}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"


def test_websocket_error_event_for_a_refusal_names_the_limit_and_when_to_retry(price):
    user = _user(concurrent_streams=1)
    llm_reserve(user=user, model=MODEL, prompt_tokens=10, max_tokens=10, request_id="stream-1")
    with pytest.raises(LimitExceeded) as caught:
        llm_reserve(user=user, model=MODEL, prompt_tokens=10, max_tokens=10, request_id="stream-2")

    event = limit_exceeded_event(caught.value)

    assert event == {
        "type": "error", "code": "rate_limited", "limit": "concurrency", "retry_after": caught.value.retry_after,
        "message": "Too many requests at once: your plan allows 1 at a time. Wait for one to finish.",
    }


@pytest.mark.urls(__name__)
def test_unreachable_redis_refuses_the_call_with_503(price, settings):
    user = _user()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        settings.REDIS_URL = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"

    response = _client(user).post("/test/reserve/", {"prompt_tokens": 10, "max_tokens": 10}, format="json")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "limiter_unavailable"


@pytest.mark.parametrize(
    ("limit", "value", "expected"),
    [
        ("rpm", 1, "your plan allows 1 request per minute. Try again in 30 s."),
        ("rpm", 2, "your plan allows 2 requests per minute. Try again in 30 s."),
        ("tpm", 1_000, "your plan allows 1,000 tokens per minute. Try again in 30 s."),
    ],
)
def test_refusal_message_counts_in_the_singular_and_plural(limit, value, expected):
    refused = LimitExceeded(limit=limit, retry_after=30, retry_after_ms=30_000, limit_value=value, remaining=0,
                            reset_seconds=30, satisfiable=True, violated=(limit,), states={})

    assert limit_exceeded_message(refused) == f"Rate limit reached: {expected}"
