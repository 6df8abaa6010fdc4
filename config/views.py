from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render

from billing.selectors import plan_list_offered, usage_summary
from chat.selectors import conversation_list
from config.health import health_report
from documents.selectors import document_list

DASHBOARD_ITEMS = 5


async def healthz(request: HttpRequest) -> JsonResponse:
    healthy, report = await health_report()
    return JsonResponse(report, status=200 if healthy else 503)


def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "home.html", {"plans": plan_list_offered()})


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    documents = document_list(user=request.user)
    return render(
        request,
        "dashboard.html",
        {
            "documents": documents[:DASHBOARD_ITEMS],
            "document_total": documents.count(),
            "usage": usage_summary(user=request.user),
            "conversations": conversation_list(user=request.user)[:DASHBOARD_ITEMS],
        },
    )
