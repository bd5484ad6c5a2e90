"""How traffic moves to the new version: canary steps, a blue-green switch (with an optional ramp), or rolling
batches. The seeds' canary (5 -> 25 -> 50 % watched 10/10/30 minutes) is the default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from releasegate.spec.common import Duration
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError


class Step(_Model):
    """One traffic split: the new version gets `weight` percent, then analysis runs for `pause`."""

    weight: int = Field(ge=1, le=100, description="Percent of traffic on the new version during this step.")
    pause: Duration | None = Field(None, description="Analysis time at this weight; omitted: wait for "
                                   "`releasegate promote`.")


def _increasing(steps: list[Step]) -> list[Step]:
    for i in range(1, len(steps)):
        if steps[i].weight <= steps[i - 1].weight:
            raise LocatedValueError(f"step weights must increase: step {i + 1} ({steps[i].weight}%) is not "
                                    f"above step {i} ({steps[i - 1].weight}%)", at=(i, "weight"))
    return steps


def _seed_canary_steps() -> list[Step]:
    return [Step.model_validate({"weight": w, "pause": p}) for w, p in ((5, "10m"), (25, "10m"), (50, "30m"))]


class Canary(_Model):
    """Shift a growing share of traffic to the new version, analysing each step before the next."""

    steps: list[Step] = Field(default_factory=_seed_canary_steps, description="Weights and pauses before 100 %.")
    keep_previous: Duration = Field(86400.0, description="Keep the previous version up this long after promotion.")

    _check = field_validator("steps")(classmethod(lambda cls, v: _increasing(v)))


class BlueGreen(_Model):
    """Bring up the full new version beside the old, then switch traffic (optionally through a short ramp)."""

    ramp: list[Step] = Field(default_factory=list, description="Optional steps before the switch to 100 %.")
    keep_previous: Duration = Field(86400.0, description="Keep blue up this long; `rollback` switches back.")

    _check = field_validator("ramp")(classmethod(lambda cls, v: _increasing(v)))


class Rolling(_Model):
    """Replace instances in batches; traffic follows the instance counts."""

    max_unavailable: int = Field(1, ge=0, description="Instances that may be out of service at once (hosts, on "
                                 "platform kind ssh).")
    max_surge: int = Field(1, ge=0, description="Extra instances that may run above the target count (hosts, on "
                           "platform kind ssh).")
    pause: Duration = Field(0.0, description="Analysis time after each batch.")

    @model_validator(mode="after")
    def _progress(self) -> Rolling:
        if self.max_unavailable == 0 and self.max_surge == 0:
            raise LocatedValueError("max_unavailable and max_surge cannot both be 0: the rollout could never "
                                    "replace an instance; set max_surge: 1", at=("max_surge",))
        return self


class Strategy(_Model):
    """Exactly one of canary, bluegreen or rolling."""

    canary: Canary | None = Field(None, description="Progressive traffic shift in steps.")
    bluegreen: BlueGreen | None = Field(None, description="Full new version beside the old, then a switch.")
    rolling: Rolling | None = Field(None, description="Instance-by-instance replacement.")

    @model_validator(mode="before")
    @classmethod
    def _empty_choice(cls, data: object) -> object:
        """`canary:` with nothing after it reads as null, which would otherwise look like no strategy."""
        names = ("canary", "bluegreen", "rolling")
        if isinstance(data, dict) and all(data.get(n) is None for n in names):
            for name in names:
                if name in data:
                    raise LocatedValueError(
                        f"{name} has no settings; write '{name}: {{}}' to use its defaults", at=(name,))
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Strategy:
        chosen = [n for n in ("canary", "bluegreen", "rolling") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise LocatedValueError("choose exactly one strategy: canary, bluegreen or rolling"
                                    + (f" (found {', '.join(chosen)})" if chosen else ""),
                                    at=(chosen[1],) if len(chosen) > 1 else ())
        return self

    @property
    def kind(self) -> Literal["canary", "bluegreen", "rolling"]:
        if self.canary is not None:
            return "canary"
        return "bluegreen" if self.bluegreen is not None else "rolling"

    @property
    def steps(self) -> list[Step]:
        """The traffic steps before 100 % (empty for rolling, whose traffic follows instance counts)."""
        if self.canary is not None:
            return list(self.canary.steps)
        if self.bluegreen is not None:
            return list(self.bluegreen.ramp)
        return []

    @property
    def keep_previous(self) -> float:
        if self.canary is not None:
            return self.canary.keep_previous
        return self.bluegreen.keep_previous if self.bluegreen is not None else 0.0
