"""The Stripe webhook with payloads signed by the stripe library's own helper, and the checkout session request
sent to a local Stripe-compatible server (no network)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import stripe
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import UserFactory
from billing.models import Plan, StripeEvent, Subscription
from billing.selectors import effective_limits
from billing.tests.factories import PlanFactory, subscribe

pytestmark = pytest.mark.django_db

SECRET = "whsec_test_secret"
WEBHOOK = "/billing/stripe/webhook/"


@pytest.fixture(autouse=True)
def stripe_settings(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_123"
    settings.STRIPE_WEBHOOK_SECRET = SECRET


@pytest.fixture
def plans() -> dict[str, Plan]:
    return {
        "free": PlanFactory(slug="free", name="Free", is_default=True, monthly_price=0, requests_per_minute=5),
        "pro": PlanFactory(slug="pro", name="Pro", stripe_price_id="price_pro", requests_per_minute=60),
        "team": PlanFactory(slug="team", name="Team", stripe_price_id="price_team", requests_per_minute=300),
    }


def _event(event_type: str, obj: dict, *, event_id: str | None = None, created: int | None = None) -> dict:
    return {
        "id": event_id or f"evt_{time.time_ns()}",
        "object": "event",
        "type": event_type,
        "created": created or int(time.time()),
        "data": {"object": obj},
    }


def _post(event: dict, *, secret: str = SECRET, timestamp: int | None = None, header: str | None = None):
    payload = json.dumps(event)
    if header is None:
        header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return Client().post(WEBHOOK, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def _checkout_completed(user, plan: str = "pro", **kwargs) -> dict:
    return _event("checkout.session.completed", {
        "object": "checkout.session",
        "mode": "subscription",
        "client_reference_id": str(user.pk),
        "customer": "cus_123",
        "subscription": "sub_123",
        "metadata": {"user_id": str(user.pk), "plan": plan},
    }, **kwargs)


def _stripe_subscription(status: str, price: str = "price_pro", start: int | None = None,
                         end: int | None = None, stripe_id: str = "sub_123") -> dict:
    start = start or int(time.time())
    end = end or start + 30 * 86400
    return {
        "id": stripe_id,
        "object": "subscription",
        "customer": "cus_123",
        "status": status,
        "items": {"data": [{"price": {"id": price}, "current_period_start": start, "current_period_end": end}]},
    }


def test_signed_checkout_completed_upgrades_the_user(plans):
    user = UserFactory()

    response = _post(_checkout_completed(user))

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    subscription = Subscription.objects.get(user=user)
    assert (subscription.plan.slug, subscription.status) == ("pro", "active")
    assert (subscription.stripe_customer_id, subscription.stripe_subscription_id) == ("cus_123", "sub_123")
    assert effective_limits(subscription=subscription).requests_per_minute == 60


def test_a_checkout_paid_by_a_delayed_method_upgrades_only_once_the_payment_succeeds(plans):
    user = UserFactory()
    completed = _checkout_completed(user)
    completed["data"]["object"]["payment_status"] = "unpaid"  # a bank debit still in progress

    _post(completed)
    before = Subscription.objects.get(user=user).plan.slug
    succeeded = _checkout_completed(user)
    succeeded["type"] = "checkout.session.async_payment_succeeded"
    succeeded["data"]["object"]["payment_status"] = "paid"
    _post(succeeded)

    assert before == "free"
    assert StripeEvent.objects.get(event_id=completed["id"]).outcome == "ignored: the payment is not confirmed yet"
    subscription = Subscription.objects.get(user=user)
    assert (subscription.plan.slug, subscription.status) == ("pro", "active")


def test_bad_signature_is_rejected_and_changes_nothing(plans):
    user = UserFactory()

    response = _post(_checkout_completed(user), secret="whsec_someone_else")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_rejected"
    assert Subscription.objects.get(user=user).plan.slug == "free"
    assert not StripeEvent.objects.exists()


def test_missing_signature_is_rejected(plans):
    response = Client().post(WEBHOOK, data=json.dumps(_checkout_completed(UserFactory())),
                             content_type="application/json")

    assert response.status_code == 400


def test_stale_timestamp_is_rejected_even_with_a_valid_signature(plans, settings):
    user = UserFactory()
    stale = int(time.time()) - settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS - 60

    response = _post(_checkout_completed(user), timestamp=stale)

    assert response.status_code == 400
    assert "tolerance" in response.json()["error"]["message"]
    assert Subscription.objects.get(user=user).plan.slug == "free"


def test_replayed_event_is_acknowledged_but_not_applied_again(plans):
    user = UserFactory()
    event = _checkout_completed(user, event_id="evt_replayed")
    assert _post(event).status_code == 200
    Subscription.objects.filter(user=user).update(plan=plans["team"])  # an admin changes the plan meanwhile

    response = _post(event)

    assert response.status_code == 200
    assert response.json()["duplicate"] is True
    assert Subscription.objects.get(user=user).plan.slug == "team"
    assert StripeEvent.objects.filter(event_id="evt_replayed").count() == 1


def test_webhook_without_a_configured_secret_is_rejected(plans, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""

    response = _post(_checkout_completed(UserFactory()))

    assert response.status_code == 400
    assert "not configured" in response.json()["error"]["message"]


def test_subscription_updated_sets_status_plan_and_period(plans):
    user = UserFactory()
    _post(_checkout_completed(user))
    start = int(time.time()) - 3600

    response = _post(_event("customer.subscription.updated",
                            _stripe_subscription("active", price="price_team", start=start)))

    assert response.status_code == 200
    subscription = Subscription.objects.get(user=user)
    assert subscription.plan.slug == "team"
    assert subscription.current_period_start == datetime.fromtimestamp(start, tz=UTC)
    assert subscription.current_period_end == datetime.fromtimestamp(start + 30 * 86400, tz=UTC)


def test_past_due_subscription_falls_back_to_the_default_plan_limits(plans):
    user = UserFactory()
    _post(_checkout_completed(user))

    _post(_event("customer.subscription.updated", _stripe_subscription("past_due")))

    subscription = Subscription.objects.get(user=user)
    assert (subscription.plan.slug, subscription.status) == ("pro", "past_due")
    assert effective_limits(subscription=subscription).requests_per_minute == 5


def test_subscription_deleted_cancels(plans):
    user = UserFactory()
    _post(_checkout_completed(user))

    _post(_event("customer.subscription.deleted", _stripe_subscription("canceled")))

    assert Subscription.objects.get(user=user).status == "canceled"


def test_invoice_payment_failed_marks_the_subscription_past_due(plans):
    user = UserFactory()
    _post(_checkout_completed(user))
    invoice = {"object": "invoice", "customer": "cus_123",
               "parent": {"subscription_details": {"subscription": "sub_123"}}}

    _post(_event("invoice.payment_failed", invoice))

    assert Subscription.objects.get(user=user).status == "past_due"


def test_an_event_older_than_the_last_applied_one_is_not_applied(plans):
    user = UserFactory()
    now = int(time.time())
    _post(_checkout_completed(user, created=now - 100))
    _post(_event("customer.subscription.updated", _stripe_subscription("past_due"), created=now))

    response = _post(_event("customer.subscription.updated", _stripe_subscription("active"), created=now - 50))

    assert response.status_code == 200
    assert Subscription.objects.get(user=user).status == "past_due"
    assert StripeEvent.objects.filter(outcome__startswith="ignored: older").count() == 1


def test_events_of_a_subscription_the_user_left_do_not_touch_the_live_one(plans):
    """A customer with a leftover subscription (bought before a switch): its renewal, its failed payment and its
    cancellation are recorded, and the plan, status and period of the subscription the user pays for stay."""
    user = UserFactory()
    _post(_checkout_completed(user, plan="team"))
    before = Subscription.objects.get(user=user)
    old = _stripe_subscription("active", price="price_pro", start=int(time.time()) - 86400, stripe_id="sub_old")
    invoice = {"object": "invoice", "customer": "cus_123",
               "parent": {"subscription_details": {"subscription": "sub_old"}}}

    for event in (_event("customer.subscription.updated", old), _event("invoice.payment_failed", invoice),
                  _event("customer.subscription.deleted", old | {"status": "canceled"})):
        assert _post(event).status_code == 200

    after = Subscription.objects.get(user=user)
    assert (after.plan.slug, after.status, after.stripe_subscription_id) == ("team", "active", "sub_123")
    assert after.current_period_start == before.current_period_start
    assert StripeEvent.objects.filter(outcome="ignored: sub_old is not the user's current subscription").count() == 3


def test_a_new_subscription_takes_over_from_a_canceled_one(plans):
    user = UserFactory()
    _post(_checkout_completed(user))
    _post(_event("customer.subscription.deleted", _stripe_subscription("canceled")))

    _post(_event("customer.subscription.updated", _stripe_subscription("active", price="price_team",
                                                                       stripe_id="sub_new")))

    subscription = Subscription.objects.get(user=user)
    assert (subscription.plan.slug, subscription.status, subscription.stripe_subscription_id) == (
        "team", "active", "sub_new")


def test_unhandled_event_types_are_acknowledged(plans):
    response = _post(_event("customer.created", {"object": "customer", "id": "cus_9"}))

    assert response.status_code == 200
    assert StripeEvent.objects.get(type="customer.created").outcome.startswith("ignored")


class _FakeStripe(BaseHTTPRequestHandler):
    """Checkout sessions, and the subscriptions `subscriptions` holds (retrieved and updated)."""

    requests: list[tuple[str, dict, str]] = []
    subscriptions: dict[str, dict] = {}

    def do_GET(self) -> None:
        self.requests.append((f"GET {self.path}", {}, self.headers.get("Authorization", "")))
        found = self.subscriptions.get(self.path.removeprefix("/v1/subscriptions/"))
        self._reply(found or {"error": {"type": "invalid_request_error", "message": "No such subscription"}},
                    200 if found else 404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.requests.append((self.path, parse_qs(body), self.headers.get("Authorization", "")))
        if self.path.startswith("/v1/subscriptions/"):
            self.do_GET()
            self.requests.pop()
            return
        self._reply({"id": "cs_test_1", "object": "checkout.session",
                     "url": "https://checkout.stripe.test/c/pay/cs_test_1"})

    def _reply(self, body: dict, status: int = 200) -> None:
        reply = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_stripe(settings) -> Iterator[list]:
    _FakeStripe.requests, _FakeStripe.subscriptions = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeStripe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{server.server_address[1]}"
    yield _FakeStripe.requests
    server.shutdown()
    server.server_close()


def test_checkout_creates_a_subscription_session_and_redirects_to_stripe(plans, fake_stripe):
    user = UserFactory()
    client = Client()
    client.force_login(user)

    response = client.post(reverse("billing_checkout", args=["pro"]))

    assert response.status_code == 302
    assert response["Location"] == "https://checkout.stripe.test/c/pay/cs_test_1"
    [(path, form, auth)] = fake_stripe
    assert path == "/v1/checkout/sessions"
    assert auth == "Bearer sk_test_123"
    assert form["mode"] == ["subscription"]
    assert form["line_items[0][price]"] == ["price_pro"]
    assert form["client_reference_id"] == [str(user.pk)]
    assert form["metadata[plan]"] == ["pro"]
    assert form["subscription_data[metadata][user_id]"] == [str(user.pk)]
    assert form["customer_email"] == [user.email]


def test_checkout_of_a_plan_without_a_stripe_price_sends_nothing_to_stripe(plans, fake_stripe):
    user = UserFactory()
    subscribe(user=user, plan=plans["pro"])
    client = Client()
    client.force_login(user)

    response = client.post(reverse("billing_checkout", args=["free"]), follow=True)

    assert fake_stripe == []
    assert "cannot be bought online" in response.content.decode()


def test_checkout_without_stripe_keys_says_payments_are_not_configured(plans, settings):
    settings.STRIPE_SECRET_KEY = ""
    client = Client()
    client.force_login(UserFactory())

    response = client.post(reverse("billing_checkout", args=["pro"]), follow=True)

    assert "Payments are not configured" in response.content.decode()


def _paying_for_pro(user, *, stripe_status: str) -> Client:
    """`user` pays for Pro through Stripe subscription sub_123, whose status at Stripe is `stripe_status`."""
    _post(_checkout_completed(user))
    item = {"id": "si_1", "object": "subscription_item", "price": {"id": "price_pro", "object": "price"}}
    _FakeStripe.subscriptions["sub_123"] = {"id": "sub_123", "object": "subscription", "status": stripe_status,
                                            "customer": "cus_123", "items": {"object": "list", "data": [item]}}
    client = Client()
    client.force_login(user)
    return client


def test_a_paying_user_switching_plans_moves_their_subscription_instead_of_buying_a_second(plans, fake_stripe):
    user = UserFactory()
    client = _paying_for_pro(user, stripe_status="active")

    response = client.post(reverse("billing_checkout", args=["team"]), follow=True)

    assert [path for path, _, _ in fake_stripe] == ["GET /v1/subscriptions/sub_123", "/v1/subscriptions/sub_123"]
    form = fake_stripe[1][1]
    assert (form["items[0][id]"], form["items[0][price]"]) == (["si_1"], ["price_team"])
    assert form["proration_behavior"] == ["create_prorations"]
    assert form["metadata[plan]"] == ["team"]
    assert "Your subscription is moving to the Team plan" in response.content.decode()
    # The row changes with Stripe's event, not before.
    assert Subscription.objects.get(user=user).plan.slug == "pro"


def test_buying_the_plan_the_subscription_is_on_changes_nothing(plans, fake_stripe):
    user = UserFactory()
    client = _paying_for_pro(user, stripe_status="past_due")  # a failed payment shows the plan buttons again

    response = client.post(reverse("billing_checkout", args=["pro"]), follow=True)

    assert [path for path, _, _ in fake_stripe] == ["GET /v1/subscriptions/sub_123"]
    assert "Your subscription is on the Pro plan already." in response.content.decode()


@pytest.mark.parametrize("stripe_status", ["canceled", "incomplete", "unpaid", "deleted there"])
def test_a_user_whose_stripe_subscription_cannot_change_gets_a_new_checkout(plans, fake_stripe, stripe_status):
    user = UserFactory()
    client = _paying_for_pro(user, stripe_status=stripe_status)  # the event saying so has not reached us yet
    if stripe_status == "deleted there":
        del _FakeStripe.subscriptions["sub_123"]  # retrieving it is a 404

    response = client.post(reverse("billing_checkout", args=["team"]))

    assert response["Location"] == "https://checkout.stripe.test/c/pay/cs_test_1"
    assert [path for path, _, _ in fake_stripe] == ["GET /v1/subscriptions/sub_123", "/v1/checkout/sessions"]
    assert fake_stripe[1][1]["customer"] == ["cus_123"]
