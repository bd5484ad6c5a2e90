"""``releasegate metrics``: the controller metrics exporter in the foreground.

It serves ``GET /metrics`` (the Prometheus text format) from releasegate.metrics_exporter, which reads the state
dir's store on every scrape; it never writes anything, so it can run beside any number of controllers, or none,
and be restarted at will. The router's own ``/metrics`` (traffic per version) is separate: it lives on the
router's admin address.

What it serves names every service, version and rollout: on an address other than loopback it refuses to start
without a secret (``--secret-env``/``--secret-file``), which scrapes then send as ``Authorization: Bearer``
(Prometheus: ``authorization: {credentials_file: ...}``). ``/healthz`` stays open for probes.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from releasegate.commands import listen_address, reported
from releasegate.commands.alerts_receiver import SecretEnv, SecretFile, read_secret, require_secret_off_loopback
from releasegate.commands.approvals import StateDir, state_dir_of
from releasegate.router.config import join_host_port
from releasegate.store.db import has_store

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

def metrics(
        listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT",
                                            help="Where Prometheus scrapes /metrics.")] = "127.0.0.1:9108",
        secret_env: SecretEnv = None,
        secret_file: SecretFile = None,
        state_dir: StateDir = None) -> None:
    """Serve the controllers' metrics for Prometheus: rollout phases, weights, decisions, rollbacks, outcomes.

    Runs in the foreground until interrupted.

    Each scrape reads the state dir's store (read-only): every rollout there shows, whichever process drives it.
    A --listen address other than loopback needs --secret-env or --secret-file."""
    with reported():
        where = state_dir_of(state_dir)
        host, port = listen_address(listen)
        secret = read_secret(secret_env, secret_file, "metrics")
        require_secret_off_loopback("metrics (read every rollout)", listen, host, secret)
        from releasegate.metrics_http import bind

        server = bind(where, host, port, secret)
        bound = join_host_port(host, int(server.server_address[1]))
        if not has_store(where):
            err.print(f"releasegate: warning: no store in {where} yet (releasegate_store_up is 0 until a deploy "
                      "creates it); is --state-dir right?", markup=False)
        auth = "; bearer secret required" if secret else ""
        out.print(f"serving controller metrics on http://{bound}/metrics (state {where}{auth}); Ctrl-C stops",
                  markup=False)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            out.print("metrics stopped", markup=False)
        finally:
            server.server_close()
