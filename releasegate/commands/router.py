"""``releasegate router``: run the built-in router in the foreground, or inspect and stop a running one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from releasegate.commands.approvals import StateDir, state_dir_of
from releasegate.errors import UserError

out = Console(highlight=False, soft_wrap=True)

router_app = typer.Typer(help="The built-in router (the data plane): run it in the foreground, stop or inspect it.",
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
    from releasegate.spec.models import BuiltinRouter

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


@router_app.command("stop")
def router_stop(name: Service, state_dir: StateDir = None) -> None:
    """Stop the service's router (traffic stops: for maintenance; `releasegate down` takes a service down)."""
    from releasegate.providers.routers.builtin import stop_router

    stopped = stop_router(_where(state_dir), name, 10.0)
    out.print(f"router for {name} stopped" if stopped else f"no router is running for {name}")


@router_app.command("status")
def router_status(name: Annotated[str | None, typer.Argument(metavar="SERVICE",
                                                             help="Service; all when omitted.")] = None,
                  state_dir: StateDir = None) -> None:
    """Is the router up, where does it listen, and which routes does it apply."""
    from releasegate.progress import render_router_status

    render_router_status(out, _where(state_dir), name)
