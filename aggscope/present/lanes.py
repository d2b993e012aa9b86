"""A compact text picture of how one step is split: one lane per mini-batch, one letter per prompt.

Plain text (no colour) so a terminal, a Markdown report or a log can show it. Within a lane each
character stands for ``rows_per_char`` consecutive rows in trainer order: a lowercase letter names
the prompt (letters cycle a-z by first appearance), an UPPERCASE letter marks a prompt cut by a
mini-batch boundary, ``¦`` a rank-shard boundary (when one row per character), and a ``^`` line
under a lane marks rows the boundary-based prompt_mean leaves without gradient.
"""

from __future__ import annotations

import math

import numpy as np

from aggscope.analysis.checks import StepLanes
from aggscope.fmt import plural

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
MAX_LANES = 12


def split_picture(lanes: StepLanes, width: int = 100) -> list[str]:
    """The lines of the picture, none longer than ``width`` characters."""
    n_rows = lanes.prompt.size
    n_lanes = lanes.n_mini_batches
    if n_rows == 0:
        return [f"step {lanes.step}: no rows"]
    rows_per_lane = np.bincount(lanes.mini_batch, minlength=n_lanes)  # [n_mb]
    starts = np.concatenate([[0], np.cumsum(rows_per_lane)])
    label_width = len(f"mb {n_lanes - 1}") + 1
    suffix_width = len(f" {rows_per_lane.max():,} rows, {rows_per_lane.max():,} prompts, {rows_per_lane.max():,} cut")
    budget = max(8, width - label_width - 2 - suffix_width)
    separators = lanes.dp_size - 1
    per_char = 1 if rows_per_lane.max() + separators <= budget else math.ceil(rows_per_lane.max() / budget)
    show_ranks = per_char == 1 and lanes.dp_size > 1

    cut_lanes = np.unique(lanes.mini_batch[lanes.cut_by_mini_batch])
    if n_lanes <= MAX_LANES:
        shown = np.arange(n_lanes)
    elif cut_lanes.size:
        shown = cut_lanes[:MAX_LANES]
    else:
        shown = np.arange(MAX_LANES)
    scale = "1 char = 1 row" if per_char == 1 else f"1 char = {per_char} rows"
    legend = ["a-z: one letter per prompt", "UPPERCASE: prompt cut by a mini-batch boundary"]
    if show_ranks:
        legend.append("¦: rank shard boundary")
    if lanes.no_gradient.any():
        legend.append("^: no gradient under the boundary-based prompt_mean")
    lines = [
        f"step {lanes.step}: {plural(n_rows, 'row')} in trainer order, {plural(n_lanes, 'mini-batch', 'mini-batches')}, {scale}"
    ]
    lines += _wrap(legend, width)
    drawn = []
    for lane in shown.tolist():
        begin, end = int(starts[lane]), int(starts[lane + 1])
        text, marks = _lane_text(lanes, begin, end, per_char, show_ranks)
        prompts = np.unique(lanes.prompt[begin:end]).size
        cut = np.unique(lanes.prompt[begin:end][lanes.cut_by_mini_batch[begin:end]]).size
        suffix = f" {plural(end - begin, 'row')}, {plural(prompts, 'prompt')}" + (f", {cut:,} cut" if cut else "")
        drawn.append((lane, text, marks, suffix))
    content = max(len(text) for _, text, _, _ in drawn)
    for lane, text, marks, suffix in drawn:
        lines.append(f"{f'mb {lane}'.ljust(label_width)}│{text.ljust(content)}│{suffix}")
        if marks.strip():
            lines.append(f"{' ' * label_width}│{marks.ljust(content)}│")
    hidden = n_lanes - shown.size
    if hidden:
        what = "without a cut prompt " if cut_lanes.size and cut_lanes.size <= MAX_LANES else ""
        lines.append(f"… {plural(hidden, 'more mini-batch', 'more mini-batches')} {what}not shown")
    return [line[:width] for line in lines]


def _wrap(parts: list[str], width: int) -> list[str]:
    """Join legend parts with `` · `` into lines of at most ``width`` characters."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return lines


def _lane_text(lanes: StepLanes, begin: int, end: int, per_char: int, show_ranks: bool) -> tuple[str, str]:
    """The characters of one lane and its ``^`` marker line."""
    chunk_starts = np.arange(begin, end, per_char)
    letters = LETTERS[lanes.prompt[chunk_starts] % LETTERS.size]
    cut = np.logical_or.reduceat(lanes.cut_by_mini_batch[begin:end], chunk_starts - begin)
    silent = np.logical_or.reduceat(lanes.no_gradient[begin:end], chunk_starts - begin)
    chars = np.where(cut, np.char.upper(letters), letters).tolist()
    marks = np.where(silent, "^", " ").tolist()
    if show_ranks:
        rank = lanes.rank[begin:end]
        new_rank = np.flatnonzero(rank[1:] != rank[:-1]) + 1
        for offset in new_rank[::-1].tolist():
            chars.insert(offset, "¦")
            marks.insert(offset, " ")
    return "".join(chars), "".join(marks)
