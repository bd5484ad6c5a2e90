"""The judge: canary against baseline, per metric, one verdict per analysis interval, valid at every look.

Each metric turns its data into bounded observations (``observe``), each with a known range and a margin theta0
that the observations' conditional mean stays under while the canary is no worse than the baseline plus the
margin. ``Sequential`` turns them into an e-value and a confidence sequence. The verdict:

* ``regression`` as soon as any metric's e-value reaches k/alpha (k metrics): by Ville's inequality and a union
  bound, the probability of ever saying so over the whole rollout, while no metric regressed beyond its margin, is
  at most alpha;
* ``pass`` when every metric's confidence sequence (each at level 1 - alpha/k) lies below its margin: the
  probability that a step passes while some metric is worse than its margin is at most alpha as well;
* ``continue`` otherwise, with an estimate of how many more canary requests a pass would need.

Blocks: at low traffic an interval holds 0 or 1 canary request, and an observation needs both versions.
Requests (and errors, latency histograms) are therefore summed into a block until both versions have
``min_block`` requests, and the block then gives its observations: the latency share of one block, or for errors
one observation per matched request pair (see ``_Metric._pairs``). A block ends on request counts alone, never on
outcomes, so which requests form a block does not depend on whether they failed. An interval with no requests
on a side adds nothing to that side. The default min_block is 1: the bench measured larger blocks to be slower
at every traffic level (min_block 10 took 1.8x as long to catch a +30 % latency shift at 5 req/s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from releasegate.judge.latency import FloatArray, slower_share
from releasegate.judge.sequential import FIELDS, Sequential
from releasegate.router.stats import NBUCKETS

Kind = Literal["error_rate", "latency", "prometheus"]
Outcome = Literal["continue", "pass", "regression"]
OUTCOMES: tuple[Outcome, ...] = ("continue", "pass", "regression")
EPS = 1e-9
"""The smallest baseline value a relative PromQL difference divides by."""


@dataclass(frozen=True)
class MetricConfig:
    """One metric of the judge: ``margin`` is absolute for error_rate (0.005 = half a percentage point) and
    relative for latency and prometheus (0.1 = 10 %)."""

    kind: Kind
    margin: float
    direction: Literal["increase", "decrease"] = "increase"
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.kind

    def range_and_theta0(self) -> tuple[float, float, float]:
        """(lo, hi, theta0) of this metric's observations."""
        if self.kind == "latency":
            return 0.0, 1.0, 0.5
        return -1.0, 1.0, self.margin


@dataclass
class Traffic:
    """One analysis interval of R rollouts: per version request and 5xx counts, shapes (R,); latency histograms
    (R, NBUCKETS) in the router's buckets (None when no metric needs them); one (canary, baseline) pair of arrays
    (R,) per prometheus metric in the order of the config, NaN for no data."""

    canary_requests: FloatArray
    baseline_requests: FloatArray
    canary_errors: FloatArray
    baseline_errors: FloatArray
    canary_hist: FloatArray | None = None
    baseline_hist: FloatArray | None = None
    prometheus: list[tuple[FloatArray, FloatArray]] = field(default_factory=list)


class MetricVerdict(BaseModel):
    """One metric at one interval, as stored with the decision."""

    model_config = ConfigDict(frozen=True)

    metric: str
    evalue: float  # evidence of regression; the rollout rolls back when it reaches threshold (k/alpha)
    threshold: float
    lo: float  # the anytime-valid confidence interval for theta (the canary's excess, in observation units)
    hi: float
    theta0: float  # the margin in observation units: error_rate d, latency 1/2, prometheus m; pass needs hi < it
    estimate: float | None  # mean of the observations so far
    observations: int
    canary_requests: int
    baseline_requests: int
    # About how many more of its units (canary requests; intervals with a value for prometheus) would bring ``hi``
    # under ``theta0`` at this estimate (see ``Judge.update``); None when it is already under, or none is in sight.
    more: int | None = None


class Verdict(BaseModel):
    """The judge's word at one interval; ``more_canary_requests`` is an estimate (see ``Judge.update``)."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    metrics: list[MetricVerdict]
    more_canary_requests: int | None


class MetricState(BaseModel):
    """One metric's whole state for one rollout: the open block, the running sums, the log-wealths. Latency
    histograms are stored sparse (bucket -> count): an open block holds at most a few dozen requests."""

    block: list[float]  # canary requests, baseline requests, canary errors, baseline errors
    hist_c: dict[int, int] = {}
    hist_b: dict[int, int] = {}
    used: list[float]  # canary and baseline requests in finished blocks
    sums: dict[str, float]
    log_wealth: list[float]


class JudgeState(BaseModel):
    """A rollout's judge state: what the engine persists every interval (a few hundred bytes of JSON)."""

    metrics: list[MetricState]


def _sparse(row: FloatArray) -> dict[int, int]:
    return {int(i): int(row[i]) for i in np.flatnonzero(row)}


def _dense(counts: dict[int, int]) -> FloatArray:
    row = np.zeros(NBUCKETS)
    for i, n in counts.items():
        row[i] = n
    return row


class _Metric:
    """A metric's open blocks and its sequential test, for R rollouts."""

    def __init__(self, config: MetricConfig, rollouts: int, alpha_cs: float) -> None:
        self.config = config
        lo, hi, theta0 = config.range_and_theta0()
        self.test = Sequential(rollouts, lo, hi, theta0, alpha_cs)
        self.block = np.zeros((rollouts, 4))
        self.hist = np.zeros((rollouts, 2, NBUCKETS)) if config.kind == "latency" else None
        self.used = np.zeros((rollouts, 2))

    def feed(self, traffic: Traffic, min_block: int, prom: tuple[FloatArray, FloatArray] | None,
             rng: np.random.Generator) -> None:
        """Fold this interval's data into the sequential test."""
        if self.config.kind == "prometheus":
            assert prom is not None
            canary, baseline = prom
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.clip((canary - baseline) / np.maximum(np.abs(baseline), EPS), -1.0, 1.0)
            x = -x if self.config.direction == "decrease" else x
            self.used += np.isfinite(x)[:, None]
            self.test.update(x)
            return
        counts = np.stack([traffic.canary_requests, traffic.baseline_requests, traffic.canary_errors,
                           traffic.baseline_errors], axis=1)
        counts = np.maximum(counts, 0.0)  # a counter reset must not remove requests from the block
        counts[:, 2:] = np.minimum(counts[:, 2:], counts[:, :2])  # never more errors than requests
        self.block += counts
        n_c, n_b = self.block[:, 0], self.block[:, 1]
        ready = (n_c >= min_block) & (n_b >= min_block)
        if self.hist is not None:
            if traffic.canary_hist is None or traffic.baseline_hist is None:
                raise ValueError("the latency metric needs the versions' latency histograms")
            self.hist[:, 0] += traffic.canary_hist
            self.hist[:, 1] += traffic.baseline_hist
            if ready.any():
                x = np.where(ready, slower_share(self.hist[:, 0], self.hist[:, 1], self.config.margin), np.nan)
                self.hist[ready] = 0.0
                self.used[ready] += self.block[ready, :2]
                self.block[ready] = 0.0
                self.test.update(x)
            return
        self._pairs(np.where(ready, np.minimum(n_c, n_b), 0).astype(np.int64), rng)

    def _pairs(self, k: npt.NDArray[np.int64], rng: np.random.Generator) -> None:
        """Error rate: k canary requests drawn at random from the open block, matched at random with k baseline
        requests; each pair is one observation, canary error minus baseline error (-1, 0 or 1, mean p_c - p_b).

        Why pairs and not one difference of error rates per block: a block's difference lies in [-1, 1] whatever
        its size, so a bounded bet can win only about margin-excess per block and detection would take the same
        number of intervals at 1,000 req/s as at 5. Pairs make the evidence grow with the number of requests.
        Random draws (hypergeometric, from the counts alone) keep each pair's outcomes distributed like two fresh
        requests; the unmatched requests stay in the block for the next interval."""
        n_c, n_b, e_c, e_b = (self.block[:, i].astype(np.int64) for i in range(4))
        a = rng.hypergeometric(e_c, n_c - e_c, k)  # errors among the chosen canary requests
        b = rng.hypergeometric(e_b, n_b - e_b, k)
        both = rng.hypergeometric(a, k - a, b)  # pairs where both failed, under a random matching
        plus, minus = a - both, b - both
        counts = np.stack([plus, minus, k - plus - minus], axis=1).astype(np.float64)
        self.block -= np.stack([k, k, a, b], axis=1)
        self.used += k[:, None]
        self.test.update_counts(np.array([1.0, -1.0, 0.0]), counts)

    def state(self, r: int) -> MetricState:
        sums, wealth = self.test.row(r)
        return MetricState(block=[float(v) for v in self.block[r]],
                           hist_c=_sparse(self.hist[r, 0]) if self.hist is not None else {},
                           hist_b=_sparse(self.hist[r, 1]) if self.hist is not None else {},
                           used=[float(v) for v in self.used[r]], sums=sums, log_wealth=wealth)

    def load(self, states: Sequence[MetricState]) -> None:
        self.block = np.array([s.block for s in states], dtype=np.float64)
        self.used = np.array([s.used for s in states], dtype=np.float64)
        if self.hist is not None:
            self.hist = np.stack([np.stack([_dense(s.hist_c), _dense(s.hist_b)]) for s in states])
        self.test.load_rows([(s.sums, s.log_wealth) for s in states])


@dataclass
class Verdicts:
    """The verdicts of R rollouts at one interval, as arrays (the bench reads these; the engine takes ``one``,
    before the next ``update``: the per-metric figures are read from the judge's current state)."""

    outcome: npt.NDArray[np.int64]  # (R,): 0 continue, 1 pass, 2 regression (an index into OUTCOMES)
    log_evalues: FloatArray  # (R, k)
    more_canary_requests: FloatArray  # (R,), NaN: cannot be estimated yet (or no pass in sight at this estimate)
    judge: Judge
    needs: FloatArray | None = None  # (R, k): each metric's own estimate, 0 once under its margin, NaN: none

    def one(self, r: int = 0) -> Verdict:
        metrics = []
        for m, metric in enumerate(self.judge.metrics):
            est = float(metric.test.estimate()[r])
            metrics.append(MetricVerdict(
                metric=metric.config.label, evalue=math.exp(min(float(self.log_evalues[r, m]), 700.0)),
                threshold=self.judge.threshold, lo=float(metric.test.sums["cs_lo"][r]),
                hi=float(metric.test.sums["cs_hi"][r]), theta0=metric.test.theta0,
                estimate=None if math.isnan(est) else est, observations=int(metric.test.sums["count"][r]),
                canary_requests=int(metric.used[r, 0]), baseline_requests=int(metric.used[r, 1]),
                more=_count(self.needs[r, m]) if self.needs is not None else None))
        more = float(self.more_canary_requests[r])
        return Verdict(outcome=OUTCOMES[int(self.outcome[r])], metrics=metrics,
                       more_canary_requests=None if math.isnan(more) else math.ceil(more))


def _count(need: float) -> int | None:
    return None if math.isnan(need) or need <= 0 else math.ceil(need)


class Judge:
    """Several metrics, alpha split equally among them for rollback and, separately, for passing."""

    def __init__(self, metrics: Sequence[MetricConfig], alpha: float = 0.01, min_block: int = 1,
                 rollouts: int = 1, seed: int = 0) -> None:
        if not metrics:
            raise ValueError("the judge needs at least one metric")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha is a probability between 0 and 1, got {alpha!r}")
        if min_block < 1:
            raise ValueError(f"min_block is a number of requests, at least 1, got {min_block!r}")
        self.alpha, self.min_block, self.rollouts, self.seed = alpha, min_block, rollouts, seed
        share = alpha / len(metrics)
        self.threshold = 1.0 / share
        self.metrics = [_Metric(config, rollouts, share) for config in metrics]

    def update(self, traffic: Traffic) -> Verdicts:
        """Fold in one interval and judge every rollout.

        ``more_canary_requests`` estimates how many more canary requests would bring every confidence upper bound
        under its margin if the estimates stayed where they are and the bounds shrank like 1/sqrt(n): it is a
        guide for the operator (and for how long to extend a step), not a promise. A prometheus metric counts
        intervals, not requests, so it does not enter it (``status`` gives its own estimate in intervals)."""
        proms = iter(traffic.prometheus)
        # Drawn from the state, so a judge restored from its JSON continues exactly as the original would have.
        rng = np.random.default_rng([self.seed, *(int(m.used.sum()) for m in self.metrics)])
        log_e = np.zeros((self.rollouts, len(self.metrics)))
        more = np.zeros(self.rollouts)
        needs = np.zeros((self.rollouts, len(self.metrics)))
        passed = np.ones(self.rollouts, dtype=bool)
        for m, metric in enumerate(self.metrics):
            prom = next(proms, None) if metric.config.kind == "prometheus" else None
            metric.feed(traffic, self.min_block, prom, rng)
            log_e[:, m] = metric.test.log_evalue()
            hi, theta0 = metric.test.sums["cs_hi"], metric.test.theta0
            below = hi < theta0
            passed &= below
            est = metric.test.estimate()
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = ((hi - est) / (theta0 - est)) ** 2
                need = np.where((est < theta0) & (metric.used[:, 0] > 0),
                                metric.used[:, 0] * np.maximum(factor - 1.0, 0.0), np.nan)
            needs[:, m] = np.where(below, 0.0, need)
            if metric.config.kind != "prometheus":  # its counts are intervals with a value, not requests
                more = np.where(below, more, np.maximum(more, need))
        regression = (log_e >= math.log(self.threshold)).any(axis=1)
        outcome = np.where(regression, 2, np.where(passed, 1, 0))
        return Verdicts(outcome.astype(np.int64), log_e, np.where(passed, 0.0, more), self, needs)

    def state(self, r: int = 0) -> JudgeState:
        """Rollout ``r``'s state, to persist (``Judge.restore`` takes it back)."""
        return JudgeState(metrics=[metric.state(r) for metric in self.metrics])

    @classmethod
    def restore(cls, metrics: Sequence[MetricConfig], states: Sequence[JudgeState], alpha: float = 0.01,
                min_block: int = 1, seed: int = 0) -> Judge:
        """A judge for ``len(states)`` rollouts continuing from saved states (same metrics, same order)."""
        judge = cls(metrics, alpha, min_block, rollouts=len(states), seed=seed)
        for m, metric in enumerate(judge.metrics):
            metric.load([state.metrics[m] for state in states])
        return judge


__all__ = ["FIELDS", "Judge", "JudgeState", "MetricConfig", "MetricState", "MetricVerdict", "Traffic", "Verdict",
           "Verdicts"]
