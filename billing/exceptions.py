"""Billing's domain errors. Each carries the HTTP status, code and message the edges answer with;
`config.api.exception_handler` maps every `BillingError` for the API views."""

from __future__ import annotations


class BillingError(Exception):
    status_code = 400
    code = "billing_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UploadLimitExceeded(BillingError):
    """413 for a file larger than the plan accepts, 403 for the document count or storage limit."""

    def __init__(self, *, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class ModelNotAllowed(BillingError):
    status_code = 403
    code = "model_not_allowed"

    def __init__(self, *, model: str, plan: str, allowed: list[str]) -> None:
        choices = ", ".join(allowed) if allowed else "none"
        super().__init__(f"The model {model!r} is not available on the {plan} plan (available: {choices}).")
        self.model = model
        self.allowed = allowed


class UnknownModel(BillingError):
    status_code = 400
    code = "unknown_model"

    def __init__(self, model: str) -> None:
        super().__init__(f"No price is configured for the model {model!r}; an admin has to add one first.")
        self.model = model


class BillingNotConfigured(BillingError):
    status_code = 503
    code = "billing_not_configured"


class LimiterUnavailable(BillingError):
    """Redis cannot be reached: calls are refused rather than let through unmetered."""

    status_code = 503
    code = "limiter_unavailable"

    def __init__(self) -> None:
        super().__init__("Usage limits cannot be checked right now, so the request was not run. Try again shortly.")


class PlanNotFound(BillingError):
    status_code = 404
    code = "plan_not_found"


class PaymentsNotConfigured(BillingError):
    status_code = 404
    code = "payments_not_configured"


class PlanAlreadyActive(BillingError):
    """A plan bought again while the user's subscription is on it."""

    status_code = 409
    code = "plan_already_active"


class WebhookRejected(BillingError):
    """The webhook body is not a genuine, fresh Stripe event."""

    status_code = 400
    code = "webhook_rejected"
