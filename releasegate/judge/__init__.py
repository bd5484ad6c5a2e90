"""The sequential judge: canary against baseline with anytime-valid statistics (docs/judge.md).

Pure statistics, no I/O: the engine feeds it one interval of per-version counts and histograms at a time and
persists ``Judge.state()``; the bench feeds it thousands of simulated rollouts at once through the same code."""

from releasegate.judge.judge import (
    Judge,
    JudgeState,
    MetricConfig,
    MetricState,
    MetricVerdict,
    Traffic,
    Verdict,
    Verdicts,
)
from releasegate.judge.latency import slower_matrix, slower_share

__all__ = ["Judge", "JudgeState", "MetricConfig", "MetricState", "MetricVerdict", "Traffic", "Verdict", "Verdicts",
           "slower_matrix", "slower_share"]
