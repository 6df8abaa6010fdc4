"""The usage and plan pages, and the admin: usage record filters and the monthly margin report with CSV."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import UserFactory
from billing.models import Subscription, UsageRecord
from billing.tests.factories import PlanFactory, UsageRecordFactory, subscribe

pytestmark = pytest.mark.django_db


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_usage_page_draws_one_bar_per_day_of_the_period_as_inline_svg():
    user = UserFactory()
    subscription = subscribe(user=user, plan=PlanFactory(monthly_token_quota=1_000_000))
    day_two = subscription.current_period_start + timedelta(days=1)
    UsageRecordFactory(user=user, prompt_tokens=1_000, completion_tokens=234, cost=Decimal("0.0012"),
                       created_at=day_two)
    UsageRecordFactory(user=user, prompt_tokens=500, completion_tokens=0, cost=Decimal("0.0003"),
                       created_at=day_two + timedelta(minutes=5))

    response = _logged_in(user).get(reverse("usage"))

    assert response.status_code == 200
    html = response.content.decode()
    svg = html[html.index("<svg"):html.index("</svg>")]
    period_days = (subscription.current_period_end.astimezone(UTC).date()
                   - subscription.current_period_start.astimezone(UTC).date()).days + 1
    assert svg.count('<rect class="bar"') == period_days
    assert f"{day_two:%b} {day_two.day}: 1,734 tokens, 2 calls, $0.001500" in svg
    assert "<script" not in html
    assert "1,734 of 1,000,000 tokens" in html


def test_usage_page_warns_at_80_percent_of_the_quota():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(monthly_token_quota=1_000))
    UsageRecordFactory(user=user, prompt_tokens=800, completion_tokens=0, created_at=timezone.now())

    html = _logged_in(user).get(reverse("usage")).content.decode()

    assert "You have used 80.0% of your monthly token quota" in html


def test_usage_page_has_no_warning_below_80_percent():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(monthly_token_quota=1_000))
    UsageRecordFactory(user=user, prompt_tokens=799, completion_tokens=0, created_at=timezone.now())

    html = _logged_in(user).get(reverse("usage")).content.decode()

    assert "of your monthly token quota" not in html


def test_usage_page_needs_login():
    response = Client().get(reverse("usage"))

    assert response.status_code == 302
    assert reverse("login") in response["Location"]


def test_plan_page_without_stripe_says_admins_assign_plans(settings):
    settings.STRIPE_SECRET_KEY = ""
    PlanFactory(slug="free", name="Free", is_default=True, monthly_price=0)
    PlanFactory(slug="pro", name="Pro", stripe_price_id="price_pro", max_file_size_mb=50)

    html = _logged_in(UserFactory()).get(reverse("billing_plans")).content.decode()

    assert "payments are not configured" in html
    assert "an administrator assigns plans" in html
    assert "50 MB" in html
    assert "<form" not in html.split('<main id="main">')[1].split("</main>")[0]


def test_plan_page_with_stripe_offers_checkout_for_purchasable_plans(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_123"
    PlanFactory(slug="free", name="Free", is_default=True, monthly_price=0)
    PlanFactory(slug="pro", name="Pro", stripe_price_id="price_pro")

    html = _logged_in(UserFactory()).get(reverse("billing_plans")).content.decode()

    assert reverse("billing_checkout", args=["pro"]) in html


@pytest.fixture
def admin_client() -> Client:
    admin = UserFactory(is_staff=True, is_superuser=True)
    return _logged_in(admin)


def test_admin_usage_records_filter_by_kind_model_user_and_date(admin_client):
    alice, bob = UserFactory(), UserFactory()
    now = timezone.now()
    UsageRecordFactory(user=alice, kind="chat", model="gpt-4o", request_id="alice-chat", created_at=now)
    UsageRecordFactory(user=alice, kind="embedding", model="text-embedding-3-small", request_id="alice-emb",
                       created_at=now)
    UsageRecordFactory(user=bob, kind="chat", model="gpt-4o-mini", request_id="bob-old",
                       created_at=now - timedelta(days=400))
    url = reverse("admin:billing_usagerecord_changelist")

    def shown(query: str) -> set[str]:
        html = admin_client.get(f"{url}?{query}").content.decode()
        return set(re.findall(r"(alice-chat|alice-emb|bob-old)", html))

    assert shown("kind=embedding") == {"alice-emb"}
    assert shown("model=gpt-4o") == {"alice-chat"}
    assert shown(f"user__id__exact={bob.pk}") == {"bob-old"}
    since = urlencode({"created_at__gte": (now - timedelta(days=7)).isoformat()})
    assert shown(since) == {"alice-chat", "alice-emb"}


def _month_fixture():
    """Two plans, three users, usage this month and last month (which must not count)."""
    month_start = timezone.now().astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    inside, before = month_start + timedelta(hours=1), month_start - timedelta(hours=1)
    pro = PlanFactory(slug="pro", name="Pro", monthly_price=Decimal("20.00"))
    free = PlanFactory(slug="free", name="Free", monthly_price=Decimal("0"))
    heavy, light, lapsed = UserFactory(email="heavy@example.com"), UserFactory(email="light@example.com"), \
        UserFactory(email="lapsed@example.com")
    for user, plan in ((heavy, pro), (light, free), (lapsed, pro)):
        subscribe(user=user, plan=plan)
    Subscription.objects.filter(created_at__gte=month_start).update(created_at=month_start - timedelta(days=3))
    Subscription.objects.filter(user=lapsed).update(status=Subscription.Status.PAST_DUE)
    UsageRecordFactory(user=heavy, cost=Decimal("25.12345678"), prompt_tokens=1_000, completion_tokens=0,
                       created_at=inside)
    UsageRecordFactory(user=light, cost=Decimal("0.50000000"), prompt_tokens=100, completion_tokens=0,
                       created_at=inside)
    UsageRecordFactory(user=lapsed, cost=Decimal("1.00000000"), prompt_tokens=10, completion_tokens=0,
                       created_at=inside)
    UsageRecordFactory(user=heavy, cost=Decimal("99.00000000"), created_at=before)
    return month_start


def test_margin_report_shows_revenue_cost_and_margin_per_plan_and_top_spenders(admin_client):
    month_start = _month_fixture()

    response = admin_client.get(reverse("admin:billing_margin_report"), {"month": f"{month_start:%Y-%m}"})

    assert response.status_code == 200
    report = response.context["report"]
    lines = {line.plan: line for line in report.plans}
    assert (lines["pro"].subscribers, lines["pro"].paying, lines["pro"].revenue) == (2, 1, Decimal("20.00"))
    assert lines["pro"].cost == Decimal("26.12345678")
    assert lines["pro"].margin == Decimal("20.00") - Decimal("26.12345678")
    assert (lines["free"].revenue, lines["free"].cost) == (Decimal("0"), Decimal("0.5"))
    assert report.total.cost == Decimal("26.62345678")
    assert [line.name for line in response.context["top_spenders"]] == [
        "heavy@example.com", "lapsed@example.com", "light@example.com",
    ]
    assert "heavy@example.com" in response.content.decode()


def test_margin_report_csv_has_a_row_per_plan_the_total_and_every_user(admin_client):
    month_start = _month_fixture()

    response = admin_client.get(reverse("admin:billing_margin_report"),
                                {"month": f"{month_start:%Y-%m}", "format": "csv"})

    assert response["Content-Type"].startswith("text/csv")
    assert f"margin-{month_start:%Y-%m}.csv" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    by_key = {(row["scope"], row["name"]): row for row in rows}
    pro = by_key[("plan", "Pro")]
    assert (pro["revenue_usd"], pro["llm_cost_usd"], pro["margin_usd"]) == ("20.00", "26.12345678", "-6.12345678")
    assert by_key[("total", "Total")]["llm_cost_usd"] == "26.62345678"
    users = [row for row in rows if row["scope"] == "user"]
    assert [row["name"] for row in users] == ["heavy@example.com", "lapsed@example.com", "light@example.com"]
    assert by_key[("user", "lapsed@example.com")]["revenue_usd"] == "0.00"


def test_margin_report_counts_a_deleted_users_cost(admin_client):
    month = datetime(2030, 5, 1, tzinfo=UTC)
    ghost = UserFactory()
    UsageRecordFactory(user=ghost, cost=Decimal("3.00000000"), created_at=month + timedelta(days=2))
    ghost.delete()

    response = admin_client.get(reverse("admin:billing_margin_report"), {"month": "2030-05"})

    assert UsageRecord.objects.filter(user=None).count() == 1
    assert response.context["report"].total.cost == Decimal("3")
    assert [line.name for line in response.context["top_spenders"]] == ["(deleted user)"]


@pytest.mark.parametrize("month", ["May 2030", "2030-13", "9999-12", "0001-01", "2030-05-01"])
def test_margin_report_refuses_a_month_it_cannot_read_and_shows_this_one(admin_client, month):
    response = admin_client.get(reverse("admin:billing_margin_report"), {"month": month})

    assert response.status_code == 200
    assert [str(message) for message in response.context["messages"]] == ["Give the month as YYYY-MM."]
    assert response.context["month"] == f"{timezone.now():%Y-%m}"


def test_margin_report_is_for_staff_only():
    response = _logged_in(UserFactory()).get(reverse("admin:billing_margin_report"))

    assert response.status_code == 302
