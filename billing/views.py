from __future__ import annotations

import logging
from datetime import UTC

import stripe
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.charts import daily_chart_svg
from billing.exceptions import PaymentsNotConfigured, PlanAlreadyActive, WebhookRejected
from billing.payments import payments_enabled, plan_purchase, stripe_event_apply, stripe_event_verify
from billing.selectors import plan_get, plan_list_offered, usage_daily, usage_summary
from billing.services import subscription_get_or_create

logger = logging.getLogger(__name__)


@login_required
def usage(request: HttpRequest) -> HttpResponse:
    summary = usage_summary(user=request.user)
    days = usage_daily(user=request.user, start=summary["period"]["start"], end=summary["period"]["end"])
    today = timezone.now().astimezone(UTC).date()
    return render(request, "billing/usage.html", {"summary": summary, "chart": daily_chart_svg(days, today=today)})


@login_required
def plans(request: HttpRequest) -> HttpResponse:
    subscription = subscription_get_or_create(user=request.user)
    if request.GET.get("checkout") == "success":
        messages.success(request, "Thank you! Your plan changes as soon as Stripe confirms the payment.")
    return render(
        request,
        "billing/plans.html",
        {"plans": plan_list_offered(), "subscription": subscription, "payments_enabled": payments_enabled()},
    )


@login_required
@require_POST
def checkout(request: HttpRequest, slug: str) -> HttpResponse:
    plan = plan_get(slug=slug)
    if plan is None:
        raise Http404("No such plan.")
    plans_url = request.build_absolute_uri(reverse("billing_plans"))
    try:
        url = plan_purchase(user=request.user, plan=plan, success_url=f"{plans_url}?checkout=success",
                            cancel_url=plans_url)
    except PaymentsNotConfigured as exc:
        messages.error(request, exc.message)
        return redirect("billing_plans")
    except PlanAlreadyActive as exc:
        messages.info(request, exc.message)
        return redirect("billing_plans")
    except stripe.StripeError:
        logger.exception("stripe checkout failed for user %s", request.user.pk)
        messages.error(request, "We could not reach the payment provider. Nothing was charged; try again shortly.")
        return redirect("billing_plans")
    if url is None:  # the user's Stripe subscription was moved to this plan: no new checkout
        messages.success(request, f"Your subscription is moving to the {plan.name} plan; Stripe prorates the "
                                  "difference on your next invoice. The new limits apply once Stripe confirms.")
        return redirect("billing_plans")
    return redirect(url)


@csrf_exempt  # Stripe signs the body instead
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        event = stripe_event_verify(payload=request.body, signature=request.headers.get("Stripe-Signature"))
    except WebhookRejected as exc:
        return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=400)
    applied = stripe_event_apply(event=event)
    return JsonResponse({"received": True, "duplicate": not applied})
