"""The server's ``GET /api/v1/rollouts/{id}/report`` (routes_rollouts.py keeps only the route): the same report
``releasegate report`` prints, so the dashboard can link it and the CLI in client mode fetches it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import Response

from releasegate.reports.build import build, no_postmortem
from releasegate.reports.render import MEDIA, Format, render
from releasegate.server.problems import Problem
from releasegate.store.sqlite import Store


def report_answer(state_dir: Path, ref: str, fmt: Format, postmortem: bool, allow: Callable[[str], None]) -> Response:
    """``ref``: a rollout id, or a service name for its latest rollout (as the CLI takes it); ``allow`` raises
    403 unless the caller may view that rollout's service. Runs in a worker thread, on its own connection."""
    store = Store(state_dir)
    try:
        rec = store.rollout(ref) or store.latest_rollout(ref)
        if rec is None:
            raise Problem(404, "not-found", f"rollout {ref}: no rollout with this id and no service of this name "
                                            "(GET /api/v1/rollouts lists them)")
        allow(rec.state.service)
        report = build(state_dir, store, rec)
    finally:
        store.close()
    if postmortem and report.postmortem is None:
        raise Problem(409, "conflict", str(no_postmortem(report)).replace("drop --postmortem", "ask without "
                                                                           "postmortem=true"))
    return Response(render(report, fmt, postmortem_only=postmortem), media_type=MEDIA[fmt])
