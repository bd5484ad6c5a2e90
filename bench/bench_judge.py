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

Then one real run (``real``): the demo app behind the built-in router, a fixed 100 req/s of load without cookies,
a canary step at 20 % beside its baseline (``analysis.baseline: true``, 20 % too), analysis every second, no
threshold rule, the judge's defaults (alpha 0.01, error_rate 0.005, latency 10 %) with ``max_extension: 3m``:
first a healthy canary (A/A: the same code, no fault), then a faulty one whose answers fail 2 in 100 (the demo
app's ``FAULTS`` error_rate=0.02, counted, not drawn). Its figures come from the rollouts' recorded events: the
time from the step's first traffic to the rollback decision, and whether the healthy canary was rolled back.

    python3 bench/bench_judge.py          # last line: judge false_rollbacks: X, detect_s: Y
    python3 bench/bench_judge.py --quick  # fewer simulated rollouts, for a try
    python3 bench/bench_judge.py --real   # the real run only (about 4 minutes)
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrix products: threads only contend (set before numpy)

import httpx
import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support, as a test run from the checkout

from releasegate import service
from releasegate.judge import Judge, MetricConfig, Traffic
from releasegate.router.stats import BOUNDS, NBUCKETS
from tests.support.rollouts import RolloutEnv, cleanup

ALPHA = 0.01
MEDIAN, SIGMA, ERROR_RATE = 0.05, 0.5, 0.01
HOUR = 3600
METRICS = [MetricConfig("error_rate", 0.005), MetricConfig("latency", 0.10)]
EDGES = np.log(np.array(BOUNDS))


def bucket_probs(scale: float) -> np.ndarray:
    """Probability of each router bucket for a log-normal latency (median MEDIAN x scale)."""
    cdf = np.append(norm.cdf((EDGES - math.log(MEDIAN * scale)) / SIGMA), 1.0)
    return np.diff(cdf, prepend=0.0)


def requests(rng: np.random.Generator, rate: float, probs: np.ndarray, rollouts: int) -> np.ndarray:
    """One second's latency histograms (R, NBUCKETS): Poisson(rate) requests split over the buckets, drawn as
    independent Poisson counts per bucket (the same distribution, and far cheaper than a draw per request)."""
    support = np.flatnonzero(probs > 1e-12)  # about 25 buckets: drawing the other 37 zeros is wasted time
    hist = np.zeros((rollouts, NBUCKETS))
    hist[:, support] = rng.poisson(rate * probs[None, support], (rollouts, len(support)))
    return hist


@dataclass
class Result:
    rollback: dict[str, np.ndarray]  # first second each rollout was rolled back, inf: never
    passed: np.ndarray  # first second the judge passed, inf: never


def simulate(rollouts: int, weight: float, rps: float, seconds: int, seed: int, *, canary_error: float = ERROR_RATE,
             canary_scale: float = 1.0, others: bool = True, min_block: int = 1,
             metrics: list[MetricConfig] = METRICS) -> Result:
    rng = np.random.default_rng(seed)
    judge = Judge(metrics, alpha=ALPHA, min_block=min_block, rollouts=rollouts)
    probs_b, probs_c = bucket_probs(1.0), bucket_probs(canary_scale)
    upper = np.append(np.array(BOUNDS), BOUNDS[-1] * 1.25)
    support = np.flatnonzero((probs_b > 1e-12) | (probs_c > 1e-12))  # Mann-Whitney needs only occupied buckets
    inf = np.full(rollouts, np.inf)
    first = {"judge": inf.copy(), "rules": inf.copy(), "kayenta": inf.copy()}
    passed = inf.copy()
    streak_e, streak_l = np.zeros(rollouts), np.zeros(rollouts)
    cum = np.zeros((rollouts, 4))  # canary requests, baseline requests, canary errors, baseline errors
    cum_hist = np.zeros((rollouts, 2, NBUCKETS))
    for sec in range(1, seconds + 1):
        h_c, h_b = requests(rng, rps * weight, probs_c, rollouts), requests(rng, rps * weight, probs_b, rollouts)
        n_c, n_b = h_c.sum(axis=1).astype(np.int64), h_b.sum(axis=1).astype(np.int64)
        e_c, e_b = rng.binomial(n_c, canary_error), rng.binomial(n_b, ERROR_RATE)
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
        significant = kayenta(cum, cum_hist[:, :, support])
        first["kayenta"] = np.where(significant & np.isinf(first["kayenta"]), sec, first["kayenta"])
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
    level = float(norm.isf(ALPHA / 2))
    significant: np.ndarray = (np.nan_to_num(z_err, nan=-np.inf) > level) | (np.nan_to_num(z_lat, nan=-np.inf) > level)
    return significant


def share(first: np.ndarray) -> float:
    return float(np.isfinite(first).mean())


def median_s(first: np.ndarray, horizon: int = HOUR) -> str:
    """The median of first times, or '>horizon' when fewer than half got there within it."""
    value = float(np.median(first))
    return f"{value:.0f}" if math.isfinite(value) else f">{horizon}"


REAL_RPS, REAL_WEIGHT, REAL_FAULT = 100, 20, "3.0.0:error_rate=0.02"  # +2 points: 3.0.0 fails 2 in 100


async def _one(client: httpx.AsyncClient, url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the judge counts what the router saw; the load keeps its pace
        await client.get(url)


async def paced_load(url: str, rps: float, stop: asyncio.Event) -> int:
    """Requests at a fixed rate (open loop: one every 1/rps seconds, however long the answers take), with cookies
    refused so every request is a new user and the versions get their weights; returns how many were sent."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        loop = asyncio.get_running_loop()
        start, sent, pending = loop.time(), 0, set()
        while not stop.is_set():
            sent += 1
            task = asyncio.create_task(_one(client, url))
            pending.add(task)
            task.add_done_callback(pending.discard)
            delay = start + sent / rps - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        await asyncio.gather(*pending)
    return sent


def _judged(env: RolloutEnv) -> Path:
    path = env.spec(f"{{canary: {{steps: [{{weight: {REAL_WEIGHT}, pause: 30s}}]}}}}", rules="[]",
                    faults=REAL_FAULT, post_promotion="0s")
    text = path.read_text().replace("interval: 500ms", "interval: 1s")
    path.write_text(text.replace("analysis:\n", "analysis:\n  baseline: true\n  judge: {max_extension: 3m}\n"))
    return path


def _timeline(env: RolloutEnv, rollout_id: str) -> dict[str, Any]:
    """From the recorded events: seconds from the step's first traffic to the rollback and to the judge's pass."""
    said = next(h for h in service.history(env.ctx, "shop") if h["id"] == rollout_id)["events"]
    at = {e["kind"]: float(e["at"]) for e in reversed(said)}  # the first event of each kind
    step = at.get("step")
    return {kind: (at[kind] - step if step is not None and kind in at else None)
            for kind in ("rollback", "analysis_passed")}


async def _rollouts(tmp: Path) -> dict[str, Any]:
    env = RolloutEnv(tmp)
    spec = _judged(env)
    try:
        first = await service.deploy(env.ctx, spec, "1.0.0")
        assert first.status == "promoted", first.reason
        stop = asyncio.Event()
        load = asyncio.create_task(paced_load(env.url, REAL_RPS, stop))
        started = time.monotonic()
        try:
            healthy = service.deploy(env.ctx, spec, "2.0.0")
            task = asyncio.create_task(healthy)
            while not task.done():  # a step the judge could not clear in time pauses: go on without it
                ro = service.status(env.ctx, "shop")[0]["rollout"] or {}
                if (ro.get("paused") or {}).get("kind") == "judge":
                    await service.send_command(env.ctx, "shop", "promote")
                await asyncio.wait([task], timeout=1.0)
            good = task.result()
            bad = await service.deploy(env.ctx, spec, "3.0.0")
        finally:
            stop.set()
            sent = await load
        return {"healthy": good.status, "healthy_times": _timeline(env, good.id), "faulty": bad.status,
                "faulty_reason": bad.reason or "", "faulty_times": _timeline(env, bad.id),
                "rps": sent / (time.monotonic() - started)}
    finally:
        await cleanup(env.state, spec)


def real_run() -> dict[str, Any]:
    """The real run described in the module docstring; prints its figures."""
    print(f"Real: built-in router, demo app, {REAL_RPS} req/s, canary and baseline at {REAL_WEIGHT} %, interval 1 s, "
          "judge defaults (max_extension 3m)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rg-judge-") as tmp:
        got = asyncio.run(_rollouts(Path(tmp)))
    passed, detect = got["healthy_times"]["analysis_passed"], got["faulty_times"]["rollback"]
    passing = f"after {passed:.0f} s" if passed is not None else "not within the step and its extension"
    print(f"  healthy canary (A/A): {got['healthy']}, the judge passed it {passing}")
    caught = f"{detect:.0f} s after its first traffic" if detect is not None else "(no rollback)"
    print(f"  faulty canary (+2 points of errors): {got['faulty']} {caught}")
    print(f"  reason: {got['faulty_reason']}")
    print(f"  ({got['rps']:.0f} req/s sent, {time.perf_counter() - started:.0f} s)")
    return got


def simulated(quick: bool) -> float:
    """The simulated figures; returns the worst A/A false-rollback share of the judge."""
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
    edge = simulate(n_aa // 2, 0.50, 100, HOUR, 7, canary_error=ERROR_RATE + 0.005, canary_scale=1.1, others=False)
    print(f"  at the margins' edge (canary +0.5 points of errors and 10 % slower, 50 % weight, {n_aa // 2} "
          f"rollouts): judge {share(edge.rollback['judge']):.4f} (alpha bounds this too)")
    print(f"Detection at 5 % weight, 100 req/s, {n_detect} rollouts: median seconds to roll back")
    detect: dict[str, float] = {}
    for label, kwargs, seed in (("error rate +2 points", {"canary_error": ERROR_RATE + 0.02}, 3),
                                ("latency +30 %", {"canary_scale": 1.3}, 4)):
        res = simulate(n_detect, 0.05, 100, HOUR, seed, **kwargs)  # type: ignore[arg-type]
        detect[label] = float(np.median(res.rollback["judge"]))
        print(f"  {label}: judge {median_s(res.rollback['judge'])}  rules {median_s(res.rollback['rules'])}  "
              f"kayenta {median_s(res.rollback['kayenta'])}  (judge detected within the hour: "
              f"{share(res.rollback['judge']):.3f})")
    print("Low traffic, 1 req/s, healthy canary: the judge's median time to pass (share passed within 4 h)")
    wide = [MetricConfig("error_rate", 0.02), MetricConfig("latency", 0.25)]
    for label, metrics in (("default margins (0.005, 10%)", METRICS), ("wide margins (0.02, 25%)", wide)):
        for weight, seed in ((0.05, 5), (0.50, 6)):
            res = simulate(n_detect // 5, weight, 1, 4 * HOUR, seed, others=False, metrics=metrics)
            print(f"  {label}, weight {weight:.0%}: {median_s(res.passed, 4 * HOUR)} s "
                  f"({share(res.passed):.3f})")
    print(f"({time.perf_counter() - started:.0f} s; simulated detection, worst median: {max(detect.values()):.0f} s)")
    return false_judge


def main() -> None:
    false_judge = None if "--real" in sys.argv else simulated("--quick" in sys.argv)
    got = real_run()
    detect = got["faulty_times"]["rollback"]
    real_false = int(got["healthy"] == "rolled_back")
    print(f"false_rollbacks: the simulated A/A's worst share (real A/A: {real_false} of 1 rolled back); detect_s: "
          "the real run's first traffic to rollback")
    shown = f"{false_judge:.4f}" if false_judge is not None else f"{real_false} (real)"
    print(f"judge false_rollbacks: {shown}, detect_s: {detect:.0f}" if detect is not None
          else f"judge false_rollbacks: {shown}, detect_s: none (the faulty canary was not rolled back)")


if __name__ == "__main__":
    main()
