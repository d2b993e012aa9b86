"""Many steps: ``CheckAccumulator`` merges the steps' ``StepCheck`` into a ``CheckReport``.

``run_checks`` checks every step (on any engine, through ``aggscope.analysis.runner.run``) and
merges the results; ``CheckReport.fails`` compares the findings with a ``--fail-on`` level
(``aggscope.analysis.check_settings.parse_fail_on`` validates it).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aggscope.analysis.check_settings import CheckOptions, parse_fail_on
from aggscope.analysis.checks.catalogue import (
    ADVISED_CODES,
    CODES,
    CUT_LEVELS,
    LEGACY_CUT_CODES,
    SEVERITY_RANK,
    ZERO_GRAD_CAUSES,
    Finding,
    count_severities,
)
from aggscope.analysis.checks.no_gradient import no_gradient_findings
from aggscope.analysis.checks.safe_sizes import SafeSizes, mini_batch_advice
from aggscope.analysis.checks.stacked import check_step, check_steps
from aggscope.analysis.checks.step import StepCheck, StepLanes
from aggscope.analysis.runner import Batches, Engine, Progress, SteppedRollouts, run
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode, default_modes
from aggscope.io.reader import unrecoverable_of


@dataclass(frozen=True)
class StepZeroGrad:
    """The zero-gradient causes of one step, and the loss tokens a boundary-based prompt_mean (SkyRL's)
    leaves at weight 0 where the canonical one gives them a gradient (``StepCheck.boundary_zeroed_tokens``)."""

    step: int
    loss_tokens: int
    zero_grad: dict[str, dict[str, int]]
    boundary_zeroed_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss_tokens": self.loss_tokens,
            "zero_grad": self.zero_grad,
            "boundary_zeroed_tokens": self.boundary_zeroed_tokens,
        }


@dataclass(frozen=True, eq=False)
class CheckReport:
    """The result of ``aggscope check``.

    Attributes:
        findings: every finding, worst first (severity, code, step, first row).
        zero_grad: ``{mode: {cause: loss tokens}}`` over all steps.
        cut_prompts: ``{level: [(step, uid), ...]}`` for every level in ``CUT_LEVELS``.
        steps: the zero-gradient causes of each step.
        loss_tokens: loss tokens over all steps.
        worst_step: the split picture data of the step with the worst findings, or None.
        options: the thresholds, response cap and trainer the checks ran with.
    """

    layout: Layout
    modes: list[str]
    findings: list[Finding]
    zero_grad: dict[str, dict[str, int]]
    cut_prompts: dict[str, list[tuple[int, str]]]
    steps: list[StepZeroGrad]
    loss_tokens: int
    sequences: int
    notes: list[str]
    worst_step: StepLanes | None = None
    lengths_estimated: bool = False
    unrecoverable: list[dict[str, Any]] = field(default_factory=list)  # what the dump cannot tell (``Unrecoverable``)
    options: CheckOptions = field(default_factory=CheckOptions)

    @property
    def boundary_zeroed_tokens(self) -> int:
        """Loss tokens over all steps that a boundary-based prompt_mean (SkyRL's) leaves at weight 0 where
        the canonical ``prompt_mean`` gives them a gradient (0 where that check did not run)."""
        return sum(s.boundary_zeroed_tokens for s in self.steps)

    def counts(self, step: int | None = None) -> dict[str, int]:
        """Findings per severity, over all steps or in one step."""
        return count_severities(self.findings, step)

    def fails(self, fail_on: str) -> bool:
        """True when some finding is at or above ``fail_on`` (``error``, ``warning``, ``info``, ``never``)."""
        threshold = parse_fail_on(fail_on)
        if threshold == "never":
            return False
        return any(SEVERITY_RANK[f.severity] <= SEVERITY_RANK[threshold] for f in self.findings)

    def for_mode(self, mode: str) -> CheckReport:
        """The report as a user training with ``mode`` alone would get it: the findings that concern
        ``mode`` (a cut that ``token_mean_legacy`` raised to a warning is back at its own severity
        under another mode), and ``mode``'s zero-gradient accounting."""
        findings = []
        for finding in self.findings:
            if not finding.concerns(mode):
                continue
            if finding.code in LEGACY_CUT_CODES and mode != "token_mean_legacy":
                finding = replace(finding, severity=CODES[finding.code].severity)
            findings.append(finding)
        findings.sort(key=lambda f: f.sort_key)
        steps = [
            StepZeroGrad(
                s.step,
                s.loss_tokens,
                {m: c for m, c in s.zero_grad.items() if m == mode},
                s.boundary_zeroed_tokens if mode == "prompt_mean" else 0,
            )
            for s in self.steps
        ]
        zero_grad = {m: c for m, c in self.zero_grad.items() if m == mode}
        return replace(self, modes=[m for m in self.modes if m == mode], findings=findings, zero_grad=zero_grad, steps=steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "zero_grad": self.zero_grad,
            "cut_prompts": {
                level: [{"step": step, "uid": uid} for step, uid in pairs] for level, pairs in self.cut_prompts.items()
            },
            "counts": self.counts(),
            "loss_tokens": self.loss_tokens,
            "boundary_zeroed_tokens": self.boundary_zeroed_tokens,
            "sequences": self.sequences,
            "steps": [s.to_dict() for s in self.steps],
            "layout": self.layout.to_dict(),
            "modes": self.modes,
            "notes": self.notes,
            "lengths_estimated": self.lengths_estimated,
            "unrecoverable": self.unrecoverable,
            "options": self.options.to_dict(),
            "worst_step": None
            if self.worst_step is None
            else {"step": self.worst_step.step, "counts": self.counts(self.worst_step.step)},
        }


@dataclass
class CheckAccumulator:
    """Merges ``StepCheck`` results, one step at a time, into a ``CheckReport`` (a runner ``Merger``).

    Keeps the findings, the cut prompts, the per-step zero-gradient counts, the running intersection
    of the safe mini-batch sizes, and the split picture of the worst step only.
    """

    layout: Layout
    options: CheckOptions = field(default_factory=CheckOptions)
    unused_fields: tuple[tuple[str, str], ...] = ()
    used_fields: tuple[tuple[str, str], ...] = ()
    findings: list[Finding] = field(default_factory=list)
    steps: list[StepZeroGrad] = field(default_factory=list)
    cut_prompts: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: {level: [] for level in CUT_LEVELS})
    group_sizes: Counter[int] = field(default_factory=Counter)
    notes: dict[str, None] = field(default_factory=dict)
    safe: SafeSizes | None = None
    modes: list[str] | None = None
    loss_tokens: int = 0
    sequences: int = 0
    lengths_estimated: bool = False
    _worst: tuple[tuple[int, ...], StepLanes] | None = None

    def add(self, check: StepCheck) -> None:
        if self.modes is None:
            self.modes = list(check.zero_grad)
        self.findings.extend(check.findings)
        self.steps.append(StepZeroGrad(check.step, check.loss_tokens, check.zero_grad, check.boundary_zeroed_tokens))
        self.loss_tokens += check.loss_tokens
        self.sequences += check.sequences
        self.lengths_estimated = self.lengths_estimated or check.lengths_estimated
        for level, uids in check.cut_prompts.items():
            self.cut_prompts[level].extend((check.step, uid) for uid in uids)
        self.group_sizes.update(check.group_sizes)
        for note in check.notes:
            self.notes.setdefault(note, None)
        if check.safe is not None:
            self.safe = check.safe.intersect(self.safe)
        if check.lanes is not None:
            key = tuple(count_severities(check.findings).values())
            if self._worst is None or key > self._worst[0]:
                self._worst = (key, check.lanes)

    def result(self) -> CheckReport:
        modes = self.modes or []
        total = {mode: dict.fromkeys(ZERO_GRAD_CAUSES, 0) for mode in modes}
        for step in self.steps:
            for mode, causes in step.zero_grad.items():
                for cause, tokens in causes.items():
                    total[mode][cause] += tokens
        advice = mini_batch_advice(self.layout, self.safe, self.group_sizes)
        findings = [
            replace(f, message=f"{f.message} {advice}") if advice and f.code in ADVISED_CODES else f for f in self.findings
        ]
        if len(self.steps) > 1:  # one step's finding already is the run's
            findings += no_gradient_findings(None, self.loss_tokens, total, self.options.no_grad)
        findings += unused_field_findings(self.unused_fields, self.used_fields)
        findings.sort(key=lambda f: f.sort_key)
        notes = list(self.notes)
        return CheckReport(
            layout=self.layout,
            modes=modes,
            findings=findings,
            zero_grad=total,
            cut_prompts={level: list(pairs) for level, pairs in self.cut_prompts.items()},
            steps=list(self.steps),
            loss_tokens=self.loss_tokens,
            sequences=self.sequences,
            notes=notes,
            worst_step=self._worst[1] if self._worst is not None else None,
            lengths_estimated=self.lengths_estimated,
            options=self.options,
        )


def run_checks(
    rollouts: SteppedRollouts | Iterable[StepBatch],
    modes: Sequence[Mode | str] | None = None,
    layout: Layout | None = None,
    *,
    engine: Engine | None = None,
    progress: Progress | None = None,
    options: CheckOptions | None = None,
    unused_fields: Sequence[tuple[str, str]] = (),
    used_fields: Sequence[tuple[str, str]] = (),
) -> CheckReport:
    """Check every step, one at a time, and merge the results.

    The steps' ``StepCheck`` results are merged in step order, so the report is the same on every engine.

    Args:
        rollouts: the opened input (``aggscope.open_rollouts``), or steps in memory (any iterable).
        modes: the modes the user trains with; default every mode that applies to the first step
            (read once on the local engine: the step read to see it is the first one checked; on
            Ray the driver reads it once more).
        layout: the trainer configuration (default: one mini-batch).
        engine: where the steps run (``aggscope.analysis.runner.open_engine``); None: this process.
        progress: optional wrapper of the results as they come (a progress bar).
        options: thresholds, the response cap and the trainer in use (default ``CheckOptions()``).
        unused_fields: ``(field, what the trainer does with it)`` of the dump fields the computation
            does not use (``Rollouts.unused_fields``); each gives an ``unused_dump_field`` finding.
        used_fields: the same for the dump fields the weights do use (``Rollouts.used_fields``,
            ``--use-dump-weights``); the finding then says so, as an info.
    """
    layout = layout or Layout()
    facts = unrecoverable_of(rollouts)
    options = options or CheckOptions()
    if modes is None:
        rollouts, modes = _first_step_modes(rollouts, layout, local=engine is None or engine.name == "local")
    work = functools.partial(check_step, modes=list(modes), layout=layout, options=options)
    # runs of small steps are checked together (``check_steps``), the same results
    work_on_steps = functools.partial(check_steps, modes=list(modes), layout=layout, options=options)
    merger = CheckAccumulator(layout, options, tuple(unused_fields), tuple(used_fields))
    report = run(engine, rollouts, work, merger, progress, work_on_steps)
    return replace(report, unrecoverable=facts)


def unused_field_findings(fields: Sequence[tuple[str, str]], used: Sequence[tuple[str, str]] = ()) -> list[Finding]:
    """One ``unused_dump_field`` finding, over the run, per per-token dump field: a warning for each the
    computation leaves aside (``fields``), an info saying so for each it takes in (``used``)."""
    unused = [
        (
            CODES["unused_dump_field"].severity,
            f"the dump carries {name!r}, which these weights do not use: {what} Every weight and gradient share here "
            "assumes a trainer that ignores it; where yours uses it, the numbers differ where it does.",
        )
        for name, what in fields
    ]
    taken = [
        (
            "info",
            f"the dump carries {name!r}, which these weights use: {what} Every weight and gradient share here takes it in.",
        )
        for name, what in used
    ]
    return [Finding("unused_dump_field", severity, None, None, (), 0, message) for severity, message in unused + taken]


def _first_step_modes(
    rollouts: SteppedRollouts | Iterable[StepBatch], layout: Layout, *, local: bool = True
) -> tuple[SteppedRollouts | Iterable[StepBatch], list[Mode]]:
    """Every mode that applies to the first step (none without steps), and the steps, none of them used up.

    On the local engine an opened input is read once: its first step, read to see it, is the first
    step the checks then get (``_first_then``). Ray reads the steps where its tasks run, so there
    the first step is read once more here.
    """
    if isinstance(rollouts, Batches):
        return _first_step_modes(rollouts.batches, layout)
    first: StepBatch | None
    if isinstance(rollouts, (list, tuple)):
        first = rollouts[0] if rollouts else None
    elif isinstance(rollouts, SteppedRollouts) and not local:
        first = next(iter(rollouts.iter_steps()), None)
    else:
        steps = iter(rollouts.iter_steps() if isinstance(rollouts, SteppedRollouts) else rollouts)
        first = next(steps, None)
        rollouts = Batches(_first_then(first, steps) if first is not None else steps)
    modes = [] if first is None else default_modes(has_groups=first.has_groups, max_seq_len=layout.max_seq_len)
    return rollouts, modes


def _first_then(first: StepBatch, rest: Iterator[StepBatch]) -> Iterator[StepBatch]:
    """``first``, then ``rest``: the first let go once given out, so it is not kept for the whole run."""
    yield first
    del first
    yield from rest
