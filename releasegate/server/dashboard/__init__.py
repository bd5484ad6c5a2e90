"""The browser dashboard served by ``releasegate server`` at ``/`` (docs/dashboard.md).

``mount(app)`` is the one hook ``create_app`` calls: the dashboard's routes and its session store. Everything it
shows comes from the same store and role checks as the API; everything it serves (templates, script, styles,
uPlot) is in this package.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from releasegate.server.dashboard.sessions import Sessions


def mount(app: FastAPI) -> None:
    from releasegate.server.dashboard.releases import router as releases
    from releasegate.server.dashboard.routes import OVERVIEW_POLL, router
    from releasegate.server.dashboard.views import Overview

    app.state.sessions = Sessions()
    app.state.overview = Overview(app.state.state_dir, OVERVIEW_POLL)
    dashboard = APIRouter(include_in_schema=False)  # one router for the app: the pages, and the release pages
    dashboard.include_router(router)
    dashboard.include_router(releases)
    app.include_router(dashboard)


__all__ = ["mount"]
