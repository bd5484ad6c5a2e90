"""Zero downtime through nginx and through HAProxy: whole deploys under continuous load lose no client request.

For each proxy a private instance runs on loopback ports and temporary files; the spec's ``router`` points at it.
Then, under ``Load`` (many users: no cookies kept), the service goes through

1. a blue-green switch 1.0.0 -> 2.0.0,
2. a canary promotion of 3.0.0, gated on error_rate through both (nginx: the JSON access log releasegate owns in
   its server block; HAProxy: its stats socket), so each step waits for real per-version evidence,
3. a rollback: a canary of 4.0.0 waits on a manual step and is aborted with ``send_command(..., "abort")``,

and every answer must be a success; traffic must end on 3.0.0, both in the answers' ``X-Version`` and in the
provider's ``get_routes`` (what the proxy really applies).

Every route change through nginx is an ``nginx -s reload``, and on a reload nginx's old workers close their idle
keep-alive client connections: a client that sends a request on one at that moment gets a reset. So releasegate
renders ``keepalive_timeout 0;`` by default (``client_keepalive: 0``) and nginx runs twice:

- ``nginx``: the default configuration with the keep-alive-capable clients of ``Load`` (httpx, which does not
  retry). nginx closes every connection after its response, so no request is ever sent on a connection a reload
  could close: nothing may fail, and no request may have gone out on a reused connection.
- ``nginx-keepalive``: ``client_keepalive: 60s`` with clients that retry the way browsers, curl and Go's net/http
  do (``Load(retry_reused=True)``: a GET whose reused connection was closed or reset before the response head
  arrived is sent once more on a new connection). Nothing may fail either; connections must really be reused, and
  the retries the race caused are printed.

HAProxy is steered through its runtime API without reloads, so it gets the plain keep-alive clients.

Order of operations for HAProxy, as an operator's supervisor would do it: releasegate renders the configuration
(``HaproxyRouter.ensure_config``, which only writes a missing file; ``deploy`` calls it too), then haproxy is
started on that file, and only then does the first deploy steer its servers through the runtime API. releasegate
never starts or reloads haproxy itself. nginx, by contrast, is started first with a main configuration that
includes ``releasegate-*.conf``; the first deploy writes that file and reloads nginx.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from releasegate import service
from releasegate.providers.base import Router
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.providers.routers.nginx import NginxRouter
from releasegate.spec import load_spec
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec
from tests.support.haproxy import HAPROXY, Haproxy
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.rollouts import Load, cleanup, free_port, write_spec
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

BLUEGREEN = "{bluegreen: {keep_previous: 1h}}"
CANARY = "{canary: {steps: [{weight: 20, pause: 1s}, {weight: 50, pause: 1s}]}}"
MANUAL = "{canary: {steps: [{weight: 20}]}}"  # no pause: waits for promote (or abort)
ERROR_RATE = "[{metric: error_rate, max: 0.05, for: 1s}]"


@dataclass
class Proxy:
    kind: str
    port: int
    router_yaml: str  # the spec's router line
    rules: str  # the analysis rules this proxy can measure

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/items"


def nginx_proxy(tmp_path: Path, extra: str = "") -> Iterator[Proxy]:
    """A private nginx (bench/bench_zero_downtime.py starts it the same way); ``extra`` ends the router line."""
    if shutil.which(NGINX) is None:
        pytest.skip(f"nginx is not installed ({NGINX})")
    nginx = PrivateNginx(tmp_path / "nginx")
    nginx.start()  # includes conf.d/releasegate-*.conf: starts before releasegate wrote anything
    try:
        router_yaml = "router: " + nginx.router_yaml(f", drain_timeout: 5s, drain_grace: 1s{extra}")
        yield Proxy("nginx", nginx.listen_port, router_yaml, ERROR_RATE)
    finally:
        nginx.stop()


def haproxy_proxy(tmp_path: Path) -> Iterator[Proxy]:
    """Where HAProxy will listen; it starts once releasegate rendered its configuration (``provider_for``)."""
    if shutil.which(HAPROXY) is None:
        pytest.skip(f"haproxy is not installed ({HAPROXY})")
    short = Path(tempfile.mkdtemp(prefix="rg-zd-"))  # a unix socket path must stay under 108 bytes
    port = free_port()
    router_yaml = (f'router: {{kind: haproxy, haproxy: "{HAPROXY}", listen: "127.0.0.1:{port}", '
                   f'config_file: "{tmp_path / "haproxy.cfg"}", stats_socket: "{short / "admin.sock"}", '
                   "slots: 4, drain_timeout: 5s}")
    try:
        yield Proxy("haproxy", port, router_yaml, ERROR_RATE)
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(params=["nginx", "nginx-keepalive", "haproxy"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Proxy]:
    if request.param == "haproxy":
        yield from haproxy_proxy(tmp_path)
    else:
        yield from nginx_proxy(tmp_path, ", client_keepalive: 60s" if request.param == "nginx-keepalive" else "")


def spec_for(proxy: Proxy, directory: Path, strategy: str) -> Path:
    """The end-to-end spec of tests/support/rollouts.py with its built-in router swapped for ``proxy``."""
    path = write_spec(directory, proxy.port, strategy, rules=proxy.rules)
    builtin = f'router: {{listen: "127.0.0.1:{proxy.port}", drain_timeout: 5s}}'
    text = path.read_text()
    assert builtin in text, "tests/support/rollouts.py changed its router line"
    path.write_text(text.replace(builtin, proxy.router_yaml))
    return path


def provider_for(spec: Path, directory: Path) -> tuple[Router, Haproxy | None]:
    """The spec's router provider; for HAProxy, its configuration rendered and a private haproxy started on it."""
    router_spec = load_spec(spec).router
    if isinstance(router_spec, HaproxyRouterSpec):
        provider = HaproxyRouter(router_spec, "shop")
        assert provider.ensure_config() is True  # 1. releasegate renders the configuration...
        haproxy = Haproxy(provider.config_file, Path(provider.socket), directory / "haproxy.pid")
        haproxy.start()  # 2. ...the supervisor starts haproxy on it; 3. the first deploy enables its servers
        return provider, haproxy
    assert isinstance(router_spec, NginxRouterSpec)
    return NginxRouter(router_spec, directory / "state", "shop"), None


async def deploy(ctx: service.Context, spec: Path, version: str) -> Any:
    """Every rollout here finishes in seconds; one that does not is a failure, not a hang."""
    return await asyncio.wait_for(service.deploy(ctx, spec, version), 180)  # a bound for a hung deploy, not a timing


@dataclass
class Seen:
    """Answers per version during each rollout, and after the abort settled."""

    bluegreen: dict[str, int]
    canary: dict[str, int]
    abort: dict[str, int]
    tail: dict[str, int]


async def bluegreen_canary_abort(ctx: service.Context, proxy: Proxy, directory: Path, router: Router,
                                 load: Load) -> Seen:
    """The three rollouts under ``load``, 1.0.0 already deployed (bench/bench_zero_downtime.py runs the same)."""
    routes = router.get_routes  # what the proxy really applies, read back by the provider
    await load.wait_for(30)

    # 1. blue-green switch
    spec = spec_for(proxy, directory, BLUEGREEN)
    before = dict(load.by_version)
    st = await deploy(ctx, spec, "2.0.0")
    assert st.status == "promoted", st.reason
    assert (await routes("shop")).weights() == {"2.0.0": 100}
    await load.wait_for(30)
    bluegreen = _since(before, load.by_version)

    # 2. canary promotion
    spec = spec_for(proxy, directory, CANARY)
    before = dict(load.by_version)
    st = await deploy(ctx, spec, "3.0.0")
    assert st.status == "promoted", st.reason
    assert (await routes("shop")).weights() == {"3.0.0": 100}
    await load.wait_for(30)
    canary = _since(before, load.by_version)

    # 3. rollback: abort a canary waiting on its manual step
    spec = spec_for(proxy, directory, MANUAL)
    before = dict(load.by_version)
    rollout = asyncio.create_task(deploy(ctx, spec, "4.0.0"))
    await eventually(lambda: (service.status(ctx, "shop")[0]["rollout"] or {}).get("waiting"),
                     within=30, what="the 4.0.0 canary waiting on its manual step")
    await eventually(lambda: load.by_version.get("4.0.0", 0) - before.get("4.0.0", 0) >= 5,
                     within=20, what="users reaching the 4.0.0 canary")
    assert (await service.send_command(ctx, "shop", "abort")).applied
    st = await rollout
    assert st.status in ("aborted", "rolled_back"), st.reason
    await load.wait_for(20)  # requests sent before the abort finish (a canary request may end late)
    after_abort = dict(load.by_version)
    await load.wait_for(40)
    return Seen(bluegreen, canary, _since(before, load.by_version), _since(after_abort, load.by_version))


async def test_bluegreen_canary_and_abort_lose_no_request(request: pytest.FixtureRequest, proxy: Proxy,
                                                          tmp_path: Path) -> None:
    case = request.node.callspec.params["proxy"]
    ctx = service.new_context(tmp_path / "state")
    spec = spec_for(proxy, tmp_path, BLUEGREEN)  # every rollout rewrites this one file
    router, haproxy = provider_for(spec, tmp_path)
    try:
        st = await deploy(ctx, spec, "1.0.0")
        assert st.status == "promoted", st.reason
        assert (await router.get_routes("shop")).weights() == {"1.0.0": 100}

        async with Load(proxy.url, concurrency=6, retry_reused=case == "nginx-keepalive") as load:
            seen = await bluegreen_canary_abort(ctx, proxy, tmp_path, router, load)

        print(f"\n{case}: {load.requests} requests ({load.reused} on a reused connection, {load.retries} retried "
              f"after a closed one); bluegreen {seen.bluegreen}; canary {seen.canary}; abort {seen.abort} "
              f"(after the abort: {seen.tail})")
        assert load.failures == [], f"{len(load.failures)} of {load.requests} failed: {load.failures[:10]}"
        if case == "nginx":
            assert load.reused == 0, "keepalive_timeout 0: nginx closes every connection after its response"
        elif case == "nginx-keepalive":
            assert load.reused > load.requests // 2, "client_keepalive: 60s, yet connections were not reused"
        assert seen.bluegreen.get("2.0.0", 0) > 0 and seen.canary.get("3.0.0", 0) > 0
        assert seen.abort.get("4.0.0", 0) > 0
        assert set(seen.tail) == {"3.0.0"}, seen.tail  # after the abort, only the stable version answers
        assert (await router.get_routes("shop")).weights() == {"3.0.0": 100}
        assert service.status(ctx, "shop")[0]["current"] == "3.0.0"
    finally:
        await cleanup(tmp_path / "state", spec)
        if haproxy is not None:
            haproxy.stop()


def _since(before: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    return {v: n - before.get(v, 0) for v, n in now.items() if n > before.get(v, 0)}
