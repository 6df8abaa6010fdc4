from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import api as accounts_api
from config import views
from config.api import api_not_found

api_v1 = [
    path("keys/", accounts_api.APIKeyListCreateApi.as_view(), name="api_keys_list"),
    path("keys/<int:key_id>/", accounts_api.APIKeyRevokeApi.as_view(), name="api_key_detail"),
    path("", include("documents.api_urls")),
    path("", include("chat.api_urls")),
    path("", include("billing.api_urls")),
    re_path(r"^[\s\S]*$", api_not_found),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("accounts.urls")),
    path("documents/", include("documents.urls")),
    path("chat/", include("chat.urls")),
    path("billing/", include("billing.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api_schema"), name="api_docs"),
    path("v1/", include("chat.openai_urls")),
]

handler500 = "config.api.server_error"
