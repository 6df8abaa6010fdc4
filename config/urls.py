from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from accounts import api as accounts_api
from config import views

api_v1 = [
    path("keys/", accounts_api.APIKeyListCreateApi.as_view(), name="api_keys_list"),
    path("keys/<int:key_id>/", accounts_api.APIKeyRevokeApi.as_view(), name="api_key_detail"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("accounts.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
]
