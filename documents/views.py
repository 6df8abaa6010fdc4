from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from billing.services import UploadLimitExceeded
from documents.selectors import document_get, document_list
from documents.serializers import DocumentOut
from documents.services import UploadRejected, document_create, document_delete, max_upload_bytes


@login_required
def document_list_view(request: HttpRequest) -> HttpResponse:
    documents = list(document_list(user=request.user)[:200])
    return render(
        request,
        "documents/list.html",
        {
            "documents": documents,
            "documents_json": DocumentOut(documents, many=True).data,
            "max_upload_bytes": max_upload_bytes(),
        },
    )


@login_required
@require_POST
def document_upload_view(request: HttpRequest) -> HttpResponse:
    """The form fallback for browsers without JavaScript; the page's script uses the API instead."""
    files = request.FILES.getlist("file")
    if not files:
        messages.error(request, "Choose at least one file to upload.")
    for upload in files:
        try:
            document, created = document_create(owner=request.user, upload=upload)
        except (UploadRejected, UploadLimitExceeded) as exc:
            messages.error(request, f"{upload.name}: {exc.message}")
            continue
        if created:
            messages.success(request, f"{upload.name} was uploaded and is being processed.")
        else:
            messages.info(request, f"{upload.name} is already uploaded as “{document.title}”.")
    return redirect("documents")


@login_required
@require_http_methods(["GET", "POST"])
def document_delete_view(request: HttpRequest, document_id: int) -> HttpResponse:
    document = document_get(user=request.user, document_id=document_id)
    if request.method == "POST":
        document_delete(document=document)
        messages.success(request, f"“{document.title}” was deleted.")
        return redirect("documents")
    return render(request, "documents/confirm_delete.html", {"document": document})
