from django.urls import path

from billing import api

urlpatterns = [
    path("usage/", api.UsageApi.as_view(), name="api_usage"),
]
