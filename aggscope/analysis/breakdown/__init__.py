"""Where the gradient goes under each SPEC: one pass over the steps, then breakdowns by row group.

``run_breakdown`` reads every step once and, for each distinct layout among the SPECs, runs the
engine (``analyse_step``) and ``check`` (``check_step``) on it with the SPECs' modes
(``step.breakdown_step``), then merges the steps in step order (``merge.BreakdownMerger``) into a
``Breakdown`` (``model``): per-sequence data only, plus one histogram of per-token gradient weights
per SPEC. ``compare_specs`` (``outcomes``) turns a breakdown into what the reports state: each SPEC's
shares by response length, prompt difficulty and sign, and each candidate's change against the base.
"""

from aggscope.analysis.breakdown.merge import BreakdownMerger, run_breakdown
from aggscope.analysis.breakdown.model import (
    DIFFICULTY_BUCKETS,
    HISTOGRAM_LOG10_EDGES,
    Breakdown,
    Buckets,
    BucketShares,
    Concentration,
    PromptMove,
    SignShares,
    SpecResult,
    TokenHistogram,
)
from aggscope.analysis.breakdown.outcomes import (
    RATIO_QUANTILES,
    TOP_PROMPTS,
    Change,
    Comparison,
    EssChange,
    Shift,
    SpecOutcome,
    compare_specs,
)
from aggscope.analysis.breakdown.step import BreakdownStep, breakdown_step

__all__ = [
    "DIFFICULTY_BUCKETS",
    "HISTOGRAM_LOG10_EDGES",
    "RATIO_QUANTILES",
    "TOP_PROMPTS",
    "Breakdown",
    "BreakdownMerger",
    "BreakdownStep",
    "BucketShares",
    "Buckets",
    "Change",
    "Comparison",
    "Concentration",
    "EssChange",
    "PromptMove",
    "Shift",
    "SignShares",
    "SpecOutcome",
    "SpecResult",
    "TokenHistogram",
    "breakdown_step",
    "compare_specs",
    "run_breakdown",
]
