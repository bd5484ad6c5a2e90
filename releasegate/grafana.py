"""A Grafana dashboard for one service, rendered from its release spec: the seed's "Release Health Dashboard".

Why from the spec: the thresholds a team looks at in Grafana must be the ones releasegate rolls back on. Rendering
the dashboard from the spec's analysis rules keeps one source of truth, as ``releasegate alerts`` does for
Prometheus rules: each rule's ``max``/``min`` is drawn on its panel as a Grafana threshold.

Why grafana-foundation-sdk: it is Grafana's own generated builders and models of the dashboard JSON (for Grafana
11.6), so field names, enums and panel options come from Grafana's schema rather than from hand-written dicts.

What the panels query (only series releasegate exports; docs/grafana.md lists them):

- the built-in router's ``GET /metrics`` (releasegate/router/exposition.py): ``http_requests_total`` and the
  ``http_request_duration_seconds`` histogram, per ``version``, for error rate, latency percentiles and requests;
- the controller metrics of ``releasegate metrics`` / ``receive-alerts`` (releasegate/metrics_exporter.py):
  ``releasegate_route_weight`` (the weight the router confirmed: releasegate persists no separate "set" weight),
  ``releasegate_rollout_phase``, ``releasegate_rollbacks_total``, ``releasegate_decisions_total``;
- each ``metric: prometheus`` rule's own query, with ``{{service}}``, ``{{version}}`` and
  ``{{baseline_version}}`` filled by the dashboard variables ``$service``, ``$version`` and ``$baseline``.

Rules on ``cpu``/``memory_mb``/``memory_percent`` are measured by the controller from the processes and exported to
no Prometheus series, so they get no panel; the dashboard's description names them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import statetimeline as gstate
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gc
from grafana_foundation_sdk.models import dashboard as gm

from releasegate.alerts import metric_expr
from releasegate.providers.metrics.prometheus import render_query
from releasegate.spec.models import Rule, Spec

WINDOW = "$__rate_interval"
"""The ``rate()`` range: Grafana's own, at least four scrape intervals of the data source."""
DATASOURCE = gm.DataSourceRef(type_val="prometheus", uid="${datasource}")
"""Every panel and query reads the data source picked in the ``datasource`` variable."""
SERVICE = '"$service"'
_UNITS = {"error_rate": "percentunit", "rps": "reqps", "latency_p50": "s", "latency_p95": "s", "latency_p99": "s"}
_TITLES = {"error_rate": "Error rate (5xx / all) per version", "rps": "Requests per second per version",
           "latency_p50": "Latency p50 per version", "latency_p95": "Latency p95 per version",
           "latency_p99": "Latency p99 per version"}
_METRIC_NAME = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")
"""A metric name in PromQL: a name followed by its selector's brace or a range."""
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
NEW_VERSION = f"releasegate_rollout_phase{{service={SERVICE}}}"
"""The ``version`` variable: the version of the service's latest rollout, read at the end of the time range
(``query_result`` is an instant query, so older rollouts' series, stale by then, are not offered)."""
BASELINE = f'releasegate_route_weight{{service={SERVICE},version!="$version"}}'
"""The ``baseline`` variable: the other version of that rollout (the exporter lists both of its weights)."""
VERSION_LABEL = '/version="([^"]+)"/'
UNEXPORTED = ("cpu", "memory_mb", "memory_percent")
"""Rule metrics measured from the processes by the controller: no Prometheus series has them."""


def thresholds(rules: Sequence[Rule]) -> gd.ThresholdsConfig:
    """The bounds of ``rules`` as Grafana threshold steps: red beyond the strictest max or min, green between."""
    highs = [r.max for r in rules if r.max is not None]
    lows = [r.min for r in rules if r.min is not None]
    return steps(min(highs) if highs else None, max(lows) if lows else None)


def steps(high: float | None, low: float | None) -> gd.ThresholdsConfig:
    """Grafana colours a value by the last step at or below it, so a max is "red from max on" and a min is "red
    below min": the base step (value null, i.e. minus infinity) is red when there is a min."""
    out = [gm.Threshold(value=None, color="red" if low is not None else "green")]
    if low is not None:
        out.append(gm.Threshold(value=low, color="green"))
    if high is not None:
        out.append(gm.Threshold(value=high, color="red"))
    return gd.ThresholdsConfig().mode(gm.ThresholdsMode.ABSOLUTE).steps(out)


def _bounds(rules: Sequence[Rule]) -> str:
    return "; ".join(f"rolls back at {r.describe()}" for r in rules)


def _query(expr: str, legend: str, ref: str = "A") -> gp.Dataquery:
    return gp.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range().datasource(DATASOURCE)


def _series(title: str, unit: str, queries: Sequence[gp.Dataquery], rules: Sequence[Rule] = (),
            description: str = "", width: int = 12) -> gts.Panel:
    """A time series panel; with rules, their bounds drawn as dashed threshold lines."""
    panel = (gts.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(width)
             .description(description).targets(list(queries)))
    panel = panel.legend(VizLegendOptions().show_legend(True).display_mode(gc.LegendDisplayMode.LIST)
                         .placement(gc.LegendPlacement.BOTTOM))
    if rules:
        panel = (panel.thresholds(thresholds(rules))
                 .thresholds_style(GraphThresholdsStyleConfig().mode(gc.GraphThresholdsStyleMode.DASHED)))
    return panel


def _stat(title: str, unit: str, query: gp.Dataquery, bounds: gd.ThresholdsConfig | None = None,
          description: str = "") -> gstat.Panel:
    """A headline number (the seed's "Error Rate: 0.3% ✅"), coloured by the rules' bounds."""
    panel = (gstat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(6)
             .with_target(query).color_mode(gc.BigValueColorMode.BACKGROUND)
             .graph_mode(gc.BigValueGraphMode.AREA).reduce_options(ReduceDataOptions().calcs(["lastNotNull"])))
    if description:
        panel = panel.description(description)
    return panel if bounds is None else panel.thresholds(bounds)


def _by_metric(spec: Spec) -> dict[str, list[Rule]]:
    out: dict[str, list[Rule]] = {}
    for rule in spec.analysis.rules:
        out.setdefault(rule.metric, []).append(rule)
    return out


def _router_panels(rules: dict[str, list[Rule]]) -> list[gts.Panel]:
    """Error rate, p95 (plus p50/p99 when a rule watches them) and requests per version, from the router."""
    metrics = ["error_rate", "latency_p95", *(m for m in ("latency_p50", "latency_p99") if m in rules), "rps"]
    panels = []
    for metric in metrics:
        expr = metric_expr(metric, "$service", None, WINDOW)
        assert expr is not None  # every router metric has an expression
        watched = rules.get(metric, [])
        panels.append(_series(_TITLES[metric], _UNITS[metric], [_query(expr, "{{version}}")], watched,
                              _bounds(watched) or "Not watched by an analysis rule of this spec."))
    return panels


def _custom_panels(rules: Sequence[tuple[int, Rule]]) -> list[gts.Panel]:
    """One panel per ``metric: prometheus`` rule: its query for ``$version`` (and for ``$baseline`` when the query
    names only ``{{version}}``, to compare), with the rule's bound."""
    panels = []
    for n, rule in rules:
        text = rule.query or ""
        expr = render_query(text, "$service", "$version", "$baseline") or text
        queries = [_query(expr, "$version")]
        if "{{version}}" in text and "{{baseline_version}}" not in text:
            baseline = render_query(text, "$service", "$baseline", "$baseline") or text
            queries.append(_query(baseline, "$baseline", "B"))
        panels.append(_series(custom_title(n, rule), "short", queries, [rule], f"{_bounds([rule])}. Query: {text}"))
    return panels


def custom_title(n: int, rule: Rule) -> str:
    """A custom rule's panel title: the first metric its query reads and its bound, with the rule's place in the
    spec (from 0, as errors name it), e.g. ``nvidia_gpu_temperature_celsius (rules[2], max 85)``."""
    found = _METRIC_NAME.search(_STRINGS.sub('""', rule.query or ""))
    name = found.group(1) if found else "query"
    bounds = [f"{word} {value:g}" for word, value in (("max", rule.max), ("min", rule.min)) if value is not None]
    return f"{name} (rules[{n}], {', '.join(bounds)})"


def _headline(rules: dict[str, list[Rule]], custom: Sequence[tuple[int, Rule]]) -> list[gstat.Panel]:
    """The seed's top block: error rate and p95 of the new version, the canary weight, rollbacks in the range."""
    sel = f'service={SERVICE},version="$version"'
    error = metric_expr("error_rate", "$service", "$version", WINDOW)
    p95 = metric_expr("latency_p95", "$service", "$version", WINDOW)
    assert error is not None and p95 is not None
    return [
        _stat("Error rate of $version", "percentunit", _query(error, "$version"),
              thresholds(rules.get("error_rate", []))),
        _stat("p95 latency of $version", "s", _query(p95, "$version"), thresholds(rules.get("latency_p95", []))),
        _stat("Canary weight of $version", "percent", _query(f"releasegate_route_weight{{{sel}}}", "$version"),
              description="Percent of traffic the router confirmed for the version (releasegate_route_weight)."),
        _stat("Rollback triggers in range", "short",
              _query(f"sum(increase(releasegate_rollbacks_total{{service={SERVICE}}}[$__range]))", "rollbacks"),
              steps(1, None),
              "Rollbacks started in the time range, any trigger (automatic, manual, alert); 0 is none."),
        *(_stat(custom_title(n, rule), "short", _query(render_query(rule.query or "", "$service", "$version",
                                                                  "$baseline") or "", "$version"),
                thresholds([rule]), f"{_bounds([rule])}. Query: {rule.query}")
          for n, rule in custom),
    ]


def _rollout_panels() -> list[gd.Panel | gts.Panel | gstate.Panel]:
    """The controller's view: the traffic split, the phase over time, rollback triggers and decisions."""
    weight = _series("Canary weight per version", "percent",
                     [_query(f"releasegate_route_weight{{service={SERVICE}}}", "{{version}}")],
                     description="Percent of traffic per version, as the router confirmed it to the controller.")
    phase = (gstate.Panel().title("Rollout phase").datasource(DATASOURCE).height(6).span(24)
             .description("Phase of the latest rollout (releasegate_rollout_phase): step, watch, rollback...")
             .with_target(_query(f"max by (phase) (releasegate_rollout_phase{{service={SERVICE}}}) > 0", "{{phase}}")))
    triggers = _series("Rollback triggers", "short",
                       [_query(f"sum by (trigger) (increase(releasegate_rollbacks_total{{service={SERVICE}}}"
                               f"[{WINDOW}]))", "{{trigger}}")],
                       description="Rollbacks started, by trigger: automatic (a breached rule, a dead instance), "
                       "manual (releasegate rollback), alert (Alertmanager).")
    decisions = _series("Decisions", "short",
                        [_query(f"sum by (decision) (increase(releasegate_decisions_total{{service={SERVICE}}}"
                                f"[{WINDOW}])) > 0", "{{decision}}")],
                        description="Decisions the controller recorded (releasegate history), by kind.", width=24)
    return [weight, triggers, phase, decisions]


def _delivery_panels() -> list[gstat.Panel]:
    """The DORA figures of the last 30 days per environment, as `releasegate server` exports them on /metrics
    (docs/dora.md): the same numbers as `releasegate dora --since 30d`."""
    where = f"service={SERVICE}"
    served = " From `releasegate server`'s or `releasegate metrics`' /metrics (30 days)."
    return [
        _stat("Deployments, 30 days", "short", _query(f"releasegate_dora_deployments{{{where}}}", "{{env}}"),
              description="Rollouts that reached users and ended." + served),
        _stat("Change failure rate, 30 days", "percentunit",
              _query(f"releasegate_dora_change_failure_ratio{{{where}}}", "{{env}}"), steps(0.15, None),
              "Rolled back, aborted after traffic, or followed within 24h by a rollback or hotfix, over all "
              "deployments; red above 15 % (the DORA elite band)." + served),
        _stat("Lead time (median), 30 days", "s",
              _query(f'releasegate_dora_lead_time_seconds{{{where},quantile="0.5"}}', "{{env}}"),
              description="Release commit to promotion." + served),
        _stat("Time to restore (median), 30 days", "s",
              _query(f'releasegate_dora_time_to_restore_seconds{{{where},quantile="0.5"}}', "{{env}}"),
              description="From a failed change reaching users to service restored." + served),
    ]


def _variables(spec: Spec, datasource: str | None) -> list[cogbuilder.Builder[gm.VariableModel]]:
    source = gd.DatasourceVariable("datasource").label("Data source").type("prometheus")
    if datasource is not None:
        source = source.current(gm.VariableOption(selected=True, text=datasource, value=datasource))
    return [
        source,
        gd.ConstantVariable("service").value(spec.service),
        gd.QueryVariable("version").label("New version").datasource(DATASOURCE)
        .query(f"query_result({NEW_VERSION})").regex(VERSION_LABEL).refresh(gm.VariableRefresh.ON_TIME_RANGE_CHANGED),
        gd.QueryVariable("baseline").label("Baseline version").datasource(DATASOURCE)
        .query(f"query_result({BASELINE})").regex(VERSION_LABEL).refresh(gm.VariableRefresh.ON_TIME_RANGE_CHANGED),
    ]


def build_dashboard(spec: Spec, *, title: str | None = None, datasource: str | None = None) -> gm.Dashboard:
    """The dashboard model for ``spec``'s service (``datasource``: the UID of the Prometheus to preselect)."""
    rules = _by_metric(spec)
    unexported = [r.describe() for m in UNEXPORTED for r in rules.get(m, [])]
    about = (f"Release health of {spec.service}, generated by `releasegate grafana` from its spec; thresholds are "
             "the spec's analysis rules.")
    if unexported:
        about += f" Not shown (measured from the processes, not exported to Prometheus): {'; '.join(unexported)}."
    if router_note(spec):
        about += f" {router_note(spec)}"
    board = (gd.Dashboard(title or f"Release Health - {spec.service}").uid(f"releasegate-{spec.service}"[:40])
             .description(about).tags(["releasegate", spec.service]).editable().time("now-30m", "now")
             .refresh("30s").timezone("browser").variables(_variables(spec, datasource))
             .annotation(gd.AnnotationQuery().name("Rollbacks").datasource(DATASOURCE).enable(True).icon_color("red")
                         .expr(f"sum by (trigger) (increase(releasegate_rollbacks_total{{service={SERVICE}}}"
                               f"[{WINDOW}])) > 0")))
    numbered = [(n, rule) for n, rule in enumerate(spec.analysis.rules) if rule.metric == "prometheus"]
    for stat in _headline(rules, numbered):
        board = board.with_panel(stat)
    board = board.with_row(gd.Row("Traffic and latency per version (router)"))
    for series in _router_panels(rules):
        board = board.with_panel(series)
    custom = _custom_panels(numbered)
    if custom:
        board = board.with_row(gd.Row("Custom metrics (the spec's Prometheus rules)"))
        for series in custom:
            board = board.with_panel(series)
    board = board.with_row(gd.Row("Rollout (releasegate controller)"))
    for panel in _rollout_panels():
        board = board.with_panel(panel)
    board = board.with_row(gd.Row("Delivery (DORA)"))
    for stat in _delivery_panels():
        board = board.with_panel(stat)
    return board.build()


def router_note(spec: Spec) -> str | None:
    """What a user of an nginx or HAProxy router must know: those export no per-version Prometheus series."""
    if spec.router.kind == "builtin":
        return None
    return (f"router kind {spec.router.kind} exports no Prometheus series of its own, so the error rate, latency "
            "and requests panels (the built-in router's http_requests_total and http_request_duration_seconds) "
            "stay empty; point them at your exporter's series in Grafana")


def _conform(data: dict[str, Any]) -> dict[str, Any]:
    """Two corrections to the SDK's JSON, found by checking it against ``@grafana/schema`` 11.6 (the test does):

    - the SDK writes the interval variable's ``auto``, ``auto_count`` and ``auto_min`` on every variable; the
      schema's ``VariableModel`` has no such keys, so they are dropped from the others;
    - the SDK's annotation ``expr`` is the legacy top-level form; the schema has the query under ``target`` (what
      Grafana's Prometheus plugin migrates it to), with a ``refId``."""
    for variable in data.get("templating", {}).get("list", []):
        if variable.get("type") != "interval":
            for key in ("auto", "auto_count", "auto_min"):
                variable.pop(key, None)
    for annotation in data.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            annotation["target"] = {"refId": "Anno", "expr": annotation.pop("expr")}
    return data


def render_dashboard(spec: Spec, *, title: str | None = None, datasource: str | None = None) -> str:
    """The dashboard as JSON text, ready for Grafana's import (Dashboards > New > Import)."""
    model = build_dashboard(spec, title=title, datasource=datasource)
    return json.dumps(_conform(json.loads(JSONEncoder().encode(model))), indent=2, sort_keys=True) + "\n"


__all__ = ["build_dashboard", "render_dashboard", "router_note", "thresholds"]
