"""Figures of where the gradient goes, built from a ``Breakdown`` (matplotlib, Agg, no display).

Every figure draws each SPEC in its mode's colour (``MODE_COLOURS``, the one mode -> colour map of
aggscope: reports use it too); SPECs that share a mode differ by line style. Figures are plain
``matplotlib.figure.Figure`` objects (no pyplot state), so plotting works headless and in threads.

``FIGURES`` lists the figure builders by file name; ``build_figure`` builds one and ``figure_bytes``
encodes it. The set of a breakdown's figures (``make_figures``, each built on first use, so in the
process that encodes it), their encoding on all cores (``encode_figures``) and ``save_figures``
(``<name>.<png|svg|pdf>`` files whole or not at all) are ``aggscope.present.figure_set``'s, which
imports this module only once a figure is built.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from aggscope.analysis.breakdown import HISTOGRAM_LOG10_EDGES, Breakdown
from aggscope.analysis.checks import ZERO_GRAD_CAUSES
from aggscope.analysis.specs import Spec, describe_layout
from aggscope.present.colours import MODE_COLOURS, mode_colour
from aggscope.present.outputs import (
    IMAGE_FORMATS,
    check_figure_names,
    check_image_format,
    check_output_directory,
    earlier_output,
    ensure_directory,
)

LINE_STYLES = ("-", "--", ":", "-.")
REFERENCE_COLOUR = "#555555"
# Prompts cut by a boundary (check's levels), coarsest first: mini-batch, rank shard, micro-batch.
CUT_NAMES = {"mini_batch": "mini-batch", "rank": "rank", "micro_batch": "micro-batch"}
CUT_COLOURS = {"mini_batch": "#C62828", "rank": "#EF6C00", "micro_batch": "#F9A825"}
RUN_SHADES = ("#9E9E9E", "#D6D6D6")
CAUSE_COLOURS = ("#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#EDC948", "#76B7B2", "#9C755F", "#BAB0AC")

_STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.dpi": 120,
    "savefig.dpi": 120,
    "svg.fonttype": "path",
}


@dataclass(frozen=True)
class SpecStyle:
    """How one SPEC is drawn: its mode's colour (a darker or lighter shade of it for a second, third...
    SPEC of the same mode), and a line style and hatch telling them apart also in grey print."""

    colour: str
    line: str
    hatch: str


def spec_styles(specs: Sequence[Spec]) -> dict[str, SpecStyle]:
    seen: dict[str, int] = {}
    styles = {}
    for spec in specs:
        repeat = seen.get(spec.mode.name, 0)
        seen[spec.mode.name] = repeat + 1
        hatch = ("", "//", "..", "xx")[repeat % 4]
        colour = shade(mode_colour(spec.mode.name), repeat)
        styles[spec.label] = SpecStyle(colour, LINE_STYLES[repeat % len(LINE_STYLES)], hatch)
    return styles


# How the n-th SPEC of one mode shades the mode's colour: towards black (> 0) or white (< 0).
SHADES = (0.0, 0.45, -0.45, 0.7, -0.7)


def shade(colour: str, repeat: int) -> str:
    """``colour`` for the first SPEC of a mode; a darker, then lighter, shade of it for the next ones."""
    amount = SHADES[repeat % len(SHADES)]
    if amount == 0:
        return colour
    red, green, blue = colors.to_rgb(colour)
    target = 0.0 if amount > 0 else 1.0
    mix = abs(amount)
    return str(colors.to_hex((red + mix * (target - red), green + mix * (target - green), blue + mix * (target - blue))))


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):  # type: ignore[arg-type]
        yield


def wrap_label(label: str, width: int = 34) -> str:
    """A SPEC label broken after its commas into lines of about ``width`` characters, so that a long
    layout (``prompt_mean,mini-batch-size=64,micro-batch-size=4,...``) never runs off a figure."""
    lines: list[str] = []
    for part in label.split(","):
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += "," + part
        else:
            lines.append(part)
    return ",\n".join(lines)


def legend_columns(labels: Sequence[str], most: int = 4, line_chars: int = 110) -> int:
    """How many legend columns fit the figure's width for these (wrapped) labels."""
    longest = max((len(line) for label in labels for line in label.splitlines()), default=1)
    return max(1, min(most, len(labels), line_chars // (longest + 6)))


def _percent(values: np.ndarray) -> np.ndarray:
    return 100.0 * values


def nothing_to_draw(title: str, reason: str) -> Figure:
    """A figure that says in words why it has nothing to show, instead of empty panels."""
    fig = Figure(figsize=(10, 2.2), layout="constrained")
    fig.suptitle(title)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"Nothing to draw: {reason}.", ha="center", va="center", fontsize=11, wrap=True, transform=ax.transAxes)
    return fig


# ---- the figures ---------------------------------------------------------------------------------
def weight_distribution(breakdown: Breakdown) -> Figure:
    """Per-token gradient weights ``|w * A|`` relative to the mode's mean: one ridge per SPEC,
    positive and negative advantages in two panels."""
    styles = spec_styles(breakdown.specs)
    labels = breakdown.labels
    title = "Per-token gradient weight by mode (black tick: median)"
    counted = sum(int(r.histogram.positive.sum() + r.histogram.negative.sum()) for r in breakdown.results.values())
    if not counted:
        return nothing_to_draw(title, "no loss token has a non-zero, finite gradient weight under any mode")
    lines = max(wrap_label(label).count("\n") + 1 for label in labels)
    fig = Figure(figsize=(10, 1.9 + max(0.62, 0.2 * lines) * len(labels)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True, sharex=True)
    for ax, sign in zip(axes, ("positive", "negative"), strict=True):
        tokens = 0
        for row, label in enumerate(labels[::-1]):
            histogram = breakdown.results[label].histogram
            counts = getattr(histogram, sign).astype(np.float64)
            tokens = max(tokens, int(counts.sum()))
            if not counts.sum():
                continue
            share = counts / counts.sum()
            edges = 10.0**histogram.log10_edges
            height = 0.85 * share / share.max()
            style = styles[label]
            ax.stairs(height + row, edges, baseline=row, fill=True, color=style.colour, alpha=0.75, hatch=style.hatch or None)
            median = float(np.interp(0.5, np.cumsum(share), edges[1:]))
            ax.plot([median, median], [row, row + 0.85], color="black", linewidth=1.2)
        ax.set_xscale("log")
        ax.axvline(1.0, color=REFERENCE_COLOUR, linewidth=0.8, linestyle=":")
        ax.set_title(f"{sign} advantage ({tokens:,} tokens)")
        ax.grid(axis="y", visible=False)
    occupied = np.zeros(HISTOGRAM_LOG10_EDGES.size - 1, dtype=bool)
    for label in labels:
        histogram = breakdown.results[label].histogram
        occupied |= (histogram.positive + histogram.negative) > 0
    if occupied.any():
        first, last = np.flatnonzero(occupied)[[0, -1]]
        axes[0].set_xlim(10.0 ** (HISTOGRAM_LOG10_EDGES[first] - 0.3), 10.0 ** (HISTOGRAM_LOG10_EDGES[last + 1] + 0.3))
    _minor_ticks_as_one_line(list(axes))
    fig.supxlabel("gradient weight |w·A| ÷ the mode's mean per loss token (log scale; 1 = an average token)", fontsize=10)
    axes[0].set_yticks(np.arange(len(labels)) + 0.35, [wrap_label(label) for label in labels[::-1]])
    axes[0].set_ylim(-0.1, len(labels))
    for tick, label in zip(axes[0].get_yticklabels(), labels[::-1], strict=True):
        tick.set_color(styles[label].colour)
        tick.set_fontweight("bold")
    fig.suptitle(title)
    return fig


def _minor_ticks_as_one_line(axes: list[Axes]) -> None:
    """Draw the unlabelled minor ticks of log x axes as one line of tick marks per axes.

    The same marks at the same places, pixel for pixel, but matplotlib updates every tick object on
    each of the ten or so passes of a draw (layout, spines, labels): the 30-60 minor ticks of a log
    axis were half the cost of this figure. The marks are placed for the limits set now (a figure
    zoomed later keeps them where they were); labelled minor ticks (a view under a decade) stay.
    """
    planned = []  # every axes before any change: shared axes share their locators
    for ax in axes:
        locations = ax.xaxis.get_minorticklocs().tolist()
        if not any(ax.xaxis.get_minor_formatter().format_ticks(locations)):
            planned.append((ax, locations))
    for ax, locations in planned:
        low, high = sorted(ax.get_xlim())
        shown = [x for x in locations if low <= x <= high]
        tick = ax.xaxis.get_minor_ticks(1)[0].tick1line
        marks = Line2D(
            shown,
            [0.0] * len(shown),
            transform=ax.get_xaxis_transform("tick1"),
            marker=tick.get_marker(),
            markersize=tick.get_markersize(),
            markeredgewidth=tick.get_markeredgewidth(),
            color=tick.get_color(),
            linestyle="none",
            zorder=tick.get_zorder(),
            clip_on=False,
        )
        marks.set_in_layout(False)
        ax.add_artist(marks)
    for ax, _ in planned:
        ax.xaxis.set_minor_locator(NullLocator())


def mass_vs_length(breakdown: Breakdown) -> Figure:
    """Share of gradient mass per response-length decile, per SPEC, against the share of tokens."""
    styles = spec_styles(breakdown.specs)
    if breakdown.loss_tokens == 0:
        return nothing_to_draw("Gradient mass by response length", "the input has no loss tokens")
    deciles = breakdown.length_buckets(10)
    x = np.arange(1, 11)
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, _percent(deciles.token_share()), color=REFERENCE_COLOUR, linestyle="--", marker="", label="share of loss tokens")
    for spec in breakdown.specs:
        style = styles[spec.label]
        ax.plot(
            x,
            _percent(deciles.grad_share(spec.label)),
            color=style.colour,
            linestyle=style.line,
            marker="o",
            markersize=4,
            linewidth=1.8,
            label=wrap_label(spec.label),
        )
    ax.set_xticks(x, [f"{i}\n{lo:,}–{hi:,}" for i, lo, hi in zip(x, deciles.min_tokens, deciles.max_tokens, strict=True)])
    ax.set_xlabel("response length decile, shortest to longest (loss tokens per response)")
    ax.set_ylabel("share of gradient mass Σ|w·A| (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Gradient mass by response length ({breakdown.n_rows:,} responses, {len(breakdown.steps)} steps)")
    fig.legend(loc="outside lower center", ncols=legend_columns(ax.get_legend_handles_labels()[1]))
    return fig


def prompt_concentration(breakdown: Breakdown) -> Figure:
    """Lorenz-style curve: prompts ranked by gradient mass against the cumulative share they get."""
    styles = spec_styles(breakdown.specs)
    unit = "prompts" if breakdown.has_groups else "responses (no uid column)"
    title = f"How concentrated the gradient is across {unit.split(' ')[0]}"
    masses = {spec.label: breakdown.ranked_prompt_mass(spec.label) for spec in breakdown.specs}  # [n_units] largest first
    if not any(mass.size and mass.sum() > 0 for mass in masses.values()):
        return nothing_to_draw(title, "no token has any gradient mass |w·A| under any mode")
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 100], [0, 100], color=REFERENCE_COLOUR, linestyle="--", linewidth=1, label="every one equal")
    for spec in breakdown.specs:
        mass = masses[spec.label]
        total = mass.sum()
        if mass.size == 0 or total <= 0:
            continue
        x = np.concatenate([[0.0], np.arange(1, mass.size + 1) / mass.size * 100])
        y = np.concatenate([[0.0], np.cumsum(mass) / total * 100])
        top = float(np.interp(10.0, x, y))
        style = styles[spec.label]
        ax.plot(
            x, y, color=style.colour, linestyle=style.line, linewidth=1.8, label=f"{wrap_label(spec.label)} (top 10%: {top:.0f}%)"
        )
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_xlabel(f"{unit}, ranked by gradient mass, largest first (% of {unit.split(' ')[0]})")
    ax.set_ylabel("cumulative share of gradient mass (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def split_map(breakdown: Breakdown) -> Figure:
    """The split of one step under each layout: mini-batch, rank, micro-batch lanes; cut prompts coloured."""
    layouts = list(breakdown.splits)
    step_index = breakdown.worst_step_index()  # the step whose split check draws
    group_ids = breakdown.group_ids[step_index]
    labels = breakdown.uid_labels[step_index]
    n_rows = breakdown.step_sizes[step_index].sequences
    lanes = (["prompt groups"] if group_ids is not None else []) + ["mini-batches", "ranks", "micro-batches"]
    fig = Figure(figsize=(10, 0.9 + (0.75 + 0.32 * len(lanes)) * len(layouts)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(layouts), 1, squeeze=False)[:, 0])
    for ax, layout in zip(axes, layouts, strict=True):
        split = breakdown.splits[layout][step_index]
        order = split.order  # [n_rows] seq_index at each trainer position
        bands: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        cuts = breakdown.cut_prompts[layout][step_index]
        if group_ids is not None and labels is not None:
            bands.append(("prompt groups", group_ids[order], _cut_colours(cuts, labels)))
        bands += [
            ("mini-batches", split.mini_batch[order], None),
            ("ranks", split.rank_unit[order], None),
            ("micro-batches", split.micro_unit[order], None),
        ]
        for lane, (_, key, override) in enumerate(bands):
            _draw_runs(ax, len(bands) - 1 - lane, key, override)
        ax.set_yticks(range(len(bands)), [name for name, _, _ in bands][::-1])
        ax.set_xlim(0, max(n_rows, 1))
        ax.set_ylim(-0.6, len(bands) - 0.4)
        ax.grid(False)
        ax.spines["left"].set_visible(False)
        cut_text = ""
        if group_ids is not None:
            cut_text = "\nprompts cut: " + ", ".join(f"{len(cuts[level])} by a {CUT_NAMES[level]}" for level in CUT_NAMES)
        ax.set_title(describe_layout(layout) + cut_text, loc="left", fontsize=9.5)
    axes[-1].set_xlabel("position in the order the trainer sees (sequences)")
    fig.suptitle(f"How step {breakdown.steps[step_index]} is split ({n_rows:,} sequences)")
    if group_ids is not None:
        fig.legend(
            [Patch(color=RUN_SHADES[0]), *(Patch(color=CUT_COLOURS[level]) for level in CUT_NAMES)],
            ["one unit (shades alternate)", *(f"prompt cut by a {name}" for name in CUT_NAMES.values())],
            loc="outside lower center",
            ncols=4,
        )
    return fig


def _cut_colours(cuts: Mapping[str, Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """``[n_groups]`` colour of each prompt: that of the coarsest level cutting it, else None."""
    code = {label: index for index, label in enumerate(labels)}
    colours = np.full(len(labels), None, dtype=object)
    for level in reversed(CUT_NAMES):  # coarser levels, painted later, win
        for uid in cuts[level]:
            colours[code[uid]] = CUT_COLOURS[level]
    return colours


def _draw_runs(ax: Axes, y: float, key: np.ndarray, colour_of_key: np.ndarray | None) -> None:
    """Draw runs of equal ``key`` (``[n_rows]`` in trainer order) as alternating bars on lane ``y``.

    ``colour_of_key`` overrides the shade of the runs of some keys (None: keep the shade).
    """
    n = key.size
    if n == 0:
        return
    starts_run = np.ones(n, dtype=bool)
    starts_run[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(starts_run)  # [n_runs]
    widths = np.diff(np.append(starts, n))  # [n_runs]
    shade = np.array(RUN_SHADES, dtype=object)[np.arange(starts.size) % 2]
    if colour_of_key is not None:
        override = colour_of_key[key[starts]]
        shade = np.where(override != None, override, shade)  # noqa: E711  (elementwise on an object array)
    ax.broken_barh(
        list(zip(starts.tolist(), widths.tolist(), strict=True)),
        (y - 0.38, 0.76),
        facecolors=list(shade),
        edgecolor="white",
        linewidth=0.6 if n <= 600 else 0.0,
    )


def zero_grad_causes(breakdown: Breakdown) -> Figure:
    """Loss tokens with no gradient per SPEC, stacked by ``check``'s cause, as a share of all loss tokens."""
    causes = breakdown.zero_grad_causes()
    styles = spec_styles(breakdown.specs)
    loss_tokens = max(breakdown.loss_tokens, 1)
    names = [name for name in ZERO_GRAD_CAUSES if any(per_cause.get(name, 0) for per_cause in causes.values())]
    labels = breakdown.labels[::-1]
    lines = max(wrap_label(label).count("\n") + 1 for label in labels)
    fig = Figure(figsize=(10, 1.6 + max(0.45, 0.2 * lines) * len(labels)), layout="constrained")
    ax = fig.subplots()
    left = np.zeros(len(labels))
    for index, cause in enumerate(names):
        share = np.array([100.0 * causes.get(label, {}).get(cause, 0) / loss_tokens for label in labels])
        ax.barh(labels, share, left=left, color=CAUSE_COLOURS[index % len(CAUSE_COLOURS)], label=cause.replace("_", " "))
        left += share
    for y, (label, total) in enumerate(zip(labels, left, strict=True)):
        tokens = sum(causes.get(label, {}).values())
        ax.text(total, y, f"  {total:.1f}% ({tokens:,})", va="center", fontsize=9)
    # Label the bars by SPEC even when no cause drew one (every token has a gradient).
    ax.set_yticks(range(len(labels)), [wrap_label(label) for label in labels])
    for tick, label in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_color(styles[label].colour)
        tick.set_fontweight("bold")
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlim(0, max(float(left.max()) * 1.4, 1.0))  # room for the share written after the longest bar
    ax.set_xlabel(f"loss tokens with zero or non-finite gradient weight (% of {breakdown.loss_tokens:,} loss tokens)")
    ax.grid(axis="y", visible=False)
    if names:
        ax.set_title("Why tokens get no gradient")
        fig.legend(loc="outside lower center", ncols=legend_columns(ax.get_legend_handles_labels()[1]))
    else:
        ax.set_title("Why tokens get no gradient: every loss token gets a gradient under every mode")
    return fig


def steps(breakdown: Breakdown) -> Figure:
    """Per-step trends: tokens with no gradient, gradient mass on the longest quarter, effective tokens."""
    styles = spec_styles(breakdown.specs)
    step_numbers = np.array(breakdown.steps)
    loss_tokens = np.array([max(s.loss_tokens, 1) for s in breakdown.step_sizes], dtype=np.float64)
    n_steps = len(breakdown.steps)
    quarters = breakdown.buckets(breakdown.length_bucket_of_row(4, per_step=True), [str(i) for i in range(4 * n_steps)])
    fig = Figure(figsize=(10, 7.2), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    marker = "o" if n_steps <= 40 else ""
    base = breakdown.specs[0]
    per_step = breakdown.step_zero_grad_causes(base.label)
    for index, cause in enumerate(ZERO_GRAD_CAUSES):
        share = np.array([causes.get(cause, 0) for causes in per_step]) / loss_tokens * 100
        if share.any():
            axes[0].plot(
                step_numbers, share, color=CAUSE_COLOURS[index], marker=marker, markersize=4, label=cause.replace("_", " ")
            )
    if axes[0].lines:
        axes[0].legend(loc="best")
    axes[0].set_ylabel("no gradient\n(% of loss tokens)")
    axes[0].set_title(f"Loss tokens with no gradient under {base.label}, by cause")
    for spec in breakdown.specs:
        style = styles[spec.label]
        mass = quarters.grad_mass[spec.label].reshape(n_steps, 4)
        with np.errstate(invalid="ignore", divide="ignore"):
            longest = mass[:, 3] / mass.sum(axis=1) * 100
        ess = np.array([np.nan if s.ess_tokens is None else s.ess_tokens for s in breakdown.results[spec.label].steps])
        kwargs = {"color": style.colour, "linestyle": style.line, "marker": marker, "markersize": 4, "linewidth": 1.6}
        axes[1].plot(step_numbers, longest, label=wrap_label(spec.label), **kwargs)
        axes[2].plot(step_numbers, ess / loss_tokens * 100, **kwargs)
    token_share = quarters.loss_tokens.reshape(n_steps, 4)
    axes[1].plot(
        step_numbers,
        token_share[:, 3] / np.maximum(token_share.sum(axis=1), 1) * 100,
        color=REFERENCE_COLOUR,
        linestyle="--",
        label="share of loss tokens",
    )
    axes[1].set_ylabel("gradient mass on\nlongest quarter (%)")
    axes[1].set_title("Share of gradient mass on each step's longest quarter of responses")
    axes[2].set_ylabel("effective tokens\n(% of loss tokens)")
    axes[2].set_title("Effective number of tokens (Σw)² / Σw² as a share of loss tokens")
    axes[2].set_xlabel("training step")
    if n_steps <= 20:
        axes[2].set_xticks(step_numbers)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(labels))
    fig.suptitle(f"Per-step trends ({n_steps} step{'s' * (n_steps != 1)})")
    return fig


FigureBuilder = Callable[[Breakdown], Figure]
FIGURES: dict[str, FigureBuilder] = {
    "weight_distribution": weight_distribution,
    "mass_vs_length": mass_vs_length,
    "prompt_concentration": prompt_concentration,
    "split_map": split_map,
    "zero_grad_causes": zero_grad_causes,
    "steps": steps,
}
__all__ = [
    "FIGURES",
    "IMAGE_FORMATS",
    "MODE_COLOURS",
    "build_figure",
    "check_figure_names",
    "check_image_format",
    "check_output_directory",
    "earlier_output",
    "ensure_directory",
    "figure_bytes",
    "mode_colour",
]


def build_figure(name: str, breakdown: Breakdown) -> Figure:
    """Figure ``name`` of ``breakdown``, in aggscope's style."""
    with _style():
        return FIGURES[name](breakdown)


def figure_bytes(figure: Figure, image_format: str = "png") -> bytes:
    """The figure encoded as ``png``, ``svg`` or ``pdf`` (no timestamps, so output is reproducible).

    PNGs are compressed at zlib level 1: about half the encoding time of the default level 6 for
    some 15% more bytes, the same pixels.
    """
    check_image_format(image_format)
    buffer = io.BytesIO()
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[image_format]
    extra: dict[str, Any] = {"pil_kwargs": {"compress_level": 1}} if image_format == "png" else {}
    with _style():
        figure.savefig(buffer, format=image_format, metadata=metadata, **extra)
    return buffer.getvalue()
