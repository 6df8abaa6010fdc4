"""End-to-end: the account pages in a real browser against the real ASGI server."""

import re

import pytest

from accounts.tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_up_create_an_api_key_and_log_out(page, screenshot):
    page.goto("/")
    page.get_by_role("link", name="Sign up").first.click()
    page.get_by_label("Email").fill("browser@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/dashboard/")
    screenshot(page, "dashboard-new-user")

    page.get_by_role("link", name="API keys").first.click()
    page.get_by_label("Name").fill("from the browser")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_test_id("new-key").inner_text()
    assert re.fullmatch(r"dk_[0-9a-f]{8}_\S+", key)
    screenshot(page, "api-key-created")
    page.reload()
    assert page.get_by_test_id("new-key").count() == 0, "a key must be shown only once"

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/")
    assert page.get_by_role("link", name="Log in").count() >= 1
    assert page.console_errors == [], page.console_errors


def test_pages_fit_a_phone_screen_and_satisfy_the_csp(browser, asgi_server):
    context = browser.new_context(base_url=asgi_server, viewport={"width": 375, "height": 740})
    page = context.new_page()
    violations: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    for path in ("/", "/accounts/login/", "/accounts/signup/"):
        response = page.goto(path)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} scrolls sideways on a phone ({width}px)"
    assert violations == []
    context.close()
