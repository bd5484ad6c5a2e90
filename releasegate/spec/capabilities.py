"""What feeds each analysis metric, in one table: the router measures traffic, the platform measures its
processes, Prometheus runs queries.

A rule nothing can feed would get no data at every evaluation, so its rollout would wait at its first step
forever (or pause for an operator): that is a mistake in the spec, and ``validate``, ``plan`` and ``deploy``
refuse it at load time with the rule's place and what would feed it (``releasegate.spec.loader`` runs
``unmeasurable``). The same table is printed in docs/integrations.md (a test keeps them equal).

Specs stored with a rollout are not checked again (``Spec.model_validate_json``): a rollout started before this
check existed still resumes, and waits with "router kind ... cannot measure ..." as its reason.
"""

from __future__ import annotations

from releasegate.spec.common import PROCESS_METRICS, ROUTER_METRICS
from releasegate.spec.errors import Loc
from releasegate.spec.models import Spec
from releasegate.spec.routers_nginx import NginxRouter

ROUTERS: dict[str, tuple[str, ...]] = {
    "builtin": ROUTER_METRICS,  # its own per-version counters (GET /stats)
    "nginx": ROUTER_METRICS,  # the JSON access log releasegate renders into its server block
    "haproxy": ROUTER_METRICS,  # show stat totals (errors, rate) and the ring log releasegate renders (latency)
}
"""Router kind -> the traffic metrics it measures per version."""
PLATFORMS: dict[str, tuple[str, ...]] = {"local": PROCESS_METRICS, "docker": PROCESS_METRICS, "ssh": ()}
"""Platform kind -> the process metrics it measures per version."""
HOW = {
    "builtin": "per-version counters of the router process",
    "nginx": "its JSON access log (router.access_log); with access_log: off, nothing",
    "haproxy": "show stat totals on the stats socket (error_rate, rps); latency from the per-request ring "
               "log of the rendered configuration (an own configuration adds its lines: docs/integrations.md)",
    "local": "the instances' processes (psutil)",
    "docker": "the engine's stats of each container (cpu time, memory usage and limit)",
}


def router_measures(spec: Spec) -> tuple[str, ...]:
    """The traffic metrics the spec's router measures; nginx with ``access_log: off`` measures none."""
    if isinstance(spec.router, NginxRouter) and spec.router.access_log == "off":
        return ()
    return ROUTERS.get(spec.router.kind, ())


def _router_name(spec: Spec) -> str:
    off = isinstance(spec.router, NginxRouter) and spec.router.access_log == "off"
    return f"router kind {spec.router.kind}" + (" with access_log: off" if off else "")


def _routers_for(metric: str) -> str:
    kinds = [k for k, measured in ROUTERS.items() if metric in measured]
    return " or ".join(kinds) if len(kinds) < 3 else ", ".join(kinds[:-1]) + " or " + kinds[-1]


def unmeasurable(spec: Spec) -> list[tuple[Loc, str]]:
    """(where, message) for every analysis rule that the spec's router, platform and sources cannot feed."""
    written = "analysis" in spec.model_fields_set and "rules" in spec.analysis.model_fields_set
    out: list[tuple[Loc, str]] = []
    for i, rule in enumerate(spec.analysis.rules):
        metric = rule.metric
        if metric == "prometheus":
            continue  # needs metrics.prometheus, which the model itself requires
        if metric in PROCESS_METRICS:
            if metric in PLATFORMS.get(spec.platform.kind, ()):
                continue
            fix = "use a metric: prometheus rule"
            what = f"platform kind {spec.platform.kind}"
        elif metric in router_measures(spec):
            continue
        else:
            what = _router_name(spec)
            fix = f"use the {_routers_for(metric)} router, or a metric: prometheus rule"
            if isinstance(spec.router, NginxRouter) and spec.router.access_log == "off":
                fix = f"remove access_log: off, {fix}"
        if written:
            out.append((("analysis", "rules", i, "metric"),
                        f"analysis.rules[{i}]: {metric} cannot be measured by {what}; {fix}"))
        else:
            out.append((("router", "kind"),
                        f"the default analysis rule {rule.describe()} (analysis.rules[{i}]) cannot be measured by "
                        f"{what}; write analysis.rules without it, {fix}"))
    judge = spec.analysis.judge
    judged = judge.metrics if judge is not None and judge.counts is None else []
    for i, m in enumerate(judged):  # error_rate and latency: the router's own counts, unless judge.counts says
        if m.metric != "prometheus" and not router_measures(spec):
            out.append((("analysis", "judge", "metrics", i, "metric"),
                        f"analysis.judge.metrics[{i}]: {m.metric} cannot be counted by {_router_name(spec)}; "
                        "remove access_log: off, count from Prometheus counters (analysis.judge.counts), or "
                        "judge a metric: prometheus instead"))
    return out


def table_markdown() -> str:
    """The capability table for docs/integrations.md."""
    rows = ["| source | measures | from |", "| --- | --- | --- |"]
    for kind, measured in ROUTERS.items():
        rows.append(f"| `router: {{kind: {kind}}}` | {', '.join(measured)} | {HOW[kind]} |")
    for kind, measured in PLATFORMS.items():
        if not measured:
            continue
        rows.append(f"| `platform: {{kind: {kind}}}` | {', '.join(measured)} | {HOW[kind]} |")
    rows.append("| `metrics: {prometheus: ...}` | prometheus (rules with a `query`) | any PromQL, e.g. your "
                "exporter's latency histogram |")
    return "\n".join(rows) + "\n"
