"""The document JSON, shared by the API and the progress events pushed over WebSocket."""

from __future__ import annotations

from rest_framework import serializers


class DocumentOut(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size_bytes = serializers.IntegerField()
    status = serializers.CharField()
    error = serializers.CharField(allow_blank=True, help_text="Why ingestion failed, as a sentence; '' otherwise.")
    progress = serializers.IntegerField(min_value=0, max_value=100)
    pages = serializers.IntegerField(allow_null=True)
    chunks = serializers.IntegerField(source="chunk_count")
    tokens = serializers.IntegerField(source="token_count")
    created_at = serializers.DateTimeField()
