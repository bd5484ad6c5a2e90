"""The sequential judge against today's threshold rules and a Kayenta-like repeated test, on simulated rollouts.

Everything is simulated (numpy, seeded: the same figures every run), so thousands of hour-long rollouts take a
few minutes; the judge is the real ``releasegate.judge`` code, vectorised over the rollouts. Each second, canary
and baseline each get Poisson(rps x weight) requests (the baseline takes the same weight as the canary), each
request fails with the version's error rate and takes a log-normal latency (median 50 ms, sigma 0.5, so p95 is
about 115 ms), counted into the router's latency buckets (releasegate.router.stats). Compared, with one look
every second:

* judge: error_rate (margin 0.005 absolute) and latency (margin 10 %), alpha 0.01, min_block 1 (the default);
* rules: the seeds' defaults on the canary alone: error rate > 5 % or p95 > 2.5 s, each held for 5 minutes of
  1-second samples (a sample without requests breaks the hold, as in releasegate.engine.analysis);
* kayenta: fixed-horizon tests on the cumulative data, repeated every second: a one-sided two-proportion z-test
  on errors and a one-sided Mann-Whitney U test on latency (from cumulative histograms, ties corrected), each at
  alpha/2 (the judge's own split), rollback when either p-value is below it at any look.

Figures: A/A (identical versions) false rollbacks within an hour at 5 % and 50 % weight, 100 req/s; detection
time of +2 points of error rate and of +30 % latency at 5 % weight; at 1 req/s, how long the judge takes to pass a
healthy canary.

    python3 bench/bench_judge.py          # last line: judge false_rollbacks: X, detect_s: Y
    python3 bench/bench_judge.py --quick  # fewer rollouts, for a try
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from releasegate.judge import Judge, MetricConfig, Traffic
from releasegate.router.stats import BOUNDS, NBUCKETS

ALPHA = 0.01
MEDIAN, SIGMA, ERROR_RATE = 0.05, 0.5, 0.01
HOUR = 3600
METRICS = [MetricConfig("error_rate", 0.005), MetricConfig("latency", 0.10)]
EDGES = np.log(np.array(BOUNDS))


def bucket_cdf(scale: float) -> np.ndarray:
    """Cumulative probability of each router bucket for a log-normal latency (median MEDIAN x scale)."""
    cdf = norm.cdf((EDGES - math.log(MEDIAN * scale)) / SIGMA)
    return np.append(cdf, 1.0)


def histograms(rng: np.random.Generator, counts: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """Latency histograms (R, NBUCKETS) of counts[r] requests each: one uniform draw per request."""
    rows = np.repeat(np.arange(len(counts)), counts)
    buckets = np.searchsorted(cdf, rng.random(len(rows)), side="right")
    return np.bincount(rows * NBUCKETS + np.minimum(buckets, NBUCKETS - 1),
                       minlength=len(counts) * NBUCKETS).reshape(len(counts), NBUCKETS).astype(np.float64)


@dataclass
class Result:
    rollback: dict[str, np.ndarray]  # first second each rollout was rolled back, inf: never
    passed: np.ndarray  # first second the judge passed, inf: never


def simulate(rollouts: int, weight: float, rps: float, seconds: int, seed: int, *, canary_error: float = ERROR_RATE,
             canary_scale: float = 1.0, others: bool = True, min_block: int = 1) -> Result:
    rng = np.random.default_rng(seed)
    judge = Judge(METRICS, alpha=ALPHA, min_block=min_block, rollouts=rollouts)
    cdf_b, cdf_c = bucket_cdf(1.0), bucket_cdf(canary_scale)
    upper = np.append(np.array(BOUNDS), BOUNDS[-1] * 1.25)
    inf = np.full(rollouts, np.inf)
    first = {"judge": inf.copy(), "rules": inf.copy(), "kayenta": inf.copy()}
    passed = inf.copy()
    streak_e, streak_l = np.zeros(rollouts), np.zeros(rollouts)
    cum = np.zeros((rollouts, 4))  # canary requests, baseline requests, canary errors, baseline errors
    cum_hist = np.zeros((rollouts, 2, NBUCKETS))
    for sec in range(1, seconds + 1):
        n_c, n_b = rng.poisson(rps * weight, rollouts), rng.poisson(rps * weight, rollouts)
        e_c, e_b = rng.binomial(n_c, canary_error), rng.binomial(n_b, ERROR_RATE)
        h_c, h_b = histograms(rng, n_c, cdf_c), histograms(rng, n_b, cdf_b)
        verdicts = judge.update(Traffic(n_c.astype(float), n_b.astype(float), e_c.astype(float),
                                        e_b.astype(float), h_c, h_b))
        first["judge"] = np.where((verdicts.outcome == 2) & np.isinf(first["judge"]), sec, first["judge"])
        passed = np.where((verdicts.outcome == 1) & np.isinf(passed), sec, passed)
        if not others:
            continue
        # today's rules on the canary alone, one sample a second, held for 5 minutes
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = e_c / n_c
            p95 = upper[np.argmax(np.cumsum(h_c, axis=1) >= 0.95 * n_c[:, None], axis=1)]
        streak_e = np.where((n_c > 0) & (rate > 0.05), streak_e + 1, 0)
        streak_l = np.where((n_c > 0) & (p95 > 2.5), streak_l + 1, 0)
        held = (streak_e >= 300) | (streak_l >= 300)
        first["rules"] = np.where(held & np.isinf(first["rules"]), sec, first["rules"])
        # Kayenta-like: fixed-horizon tests on everything so far, repeated at every look
        cum += np.stack([n_c, n_b, e_c, e_b], axis=1)
        cum_hist[:, 0] += h_c
        cum_hist[:, 1] += h_b
        first["kayenta"] = np.where(kayenta(cum, cum_hist) & np.isinf(first["kayenta"]), sec, first["kayenta"])
    return Result(first, passed)


def kayenta(cum: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Rollouts whose errors or latency test is significant (one-sided, alpha/2 each) at this look."""
    cn, bn, ce, be = cum.T
    with np.errstate(invalid="ignore", divide="ignore"):
        pool = (ce + be) / (cn + bn)
        z_err = (ce / cn - be / bn) / np.sqrt(pool * (1 - pool) * (1 / cn + 1 / bn))
        hc, hb = hist[:, 0], hist[:, 1]
        below_b = np.cumsum(hb, axis=1) - hb
        u = (hc * (below_b + hb / 2)).sum(axis=1)  # pairs where canary is slower, ties counted half
        n = cn + bn
        ties = hc + hb
        var = cn * bn / 12 * ((n + 1) - (ties ** 3 - ties).sum(axis=1) / (n * (n - 1)))
        z_lat = (u - cn * bn / 2) / np.sqrt(var)
    level = norm.isf(ALPHA / 2)
    return (np.nan_to_num(z_err, nan=-np.inf) > level) | (np.nan_to_num(z_lat, nan=-np.inf) > level)


def share(first: np.ndarray) -> float:
    return float(np.isfinite(first).mean())


def median_s(first: np.ndarray) -> str:
    """Median time to roll back, or '>1h' when fewer than half were rolled back within the hour."""
    value = float(np.median(first))
    return f"{value:.0f}" if math.isfinite(value) else ">3600"


def main() -> None:
    quick = "--quick" in sys.argv
    n_aa, n_detect = (200, 100) if quick else (2000, 500)
    started = time.perf_counter()
    print(f"A/A: {n_aa} rollouts per weight, an hour each, 100 req/s, alpha {ALPHA}: share wrongly rolled back")
    false_judge = 0.0
    for weight, seed in ((0.05, 1), (0.50, 2)):
        res = simulate(n_aa, weight, 100, HOUR, seed)
        false_judge = max(false_judge, share(res.rollback["judge"]))
        print(f"  weight {weight:.0%}: judge {share(res.rollback['judge']):.4f}  rules "
              f"{share(res.rollback['rules']):.4f}  kayenta {share(res.rollback['kayenta']):.4f}  "
              f"(judge passed within the hour: {share(res.passed):.3f}, median pass "
              f"{median_s(res.passed)} s)")
    print(f"Detection at 5 % weight, 100 req/s, {n_detect} rollouts: median seconds to roll back")
    detect: dict[str, float] = {}
    for label, kwargs, seed in (("error rate +2 points", {"canary_error": ERROR_RATE + 0.02}, 3),
                                ("latency +30 %", {"canary_scale": 1.3}, 4)):
        res = simulate(n_detect, 0.05, 100, HOUR, seed, **kwargs)  # type: ignore[arg-type]
        detect[label] = float(np.median(res.rollback["judge"]))
        print(f"  {label}: judge {median_s(res.rollback['judge'])}  rules {median_s(res.rollback['rules'])}  "
              f"kayenta {median_s(res.rollback['kayenta'])}  (judge detected within the hour: "
              f"{share(res.rollback['judge']):.3f})")
    print("Low traffic, 1 req/s, healthy canary, the judge's time to pass (median; share passed in 4 h)")
    for weight, seed in ((0.05, 5), (0.50, 6)):
        res = simulate(n_detect // 5, weight, 1, 4 * HOUR, seed, others=False)
        print(f"  weight {weight:.0%}: {median_s(res.passed)} s, passed {share(res.passed):.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")
    worst = max(detect.values())
    print(f"judge false_rollbacks: {false_judge:.4f}, detect_s: {worst:.0f}")


if __name__ == "__main__":
    main()
