from django.urls import path

from documents import views

urlpatterns = [
    path("", views.document_list_view, name="documents"),
    path("upload/", views.document_upload_view, name="document_upload"),
    path("<int:document_id>/delete/", views.document_delete_view, name="document_delete"),
]
