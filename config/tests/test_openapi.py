"""The documented REST API: the OpenAPI schema is complete and valid, the interactive docs load nothing from
other servers, and a property-based run (schemathesis) against the live ASGI app finds no server error, no
response outside the schema, and no endpoint off the shared error and pagination formats."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from django.test import Client
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode, checks

_ASSET_RE = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
_EXTERNAL_RE = re.compile(r"""(?:https?:)?//[\w.-]+""")
EXAMPLES_PER_OPERATION = 25
PAGE_KEYS = {"count", "next", "previous", "results"}


def test_schema_generates_without_warnings_and_is_valid_openapi() -> None:
    GENERATOR_STATS.reset()
    schema = SchemaGenerator().get_schema(request=None, public=True)
    problems = sorted({*GENERATOR_STATS._warn_cache, *GENERATOR_STATS._error_cache})
    GENERATOR_STATS.reset()

    assert not problems, "schema generation complained:\n" + "\n".join(problems)
    validate_schema(schema)
    assert any(path.startswith("/api/v1/") for path in schema["paths"])


def test_schema_documents_the_streaming_chat_endpoints() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    ask = schema["paths"]["/api/v1/chat/"]["post"]
    resume = schema["paths"]["/api/v1/chat/messages/{message_id}/stream"]["get"]

    assert "text/event-stream" in ask["responses"]["200"]["content"]
    assert ask["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/MessageOut")
    assert ask["requestBody"]["content"]["application/json"]["schema"]["required"] == ["message"]
    assert "text/event-stream" in resume["responses"]["200"]["content"]
    assert {p["name"] for p in resume["parameters"]} == {"message_id", "after", "Last-Event-ID"}
    assert "`done`" in resume["description"] and "`citations`" in resume["description"]


def test_every_event_of_a_stream_matches_the_documented_event_schema() -> None:
    # The schema fuzzer reads an event stream with its SSE parser and checks each event against the documented
    # schema; it found `{"type": "string"}` there once it happened on a real answer's stream.
    import jsonschema_rs
    from schemathesis.core.deserialization import _parse_sse_events

    from chat import events

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = [schema["paths"]["/api/v1/chat/"]["post"],
                  schema["paths"]["/api/v1/chat/messages/{message_id}/stream"]["get"]]
    answer = [
        events.event(1, "start", message_id=7, conversation_id=3, model="extractive"),
        events.event(2, "token", message_id=7, text="Hello\nworld"),
        events.event(3, "error", message_id=7, code="provider_error", message="The model failed."),
        events.event(4, "citations", message_id=7, citations=[]),
        events.event(5, "done", message_id=7, finish_reason="error",
                     usage={"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": "0"}),
    ]
    # As the SSE views write it: the reconnect delay first, and keep-alive comments between events.
    stream = b"retry: 1000\n\n" + b": keep-alive\n\n".join(item.sse() for item in answer)
    parsed = _parse_sse_events(stream)

    assert [event["event"] for event in parsed] == ["start", "token", "error", "citations", "done"]
    for operation in operations:
        validator = jsonschema_rs.validator_for(operation["responses"]["200"]["content"]["text/event-stream"]["schema"])
        for event in parsed:
            assert validator.is_valid(event), event
        assert not validator.is_valid({"event": "surprise", "id": "9", "data": "{}"})


def test_docs_page_loads_every_asset_from_this_server() -> None:
    client = Client()

    page = client.get("/api/docs/")

    assert page.status_code == 200
    html = page.content.decode()
    assert not _EXTERNAL_RE.findall(html)
    assets = _ASSET_RE.findall(html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert int(response.headers.get("Content-Length", len(getattr(response, "content", b"")))) > 0, asset
        response.close()
    init_script = next(a for a in assets if a.startswith("/api/docs/"))
    script = client.get(init_script).content.decode()
    assert not _EXTERNAL_RE.findall(script)
    # Swagger UI's default would post the schema to validator.swagger.io from the reader's browser.
    assert '"validatorUrl": null' in script


def error_format(ctx: Any, response: Any, case: Any) -> None:
    """Every /api/v1/ refusal is `{"error": {"code": str, "message": str, ...}}` (config.api)."""
    if response.status_code < 400:
        return
    content_type = ";".join(response.headers.get("content-type", []))
    assert "application/json" in content_type, (
        f"{response.status_code} answered with {content_type or 'no content type'}, not the JSON error format"
    )
    body = json.loads(response.content)
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"error body is not {{'error': {{...}}}}: {body!r}"
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), body


def pagination_format(ctx: Any, response: Any, case: Any) -> None:
    """A list answers with config.api.paginate's page: exactly count, next, previous and results."""
    if response.status_code != 200 or case.method != "GET" or not response.content:
        return
    if "application/json" not in ";".join(response.headers.get("content-type", [])):
        return  # an event stream
    body = json.loads(response.content)
    if isinstance(body, list):
        raise AssertionError("a list endpoint answered with a bare array instead of a page")
    if isinstance(body, dict) and "results" in body and isinstance(body["results"], list) and "count" in body:
        assert set(body) == PAGE_KEYS, f"page keys {sorted(body)}"


CHECKS: list[Callable[..., Any]] = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.content_type_conformance,
    error_format,
    pagination_format,
]


@pytest.fixture
def fuzzed_user(settings, tmp_path) -> dict[str, Any]:
    """A user on a roomy plan with one of everything, so that path ids can point at real objects."""
    from accounts.services import api_key_create
    from billing.tests.factories import UsageRecordFactory
    from chat.models import Message
    from chat.services import conversation_create
    from chat.tests.factories import chat_user, document_with_chunks, model_prices

    settings.MEDIA_ROOT = str(tmp_path)  # fuzzed uploads land here, not in the developer's var/
    model_prices()
    user = chat_user()
    document = document_with_chunks(owner=user, title="Gnuplot", texts=["Gnuplot draws plots of functions."])
    conversation = conversation_create(user=user, title="Plots")
    Message.objects.create(conversation=conversation, role="user", content="What does it draw?")
    answer = Message.objects.create(conversation=conversation, role="assistant", content="Plots [1].",
                                    status=Message.Status.DONE, finish_reason="stop", model="gpt-4o-mini")
    UsageRecordFactory(user=user)
    spare_key, _ = api_key_create(user=user, name="spare")
    return {
        "user": user,
        "ids": {"document_id": document.id, "conversation_id": conversation.id, "message_id": answer.id,
                "key_id": spare_key.id},
    }


@pytest.mark.django_db(transaction=True)
def test_property_based_run_finds_no_server_error_and_no_response_off_the_schema(
    asgi_server, celery_workers, fuzzed_user
) -> None:
    from accounts.models import APIKey
    from accounts.services import api_key_create

    user = fuzzed_user["user"]
    key = {"raw": api_key_create(user=user, name="fuzz")[1]}

    def auth() -> dict[str, str]:
        # A fuzzed DELETE /keys/{id}/ may revoke the key the run uses: carry on with a new one.
        if not APIKey.objects.filter(user=user, revoked_at__isnull=True, name="fuzz").exists():
            key["raw"] = api_key_create(user=user, name="fuzz")[1]
        return {"Authorization": f"Bearer {key['raw']}"}

    schema = schemathesis.openapi.from_url(f"{asgi_server}/api/schema/")
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the schema lists no operation"
    for operation in operations:
        path_names = {p.name for p in operation.path_parameters}
        known = {name: value for name, value in fuzzed_user["ids"].items() if name in path_names}
        runs = [(mode, None) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        if known:
            runs.append((GenerationMode.POSITIVE, known))  # also the real objects, not only random ids
        for mode, path_parameters in runs:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @given(case=strategy)
            @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def run(case) -> None:
                case.call_and_validate(headers=auth(), checks=CHECKS)

            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:
                label = f"{operation.label} [{mode.value}{', real ids' if path_parameters else ''}]"
                failures[label] = str(exc)

    assert not failures, "\n\n".join(f"===== {label}\n{report}" for label, report in failures.items())


@pytest.mark.django_db(transaction=True)
def test_every_operation_refuses_anonymous_callers_in_the_error_format(asgi_server) -> None:
    schema = httpx.get(f"{asgi_server}/api/schema/", headers={"Accept": "application/json"}).json()
    refusals = {}
    for path, methods in schema["paths"].items():
        for method in methods:
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            url = asgi_server + re.sub(r"\{[^}]+\}", "1", path)
            response = httpx.request(method.upper(), url, json={} if method in {"post", "put", "patch"} else None)
            refusals[f"{method.upper()} {path}"] = (response.status_code, response.headers.get("content-type", ""),
                                                    response.content)
    assert refusals
    for operation, (status, content_type, content) in refusals.items():
        assert status in (401, 403), (operation, status)
        assert content_type.startswith("application/json"), (operation, content_type)
        error = json.loads(content)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), operation
