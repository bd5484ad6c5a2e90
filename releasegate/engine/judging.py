"""The sequential judge inside a rollout (``analysis.judge``, docs/judge.md): pure, like the rest of the engine.

At every analysis interval of a canary step the controller hands over what each side served since its last look
(``Observation.judge``: the canary's and the reference's requests, 5xx errors and latency histogram, and each
PromQL metric per side); the reference is the baseline when one runs beside the canary (``analysis.baseline``),
else the previous version. The judge's whole state is kept in ``RolloutState.judge`` (a few hundred bytes of JSON),
so a resumed controller continues the same test: its guarantee holds over the whole rollout, whatever the number
of looks, steps or restarts.

What the verdict does (``decide``): ``regression`` rolls back at once, straight to 0 % (the evidence is already
conclusive; the staircase's stairs are judged by the threshold rules, which a judge-only spec may not have);
a step closes only on ``pass``; until then it is extended, up to ``max_extension`` past its pause, and then
pauses for an operator: never promoted on missing evidence.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from releasegate.durations import format_duration
from releasegate.engine.state import RolloutState
from releasegate.router.stats import dense
from releasegate.spec.analysis import Judge as JudgeSpec
from releasegate.spec.models import Spec

if TYPE_CHECKING:  # numpy costs 0.1 s to import: only a rollout with a judge pays it, not every command
    from releasegate.judge import MetricConfig, Traffic, Verdict


def configs(spec: JudgeSpec) -> list[MetricConfig]:
    from releasegate.judge import MetricConfig

    return [MetricConfig(m.metric, m.max_increase, m.direction, name=f"prometheus {i}" if m.query else "")
            for i, m in enumerate(spec.metrics)]


def reference(st: RolloutState) -> str | None:
    """What the canary is compared with: its baseline while one runs, else the previous version."""
    return st.baseline if st.baseline is not None and st.baseline_up and not st.baseline_lost else st.previous


def judge(st: RolloutState, spec: Spec, data: dict[str, Any] | None) -> tuple[RolloutState, Verdict | None]:
    """Fold one interval (``data``, None: nothing new this interval) into the rollout's judge; the verdict."""
    j = spec.analysis.judge
    if j is None or st.phase != "step":
        return st, None
    from releasegate.judge import Judge, JudgeState

    seed = zlib.crc32(st.id.encode())  # the pairs drawn for errors: the same for the same rollout, resumed or not
    made = (Judge.restore(configs(j), [JudgeState.model_validate(st.judge)], j.alpha, j.min_block, seed=seed)
            if st.judge else Judge(configs(j), j.alpha, j.min_block, seed=seed))
    verdict = made.update(_traffic(spec, data)).one()
    return st.model_copy(update={"judge": made.state().model_dump(mode="json"), "judged": shown(verdict)}), verdict


def _traffic(spec: Spec, data: dict[str, Any] | None) -> Traffic:
    import numpy as np

    from releasegate.judge import Traffic

    def side(name: str) -> tuple[float, float, Any]:
        got = (data or {}).get(name) or {}
        hist = np.array([dense(got.get("hist") or {})], dtype=float)
        return float(got.get("requests") or 0), float(got.get("errors") or 0), hist

    (cr, ce, ch), (br, be, bh) = side("canary"), side("reference")
    proms = [(np.array([_num(c)]), np.array([_num(b)])) for c, b in ((data or {}).get("prometheus") or [])]
    wanted = sum(1 for m in (spec.analysis.judge.metrics if spec.analysis.judge else []) if m.query)
    proms += [(np.array([np.nan]), np.array([np.nan]))] * max(0, wanted - len(proms))
    return Traffic(np.array([cr]), np.array([br]), np.array([ce]), np.array([be]), ch, bh, proms)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")


def shown(verdict: Verdict) -> dict[str, Any]:
    """The verdict as recorded with a decision (``data.judge``): small, and every number a person would ask for."""
    return {"outcome": verdict.outcome, "more_canary_requests": verdict.more_canary_requests,
            "metrics": [{"metric": m.metric, "evalue": round(m.evalue, 4), "threshold": round(m.threshold, 2),
                         "lo": round(m.lo, 6), "hi": round(m.hi, 6), "margin": m.theta0,
                         "estimate": None if m.estimate is None else round(m.estimate, 6),
                         "canary_requests": m.canary_requests, "baseline_requests": m.baseline_requests,
                         "more": m.more}
                        for m in verdict.metrics]}


def regression_reason(st: RolloutState, spec: Spec, verdict: Verdict) -> str:
    j = spec.analysis.judge
    i, worst = max(enumerate(verdict.metrics), key=lambda im: im[1].evalue)
    margin = j.metrics[i].max_increase if j is not None and i < len(j.metrics) else worst.theta0
    return (f"judge: {st.version} is worse than {reference(st)} beyond the margin on {worst.metric} at "
            f"{st.weight}% (evidence {worst.evalue:.3g} >= {worst.threshold:.3g}; {_between(worst, margin)}; "
            f"{worst.canary_requests} canary and {worst.baseline_requests} "
            f"{'baseline' if st.baseline else 'previous-version'} requests); straight to 0%")


def waiting_reason(st: RolloutState, spec: Spec, verdict: Verdict | None, until: float,
                   missing: str | None = None) -> str:
    """Why a step whose pause is over does not close yet, and until when it may be extended; ``missing``: why
    this interval's counts did not reach the judge."""
    j = spec.analysis.judge
    pairs = list(zip(verdict.metrics, j.metrics, strict=False)) if verdict is not None and j is not None else []
    what = "; ".join(f"{_named(m, conf.max_increase)} {_interval(m)} not yet below {_bound(m)}"
                     for m, conf in pairs if m.hi >= m.theta0) or "no comparison of canary and reference yet"
    more = (f"; about {verdict.more_canary_requests:,} more requests to {st.version} needed (an estimate)"
            if verdict is not None and verdict.more_canary_requests else "")
    more += f"; no counts for the judge in this interval: {missing}" if missing else ""
    return (f"judge: cannot yet rule out a regression larger than the margins ({what}){more}; step "
            f"{st.step + 1} extended until it can, at most {format_duration(round(until - st.phase_started))} "
            "after it started")


def paused_reason(st: RolloutState, spec: Spec, verdict: Verdict | None, missing: str | None = None) -> str:
    j = spec.analysis.judge
    extension = format_duration(j.max_extension) if j is not None else "0s"
    why = f" (no counts for the judge in the last interval: {missing})" if missing else ""
    return (f"paused at {st.weight}%: the judge could not rule out a regression larger than the margins within "
            f"the step's pause plus max_extension {extension}{why}; `releasegate promote {st.service}` goes on without "
            f"that evidence, `releasegate rollback {st.service}` takes {st.version} to 0%")


UNITS = {"error_rate": "points", "latency": "share", "prometheus": "relative"}
"""What a metric's estimate, interval and margin measure in ``status`` (docs/cli.md#rolloutjudge)."""


def figures(st: RolloutState, spec: Spec) -> dict[str, Any] | None:
    """The judge's figures for ``status`` (its documented ``rollout.judge``): the latest verdict per metric with
    what it means for this step (passing, not yet ruled out and what a pass would still take, regression); None
    when the rollout is not at a judged step or the judge has not spoken yet."""
    j = spec.analysis.judge
    if j is None or st.phase != "step" or not st.judged:
        return None
    metrics = [_figures(m, conf.metric, conf.max_increase, conf.direction)
               for m, conf in zip(st.judged["metrics"], j.metrics, strict=False)]
    return {"outcome": st.judged["outcome"], "reference": reference(st), "alpha": j.alpha,
            "more_canary_requests": st.judged.get("more_canary_requests"), "metrics": metrics}


def _figures(m: dict[str, Any], kind: str, max_increase: float, direction: str) -> dict[str, Any]:
    """One metric's figures; for prometheus its counts are the intervals that gave a value, not requests."""
    est, hi, margin, used = m.get("estimate"), float(m["hi"]), float(m["margin"]), int(m["canary_requests"])
    more: int | None = None
    if m["evalue"] >= m["threshold"]:
        verdict = "regression"
    elif hi < margin:
        verdict = "passing"
    else:
        verdict, more = "not_ruled_out", m.get("more")  # the judge's own estimate (Judge.update)
    return {"metric": m["metric"], "kind": kind, "unit": UNITS[kind], "max_increase": max_increase,
            "direction": direction, "estimate": est, "lo": m["lo"], "hi": m["hi"], "margin": margin,
            "evalue": m["evalue"], "threshold": m["threshold"], "verdict": verdict,
            "more_canary_requests": None if kind == "prometheus" else more,
            "more_intervals": more if kind == "prometheus" else None,
            "canary_requests": used, "baseline_requests": m["baseline_requests"]}


def _interval(m: Any) -> str:
    return f"interval [{m.lo:.4g}, {m.hi:.4g}]"


def _slower(max_increase: float) -> str:
    """What latency's interval is of: not a relative difference but the share of request pairs in which the
    canary is slower than (1 + margin) x the baseline, bounded by 1/2 (docs/judge.md). Said so, or a reader
    takes its 0.5 for a 50 % margin."""
    return f"share of request pairs with the canary slower than {1 + max_increase:g}x the baseline"


def _named(m: Any, max_increase: float) -> str:
    return f"latency ({_slower(max_increase)})" if m.metric == "latency" else str(m.metric)


def _between(m: Any, max_increase: float) -> str:
    if m.metric == "latency":
        return f"{_slower(max_increase)} {_interval(m)}, bound 1/2"
    return f"{_interval(m)}, margin {m.theta0:g}"


def _bound(m: Any) -> str:
    return "1/2" if m.metric == "latency" else f"its margin {m.theta0:g}"


__all__ = ["UNITS", "configs", "figures", "judge", "paused_reason", "reference", "regression_reason", "shown",
           "waiting_reason"]
