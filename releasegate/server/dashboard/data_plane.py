"""What the data plane itself says about a rollout's service, for the dashboard's rollout page.

The store says which weights the controller set; this says which weights the router applies, read from the router
and never from releasegate's own records, so a router that lost its routes (restarted, reloaded with an old file)
shows. Per router kind:

- the built-in router: its admin API (``GET /routes``), when its state file says it runs;
- nginx: the file releasegate owns, but only when the running workers serve that file's generation (the
  loopback-only ``/.releasegate/generation`` location, ``NginxRouter.get_routes``): nginx has no API for its
  weights, and a file it has not loaded is not what it serves;
- HAProxy: the runtime API over the stats socket (``show servers state``: each version's ready servers and their
  weights, ``HaproxyRouter.get_routes``).

Read only: nothing is started, reloaded or rendered from here (the dashboard is not the controller). Every read is
bounded (``TIMEOUT``); a router that is down or does not answer gives a one-line reason in place of the weights,
never an error page. Each backend the router routes to is then asked for the spec's health path directly, as the
controller's probes do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from releasegate.errors import ProviderError
from releasegate.providers.base import Routes
from releasegate.spec.models import BuiltinRouter, Spec
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec
from releasegate.store.sqlite import RolloutRecord

TIMEOUT = 2.0
"""Seconds any one read of the data plane may take: the page (and its live stream) must not hang on a router."""

Instances = list[dict[str, Any]]
_NAMES = {"builtin": "the router", "nginx": "nginx", "haproxy": "HAProxy"}


async def data_plane(state_dir: Path, rec: RolloutRecord) -> tuple[str, Instances]:
    """The weights the service's router reports as one line (``1.0.0 80%, 2.0.0 20%``), and each backend it routes
    to with its health now; or a one-line reason and no instances when the router cannot say."""
    spec = Spec.model_validate_json(rec.spec_json)
    who = _NAMES.get(spec.router.kind, f"the {spec.router.kind} router")
    try:
        routes = await asyncio.wait_for(_routes(state_dir, spec), TIMEOUT + 0.5)
    except TimeoutError:
        return f"{who} did not answer within {TIMEOUT:g}s", []
    except (ProviderError, OSError, httpx.HTTPError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{who} did not answer: {text}", []
    if isinstance(routes, str):
        return routes, []
    line = ", ".join(f"{v} {w}%" for v, w in sorted(routes.weights().items())) or "no routes"
    backends = [(v.version, v.weight, b) for v in routes.versions for b in v.backends]
    async with httpx.AsyncClient(timeout=min(spec.health.timeout, TIMEOUT), trust_env=False) as http:
        health = await asyncio.gather(*(_health(http, b, spec.health.path) for _, _, b in backends))
    return line, [{"version": v, "weight": w, "address": b, "health": h}
                  for (v, w, b), h in zip(backends, health, strict=True)]


async def _routes(state_dir: Path, spec: Spec) -> Routes | str:
    """The routes the router reports, or why there are none to read (not running, a kind not read yet)."""
    router = spec.router
    if isinstance(router, BuiltinRouter):
        from releasegate.providers.routers.builtin import read_router_state, router_client

        info = await asyncio.to_thread(read_router_state, state_dir, spec.service)
        if info is None:
            return "the router is not running"
        return await router_client(state_dir, spec.service, str(info["admin"]),
                                   timeout=TIMEOUT).get_routes(spec.service)
    if isinstance(router, NginxRouterSpec):
        from releasegate.providers.routers.nginx import NginxRouter

        nginx = NginxRouter(router, state_dir, spec.service)
        if not await asyncio.to_thread(nginx.path.exists):
            return f"nginx has no routes for {spec.service} yet: {nginx.path} does not exist"
        return await nginx.get_routes(spec.service)  # its generation check asks nginx with a 2 s timeout
    if isinstance(router, HaproxyRouterSpec):
        from releasegate.providers.routers.haproxy import HaproxyRouter

        return await HaproxyRouter(router, spec.service, timeout=TIMEOUT).get_routes(spec.service)
    return f"not read for router kind {router.kind} yet"


async def _health(http: httpx.AsyncClient, address: str, path: str) -> str:
    """``ok`` (2xx), ``HTTP 503``, or why there was no answer."""
    try:
        answer = await http.get(f"http://{address}{path}")
    except Exception as exc:  # refused, timed out, reset: the instance does not answer, whatever the cause
        return f"no answer ({type(exc).__name__})"
    return "ok" if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"


__all__ = ["TIMEOUT", "data_plane"]
