"""``releasegate receive-alerts``: the Alertmanager webhook receiver in the foreground.

It queues rollbacks for the controllers running rollouts (see releasegate.alert_receiver); it never moves
traffic itself, so it can run anywhere the state dir is reachable and be restarted at will.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from releasegate.commands import listen_address, reported
from releasegate.commands.approvals import StateDir, state_dir_of
from releasegate.errors import UserError
from releasegate.router.config import join_host_port

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SecretEnv = Annotated[str | None, typer.Option("--secret-env", metavar="NAME", show_default=False,
                                               help="Require Authorization: Bearer <the value of this "
                                                    "environment variable>.")]
SecretFile = Annotated[Path | None, typer.Option("--secret-file", metavar="FILE", show_default=False,
                                                 help="Require Authorization: Bearer <this file's content>.")]


def is_loopback(host: str) -> bool:
    """Only this machine can connect (127.0.0.0/8, ::1, localhost); a name or a wildcard address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_secret_off_loopback(command: str, listen: str, host: str, secret: str | None) -> None:
    """A listener other machines can reach must check a secret: refuse to start without one (one line)."""
    if secret is None and not is_loopback(host):
        raise UserError(f"--listen {listen}: not a loopback address, so anyone who can reach it could use {command}; "
                        "give --secret-env NAME or --secret-file FILE (clients send Authorization: Bearer <secret>) "
                        "or listen on 127.0.0.1")


def read_secret(secret_env: str | None, secret_file: Path | None, command: str = "receive-alerts") -> str | None:
    """The shared secret clients send as ``Authorization: Bearer``; None when neither option is given.

    From an environment variable or a file, never the command line, so it does not show in ``ps``."""
    if secret_env and secret_file:
        raise UserError(f"{command}: give --secret-env or --secret-file, not both")
    if secret_env:
        value = os.environ.get(secret_env, "").strip()
        if not value:
            raise UserError(f"--secret-env {secret_env}: the environment variable is unset or empty; export the "
                            "secret Alertmanager sends (http_config.authorization.credentials)")
        return value
    if secret_file:
        try:
            value = secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--secret-file {secret_file}: cannot read it ({exc.strerror or exc})") from None
        if not value:
            raise UserError(f"--secret-file {secret_file}: the file is empty; write the secret Alertmanager sends")
        return value
    return None


def receive_alerts(
        listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT",
                                            help="Where Alertmanager's webhook_configs url points.")]
        = "127.0.0.1:9095",
        secret_env: SecretEnv = None,
        secret_file: SecretFile = None,
        state_dir: StateDir = None) -> None:
    """Receive Alertmanager webhooks: a firing alert listed in a rollout's rollback.on_alerts rolls it back.

    Runs in the foreground until interrupted. Every alert is audited.

    A --listen address other than loopback needs --secret-env or --secret-file.

    The alert's `service` label names the service; the rollback is queued as `releasegate rollback` queues it."""
    from releasegate.alert_receiver import serve

    with reported():
        where = state_dir_of(state_dir)
        host, port = listen_address(listen)
        secret = read_secret(secret_env, secret_file)
        require_secret_off_loopback("receive-alerts (roll back rollouts)", listen, host, secret)

        def ready(bound_host: str, bound_port: int) -> None:
            auth = "bearer secret required" if secret else "no secret"
            out.print(f"receiving Alertmanager webhooks on http://{join_host_port(bound_host, bound_port)}/ "
                      f"({auth}; state {where}; controller metrics at /metrics); Ctrl-C stops", markup=False)

        try:
            asyncio.run(serve(where, host, port, secret, log=lambda line: out.print(line, markup=False),
                              ready=ready))
        except KeyboardInterrupt:
            out.print("receive-alerts stopped", markup=False)
