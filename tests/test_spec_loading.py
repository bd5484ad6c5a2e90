"""Loading specs: the canonical example, the seed defaults, and every error as the user sees it.

Specs are built line by line (``lines(...)``) so the expected line numbers can be read off the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from releasegate.errors import EXIT_INVALID, UserError
from releasegate.spec import SpecError, load_spec, load_spec_text
from releasegate.spec.models import LocalPlatform
from releasegate.spec.reference import EXAMPLE_SPEC

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "specs"
PLATFORM = 'platform: {command: "app --port {port}"}'


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


def errors(text: str, filename: str = "spec.yaml") -> list[str]:
    """The lines the user sees, after checking that every issue is also available as data."""
    with pytest.raises(SpecError) as info:
        load_spec_text(text, filename)
    exc = info.value
    assert str(exc) == "\n".join(str(issue) for issue in exc.issues)
    return str(exc).splitlines()


def only_error(text: str) -> str:
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


# --- the canonical example and the defaults -----------------------------------------------------------------


def test_canonical_example_is_accepted_as_written() -> None:
    spec = load_spec(EXAMPLES / "shop-canary.yaml")
    assert spec.service == "shop"
    assert spec.tier == "important"
    p = spec.platform
    assert isinstance(p, LocalPlatform)
    assert (p.kind, p.instances, p.cwd, p.env) == ("local", 2, ".", {"LOG_LEVEL": "info"})
    assert p.command == "python3 -m http.server {port} --bind 127.0.0.1 --directory site-{version}"
    assert (spec.router.kind, spec.router.listen) == ("builtin", "127.0.0.1:8080")
    h = spec.health
    assert (h.path, h.interval, h.timeout, h.attempts, h.expect) == ("/", 5.0, 2.0, 60, {})
    [smoke] = spec.smoke_tests
    assert (smoke.method, smoke.path, smoke.expect_status, smoke.max_latency) == ("GET", "/", [200], 0.5)
    assert spec.strategy.kind == "canary"
    assert [(s.weight, s.pause) for s in spec.strategy.steps] == [(5, 600.0), (25, 600.0), (50, 1800.0)]
    assert (spec.analysis.interval, spec.analysis.post_promotion) == (10.0, 1800.0)
    assert [(r.metric, r.max, r.for_) for r in spec.analysis.rules] == [("error_rate", 0.05, 300.0),
                                                                         ("latency_p95", 2.5, 300.0)]
    assert spec.rollback.mode == "staircase" and spec.rollback_mode == "staircase"
    assert [(s.weight, s.wait) for s in spec.rollback.staircase] == [(50, 300.0), (10, 600.0), (0, None)]


def test_example_file_and_text_agree() -> None:
    assert load_spec_text(EXAMPLE_SPEC, "x.yaml") == load_spec(str(EXAMPLES / "shop-canary.yaml"))


def test_omitted_keys_get_the_seed_defaults() -> None:
    spec = load_spec_text(lines("service: shop", PLATFORM), "minimal.yaml")
    assert spec.tier == "important"
    assert spec.strategy.kind == "canary"
    assert [(s.weight, s.pause) for s in spec.strategy.steps] == [(5, 600.0), (25, 600.0), (50, 1800.0)]
    assert spec.strategy.keep_previous == 86400.0
    assert (spec.health.attempts, spec.health.interval) == (60, 5.0)
    [smoke] = spec.smoke_tests
    assert smoke.max_latency == 0.5
    assert [r.describe() for r in spec.analysis.rules] == ["error_rate > 5% for 5m",
                                                           "latency_p95 > 2.5s for 5m"]
    assert [(w, spec.rollback.wait_at(w)) for w in spec.rollback.weights] == [(50, 300.0), (10, 600.0), (0, 300.0)]
    assert spec.rollback.step_wait == 300.0
    assert spec.analysis.post_promotion == 1800.0
    assert spec.rollback_mode == "staircase"


def test_critical_tier_rolls_back_immediately_unless_told_otherwise() -> None:
    critical = load_spec_text(lines("service: shop", "tier: critical", PLATFORM), "c.yaml")
    assert critical.rollback_mode == "immediate"
    told = load_spec_text(lines("service: shop", "tier: critical", PLATFORM, "rollback: {mode: staircase}"),
                          "c.yaml")
    assert told.rollback_mode == "staircase"


def test_the_other_example_specs_load() -> None:
    bluegreen = load_spec(EXAMPLES / "bluegreen.yaml")
    assert bluegreen.strategy.kind == "bluegreen"
    assert [(s.weight, s.pause) for s in bluegreen.strategy.steps] == [(10, 300.0), (50, 600.0)]
    assert bluegreen.rollback_mode == "immediate"
    assert bluegreen.analysis.rules[0].max == pytest.approx(0.01)  # written 1%
    assert bluegreen.analysis.rules[1].max == pytest.approx(0.8)  # written 800ms
    rolling = load_spec(EXAMPLES / "rolling.yaml")
    assert rolling.strategy.rolling is not None and rolling.strategy.rolling.pause == 60.0
    assert rolling.strategy.steps == []


def test_yaml_anchors_and_merge_keys_work() -> None:
    spec = load_spec_text(lines(
        "service: shop",
        "platform: &p {command: 'app --port {port}', instances: 2}",
        "strategy:",
        "  canary:",
        "    steps: [{weight: 10, pause: &wait 5m}, {weight: 20, pause: *wait}]",
    ), "a.yaml")
    assert [s.pause for s in spec.strategy.steps] == [300.0, 300.0]


def test_time_like_values_stay_strings() -> None:
    """YAML 1.1 reads 10:00 as 600; where a duration is expected that must be an error, not ten minutes."""
    assert only_error(lines("service: shop", PLATFORM, "health: {interval: 10:00}")) == (
        "spec.yaml:3:20: cannot read duration '10:00': use a number with a unit, e.g. 250ms, 5s, 10m, 24h "
        "or 1h30m")
    spec = load_spec_text(lines("service: shop", PLATFORM, "router: {listen: 127.0.0.1:9000}"), "x")
    assert spec.router.listen == "127.0.0.1:9000"


# --- the file itself ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file"
    assert isinstance(info.value, UserError) and info.value.exit_code == EXIT_INVALID


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r": is a directory, not a spec file$"):
        load_spec(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"service: shop\nplatform: {command: 'caf\xe9 {port}'}\n")
    with pytest.raises(SpecError, match=r"latin1.yaml:2:25: not UTF-8 text \(byte 0xe9\); save the spec as "
                                        r"UTF-8$"):
        load_spec(tmp_path / "latin1.yaml")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    assert only_error(text) == "spec.yaml:1:1: the spec is empty; it needs at least 'service' and 'platform'"


@pytest.mark.parametrize(("text", "what"), [("- service: shop\n", "a list"), ("shop\n", "'shop'")])
def test_top_level_must_be_a_mapping(text: str, what: str) -> None:
    assert only_error(text) == (f"spec.yaml:1:1: the spec must be a mapping of keys, not {what}; it needs at "
                                "least 'service' and 'platform'")


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "bom.yaml").write_text("\ufeff" + lines("service: shop", PLATFORM), encoding="utf-8")
    assert load_spec(tmp_path / "bom.yaml").service == "shop"


# --- malformed YAML -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (lines("service: shop", "platform:", "\tcommand: x"),
         "spec.yaml:3:1: tab character: YAML indentation and separators must be spaces, not tabs"),
        (lines("service: shop", "platform", "  command: x"),
         "spec.yaml:2:1: missing ':' after 'platform' (write 'key: value')"),
        (lines("service: shop", "platform:", "  command x", "  instances: 2"),
         "spec.yaml:3:3: missing ':' after 'command' (write 'key: value')"),
        (lines("platform:", "  command: app --port: {port}"),
         "spec.yaml:2:22: this value contains ': ', which YAML reads as a new key; put the value in quotes"),
        (lines("service: shop", "platform:", "  command: x", " instances: 2"),
         "spec.yaml:4:2: bad indentation: this line does not line up with the keys or list items above it"),
        (lines("service: shop", "smoke:", "  - {method: GET path: /}"),
         "spec.yaml:3:22: expected ',' or '}' here: a comma is missing, or the '{' at line 3 is never "
         "closed"),
        (lines("service: shop", "rollback: {staircase: [50, 10, 0}"),
         "spec.yaml:2:33: expected ',' or ']' here: a comma is missing, or the '[' at line 2 is never "
         "closed"),
        (lines("service: 'shop", "tier: critical"), "spec.yaml:1:10: unclosed quote: this string never ends"),
        (lines("service: shop", "---", "service: other"),
         "spec.yaml:2:1: a spec is a single YAML document; remove this second document (or its '---')"),
        (lines("service: *name"), "spec.yaml:1:10: undefined alias 'name': no anchor &name above this point"),
        (lines("service: !!python/name:os.system shop"),
         "spec.yaml:1:10: unsupported YAML tag !!python/name:os.system; a spec uses plain YAML values (text, "
         "numbers, true/false, lists and mappings): remove the tag"),
    ],
)
def test_malformed_yaml_points_at_the_mistake(text: str, expected: str) -> None:
    assert only_error(text) == expected


def test_control_characters_are_refused() -> None:
    assert only_error("service: sh\x00op\n") == (
        "spec.yaml:1:12: unexpected control character '\\x00' (U+0000); a spec must be plain text")


def test_duplicate_keys_are_errors_not_last_one_wins() -> None:
    found = errors(lines(
        "service: shop",
        PLATFORM,
        "router:",
        "  listen: 127.0.0.1:8080",
        "  listen: 127.0.0.1:8081",
        "router: {}",
        "smoke: [{path: /a, path: /b}]",
    ))
    assert found == [
        "spec.yaml:5:3: duplicate key 'listen' (first at line 4)",
        "spec.yaml:6:1: duplicate key 'router' (first at line 3)",
        "spec.yaml:7:20: duplicate key 'path' (first at line 7)",
    ]


def test_merge_keys_may_be_overridden_without_a_duplicate_error() -> None:
    spec = load_spec_text(lines(
        "service: shop",
        "platform:",
        "  <<: {command: 'app --port {port}', instances: 2}",
        "  instances: 3",
    ), "m.yaml")
    assert spec.platform.instances == 3


# --- unknown keys and values --------------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest_and_points_at_the_key() -> None:
    assert errors((EXAMPLES / "invalid" / "typos.yaml").read_text(), "typos.yaml") == [
        "typos.yaml:4:1: unknown key 'stratgy' (did you mean 'strategy'?)",
        "typos.yaml:8:16: unknown metric 'eror_rate' (did you mean 'error_rate'?); expected one of: "
        "error_rate, rps, latency_p50, latency_p95, latency_p99, cpu, memory_mb, memory_percent, prometheus",
        "typos.yaml:10:9: unknown mode 'stair' (did you mean 'staircase'?); expected one of: staircase, "
        "immediate",
    ]


def test_unknown_nested_key_and_keys_written_in_another_case() -> None:
    assert errors(lines("Service: shop", "platform: {comand: 'x {port}'}")) == [
        "spec.yaml:1:1: missing required key 'service'",
        "spec.yaml:1:1: unknown key 'Service' (did you mean 'service'?)",
        "spec.yaml:2:1: missing required key 'command' in platform",
        "spec.yaml:2:12: unknown key 'comand' (did you mean 'command'?)",
    ]


def test_unknown_key_without_a_close_match_lists_the_valid_ones() -> None:
    assert only_error(lines("service: shop", PLATFORM, "health: {banana: 1}")) == (
        "spec.yaml:3:10: unknown key 'banana' in health; expected one of: path, interval, timeout, attempts, "
        "expect_status, expect, failure_threshold, down_after")


def test_yaml_boolean_words_as_keys_stay_text() -> None:
    assert only_error(lines("service: shop", PLATFORM, "on: true")) == (
        "spec.yaml:3:1: unknown key 'on'; expected one of: service, tier, platform, router, health, smoke, "
        "strategy, analysis, rollback, governance, metrics, notify, migrations")


def test_wrong_literal_lists_the_allowed_values_at_the_value() -> None:
    assert only_error(lines("service: shop", "tier: importnt", PLATFORM)) == (
        "spec.yaml:2:7: unknown tier 'importnt' (did you mean 'important'?); expected one of: critical, "
        "important, supporting")
    assert only_error(lines("service: shop", PLATFORM, "smoke: [{method: GTE}]")) == (
        "spec.yaml:3:18: unknown method 'GTE' (did you mean 'GET'?); expected one of: GET, HEAD, POST, PUT, "
        "PATCH, DELETE, OPTIONS")
    lower = load_spec_text(lines("service: shop", PLATFORM, "smoke: [{method: get}]"), "x.yaml")
    assert lower.smoke_tests[0].method == "GET"


def test_yaml_booleans_are_explained() -> None:
    assert only_error(lines("service: shop", PLATFORM, "router: {sticky: no}")) == (
        "spec.yaml:3:18: unknown sticky no (YAML reads no as false; put it in quotes if you meant the text); "
        "expected one of: cookie, header, none")


def test_rule_on_an_unknown_metric_is_one_error() -> None:
    """A bound cannot be checked when its metric is wrong; it must not add a second, confusing error."""
    assert only_error(lines("service: shop", PLATFORM, "analysis:", "  rules:",
                            "    - {metric: latency-p95, max: 2.5s}")) == (
        "spec.yaml:5:16: unknown metric 'latency-p95' (did you mean 'latency_p95'?); expected one of: "
        "error_rate, rps, latency_p50, latency_p95, latency_p99, cpu, memory_mb, memory_percent, prometheus")


# --- values -------------------------------------------------------------------------------------------------


def test_bad_values_are_reported_together_at_each_value() -> None:
    assert errors((EXAMPLES / "invalid" / "bad-values.yaml").read_text(), "bad.yaml") == [
        "bad.yaml:3:12: the command must contain {port} so each instance can listen on its own port, "
        "e.g. 'python3 app.py --port {port}'",
        "bad.yaml:4:14: expected an integer, got 'two'",
        "bad.yaml:9:29: cannot read duration '10 minutes': use a number with a unit, e.g. 250ms, 5s, 10m, "
        "24h or 1h30m",
        "bad.yaml:12:13: write durations with a unit, e.g. '5s' or '5m' (got bare number 5)",
    ]


def test_weights_out_of_range_point_at_the_weight() -> None:
    steps = "strategy: {canary: {steps: [{weight: 5}, {weight: 150}, {weight: 0}]}}"
    assert errors(lines("service: shop", PLATFORM, steps)) == [
        "spec.yaml:3:51: weight must be at most 100, got 150",
        "spec.yaml:3:66: weight must be at least 1, got 0",
    ]


def test_weights_that_do_not_increase_point_at_the_offending_step() -> None:
    assert only_error(lines(
        "service: shop",
        PLATFORM,
        "strategy:",
        "  bluegreen:",
        "    ramp:",
        "      - {weight: 10, pause: 5m}",
        "      - {weight: 50, pause: 5m}",
        "      - {weight: 20, pause: 5m}",
    )) == "spec.yaml:8:18: step weights must increase: step 3 (20%) is not above step 2 (50%)"


def test_staircase_problems_point_at_the_offending_weight() -> None:
    assert only_error(lines("service: shop", PLATFORM, "rollback: {staircase: [50, 60, 0]}")) == (
        "spec.yaml:3:28: staircase weights must decrease: 60 follows 50")
    assert only_error(lines("service: shop", PLATFORM, "rollback: {staircase: [50, 10]}")) == (
        "spec.yaml:3:28: the staircase must end at 0, e.g. [50, 10, 0]")


def test_wrong_types_say_what_was_expected_and_what_was_found() -> None:
    assert errors(lines(
        "service: shop",
        "platform:",
        "  command: app --port {port}",
        "  instances: two",
        "  env: {DEBUG: 1, VERBOSE: yes}",
        "  cwd: [a]",
        "health: []",
        "smoke: {path: /}",
    )) == [
        "spec.yaml:4:14: expected an integer, got 'two'",
        "spec.yaml:5:16: expected a string, got 1 (write it in quotes: '1')",
        "spec.yaml:5:28: expected a string, got yes (YAML reads yes as true; put it in quotes if you meant "
        "the text)",
        "spec.yaml:6:3: expected a string, got a list",
        "spec.yaml:7:1: expected a mapping, got a list",
        "spec.yaml:8:1: expected a list, got a mapping",
    ]


def test_empty_values_point_at_their_key() -> None:
    assert errors(lines("service: shop", PLATFORM, "health:", "strategy:", "  canary:")) == [
        "spec.yaml:3:1: expected a mapping, got an empty value",
        "spec.yaml:5:3: canary has no settings; write 'canary: {}' to use its defaults",
    ]


def test_more_than_one_strategy_points_at_the_second() -> None:
    assert only_error(lines("service: shop", PLATFORM, "strategy:", "  canary: {}", "  rolling: {}")) == (
        "spec.yaml:5:3: choose exactly one strategy: canary, bluegreen or rolling (found canary, rolling)")


# --- missing keys -------------------------------------------------------------------------------------------


def test_missing_required_key_points_at_the_parent_key() -> None:
    assert errors((EXAMPLES / "invalid" / "missing-command.yaml").read_text()) == [
        "spec.yaml:2:1: missing required key 'command' in platform"]


def test_missing_top_level_and_list_item_keys() -> None:
    assert errors(lines(
        "# a spec without a service",
        "strategy:",
        "  canary:",
        "    steps:",
        "      - pause: 5m",
    )) == [
        "spec.yaml:2:1: missing required key 'service'",
        "spec.yaml:2:1: missing required key 'platform'",
        "spec.yaml:5:9: missing required key 'weight' in strategy.canary.steps[0]",
    ]


# --- the error object ---------------------------------------------------------------------------------------


def test_issues_are_sorted_by_position_and_carry_their_path() -> None:
    with pytest.raises(SpecError) as info:
        load_spec_text(lines(
            "tier: nope",
            "service: shop",
            "platform: {command: x, instances: 0}",
            "analysis: {rules: [{metric: cpu, max: 90, for: forever}]}",
        ), "p.yaml")
    issues = info.value.issues
    assert [(i.line, i.column) for i in issues] == sorted((i.line or 0, i.column or 0) for i in issues)
    assert [i.path for i in issues] == ["tier", "platform.command", "platform.instances",
                                        "analysis.rules[0].for"]
    assert all(i.file == "p.yaml" for i in issues)


def test_messages_are_clean_one_liners() -> None:
    text = lines(
        "service: Shop!",
        "tier: 3",
        "platform: {kind: docker, command: 5, instances: 1.5, stop_grace: -1s, env: [a]}",
        "router: {listen: nowhere, admin: 10.0.0.1:80, sticky: maybe, drain_timeout: {}}",
        "health: {path: health, attempts: -1, expect_status: [ok], expect: 5}",
        "smoke: [{method: 7, headers: 5, expect_status: 200, max_latency: fast, expect_json: []}]",
        "strategy: {rolling: {max_unavailable: 0, max_surge: 0}}",
        "analysis: {interval: 0, rules: [{metric: error_rate}, {metric: error_rate, max: lots}]}",
        "rollback: {mode: later, staircase: [200, 0], step_wait: []}",
    )
    found = errors(text)
    assert len(found) > 15
    for line in found:
        assert re.match(r"^spec\.yaml:\d+:\d+: \S", line), line
        for noise in ("Value error", "https://", "[type=", "Input should", "\n"):
            assert noise not in line, line


def test_an_impossible_date_is_a_located_error_not_a_crash(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text('service: shop\nplatform: {command: "x {port}"}\nnote: 2025-13-01\n')
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}:3:1: unknown key 'note'")
