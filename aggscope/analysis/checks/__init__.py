"""``aggscope check`` as a library: prompt groups cut by the trainer's split, silent zero-advantage
rows, and one cause for every loss token that gets no gradient.

Per step, ``check_step`` returns a ``StepCheck`` (findings, cut prompts, zero-gradient causes and
the little per-row data the advice and the split picture need); ``CheckAccumulator`` merges steps
into a ``CheckReport``; ``run_checks`` does both over an opened input or steps in memory, on any
engine. All per-step work is vectorised over rows; Python loops run only over findings.

Modules, one idea each: ``catalogue`` (the codes, severities and ``Finding``), ``quantities``
(per-row and per-group views of a step, and of steps stacked), ``step`` (one step's findings,
``StepCheck``), ``stacked`` (``check_steps``: the per-row work of many steps at once, then ``step``'s
findings per step; ``check_step`` of one), ``boundary`` (SkyRL's
boundary-based prompt_mean and its findings), ``safe_sizes`` (mini-batch sizes that cut no
prompt), ``messages`` (the English of the messages), ``merge`` (``CheckAccumulator``,
``CheckReport``, ``run_checks``). Import the public names from this package.

Notation: rows are ``seq_index`` values (0-based input order within the step); "trainer order" is
the order of ``Split.order``; a *run* is a maximal stretch of equal consecutive uids in trainer
order; ``L_i`` is the loss-token count of row ``i``; ``A`` an advantage.

Rules where the issue leaves a choice (each chosen for what a user debugging a run expects):

- Row-level findings (``nonfinite_advantage``, ``zero_advantage``, ``masked_token_advantage``,
  ``empty_sequence``) are grouped per (step, uid): one finding per prompt, listing its rows; without
  a uid column, one finding per step with ``uid`` null. Group-level findings are one per (step, uid).
  ``rebased_prompt_mean_misweight`` is one finding per (step, mini-batch) with ``uid`` null, since the
  whole mini-batch is re-weighted by one wrong prompt count.
- ``tokens`` counts loss tokens, except ``masked_token_advantage`` (the masked tokens that carry an
  advantage) and ``empty_sequence`` (0: the row has none). A cut prompt's finding lists all the
  prompt's rows and loss tokens.
- A cut prompt is named once, at its coarsest level, with the worst severity of the levels it is
  cut at (so a rank cut is a warning when ``token_mean_legacy`` is selected, as its micro-batch cut
  would be).
- ``noncontiguous_uid`` and the boundary prompt_mean are evaluated in trainer order (what the
  trainer receives). A step with a non-contiguous uid gets neither ``silent_zero_advantage`` nor
  ``rebased_prompt_mean_misweight``: SkyRL stops with an assertion on it instead.
- ``silent_zero_advantage`` and ``rebased_prompt_mean_misweight`` are reported only when
  ``prompt_mean`` is among the selected modes; rows without a loss token are never misweighted.
- ``zero_variance_group``: a group of two or more whose finite rewards are all exactly equal; a group
  whose rewards are all NaN (or data without rewards) is judged by its advantages (all 0).
- "reward equals its group's mean" allows a relative difference of ``1e-9`` (the mean is computed,
  so it carries rounding); the mean is over the group's finite rewards.
- ``incomplete_group`` compares with the step's most common group size (the largest on a tie).

Zero-gradient causes, first that applies, for each loss token whose gradient weight ``w_i * A`` is
0 or not finite: ``nonfinite_advantage`` (A not finite), ``zero_variance_group`` (A == 0 in a
zero-variance group), ``reward_at_group_mean`` (A == 0, the row's reward is its group's mean),
``zero_advantage`` (any other A == 0), and two added causes for non-zero finite advantages:
``zero_weight`` (``w_i == 0``) and ``nonfinite_weight`` (``w_i`` not finite). The canonical modes
give every loss token a positive finite weight, so the added two stay 0 for them; they make the
causes add up to ``zero_grad_tokens + nonfinite_grad_tokens`` of ``weights`` for any weight.
"""

from aggscope.analysis.check_settings import (
    FAIL_ON_LEVELS,
    SEVERITIES,
    CheckOptions,
    NoGradThresholds,
    parse_fail_on,
    parse_max_no_grad_share,
    parse_max_response_len,
    trainer_of_dump,
)
from aggscope.analysis.checks.boundary import MISWEIGHT_RTOL, boundary_prompt_mean
from aggscope.analysis.checks.catalogue import (
    CODES,
    CUT_LEVELS,
    ZERO_GRAD_CAUSES,
    CheckCode,
    Finding,
    count_severities,
)
from aggscope.analysis.checks.merge import (
    CheckAccumulator,
    CheckReport,
    StepZeroGrad,
    run_checks,
    unused_field_findings,
)
from aggscope.analysis.checks.messages import layout_flags
from aggscope.analysis.checks.quantities import REWARD_MEAN_RTOL
from aggscope.analysis.checks.safe_sizes import SafeSizes, safe_chunk_sizes
from aggscope.analysis.checks.stacked import check_step, check_steps
from aggscope.analysis.checks.step import StepCheck, StepLanes, zero_grad_causes
from aggscope.analysis.checks.truncation import response_lengths

__all__ = [
    "CODES",
    "CUT_LEVELS",
    "FAIL_ON_LEVELS",
    "MISWEIGHT_RTOL",
    "REWARD_MEAN_RTOL",
    "SEVERITIES",
    "ZERO_GRAD_CAUSES",
    "CheckAccumulator",
    "CheckCode",
    "CheckOptions",
    "CheckReport",
    "Finding",
    "NoGradThresholds",
    "SafeSizes",
    "StepCheck",
    "StepLanes",
    "StepZeroGrad",
    "boundary_prompt_mean",
    "check_step",
    "check_steps",
    "count_severities",
    "layout_flags",
    "parse_fail_on",
    "parse_max_no_grad_share",
    "parse_max_response_len",
    "response_lengths",
    "run_checks",
    "safe_chunk_sizes",
    "trainer_of_dump",
    "unused_field_findings",
    "zero_grad_causes",
]
