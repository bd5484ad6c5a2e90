"""How traffic leaves a failed version: the seeds' staircase (100 -> 50 -> 10 -> 0 %) or at once."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from releasegate.spec.common import Duration
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError


class Rollback(_Model):
    """How traffic leaves a failed version: at once, or down a staircase that lets caches and pools adjust."""

    mode: Literal["staircase", "immediate"] | None = Field(
        None, description="staircase or immediate; default: immediate for tier critical, else staircase.")
    staircase: list[int] = Field(default_factory=lambda: [50, 10, 0],
                                 description="Weights the new version steps down through, ending at 0.")
    step_wait: Duration = Field(300.0, description="Time between staircase steps.")
    on_alerts: list[str] = Field(default_factory=list, description="Alertmanager alert names that roll the rollout "
                                 "back (releasegate receive-alerts).")

    @field_validator("staircase")
    @classmethod
    def _staircase(cls, v: list[int]) -> list[int]:
        if not v or v[-1] != 0:
            raise LocatedValueError("the staircase must end at 0, e.g. [50, 10, 0]",
                                    at=(len(v) - 1,) if v else ())
        for i, w in enumerate(v):
            if not 0 <= w <= 100:
                raise LocatedValueError(f"staircase weight {w} is outside 0-100", at=(i,))
            if i and w >= v[i - 1]:
                raise LocatedValueError(f"staircase weights must decrease: {w} follows {v[i - 1]}", at=(i,))
        return v
