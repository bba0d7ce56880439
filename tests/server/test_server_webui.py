"""The web chat page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
it loads from the server with no outside requests, shows the model, streams a reply to a
message, and stops a reply on request. Screenshots go to $CORRAL_TEST_ARTIFACTS (default:
pytest's tmp_path)."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from server_refs import API_KEY

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("CORRAL_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(live_server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        outside = []
        page.on(
            "request",
            lambda r: None if r.url.startswith(live_server.url) else outside.append(r.url),
        )
        page.goto(live_server.url + "/")
        page.fill("#api_key", API_KEY)
        page.dispatch_event("#api_key", "change")  # saved, and the model info is fetched
        yield page
        assert outside == []  # works offline: no CDN, no other host
        browser.close()


def test_page_streams_a_reply(live_server, page, artifacts):
    expect(page.locator("#model-info")).to_contain_text(live_server.model_id)
    page.fill("#max_tokens", "24")
    page.fill("#temperature", "0")
    page.dispatch_event("#temperature", "change")
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")
    reply = page.locator(".message.assistant").last
    expect(reply).to_have_class("message assistant streaming")  # text arriving
    expect(page.locator("#send")).to_be_enabled(timeout=120_000)  # the stream ended
    expect(reply).to_contain_text("Paris")
    expect(reply.locator(".meta")).to_contain_text("tokens/s")
    expect(page.locator(".message.user")).to_have_text("What is the capital of France?")
    expect(page.locator("#conversations li.active")).to_contain_text("What is the capital")
    page.screenshot(path=artifacts / "webui-reply.png", full_page=True)
    assert (artifacts / "webui-reply.png").stat().st_size > 0


def test_stop_button_ends_the_reply_and_frees_the_sequence(live_server, page, artifacts):
    page.fill("#max_tokens", "400")
    page.dispatch_event("#max_tokens", "change")
    page.fill("#prompt", "Write a long story about a dragon.")
    page.click("#send")
    reply = page.locator(".message.assistant").last
    expect(reply).not_to_have_text("", timeout=120_000)  # some text streamed in
    page.click("#stop")
    expect(reply.locator(".meta")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    page.screenshot(path=artifacts / "webui-stopped.png", full_page=True)
    stats = live_server.wait_idle()
    assert (stats.running, stats.kv_used_tokens) == (0, 0)
