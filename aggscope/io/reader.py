"""What every reader is: the ``Rollouts`` interface, and the options every reader is opened with.

``aggscope.io.open.open_rollouts`` returns a ``Rollouts``: the canonical Parquet reader
(``aggscope.io.parquet.ParquetRollouts``) or a trainer-dump reader (``aggscope.io.readers``). Each
is built in one call, ``Reader.open(path, options)``, and every member below is there on every
reader, so callers never probe for one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aggscope.errors import AggscopeError

if TYPE_CHECKING:  # imported by the runner before torch is needed
    from aggscope.core.batch import StepBatch

TEXT_FORMATS = ("verl", "trl")


@dataclass(frozen=True)
class ReadOptions:
    """The shared input options (``--col``, ``--reward-col``, ``--advantage``, ``--tokenizer``).

    Attributes:
        columns: explicit ``{role: field}`` overrides.
        reward_col: the field or column holding the reward, where a dump has several.
        advantage: estimator to rebuild advantages from rewards (``grpo``, ``dr_grpo``, ``rloo``),
            or None for the dump's own advantages (GRPO where it has none).
        tokenizer: a local tokenizer folder for the token counts of text-only dumps.
        trust_pickle: unpickle ``.pkl``/``.pt`` dumps fully (runs code they name; ``aggscope.io.safe_load``).
        eos_trained: whether each completion's trained end-of-sequence token, which the decoded text
            leaves out, is counted (``--eos-trained``/``--no-eos-trained``); None for the format's
            default (on for TRL).
        max_completion_length: the trainer's cap on completion tokens; a completion that long was
            cut there, without an end-of-sequence token.
        use_dump_weights: take the dump's own per-token loss weights into the weights as the trainer
            that reads them does (``--use-dump-weights``: prime-rl's ``rl_weights``).
        tool_mask: count the tool turns a verl multi-turn output shows as not trained
            (``--tool-mask``/``--no-tool-mask``); None for the default (on for verl).
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    reward_col: str | None = None
    advantage: str | None = None
    tokenizer: str | None = None
    trust_pickle: bool = False
    eos_trained: bool | None = None
    max_completion_length: int | None = None
    use_dump_weights: bool = False
    tool_mask: bool | None = None


@dataclass(frozen=True)
class Unrecoverable:
    """A trainer fact the dump does not hold, and which numbers it affects.

    Attributes:
        fact: what the dump lacks, in the trainer's terms (``the order TRL shuffled each
            generation into``).
        affects: which numbers that changes (``bnpo micro-batch denominators; step sums exact``),
            or where aggscope then estimates.
        modes: the aggregation modes whose weights it changes; empty when it concerns no weight
            (only a finding, a count or the advantages), ``("*",)`` for every mode.
    """

    fact: str
    affects: str
    modes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"fact": self.fact, "affects": self.affects, "modes": list(self.modes)}


def no_such_step(source: str, step: int, steps: Sequence[int]) -> AggscopeError:
    """The error for a step the input does not hold, naming the steps it does (the first and last few of many)."""
    shown = (
        ", ".join(map(str, steps))
        if len(steps) <= 12
        else f"{', '.join(map(str, steps[:5]))}, …, {', '.join(map(str, steps[-5:]))}"
    )
    return AggscopeError(f"{source}: no step {step}; steps: {shown or 'none'}")


def unrecoverable_from(records: object) -> tuple[Unrecoverable, ...]:
    """The list a converted file recorded (``unrecoverable_of``'s), skipping entries of another shape."""
    if not isinstance(records, list):
        return ()
    facts = []
    for record in records:
        if not isinstance(record, dict):
            continue
        fact, affects, modes = record.get("fact"), record.get("affects"), record.get("modes", [])
        if isinstance(fact, str) and isinstance(affects, str) and isinstance(modes, list):
            facts.append(Unrecoverable(fact, affects, tuple(str(mode) for mode in modes)))
    return tuple(facts)


def unrecoverable_of(rollouts: object) -> list[dict[str, object]]:
    """The ``unrecoverable`` list of ``--json`` and report.json: an opened input's, or none for batches in memory."""
    return [fact.as_dict() for fact in getattr(rollouts, "unrecoverable", ())]


class Rollouts(ABC):
    """An opened input: its steps, read one at a time into ``StepBatch``.

    Attributes:
        source: the path as given, for messages.
        files: the files read, in reading order.
        columns: role -> the column or dump field it is read from (as ``inspect`` shows it).
        format: the trainer dump's format (``verl``, ``trl``, ...) or, for canonical Parquet, its
            row layout (``wide``: a row per sequence, ``long``: a row per token); ``inspect --json``
            shows it under ``layout``.
        steps: the step numbers present, ascending.
        notes: what the reader noticed about the input; reading a step may add to them.
        has_groups: whether the batches carry prompt groups (uids).
        lengths_estimated: whether token counts are estimated from text.
        unrecoverable: the trainer facts this dump cannot tell, each with the numbers it affects
            (``inspect``, the report and every ``--json`` list them under ``unrecoverable``).
        recorded_layout: layout fields the dump itself records (SkyRL's mini-batch boundaries:
            ``{"mini_batch_prompts": 4}``), used where no flag or ``--config`` sets them
            (``aggscope.presets.recorded``); None when it records none.
        recorded_layout_source: where in the dump they were read, for the line that says so.
        unused_fields: ``(field, what it holds and how a trainer uses it)`` of the per-token dump
            fields the weights do not use (``check`` says so: ``unused_dump_field``).
        used_fields: the same for the per-token dump fields the weights do use
            (``--use-dump-weights``); ``check``'s ``unused_dump_field`` finding says they are used.
    """

    source: str
    files: list[str]
    columns: dict[str, str]
    format: str
    steps: list[int]
    notes: list[str]
    has_groups: bool
    lengths_estimated: bool
    unrecoverable: tuple[Unrecoverable, ...] = ()
    recorded_layout: dict[str, int] | None = None
    recorded_layout_source: str = ""
    unused_fields: tuple[tuple[str, str], ...] = ()
    used_fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    @abstractmethod
    def open(cls, path: str, options: ReadOptions) -> Rollouts:
        """The reader of ``path``, fully built (every check of the input's shape done here)."""

    @abstractmethod
    def read_step(self, step: int) -> StepBatch:
        """Read one step (also where the reader was sent to: a Ray task reads its own step)."""

    def iter_steps(self) -> Iterator[StepBatch]:
        """Yield one ``StepBatch`` per step, ascending, holding only that step in memory."""
        for step in self.steps:
            yield self.read_step(step)

    def step_tokens(self, step: int) -> int | None:
        """The step's token count known before reading it (from file metadata), or None."""
        return None


def reject_options(
    options: ReadOptions,
    fmt: str,
    *,
    reward_col: bool = True,
    advantage: bool = True,
    tokenizer: bool = False,
    eos: bool = False,
    roles: Sequence[str] = (),
) -> None:
    """One-line error for an input option the format cannot honour (rather than ignoring it)."""
    if not eos:
        given = "--eos-trained" if options.eos_trained else "--no-eos-trained" if options.eos_trained is False else None
        if options.max_completion_length is not None:
            given = "--max-completion-length"
        if given is not None:
            raise AggscopeError(f"{given} applies to TRL completions files (decoded text without its end token); not to {fmt}")
    if options.tokenizer is not None and not tokenizer:
        raise AggscopeError(
            f"--tokenizer counts the tokens of text-only dumps ({', '.join(TEXT_FORMATS)}); the {fmt} format holds tokens already"
        )
    if options.advantage is not None and not advantage:
        raise AggscopeError(f"--advantage: the {fmt} format has no rewards and prompt groups to rebuild advantages from")
    if options.reward_col is not None and not reward_col:
        raise AggscopeError(f"--reward-col: the {fmt} format has no reward field to choose")
    unknown = [role for role in options.columns if role not in roles]
    if unknown:
        allowed = f"only {', '.join(roles)}" if roles else "no roles"
        raise AggscopeError(f"--col {unknown[0]}=...: the {fmt} reader takes {allowed} from --col")
