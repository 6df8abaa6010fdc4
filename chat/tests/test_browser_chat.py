"""The chat page in a real browser: ask, watch the answer stream in with its citations, stop a long one."""

from __future__ import annotations

import pytest

from chat.models import Message
from chat.tests.conftest import session_cookie
from chat.tests.factories import chat_user, document_with_chunks

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ANSWER = "Gnuplot draws plots of functions and data [1]."


def signed_in(page, user, base_url: str):
    page.context.add_cookies([{"name": "sessionid", "value": session_cookie(user), "url": base_url}])
    return page


def test_question_streams_an_answer_with_citation_chips(live, llm, page, screenshot) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=["Gnuplot draws plots of functions."], pages=[4])
    llm.configure(text=ANSWER, token_ms=20)
    signed_in(page, user, live).goto("/chat/")

    page.get_by_label("Your question").fill("What does gnuplot draw?")
    page.get_by_role("button", name="Ask").click()

    answer = page.locator("article.bubble.assistant .text")
    answer.filter(has_text=ANSWER).wait_for(timeout=10_000)
    chip = page.locator("article.bubble.assistant .chip")
    chip.wait_for(timeout=5_000)
    assert chip.inner_text() == "Gnuplot manual, p. 4"
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=5_000)  # `done` arrived
    assert page.get_by_role("button", name="Ask").is_enabled()
    assert "/chat/" in page.url and page.url.rstrip("/").split("/")[-1].isdigit()  # the new conversation's URL
    screenshot(page, "chat-answer")
    assert page.console_errors == [], page.console_errors


def test_stop_button_cancels_the_answer_and_keeps_the_partial_text(live, llm, page) -> None:
    user = chat_user()
    llm.configure(tokens=400, token_ms=30)
    signed_in(page, user, live).goto("/chat/")

    page.get_by_label("Your question").fill("Go on and on")
    page.get_by_role("button", name="Ask").click()
    stop = page.get_by_role("button", name="Stop")
    stop.wait_for(state="visible", timeout=10_000)
    page.locator("article.bubble.assistant .text").filter(has_text="deterministic").wait_for(timeout=10_000)
    stop.click()

    page.get_by_text("Stopped.").wait_for(timeout=5_000)
    message = Message.objects.get(role="assistant", conversation__owner=user)
    assert message.finish_reason == "cancelled" and 0 < message.completion_tokens < 400
    assert page.locator("article.bubble.assistant .text").inner_text() == message.content
