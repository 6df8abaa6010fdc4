"""The limiter's Lua scripts and how they are sent: EVALSHA first (one round trip once Redis has the script),
EVAL with the body on NOSCRIPT (still one round trip, and it loads the script for the following calls)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError


class LuaScript:
    def __init__(self, filename: str) -> None:
        self.name = filename
        self.source = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()  # noqa: S324 - Redis names scripts so

    def __call__(self, client: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    async def run_async(self, client: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


RESERVE = LuaScript("reserve.lua")
SETTLE = LuaScript("settle.lua")
HEARTBEAT = LuaScript("heartbeat.lua")
REBUILD = LuaScript("rebuild.lua")
