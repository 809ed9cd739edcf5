"""The page as a compliance officer uses it: headless Chromium against the embedded server."""

from __future__ import annotations

import re
import time

import pytest

try:
    from playwright.sync_api import Page, expect
except ImportError:  # fail, never skip
    pytest.fail("the Python package playwright is missing: pip install playwright "
                "(never `playwright install`; `make browser` installs Debian's chromium)", pytrace=False)

from tests.web.conftest import XSS_ANSWER, XSS_DOC, XSS_QUESTION, XSS_TAG

BANGKOK = "Asia/Bangkok"
RED = "rgb(179, 38, 30)"


def log_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")
    expect(page.locator("#who")).to_be_visible()


def search(page: Page, q: str = "", at: str = "", tz: str = BANGKOK, window: str = "15m") -> None:
    page.get_by_label("Time zone").first.select_option(tz)
    page.get_by_label("Question or answer words").fill(q)
    page.get_by_label("When (plain language or ISO 8601)").fill(at)
    page.get_by_label("± window").fill(window)
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#answers-status")).to_contain_text(re.compile(r"found|No answers"))


def results(page: Page):
    return page.locator("#results tbody tr")


def open_replay(page: Page, row) -> None:
    row.locator("button.open").click()
    expect(page.locator("#replay")).to_be_visible()
    expect(page.locator("#replay-title")).to_be_focused()


def test_auditor_finds_last_tuesdays_refund_answer_and_replays_it(visit, site):
    page = visit.page
    log_in(page, site.keys["auditor"])
    expect(page.locator("#who-text")).to_contain_text("auditor")
    expect(page.locator("#who-text")).to_contain_text("acme")

    search(page, q="refund policy", at="last Tuesday 14:30")
    found = site.get("/v1/answers", q="refund policy", at="last Tuesday 14:30", tz=BANGKOK)["data"]
    (answer,) = [a for a in found if a["trace_id"] == site.demo.example_trace_id]
    # the random part of the demo traffic may put another refund question in the same window
    expect(page.locator("#answers-status")).to_contain_text(f"{len(found)} answer{'s' if len(found) > 1 else ''} found")
    expect(results(page)).to_have_count(len(found))
    row = page.locator(f"#results tbody tr[data-trace='{answer['trace_id']}']")
    # the time is shown in the zone chosen in the picker, not the browser's (Berlin)
    expect(row.locator("td").nth(0)).to_contain_text(site.demo.example_time.strftime("%Y-%m-%d %H:%M"))
    expect(page.locator("#results-time")).to_have_text(f"Time ({BANGKOK})")
    expect(row.locator("td").nth(1)).to_have_text(site.demo.example_question)
    expect(row.locator("td").nth(3)).to_have_text(answer["model"])
    expect(row.locator("td").nth(4)).to_have_text(f"{float(answer['cost']['amount']):.10f}".rstrip("0") + " USD")
    expect(row.locator("td").nth(5)).to_have_text("support-bot")

    open_replay(page, row)
    replay = page.locator("#replay")
    trace = site.get(f"/v1/traces/{answer['trace_id']}")
    expect(replay.locator("ol.timeline > li")).to_have_count(len(trace["records"]))
    assert replay.locator("ol.timeline > li").evaluate_all("ls => ls.map(l => l.dataset.kind)") == [
        "retrieval", "prompt", "completion"]

    (retrieval,) = [r for r in trace["records"] if r["kind"] == "retrieval"]
    docs = replay.locator("li[data-kind=retrieval] table.docs tbody tr")
    expect(docs).to_have_count(len(retrieval["documents"]))
    for doc, row in zip(retrieval["documents"], docs.all(), strict=True):
        expect(row).to_have_attribute("data-doc", doc["doc_id"])
        expect(row.locator("td").nth(2)).to_have_text(doc["doc_version"])
        expect(row.locator("td.score")).to_have_text(str(doc["score"]))
        assert row.locator("td.acl .chip").all_text_contents() == doc["acl_tags"]
        expect(row.locator("td").nth(5)).to_have_text(doc["snippet"])
    assert {"public", "support-internal"} <= set(replay.locator("td.acl .chip").all_text_contents())

    prompt = replay.locator("li[data-kind=prompt]")
    expect(prompt).to_contain_text("support-answer · version 3")
    expect(prompt).to_contain_text("context_doc_ids")

    (completion,) = [r for r in trace["records"] if r["kind"] == "completion"]
    step = replay.locator("li[data-kind=completion]")
    expect(step.locator(".answer-text")).to_have_text(completion["answer"])
    expect(step).to_contain_text(completion["response_model"])
    expect(step).to_contain_text(f"{completion['input_tokens']} in")
    expect(step).to_contain_text(f"{completion['output_tokens']} out")
    expect(step).to_contain_text("ms")

    expect(replay.locator(".replay-head .badge")).to_have_text(re.compile(r"Integrity: verified$"))
    expect(replay.locator("ol.timeline .badge.small.verified")).to_have_count(3)

    # log out: the key and the audit data leave the page
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("API key")).to_be_focused()
    assert page.evaluate("sessionStorage.getItem('aitrail-key')") is None
    assert site.demo.example_question not in page.locator("body").inner_text()
    assert page.locator("#results tbody tr, #replay *").count() == 0


def test_keyboard_only(visit, site):
    page = visit.page
    kb = page.keyboard
    expect(page.get_by_label("API key")).to_be_focused()
    kb.type(site.keys["auditor"])
    kb.press("Enter")
    expect(page.get_by_label("Question or answer words")).to_be_focused()
    kb.type("refund policy")
    kb.press("Tab")
    kb.type("last Tuesday 14:30")
    kb.press("Tab")
    expect(page.locator("#tz")).to_be_focused()
    kb.type("Asia/Bangkok")  # a closed <select> selects by typing
    expect(page.locator("#tz")).to_have_value(BANGKOK)
    kb.press("Tab")
    expect(page.get_by_label("± window")).to_be_focused()
    kb.press("Tab")
    kb.press("Enter")  # on the Search button
    expect(page.locator("#answers-status")).to_contain_text("found")

    for _ in range(10):
        kb.press("Tab")
        if page.evaluate("document.activeElement.matches('#results button.open')"):
            break
    else:
        raise AssertionError("Tab never reached a result")
    ring = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert ring != "none", "no visible focus ring on the result"
    trace_id = page.evaluate("document.activeElement.dataset.trace")
    kb.press("Enter")
    expect(page.locator("#replay-title")).to_be_focused()
    expect(page.locator("#replay-title")).to_contain_text(trace_id)
    (completion,) = [r for r in site.get(f"/v1/traces/{trace_id}")["records"] if r["kind"] == "completion"]
    expect(page.locator("#replay .answer-text")).to_have_text(completion["answer"])
    assert "refund" in completion["question"].lower()

    # Tab, Enter on "Back to results": focus returns to the result that opened the replay
    kb.press("Tab")
    expect(page.get_by_role("button", name="Back to results")).to_be_focused()
    kb.press("Enter")
    expect(page.locator("#replay")).to_be_hidden()
    expect(page.locator(f"#results button.open[data-trace='{trace_id}']")).to_be_focused()


def test_tabs_follow_the_aria_pattern_and_show_the_access_log(visit, site, out_dir):
    page = visit.page
    log_in(page, site.keys["auditor"])
    tabs = page.get_by_role("tab")
    expect(tabs).to_have_count(3)
    answers, costs, access = (page.get_by_role("tab", name=n) for n in ("Answers", "Costs", "Access log"))
    # the selected tab is the one tab stop of the tab list: Shift+Tab from the first field
    page.keyboard.press("Shift+Tab")
    expect(answers).to_be_focused()
    assert [t.get_attribute("tabindex") for t in tabs.all()] == ["0", "-1", "-1"]
    page.keyboard.press("ArrowRight")
    expect(costs).to_be_focused()
    expect(costs).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-costs")).to_be_visible()
    expect(page.locator("#panel-answers")).to_be_hidden()
    page.keyboard.press("ArrowRight")
    expect(access).to_be_focused()
    expect(page.locator("#access-table tbody tr").first).to_be_visible()
    page.keyboard.press("ArrowRight")
    expect(answers).to_be_focused()  # wraps around
    page.keyboard.press("End")
    expect(access).to_be_focused()
    page.keyboard.press("Home")
    expect(answers).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowLeft")
    expect(access).to_have_attribute("aria-selected", "true")

    # this page's read of the costs (the Costs tab loads them when shown) is in the log, with this
    # auditor's key; access records reach the log through the bus, so refresh until it is there
    costs_read = page.locator("#access-table tbody tr").filter(has_text="/v1/costs").first
    deadline = time.monotonic() + 15
    while not costs_read.is_visible() and time.monotonic() < deadline:
        page.wait_for_timeout(200)
        with page.expect_response(lambda r: "/v1/access-log" in r.url):
            page.get_by_role("button", name="Refresh").click()
    expect(costs_read).to_contain_text(site.get("/v1/whoami")["key_id"])
    expect(costs_read).to_contain_text("auditor")
    expect(costs_read).to_contain_text("group_by=day")
    endpoints = set(page.locator("#access-table tbody tr td:nth-child(4)").all_text_contents())
    assert "/v1/answers" in endpoints  # the fixture's reads
    page.screenshot(path=str(out_dir / "access-log.png"))


def test_analyst_sees_redacted_content_and_no_access_log(visit, site, out_dir):
    page = visit.page
    log_in(page, site.keys["analyst"])
    expect(page.locator("#who-text")).to_contain_text("analyst")
    expect(page.get_by_role("tab", name="Access log")).to_be_hidden()
    expect(page.get_by_role("tab")).to_have_count(2)

    # an analyst may not search the words of questions and answers: the page says why
    page.get_by_label("Question or answer words").fill("refund policy")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#answers-error")).to_contain_text("role 'analyst' may not search")
    search(page, at="last Tuesday 14:30")
    row = page.locator(f"#results tbody tr[data-trace='{site.demo.example_trace_id}']")
    expect(row.locator("td").nth(1)).to_have_text("[redacted]")
    expect(row.locator("td").nth(2)).to_have_text("[redacted]")
    expect(row.locator("td").nth(1).locator(".redacted")).to_be_visible()

    open_replay(page, row)
    replay = page.locator("#replay")
    expect(replay.locator(".notice")).to_contain_text("analyst")
    completion = replay.locator("li[data-kind=completion]")
    expect(completion.locator(".redacted")).to_have_count(2)  # question and answer
    snippets = replay.locator("li[data-kind=retrieval] table.docs tbody tr td:nth-child(6)")
    expect(snippets.first).to_have_text("[redacted]")
    expect(replay.locator("li[data-kind=prompt] .redacted")).to_have_count(1)  # template variables
    # metadata is still there
    expect(replay.locator("li[data-kind=retrieval] td.acl .chip").first).to_have_text("public")
    expect(replay.locator(".replay-head .badge")).to_contain_text("verified")
    text = page.locator("body").inner_text()
    assert "Items that arrive damaged" not in text and site.demo.example_question not in text
    page.screenshot(path=str(out_dir / "analyst-replay.png"), full_page=True)


def test_thai_and_japanese_render(visit, site, out_dir):
    page = visit.page
    log_in(page, site.keys["auditor"])
    search(page, q="การคืนเงิน", window="15m")
    thai = results(page).filter(has_text="นโยบายการคืนเงินสำหรับสินค้าที่เสียหายเป็นอย่างไร").first
    expect(thai).to_be_visible()
    cell = thai.locator("td").nth(1).locator("[lang=th]")
    expect(cell).to_have_count(1)
    metrics = cell.evaluate(
        "e => { const s = getComputedStyle(e);"
        " return [parseFloat(s.lineHeight), parseFloat(s.fontSize), s.fontFamily] }")
    assert metrics[0] >= 1.6 * metrics[1], metrics
    assert "Noto Sans Thai" in metrics[2]
    open_replay(page, thai)
    expect(page.locator("#replay .answer-text")).to_have_attribute("lang", "th")
    # no box around Thai or CJK text clips it (marks above and below the line need the room);
    # the screenshots below are for a person to look at the glyphs themselves
    clipped = page.evaluate("""() => [...document.querySelectorAll('main [lang]')].filter(e => {
        for (let a = e; a && a !== document.body; a = a.parentElement) {
            const s = getComputedStyle(a);
            if ((s.overflowY !== 'visible' || s.webkitLineClamp !== 'none') && a.scrollHeight > a.clientHeight + 1)
                return true;
        }
        return false;
    }).map(e => e.textContent)""")
    assert clipped == []
    page.screenshot(path=str(out_dir / "thai-replay.png"), full_page=True)
    page.locator("#replay li[data-kind=completion]").screenshot(path=str(out_dir / "thai-answer.png"))

    search(page, q="保証期間")
    japanese = results(page).filter(has_text="製品の保証期間はどのくらいですか？").first
    expect(japanese).to_be_visible()
    expect(japanese.locator("td").nth(1).locator("[lang=ja]")).to_have_count(1)
    page.get_by_label("Question or answer words").fill("タイ語 ภาษาไทย 日本語")
    page.screenshot(path=str(out_dir / "japanese-results.png"), full_page=True)


def test_markup_from_the_api_stays_text(visit, site):
    page = visit.page
    log_in(page, site.keys["auditor"])
    search(page, q="onerror")
    row = results(page).first
    expect(row.locator("td").nth(1)).to_have_text(XSS_QUESTION)
    expect(row.locator("td").nth(2)).to_have_text(XSS_ANSWER)
    open_replay(page, row)
    replay = page.locator("#replay")
    expect(replay.locator(".answer-text")).to_have_text(XSS_ANSWER)
    expect(replay.locator("table.docs tbody tr").first).to_contain_text(XSS_DOC)
    expect(replay.locator("td.acl .chip")).to_have_text([XSS_TAG])
    assert page.locator("main img, main script, main iframe, main b, #replay svg").count() == 0
    assert page.evaluate("window.__pwned") is None
    # no dialog opened: the `visit` fixture checks that on the way out


def test_the_page_never_parses_strings_as_html():
    from importlib import resources

    html = resources.files("aitrail.query_api").joinpath("static/index.html").read_text("utf-8")
    script = html[html.index("<script>"):]
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", script)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not load anything from elsewhere"


def test_failed_call_is_shown_in_red(visit, site, out_dir):
    page = visit.page
    log_in(page, site.keys["auditor"])
    trace = site.get(f"/v1/traces/{site.demo.failed_trace_id}")
    (failed,) = [r for r in trace["records"] if r["status"] == "error"]
    search(page, at=failed["start_time"], tz="UTC", window="1m")
    row = page.locator(f"#results tbody tr[data-trace='{site.demo.failed_trace_id}']")
    open_replay(page, row)
    step = page.locator("#replay li.error")
    expect(step).to_have_count(1)
    expect(step).to_have_attribute("data-kind", "completion")
    box = step.locator(".error-box")
    expect(box).to_contain_text("ServiceUnavailableError")
    expect(box).to_contain_text("503 Service Unavailable")
    assert box.evaluate("e => getComputedStyle(e).color") == RED
    expect(step).to_contain_text("unpriced")
    page.screenshot(path=str(out_dir / "failed-call.png"), full_page=True)

    # the replay has an address of its own; a reload keeps the key (session storage) and the replay
    assert page.url.endswith(f"#trace={site.demo.failed_trace_id}")
    page.reload()
    expect(page.locator("#replay li.error .error-box")).to_contain_text("ServiceUnavailableError")


def test_altered_record_fails_integrity_in_red(visit, site):
    from aitrail.schemas.canonical import canonical_json

    # someone with write access to the SQLite file rewrites yesterday's HR answer
    trace_id = site.demo.trace_ids[1]
    (completion,) = [r for r in site.store.trace("acme", trace_id) if r.kind == "completion"]
    conn = site.store._conn()
    conn.execute("DROP TRIGGER IF EXISTS records_append_only")
    conn.execute("UPDATE records SET body = ? WHERE record_id = ?",
                 (canonical_json(completion.model_copy(update={"answer": "No parental leave."})), completion.record_id))
    conn.commit()

    page = visit.page
    log_in(page, site.keys["auditor"])
    search(page, q="parental leave", at="yesterday 9:00")
    open_replay(page, page.locator(f"#results tbody tr[data-trace='{trace_id}']"))
    head = page.locator("#replay .replay-head .badge")
    expect(head).to_have_text(re.compile(r"Integrity: failed$"))
    assert head.evaluate("e => getComputedStyle(e).color") == RED
    step = page.locator(f"#replay li[data-record='{completion.record_id}']")
    expect(step.locator(".badge.small")).to_have_text(re.compile(r"failed$"))
    expect(step.locator(".answer-text")).to_have_text("No parental leave.")
    expect(page.locator("#replay ol.timeline .badge.small.verified")).to_have_count(2)


def test_errors_are_announced_in_red(visit, site):
    page = visit.page
    page.get_by_label("API key").fill("atk_nope_nope")
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_role("alert").filter(has_text="Cannot log in")).to_contain_text("unknown or revoked key")
    assert page.locator("#login-error").evaluate("e => getComputedStyle(e).color") == RED
    page.get_by_label("API key").fill(site.keys["ingest"])
    page.get_by_label("API key").press("Enter")
    expect(page.locator("#login-error")).to_contain_text("ingest")
    expect(page.locator("#app")).to_be_hidden()

    log_in(page, site.keys["auditor"])
    page.get_by_label("When (plain language or ISO 8601)").fill("the day after never")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#answers-error")).to_contain_text("cannot read the time")
    assert page.locator("#answers-error").get_attribute("role") == "alert"


def test_more_pages_through_every_answer(visit, site):
    page = visit.page
    log_in(page, site.keys["auditor"])
    search(page)
    total = site.get("/v1/answers", limit=1)["count"]
    expect(page.locator("#answers-status")).to_contain_text(f"{total} answers found, showing 20")
    more = page.get_by_role("button", name="More answers")
    for _ in range(total // 20 + 1):
        if not more.is_visible():
            break
        shown = results(page).count()
        more.click()
        expect(results(page)).to_have_count(min(total, shown + 20))
        # focus goes to the first answer of the new page
        expect(results(page).nth(shown).locator("button.open")).to_be_focused()
    expect(more).to_be_hidden()
    expect(results(page)).to_have_count(total)
    ids = results(page).evaluate_all("rs => rs.map(r => r.dataset.trace)")
    assert len(set(ids)) == total  # no answer twice, none missing


def test_cost_view_draws_a_bar_per_group_with_a_table(visit, site, out_dir):
    page = visit.page
    log_in(page, site.keys["auditor"])
    page.get_by_role("tab", name="Costs").click()
    page.get_by_label("Time zone").nth(1).select_option(BANGKOK)
    for group_by in ("day", "model", "service"):
        page.get_by_label("Group by").select_option(group_by)
        page.get_by_role("button", name="Show costs").click()
        body = site.get("/v1/costs", **{"from": "7 days ago", "to": "now", "tz": BANGKOK, "group_by": group_by})
        expect(page.locator("#cost-table tbody tr")).to_have_count(len(body["data"]))
        expect(page.locator("#cost-svg rect.bar")).to_have_count(len(body["data"]))
        expect(page.locator("#cost-table-caption")).to_contain_text(f"Cost by {group_by}")
        labels = page.locator("#cost-table tbody th").all_text_contents()
        assert labels == [str(r["group"][group_by]) for r in body["data"]]
        total = body["total"]["amount"].rstrip("0").rstrip(".")
        expect(page.locator("#cost-table tfoot")).to_contain_text(total)
        # the longest bar is the dearest group
        widths = page.locator("#cost-svg rect.bar").evaluate_all("rs => rs.map(r => +r.getAttribute('width'))")
        amounts = [float(r["cost"]["amount"]) for r in body["data"]]
        assert widths.index(max(widths)) == amounts.index(max(amounts))
        page.screenshot(path=str(out_dir / f"costs-by-{group_by}.png"), full_page=True)
    expect(page.locator("#cost-svg")).to_have_attribute("role", "img")
    summary = page.locator("#cost-summary")
    for label in ("Total cost", "Traces", "Useful traces", "Cost per trace", "Cost per useful action"):
        expect(summary).to_contain_text(label)
