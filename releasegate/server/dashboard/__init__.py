"""The browser dashboard served by ``releasegate server`` at ``/`` (docs/dashboard.md).

``mount(app)`` is the one hook ``create_app`` calls: the dashboard's routes and its session store. Everything it
shows comes from the same store and role checks as the API; everything it serves (templates, script, styles,
uPlot) is in this package.
"""

from __future__ import annotations

from fastapi import FastAPI

from releasegate.server.dashboard.sessions import Sessions


def mount(app: FastAPI) -> None:
    from releasegate.server.dashboard.releases import router as releases
    from releasegate.server.dashboard.routes import OVERVIEW_POLL, router
    from releasegate.server.dashboard.views import Overview

    app.state.sessions = Sessions()
    app.state.overview = Overview(app.state.state_dir, OVERVIEW_POLL)
    app.include_router(router)
    app.include_router(releases)  # the release list, release pages and their forms, the calendar page


__all__ = ["mount"]
