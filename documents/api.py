from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.services import UploadLimitExceeded
from config.api import APIError, paginate
from documents.selectors import chunk_search, document_get, document_list
from documents.serializers import DocumentOut
from documents.services import UploadRejected, document_create, document_delete, max_upload_bytes

# Multipart framing and the other fields; a body longer than the file limit plus this cannot be valid.
_MULTIPART_SLACK = 64 * 1024


class DocumentUploadIn(serializers.Serializer):
    file = serializers.FileField(
        help_text="PDF, DOCX, HTML, Markdown or plain text; the type is read from the content."
    )
    title = serializers.CharField(max_length=255, required=False, allow_blank=True)


class DocumentPageOut(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = DocumentOut(many=True)


class DocumentListCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=DocumentPageOut, operation_id="documents_list")
    def get(self, request: Request) -> Response:
        return paginate(request, document_list(user=request.user), DocumentOut, view=self)

    @extend_schema(
        request={"multipart/form-data": DocumentUploadIn},
        responses={201: DocumentOut, 200: DocumentOut},
        operation_id="documents_create",
    )
    def post(self, request: Request) -> Response:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        if declared > max_upload_bytes() + _MULTIPART_SLACK:
            limit_mb = max_upload_bytes() // 2**20
            raise APIError(413, "too_large", f"The upload is larger than the {limit_mb} MB limit.")
        upload = request.FILES.get("file")
        if upload is None:
            raise APIError(400, "invalid_request", "Attach the document as the multipart field `file`.")
        try:
            document, created = document_create(owner=request.user, upload=upload, title=request.data.get("title"))
        except (UploadRejected, UploadLimitExceeded) as exc:
            raise APIError(exc.status_code, exc.code, exc.message) from exc
        # Identical content already uploaded: the existing document, 200 instead of 201.
        return Response(DocumentOut(document).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class DocumentDetailApi(APIView):
    @extend_schema(responses=DocumentOut, operation_id="documents_retrieve")
    def get(self, request: Request, document_id: int) -> Response:
        return Response(DocumentOut(document_get(user=request.user, document_id=document_id)).data)

    @extend_schema(responses={204: None}, operation_id="documents_delete")
    def delete(self, request: Request, document_id: int) -> Response:
        document_delete(document=document_get(user=request.user, document_id=document_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SearchIn(serializers.Serializer):
    query = serializers.CharField(max_length=2000, trim_whitespace=True)
    k = serializers.IntegerField(min_value=1, max_value=50, default=8)
    document_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, allow_null=True, max_length=1000
    )


class SearchHitOut(serializers.Serializer):
    document_id = serializers.IntegerField()
    document_title = serializers.CharField()
    chunk_id = serializers.IntegerField()
    page = serializers.IntegerField(allow_null=True)
    heading_path = serializers.ListField(child=serializers.CharField())
    text = serializers.CharField()
    score = serializers.FloatField()


class SearchOut(serializers.Serializer):
    results = SearchHitOut(many=True)


class SearchApi(APIView):
    parser_classes = [JSONParser]

    @extend_schema(request=SearchIn, responses=SearchOut, operation_id="search")
    def post(self, request: Request) -> Response:
        data = SearchIn(data=request.data)
        data.is_valid(raise_exception=True)
        result = chunk_search(user=request.user, **data.validated_data)
        return Response(SearchOut({"results": result.hits}).data)
