"""``GET /api/v1/dora``: the DORA delivery metrics (docs/dora.md), as ``releasegate dora --json`` prints them.

A viewer sees the services its token covers: a token for ``shop-*`` gets the groups and totals of those services
only, so the totals never leak how often other teams deploy or fail.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from releasegate.server.auth import allowed, need, require
from releasegate.store.server import Grant

router = APIRouter()


class Spread(BaseModel):
    count: int
    median_seconds: float | None
    p90_seconds: float | None
    band: str | None


class LeadTime(Spread):
    unknown: int


class Restore(Spread):
    not_restored: int


class DoraGroup(BaseModel):
    service: str
    env: str
    deployments: int
    deployments_per_day: float
    deployment_frequency_band: str | None
    stopped_before_traffic: int
    change_failures: int
    change_failure_rate: float | None
    change_failure_band: str | None
    lead_time: LeadTime
    time_to_restore: Restore


class DoraReport(BaseModel):
    since: float
    until: float
    window_seconds: float
    groups: list[DoraGroup]
    total: DoraGroup


@router.get("/dora", tags=["metrics"], response_model=DoraReport)
def dora(request: Request, grant: Grant = Depends(need("viewer")),
         since: str = Query("90d", description="A duration back from now (90d) or an ISO 8601 time."),
         window: str = Query("24h", description="A rollback or hotfix this long after a promotion makes it a "
                                                "failed change."),
         service: str | None = Query(None, description="Only this service."),
         env: str | None = Query(None, description="Only this environment.")) -> Any:
    """Deployment frequency, lead time, change failure rate and time to restore per service and env (viewer)."""
    from releasegate.commands.dora import period
    from releasegate.dora import read_deploys, report

    if service is not None:
        require(grant, "viewer", service)
    now = time.time()
    start, seconds = period(since, window, now)
    deploys = [d for d in read_deploys(request.app.state.state_dir, start, service, env)
               if allowed(grant, "viewer", d.service)]
    return report(deploys, start, now, seconds)


__all__ = ["router"]
