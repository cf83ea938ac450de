"""A real click-through of the local console in headless Chromium (Debian's ``chromium``).

patient asks (no name: an anonymous id in a cookie) → the reply shows, labelled AI-written →
a reviewer signs in through the real login page and edits it with rubric scores → the patient
sees the edited reply marked reviewed → the dataset holds the example; a reviewer cannot
pause; a moderator signs in with a one-time link and presses Status, sees the charts (evaluation
per task with CIs, versions over time, reviews per week) and a retraining job's progress bar
move as the server pushes it (Server-Sent Events), with no click. Each reply sits under its
question; Send is disabled while a message is on its way (a double-click sends once, with no
false "empty" error); right-to-left text is laid out right to left; crisis links are links.
Screenshots are saved in the test's tmp dir; their paths are printed and recorded as a property. The console server runs in the test's own event loop (the same
loop as the service fixture); Playwright's async API drives the browser from that loop too.
Every request the page makes to anything but the console is blocked and fails the test.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from bot.access import accounts, sessions
from bot.core import LABEL_EDITED, LABEL_PENDING
from bot.local.web import start_console
from pipeline import jobs, registry
from tests import eval_records

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

CHROMIUM = os.environ.get("LLM4SWEAT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 15_000

QUESTION = "My palms sweat so much that paper gets wet when I write. What can I do?"
EDITED = ("Very sweaty palms are common in primary hyperhidrosis. Aluminium chloride applied at night is usually "
          "tried first; iontophoresis with tap water helps many people. Your doctor can help you choose.")


@pytest.fixture
async def browser_page():
    playwright_api = pytest.importorskip("playwright.async_api")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1100, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        await context.close()
        await browser.close()


async def test_click_through_patient_reviewer_moderator(service, browser_page, tmp_path, record_property):
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page = browser_page
    password = "rita's long password"
    await accounts.add(service.db, "rita", "reviewer", password)
    moderator = await accounts.add(service.db, "mo", "moderator", "mo's long password")
    runner, url = await start_console(service, "127.0.0.1", 0)
    external: list[str] = []
    page_errors: list[str] = []

    async def only_local(route):
        if route.request.url.startswith(url):
            await route.continue_()
        else:
            external.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_local)
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        # ---------------------------------------------------------------- the patient asks
        await page.goto(url + "#patient")
        await expect(page.get_by_test_id("patient-view")).to_be_visible()
        await expect(page.get_by_test_id("demo-banner")).to_be_hidden()
        assert await page.get_by_test_id("patient-name").count() == 0  # no name to type (or to borrow)
        await page.get_by_label("Your message").fill(QUESTION)
        await page.get_by_role("button", name="Send", exact=True).click()

        reply = page.get_by_test_id("reply").last
        await expect(reply).to_have_attribute("data-kind", "pending_review")
        await expect(reply.get_by_test_id("reply-label")).to_have_text(LABEL_PENDING)
        await expect(reply.get_by_test_id("reply-disclaimer")).to_have_text(service.pack.disclaimer.strip())
        await expect(page.get_by_test_id("patient-message").first).to_contain_text(QUESTION)
        original = await reply.get_by_test_id("reply-text").inner_text()
        assert original.strip()
        exchange = page.get_by_test_id("exchange").last  # the reply is threaded under its question
        await expect(exchange.get_by_test_id("patient-message")).to_contain_text(QUESTION)
        await expect(exchange.get_by_test_id("reply")).to_have_count(1)
        await page.screenshot(path=str(tmp_path / "1-patient-pending.png"), full_page=True)

        # ---------------------------------------------------------------- a reviewer signs in
        await page.get_by_test_id("tab-reviewer").click()
        await expect(page).to_have_url(url + "#reviewer")
        await expect(page.get_by_test_id("reviewer-signin")).to_be_visible()  # no queue without a sign-in
        assert await page.get_by_test_id("review-card").count() == 0
        await page.get_by_test_id("sign-in").click()
        await expect(page).to_have_url(url + "login")
        await page.get_by_label("Account name").fill("rita")
        await page.get_by_label("Password").fill("a wrong password")
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page.get_by_test_id("login-status")).to_have_text("Wrong name or password.")
        await page.get_by_label("Password").fill(password)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page).to_have_url(url + "#reviewer")
        await expect(page.get_by_test_id("who-text")).to_have_text("Signed in as rita (reviewer)")

        # ---------------------------------------------------------------- and edits the reply
        card = page.get_by_test_id("review-card").first
        await expect(card.get_by_test_id("review-patient-text")).to_have_text(QUESTION)
        await expect(card.get_by_test_id("review-reply-text")).to_have_text(original)
        await expect(card.get_by_test_id("review-task")).to_contain_text("task:")
        await card.get_by_label("Accuracy").select_option("4")
        await card.get_by_label("Appropriateness").select_option("5")
        await card.get_by_label("Empathy").select_option("3")
        await card.get_by_role("button", name="Edit", exact=True).click()
        editor = card.get_by_label("Corrected reply")
        await expect(editor).to_have_value(original)  # prefilled with the AI's reply
        await editor.fill(EDITED)
        await page.screenshot(path=str(tmp_path / "2-reviewer-editing.png"), full_page=True)
        await card.get_by_role("button", name="Save edit", exact=True).click()
        await expect(card.get_by_test_id("review-result")).to_contain_text("edited")
        await expect(page.get_by_test_id("queue-empty")).to_be_visible()

        # ---------------------------------------------------------------- the patient sees the edit
        await page.get_by_test_id("tab-patient").click()
        reply = page.get_by_test_id("reply").last
        await expect(reply).to_have_attribute("data-kind", "reviewed")
        await expect(reply.get_by_test_id("reply-text")).to_have_text(EDITED)
        await expect(reply.get_by_test_id("reply-label")).to_have_text(LABEL_EDITED)
        await page.screenshot(path=str(tmp_path / "3-patient-reviewed.png"), full_page=True)

        # ---------------------------------------------------------------- the dataset holds it
        rows = await service.db.fetchall("SELECT * FROM dataset_examples WHERE source = 'expert_edited'")
        assert len(rows) == 1
        assert json.loads(rows[0]["messages"])[-1] == {"role": "assistant", "content": EDITED}
        assert json.loads(rows[0]["messages"])[1]["content"] == QUESTION
        decision = await service.db.fetchone("SELECT * FROM review_decisions")
        assert (decision["reviewer_id"], decision["action"], decision["accuracy"], decision["appropriateness"],
                decision["empathy"]) == ("rita", "edit", 4, 5, 3)
        response = await page.request.get(url + "api/dataset")
        assert (await response.json())["by_source"]["expert_edited"] == 1

        # ---------------------------------------------------------------- a reviewer cannot pause
        await page.get_by_test_id("tab-moderator").click()
        await expect(page.get_by_test_id("moderator-signin")).to_be_visible()
        output = page.get_by_test_id("moderator-output")
        await page.get_by_role("button", name="Pause", exact=True).click()
        await expect(output).to_contain_text("Only moderators")
        assert not await service.core.is_paused()

        # ---------------------------------------------------------------- a moderator, by a one-time link
        await page.get_by_test_id("sign-out").click()
        await expect(page.get_by_test_id("sign-in")).to_be_visible()
        link = await sessions.create_link(service.db, moderator, 600)
        await page.goto(f"{url}login?token={link}")
        await expect(page).to_have_url(url + "#moderator")
        await expect(page.get_by_test_id("who-text")).to_have_text("Signed in as mo (moderator)")
        await expect(page.get_by_test_id("moderator-signin")).to_be_hidden()
        await page.get_by_role("button", name="Status", exact=True).click()
        await expect(output).to_contain_text("Live adapter")
        await expect(output).to_contain_text("Review queue: 0 pending")
        await expect(output).to_contain_text("1 edited")
        await page.get_by_role("button", name="Dataset", exact=True).click()
        await expect(output).to_contain_text("expert_edited 1")
        await page.screenshot(path=str(tmp_path / "4-moderator-status.png"), full_page=True)

        # ---------------------------------------------------------------- charts where people compare
        for version in ("v1", "v2"):
            await registry.register(service.db, version, tmp_path / version, "base")
        await registry.set_evaluation(service.db, "v1", eval_records.record("v1", live=None))
        await registry.set_evaluation(service.db, "v2", eval_records.record("v2", live="v1"))
        await registry.set_status(service.db, "v1", "live")
        await page.get_by_role("button", name="Eval", exact=True).click()
        table = page.get_by_test_id("moderator-report").get_by_test_id("report-table").first
        await expect(table).to_contain_text("v1 (live)")  # a table, named as it is now
        await expect(table).to_contain_text("v2 (candidate)")
        await expect(output).not_to_contain_text("+--")
        await page.get_by_role("button", name="Refresh", exact=True).last.click()
        for name in ("evaluation", "versions", "reviews"):
            chart = page.get_by_test_id(f"chart-{name}")
            await expect(chart).to_be_visible()
            await page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=await chart.element_handle())
        await page.get_by_test_id("chart-evaluation").scroll_into_view_if_needed()
        await page.screenshot(path=str(tmp_path / "6-moderator-charts.png"), full_page=True)

        # ---------------------------------------------------------------- live progress, pushed by the server
        await expect(page.locator("body[data-live='1']")).to_have_count(1)  # the event stream is open
        job = await jobs.request(service.db, "retrain", "console:mo")
        await jobs.start(service.db, job.job_id)
        await jobs.progress(service.db, job.job_id, "training v3: step 9/20, epoch 0.9, loss 1.234", 0.45, "training")
        bar = page.get_by_test_id("job-bar")
        await expect(bar).to_have_js_property("value", 0.45)
        await expect(page.get_by_test_id("job-phase")).to_have_text("training: 45%")
        await expect(page.get_by_test_id("job-title")).to_have_text(f"Retraining job #{job.job_id}: running")
        await page.get_by_test_id("job-progress").scroll_into_view_if_needed()
        await page.screenshot(path=str(tmp_path / "7-live-progress-training.png"))
        await jobs.progress(service.db, job.job_id, "evaluating v3: questions 30/40", 0.75, "evaluating")
        await expect(page.get_by_test_id("job-phase")).to_have_text("evaluating: 75%")
        await expect(bar).to_have_js_property("value", 0.75)
        await page.screenshot(path=str(tmp_path / "8-live-progress-evaluating.png"))
        await jobs.finish(service.db, job.job_id, "succeeded", result={"version": "v3"})
        await expect(page.get_by_test_id("job-title")).to_have_text(f"Retraining job #{job.job_id}: succeeded")

        # The link worked once: opened again it signs nobody in.
        await page.get_by_test_id("sign-out").click()
        await page.goto(f"{url}login?token={link}")
        await expect(page.get_by_test_id("login-link-status")).to_be_visible()
        audit = await service.db.fetchall("SELECT actor, action, detail FROM review_audit WHERE actor LIKE 'console:%'"
                                          " AND action IN ('edit', 'command', 'command_refused', 'sign_in') ORDER BY id")
        assert [tuple(r) for r in audit] == [
            ("console:rita", "sign_in", "password"), ("console:rita", "edit", audit[1][2]),
            ("console:mo", "sign_in", "one-time link"), ("console:mo", "command", "status"),
            ("console:mo", "command", "dataset"), ("console:mo", "command", "eval")]

        # ---------------------------------------------------------------- demo banner
        service.demo = True
        await page.goto(url + "#patient")
        await expect(page.get_by_test_id("demo-banner")).to_be_visible()
        await expect(page.get_by_test_id("demo-banner")).to_contain_text("DEMO")
        await page.screenshot(path=str(tmp_path / "5-demo-banner.png"))
        service.demo = False

        # ---------------------------------------------------------------- a new patient: double-click, RTL, links
        await page.context.clear_cookies()
        await page.goto(url + "#patient")
        await page.reload()  # the same address: load the page afresh (no demo banner, the new patient)
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.post_data or "") if r.url.endswith("/api/patient/messages") else None)
        # Every text the status line shows, however briefly (a false "empty" error is cleared again
        # as soon as the first message is answered).
        await page.evaluate("""() => { window.statusTexts = [];
            new MutationObserver(() => window.statusTexts.push(document.getElementById('patient-status').textContent))
              .observe(document.getElementById('patient-status'), {childList: true, characterData: true, subtree: true}); }""")
        await page.get_by_label("Your message").fill("Why do my hands sweat when I am calm?")
        await page.get_by_role("button", name="Send", exact=True).dblclick()
        await expect(page.get_by_test_id("reply")).to_have_count(1)
        await expect(page.get_by_test_id("patient-message")).to_have_count(1)
        assert len(posts) == 1, posts  # sent once
        shown = await page.evaluate("() => window.statusTexts")
        assert not [t for t in shown if "empty" in t.lower()], shown
        await expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
        arabic = "يداي تتعرقان كثيرا، ماذا أفعل؟"
        await page.get_by_label("Your message").fill(arabic)
        await page.get_by_role("button", name="Send", exact=True).click()
        message = page.get_by_test_id("patient-message").filter(has_text=arabic).locator(".text")
        await expect(message).to_have_attribute("dir", "auto")
        assert await message.evaluate("(e) => getComputedStyle(e).direction") == "rtl"
        await page.get_by_label("Your message").fill("I want to kill myself, I can't take this any more")
        await page.get_by_role("button", name="Send", exact=True).click()
        crisis = page.get_by_test_id("notice").filter(has=page.locator("a[href^='https://']")).last
        await expect(crisis).to_be_visible()
        link = crisis.locator("a[href^='https://']").first
        await expect(link).to_have_attribute("target", "_blank")
        await page.screenshot(path=str(tmp_path / "9-patient-threaded-rtl-links.png"), full_page=True)
    except Exception:
        # Leave evidence next to the screenshots: what the page showed and what went wrong in it.
        await page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        (tmp_path / "failure.txt").write_text(
            f"url: {page.url}\npage errors: {page_errors}\nexternal requests: {external}\n\n"
            + await page.inner_text("body")
        )
        print(f"console click-through failed; see {tmp_path}/failure.png and failure.txt; page errors: {page_errors}")
        raise
    finally:
        await runner.cleanup()
        shots = sorted(str(p) for p in tmp_path.glob("*.png"))
        record_property("screenshots", shots)
        print("console screenshots:\n" + "\n".join(shots))

    assert external == [], f"the page tried to load something external: {external}"
    assert page_errors == [], f"JavaScript errors on the page: {page_errors}"


async def test_consent_buttons_in_the_console(service, browser_page):
    """(issue 12 item 5) The first-contact notice asks, with two buttons; the choice is recorded for
    this browser's id, shown, and can be changed."""
    from playwright.async_api import expect

    from bot.consent import CONFIRM_AGREE, CONFIRM_DECLINE

    expect.set_options(timeout=TIMEOUT_MS)
    page = browser_page
    runner, url = await start_console(service, "127.0.0.1", 0)

    async def consent_row():
        return tuple(await service.db.fetchone("SELECT consent, consent_at IS NOT NULL FROM patients"))

    try:
        await page.goto(url + "#patient")
        await page.get_by_label("Your message").fill("Do sweaty feet need a doctor?")
        await page.get_by_role("button", name="Send", exact=True).click()
        choice = page.get_by_test_id("consent-choice")
        await expect(choice).to_have_attribute("data-consent", "asked")
        await expect(page.get_by_test_id("notice").first).to_contain_text("only this browser")
        await choice.get_by_test_id("consent-agree").click()
        await expect(page.get_by_test_id("patient-status")).to_have_text(CONFIRM_AGREE)
        await expect(page.get_by_test_id("consent-choice")).to_have_attribute("data-consent", "agreed")
        assert await consent_row() == (1, 1)
        await page.get_by_test_id("consent-choice").get_by_test_id("consent-decline").click()
        await expect(page.get_by_test_id("patient-status")).to_have_text(CONFIRM_DECLINE)
        await expect(page.get_by_test_id("consent-choice")).to_have_attribute("data-consent", "declined")
        assert await consent_row() == (0, 1)
    finally:
        await runner.cleanup()
