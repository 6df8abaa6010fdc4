"""The chat page in a real browser: answers stream in as sanitized Markdown with citation chips that open their
passage, Stop works from the keyboard, a dropped socket resumes mid-answer, and refusals say when to retry."""

from __future__ import annotations

import re
import uuid

import pytest

from billing.services import usage_record
from chat.models import Message
from chat.tests.factories import chat_user, document_with_chunks
from config.testing.browser import (
    answer_states,
    horizontal_overflow,
    record_answer_states,
    sign_in,
    tab_to,
    unnamed_fields,
    watch_csp,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ANSWER = "Gnuplot draws plots of functions and data [1]."
ANSWERS = "article.bubble.assistant .text"

# Wraps the page's WebSocket constructor so a test can drop the page's live sockets, as a network failure would.
TRACK_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
})();"""

MARKDOWN_ANSWER = """Gnuplot, in short [1]:

- **draws** plots of functions
- reads `data files`

| Command | Effect |
|---|---:|
| `plot` | draws a curve |
| `splot` | draws a surface |

```gnuplot
set terminal pngcairo size 1600,1200 enhanced font "Helvetica,20" linewidth 2 rounded dashlength 1.5
```

<img src=x onerror="window.__pwned = 1"> <script>window.__pwned = 2</script>
[see the manual](javascript:window.__pwned=3) or [the site](https://gnuplot.info/)."""


def test_citation_chip_opens_its_passage_by_keyboard(live, llm, page, screenshot) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=["Gnuplot draws plots of functions."], pages=[4])
    llm.configure(text=ANSWER, token_ms=20)
    sign_in(page, user, live).goto("/chat/")

    page.get_by_label("Your question").fill("What does gnuplot draw?")
    page.get_by_role("button", name="Ask").click()

    page.locator(ANSWERS).filter(has_text=ANSWER).wait_for(timeout=10_000)
    chip = page.get_by_role("button", name="Gnuplot manual, p. 4")
    chip.wait_for(timeout=5_000)
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=5_000)  # `done` arrived
    assert page.get_by_role("button", name="Ask").is_enabled()
    assert "/chat/" in page.url and page.url.rstrip("/").split("/")[-1].isdigit()  # the new conversation's URL
    chip.focus()
    page.keyboard.press("Enter")
    passage = page.locator("article.bubble.assistant figure.passage")
    passage.wait_for(timeout=2_000)
    assert passage.locator("blockquote").inner_text() == "Gnuplot draws plots of functions."
    assert passage.locator("figcaption").inner_text() == "Gnuplot manual, page 4"
    assert chip.get_attribute("aria-expanded") == "true"
    screenshot(page, "chat-answer")
    page.keyboard.press("Enter")
    passage.wait_for(state="detached", timeout=2_000)
    assert page.console_errors == [], page.console_errors


def test_chosen_documents_are_the_only_ones_searched(live, llm, page) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=["Gnuplot draws plots of functions."], pages=[4])
    boiler = document_with_chunks(owner=user, title="Boiler guide", texts=["Service the boiler every year."],
                                  pages=[2])
    llm.configure(text="Once a year [1].", token_ms=10)
    sign_in(page, user, live).goto("/chat/")

    page.locator(".doc-picker summary").click()
    page.get_by_label("Boiler guide").check()
    assert page.locator("#doc-summary").inner_text() == "1 selected"
    page.get_by_label("Your question").fill("What does gnuplot draw, and when is the boiler serviced?")
    page.get_by_role("button", name="Ask").click()

    page.get_by_role("button", name="Boiler guide, p. 2").wait_for(timeout=10_000)
    assert page.get_by_role("button", name="Gnuplot manual, p. 4").count() == 0
    answer = Message.objects.get(role="assistant", conversation__owner=user)
    assert answer.document_ids == [boiler.id]
    assert [citation["document_id"] for citation in answer.citations] == [boiler.id]
    assert "Gnuplot draws plots" not in str(llm.chat_requests[-1].body["messages"])
    assert page.console_errors == [], page.console_errors


def test_ask_with_enter_and_stop_by_keyboard_only_keeps_the_partial_text(live, llm, page) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=["Gnuplot draws plots of functions."], pages=[4])
    llm.configure(tokens=400, token_ms=30)
    sign_in(page, user, live).goto("/chat/")

    tab_to(page, "#question")
    page.keyboard.type("Go on")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("and on")
    page.keyboard.press("Enter")
    page.locator(ANSWERS).filter(has_text="deterministic").wait_for(timeout=10_000)
    tab_to(page, "#stop-button")
    page.keyboard.press("Enter")

    page.get_by_text("Stopped.").wait_for(timeout=5_000)
    message = Message.objects.get(role="assistant", conversation__owner=user)
    assert message.finish_reason == "cancelled" and 0 < message.completion_tokens < 400
    assert page.locator(ANSWERS).inner_text() == message.content
    assert page.locator("article.bubble.user .text").inner_text() == "Go on\nand on"
    assert page.evaluate("document.activeElement.id") == "question"  # ready for the next question
    assert unnamed_fields(page) == []


def test_dropped_socket_resumes_mid_answer_without_gaps_or_duplicates(live, llm, page) -> None:
    user = chat_user()
    full = " ".join(f"w{n}" for n in range(1, 81))  # every state of the text says which tokens it holds
    llm.configure(text=full, token_ms=40)
    page.add_init_script(TRACK_SOCKETS)
    sign_in(page, user, live).goto("/chat/")
    page.get_by_label("Your question").fill("Count to eighty")
    page.get_by_role("button", name="Ask").click()
    page.locator(ANSWERS).filter(has_text="w5").wait_for(timeout=10_000)

    record_answer_states(page)
    page.evaluate("window.__sockets.forEach((socket) => socket.close())")
    page.get_by_text("Connection lost; reconnecting…").wait_for(timeout=5_000)
    # Offline only once the socket is closed: a close begun offline can hang in CLOSING (its closing handshake
    # never completes), and then the page never learns the connection is gone. The first retry is 0.5 s away.
    page.context.set_offline(True)  # reconnecting fails until the network is back
    page.wait_for_timeout(100)  # the last frame renders what arrived before the drop
    at_drop = page.locator(ANSWERS).inner_text()
    page.wait_for_timeout(700)  # the model goes on meanwhile
    assert page.locator(ANSWERS).inner_text() == at_drop
    page.context.set_offline(False)
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=15_000)

    states = answer_states(page)
    assert page.locator(ANSWERS).inner_text() == full
    assert all(full.startswith(state) for state in states), [s for s in states if not full.startswith(s)]
    resumed = [state for state in states if len(at_drop) < len(state) < len(full)]
    assert resumed, "the answer only reappeared whole: it did not resume mid-answer"
    assert page.evaluate("window.__sockets.length") >= 2
    assert page.get_by_role("status").filter(has_text="Connection lost").count() == 0
    unexpected = [error for error in page.console_errors if "ERR_INTERNET_DISCONNECTED" not in error]
    assert unexpected == [], unexpected


def test_a_socket_the_server_keeps_closing_is_retried_ever_more_slowly(live, llm, page, monkeypatch) -> None:
    """A reader failing on every connection (Redis down) closes each socket at once: the page used to reset its
    backoff on every open and reconnect twice a second, as did every other open page."""
    from chat import events

    user = chat_user()
    llm.configure(text=" ".join(f"w{n}" for n in range(1, 400)), token_ms=50)
    page.add_init_script(TRACK_SOCKETS)
    sign_in(page, user, live).goto("/chat/")
    page.get_by_label("Your question").fill("Count")
    page.get_by_role("button", name="Ask").click()
    page.locator(ANSWERS).filter(has_text="w3").wait_for(timeout=10_000)

    def reader_down(*args, **kwargs):
        raise ConnectionError("Redis is unreachable")

    monkeypatch.setattr(events, "follow", reader_down)
    before = page.evaluate("window.__sockets.length")
    page.evaluate("window.__sockets.forEach((socket) => socket.close())")
    page.wait_for_timeout(4_000)
    sockets = page.evaluate("window.__sockets.length") - before

    assert 1 <= sockets <= 4  # retried after 0.5, 1 and 2 s; about 7 at a steady 0.5 s before


def test_quota_and_rate_limit_refusals_say_why_and_when_to_retry(live, llm, page, screenshot) -> None:
    exhausted = chat_user(monthly_token_quota=20_000)
    usage_record(user=exhausted, kind="chat", model="gpt-4o-mini", prompt_tokens=20_000, request_id=uuid.uuid4().hex)
    llm.configure(text="Fine.")
    sign_in(page, exhausted, live).goto("/chat/")
    status = page.locator("#chat-status")

    page.get_by_label("Your question").fill("Anything left?")
    page.get_by_role("button", name="Ask").click()
    status.filter(has_text="quota").wait_for(timeout=10_000)
    assert re.fullmatch(r"Your monthly token quota is used up \(20,000 tokens this month\)\. It resets in "
                        r"(\d+ days|\d+ h); upgrade your plan for more\. See plans\.", status.inner_text())
    assert status.get_by_role("link", name="See plans.").get_attribute("href") == "/billing/plans/"
    assert page.get_by_label("Your question").input_value() == "Anything left?"  # to send again later
    assert page.locator("article.bubble").count() == 0 and page.get_by_role("button", name="Ask").is_enabled()
    screenshot(page, "chat-quota-error")
    assert not Message.objects.filter(conversation__owner=exhausted).exists()

    limited = chat_user(requests_per_minute=1)
    page.context.clear_cookies()
    sign_in(page, limited, live).goto("/chat/")
    page.get_by_label("Your question").fill("First")
    page.get_by_role("button", name="Ask").click()
    page.locator(ANSWERS).filter(has_text="Fine.").wait_for(timeout=10_000)
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=5_000)
    page.get_by_label("Your question").fill("Second")
    page.get_by_role("button", name="Ask").click()
    status.filter(has_text="Rate limit").wait_for(timeout=10_000)
    message = re.fullmatch(r"Rate limit reached: your plan allows 1 request per minute\. Try again in (\d+) s\.",
                           status.inner_text())
    assert message and 1 <= int(message.group(1)) <= 60, status.inner_text()
    assert page.get_by_label("Your question").input_value() == "Second"
    assert page.locator("article.bubble.user").count() == 1
    assert page.console_errors == [], page.console_errors


def test_markdown_answer_renders_its_structure_on_a_phone_and_runs_no_html(live, llm, page, screenshot) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=["Gnuplot draws plots of functions."], pages=[4])
    llm.configure(text=MARKDOWN_ANSWER, token_ms=5)
    violations = watch_csp(page)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, user, live).goto("/chat/")
    page.get_by_label("Your question").fill("Tell me about gnuplot")
    page.get_by_role("button", name="Ask").click()
    page.locator(f"{ANSWERS} table").wait_for(timeout=10_000)
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=10_000)

    for attempt in ("streamed", "reloaded"):
        answer = page.locator(ANSWERS)
        assert answer.locator("ul > li").all_inner_texts() == ["draws plots of functions", "reads data files"], attempt
        assert answer.locator("li strong").inner_text() == "draws" and answer.locator("li code").count() == 1
        assert answer.locator("table th").all_inner_texts() == ["Command", "Effect"], attempt
        assert answer.locator("table tbody tr").count() == 2
        assert answer.locator("pre > code").inner_text().startswith("set terminal pngcairo size 1600,1200")
        assert '<img src=x onerror="window.__pwned = 1">' in answer.inner_text()  # shown as text, not run
        assert answer.locator("img, script, iframe, [onerror]").count() == 0
        assert page.locator("a[href^='javascript:' i]").count() == 0
        assert answer.get_by_text("see the manual").count() == 1  # the words of the unsafe link survive
        assert answer.get_by_role("link", name="the site").get_attribute("rel") == "noopener noreferrer nofollow"
        assert page.evaluate("window.__pwned") is None and dialogs == []
        assert horizontal_overflow(page) == 0, f"the chat page scrolls sideways on a phone ({attempt})"
        if attempt == "streamed":
            screenshot(page, "chat-phone")
            page.reload()
    assert violations == [], violations
    assert page.console_errors == [], page.console_errors
