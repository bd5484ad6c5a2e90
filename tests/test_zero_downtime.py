"""Zero downtime through nginx and through HAProxy: whole deploys under continuous load lose no client request.

For each proxy a private instance runs on loopback ports and temporary files; the spec's ``router`` points at it.
Then, under ``Load`` (many users: no cookies kept), the service goes through

1. a blue-green switch 1.0.0 -> 2.0.0,
2. a canary promotion of 3.0.0 (nginx measures no traffic, so its canary runs on pauses only, ``rules: []``: a
   rule on error_rate would never get data and the step would wait forever, by design; HAProxy's stats socket
   gives error_rate, so its canary is gated on it),
3. a rollback: a canary of 4.0.0 waits on a manual step and is aborted with ``send_command(..., "abort")``,

and every answer must be a success; traffic must end on 3.0.0, both in the answers' ``X-Version`` and in the
provider's ``get_routes`` (what the proxy really applies).

nginx runs twice: ``nginx`` with clients that open a connection per request, which must lose nothing, and
``nginx-keepalive`` with the keep-alive clients of ``Load``, which xfails (only) on the known reload race described
in ``KEEPALIVE_RACE`` and passes when no request happened to hit it. HAProxy is steered through its runtime API
without reloads, so it gets the keep-alive clients and no allowance.

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


def _nginx(tmp_path: Path) -> Iterator[Proxy]:
    if shutil.which(NGINX) is None:
        pytest.skip(f"nginx is not installed ({NGINX})")
    nginx = PrivateNginx(tmp_path / "nginx")
    nginx.start()  # includes conf.d/releasegate-*.conf: starts before releasegate wrote anything
    try:
        conf = nginx.conf_dir / "releasegate-{service}.conf"
        router_yaml = (f'router: {{kind: nginx, nginx: "{NGINX}", listen: "127.0.0.1:{nginx.listen_port}", '
                       f'config_file: "{conf}", prefix: "{nginx.root}", main_config: "{nginx.main_config}", '
                       f'pid_file: "{nginx.root / "nginx.pid"}", drain_timeout: 5s, drain_grace: 1s}}')
        yield Proxy("nginx", nginx.listen_port, router_yaml, "[]")
    finally:
        nginx.stop()


def _haproxy(tmp_path: Path) -> Iterator[Proxy]:
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
    yield from (_haproxy if request.param == "haproxy" else _nginx)(tmp_path)


def spec_for(proxy: Proxy, directory: Path, strategy: str) -> Path:
    """The end-to-end spec of tests/support/rollouts.py with its built-in router swapped for ``proxy``."""
    path = write_spec(directory, proxy.port, strategy, rules=proxy.rules)
    builtin = f'router: {{listen: "127.0.0.1:{proxy.port}", drain_timeout: 5s}}'
    text = path.read_text()
    assert builtin in text, "tests/support/rollouts.py changed its router line"
    path.write_text(text.replace(builtin, proxy.router_yaml))
    return path


async def deploy(ctx: service.Context, spec: Path, version: str) -> Any:
    """Every rollout here finishes in seconds; one that does not is a failure, not a hang."""
    return await asyncio.wait_for(service.deploy(ctx, spec, version), 60)


KEEPALIVE_RACE = ("known: every route change reloads nginx, and the old workers close their idle keep-alive "
                  "client connections at once; a request a client sends on one at that moment gets no answer "
                  "(RemoteProtocolError / ReadError). Clients that retry idempotent requests on a reused "
                  "connection (browsers) do not notice; httpx does not retry.")
DISCONNECTS = ("RemoteProtocolError: Server disconnected without sending a response", "ReadError")


async def test_bluegreen_canary_and_abort_lose_no_request(request: pytest.FixtureRequest, proxy: Proxy,
                                                          tmp_path: Path) -> None:
    keepalive = request.node.callspec.params["proxy"] != "nginx"  # plain nginx: clients without keep-alive
    ctx = service.new_context(tmp_path / "state")
    spec = spec_for(proxy, tmp_path, BLUEGREEN)
    router_spec = load_spec(spec).router
    haproxy = None
    if isinstance(router_spec, HaproxyRouterSpec):
        provider = HaproxyRouter(router_spec, "shop")
        assert provider.ensure_config() is True  # 1. releasegate renders the configuration...
        haproxy = Haproxy(provider.config_file, Path(provider.socket), tmp_path / "haproxy.pid")
        haproxy.start()  # 2. ...the supervisor starts haproxy on it; 3. the first deploy enables its servers
        router: Router = provider
    else:
        assert isinstance(router_spec, NginxRouterSpec)
        router = NginxRouter(router_spec, tmp_path / "state", "shop")
    routes = router.get_routes  # what the proxy really applies, read back by the provider
    try:
        st = await deploy(ctx, spec, "1.0.0")
        assert st.status == "promoted", st.reason
        assert (await routes("shop")).weights() == {"1.0.0": 100}

        # Without keep-alive every request is on a new connection, so an nginx reload cannot close one under it
        # (see KEEPALIVE_RACE).
        headers = {} if keepalive else {"Connection": "close"}
        async with Load(proxy.url, concurrency=6, headers=headers) as load:
            await load.wait_for(30)
            counts: list[dict[str, int]] = []

            # 1. blue-green switch
            before = dict(load.by_version)
            st = await deploy(ctx, spec, "2.0.0")
            assert st.status == "promoted", st.reason
            assert (await routes("shop")).weights() == {"2.0.0": 100}
            await load.wait_for(30)
            counts.append(_since(before, load.by_version))

            # 2. canary promotion
            spec = spec_for(proxy, tmp_path, CANARY)
            before = dict(load.by_version)
            st = await deploy(ctx, spec, "3.0.0")
            assert st.status == "promoted", st.reason
            assert (await routes("shop")).weights() == {"3.0.0": 100}
            await load.wait_for(30)
            counts.append(_since(before, load.by_version))

            # 3. rollback: abort a canary waiting on its manual step
            spec = spec_for(proxy, tmp_path, MANUAL)
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
            counts.append(_since(before, load.by_version))
            tail = _since(after_abort, load.by_version)

        print(f"\n{proxy.kind}: {load.requests} requests; bluegreen {counts[0]}; canary {counts[1]}; "
              f"abort {counts[2]} (after the abort: {tail})")
        if load.failures and proxy.kind == "nginx" and keepalive \
                and all(f.startswith(DISCONNECTS) for f in load.failures):
            pytest.xfail(f"{len(load.failures)} of {load.requests} requests failed: {KEEPALIVE_RACE}")
        assert load.failures == [], f"{len(load.failures)} of {load.requests} failed: {load.failures[:10]}"
        assert counts[0].get("2.0.0", 0) > 0 and counts[1].get("3.0.0", 0) > 0 and counts[2].get("4.0.0", 0) > 0
        assert set(tail) == {"3.0.0"}, tail  # after the abort, only the stable version answers
        assert (await routes("shop")).weights() == {"3.0.0": 100}
        assert service.status(ctx, "shop")[0]["current"] == "3.0.0"
    finally:
        await cleanup(tmp_path / "state", spec)
        if haproxy is not None:
            haproxy.stop()


def _since(before: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    return {v: n - before.get(v, 0) for v, n in now.items() if n > before.get(v, 0)}
