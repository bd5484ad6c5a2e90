"""A rule that the configured router, platform and sources cannot feed is refused before anything runs: by
``validate``, ``plan`` and ``deploy`` alike, as ``FILE:LINE:COL: message`` naming the rule and what would feed it.
Without the check such a rule has no data at every evaluation and the rollout waits at its first step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from releasegate.spec import SpecError, load_spec, load_spec_text
from releasegate.spec.capabilities import table_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"

NGINX_OFF_WITH_P95 = """\
service: shop
platform:
  command: python3 app.py --port {port}
router:
  kind: nginx
  access_log: "off"
analysis:
  rules:
    - {metric: error_rate, max: 5%}
    - metric: latency_p95
      max: 2s
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("command", [["validate"], ["plan", "--version", "2.0.0"], ["deploy", "--version", "2.0.0"]])
def test_validate_plan_and_deploy_refuse_a_latency_rule_nothing_measures(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "shop.yaml").write_text(NGINX_OFF_WITH_P95)
    out = run(command[0], "shop.yaml", *command[1:], cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert ("shop.yaml:10:7: analysis.rules[1]: latency_p95 cannot be measured by router kind nginx with "
            "access_log: off; remove access_log: off, use the builtin, nginx or haproxy router, or a metric: "
            "prometheus rule") in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / ".releasegate").exists()  # nothing half-applied


def test_the_default_rules_say_which_default_cannot_be_measured() -> None:
    text = "service: shop\nplatform: {command: 'app {port}'}\nrouter: {kind: nginx, access_log: 'off'}\n"
    with pytest.raises(SpecError) as err:
        load_spec_text(text, "shop.yaml")
    assert str(err.value).splitlines()[0] == (
        "shop.yaml:3:10: the default analysis rule error_rate > 5% for 5m (analysis.rules[0]) cannot be measured "
        "by router kind nginx with access_log: off; write analysis.rules without it, remove access_log: off, use "
        "the builtin, nginx or haproxy router, or a metric: prometheus rule")


def test_validate_accepts_the_default_rules_through_haproxy(tmp_path: Path) -> None:
    """HAProxy measures latency too (the ring log of its rendered configuration): the seeds' default rules,
    error_rate > 5 % and latency_p95 > 2.5 s for 5 m, work through it as through the built-in router."""
    (tmp_path / "shop.yaml").write_text("service: shop\nplatform: {command: 'app {port}'}\n"
                                        "router: {kind: haproxy}\n")
    out = run("validate", "shop.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    spec = load_spec(tmp_path / "shop.yaml")
    assert [r.describe() for r in spec.analysis.rules] == ["error_rate > 5% for 5m", "latency_p95 > 2.5s for 5m"]


def test_nginx_measures_what_the_builtin_router_does_unless_its_log_is_off() -> None:
    base = "service: shop\nplatform: {command: 'app {port}'}\n"
    spec = load_spec_text(base + "router: {kind: nginx}\n", "shop.yaml")  # the seeds' default rules
    assert [r.metric for r in spec.analysis.rules] == ["error_rate", "latency_p95"]
    off = base + "router: {kind: nginx, access_log: 'off'}\n"
    with pytest.raises(SpecError) as err:
        load_spec_text(off + "analysis: {rules: [{metric: cpu, max: 90}, {metric: rps, min: 1}]}\n", "shop.yaml")
    assert str(err.value) == (
        "shop.yaml:4:45: analysis.rules[1]: rps cannot be measured by router kind nginx with access_log: off; "
        "remove access_log: off, use the builtin, nginx or haproxy router, or a metric: prometheus rule")
    load_spec_text(off + "metrics: {prometheus: {url: 'http://127.0.0.1:9090'}}\nanalysis: {rules: "
                   "[{metric: prometheus, query: 'up', max: 1}, {metric: cpu, max: 90}]}\n", "shop.yaml")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(NGINX_OFF_WITH_P95 + "    - {metric: latency_p99, max: 3s}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert [(i.line, i.path) for i in err.value.issues] == [(9, "analysis.rules[0].metric"),
                                                            (10, "analysis.rules[1].metric"),
                                                            (12, "analysis.rules[2].metric")]


def test_the_docs_show_the_table_the_check_uses() -> None:
    assert table_markdown() in DOCS.read_text(encoding="utf-8"), \
        "docs/integrations.md: paste releasegate.spec.capabilities.table_markdown()"
