"""Stripe: a checkout session for a new subscription or a price change of the live one, and the webhook events that
keep Subscription in step with Stripe.

Without STRIPE_SECRET_KEY nothing here is reachable from the UI: admins assign plans. Events are applied at most
once (StripeEvent, unique on the event id, written in the same transaction as the change) and an event older
than the last one applied to a subscription is recorded but not applied, as Stripe does not deliver in order.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from billing.exceptions import PaymentsNotConfigured, PlanAlreadyActive, WebhookRejected
from billing.models import Plan, StripeEvent, Subscription
from billing.periods import add_months
from billing.services import subscription_get_or_create

if TYPE_CHECKING:
    from accounts.models import User

logger = logging.getLogger(__name__)

# Stripe's subscription statuses onto ours: unpaid and incomplete ones are owed money, paused and expired
# ones are not being paid for at all.
_STATUS = {
    "active": Subscription.Status.ACTIVE,
    "trialing": Subscription.Status.TRIALING,
    "past_due": Subscription.Status.PAST_DUE,
    "unpaid": Subscription.Status.PAST_DUE,
    "incomplete": Subscription.Status.PAST_DUE,
    "canceled": Subscription.Status.CANCELED,
    "incomplete_expired": Subscription.Status.CANCELED,
    "paused": Subscription.Status.CANCELED,
}


def payments_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def _client() -> stripe.StripeClient:
    if not payments_enabled():
        raise PaymentsNotConfigured("Payments are not configured on this installation; an admin assigns plans.")
    base = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses=base, max_network_retries=1)


# A user whose Stripe subscription is in one of these is being billed by it (past due: Stripe is still retrying).
_LIVE = (Subscription.Status.ACTIVE, Subscription.Status.TRIALING, Subscription.Status.PAST_DUE)
# The Stripe statuses whose items can be changed; an incomplete or unpaid subscription is bought anew.
_CHANGEABLE = ("active", "trialing", "past_due")


def plan_purchase(*, user: User, plan: Plan, success_url: str, cancel_url: str) -> str | None:
    """Start buying `plan`. Returns the URL of a Stripe Checkout for a new subscription; or None for a user who
    already pays through Stripe, once that subscription was moved to the plan's price (Stripe prorates it).

    A second Checkout would have left such a user paying for two subscriptions, the older one's renewals and
    cancellation then overwriting the plan they had switched to."""
    if not plan.stripe_price_id or not plan.is_active:
        raise PaymentsNotConfigured(f"The {plan.name} plan cannot be bought online; contact us to get it.")
    subscription = subscription_get_or_create(user=user)
    client = _client()
    current = _stripe_subscription(client, subscription) if subscription.status in _LIVE else None
    if current is not None and current["status"] in _CHANGEABLE:
        item = current["items"]["data"][0]
        if item["price"]["id"] == plan.stripe_price_id:
            raise PlanAlreadyActive(f"Your subscription is on the {plan.name} plan already.")
        client.v1.subscriptions.update(subscription.stripe_subscription_id, params={
            "items": [{"id": item["id"], "price": plan.stripe_price_id}],
            "proration_behavior": "create_prorations",
            "metadata": {"user_id": str(user.pk), "plan": plan.slug},
        })
        # Our row follows with Stripe's customer.subscription.updated event, as for every other change.
        return None
    metadata = {"user_id": str(user.pk), "plan": plan.slug}
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": plan.stripe_price_id, "quantity": 1}],
        "client_reference_id": str(user.pk),
        "metadata": metadata,
        # Copied onto the Stripe subscription, so its later events name the user too.
        "subscription_data": {"metadata": metadata},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if subscription.stripe_customer_id:
        params["customer"] = subscription.stripe_customer_id
    else:
        params["customer_email"] = user.email
    session = client.v1.checkout.sessions.create(params=params)
    return session.url


def _stripe_subscription(client: stripe.StripeClient, subscription: Subscription) -> Any:
    """The user's subscription as Stripe has it now; None when there is none (never bought, or deleted there)."""
    if not subscription.stripe_subscription_id:
        return None
    try:
        return client.v1.subscriptions.retrieve(subscription.stripe_subscription_id)
    except stripe.InvalidRequestError:
        return None


def stripe_event_verify(*, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event in a webhook body, if Stripe signed it with our endpoint secret within the tolerance."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET is empty).")
    try:
        stripe.Webhook.construct_event(
            payload, signature, secret, tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(f"Invalid Stripe signature: {exc.user_message or exc}") from exc
    except ValueError as exc:
        raise WebhookRejected("The webhook body is not a Stripe event.") from exc
    # Plain JSON from here on: the payload is stored as is and read without the library's object model.
    event = json.loads(payload)
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookRejected("The webhook body is not a Stripe event.")
    return event


def stripe_event_apply(*, event: dict[str, Any]) -> bool:
    """Applies a verified event once. False when the event id was seen before (a redelivery)."""
    try:
        with transaction.atomic():
            record = StripeEvent.objects.create(event_id=event["id"], type=event["type"], payload=event)
            handler = _HANDLERS.get(event["type"])
            outcome = handler(event) if handler else "ignored: not an event billing uses"
            record.outcome = outcome[:255]
            record.save(update_fields=["outcome"])
    except IntegrityError:
        if StripeEvent.objects.filter(event_id=event["id"]).exists():
            logger.info("stripe event %s delivered again; already applied", event["id"])
            return False
        raise
    logger.info("stripe event %s (%s): %s", event["id"], event["type"], outcome)
    return True


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _find_subscription(*, stripe_subscription_id: str | None, customer: str | None,
                       user_id: str | None) -> Subscription | None:
    queryset = Subscription.objects.select_for_update().select_related("plan", "user")
    if stripe_subscription_id:
        found = queryset.filter(stripe_subscription_id=stripe_subscription_id).first()
        if found:
            return found
    if customer:
        found = queryset.filter(stripe_customer_id=customer).first()
        if found:
            return found
    if user_id and str(user_id).isdigit():
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.filter(pk=int(user_id)).first()
        if user is not None:
            subscription_get_or_create(user=user)
            return queryset.filter(user=user).first()
    return None


def _not_followed(subscription: Subscription, stripe_subscription_id: str | None) -> bool:
    """An event about another Stripe subscription of the customer than the live one the user's row follows (one
    left over from before a switch): applying it would put its plan, period or cancellation on the user."""
    return bool(stripe_subscription_id and subscription.stripe_subscription_id
                and stripe_subscription_id != subscription.stripe_subscription_id
                and subscription.status != Subscription.Status.CANCELED)


def _is_stale(subscription: Subscription, event: dict[str, Any]) -> bool:
    created = _ts(event.get("created"))
    if created is None:
        return False
    if subscription.stripe_event_at and created < subscription.stripe_event_at:
        return True
    subscription.stripe_event_at = created
    return False


def _on_checkout_completed(event: dict[str, Any]) -> str:
    session = event["data"]["object"]
    if session.get("mode") != "subscription":
        return "ignored: not a subscription checkout"
    if session.get("payment_status", "paid") not in ("paid", "no_payment_required"):
        # A delayed payment method (a bank debit): the plan follows with async_payment_succeeded, once paid.
        return "ignored: the payment is not confirmed yet"
    metadata = session.get("metadata") or {}
    subscription = _find_subscription(stripe_subscription_id=session.get("subscription"),
                                      customer=session.get("customer"),
                                      user_id=session.get("client_reference_id") or metadata.get("user_id"))
    if subscription is None:
        return "ignored: no such user"
    plan = Plan.objects.filter(slug=metadata.get("plan")).first()
    if plan is None:
        return f"ignored: unknown plan {metadata.get('plan')!r}"
    if _is_stale(subscription, event):
        return "ignored: older than the last event applied"
    # Stripe bills from the checkout: the paid period (and a fresh quota) starts now.
    start = _ts(event.get("created")) or datetime.now(tz=UTC)
    subscription.plan = plan
    subscription.status = Subscription.Status.ACTIVE
    subscription.stripe_customer_id = session.get("customer") or subscription.stripe_customer_id
    subscription.stripe_subscription_id = session.get("subscription") or subscription.stripe_subscription_id
    subscription.period_anchor = subscription.current_period_start = start
    subscription.current_period_end = add_months(start, 1)
    subscription.save()
    return f"{subscription.user} upgraded to {plan.slug}"


def _period_of(stripe_subscription: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    # Newer API versions moved the period onto the subscription items.
    start = stripe_subscription.get("current_period_start")
    end = stripe_subscription.get("current_period_end")
    items = (stripe_subscription.get("items") or {}).get("data") or []
    if (start is None or end is None) and items:
        start, end = items[0].get("current_period_start"), items[0].get("current_period_end")
    return _ts(start), _ts(end)


def _on_subscription_changed(event: dict[str, Any]) -> str:
    obj = event["data"]["object"]
    subscription = _find_subscription(stripe_subscription_id=obj.get("id"), customer=obj.get("customer"),
                                      user_id=(obj.get("metadata") or {}).get("user_id"))
    if subscription is None:
        return "ignored: no matching subscription"
    if _not_followed(subscription, obj.get("id")):
        return f"ignored: {obj.get('id')} is not the user's current subscription"
    if _is_stale(subscription, event):
        return "ignored: older than the last event applied"
    deleted = event["type"] == "customer.subscription.deleted"
    status = Subscription.Status.CANCELED if deleted else _STATUS.get(obj.get("status"))
    if status is None:
        return f"ignored: unknown status {obj.get('status')!r}"
    subscription.status = status
    subscription.stripe_subscription_id = obj.get("id") or subscription.stripe_subscription_id
    subscription.stripe_customer_id = obj.get("customer") or subscription.stripe_customer_id
    items = (obj.get("items") or {}).get("data") or []
    price_id = ((items[0].get("price") or {}).get("id") if items else None)
    plan = Plan.objects.filter(stripe_price_id=price_id).first() if price_id else None
    if plan is not None and not deleted:
        subscription.plan = plan
    start, end = _period_of(obj)
    if start and end and end > start and not deleted:
        subscription.period_anchor = subscription.current_period_start = start
        subscription.current_period_end = end
    subscription.save()
    return f"{subscription.user}: {subscription.plan.slug} {status}"


def _on_payment_failed(event: dict[str, Any]) -> str:
    invoice = event["data"]["object"]
    stripe_subscription_id = invoice.get("subscription")
    if not stripe_subscription_id:
        details = ((invoice.get("parent") or {}).get("subscription_details") or {})
        stripe_subscription_id = details.get("subscription")
    subscription = _find_subscription(stripe_subscription_id=stripe_subscription_id,
                                      customer=invoice.get("customer"), user_id=None)
    if subscription is None:
        return "ignored: no matching subscription"
    if _not_followed(subscription, stripe_subscription_id):
        return f"ignored: {stripe_subscription_id} is not the user's current subscription"
    if _is_stale(subscription, event):
        return "ignored: older than the last event applied"
    subscription.status = Subscription.Status.PAST_DUE
    subscription.save()
    return f"{subscription.user}: past_due"


_HANDLERS = {
    "checkout.session.completed": _on_checkout_completed,
    "checkout.session.async_payment_succeeded": _on_checkout_completed,
    "customer.subscription.updated": _on_subscription_changed,
    "customer.subscription.deleted": _on_subscription_changed,
    "invoice.payment_failed": _on_payment_failed,
}
