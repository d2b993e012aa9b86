"""Where the gradient goes under each SPEC: one pass over the steps, then breakdowns by row group.

``run_breakdown`` reads every step once and, for each distinct layout among the SPECs, runs the
engine (``analyse_step``) and ``check`` (``check_step``) on it with the SPECs' modes
(``step.breakdown_step``), then merges the steps in step order (``merge.BreakdownMerger``) into a
``Breakdown`` (``model``): per-sequence data only, plus one histogram of per-token gradient weights
per SPEC. Figures and reports are built from its breakdowns by response length, prompt difficulty
and prompt.
"""

from aggscope.analysis.breakdown.merge import BreakdownMerger, run_breakdown
from aggscope.analysis.breakdown.model import (
    DIFFICULTY_BUCKETS,
    HISTOGRAM_LOG10_EDGES,
    Breakdown,
    Buckets,
    SpecResult,
    TokenHistogram,
)
from aggscope.analysis.breakdown.step import BreakdownStep, breakdown_step

__all__ = [
    "DIFFICULTY_BUCKETS",
    "HISTOGRAM_LOG10_EDGES",
    "Breakdown",
    "BreakdownMerger",
    "BreakdownStep",
    "Buckets",
    "SpecResult",
    "TokenHistogram",
    "breakdown_step",
    "run_breakdown",
]
