"""``releasegate router``: run the built-in router in the foreground, or inspect and stop a running one."""

from __future__ import annotations

import asyncio
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

router_app = typer.Typer(help="The data plane: run the built-in router in the foreground, stop it, or see what any "
                              "router (built-in, nginx, HAProxy) applies.",
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
    """Run the router in the foreground (`router stop`, `router status` manage a running one)."""
    _Given.state_dir = state_dir
    if ctx.invoked_subcommand is not None:
        return
    from releasegate.providers.routers.builtin import router_paths
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
    state_file, routes_file, _log = router_paths(_where(None), svc)
    try:
        config = RouterConfig(service=svc, listen=rspec.listen, routes_file=routes_file, state_file=state_file,
                              admin=admin or rspec.admin or "127.0.0.1:0", sticky=rspec.sticky,
                              sticky_cookie=rspec.sticky_cookie, sticky_header=rspec.sticky_header)
    except ValueError as exc:
        raise UserError(f"router: {exc}") from None
    run_router(config)


def _stored_specs(state_dir: Path) -> dict[str, Spec]:
    """Each known service's spec as stored with its last rollout: which router it uses and where."""
    from releasegate.lookup import last_spec
    from releasegate.store.sqlite import Store

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


async def _builtin_status(state_dir: Path, svc: str, spec: Spec | None) -> str:
    from releasegate.providers.routers.builtin import BuiltinRouterClient, read_router_state

    info = await asyncio.to_thread(read_router_state, state_dir, svc)
    if info is None:
        listen = f" (it listens on {spec.router.listen} once started)" if spec is not None else ""
        return (f"{svc}: built-in router not running{listen}; `releasegate deploy` or `releasegate router --spec "
                "FILE` starts it")
    client = BuiltinRouterClient(str(info["admin"]))
    try:
        split = _split(await client.get_routes(svc)) or "no routes"
    except ProviderError as exc:
        split = f"admin API not answering: {exc}"
    finally:
        await client.aclose()
    return f"{svc}: built-in router pid {info['pid']} on {info['listen']} (admin {info['admin']}): {split}"


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
