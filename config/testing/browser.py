"""Helpers for the browser tests (Playwright pages from the root conftest's `page` / `browser` fixtures)."""

from __future__ import annotations

import re
from typing import Any

from django.test import Client

FORM_FIELDS = "input:not([type=hidden]), select, textarea"
_NAMED = re.compile(r'^- [\w-]+ "[^"]+"')

# Reports every `securitypolicyviolation` event of every document the page loads (installed before its scripts).
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__docentCspViolation(
    `${event.violatedDirective} blocked ${event.blockedURI || "inline"} at ${event.sourceFile}:${event.lineNumber}`
  );
});
"""

# Records every text an answer shows while it streams: its `.text` after each change of the chat log.
_ANSWER_RECORDER = """
() => {
  window.__answerStates = [];
  const log = document.getElementById("chat-log");
  new MutationObserver(() => {
    const answers = log.querySelectorAll("article.bubble.assistant .text");
    const text = answers.length ? answers[answers.length - 1].textContent : null;
    const states = window.__answerStates;
    if (text && states[states.length - 1] !== text) states.push(text);
  }).observe(log, { childList: true, subtree: true, characterData: true });
}
"""


def sign_in(page: Any, user: Any, base_url: str) -> Any:
    """Puts a logged-in session cookie for `user` into the page's browser context."""
    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base_url}])
    return page


def watch_csp(page: Any) -> list[str]:
    """Content-Security-Policy violations on this page from now on, across navigations: the DOM events and
    Chromium's console reports. Call before the first `goto`."""
    violations: list[str] = []
    page.expose_function("__docentCspViolation", lambda report: violations.append(report))
    page.add_init_script(_CSP_LISTENER)
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    return violations


def unnamed_fields(page: Any) -> list[str]:
    """Form fields of the current page without an accessible name (what a screen reader announces), as HTML.
    Closed <details> are opened first so that the fields inside them are in the accessibility tree."""
    page.evaluate("document.querySelectorAll('details').forEach((details) => { details.open = true; })")
    fields = page.locator(FORM_FIELDS).all()
    assert fields, "the page has no form fields to check"
    return [field.evaluate("(el) => el.outerHTML") for field in fields if not _NAMED.match(field.aria_snapshot())]


def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than the viewport (0 when nothing scrolls sideways)."""
    return page.evaluate("Math.max(0, document.documentElement.scrollWidth - window.innerWidth)")


def record_answer_states(page: Any) -> None:
    """Starts recording the texts the newest answer shows (read them with `answer_states`)."""
    page.evaluate(_ANSWER_RECORDER)


def answer_states(page: Any) -> list[str]:
    return page.evaluate("window.__answerStates")


def tab_to(page: Any, selector: str, *, limit: int = 40) -> None:
    """Presses Tab (and nothing else) until the element matching `selector` has the focus."""
    for _ in range(limit):
        if page.evaluate("(selector) => document.activeElement?.matches(selector) ?? false", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} is not reachable with Tab within {limit} presses")
