"""How traffic leaves a failed version: the MegaCity staircase (100 -> 50 -> 10 -> 0 %, each stair held while
errors persist: 5 minutes at 50 %, 10 at 10 %) or at once."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from releasegate.spec.common import Duration
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError

PERCENT_JSON_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "number"},
    {"type": "string", "pattern": r"^\s*\d+(?:\.\d+)?\s*%\s*$", "description": "A percentage, e.g. 50%."},
]}


def _fraction(value: object) -> object:
    """0.5 or '50%' -> 0.5; None stays None (the check is switched off)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"expected a percentage such as 50%, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a fraction such as 0.5 or a percentage such as 50%, got {value!r}")
    return float(value)


Fraction = Annotated[float, BeforeValidator(_fraction), WithJsonSchema(PERCENT_JSON_SCHEMA)]
"""A share written 0.5 or 50%."""


class Stair(_Model):
    """One stair of the rollback staircase: the new version's weight, and how long errors must persist there
    before traffic steps down to the next stair."""

    weight: int = Field(ge=0, le=99, description="Percent of traffic left on the new version on this stair, below "
                        "100: the staircase starts from the weight the new version had when the rollback began.")
    wait: Duration | None = Field(None, description="How long errors must persist at this weight before the "
                                  "next stair down; default: rollback.step_wait. The last stair (0) has none.")

    @field_validator("weight", mode="before")
    @classmethod
    def _below_100(cls, v: object) -> object:
        if v == 100 and not isinstance(v, bool):
            raise ValueError("a stair at 100% has no effect: the rollback starts from the weight the new version "
                             "has (100% once promoted) and steps down from there; remove it, e.g. [50, 10, 0]")
        return v

    @field_validator("wait")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("a stair's wait must be longer than 0, e.g. 5m")
        return v


def _seed_staircase() -> list[Stair]:
    return [Stair.model_validate(s) for s in ({"weight": 50, "wait": "5m"}, {"weight": 10, "wait": "10m"},
                                              {"weight": 0})]


def _stair_or_weight(schema: dict[str, Any]) -> None:
    """In the JSON Schema, an item is a stair mapping or a plain weight (which waits step_wait)."""
    schema["items"] = {"anyOf": [schema["items"], {"type": "integer", "minimum": 0, "maximum": 99}]}


class Rollback(_Model):
    """How traffic leaves a failed version: at once, or down a staircase that holds each stair while errors
    persist, and pauses for an operator at the stair where they stop."""

    mode: Literal["staircase", "immediate"] | None = Field(
        None, description="staircase or immediate; default: immediate for tier critical, else staircase.")
    staircase: list[Stair] = Field(
        default_factory=_seed_staircase, json_schema_extra=_stair_or_weight,
        description="Weights the new version steps down through, ending at 0: {weight: 50, wait: 5m}, or a "
                    "plain weight that waits step_wait. Default: the seed's 50 % for 5m, 10 % for 10m, 0.")
    step_wait: Duration = Field(300.0, description="The wait of a stair written as a plain weight (and of "
                                "every default stair when step_wait is set and staircase is not).")
    rising: Fraction | None = Field(
        0.5, description="Straight to 0 % when the breaching metric over the stair so far is this much worse "
        "(relative) than the value that started the rollback; null: never.")
    immediate_error_rate: Fraction | None = Field(
        0.5, description="Straight to 0 % at once, skipping the staircase, when the new version's "
        "error rate is above this (e.g. 50%); null: never.")
    on_alerts: list[str] = Field(default_factory=list, description="Alertmanager alert names that roll the rollout "
                                 "back (releasegate receive-alerts).")

    @field_validator("step_wait")
    @classmethod
    def _step_wait(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("step_wait must be longer than 0, e.g. 5m")
        return v

    @field_validator("rising")
    @classmethod
    def _rising(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("rising must be above 0, e.g. 50% (or null: never cut the staircase short)")
        return v

    @field_validator("immediate_error_rate")
    @classmethod
    def _immediate(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 1:
            raise ValueError("immediate_error_rate is an error rate above 0 and at most 100%, e.g. 50% "
                             "(or null: always use the staircase)")
        return v

    @field_validator("staircase", mode="before")
    @classmethod
    def _entries(cls, v: object) -> object:
        """A plain weight is a stair without a wait of its own."""
        if not isinstance(v, list):
            return v
        out: list[object] = []
        for i, item in enumerate(v):
            if isinstance(item, int) and not isinstance(item, bool):
                out.append({"weight": item})  # errors about it land on the item itself: it has no weight key
            elif isinstance(item, dict | Stair):
                out.append(item)
            else:
                raise LocatedValueError(f"staircase entry {item!r}: write a weight (10) or a stair "
                                        "({weight: 10, wait: 10m})", at=(i,))
        return out

    @field_validator("staircase")
    @classmethod
    def _staircase(cls, v: list[Stair]) -> list[Stair]:
        if not v or v[-1].weight != 0:
            raise LocatedValueError("the staircase must end at 0, e.g. [50, 10, 0]",
                                    at=(len(v) - 1,) if v else ())
        for i, stair in enumerate(v):
            if i and stair.weight >= v[i - 1].weight:
                raise LocatedValueError(f"staircase weights must decrease: {stair.weight} follows "
                                        f"{v[i - 1].weight}", at=(i,))
        if v[-1].wait is not None:
            raise LocatedValueError("the last stair (0 %) has no wait: at 0 % the new version is stopped",
                                    at=(len(v) - 1, "wait"))
        return v

    @model_validator(mode="after")
    def _plain_waits(self) -> Rollback:
        """``step_wait`` set without a staircase: the seed's stairs, each waiting step_wait."""
        if "step_wait" in self.model_fields_set and "staircase" not in self.model_fields_set:
            object.__setattr__(self, "staircase", [Stair(weight=s.weight) for s in self.staircase])
        return self

    def custom_staircase(self) -> bool:
        """Whether the staircase differs from the default one (the seed's, or its weights with step_wait).
        By value, not by the keys written: a stored spec (JSON with every key) must validate again."""
        seed = _seed_staircase()
        return self.staircase not in (seed, [Stair(weight=s.weight) for s in seed])

    def staircase_only_settings(self) -> list[str]:
        """The keys that only shape a staircase and differ from their defaults (by value, as above), so that
        ``mode: immediate`` next to them is refused rather than silently ignoring them."""
        defaults = {name: Rollback.model_fields[name].default for name in ("step_wait", "rising",
                                                                         "immediate_error_rate")}
        return [name for name, default in defaults.items() if getattr(self, name) != default]

    @property
    def weights(self) -> list[int]:
        return [s.weight for s in self.staircase]

    def wait_at(self, weight: int) -> float:
        """How long the stair at ``weight`` waits for errors to persist (step_wait for a plain weight)."""
        stair = next((s for s in self.staircase if s.weight == weight), None)
        return stair.wait if stair is not None and stair.wait is not None else self.step_wait
