from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from documents.services.progress import owner_group


class DocumentsConsumer(AsyncJsonWebsocketConsumer):
    """Pushes the signed-in user's document status and progress; sends nothing else and reads nothing."""

    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)  # before accept: the handshake is refused with HTTP 403
            return
        self.group = owner_group(user.id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        pass  # the page only listens

    async def document_update(self, event: dict) -> None:
        await self.send_json({"type": "document", "document": event["document"]})

    async def document_deleted(self, event: dict) -> None:
        await self.send_json({"type": "document_deleted", "id": event["id"]})
