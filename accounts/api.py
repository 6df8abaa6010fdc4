from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import api_key_get, api_key_list
from accounts.services import api_key_create, api_key_revoke
from config.api import paginate, paginated


class APIKeyOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class APIKeyCreatedOut(APIKeyOut):
    key = serializers.CharField(help_text="The full key. Shown once; store it now.")


class APIKeyIn(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, default="API key")


class APIKeyListCreateApi(APIView):
    @extend_schema(responses=paginated(APIKeyOut), operation_id="keys_list")
    def get(self, request: Request) -> Response:
        return paginate(request, api_key_list(user=request.user), APIKeyOut, view=self)

    @extend_schema(request=APIKeyIn, responses={201: APIKeyCreatedOut}, operation_id="keys_create")
    def post(self, request: Request) -> Response:
        data = APIKeyIn(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, raw_key = api_key_create(user=request.user, name=data.validated_data["name"])
        api_key.key = raw_key
        return Response(APIKeyCreatedOut(api_key).data, status=status.HTTP_201_CREATED)


class APIKeyRevokeApi(APIView):
    @extend_schema(responses={204: None}, operation_id="keys_revoke")
    def delete(self, request: Request, key_id: int) -> Response:
        api_key_revoke(api_key=api_key_get(user=request.user, key_id=key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
