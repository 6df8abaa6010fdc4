from __future__ import annotations

import csv
from datetime import date

from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter, RelatedOnlyFieldListFilter
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from redis.exceptions import RedisError

from billing.models import ModelPrice, Plan, StripeEvent, Subscription, UsageRecord
from billing.selectors import MarginLine, MarginReport, margin_report
from billing.services import quota_rebuild


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "name", "slug", "monthly_price", "monthly_token_quota", "requests_per_minute", "tokens_per_minute",
        "concurrent_streams", "max_documents", "max_storage_mb", "max_file_size_mb", "is_default", "is_active",
    )
    list_filter = ("is_active", "is_default")
    search_fields = ("slug", "name")
    prepopulated_fields = {"slug": ("name",)}
    fieldsets = (
        (None, {"fields": ("name", "slug", "monthly_price", "is_default", "is_active", "sort_order")}),
        ("Metering", {"fields": ("monthly_token_quota", "requests_per_minute", "tokens_per_minute",
                                 "concurrent_streams", "chat_models")}),
        ("Documents", {"fields": ("max_documents", "max_storage_mb", "max_file_size_mb")}),
        ("Payments", {"fields": ("stripe_price_id",)}),
    )


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("user", "plan", "status", "current_period_start", "current_period_end", "has_overrides")
    list_filter = ("plan", "status")
    search_fields = ("user__email", "stripe_customer_id", "stripe_subscription_id")
    raw_id_fields = ("user",)
    list_select_related = ("user", "plan")
    readonly_fields = ("created_at", "updated_at", "stripe_event_at")
    fieldsets = (
        (None, {"fields": ("user", "plan", "status")}),
        ("Period", {"fields": ("period_anchor", "current_period_start", "current_period_end")}),
        ("Overrides", {"fields": ("overrides",)}),
        ("Stripe", {"fields": ("stripe_customer_id", "stripe_subscription_id", "stripe_event_at")}),
        (None, {"fields": ("created_at", "updated_at")}),
    )
    actions = ("rebuild_quota",)

    @admin.display(boolean=True, description="overrides")
    def has_overrides(self, obj: Subscription) -> bool:
        return bool(obj.overrides)

    @admin.action(description="Rebuild the quota counter from the ledger")
    def rebuild_quota(self, request: HttpRequest, queryset) -> None:
        try:
            for subscription in queryset.select_related("user"):
                used = quota_rebuild(user=subscription.user)
                self.message_user(request, f"{subscription.user}: quota counter set to {used:,} tokens.")
        except RedisError as exc:
            self.message_user(request, f"Redis is unavailable: {exc}", level=messages.ERROR)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "kind", "input_per_million", "output_per_million", "effective_from", "context_window",
                    "default_max_tokens")
    list_filter = ("kind",)
    search_fields = ("model",)
    date_hierarchy = "effective_from"


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ("created_at", "user", "kind", "model", "prompt_tokens", "completion_tokens", "cost",
                    "latency_ms", "request_id")
    list_filter = (
        "kind",
        "model",
        ("created_at", DateFieldListFilter),
        ("user", RelatedOnlyFieldListFilter),
    )
    search_fields = ("user__email", "request_id", "model")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    show_full_result_count = False
    readonly_fields = [field.name for field in UsageRecord._meta.fields]

    # The ledger is written by the services only: an edited row would no longer match what was billed.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_urls(self):
        urls = [path("margin/", self.admin_site.admin_view(self.margin_view), name="billing_margin_report")]
        return urls + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        extra_context = {**(extra_context or {}), "margin_report_url": reverse("admin:billing_margin_report")}
        return super().changelist_view(request, extra_context=extra_context)

    def margin_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        month = _parse_month(request.GET.get("month"))
        if month is None:
            messages.error(request, "Give the month as YYYY-MM.")
            month = timezone.now().date().replace(day=1)
        report = margin_report(month=month)
        if request.GET.get("format") == "csv":
            return _margin_csv(report)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Margin report, {month:%B %Y}",
            "opts": self.model._meta,
            "report": report,
            "month": f"{month:%Y-%m}",
            "top_spenders": report.top_spenders(20),
        }
        return TemplateResponse(request, "admin/billing/margin_report.html", context)


def _parse_month(value: str | None) -> date | None:
    if not value:
        return timezone.now().date().replace(day=1)
    try:
        year, month = (int(part) for part in value.split("-"))
        # The report also reads the months around this one: the first and last years have no neighbours.
        return date(year, month, 1) if date.min.year < year < date.max.year else None
    except ValueError:
        return None


_CSV_HEADER = ("scope", "name", "plan", "subscribers", "paying", "revenue_usd", "llm_cost_usd", "margin_usd",
               "margin_percent", "tokens", "requests")


def _cell(text: str) -> str:
    # A spreadsheet would run a cell starting with one of these as a formula (an email may start with "=").
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text


def _csv_row(scope: str, line: MarginLine) -> tuple:
    margin_percent = "" if line.margin_percent is None else f"{line.margin_percent}"
    return (scope, _cell(line.name), line.plan, line.subscribers, line.paying, f"{line.revenue:.2f}",
            f"{line.cost:.8f}", f"{line.margin:.8f}", margin_percent, line.tokens, line.requests)


def _margin_csv(report: MarginReport) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="margin-{report.month:%Y-%m}.csv"'
    writer = csv.writer(response)
    writer.writerow(_CSV_HEADER)
    for line in report.plans:
        writer.writerow(_csv_row("plan", line))
    writer.writerow(_csv_row("total", report.total))
    for line in report.users:
        writer.writerow(_csv_row("user", line))
    return response


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ("received_at", "type", "event_id", "outcome")
    list_filter = ("type",)
    search_fields = ("event_id", "outcome")
    readonly_fields = ("event_id", "type", "payload", "received_at", "outcome")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
