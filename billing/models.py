from __future__ import annotations

from datetime import UTC

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

# Limits a Subscription may override, with the type each override must have (None always means "unlimited").
OVERRIDABLE_LIMITS = {
    "monthly_token_quota": int,
    "requests_per_minute": int,
    "tokens_per_minute": int,
    "concurrent_streams": int,
    "max_documents": int,
    "max_storage_mb": int,
    "max_file_size_mb": int,
    "chat_models": list,
}

_UNLIMITED = "Empty means unlimited."


class Plan(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    monthly_price = models.DecimalField("monthly price (USD)", max_digits=10, decimal_places=2, default=0)
    monthly_token_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Chat and embedding tokens per billing period. " + _UNLIMITED
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    concurrent_streams = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    max_documents = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    max_storage_mb = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    max_file_size_mb = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    # Explicit, so that a new plan or a new model costs nothing until someone decides it should.
    chat_models = ArrayField(
        models.CharField(max_length=100), default=list, blank=True,
        help_text="Chat models this plan may use, comma-separated. Empty allows none.",
    )
    is_default = models.BooleanField(default=False, help_text="New users get this plan.")
    is_active = models.BooleanField(default=True, help_text="Offered on the plan page.")
    stripe_price_id = models.CharField(
        max_length=100, blank=True, help_text="Stripe recurring price (price_…) sold by checkout."
    )
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "monthly_price", "slug"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default_plan"),
        ]

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        TRIALING = "trialing", "Trialing"
        PAST_DUE = "past_due", "Past due"
        CANCELED = "canceled", "Canceled"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Periods are whole months counted from the anchor, so a 31st anchor does not drift to the 28th forever.
    period_anchor = models.DateTimeField(default=timezone.now)
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    overrides = models.JSONField(
        default=dict, blank=True,
        help_text='Per-user limits replacing the plan\'s, e.g. {"tokens_per_minute": 500000, '
                  '"concurrent_streams": null, "chat_models": ["gpt-4.1"]}; null means unlimited. Keys: '
                  + ", ".join(OVERRIDABLE_LIMITS) + ".",
    )
    stripe_customer_id = models.CharField(max_length=100, blank=True, db_index=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True, db_index=True)
    # Creation time of the last Stripe event applied: Stripe does not deliver events in order.
    stripe_event_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(current_period_end__gt=models.F("current_period_start")), name="period_not_empty"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.plan} ({self.status})"

    def clean(self) -> None:
        if self.overrides is None:
            self.overrides = {}
        if not isinstance(self.overrides, dict):
            raise ValidationError({"overrides": "Overrides must be a JSON object."})
        errors = []
        for key, value in self.overrides.items():
            expected = OVERRIDABLE_LIMITS.get(key)
            if expected is None:
                errors.append(f"unknown limit {key!r}")
            elif value is None:
                continue
            elif expected is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                errors.append(f"{key} must be a whole number >= 0 or null")
            elif expected is list and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                errors.append(f"{key} must be a list of model names")
        if errors:
            raise ValidationError({"overrides": "; ".join(errors)})

    @property
    def period_id(self) -> str:
        """Names this period's quota counter in Redis: a new period start is a new, empty counter. To the
        microsecond, as stored: two period starts within one second (a period cut short by a plan change) must
        not share a counter."""
        return self.current_period_start.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")


class ModelPrice(models.Model):
    """One model's price from `effective_from` until the next row for the same model takes over."""

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat"
        EMBEDDING = "embedding", "Embedding"

    model = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT)
    input_per_million = models.DecimalField(
        "USD / 1M input tokens", max_digits=12, decimal_places=6,
        help_text="For embedding models: the price per million embedded tokens.",
    )
    output_per_million = models.DecimalField("USD / 1M output tokens", max_digits=12, decimal_places=6, default=0)
    effective_from = models.DateTimeField()
    context_window = models.PositiveIntegerField(help_text="Maximum prompt + completion tokens.")
    default_max_tokens = models.PositiveIntegerField(
        default=0, help_text="Completion budget reserved when the caller does not give max_tokens."
    )

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="one_price_per_model_and_time"),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d}"


class UsageRecord(models.Model):
    """One LLM or embedding call: the ledger that quotas are rebuilt from and margins are computed on."""

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat"
        EMBEDDING = "embedding", "Embedding"

    # SET_NULL: deleting an account must not erase what its calls cost the operator.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    model = models.CharField(max_length=100)
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField("cost (USD)", max_digits=18, decimal_places=8)
    price = models.ForeignKey(ModelPrice, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    latency_ms = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=100, unique=True)
    # Plain ids: billing knows nothing of the chat and documents apps that produce the calls.
    message_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    document_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"], name="usage_user_time"),
            models.Index(fields=["created_at"], name="usage_time"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.model} {self.total_tokens} tokens"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StripeEvent(models.Model):
    """Every Stripe event applied, by id: a redelivered event is acknowledged and not applied again."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    outcome = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"
