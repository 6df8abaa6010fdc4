from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.selectors import usage_summary

_MONEY = {"max_digits": 18, "decimal_places": 8}


class _PlanOut(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    monthly_price = serializers.DecimalField(max_digits=10, decimal_places=2)


class _PeriodOut(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class _TotalsOut(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(**_MONEY)


class _ModelTotalsOut(_TotalsOut):
    model = serializers.CharField()
    kind = serializers.ChoiceField(choices=["chat", "embedding"])


class _ByKindOut(serializers.Serializer):
    chat = _TotalsOut()
    embedding = _TotalsOut()


class _TokensOut(serializers.Serializer):
    total = serializers.IntegerField()
    by_kind = _ByKindOut()
    by_model = _ModelTotalsOut(many=True)


class _LimitsOut(serializers.Serializer):
    """The limits in force; null is unlimited."""

    monthly_token_quota = serializers.IntegerField(allow_null=True)
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    concurrent_streams = serializers.IntegerField(allow_null=True)
    max_documents = serializers.IntegerField(allow_null=True)
    max_storage_mb = serializers.IntegerField(allow_null=True)
    max_file_size_mb = serializers.IntegerField(allow_null=True)
    chat_models = serializers.ListField(child=serializers.CharField())


class _CounterOut(serializers.Serializer):
    limit = serializers.IntegerField(allow_null=True)
    used = serializers.IntegerField()
    remaining = serializers.IntegerField(allow_null=True)
    reset_seconds = serializers.IntegerField(allow_null=True)


class _CurrentOut(serializers.Serializer):
    rpm = _CounterOut()
    tpm = _CounterOut()
    concurrency = _CounterOut()
    quota = _CounterOut(help_text="Includes in-flight reservations, unlike `used`.")


class UsageOut(serializers.Serializer):
    plan = _PlanOut()
    status = serializers.ChoiceField(choices=["active", "trialing", "past_due", "canceled"])
    limits_from = serializers.CharField(allow_null=True, help_text="The plan whose limits apply.")
    restricted = serializers.BooleanField(help_text="Past due or canceled: the default plan's limits apply.")
    period = _PeriodOut()
    requests = serializers.IntegerField()
    tokens = _TokensOut()
    cost = serializers.DecimalField(**_MONEY, help_text="USD, this period.")
    quota = serializers.IntegerField(allow_null=True, help_text="Tokens per period; null is unlimited.")
    used = serializers.IntegerField()
    remaining = serializers.IntegerField(allow_null=True)
    percent_used = serializers.FloatField(allow_null=True)
    warning_80 = serializers.BooleanField(help_text="At least 80% of the quota is used.")
    exhausted = serializers.BooleanField()
    limits = _LimitsOut()
    current = _CurrentOut(allow_null=True, help_text="Live counters; null when Redis is unreachable.")


class UsageApi(APIView):
    @extend_schema(responses=UsageOut, summary="This billing period's usage, cost, quota and limits")
    def get(self, request: Request) -> Response:
        return Response(UsageOut(usage_summary(user=request.user)).data)
