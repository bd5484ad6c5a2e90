"""Latency as one bounded number per block: how often a canary request is slower than (1 + m) baseline requests.

Why this reduction: the router keeps per-version latency histograms (``releasegate.router.stats``), not samples,
and a Mann-Whitney-style probability P(canary > (1 + m) x baseline) uses exactly that data, needs no
distributional model, and is bounded in [0, 1], which is what the betting e-process and the empirical-Bernstein
confidence sequence need. With identical distributions and m = 0 it is exactly 1/2, so "no regression beyond
the margin" is "at most 1/2"; a canary 10 % slower everywhere than the baseline with m = 10 % sits at 1/2.

Within a bucket a latency is taken as log-uniform (the buckets are log-spaced, x1.25 wide). The difference of two
log-uniform latencies from buckets of equal log-width w is a triangular distribution, so every entry of the bucket
matrix has a closed form and the matrix is Toeplitz: M[i, j] depends only on i - j. Bucket 0 ([0, 0.1 ms)) is
taken as one x1.25 bucket below 0.1 ms and the open last bucket as one x1.25 bucket above the last bound (about
65 s .. 82 s); both are far from any latency a gate cares about.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from releasegate.router.stats import NBUCKETS

FloatArray = npt.NDArray[np.float64]

LOG_WIDTH = math.log(1.25)
"""Every bucket's width in log-seconds (the router's buckets grow by x1.25)."""


def _above(z: FloatArray) -> FloatArray:
    """P(T > z) for T triangular on [-1, 1] with its peak at 0."""
    z = np.clip(z, -1.0, 1.0)
    return np.where(z < 0, 1.0 - (1.0 + z) ** 2 / 2.0, (1.0 - z) ** 2 / 2.0)


@lru_cache(maxsize=16)
def _matrix(margin: float) -> FloatArray:
    i = np.arange(NBUCKETS, dtype=np.float64)
    # log(canary) - log(baseline) = (i - j) * w + w * T for buckets i, j of equal width w; slower than (1 + m):
    # the difference exceeds log(1 + m), i.e. T > log(1 + m) / w - (i - j).
    z = math.log1p(margin) / LOG_WIDTH - (i[:, None] - i[None, :])
    matrix = _above(z)
    matrix.setflags(write=False)
    return matrix


def slower_matrix(margin: float) -> FloatArray:
    """M[i, j] = P(canary latency > (1 + margin) x baseline latency | canary in bucket i, baseline in bucket j).

    Shape (NBUCKETS, NBUCKETS), read-only and cached per margin. M[i, j] + M[j, i] = 1 when margin = 0."""
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"a latency margin is a relative increase of 0 or more, got {margin!r}")
    return _matrix(float(margin))


def slower_share(canary: FloatArray, baseline: FloatArray, margin: float) -> FloatArray:
    """The estimated P(canary > (1 + margin) x baseline) from histograms of shape (R, NBUCKETS) each.

    Rows where either side has no request give NaN (no observation). Unbiased for the smoothed probability:
    every canary request is paired with every baseline request of the block, h_c^T M h_b / (n_c n_b)."""
    matrix = slower_matrix(margin)
    n_c = canary.sum(axis=-1)
    n_b = baseline.sum(axis=-1)
    pairs = ((canary @ matrix) * baseline).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share: FloatArray = np.where((n_c > 0) & (n_b > 0), pairs / (n_c * n_b), np.nan)
    return np.clip(share, 0.0, 1.0)
