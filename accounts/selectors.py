from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import APIKey, User


def api_key_list(*, user: User) -> QuerySet[APIKey]:
    return APIKey.objects.filter(user=user).order_by("-created_at")


def api_key_get(*, user: User, key_id: int) -> APIKey:
    return get_object_or_404(APIKey, id=key_id, user=user)
