"""The dashboard in real Chromium (Debian's chromium and chromedriver, driven by Selenium) during a live canary.

A viewer watches the canary's page while a deployer, in a second browser, promotes it with the button: the
viewer's page shows the weight and the charts change without a reload (a marker set in the page survives), has
no buttons, and a forged POST with the viewer's session is refused with and without the CSRF token; signing out
ends the session; an approver then approves a release's stage by clicking. Selenium never downloads a driver or a
browser (SE_OFFLINE, explicit paths); scripts/test installs the Debian packages when missing, and the test is
skipped without them.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from releasegate.server.dashboard.sessions import COOKIE
from tests.support.rollouts import Load, RolloutEnv
from tests.support.server import ServerProc, served
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1280,1100")
FAST = "{canary: {steps: [{weight: 50, pause: 100ms}], keep_previous: 1h}}"
HELD = "{canary: {steps: [{weight: 20, pause: 1h}, {weight: 50, pause: 1h}], keep_previous: 1h}}"
DOCS_SHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

if not (CHROMIUM.exists() and DRIVER.exists()):
    pytest.skip("needs Debian's chromium and chromium-driver (scripts/test installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only once the browser is known to be there)
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture
def env(tmp_path) -> Iterator[tuple[RolloutEnv, ServerProc]]:
    with served(tmp_path) as pair:
        yield pair


@pytest.fixture
def browsers(env, tmp_path, monkeypatch) -> Iterator[Callable[[str], Any]]:
    """Fresh headless Chromiums (each its own profile), quit before the server stops."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver or a browser
    started: list[Any] = []

    def start(name: str) -> Any:
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={tmp_path / ('profile-' + name)}"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(DRIVER)))
        started.append(driver)
        return driver
    yield start
    for driver in started:
        driver.quit()


def text(driver: Any, element_id: str) -> str:
    try:
        return str(driver.find_element(By.ID, element_id).text)
    except WebDriverException:
        return ""


async def sign_in(driver: Any, url: str, token: str, path: str) -> None:
    driver.get(f"{url}{path}")  # redirected to the sign-in form, which returns here
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    await eventually(lambda: driver.current_url == f"{url}{path}" and text(driver, "who"), 30, f"the page {path}")


def points(driver: Any) -> int:
    found = driver.find_elements(By.CSS_SELECTOR, "figure.chart[id='chart-0:error_rate']")
    return int(found[0].get_attribute("data-points") or 0) if found else 0


async def test_a_viewer_watches_a_canary_live_while_a_deployer_promotes_it_with_the_button(env, browsers, tmp_path):
    made, server = env
    dora = server.token("dora", "deployer", "shop")
    with server.client(dora) as api:
        made.spec(FAST)
        first = api.post("/api/v1/rollouts", json={"spec_path": "shop.yaml", "version": "1.0.0"}).json()["id"]
        await eventually(lambda: not api.get(f"/api/v1/rollouts/{first}").json()["active"], 60,
                         "1.0.0 to be promoted", every=0.1)
    async with Load(made.url):  # traffic, so the analysis has data and the watch after the promotion passes
        with server.client(dora) as api:
            made.spec(HELD)
            rid = api.post("/api/v1/rollouts", json={"spec_path": "shop.yaml", "version": "2.0.0"}).json()["id"]
            await eventually(lambda: api.get(f"/api/v1/rollouts/{rid}").json()["weight"] == 20, 60,
                             "the canary at 20 %", every=0.1)
        await _watch_and_promote(server, browsers, tmp_path, rid, dora)


async def _watch_and_promote(server: ServerProc, browsers: Callable[[str], Any], tmp_path: Path, rid: str,
                             dora: str) -> None:
    vera = server.token("vera", "viewer")
    page = f"/rollouts/{rid}"

    viewer = browsers("viewer")
    await sign_in(viewer, server.url, vera, page)
    assert text(viewer, "weight") == "20%" and text(viewer, "status") == "running"
    assert text(viewer, "reported") == "1.0.0 80%, 2.0.0 20%"  # the router's own view, beside the weight set
    rows = viewer.execute_script(  # in one go: a live update may replace the rows between two element reads
        "return [...document.querySelectorAll('#instances tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    assert {(r[0], r[2], r[3]) for r in rows} == {("1.0.0", "80%", "ok"), ("2.0.0", "20%", "ok")}, rows
    assert len(rows) == 4  # two instances of each version, each asked for its health by the server
    assert "vera (viewer of *)" in text(viewer, "who")
    assert viewer.find_elements(By.ID, "promote") == [] and viewer.find_elements(By.ID, "actions") == []
    viewer.execute_script("window.notReloaded = true;")
    seen = points(viewer)
    await eventually(lambda: points(viewer) > seen, 30, "the error-rate chart to grow live", every=0.1)
    await eventually(lambda: viewer.find_elements(By.ID, "chart-rps") and "1.0.0" in text(viewer, "chart-rps")
                     and "2.0.0" in text(viewer, "chart-rps"), 30, "requests per second of both versions",
                     every=0.1)
    await eventually(lambda: viewer.find_elements(By.ID, "chart-p95"), 30, "p95 latency per version", every=0.1)
    cookie = viewer.get_cookie(COOKIE)
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert viewer.execute_script("return document.cookie;") == ""  # HttpOnly: no script reads the session
    _forged_posts_are_refused(server, cookie["value"], viewer.page_source, rid)

    deployer = browsers("deployer")
    await sign_in(deployer, server.url, dora, "/")
    def enter_from_overview() -> bool:
        """The row's checks, then the keyboard way in; again when a live update replaced the row meanwhile (its
        first one arrives just after the page loads, and replaces every row)."""
        try:
            row = deployer.find_element(By.CSS_SELECTOR, "#services tr[data-service='shop']")
            assert "2.0.0: canary step 1, 20%" in row.text and "1.0.0 promoted" in row.text
            assert "1.0.0 (2), 2.0.0 (2)" in row.text  # the instances of each version (the spec runs two)
            row.find_element(By.PARTIAL_LINK_TEXT, "2.0.0: canary").send_keys(Keys.ENTER)
        except StaleElementReferenceException:
            return False
        return True
    await eventually(enter_from_overview, 10, "the rollout's link on the overview", every=0.1)
    await eventually(lambda: deployer.current_url == f"{server.url}{page}", 30, "the rollout page from the overview")
    await eventually(lambda: points(deployer) > 3, 30, "the deployer's charts with data", every=0.1)
    shot = tmp_path / "rollout-page.png"
    deployer.save_screenshot(str(shot))
    if not DOCS_SHOT.exists():
        shutil.copyfile(shot, DOCS_SHOT)
    deployer.find_element(By.ID, "promote").click()
    deployer.switch_to.alert.accept()  # the confirmation
    await eventually(lambda: "said=" in deployer.current_url, 60, "the promote answer")
    assert "promote" in text(deployer, "said")
    await eventually(lambda: text(deployer, "status") == "promoted", 60, "the deployer's page to show the promotion")

    await eventually(lambda: text(viewer, "weight") == "100%", 60, "the viewer's weight to reach 100 % live", every=0.1)
    await eventually(lambda: text(viewer, "status") == "promoted", 60, "the viewer's status to change live", every=0.1)
    await eventually(lambda: "2.0.0 100%" in text(viewer, "reported"), 30, "the router's weights live", every=0.1)
    assert viewer.execute_script("return window.notReloaded === true;")  # all of it without a reload
    assert "step 1: 20%" in text(viewer, "timeline")
    decisions = text(viewer, "decisions")
    assert "promote by dora" in decisions and "error_rate=" in decisions

    deployer.set_window_size(390, 844)  # a phone: the page reflows, only tables scroll sideways in their box
    deployer.get(f"{server.url}{page}")
    await eventually(lambda: points(deployer) > 3, 30, "the charts on a phone-sized page", every=0.1)
    fits = "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;"
    assert deployer.execute_script(fits), "the rollout page is wider than a phone's screen"

    viewer.find_element(By.ID, "signout").click()
    await eventually(lambda: viewer.current_url.endswith("/signin"), 30, "the sign-in page after signing out")
    assert _status_with(server, cookie["value"], page) == 303  # the session is gone server-side, not only here
    await _approve_by_clicking(server, viewer)


async def _approve_by_clicking(server: ServerProc, browser: Any) -> None:
    """An approver ticks a stage's checklist and approves it on the release page (confirmed), in the same browser."""
    from releasegate.governance.approvals import new_release

    examples = Path(__file__).resolve().parent.parent / "examples" / "governance"
    with server.client(server.token("root", "admin")) as api:
        assert api.put("/api/v1/policy", json={"text": (examples / "policy.yaml").read_text()}).status_code == 200
    new_release(server.state, "shop", "2.0.0", "alice")
    await sign_in(browser, server.url, server.token("erin", "approver", "shop"), "/releases/shop/2.0.0")
    for box in browser.find_elements(By.CSS_SELECTOR, "form[data-stage='sre'] input[type=checkbox]"):
        box.click()
    browser.find_element(By.ID, "approve-sre").click()
    browser.switch_to.alert.accept()
    await eventually(lambda: "said=" in browser.current_url, 30, "the approval's answer")
    assert text(browser, "said") == "erin approved stage sre of shop@2.0.0 for prod"
    sre = browser.find_element(By.CSS_SELECTOR, "tr[data-stage='sre']").text
    assert "erin" in sre and "UTC" not in sre and "yes" in sre  # the sign-off's time in the browser's local time


def _status_with(server: ServerProc, session: str, path: str) -> int:
    with httpx.Client(base_url=server.url, cookies={COOKIE: session}) as c:
        return c.get(path).status_code


def _forged_posts_are_refused(server: ServerProc, session: str, page: str, rid: str) -> None:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "the viewer's page has no CSRF field (the sign-out form)"
    with httpx.Client(base_url=server.url, cookies={COOKIE: session}, headers={"Origin": server.url}) as c:
        no_token = c.post(f"/rollouts/{rid}/promote", data={})
        assert no_token.status_code == 403 and "CSRF token is missing" in no_token.text
        with_token = c.post(f"/rollouts/{rid}/promote", data={"csrf": found.group(1)})
        assert with_token.status_code == 403, with_token.text
        assert "vera is viewer of *; this needs role deployer for service shop" in with_token.text
        assert c.get(f"/rollouts/{rid}").status_code == 200
    with httpx.Client(base_url=server.url, headers={"Origin": server.url}) as other:  # a deployer of other services
        assert other.post("/signin", data={"token": server.token("olga", "deployer", "billing-*")}).status_code == 303
        hidden = other.get(f"/rollouts/{rid}")
        assert hidden.status_code == 404 and "no such rollout you may see" in hidden.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', other.get("/").text)
        assert csrf is not None
        refused = other.post(f"/rollouts/{rid}/abort", data={"csrf": csrf.group(1)})
        assert refused.status_code == 403 and "this needs role deployer for service shop" in refused.text
    with server.client(server.token("ops", "viewer")) as api:
        assert api.get(f"/api/v1/rollouts/{rid}").json()["status"] == "running"
