"""Anytime-valid evidence about the mean of bounded observations: a betting e-process and a confidence sequence.

Both work on a stream X_1, X_2, ... in a known range [lo, hi] and ask about theta, the conditional mean of X_t
given the past, against theta0 (the regression margin):

* Evidence of regression. H0: E[X_t | past] <= theta0 for every t. For a betting fraction lam in [0, 1/(theta0 -
  lo)), the wealth prod (1 + lam (X_i - theta0)) is a nonnegative supermartingale under H0; so is an average of
  such wealths over a fixed grid of fractions (a mixture: no fraction has to be chosen in advance, and the best one
  is found up to a factor of the grid's size). By Ville's inequality P(sup_t wealth_t >= 1/a) <= a under H0, for
  every stopping rule, however often it is looked at: this is what makes a look every interval safe. This is the
  betting construction of Waudby-Smith & Ramdas (2023, JRSSB, "Estimating means of bounded random variables by
  betting"), see also Ramdas, Gruenwald, Vovk & Shafer (2023, Statistical Science, "Game-theoretic statistics and
  safe anytime-valid inference").
* A confidence sequence for theta: the predictable-plug-in empirical-Bernstein (PrPl-EB) sequence of
  Waudby-Smith & Ramdas (2023, Theorem 2). It adapts to the observed variance, needs only running sums (constant
  state, which matters since the engine stores it every interval), and covers theta at every time at once with
  probability >= 1 - a. The bounds kept are the running intersection (the tightest seen), which is still valid.

Everything is vectorised over a leading axis of R independent streams (R rollouts in the bench, R = 1 in the
engine): the same arithmetic serves both, so the bench measures the code the engine runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

N_BETS = 12
"""Betting fractions in the mixture: lam_max, lam_max/2, ... lam_max/2**11 (the last reacts to a drift ~2000
times smaller than the first)."""

BET_CAP = 0.9
"""lam_max = BET_CAP / (theta0 - lo): one observation at the bottom of the range costs at most 90 % of that
fraction's wealth, never all of it (which would end that bet for good)."""

CS_CAP = 0.75
"""The PrPl-EB fractions are truncated at 3/4 on the [0, 1] scale (one of the two values the paper suggests);
the larger cap shortens the interval when the observations vary little within their range."""

FIELDS = ("count", "sum_x", "sum_y", "sum_sq", "sum_lam", "sum_lam_y", "sum_psi", "cs_lo", "cs_hi")
"""The scalar running sums per stream (besides the N_BETS log-wealths): the whole state of one metric's test."""


class Sequential:
    """R streams of observations in [lo, hi] tested against theta0, each with its e-process and its CS."""

    def __init__(self, rollouts: int, lo: float, hi: float, theta0: float, alpha_cs: float) -> None:
        if not lo <= theta0 < hi:
            raise ValueError(f"theta0 {theta0} must lie in [{lo}, {hi}): a margin outside the range cannot be "
                             "tested")
        self.lo, self.hi, self.theta0, self.alpha_cs = lo, hi, theta0, alpha_cs
        self.bets: FloatArray = BET_CAP / (theta0 - lo) * 0.5 ** np.arange(N_BETS, dtype=np.float64) \
            if theta0 > lo else np.zeros(N_BETS)
        self.log_wealth: FloatArray = np.zeros((rollouts, N_BETS))
        self.sums: dict[str, FloatArray] = {name: np.zeros(rollouts) for name in FIELDS}
        self.sums["cs_lo"][:] = lo
        self.sums["cs_hi"][:] = hi

    def update(self, x: FloatArray) -> None:
        """Take one observation per stream; NaN means none this time (the stream is left as it was)."""
        seen = np.isfinite(x)
        self.update_counts(np.where(seen, x, self.theta0)[:, None], seen[:, None].astype(np.float64))

    def update_counts(self, values: FloatArray, counts: FloatArray) -> None:
        """Take a batch per stream: ``counts[r, v]`` observations equal to ``values[r, v]`` (or ``values[v]``).

        A batch is the same as its observations one by one, except that the CS's betting fraction and centre are
        fixed for the whole batch from what was known before it (still predictable, so still valid): this is
        what lets thousands of request pairs per interval cost O(1) state and a few array operations."""
        values = np.broadcast_to(values, counts.shape)
        k = counts.sum(axis=1)
        seen = k > 0
        if not seen.any():
            return
        s = self.sums
        gain = np.log1p(self.bets[None, None, :] * (values - self.theta0)[:, :, None])
        self.log_wealth += np.einsum("rv,rvl->rl", counts, gain)

        width = self.hi - self.lo
        y = (values - self.lo) / width
        t = s["count"]
        mean_before = (0.5 + s["sum_y"]) / (t + 1)
        var_before = (0.25 + s["sum_sq"]) / (t + 1)
        log_term = math.log(2.0 / self.alpha_cs)
        t_mid = t + (k + 1) / 2  # the batch's middle index: its fraction suits all of it, not only its first
        lam = np.minimum(np.sqrt(2 * log_term / (var_before * t_mid * np.log1p(t_mid))), CS_CAP)
        psi = (-np.log1p(-lam) - lam) / 4.0
        v = (counts * 4.0 * (y - mean_before[:, None]) ** 2).sum(axis=1)
        y_sum = (counts * y).sum(axis=1)

        s["sum_lam"] = s["sum_lam"] + lam * k
        s["sum_lam_y"] = s["sum_lam_y"] + lam * y_sum
        s["sum_psi"] = s["sum_psi"] + v * psi
        s["sum_y"] = s["sum_y"] + y_sum
        s["sum_x"] = s["sum_x"] + (counts * values).sum(axis=1)
        s["count"] = t + k
        mean_after = (0.5 + s["sum_y"]) / (s["count"] + 1)
        s["sum_sq"] = s["sum_sq"] + (counts * (y - mean_after[:, None]) ** 2).sum(axis=1)

        with np.errstate(invalid="ignore", divide="ignore"):
            centre = s["sum_lam_y"] / s["sum_lam"]
            radius = (log_term + s["sum_psi"]) / s["sum_lam"]
        lo_now = self.lo + width * np.clip(centre - radius, 0.0, 1.0)
        hi_now = self.lo + width * np.clip(centre + radius, 0.0, 1.0)
        s["cs_lo"] = np.where(seen, np.maximum(s["cs_lo"], lo_now), s["cs_lo"])
        s["cs_hi"] = np.where(seen, np.minimum(s["cs_hi"], hi_now), s["cs_hi"])

    def log_evalue(self) -> FloatArray:
        """log of the mixture e-value (the mean of the N_BETS wealths) per stream; 0 before any observation."""
        # log(mean(exp(w))) with the largest term factored out, so no wealth overflows; numpy's own ufuncs, not
        # scipy.special.logsumexp, whose array-API dispatch cost 2 ms per call on a (1, 12) array: the engine calls
        # this at every interval of every judged rollout.
        w = self.log_wealth
        top = np.max(w, axis=1)
        result: FloatArray = top + np.log(np.mean(np.exp(w - top[:, None]), axis=1))
        return result

    def estimate(self) -> FloatArray:
        """The plain mean of the observations per stream (NaN before the first): what the CS is centred near."""
        with np.errstate(invalid="ignore", divide="ignore"):
            result: FloatArray = np.where(self.sums["count"] > 0, self.sums["sum_x"] / self.sums["count"], np.nan)
        return result

    def row(self, r: int) -> tuple[dict[str, float], list[float]]:
        """Stream ``r``'s running sums and log-wealths as plain floats (for JSON)."""
        return ({name: float(self.sums[name][r]) for name in FIELDS}, [float(v) for v in self.log_wealth[r]])

    def load_rows(self, rows: list[tuple[Mapping[str, float], list[float]]]) -> None:
        """Set every stream from saved rows (one per stream, as ``row`` gave them)."""
        for name in FIELDS:
            self.sums[name] = np.array([float(sums[name]) for sums, _ in rows])
        self.log_wealth = np.array([wealth for _, wealth in rows], dtype=np.float64).reshape(len(rows), N_BETS)
