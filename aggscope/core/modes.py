"""Loss aggregation modes: one small function each, in one registry.

Every mode gives all loss tokens of a sequence the same weight, so a mode is a function from
per-row quantities to a per-row weight ``w_i`` (``[n_seqs]`` float64); the per-token weight is
``w_i * m[i, t]``. Notation (one mini-batch ``b``): ``N_b`` rows, ``T_b`` loss tokens, ``P_b``
distinct uids, ``T_{p,b}`` loss tokens of uid ``p`` in ``b``, ``K_b`` micro-batches holding a row
(over all ranks), ``T_k`` loss tokens of micro-batch ``k``, ``L_i`` loss tokens of row ``i``,
``H`` the horizon, ``T_s`` loss tokens and ``M_s`` mini-batches of the whole step. Denominators are clamped to at least 1.

To add a mode, write one function below and decorate it with ``@register``. The registry itself
loads no numpy (a command checks ``--mode`` before the numerical code loads), so each weight
function imports numpy when it runs. A mode registered
with ``in_defaults=False`` is a trainer's variant of another (computed when named, or when a
trainer preset selects it), kept out of the default set so that it does not repeat its sibling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggscope.errors import AggscopeError, did_you_mean

if TYPE_CHECKING:
    import numpy as np

    from aggscope.core.split import Split


@dataclass(frozen=True)
class ModeInputs:
    """What a mode's weight function may read; arrays are ``[n_seqs]`` indexed by seq_index.

    Attributes:
        loss_tokens: ``L_i`` as float64.
        split: where every row lands (mini-batch, rank, micro-batch).
        group_ids: uid codes, or None.
        n_groups: number of distinct uids in the step.
        max_seq_len: the horizon ``H``, or None.
        lengths: all tokens of row ``i`` (masked ones included) as float64, or None.
    """

    loss_tokens: np.ndarray
    split: Split
    group_ids: np.ndarray | None
    n_groups: int
    max_seq_len: int | None
    lengths: np.ndarray | None = None

    def per_mini_batch(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` over each row's mini-batch, gathered back to rows: ``[n] -> [n]``."""
        from aggscope.core.segments import group_sum

        mini_batch = self.split.mini_batch
        return group_sum(values, mini_batch, self.split.n_mini_batches)[mini_batch]

    def rows_per_mini_batch(self) -> np.ndarray:
        """``N_b`` of each row's mini-batch as float64: ``[n]``."""
        import numpy as np

        return self.per_mini_batch(np.ones_like(self.loss_tokens))


WeightFn = Callable[[ModeInputs], "np.ndarray"]


@dataclass(frozen=True)
class Mode:
    """A registered aggregation mode."""

    name: str
    weight: WeightFn
    formula: str
    aliases: tuple[str, ...] = ()
    needs_groups: bool = False
    needs_horizon: bool = False
    in_defaults: bool = True
    stacks: bool = False


MODES: dict[str, Mode] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    formula: str,
    *,
    aliases: Iterable[str] = (),
    needs_groups: bool = False,
    needs_horizon: bool = False,
    in_defaults: bool = True,
    stacks: bool = False,
) -> Callable[[WeightFn], WeightFn]:
    """Register a mode's weight function under its canonical name and the frameworks' names.

    ``stacks``: a row's weight depends only on the rows of its own mini-batch (their tokens,
    micro-batches and prompts), never on the step as a whole, so the weights of several steps
    stacked with run-wide ids (``aggscope.core.stack``) are each step's own, bit for bit.
    """

    def decorate(weight: WeightFn) -> WeightFn:
        mode = Mode(name, weight, formula, tuple(aliases), needs_groups, needs_horizon, in_defaults, stacks)
        MODES[name] = mode
        for alias in (name, *mode.aliases):
            _ALIASES[_normalise(alias)] = name
        return weight

    return decorate


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


@register("token_mean", "1 / T_b", aliases=("dapo", "cispo", "token_level"), stacks=True)
def token_mean(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    tokens_in_mini_batch = inputs.per_mini_batch(inputs.loss_tokens)  # [n] T_b
    return 1.0 / np.maximum(tokens_in_mini_batch, 1)


@register("token_mean_legacy", "1 / (K_b * T_k)", aliases=("bnpo",), stacks=True)
def token_mean_legacy(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    from aggscope.core.segments import group_sum

    split = inputs.split
    unit = split.micro_unit
    n_units = split.n_micro_units
    tokens_in_unit = group_sum(inputs.loss_tokens, unit, n_units)[unit]  # [n] T_k
    # Every unit holds at least one row, so K_b is the number of units whose mini-batch is b.
    mini_batch_of_unit = np.zeros(n_units, dtype=np.int64)
    mini_batch_of_unit[unit] = split.mini_batch
    units_per_mini_batch = np.bincount(mini_batch_of_unit, minlength=split.n_mini_batches)  # [n_mb] K_b
    k_b = units_per_mini_batch[split.mini_batch].astype(np.float64)  # [n]
    return 1.0 / (k_b * np.maximum(tokens_in_unit, 1))


@register("token_sum", "1", stacks=True)
def token_sum(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    return np.ones_like(inputs.loss_tokens)


@register("sequence_mean", "1 / (N_b * L_i)", aliases=("seq_mean_token_mean", "grpo", "sapo", "gspo", "sample"), stacks=True)
def sequence_mean(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    return 1.0 / (inputs.rows_per_mini_batch() * np.maximum(inputs.loss_tokens, 1))


@register("seq_mean_token_sum", "1 / N_b", stacks=True)
def seq_mean_token_sum(inputs: ModeInputs) -> np.ndarray:
    return 1.0 / inputs.rows_per_mini_batch()


@register("seq_mean_token_sum_norm", "1 / (N_b * H)", aliases=("dr_grpo",), needs_horizon=True, stacks=True)
def seq_mean_token_sum_norm(inputs: ModeInputs) -> np.ndarray:
    assert inputs.max_seq_len is not None
    return 1.0 / (inputs.rows_per_mini_batch() * float(inputs.max_seq_len))


@register("prompt_mean", "1 / (P_b * T_{p,b})", aliases=("prompt_average",), needs_groups=True, stacks=True)
def prompt_mean(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    from aggscope.core.segments import group_sum

    assert inputs.group_ids is not None
    mini_batch = inputs.split.mini_batch
    prompt_in_mini_batch = mini_batch * max(inputs.n_groups, 1) + inputs.group_ids  # [n] key of (b, p)
    _, cell = np.unique(prompt_in_mini_batch, return_inverse=True)  # [n] dense (b, p) index
    cell = cell.reshape(-1)
    n_cells = int(cell.max()) + 1 if cell.size else 0
    tokens_of_prompt = group_sum(inputs.loss_tokens, cell, n_cells)[cell]  # [n] T_{p,b}
    mini_batch_of_cell = np.zeros(n_cells, dtype=np.int64)
    mini_batch_of_cell[cell] = mini_batch
    prompts_per_mini_batch = np.bincount(mini_batch_of_cell, minlength=inputs.split.n_mini_batches)  # [n_mb] P_b
    p_b = prompts_per_mini_batch[mini_batch].astype(np.float64)  # [n]
    return 1.0 / (p_b * np.maximum(tokens_of_prompt, 1))


@register("sequence_mean_nonempty", "1 / (N+_b * L_i)", in_defaults=False, stacks=True)
def sequence_mean_nonempty(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    # OpenRLHF's sample mode: N+_b counts only the rows with at least one loss token
    # (openrlhf/utils/loss_utils.py), where verl and SkyRL count every row.
    has_tokens = (inputs.loss_tokens > 0).astype(np.float64)  # [n]
    nonempty_rows = inputs.per_mini_batch(has_tokens)  # [n] N+_b
    return 1.0 / (np.maximum(nonempty_rows, 1) * np.maximum(inputs.loss_tokens, 1))


@register("seq_mean_token_sum_norm_padded", "1 / (N_b * W_k)", in_defaults=False, stacks=True)
def seq_mean_token_sum_norm_padded(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    # verl 0.9.1 with loss_scale_factor null: the horizon is the padded width of the micro-batch the
    # loss was computed on, i.e. W_k = the most tokens (masked ones included) of a row of micro-batch k.
    assert inputs.lengths is not None
    unit = inputs.split.micro_unit
    n_units = inputs.split.n_micro_units
    width = np.zeros(n_units, dtype=np.float64)  # [n_units] W_k
    np.maximum.at(width, unit, inputs.lengths)
    return 1.0 / (inputs.rows_per_mini_batch() * np.maximum(width[unit], 1))


@register("token_mean_generation", "M_s / T_s", in_defaults=False)
def token_mean_generation(inputs: ModeInputs) -> np.ndarray:
    import numpy as np

    # TRL 1.16.0 dapo/cispo/vespo: num_items_in_batch counts the loss tokens T_s of the whole
    # generation batch (the logged step), rescaled by GA / SPG to one optimizer step; with M_s =
    # SPG / GA optimizer steps per generation batch that is 1 / (T_s / M_s) on every token, so an
    # optimizer step's weights sum to T_b M_s / T_s, about 1 but not 1. With M_s = 1: token_mean.
    step_tokens = float(inputs.loss_tokens.sum())  # T_s
    weight = inputs.split.n_mini_batches / max(step_tokens, 1.0)
    return np.full_like(inputs.loss_tokens, weight)


def mode_names() -> list[str]:
    """Canonical names in registry order."""
    return list(MODES)


def resolve_mode(name: str) -> Mode:
    """The mode for a canonical name or any framework alias; one-line error listing valid names."""
    canonical = _ALIASES.get(_normalise(name))
    if canonical is None:
        aliases = sorted(a for a in _ALIASES if a not in MODES)
        hint = did_you_mean(name, list(_ALIASES))
        raise AggscopeError(f"unknown mode {name!r}{hint}; valid modes: {', '.join(MODES)} (aliases: {', '.join(aliases)})")
    return MODES[canonical]


def resolve_mode_option(names: Iterable[str]) -> list[Mode]:
    """The modes named with ``-m``/``--mode``; an unknown one is a one-line error naming the option."""
    try:
        return resolve_modes(names)
    except AggscopeError as exc:
        raise AggscopeError(f"{exc.message} (--mode)") from None


def resolve_modes(names: Iterable[str]) -> list[Mode]:
    """Resolve several names, dropping repeats of the same canonical mode, keeping order."""
    seen: dict[str, Mode] = {}
    for name in names:
        mode = resolve_mode(name)
        seen.setdefault(mode.name, mode)
    return list(seen.values())


def default_modes(*, has_groups: bool, max_seq_len: int | None) -> list[Mode]:
    """Every mode that applies to this data and layout (trainer variants only when named)."""
    return [
        mode
        for mode in MODES.values()
        if mode.in_defaults and (has_groups or not mode.needs_groups) and (max_seq_len is not None or not mode.needs_horizon)
    ]


def check_applicable(mode: Mode, *, has_groups: bool, max_seq_len: int | None, source: str) -> None:
    """Raise a one-line error when a mode cannot be computed on this data or layout."""
    if mode.needs_horizon and max_seq_len is None:
        raise AggscopeError(f"mode {mode.name} needs the horizon: give --max-seq-len H")
    if mode.needs_groups and not has_groups:
        raise AggscopeError(
            f"{source}: mode {mode.name} is unavailable without a uid column (no prompt-group ids in this input; "
            "for Parquet input, name the column with --col uid=NAME)"
        )
