"""The ``releasegate`` commands beyond the rollout ones (releasegate/cli.py): governance, integrations, the server,
one module per area in this package, mounted on the CLI's app here so cli.py stays the rollouts' shell.
"""

from __future__ import annotations

import typer

from releasegate.clihelp import INTEGRATIONS, ROLLOUTS


def mount(app: typer.Typer) -> None:
    """Add every command that lives here to ``app`` (the rollout commands are in releasegate/cli.py)."""
    from releasegate.commands.alerts_receiver import receive_alerts
    from releasegate.commands.approvals import approvals, approve, reject, release_new, token_app, withdraw
    from releasegate.commands.audit import audit_app
    from releasegate.commands.calendar import calendar_app
    from releasegate.commands.dora import dora
    from releasegate.commands.integrations import alerts, grafana, schema
    from releasegate.commands.metrics import metrics
    from releasegate.commands.migrations import migrations_app
    from releasegate.commands.policy import policy_app
    from releasegate.commands.release import notes_command, release_app, version_app
    from releasegate.commands.report import report
    from releasegate.commands.server import server

    release_app.command("new")(release_new)
    app.add_typer(release_app, name="release", help="Cut releases and register them for approval.")
    app.add_typer(version_app, name="version", help="Compute the next version from git history.")
    app.command("notes")(notes_command)
    app.add_typer(policy_app, name="policy", help="The approval policy in force: apply (admins), show, history.")
    app.add_typer(calendar_app, name="calendar", help="Change freezes and deploy windows: apply (admins), check, "
                                                      "show, upcoming, history.")
    for command in (approve, reject, withdraw, approvals):
        app.command()(command)
    app.add_typer(token_app, name="token", help="Issue a token for --as or the server (printed once, kept hashed).")
    app.add_typer(audit_app, name="audit", help="Verify or export the hash-chained audit log.")
    app.add_typer(migrations_app, name="migrations", help="Check migrations survive an application rollback.")
    app.command("receive-alerts")(receive_alerts)
    app.command("metrics")(metrics)
    app.command("dora")(dora)
    app.command(rich_help_panel=INTEGRATIONS)(schema)
    app.command(rich_help_panel=INTEGRATIONS)(alerts)
    app.command(rich_help_panel=INTEGRATIONS)(grafana)
    app.command("server", rich_help_panel=INTEGRATIONS)(server)
    app.command("report", rich_help_panel=ROLLOUTS)(report)
