from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from documents.models import Chunk, Document
from documents.services import document_delete, document_requeue


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = (
        "title",
        "owner",
        "kind",
        "status",
        "progress",
        "pages",
        "chunk_count",
        "token_count",
        "attempts",
        "created_at",
    )
    list_filter = ("status", "kind")
    search_fields = ("title", "filename", "owner__email", "sha256")
    list_select_related = ("owner",)
    raw_id_fields = ("owner",)
    readonly_fields = (
        "owner",
        "filename",
        "content_type",
        "kind",
        "size_bytes",
        "sha256",
        "file",
        "status",
        "error",
        "progress",
        "pages",
        "chunk_count",
        "token_count",
        "embedding_model",
        "attempts",
        "processing_started_at",
        "created_at",
        "updated_at",
        "chunks_link",
    )
    actions = ("reingest", "delete_with_files")

    @admin.display(description="Chunks")
    def chunks_link(self, obj: Document) -> str:
        # A link rather than an inline: a large document has tens of thousands of chunks.
        url = reverse("admin:documents_chunk_changelist") + f"?document__id__exact={obj.id}"
        return format_html('<a href="{}">{} chunks</a>', url, obj.chunk_count)

    def has_add_permission(self, request) -> bool:
        return False  # documents come in through the upload path, which sniffs, hashes and queues them

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # a bulk queryset delete would leave the files behind
        return actions

    def delete_model(self, request, obj: Document) -> None:
        document_delete(document=obj)

    @admin.action(description="Re-ingest selected documents")
    def reingest(self, request, queryset) -> None:
        count = 0
        for document in queryset:
            document_requeue(document=document, reset_attempts=True)
            count += 1
        self.message_user(request, f"{count} document(s) queued for ingestion.", messages.SUCCESS)

    @admin.action(description="Delete selected documents with their files and chunks", permissions=["delete"])
    def delete_with_files(self, request, queryset) -> None:
        count = 0
        for document in queryset:
            document_delete(document=document)
            count += 1
        self.message_user(request, f"{count} document(s) deleted.", messages.SUCCESS)


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ("__str__", "document", "owner", "page", "token_count")
    search_fields = ("document__title", "owner__email")
    list_select_related = ("document", "owner")
    raw_id_fields = ("document", "owner")
    exclude = ("embedding",)
    readonly_fields = ("document", "owner", "ordinal", "text", "page", "heading_path", "token_count")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).defer("embedding")
