"""``releasegate router``: run the built-in router in the foreground, or inspect, restart and stop a running one."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from releasegate.commands.approvals import StateDir, state_dir_of
from releasegate.errors import ProviderError, UserError
from releasegate.lookup import POINT_ELSEWHERE, shown, unknown_service
from releasegate.providers.base import Routes
from releasegate.spec.models import BuiltinRouter, Spec
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec

out = Console(highlight=False, soft_wrap=True)

router_app = typer.Typer(help="The data plane: run the built-in router in the foreground, restart or stop it, or see "
                              "what any router (built-in, nginx, HAProxy) applies.",
                         invoke_without_command=True, no_args_is_help=False)
Service = Annotated[str, typer.Argument(help="Service name from the spec.", show_default=False, metavar="SERVICE")]


class _Given:
    state_dir: Path | None = None  # `releasegate router --state-dir X status`: the group's option


def _where(state_dir: Path | None) -> Path:
    """The subcommand's --state-dir, else the router group's, else the one before the command (or the default)."""
    return state_dir_of(state_dir if state_dir is not None else _Given.state_dir)


@router_app.callback()
def router_main(ctx: typer.Context,
                spec: Annotated[Path | None, typer.Option("--spec", "-f", metavar="FILE",
                                                          help="Take settings from this spec.")] = None,
                name: Annotated[str | None, typer.Option("--service", metavar="NAME",
                                                         help="Service (without --spec).")] = None,
                listen: Annotated[str | None, typer.Option(metavar="HOST:PORT",
                                                           help="Where users connect (without --spec).")] = None,
                admin: Annotated[str | None, typer.Option(metavar="HOST:PORT",
                                                          help="Loopback address of the admin API.")] = None,
                state_dir: StateDir = None) -> None:
    """Run the router in the foreground (`router stop`, `router restart`, `router status` manage a running one)."""
    _Given.state_dir = state_dir
    if ctx.invoked_subcommand is not None:
        return
    from releasegate.providers.routers.builtin import admin_token_path, changes_path, router_paths
    from releasegate.router.config import RouterConfig
    from releasegate.router.server import run_router
    from releasegate.spec import load_spec

    if spec is not None:
        s = load_spec(spec)
        if not isinstance(s.router, BuiltinRouter):
            raise UserError(f"router: {spec} uses router kind {s.router.kind}; `releasegate router` runs the "
                            "built-in one (kind: builtin)")
        svc, rspec = s.service, s.router
    elif name and listen:
        svc, rspec = name, BuiltinRouter(listen=listen)
    else:
        raise UserError("router: give --spec FILE, or --service NAME and --listen HOST:PORT")
    where = _where(None)
    state_file, routes_file, _log = router_paths(where, svc)
    try:
        config = RouterConfig(service=svc, listen=rspec.listen, routes_file=routes_file, state_file=state_file,
                              admin=admin or rspec.admin or "127.0.0.1:0", sticky=rspec.sticky,
                              sticky_cookie=rspec.sticky_cookie, sticky_header=rspec.sticky_header,
                              admin_token_file=admin_token_path(where, svc), changes_file=changes_path(where, svc))
    except ValueError as exc:
        raise UserError(f"router: {exc}") from None
    run_router(config)


def _stored_specs(state_dir: Path) -> dict[str, Spec]:
    """Each known service's spec as stored with its last rollout: which router it uses and where. Only reads: an
    unknown service in an empty directory leaves no state dir behind."""
    from releasegate.lookup import last_spec
    from releasegate.store.db import reading_only
    from releasegate.store.sqlite import Store

    with reading_only():
        store = Store(state_dir)
        try:
            names = {r.service for r in store.services()}
            return {name: found[0] for name in sorted(names) if (found := last_spec(store, name)) is not None}
        finally:
            store.close()


@router_app.command("stop")
def router_stop(name: Service, state_dir: StateDir = None) -> None:
    """Stop a service's built-in router (nginx and HAProxy: their own supervisor stops them).

    Traffic stops: this is for maintenance; `releasegate down` takes a service down."""
    from releasegate.providers.routers.builtin import stop_router

    where = _where(state_dir)
    spec = _stored_specs(where).get(name)
    if spec is not None and not isinstance(spec.router, BuiltinRouter):
        raise UserError(f"router stop: {name} is routed by {spec.router.kind} ({_external_place(spec)}); "
                        f"`releasegate router stop` manages only the built-in router: {spec.router.kind} is "
                        f"stopped by its own supervisor (e.g. `systemctl stop {spec.router.kind}`), and "
                        f"`releasegate down {name}` removes {name}'s routes from it")
    if stop_router(where, name, 10.0):
        out.print(f"router for {name} stopped")
    elif spec is None:
        raise unknown_service(where, name, "no router runs for it")
    else:
        out.print(f"no router is running for {name}")


@router_app.command("restart")
def router_restart(name: Service, state_dir: StateDir = None,
                   new_token: Annotated[bool, typer.Option("--new-token",
                                                           help="Replace the admin API's token (after a leak).")]
                   = False) -> None:
    """Restart a service's built-in router from its saved routes (new connections are refused for a moment).

    For a router started by an older releasegate (its admin API takes no token), and to replace a token with
    --new-token. A router you run in the foreground under a supervisor: restart it there."""
    from releasegate.providers.routers.builtin import admin_token_path, ensure_router, read_router_state, stop_router

    where = _where(state_dir)
    spec = _stored_specs(where).get(name)
    if spec is None:
        raise unknown_service(where, name, "`router restart` starts the router its last rollout used; a router you "
                                           "started yourself (`releasegate router --spec FILE`): restart it there")
    if not isinstance(spec.router, BuiltinRouter):
        raise UserError(f"router restart: {name} is routed by {spec.router.kind} ({_external_place(spec)}); "
                        f"restart {spec.router.kind} with its own supervisor")
    _refuse_during_rollout(where, name)
    before = read_router_state(where, name)
    if before is not None and _in_foreground(int(before["pid"])):
        raise UserError(f"router restart: the router for {name} (pid {before['pid']}) runs in the foreground "
                        "(`releasegate router`), likely under a supervisor: restart it there")
    stop_router(where, name, 10.0)
    if new_token:
        admin_token_path(where, name).unlink(missing_ok=True)
    try:
        client = asyncio.run(ensure_router(where, name, spec.router))
    except ProviderError as exc:
        raise UserError(f"router restart: {exc}") from None
    info = read_router_state(where, name)
    was = f" (was pid {before['pid']})" if before is not None else " (it was not running)"
    token = "a new admin token" if new_token else "its admin token"
    out.print(f"router for {name} restarted{was}: pid {info['pid'] if info else '?'} on "
              f"{info['listen'] if info else spec.router.listen}, admin {client.admin}, with {token} in "
              f"{admin_token_path(where, name)}", markup=False)


def _in_foreground(pid: int) -> bool:
    """Started by `releasegate router --spec` (the Typer command), not by releasegate as `-m releasegate.router`."""
    try:
        import psutil

        cmd = psutil.Process(pid).cmdline()
    except Exception:
        return False
    return "releasegate.router" not in cmd and "router" in cmd


def _refuse_during_rollout(state_dir: Path, service: str) -> None:
    """A controller driving a rollout restarts a router it finds gone: two starters would race for the port."""
    from releasegate.store.sqlite import Store

    store = Store(state_dir)
    try:
        active = store.active_rollout(service)
    finally:
        store.close()
    if active is not None:
        raise UserError(f"router restart: rollout {active.state.id} of {service} is in progress; restart the router "
                        f"once it has finished, or `releasegate abort {service}` first")


@router_app.command("status")
def router_status(name: Annotated[str | None, typer.Argument(metavar="SERVICE",
                                                             help="Service; all when omitted.")] = None,
                  state_dir: StateDir = None) -> None:
    """Is the router up, where does it listen, and which routes does it apply (built-in, nginx or HAProxy)."""
    where = _where(state_dir)
    specs = _stored_specs(where)
    root = where / "routers"
    # A running built-in router has a state file; one that ever served has a routes file.
    builtin = {p.name.removesuffix(".routes.json") for p in root.glob("*.routes.json")}
    builtin |= {p.name.removesuffix(".state.json") for p in root.glob("*.state.json")}
    names = [name] if name else sorted(builtin | set(specs))
    if not names:
        out.print(f"no router is running in {shown(where)}, none has served routes there and no service was "
                  f"deployed there; {POINT_ELSEWHERE}", markup=False)
        return
    for svc in names:
        spec = specs.get(svc)
        if spec is not None and not isinstance(spec.router, BuiltinRouter):
            out.print(asyncio.run(_external_status(where, spec)), markup=False)
        elif svc in builtin or spec is not None:
            out.print(asyncio.run(_builtin_status(where, svc, spec)), markup=False)
        else:
            raise unknown_service(where, svc, "no router runs for it")


def _split(routes: Routes) -> str:
    return ", ".join(f"{v.version} {v.weight}% ({len(v.backends)} backend{'s' if len(v.backends) != 1 else ''})"
                     for v in routes.versions)


def _applied(routes: Routes) -> str:
    """Each version's weight and the backends it goes to: what the built-in router really applies."""
    return "; ".join(f"{v.version} {v.weight}% to {', '.join(v.backends) if v.backends else 'no backend'}"
                     for v in routes.versions)


RECENT_CHANGES = 5


def _changes(state_dir: Path, svc: str) -> list[str]:
    """The last route changes the router recorded, with who made them (newest last)."""
    from releasegate.providers.routers.builtin import changes_path
    from releasegate.router.admin import describe
    from releasegate.router.routes_file import recent_changes

    path = changes_path(state_dir, svc)
    records = recent_changes(path, RECENT_CHANGES)
    if not records:
        return []
    lines = [f"  last route changes (all of them in {path}):"]
    for r in records:
        at = r.get("at")
        when = dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if isinstance(at, int | float) else "?"
        if "failed" in r:
            lines.append(f"    {when} generation {r.get('generation')}: not applied ({r['failed']})")
            continue
        versions = r.get("versions")
        weights = ", ".join(f"{v.get('version')} {v.get('weight')}%" for v in
                            (versions if isinstance(versions, list) else []) if isinstance(v, dict)) or "no routes"
        lines.append(f"    {when} generation {r.get('generation')} by {describe(r)}: {weights}")
    return lines


async def _builtin_status(state_dir: Path, svc: str, spec: Spec | None) -> str:
    from releasegate.providers.routers.builtin import read_router_state, router_client

    info = await asyncio.to_thread(read_router_state, state_dir, svc)
    if info is None:
        listen = f" (it listens on {spec.router.listen} once started)" if spec is not None else ""
        return "\n".join([f"{svc}: built-in router not running{listen}; `releasegate deploy` or `releasegate router "
                          "--spec FILE` starts it", *_changes(state_dir, svc)])
    client = router_client(state_dir, svc, str(info["admin"]), actor="releasegate router status")
    generation = ""
    try:
        data = await client.get_routes_info(svc)
        split = _applied(Routes.from_json(data)) or "no routes"
        if isinstance(data.get("generation"), int):
            generation = f" (generation {data['generation']})"
    except (ProviderError, ValueError) as exc:
        split = f"cannot read its routes: {exc}"
    finally:
        await client.aclose()
    lines = [f"{svc}: built-in router pid {info['pid']} on {info['listen']} (admin {info['admin']}): "
             f"{split}{generation}"]
    if info.get("admin_auth") != "bearer":
        lines.append(f"  admin API not authenticated: this router was started by a releasegate from before admin "
                     f"tokens, and any local account can change its routes; `releasegate router restart {svc}` "
                     "restarts it with a token")
    return "\n".join([*lines, *_changes(state_dir, svc)])


def _external_place(spec: Spec) -> str:
    """Where releasegate meets an nginx or HAProxy it does not run: the file it owns, the socket it steers."""
    if isinstance(spec.router, NginxRouterSpec):
        owned = spec.router.config_file.replace("{service}", spec.service)
        return f"listening on {spec.router.listen}, routes file {owned}"
    assert isinstance(spec.router, HaproxyRouterSpec)
    return (f"listening on {spec.router.listen}, stats socket {spec.router.stats_socket}, configuration "
            f"{spec.router.config_file}")


async def _external_status(state_dir: Path, spec: Spec) -> str:
    """What nginx or HAProxy applies for the service, read back from it (get_routes), or why it cannot be read."""
    router: Any
    if isinstance(spec.router, NginxRouterSpec):
        from releasegate.providers.routers.nginx import NginxRouter

        router = NginxRouter(spec.router, state_dir, spec.service)
    else:
        from releasegate.providers.routers.haproxy import HaproxyRouter

        assert isinstance(spec.router, HaproxyRouterSpec)
        router = HaproxyRouter(spec.router, spec.service)
    head = f"{spec.service}: {spec.router.kind} ({_external_place(spec)}; run by its own supervisor)"
    try:
        routes = await router.get_routes(spec.service)
    except ProviderError as exc:
        return f"{head}: cannot read its routes: {exc}"
    return f"{head}: {_split(routes) or 'no routes'}"
