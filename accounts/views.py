from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from accounts.forms import APIKeyCreateForm, SignUpForm
from accounts.selectors import api_key_get, api_key_list
from accounts.services import api_key_create, api_key_revoke, user_create


def ratelimited(request: HttpRequest, exception: Exception) -> HttpResponse:
    """RATELIMIT_VIEW: django-ratelimit's refusal, as 429 rather than its default 403."""
    message = "Too many attempts. Wait a minute and try again."
    if request.path.startswith(("/api/", "/v1/")) or "application/json" in request.headers.get("Accept", ""):
        response: HttpResponse = JsonResponse({"error": {"code": "rate_limited", "message": message}}, status=429)
    else:
        response = render(request, "accounts/ratelimited.html", {"message": message}, status=429)
    response["Retry-After"] = "60"
    return response


@ratelimit(key="ip", rate=settings.SIGNUP_RATE, method="POST", block=True)
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = user_create(
            email=form.cleaned_data["email"], password=form.cleaned_data["password1"], name=form.cleaned_data["name"]
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome to Docent. Upload a document to get started.")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "accounts/signup.html", {"form": form})


@method_decorator(ratelimit(key="ip", rate=settings.LOGIN_RATE, method="POST", block=True), name="post")
@method_decorator(
    ratelimit(key="post:username", rate=settings.LOGIN_RATE, method="POST", block=True), name="post"
)
class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


@login_required
def api_keys(request: HttpRequest) -> HttpResponse:
    form = APIKeyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        _, raw_key = api_key_create(user=request.user, name=form.cleaned_data["name"])
        # Post/redirect/get: the key rides in the session for exactly one page view, so a reload neither shows it
        # again nor creates a second key.
        request.session["new_api_key"] = raw_key
        return redirect("api_keys")
    new_key = request.session.pop("new_api_key", None)
    return render(
        request, "accounts/api_keys.html", {"form": form, "keys": api_key_list(user=request.user), "new_key": new_key}
    )


@login_required
@require_POST
def api_key_revoke_view(request: HttpRequest, key_id: int) -> HttpResponse:
    api_key = api_key_revoke(api_key=api_key_get(user=request.user, key_id=key_id))
    messages.success(request, f"Revoked {api_key.prefix}…; it no longer works.")
    return redirect("api_keys")
