"""The CLI as a client of ``releasegate server``: when ``RELEASEGATE_SERVER`` (or ``--server URL``) is set.

``deploy``, ``resume``, ``status``, ``history``, ``promote``, ``abort``, ``rollback``, ``validate``, ``approve`` and
``reject`` (and ``report`` from releasegate.commands.report; from releasegate.client_governance, ``approvals``,
``withdraw``, ``audit``, ``policy``, ``calendar``, ``token new`` and ``dora``) send their request to the server with
``RELEASEGATE_TOKEN`` as the bearer token, print what the standalone command prints (``status`` and ``history``
render the same JSON shapes with the same code) and exit with the same codes: 0 promoted or done, 2 refused or
invalid (the server's problem+json ``detail``, one line), 3 rolled back or aborted, 1 the server unreachable or
an internal error. ``deploy`` sends the spec's text and follows the rollout's events until it ends; Ctrl-C detaches
(exit 130) and the rollout goes on in the server. Other commands refuse in one line rather than silently working
on a local store the server does not use. ``--as`` is refused: the token says who acts, and the server records
that user.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from releasegate.errors import EXIT_INTERNAL, EXIT_OK, EXIT_ROLLED_BACK, ReleasegateError, UserError

SERVER_ENV = "RELEASEGATE_SERVER"
SUPPORTED = ("deploy", "resume", "status", "history", "promote", "abort", "rollback", "validate", "approve", "reject",
             "withdraw", "approvals", "audit", "policy", "calendar", "token", "report", "dora")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
client_app = typer.Typer(name="releasegate", no_args_is_help=True, add_completion=False,
                         pretty_exceptions_enable=False,
                         help=f"releasegate as a client of the server in {SERVER_ENV} (docs/server.md).")


class Unreachable(ReleasegateError):
    """The server cannot be reached: exit 1, one line."""


class _Where:
    url = ""


def split_server(args: list[str]) -> tuple[str | None, list[str]]:
    """(the server URL, the arguments without ``--server URL``): ``--server`` wins over the environment."""
    url = os.environ.get(SERVER_ENV) or None
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--server":
            url = next(it, "")
        elif arg.startswith("--server="):
            url = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return url, rest


def run(url: str, args: list[str]) -> NoReturn:
    """Run ``args`` against the server at ``url``, or refuse a command the client does not offer (exit 2)."""
    from releasegate.clihelp import run_app

    command = next((a for a in args if not a.startswith("-")), None)
    if command is not None and command not in SUPPORTED:
        err.print(f"releasegate: {command}: not available through the server ({SERVER_ENV}={url}); the client "
                  f"offers {', '.join(SUPPORTED)}. Unset {SERVER_ENV} to run it on a local store", markup=False)
        raise SystemExit(2)
    if not url.startswith(("http://", "https://")):
        err.print(f"releasegate: --server {url}: expected a URL such as http://127.0.0.1:8700", markup=False)
        raise SystemExit(2)
    if any(a == "--as" or a.startswith("--as=") for a in args):
        err.print(f"releasegate: --as: through the server ({SERVER_ENV}={url}) you act as your token's user, whom "
                  "the server records; drop --as (RELEASEGATE_TOKEN says who you are)", markup=False)
        raise SystemExit(2)
    _Where.url = url.rstrip("/")
    from releasegate import client_governance
    from releasegate.commands.report import mount_client

    client_governance.mount(client_app)
    mount_client(client_app)
    run_app(client_app, args)


def call(method: str, path: str, *, absent_ok: bool = False, **kw: Any) -> Any:
    """The server's answer to one request (JSON, or text), or a refusal as the server's one-line ``detail``;
    ``absent_ok``: None for a 404 (a document not stored yet)."""
    return _call(method, path, absent_ok=absent_ok, **kw)


def where() -> str:
    return _Where.url


def _call(method: str, path: str, *, absent_ok: bool = False, **kw: Any) -> Any:
    token = os.environ.get("RELEASEGATE_TOKEN")
    if not token:
        raise UserError(f"{SERVER_ENV} is set: put your server token in RELEASEGATE_TOKEN (an admin makes one with "
                        "`releasegate token new NAME --role ROLE`)")
    try:
        with httpx.Client(base_url=_Where.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            answer = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise Unreachable(f"{SERVER_ENV} {_Where.url}: cannot reach the server ({type(exc).__name__}: {exc})") from None
    if answer.status_code == 404 and absent_ok:
        return None
    if answer.status_code >= 400:
        try:
            problem = answer.json()
            lines = [str(problem.get("detail"))] + [str(e) for e in problem.get("errors") or []]
        except (ValueError, AttributeError):
            lines = [f"the server answered {answer.status_code}"]
        error: ReleasegateError = UserError("\n".join(lines)) if answer.status_code < 500 else Unreachable(lines[0])
        raise error
    ctype = answer.headers.get("content-type", "")
    return answer.json() if ctype.startswith("application/json") else answer.text


Name = Annotated[str, typer.Argument(metavar="SERVICE", show_default=False, help="Service name from the spec.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output (documented, stable).")]


@client_app.command()
def status(name: Annotated[str | None, typer.Argument(metavar="SERVICE", show_default=False)] = None,
           as_json: AsJson = False) -> None:
    """What runs, what is rolling out (from the server)."""
    from releasegate.progress import render_status

    data = [_call("GET", f"/api/v1/services/{name}")] if name else _call("GET", "/api/v1/services")
    if as_json:
        out.print_json(json.dumps(data, default=str))
    elif not data:
        out.print(f"no services deployed yet on {_Where.url}", markup=False)
    else:
        render_status(out, data)


@client_app.command()
def history(name: Name, as_json: AsJson = False,
            limit: Annotated[int, typer.Option(metavar="N", help="How many rollouts, newest first.")] = 20) -> None:
    """Past rollouts of a service with every decision (from the server)."""
    from releasegate.progress import render_history

    data = _call("GET", f"/api/v1/services/{name}/history", params={"limit": limit})
    if as_json:
        out.print_json(json.dumps(data, default=str))
    else:
        render_history(out, data)


def _command(name: str, kind: str) -> None:
    answer = _call("POST", f"/api/v1/services/{name}/{kind}")
    out.print(answer["message"], markup=False)


@client_app.command()
def promote(name: Name) -> None:
    """Skip the remaining steps: the new version to 100 %."""
    _command(name, "promote")


@client_app.command()
def abort(name: Name) -> None:
    """Stop the rollout: traffic back to the previous version at once."""
    _command(name, "abort")


@client_app.command()
def rollback(name: Name) -> None:
    """Roll back now (during a rollout like abort; after one, switch back)."""
    _command(name, "rollback")


@client_app.command()
def deploy(spec: Annotated[Path, typer.Argument(metavar="SPEC", show_default=False, help="Release spec (YAML).")],
           version: Annotated[str, typer.Option("--version", "-v", metavar="VERSION", show_default=False)],
           env: Annotated[str, typer.Option(metavar="ENV")] = "prod",
           hotfix: Annotated[bool, typer.Option("--hotfix", show_default=False)] = False,
           break_glass: Annotated[bool, typer.Option("--break-glass", show_default=False,
                                                     help="Emergency change past a freeze or missing stages: needs "
                                                          "--reason and an approval of the policy's "
                                                          "emergency_role; owned by your token's user.")] = False,
           reason: Annotated[str | None, typer.Option(metavar="TEXT", show_default=False,
                                                      help="Why, with --break-glass.")] = None,
           allow_breaking_migration: Annotated[bool, typer.Option(
               "--allow-breaking-migration", show_default=False,
               help="Apply migrations the lint refuses (the release registered with it, and approved since).")]
           = False) -> None:
    """Send the spec to the server, which rolls VERSION out; follow its progress here (Ctrl-C detaches)."""
    from releasegate.spec.release import is_release_file

    if is_release_file(spec):
        raise UserError(f"deploy {spec}: a release file (a group of services) is not deployed through the server "
                        f"yet; unset {SERVER_ENV} to deploy it standalone where the state is (docs/server.md)")
    try:
        created = _call("POST", "/api/v1/rollouts", json={
            "spec_yaml": _text(spec), "version": version, "env": env, "hotfix": hotfix, "break_glass": break_glass,
            "reason": reason, "allow_breaking_migration": allow_breaking_migration})
    except UserError as exc:  # the server names the text it was sent spec.yaml
        raise UserError(str(exc).replace("spec.yaml:", f"{spec}:")) from None
    rid = created["id"]
    out.print(f"rollout {rid} started on {_Where.url}", markup=False)
    _followed(rid, created["service"])


@client_app.command()
def resume(name: Name) -> None:
    """Have the server continue an interrupted rollout; follow its progress here (Ctrl-C detaches)."""
    rid = _call("POST", f"/api/v1/services/{name}/resume")["rollout"]
    out.print(f"rollout {rid} resumed on {_Where.url}", markup=False)
    _followed(rid, name)


def _followed(rid: str, name: str) -> NoReturn:
    try:
        final = _follow(rid)
    except KeyboardInterrupt:
        err.print(f"releasegate: detached; rollout {rid} goes on in the server (`releasegate status {name}` "
                  "follows it)", markup=False)
        raise SystemExit(130) from None
    _summary(final)


@client_app.command()
def validate(spec: Annotated[Path, typer.Argument(metavar="SPEC", show_default=False, help="Release spec (YAML).")]
             ) -> None:
    """Check a spec with the server: FILE:LINE:COL: message for every problem (exit 2), or a summary."""
    answer = _call("POST", "/api/v1/specs/validate", json={"spec_yaml": _text(spec)})
    if not answer["ok"]:
        raise UserError("\n".join(e.replace("spec.yaml", str(spec), 1) for e in answer["errors"]))
    out.print(f"{spec}: ok: {answer['summary']}", markup=False)


def _release(text: str) -> tuple[str, str]:
    from releasegate.governance.approvals import parse_release

    return parse_release(text)


Release = Annotated[str, typer.Argument(metavar="SERVICE@VERSION", show_default=False)]
Stage = Annotated[str, typer.Option("--stage", metavar="ROLE", show_default=False, help="The stage, by its role.")]
Env = Annotated[str, typer.Option("--env", metavar="ENV", help="The environment whose stages are meant.")]


@client_app.command()
def approve(release: Release, stage: Stage, env: Env = "prod",
            check: Annotated[list[str] | None, typer.Option("--check", metavar="ITEM")] = None) -> None:
    """Approve a stage of a release as your token's user."""
    service, version = _release(release)
    signed = _call("POST", f"/api/v1/releases/{service}/{version}/approvals",
                   json={"stage": stage, "env": env, "checks": check or []})
    status = _call("GET", f"/api/v1/releases/{service}/{version}", params={"env": env})
    st = next(s for s in status["stages"] if s["stage"] == signed["stage"])
    done = sum(1 for s in status["stages"] if s["complete"])
    out.print(f"{release}: {signed['user']} approved stage {signed['stage']} for {env} ({len(st['given'])} of "
              f"{st['needed']}); {done} of {len(status['stages'])} stages complete", markup=False)


@client_app.command()
def reject(release: Release, stage: Stage,
           reason: Annotated[str, typer.Option("--reason", metavar="TEXT", show_default=False)],
           env: Env = "prod") -> None:
    """Reject a release at a stage as your token's user."""
    service, version = _release(release)
    signed = _call("POST", f"/api/v1/releases/{service}/{version}/rejections",
                   json={"stage": stage, "reason": reason, "env": env})
    out.print(f"{release}: rejected by {signed['user']} at stage {signed['stage']}; blocked until "
              f"`releasegate withdraw {release}`", markup=False)


def _text(spec: Path) -> str:
    try:
        return spec.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{spec}: cannot read it ({exc.strerror or exc})") from None


def _follow(rollout_id: str) -> dict[str, Any]:
    """Print each event as it comes until the rollout ends (polled every half second)."""
    seen = 0
    while True:
        for event in _call("GET", f"/api/v1/rollouts/{rollout_id}/events", params={"after": seen}):
            seen = max(seen, int(event["seq"]))
            if event["kind"] not in ("intent", "analysis"):
                out.print(f"[dim]{event['kind']:<14}[/] {escape(event['message'])}")
        state: dict[str, Any] = _call("GET", f"/api/v1/rollouts/{rollout_id}")
        if not state["active"]:
            return state
        time.sleep(0.5)


def _summary(st: dict[str, Any]) -> NoReturn:
    from releasegate.progress import _took

    took = _took((st["finished_at"] or st["updated_at"]) - st["created_at"])
    colour = "green" if st["status"] == "promoted" else "red"
    out.print(f"[bold {colour}]{st['service']} {st['version']}: {st['status'].replace('_', ' ')}[/] after {took}: "
              f"{escape(st['reason'] or '')}")
    raise typer.Exit(EXIT_OK if st["status"] == "promoted" else EXIT_ROLLED_BACK if st["status"] in (
        "rolled_back", "aborted") else EXIT_INTERNAL)


__all__ = ["SERVER_ENV", "call", "client_app", "err", "out", "run", "split_server", "where"]
