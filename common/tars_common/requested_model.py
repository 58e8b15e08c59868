"""Which model a data-plane request is for: the ``{name}`` of the path, or for the OpenAI-compatible
routes (``/openai/v1/...``) the ``model`` of the JSON body, as OpenAI's API puts it.

Shared by the agent and the gateway, for routing and for the access check that runs before it.
"""

from __future__ import annotations

import json

from aiohttp import web

OPENAI_PREFIX = "/openai/"


async def requested_model(request: web.Request) -> str | None:
    name = request.match_info.get("name")
    if name is not None or request.method != "POST" or not request.path.startswith(OPENAI_PREFIX):
        return name
    try:
        body = json.loads(await request.read())  # aiohttp keeps the bytes for the handler
    except (ValueError, RecursionError, web.HTTPRequestEntityTooLarge):
        return None  # the handler answers with the protocol's own error
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else None
