"""A new user's whole first visit in a real browser, against the real ASGI server, the Celery worker (ingestion
and answers) and the fake OpenAI-compatible model: sign up, upload a PDF, ask, read the cited passage, stop an
answer, come back to it. Every main page is screenshotted on the way (var/screenshots/) and checked for labelled
fields and Content-Security-Policy violations."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from accounts.models import User
from accounts.tests.factories import PASSWORD
from chat.models import Message
from config.testing import fake_openai
from config.testing.browser import answer_states, record_answer_states, unnamed_fields, watch_csp
from documents.models import Chunk, Document
from documents.tests import hostile_files

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

fake_llm_server, fake_llm = fake_openai.pytest_fixtures(name="fake_llm")

EMAIL = "journey@example.com"
FIRST_ANSWER = "The document closes on page three with pears and plums, after apples and orchards on page one [1]."
ANSWERS = "article.bubble.assistant"


@pytest.fixture
def llm(settings, fake_llm: fake_openai.FakeOpenAI) -> fake_openai.FakeOpenAI:
    """The chat provider pointed at the fake model (chat's own tests do the same in their conftest)."""
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_BASE_URL = fake_llm.base_url
    settings.OPENAI_API_KEY = "test"
    settings.LLM_MODEL = "gpt-4o-mini"
    return fake_llm


def _partial_answer(page) -> str:
    """The newest answer's text once it shows a few words while still streaming."""
    handle = page.wait_for_function(
        """() => {
          const text = document.querySelector("article.bubble.assistant.streaming .text")?.textContent;
          return text && text.split(" ").length >= 3 ? text : null;
        }""",
        timeout=10_000,
    )
    return handle.json_value()


def test_sign_up_upload_ask_stop_and_find_it_all_again(page, celery_workers, llm, screenshot) -> None:
    violations = watch_csp(page)

    # Logged out: landing, log-in, password reset, sign-up through the real form.
    page.goto("/")
    screenshot(page, "landing")
    page.get_by_role("link", name="Log in").first.click()
    page.wait_for_url("**/accounts/login/")
    assert unnamed_fields(page) == []
    screenshot(page, "login")
    page.get_by_role("link", name="Forgot your password?").click()
    page.wait_for_url("**/accounts/password/reset/")
    assert unnamed_fields(page) == []
    screenshot(page, "password-reset")
    page.get_by_role("link", name="Sign up").first.click()
    assert unnamed_fields(page) == []
    screenshot(page, "signup")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/dashboard/")
    user = User.objects.get(email=EMAIL)

    # Upload a PDF and watch it become ready.
    page.get_by_role("link", name="Documents").first.click()
    page.wait_for_url("**/documents/")
    assert unnamed_fields(page) == []
    page.set_input_files("#upload-input", files=[
        {"name": "orchard.pdf", "mimeType": "application/pdf", "buffer": hostile_files.sample_pdf()},
    ])
    row = page.locator("#documents-body tr", has_text="orchard.pdf")
    row.locator(".status-ready").wait_for(timeout=60_000)
    assert row.locator("progress").get_attribute("value") == "100"
    document = Document.objects.get(owner=user)
    assert document.status == Document.Status.READY and document.pages == 3
    screenshot(page, "documents")

    # Ask: the answer streams in word by word, then its citation chip opens the cited passage.
    page.get_by_role("link", name="Chat").first.click()
    page.wait_for_url("**/chat/")
    llm.enqueue(text=FIRST_ANSWER, token_ms=60)
    record_answer_states(page)
    page.get_by_label("Your question").fill("What closes the document: pears and plums?")
    page.get_by_role("button", name="Ask").click()
    partial = _partial_answer(page)
    assert FIRST_ANSWER.startswith(partial) and partial != FIRST_ANSWER
    screenshot(page, "chat-streaming")
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=10_000)
    first = page.locator(ANSWERS).first
    assert first.locator(".text").inner_text() == FIRST_ANSWER
    states = answer_states(page)
    assert all(FIRST_ANSWER.startswith(state) for state in states), states
    assert len([state for state in states if state != FIRST_ANSWER]) >= 3, f"the answer did not stream: {states}"

    cited = Chunk.objects.get(document=document, page=3)
    chip = first.get_by_role("button", name=f"{document.title}, p. 3")
    chip.click()
    passage = first.locator("figure.passage")
    assert passage.locator("blockquote").inner_text() == " ".join(cited.text.split())
    assert passage.locator("figcaption").inner_text() == f"{document.title}, page 3"
    screenshot(page, "chat")

    # A second question, stopped mid-answer: the words so far stay, marked as stopped.
    llm.enqueue(tokens=400, token_ms=25)
    page.get_by_label("Your question").fill("Tell me everything else, at length.")
    page.get_by_role("button", name="Ask").click()
    second = page.locator(ANSWERS).nth(1)
    second.locator(".text").filter(has_text="deterministic").wait_for(timeout=10_000)
    page.get_by_role("button", name="Stop").click()
    second.get_by_text("Stopped.").wait_for(timeout=5_000)
    stopped = Message.objects.get(conversation__owner=user, role="assistant", finish_reason="cancelled")
    assert 0 < stopped.completion_tokens < 400
    assert second.locator(".text").inner_text() == stopped.content

    # Come back: the conversation is listed and holds both answers as they ended.
    page.reload()
    current = page.locator(".conversation-list li[aria-current=page] a")
    assert current.get_attribute("href") == urlparse(page.url).path
    conversation_title = current.inner_text()
    answers = page.locator(ANSWERS)
    assert answers.count() == 2
    assert answers.nth(0).locator(".text").inner_text() == FIRST_ANSWER
    assert answers.nth(0).get_by_role("button", name=f"{document.title}, p. 3").count() == 1
    assert answers.nth(1).locator(".text").inner_text() == stopped.content
    assert answers.nth(1).get_by_text("Stopped.").count() == 1

    # The rest of the product: dashboard, usage, API keys, plans.
    page.get_by_role("link", name="Dashboard").first.click()
    page.wait_for_url("**/dashboard/")
    assert page.locator("#dash-docs + ul").get_by_text(document.title).count() == 1
    assert page.get_by_role("link", name=conversation_title).count() == 1
    assert page.locator("#dash-usage ~ p", has_text="Plan:").inner_text().startswith("Plan: Free (plans).")
    screenshot(page, "dashboard")
    page.get_by_role("link", name="Usage").first.click()
    page.wait_for_url("**/billing/")
    assert page.locator("tr", has_text="gpt-4o-mini").locator("td").nth(2).inner_text() == "2"  # both answers
    screenshot(page, "usage")
    page.get_by_role("link", name="API keys").first.click()
    page.wait_for_url("**/accounts/keys/")
    assert unnamed_fields(page) == []
    screenshot(page, "api-keys")
    page.goto("/billing/plans/")
    assert page.locator(".plan.highlight h2").inner_text() == "Free"
    screenshot(page, "plans")

    assert violations == [], violations
    assert page.console_errors == [], page.console_errors
    # The watcher itself works: an inline script is a violation it reports.
    page.evaluate("document.head.append(Object.assign(document.createElement('script'), {textContent: '1'}))")
    for _ in range(20):
        if violations:
            break
        page.wait_for_timeout(100)
    assert any("script-src" in violation for violation in violations), violations
