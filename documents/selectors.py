"""Reads of documents and chunks. Every function takes the user whose data it returns."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import User
from documents.models import Document
from documents.search import SearchHit, SearchResult, chunk_search

__all__ = ["SearchHit", "SearchResult", "chunk_search", "document_get", "document_list"]


def document_list(*, user: User) -> QuerySet[Document]:
    return Document.objects.filter(owner=user).order_by("-created_at", "-id")


def document_get(*, user: User, document_id: int) -> Document:
    # Someone else's id is a plain 404, indistinguishable from an id that never existed.
    return get_object_or_404(Document, id=document_id, owner=user)
