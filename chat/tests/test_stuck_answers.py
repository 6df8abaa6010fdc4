"""Answers left unfinished by a lost broker message or a killed worker, finished by the periodic sweep, with a
real llm worker answering what the sweep sends again."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.utils import timezone

from billing.models import UsageRecord
from billing.selectors import usage_summary
from chat import events
from chat.models import Message
from chat.prompting import count_tokens
from chat.tasks import generate_answer, recover_stuck_answers
from chat.tests.conftest import wait_finished
from chat.tests.factories import answer_left_pending, answer_left_streaming

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_sweep_sends_a_lost_answer_again_and_closes_one_whose_worker_is_gone(
    celery_workers, llm, prices
) -> None:
    lost = answer_left_pending(lease_left=-1)
    queued = answer_left_pending(lease_left=60)  # behind a backlog, its message still on its way
    abandoned = answer_left_streaming(["Bleed ", "the "], lease_left=-1)
    alive = answer_left_streaming(["Check ", "the "], lease_left=60)
    llm.configure(text="Bleed the radiators first.")

    recovered = recover_stuck_answers()

    assert recovered == {"requeued": [lost.id], "given_up": [], "closed": [abandoned.id]}
    closed = Message.objects.get(id=abandoned.id)
    assert (closed.status, closed.error_code, closed.content) == ("done", "interrupted", "Bleed the ")
    record = UsageRecord.objects.get(request_id=abandoned.request_id)
    assert (record.prompt_tokens, record.completion_tokens) == (120, count_tokens("Bleed the "))
    answered = wait_finished(lost.id, timeout=30)
    assert (answered.finish_reason, answered.content) == ("stop", "Bleed the radiators first.")
    assert UsageRecord.objects.filter(request_id=lost.request_id).count() == 1
    assert Message.objects.get(id=queued.id).status == Message.Status.PENDING
    assert Message.objects.get(id=alive.id).status == Message.Status.STREAMING
    assert len(llm.chat_requests) == 1

    # The answer sent again has a new lease: the next sweep finds nothing to do.
    assert recover_stuck_answers() == {"requeued": [], "given_up": [], "closed": []}


def test_a_lost_answer_is_sent_again_once_per_queue_period_until_a_worker_takes_it(prices, monkeypatch) -> None:
    lost = answer_left_pending(lease_left=-1)
    sent = []
    monkeypatch.setattr(generate_answer, "delay", sent.append)  # no worker: what is sent again is lost too

    assert recover_stuck_answers()["requeued"] == [lost.id]
    assert recover_stuck_answers()["requeued"] == []

    assert sent == [lost.id]
    swept = Message.objects.get(id=lost.id)
    assert swept.status == Message.Status.PENDING
    left = (swept.lease_until - timezone.now()).total_seconds()
    assert settings.CHAT_ANSWER_QUEUE_SECONDS - 30 < left <= settings.CHAT_ANSWER_QUEUE_SECONDS


def test_an_answer_sent_again_gets_back_the_start_event_its_readers_need(prices, monkeypatch, redis_client) -> None:
    # The web process died between its commit and writing `start` and enqueueing the task.
    lost = answer_left_pending(lease_left=-1)
    redis_client.delete(events.stream_key(lost.id))
    monkeypatch.setattr(generate_answer, "delay", lambda *args: None)

    assert recover_stuck_answers()["requeued"] == [lost.id]

    stored = redis_client.xrange(events.stream_key(lost.id))
    assert [(entry_id, fields[b"t"]) for entry_id, fields in stored] == [(b"1-0", b"start")]
    assert json.loads(stored[0][1][b"e"])["conversation_id"] == lost.conversation_id


def test_an_answer_no_worker_took_in_time_is_closed_with_an_error_and_its_reservation_released(
    prices, monkeypatch, redis_client
) -> None:
    monkeypatch.setattr(generate_answer, "delay", lambda *args: pytest.fail("a stale answer was sent again"))
    stale = answer_left_pending(lease_left=-1, asked_ago=settings.CHAT_ANSWER_GIVE_UP_SECONDS + 5)
    owner = Message.objects.select_related("conversation__owner").get(id=stale.id).conversation.owner
    reserved = usage_summary(user=owner)["current"]["quota"]["used"]

    assert recover_stuck_answers() == {"requeued": [], "given_up": [stale.id], "closed": []}

    message = Message.objects.get(id=stale.id)
    assert (message.status, message.finish_reason, message.error_code) == ("done", "error", "unavailable")
    assert reserved > 0 and usage_summary(user=owner)["current"]["quota"]["used"] == 0
    kinds = [fields[b"t"] for _, fields in redis_client.xrange(events.stream_key(stale.id))]
    assert kinds == [b"start", b"error", b"citations", b"done"]


def test_the_beat_runs_the_sweep() -> None:
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == recover_stuck_answers.name)
    assert entry["schedule"] == settings.CHAT_SWEEP_EVERY_SECONDS
