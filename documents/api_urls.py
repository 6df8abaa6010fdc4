from django.urls import path

from documents import api

urlpatterns = [
    path("documents/", api.DocumentListCreateApi.as_view(), name="api_documents"),
    path("documents/<int:document_id>/", api.DocumentDetailApi.as_view(), name="api_document_detail"),
    path("search/", api.SearchApi.as_view(), name="api_search"),
]
