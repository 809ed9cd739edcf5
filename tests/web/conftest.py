"""The web page in headless Chromium (Debian's package), driven by Playwright, against a real
embedded server with the demo traffic in it.

Chromium is never downloaded: `make browser` installs Debian's `chromium` and the Thai and CJK
fonts. Without it these tests fail (they do not skip) and say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aitrail import sdk
from aitrail.demo import DemoSummary, send_sample_traffic
from aitrail.store.base import Role
from tests.running import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
OUT = Path(__file__).resolve().parent / "out"
TIMEOUT_MS = 15_000  # every Playwright wait; the bound the brief allows is 30 s

# Chromium's background services would try the network, which is closed here.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

XSS_QUESTION = "<img src=x onerror=alert(1)> what does onerror do?"
XSS_ANSWER = "<script>window.__pwned = 1</script><b>not bold</b> & done"
XSS_DOC = "<svg onload=alert(2)>"
XSS_TAG = '"><img src=x onerror=alert(3)>'


@dataclass
class Site:
    """The running server, its keys and what was sent to it."""

    api: str
    keys: dict[str, str]
    demo: DemoSummary
    xss_trace_id: str
    store: object  # the server's SqliteStore, for the tamper test

    def get(self, path: str, role: str = "auditor", **params) -> dict:
        response = httpx.get(self.api + path, params=params, headers={"Authorization": f"Bearer {self.keys[role]}"},
                             timeout=30)
        response.raise_for_status()
        return response.json()


def _send_xss_trace(endpoint: str, ingest_key: str) -> str:
    tracing = sdk.configure(service_name="xss-bot", endpoint=endpoint, api_key=ingest_key, set_global=False)
    with tracing.user("mallory@example.com", roles=["customer"]), tracing.span("rag.answer") as root:
        with tracing.retrieval(XSS_QUESTION, index="policies") as lookup:
            lookup.add_document(XSS_DOC, version="1", content="<iframe src=javascript:alert(4)>", score=0.5,
                                acl_tags=[XSS_TAG])
        with tracing.completion("gpt-4o-mini", provider="openai",
                                messages=[{"role": "user", "content": XSS_QUESTION}]) as call:
            call.response(XSS_ANSWER, input_tokens=5, output_tokens=5)
    assert tracing.force_flush()
    tracing.shutdown()
    return root.trace_id


def _wait(what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    server = RunningServer(tmp_path_factory.mktemp("web-serve")).start()
    try:
        keys = {role.value: server.store.create_key("acme", role)[0] for role in Role}
        demo = send_sample_traffic(server.otlp_http, keys["ingest"])
        assert demo.flushed
        xss = _send_xss_trace(server.otlp_http, keys["ingest"])
        running = Site(api=server.api, keys=keys, demo=demo, xss_trace_id=xss, store=server.store)
        expected = demo.traces + 1
        _wait(f"{expected} answers stored",
              lambda: True if running.get("/v1/answers", limit=1)["count"] >= expected else None)
        # Records are verified once a signed checkpoint covers them (at most a second or so).
        for trace_id in (demo.example_trace_id, demo.failed_trace_id, xss):
            _wait(f"trace {trace_id} verified", lambda t=trace_id: True if running.get(
                f"/v1/traces/{t}")["integrity"]["status"] == "verified" else None)
        yield running
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium and the Thai/CJK fonts")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install playwright (never `playwright install`)")
    with sync_playwright() as p:
        # launch() always gives Chromium a fresh temporary --user-data-dir (removed on close).
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    """One browser tab on the page, with what it saw besides the page itself."""

    page: object
    requests: list[str]
    dialogs: list[str]
    errors: list[str]


@pytest.fixture
def visit(browser, site):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    # A zone other than Bangkok, so that choosing the zone in the picker is what makes times right.
    context = browser.new_context(locale="en-US", timezone_id="Europe/Berlin", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    seen = Visit(page=page, requests=[], dialogs=[], errors=[])
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.goto(site.api + "/")
    try:
        yield seen
    finally:
        context.close()
    assert not seen.errors, f"JavaScript errors on the page: {seen.errors}"
    assert not seen.dialogs, f"the page opened dialogs: {seen.dialogs}"
    outside = [u for u in seen.requests if not u.startswith(site.api + "/")]
    assert not outside, f"the page reached outside its server: {outside}"


@pytest.fixture(scope="session")
def out_dir() -> Path:
    OUT.mkdir(exist_ok=True)
    return OUT
