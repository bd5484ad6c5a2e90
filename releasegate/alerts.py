"""A spec's analysis rules as a Prometheus alerting rule group, like the seed's ``rollback_triggers``.

Why: releasegate rolls back on its own while it watches a rollout, but teams also want Prometheus and
Alertmanager to page on the same limits (after the controller has finished, or when it is down). Rendering the
rules from the spec keeps one source of truth: the thresholds and ``for`` windows are the spec's.

The expressions use what the built-in router exposes on ``GET /metrics`` (releasegate/router/exposition.py):
error rate is 5xx over all requests (a ratio, as the rule's 0.05 means, not the seed's 5xx-per-second), latency
percentiles come from ``histogram_quantile`` over the router's buckets, both grouped ``by (version)`` so each
version alerts on its own (or filtered to one version when one is given). Rules that Prometheus cannot evaluate
are left out and named in a comment at the top: ``cpu``/``memory_mb``/``memory_percent`` (measured from the
processes, not exported) and ``prometheus`` queries that need ``{{version}}``/``{{baseline_version}}`` when none
was given.
"""

from __future__ import annotations

import re

import yaml

from releasegate.durations import format_duration
from releasegate.providers.metrics.prometheus import render_query
from releasegate.spec.models import LATENCY_METRICS, Rule, Spec

RATE_WINDOW = "1m"
_QUANTILES = {"latency_p50": "0.5", "latency_p95": "0.95", "latency_p99": "0.99"}
_NAMES = {"error_rate": "ErrorRate", "rps": "Rps", "latency_p50": "LatencyP50", "latency_p95": "LatencyP95",
          "latency_p99": "LatencyP99", "prometheus": "PrometheusQuery"}


def prometheus_duration(seconds: float) -> str:
    """A duration as Prometheus writes it (``1h30m``, ``250ms``); it takes no fractions, so milliseconds."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            n, ms = divmod(ms, size)
            parts.append(f"{n}{unit}")
    return "".join(parts)


def _number(value: float) -> str:
    return repr(float(value))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def metric_expr(metric: str, service: str, version: str | None, window: str = RATE_WINDOW) -> str | None:
    """The PromQL for a built-in metric of ``service`` per version; None for metrics Prometheus does not have."""
    sel = f"service={_quote(service)}" + (f",version={_quote(version)}" if version is not None else "")
    requests = f"sum by (version) (rate(http_requests_total{{{sel}}}[{window}]))"
    if metric == "error_rate":
        errors = f'sum by (version) (rate(http_requests_total{{{sel},status=~"5.."}}[{window}]))'
        return f"{errors} / {requests}"
    if metric == "rps":
        return requests
    if metric in _QUANTILES:
        buckets = f"sum by (version, le) (rate(http_request_duration_seconds_bucket{{{sel}}}[{window}]))"
        return f"histogram_quantile({_QUANTILES[metric]}, {buckets})"
    return None


def _expr(rule: Rule, spec: Spec, version: str | None, baseline: str | None, window: str) -> tuple[str | None, str]:
    """The rule's PromQL, or (None, why it is left out)."""
    if rule.metric != "prometheus":
        found = metric_expr(rule.metric, spec.service, version, window)
        return found, f"{rule.describe()}: measured from the processes, not exported to Prometheus"
    text = rule.query or ""
    missing = [p for p, v in (("{{version}}", version), ("{{baseline_version}}", baseline)) if p in text and v is None]
    if missing:
        return None, f"{rule.describe()}: the query needs {' and '.join(missing)}; pass the version(s) to render it"
    return render_query(text, spec.service, version or "", baseline), ""


def _rule_entries(rule: Rule, spec: Spec, expr: str, names: set[str], per_version: bool) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    who = f"{spec.service} {{{{ $labels.version }}}}" if per_version else spec.service
    for word, op, bound in (("High", ">", rule.max), ("Low", "<", rule.min)):
        if bound is None:
            continue
        name = base = f"{word}{_NAMES[rule.metric]}"
        n = 1
        while name in names:
            n += 1
            name = f"{base}{n}"
        names.add(name)
        limit = format_duration(bound) if rule.metric in LATENCY_METRICS else f"{bound:g}"
        shown = f"{rule.metric} {op} {limit} for {format_duration(rule.for_)}"
        out.append({
            "alert": name,
            "expr": f"({expr}) {op} {_number(bound)}",
            "for": prometheus_duration(rule.for_),
            "labels": {"severity": "critical", "service": spec.service},
            "annotations": {"summary": f"{who}: {shown}",
                            "action": f"Roll back to the previous version (releasegate rollback {spec.service})"},
        })
    return out


def render_alert_rules(spec: Spec, version: str | None = None, baseline_version: str | None = None,
                       window: str = RATE_WINDOW) -> str:
    """A YAML rule file (one group, ``{service}_rollback_triggers``) that ``promtool check rules`` accepts.

    ``version`` narrows the built-in metrics to one version and fills ``{{version}}`` in prometheus queries;
    without it, built-in metrics alert per version. ``window`` is the ``rate()`` range."""
    if not re.fullmatch(r"\d+(ms|s|m|h|d|w|y)", window):
        raise ValueError(f"window must be a Prometheus duration such as 1m, got {window!r}")
    names: set[str] = set()
    entries: list[dict[str, object]] = []
    skipped: list[str] = []
    for rule in spec.analysis.rules:
        expr, why = _expr(rule, spec, version, baseline_version, window)
        if expr is None:
            skipped.append(why)
            continue
        entries.extend(_rule_entries(rule, spec, expr, names, rule.metric != "prometheus" and version is None))
    header = [f"# Prometheus alerting rules for {spec.service}, from its analysis rules (generated by releasegate)."]
    header += [f"# Left out: {line}" for line in skipped]
    body = yaml.safe_dump({"groups": [{"name": f"{spec.service}_rollback_triggers", "rules": entries}]},
                          sort_keys=False, allow_unicode=True, width=1000)
    return "\n".join(header) + "\n" + body
