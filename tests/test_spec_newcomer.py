"""What a newcomer ran into with their own specs (issue 8): bounds no value can pass, placeholders that were
accepted and never filled in, errors at the wrong line, staircases that silently do nothing, and figures shown
without their units. Spec errors are asserted as the user sees them, ``FILE:LINE:COL: message``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from releasegate.engine.clock import FakeClock
from releasegate.engine.simulate import simulate
from releasegate.progress import ProgressPrinter, format_values, render_status
from releasegate.providers.checks import check_health_once, wait_healthy
from releasegate.providers.platforms.local import LocalPlatform
from releasegate.spec import SpecError, load_spec_text
from releasegate.spec.models import Health, Spec
from releasegate.spec.models import LocalPlatform as LocalSpec
from tests.support.simulated import make_spec

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "support" / "apps.py"
PY = sys.executable
HEAD = 'service: shop\nplatform: {command: "python3 e.py {port}"}\n'


def errors(text: str, filename: str = "shop.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, filename)
    return str(info.value).splitlines()


def only_error(text: str, filename: str = "shop.yaml") -> str:
    found = errors(text, filename)
    assert len(found) == 1, found
    return found[0]


def validate(tmp_path: Path, text: str, name: str = "shop.yaml") -> subprocess.CompletedProcess[str]:
    (tmp_path / name).write_text(text)
    return subprocess.run([PY, "-m", "releasegate", "validate", name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


# --- 1. a rule no value can pass ----------------------------------------------------------------------------


def test_validate_refuses_a_min_that_is_not_below_max(tmp_path: Path) -> None:
    out = validate(tmp_path, HEAD + "analysis:\n  rules: [{metric: error_rate, max: 5%, min: 10%, for: 4s}]\n")
    assert out.returncode == 2, out.stdout
    assert out.stderr.strip() == (
        "releasegate: shop.yaml:4:46: min 10% is not below max 5%: no value could pass; the rule breaks when "
        "error_rate goes above max or below min, so write min lower than max, or keep only one of them")


@pytest.mark.parametrize(("rule", "expected"), [
    ("{metric: latency_p95, max: 2s, min: 3s}", "shop.yaml:5:43: min 3s is not below max 2s: no value could pass"),
    ("{metric: cpu, max: 90, min: 90%}", "shop.yaml:5:35: min 90% is not below max 90%: no value could pass"),
    ("{metric: memory_mb, max: 300MB, min: 1GB}", "shop.yaml:5:44: min 1024MB is not below max 300MB"),
])
def test_min_at_or_above_max_is_refused_at_min_naming_both_bounds(rule: str, expected: str) -> None:
    assert only_error(HEAD + f"analysis:\n  rules:\n    - {rule}\n").startswith(expected)


def test_a_band_between_min_and_max_is_accepted() -> None:
    spec = load_spec_text(HEAD + "analysis:\n  rules: [{metric: rps, min: 1, max: 500}]\n", "shop.yaml")
    assert spec.analysis.rules[0].describe() == "rps > 500 or < 1 for 5m"


# --- 2. placeholders, the same everywhere ---------------------------------------------------------------------


def test_validate_refuses_an_unknown_placeholder_in_platform_env(tmp_path: Path) -> None:
    out = validate(tmp_path, 'service: shop\nplatform: {command: "python3 e.py {port}", env: {V: "{version}", '
                             'X: "{bogus}"}}\nhealth: {path: "/h/{version}"}\n')
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "releasegate: shop.yaml:2:69: unknown placeholder {bogus}; known: {port}, {version}, {service}, {host} "
        "(write {{bogus}} for a literal one)")


@pytest.mark.parametrize(("body", "expected"), [
    ('service: shop\nplatform: {command: "python3 e.py {prot}"}\n',
     "shop.yaml:2:21: unknown placeholder {prot} (did you mean {port}?)"),
    ('service: shop\nplatform: {command: "app --port {port} --base {url}"}\n',
     "shop.yaml:2:21: placeholder {url} is not substituted in platform.command; it takes {port}, {version}, "
     "{service}, {host}"),
    (HEAD.replace("}\n", ', cwd: "releases/{port}"}\n'),
     "shop.yaml:2:49: placeholder {port} is not substituted in platform.cwd (every instance of a version shares "
     "it); it takes {version}, {service}"),
    (HEAD.replace("}\n", ', cwd: "releases/{verison}"}\n'),
     "shop.yaml:2:49: unknown placeholder {verison} (did you mean {version}?)"),
    (HEAD + "health: {path: '/h/{verison}'}\n", "shop.yaml:3:16: unknown placeholder {verison} (did you mean "
                                               "{version}?)"),
    (HEAD + "router: {kind: nginx, config_file: '/etc/nginx/conf.d/rg-{servce}.conf'}\n",
     "shop.yaml:3:36: unknown placeholder {servce} (did you mean {service}?); known: {service}"),
    (HEAD + "router: {kind: haproxy, backend: '{version}'}\n",
     "shop.yaml:3:34: placeholder {version} is not substituted in router.backend; it takes {service}"),
])
def test_every_field_refuses_placeholders_it_does_not_substitute_where_they_are_written(body: str,
                                                                                          expected: str) -> None:
    assert only_error(body).startswith(expected)


def test_literals_json_braces_and_shell_variables_stay_as_written() -> None:
    spec = load_spec_text('service: shop\nplatform:\n  command: >-\n    app --port {port} --home ${HOME} --json '
                          '\'{"a": 1}\' --literal {{port}}\n  env: {J: \'{"k": "v"}\', S: "${PATH}"}\n',
                          "shop.yaml")
    p = spec.platform
    assert isinstance(p, LocalSpec)
    assert p.command_for("shop", "2.0.0", 4000, "127.0.0.1") == (
        'app --port 4000 --home ${HOME} --json \'{"a": 1}\' --literal {port}')
    assert p.env_for("shop", "2.0.0", 4000, "127.0.0.1") == {"J": '{"k": "v"}', "S": "${PATH}"}


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, object]], LocalPlatform]]:
    made: list[LocalPlatform] = []

    def make(spec: dict[str, object]) -> LocalPlatform:
        made.append(LocalPlatform(LocalSpec.model_validate(spec), tmp_path / "state", tmp_path))
        return made[-1]

    yield make
    for p in made:
        for service_dir in (p.root.iterdir() if p.root.is_dir() else []):
            for inst in await p.instances(service_dir.name):
                await p.stop(inst, grace=0.5)
            for dead in await p.dead_instances(service_dir.name):
                await p.stop(dead.instance, grace=0.5)


async def test_the_process_gets_its_own_port_version_and_service_in_env_and_command(
        platform: Callable[[dict[str, object]], LocalPlatform], tmp_path: Path) -> None:
    (tmp_path / "shop-2.0.0").mkdir()
    p = platform({"command": f"{PY} {APPS} serve --port {{port}} # {{version}} ${{HOME}} {{{{port}}}}",
                  "env": {"V": "{version}", "P": "{port}", "S": "{service}", "H": "{host}", "L": "{{version}}",
                          "J": '{"a": 1}', "D": "${HOME}"},
                  "cwd": "{service}-{version}", "instances": 2})
    instances = await p.start("shop", "2.0.0", 2)
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        for inst in instances:
            env = (await client.get(f"http://{inst.address}/env?names=V,P,S,H,L,J,D")).json()
            assert {k: env[k] for k in "VPSHLJD"} == {
                "V": "2.0.0", "P": str(inst.port), "S": "shop", "H": "127.0.0.1", "L": "{version}",
                "J": '{"a": 1}', "D": "${HOME}"}  # {port} is each instance's own
            assert env["cwd"] == str((tmp_path / "shop-2.0.0").resolve())
            assert inst.log is not None
            header = Path(inst.log).read_text().splitlines()[0]
            assert header.endswith(f"serve --port {inst.port} # 2.0.0 ${{HOME}} {{port}}")


async def test_the_health_path_is_filled_in_per_instance(
        platform: Callable[[dict[str, object]], LocalPlatform]) -> None:
    p = platform({"command": f"{PY} {APPS} serve --port {{port}}"})
    [inst] = await p.start("shop", "2.0.0", 1)
    health = Health.model_validate({"path": "/version/{version}", "attempts": 3, "interval": "100ms"})
    result = await check_health_once(inst, health)
    assert result.ok, result.reason
    assert result.reason == f"{inst.address} /version/2.0.0 answered 200"
    waited = await wait_healthy([inst], health, FakeClock())
    assert waited.ok and "healthy on /version/2.0.0" in waited.reason
    wrong = Health.model_validate({"path": "/version/{service}", "attempts": 1})  # 'shop' is not its version
    result = await check_health_once(inst, wrong)
    assert not result.ok and result.reason.startswith(f"{inst.address} /version/shop answered 409")


# --- 3. and 4. errors under a router, at the right place --------------------------------------------------------


ROUTER = 'service: shop\nplatform:\n  command: "python3 e.py {port}"\nrouter:\n'


@pytest.mark.parametrize(("router", "expected"), [
    ("  kind: nginx\n  nginx: /usr/sbin/nginx\n  access_log: off\n",
     "nl3.yaml:7:15: expected a string, got off (YAML reads off as false; put it in quotes if you meant the text)"),
    ("  kind: nginx\n  nginx: /usr/sbin/nginx\n  drain_timeout: 5\n",
     "nl3.yaml:7:18: write durations with a unit, e.g. '5s' or '5m' (got bare number 5)"),
    ("  kind: haproxy\n  haproxy: /usr/sbin/haproxy\n  slots: 0\n",
     "nl3.yaml:7:10: slots must be at least 1, got 0"),
    ("  kind: haproxy\n  haproxy: /usr/sbin/haproxy\n  slotz: 4\n",
     "nl3.yaml:7:3: unknown key 'slotz' (did you mean 'slots'?)"),
    ("  kind: nginx\n  nginx: /usr/sbin/nginx\n  listen: 8080\n",
     "nl3.yaml:7:11: expected a string, got 8080 (write it in quotes: '8080')"),
])
def test_a_key_named_like_a_router_kind_does_not_move_the_error(router: str, expected: str) -> None:
    assert only_error(ROUTER + router, "nl3.yaml") == expected


def test_an_unknown_key_under_a_router_names_the_section_as_written() -> None:
    found = only_error(ROUTER + "  kind: nginx\n  nginx: /usr/sbin/nginx\n  builtin: x\n", "nl3.yaml")
    assert found.startswith("nl3.yaml:7:3: unknown key 'builtin' in router; expected one of: kind, listen, ")


def test_an_unknown_router_kind_is_reported_at_its_value_with_the_kinds_allowed() -> None:
    assert only_error(HEAD + "router: {kind: envoy}\n") == (
        "shop.yaml:3:16: unknown router kind 'envoy'; expected one of: builtin, nginx, haproxy")
    assert only_error(ROUTER + "  kind: ngnix\n  listen: 127.0.0.1:80\n") == (
        "shop.yaml:5:9: unknown router kind 'ngnix' (did you mean 'nginx'?); expected one of: builtin, nginx, "
        "haproxy")
    assert only_error(ROUTER + "  kind: [nginx]\n") == (
        "shop.yaml:5:3: router kind must be one of: builtin, nginx, haproxy; got a list")


# --- 5. staircases that would never run ---------------------------------------------------------------------


def test_a_staircase_with_mode_immediate_is_refused(tmp_path: Path) -> None:
    out = validate(tmp_path, HEAD + "rollback: {mode: immediate, staircase: [50, 0]}\n")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "releasegate: shop.yaml:3:29: a staircase has no effect with mode: immediate (traffic goes to 0 % at once); "
        "remove one: mode: immediate, or the staircase")
    assert only_error(HEAD + "tier: critical\nrollback:\n  staircase: [50, 0]\n").startswith(
        "shop.yaml:5:3: tier critical rolls back at once (rollback.mode defaults to immediate), so this staircase "
        "has no effect; add mode: staircase to use it, or remove it")


@pytest.mark.parametrize(("setting", "where", "where_critical"), [
    ("step_wait: 1m", "3:40", "5:14"), ("rising: 20%", "3:37", "5:11"), ("immediate_error_rate: null", "3:51", "5:25")])
def test_staircase_settings_next_to_mode_immediate_are_refused(setting: str, where: str, where_critical: str) -> None:
    key = setting.split(":")[0]
    assert only_error(HEAD + f"rollback: {{mode: immediate, {setting}}}\n") == (
        f"shop.yaml:{where}: {key} has no effect with mode: immediate (traffic goes to 0 % at once); remove one: "
        f"mode: immediate, or {key}")
    assert only_error(HEAD + f"tier: critical\nrollback:\n  {setting}\n") == (
        f"shop.yaml:{where_critical}: tier critical rolls back at once (rollback.mode defaults to immediate), so {key} "
        "has no effect; add mode: staircase to use it, or remove it")


def test_immediate_alone_and_a_stored_spec_still_validate() -> None:
    for extra in ("rollback: {mode: immediate}\n", "rollback: {mode: immediate, rising: 50%}\n",
                  "tier: critical\n", "tier: critical\nrollback: {mode: staircase, staircase: [50, 0]}\n"):
        spec = load_spec_text(HEAD + extra, "shop.yaml")
        assert Spec.model_validate_json(spec.model_dump_json(by_alias=True)) == spec  # as a rollout stores it


@pytest.mark.parametrize(("staircase", "where"), [("[100, 50, 0]", "3:24"),
                                                   ("[{weight: 100, wait: 1m}, 0]", "3:33")])
def test_a_stair_at_100_is_refused_with_the_fix(staircase: str, where: str) -> None:
    assert only_error(HEAD + f"rollback: {{staircase: {staircase}}}\n") == (
        f"shop.yaml:{where}: a stair at 100% has no effect: the rollback starts from the weight the new version has "
        "(100% once promoted) and steps down from there; remove it, e.g. [50, 10, 0]")


# --- 6. figures with their units ----------------------------------------------------------------------------


def test_values_are_shown_in_their_rules_units() -> None:
    values = {"0:error_rate": 0.0, "1:latency_p95": 1.45467, "2:memory_percent": 0.2019, "3:memory_mb": 337.5,
              "4:cpu": 187.25, "5:latency_p99": 0.2456, "6:rps": None, "7:error_rate": 0.30215}
    assert format_values(values) == ("error_rate=0% latency_p95=1.45s memory_percent=0.202% memory_mb=338MB "
                                     "cpu=187% latency_p99=246ms rps=no data error_rate=30.2%")


def test_progress_lines_and_status_show_units_and_json_keeps_raw_numbers() -> None:
    spec = make_spec(analysis={"interval": "10s", "rules": [
        {"metric": "memory_mb", "max": "300MB", "for": "1m"}, {"metric": "latency_p95", "max": "1s", "for": "1m"}]})
    metric = lambda t, m, w: 337.5 if m == "memory_mb" else 1.45467  # noqa: E731
    trace = simulate(spec, "2.0.0", "1.0.0", metric=metric)
    rollback = next(d for _, d in trace.decisions if d.kind == "rollback")
    assert "memory_mb > 300MB for 1m held (now 338MB)" in rollback.message
    assert rollback.data["values"] == {"0:memory_mb": 337.5, "1:latency_p95": 1.45467}  # raw, as --json shows
    console = Console(record=True, width=200, color_system=None)
    ProgressPrinter(console)(trace.state, [rollback])
    line = console.export_text()
    assert "memory_mb=338MB latency_p95=1.45s" in line and "(now 338MB)" in line
    console = Console(record=True, width=300, color_system=None)
    render_status(console, [{"service": "shop", "state": "running", "current": "1.0.0", "instances": {"1.0.0": 2},
                             "previous": None, "rollout": {
                                 "version": "2.0.0", "strategy": "canary", "phase": "step", "paused": False,
                                 "controller_alive": True, "weight": 5, "waiting": None,
                                 "latest": {"0:memory_percent": 0.2019, "1:latency_p95": 1.45467}}}])
    assert "memory_percent=0.202% latency_p95=1.45s" in console.export_text()


def test_a_strategy_named_without_a_mapping_says_how_to_write_it() -> None:
    with pytest.raises(SpecError) as err:
        load_spec_text('service: shop\nplatform: {command: "app --port {port}"}\nstrategy: bluegreen\n', "s.yaml")
    assert str(err.value) == ("s.yaml:3:11: expected a mapping, got 'bluegreen' (write strategy: {bluegreen: {}} "
                              "for bluegreen with its defaults)")
