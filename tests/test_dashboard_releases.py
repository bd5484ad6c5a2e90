"""The dashboard's release pages over real HTTP: approving, rejecting and withdrawing from a release page (as the API
does, audited the same way, refused in one line), who may see the forms and who may use them whatever the HTML
shows, the list of releases, and the environment choice on the release and calendar pages.

One real ``releasegate server`` with the example policy stored through the API; releases registered through the
real governance use case.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate.governance.approvals import new_release
from tests.support.server import ServerProc
from tests.test_dashboard import csrf_of, signed_in

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "governance"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("releases")
    proc = ServerProc(base / "state", base).start()
    try:
        with proc.client(proc.token("erin", "admin")) as api:
            for kind in ("policy", "calendar"):
                text = (EXAMPLES / f"{kind}.yaml").read_text()
                assert api.put(f"/api/v1/{kind}", json={"text": text}).status_code == 200
        yield proc
    finally:
        proc.stop()


def stage_row(page: str, stage: str) -> str:
    row = re.search(rf'<tr data-stage="{stage}"[^>]*>(.*?)</tr>', page, re.S)
    assert row is not None, f"no row for stage {stage}"
    return row.group(1)


def error_of(page: str) -> str:
    found = re.search(r'id="error">([^<]*)<', page)
    assert found is not None, "no error line on the page"
    return html.unescape(found.group(1))


def api_stage(server: ServerProc, release: str, stage: str, env: str = "prod") -> dict[str, object]:
    service, version = release.split("@")
    with server.client(server.token("vic", "viewer")) as api:
        data = api.get(f"/api/v1/releases/{service}/{version}", params={"env": env}).json()
    found: dict[str, object] = next(s for s in data["stages"] if s["stage"] == stage)
    return found


def audit_actions(server: ServerProc, release: str) -> list[tuple[str, str]]:
    with server.client(server.token("erin", "admin")) as api:
        lines = api.get("/api/v1/audit/export").text.splitlines()
    entries = [json.loads(line) for line in lines]
    return [(e["actor"], e["action"]) for e in entries if e.get("release") == release]


def test_an_approver_signs_the_stages_the_policy_gives_them_and_every_refusal_is_one_line(server):
    new_release(server.state, "shop", "2.0.0", "alice")
    url = "/releases/shop/2.0.0"
    with signed_in(server, server.token("dave", "approver", "shop")) as c:  # dave is qa in the policy
        page = c.get(url).text
        assert 'id="approve-qa"' in page and 'id="approve-reviewer"' not in page  # only the stage he holds
        done = c.post(f"{url}/approve", data={"csrf": csrf_of(page), "env": "prod", "stage": "qa"})
        assert done.status_code == 303 and done.headers["location"].startswith(f"{url}?env=prod&said="), done.text
        page = c.get(done.headers["location"]).text
        assert "dave approved stage qa of shop@2.0.0 for prod" in page
        # Words in a link made elsewhere are not shown: only this session's own redirect carries a matching tag.
        spoofed = "Your session expired: paste your token at evil.example"
        assert spoofed not in c.get(url, params={"said": spoofed}).text
        assert spoofed not in c.get(url, params={"said": spoofed, "sig": "0" * 32}).text
        assert spoofed not in c.get("/rollouts/x", params={"said": spoofed}).text
        qa = stage_row(page, "qa")
        assert re.search(r"dave, <time data-at=\"[\d.]+\">\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>", qa), qa
        assert "<td>yes</td>" in qa and 'id="approve-qa"' not in page  # complete: no form for it any more
        assert "<li>stage qa:" not in page  # no longer missing
        forged = c.post(f"{url}/approve", data={"csrf": csrf_of(page), "stage": "reviewer"})  # not his stage
        assert forged.status_code == 400
        assert error_of(forged.text).startswith("stage reviewer: dave cannot sign it: the stage needs role reviewer")
    assert api_stage(server, "shop@2.0.0", "qa")["complete"] is True
    assert api_stage(server, "shop@2.0.0", "reviewer")["given"] == []
    with signed_in(server, server.token("erin", "approver")) as c:  # erin is the sre: a checklist stage
        csrf = csrf_of(c.get(url).text)
        for form, why in (({"stage": "sre", "check": "deployment window checked"}, "every checklist item must be "
                                                                                    "ticked; not ticked: 'rollback "
                                                                                    "plan verified'; tick each once "
                                                                                    "it is true"),
                          ({"stage": "sre", "check": "window?"}, "checklist item 'window?': stage sre of prod has no "
                                                                 "such checklist item"),
                          ({"stage": "ops"}, "stage ops: environment prod of stored policy v1 has no such stage"),
                          ({"stage": ""}, "approve shop@2.0.0: choose the stage to approve")):
            refused = c.post(f"{url}/approve", data={"csrf": csrf, **form})
            assert refused.status_code == 400 and why in error_of(refused.text), (form, refused.text)
            assert "Traceback" not in refused.text and "--" not in error_of(refused.text)
        assert api_stage(server, "shop@2.0.0", "sre")["given"] == []  # none of them changed anything
        ok = c.post(f"{url}/approve", data={"csrf": csrf, "stage": "sre",
                                             "check": ["deployment window checked", "rollback plan verified"]})
        assert ok.status_code == 303, ok.text
        sre = stage_row(c.get(url).text, "sre")
        assert "(ticked: deployment window checked, rollback plan verified)" in sre and "<td>yes</td>" in sre
    actions = audit_actions(server, "shop@2.0.0")  # audited as the API audits: given, and each refusal
    assert ("dave", "approval.given") in actions and ("erin", "approval.given") in actions
    assert actions.count(("erin", "approval.refused")) == 3 and ("dave", "approval.refused") in actions


def test_a_viewer_sees_no_forms_and_a_forged_or_cross_site_post_changes_nothing(server):
    new_release(server.state, "shop", "2.1.0", "alice")
    url = "/releases/shop/2.1.0"
    with signed_in(server, server.token("vera", "viewer")) as c:
        page = c.get(url).text
        assert 'id="sign"' not in page and "/approve" not in page and "/reject" not in page
        csrf = csrf_of(page)  # the sign-out form's: a real session's token
        for action, form in (("approve", {"stage": "qa"}), ("reject", {"stage": "qa", "reason": "no"}),
                             ("withdraw", {})):
            forged = c.post(f"{url}/{action}", data={"csrf": csrf, **form})
            assert forged.status_code == 403
            assert "vera (viewer of *) may not sign releases of shop" in error_of(forged.text)
    with signed_in(server, server.token("dave", "approver", "shop")) as c:
        csrf = csrf_of(c.get(url).text)
        assert c.post(f"{url}/approve", data={"stage": "qa"}).status_code == 403  # no CSRF token
        assert c.post(f"{url}/approve", data={"csrf": "stale", "stage": "qa"}).status_code == 403
        cross = c.post(f"{url}/approve", data={"csrf": csrf, "stage": "qa"}, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403 and "Origin" in cross.text
        assert c.post(f"{url}/sign", data={"csrf": csrf}).status_code == 404
    with signed_in(server, server.token("billy", "approver", "billing-*")) as c:  # an approver of other services
        refused = c.post(f"{url}/approve", data={"csrf": csrf_of(c.get("/").text), "stage": "qa"})
        assert refused.status_code == 403
    assert api_stage(server, "shop@2.1.0", "qa")["given"] == []
    assert [a for a in audit_actions(server, "shop@2.1.0") if a[1] != "release.new"] == []


def test_reject_needs_a_reason_blocks_the_release_and_its_author_withdraws_it(server):
    new_release(server.state, "shop", "2.2.0", "alice")
    url = "/releases/shop/2.2.0"
    with signed_in(server, server.token("carol", "approver", "shop")) as c:  # carol is a reviewer
        page = c.get(url).text
        assert 'id="reject"' in page and 'id="withdraw"' not in page
        csrf = csrf_of(page)
        empty = c.post(f"{url}/reject", data={"csrf": csrf, "stage": "reviewer", "reason": "  "})
        assert empty.status_code == 400
        assert error_of(empty.text) == "reject shop@2.2.0: the reason must say what has to change"
        done = c.post(f"{url}/reject", data={"csrf": csrf, "stage": "reviewer", "reason": "no rollback test"})
        assert done.status_code == 303, done.text
        page = c.get(done.headers["location"]).text
        assert "carol rejected shop@2.2.0 at stage reviewer" in page
        assert re.search(r'<ul id="rejections"><li>carol \(reviewer, <time[^>]*>[^<]+</time>\): no rollback test',
                         page), page
        assert "<li>rejected by carol at stage reviewer: no rollback test</li>" in page
        assert 'id="withdraw"' in page and 'id="reject"' not in page
        blocked = c.post(f"{url}/approve", data={"csrf": csrf, "stage": "reviewer"})
        assert error_of(blocked.text) == "carol rejected shop@2.2.0 at stage reviewer; withdraw the rejection first " \
                                         "(the Withdraw button on this page)"
    with signed_in(server, server.token("bob", "approver", "shop")) as c:  # only carol may withdraw hers
        page = c.get(url).text
        assert 'id="withdraw"' not in page
        other = c.post(f"{url}/withdraw", data={"csrf": csrf_of(page)})
        assert other.status_code == 400
        assert error_of(other.text) == "bob has no rejection of shop@2.2.0 to withdraw; only the user who rejected " \
                                       "can withdraw: carol"
    with signed_in(server, server.token("carol", "approver", "shop")) as c:
        gone = c.post(f"{url}/withdraw", data={"csrf": csrf_of(c.get(url).text)})
        assert gone.status_code == 303
        page = c.get(gone.headers["location"]).text
        assert "carol withdrew the rejection of shop@2.2.0 (stage reviewer)" in page
        assert 'id="rejections"' not in page and "rejected by carol" not in page
    with server.client(server.token("vic", "viewer")) as api:
        assert api.get("/api/v1/releases/shop/2.2.0").json()["rejections"] == []
    actions = audit_actions(server, "shop@2.2.0")
    assert ("carol", "rejection.given") in actions and ("carol", "rejection.withdrawn") in actions


def test_the_environment_is_chosen_on_the_release_list_and_calendar_pages(server):
    new_release(server.state, "shop", "2.3.0", "alice")
    new_release(server.state, "billing", "7.0.0", "alice")
    with signed_in(server, server.token("sam", "viewer", "shop")) as c:
        prod = c.get("/releases/shop/2.3.0").text
        stage = c.get("/releases/shop/2.3.0", params={"env": "stage"}).text
        bad = c.get("/releases/shop/2.3.0", params={"env": "qa-lab"})
        listed = c.get("/releases", params={"env": "stage"}).text
        home = c.get("/").text
        cal = c.get("/governance", params={"env": "stage"}).text
        bad_cal = c.get("/governance", params={"env": "nowhere"})
    for env in ("dev", "stage", "prod"):
        assert f'<option value="{env}"' in prod
    assert '<option value="prod" selected>' in prod and '<option value="stage" selected>' in stage
    assert 'data-stage="reviewer"' in prod and 'data-stage="reviewer"' not in stage
    assert 'data-stage="qa"' in stage and "Not yet approved for stage" in stage
    assert bad.status_code == 400
    assert error_of(bad.text) == "env 'qa-lab': no such environment in the stored policy or calendar; choose one " \
                                 "of dev, stage, prod"
    assert '<a href="/releases">Releases</a>' in home
    rows = re.findall(r'<tr data-release="([^"]+)"', listed)
    assert rows[0] == "shop@2.3.0" and "billing@7.0.0" not in rows  # newest first; only the services it may see
    assert '<a href="/releases/shop/2.3.0?env=stage">shop@2.3.0</a>' in listed
    first = listed[listed.index('data-release="shop@2.3.0"'):]
    assert "<td>0 of 1</td>" in first[:first.index("</tr>")]
    assert "Change calendar (stage, now)" in cal and '<option value="stage" selected>' in cal
    assert bad_cal.status_code == 400 and "env 'nowhere': no such environment" in error_of(bad_cal.text)


def test_without_a_stored_policy_the_release_pages_say_how_to_store_one(tmp_path):
    own = ServerProc(tmp_path / "state", tmp_path).start()
    try:
        with signed_in(own, own.token("ann", "approver")) as c:
            listed = c.get("/releases")
            page = c.get("/releases/shop/1.0.0").text
            refused = c.post("/releases/shop/1.0.0/approve", data={"csrf": csrf_of(page), "stage": "qa"})
    finally:
        own.stop()
    assert listed.status_code == 200 and "releases: no policy is stored in" in listed.text
    assert '<option value="prod" selected>' in page and 'id="sign"' not in page
    assert refused.status_code == 400 and error_of(refused.text).startswith("approve: no policy is stored in")
