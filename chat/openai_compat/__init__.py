"""Docent behind the OpenAI wire protocol at /v1/: point the official SDKs at Docent with a Docent API key and
every answer is grounded in the caller's documents, metered and limited by their plan.

`requests` parses OpenAI request bodies, `frames` renders OpenAI response objects, `errors` maps every refusal
to OpenAI's error shape, `services` runs calls through chat, documents and billing, and `views` are the async
edges served by the ASGI server."""
