"""The tool turns of a verl multi-turn ``output``: found in the decoded text, counted as not trained.

Facts from verl 0.9.1 (``verl/experimental/agent_loop/tool_agent_loop.py``,
``verl/utils/tokenizer/continuous_token.py``): after an assistant turn, every context token verl
appends gets ``response_mask`` 0 (``align_response_metadata``): the tool messages as the chat
template renders them, the next generation prompt, and for Qwen's ChatML the ``"\\n"`` that
``QwenContinuousTokenBuilder`` inserts after the turn's ``<|im_end|>`` (which the model generated,
and which is trained). In 0.9.1 a tool turn that would pass ``response_length`` ends the rollout
before it is appended (dropped, not cut); earlier releases cut it, and dumps hold such outputs (the
real one in the tests does), so a tool turn still open at the output's end is counted as not
trained to the end and named in the step's note as cut there.

The dump's ``output`` is decoded with ``skip_special_tokens=True``: of a ChatML tool turn

    <|im_end|>\\n<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n

it keeps ``\\nuser\\n<tool_response>\\n...\\n</tool_response>\\nassistant\\n`` (several tool messages of
one turn share one ``user`` block). That visible span is what ``CHATML_TOOL_SPAN`` matches. A row
with at least one such span is split at its spans; a ``<tool_response>`` outside every span (text
the model wrote itself, in the real dump after an ``\nassistant\n``) stays trained text. A row whose
markers lie in no span is left as it is and counted among the rows whose template is not recognised
(no guess is made).

Counting a split row: the text between special tokens is counted piece by piece (the special tokens
split the real token stream there too), with ``TextLengths.count`` (the tokenizer, or the
``ceil(bytes / 4)`` estimate of ``readers.text``). A span is its visible pieces ``"\\n"``,
``"user\\n<tool_response>...</tool_response>"``, ``"\\n"``, ``"assistant\\n"`` plus its three
removed special tokens (``<|im_start|>``, ``<|im_end|>``, ``<|im_start|>``), all not trained; the
trained text before a span gains one token, the turn's ``<|im_end|>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggscope.core.batch import offsets_of
from aggscope.errors import AggscopeError
from aggscope.io.readers.text import TextLengths, tokenizer_specials

TOOL_MARKER = "<tool_response>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPAN_SPECIALS = 3  # <|im_start|> user ... <|im_end|> \n <|im_start|> assistant
ASSISTANT = "\nassistant\n"
CHATML_TOOL_SPAN = re.compile(
    r"\nuser\n<tool_response>\n(?:(?!\nassistant\n).)*?\n</tool_response>\nassistant\n",
    re.DOTALL,
)
CUT_TOOL_SPAN = re.compile(r"\nuser\n<tool_response>\n(?:(?!\nassistant\n).)*\Z", re.DOTALL)


@dataclass(frozen=True)
class ToolMasked:
    """A step's outputs counted with their tool spans not trained.

    Attributes:
        lengths: ``[n]`` int64 tokens per row (trained and tool tokens).
        loss_mask: ``[sum(lengths)]`` bool, False at the tool spans' positions.
        rows_with_tools: rows whose output holds ``<tool_response>``.
        unrecognised: of those, the rows left unsplit (no ChatML tool span).
        spans: the tool spans masked.
        cut_spans: of those, the spans open at the end of their output.
        masked_tokens: the tokens they hold.
    """

    lengths: np.ndarray
    loss_mask: np.ndarray
    rows_with_tools: int
    unrecognised: int
    spans: int
    cut_spans: int
    masked_tokens: int


def marker_rows(outputs: pa.Array) -> np.ndarray:
    """``[n]`` bool: the outputs holding ``<tool_response>``."""
    found = pc.fill_null(pc.match_substring(outputs, TOOL_MARKER), False)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


Span = tuple[int, int, bool]  # (start, end, open at the end of the text)


def chatml_spans(text: str) -> list[Span]:
    """The ChatML tool spans of ``text``, the last one maybe open at its end (cut by the response length)."""
    spans = [(*match.span(), False) for match in CHATML_TOOL_SPAN.finditer(text)]
    cut = CUT_TOOL_SPAN.search(text, spans[-1][1] if spans else 0)
    return [*spans, (*cut.span(), True)] if cut is not None else spans


def check_chatml_tokenizer(lengths: TextLengths) -> None:
    """With ``--tokenizer``, its ChatML special tokens must be special tokens of one id each."""
    if lengths.tokenizer_path is None:
        return
    specials = tokenizer_specials(lengths.tokenizer_path)
    counts = lengths.count(pa.array([IM_START, IM_END]))
    for token, count in zip((IM_START, IM_END), counts.tolist(), strict=True):
        if token not in specials or count != 1:
            raise AggscopeError(
                f"--tokenizer {lengths.tokenizer_path}: {token} is not one special token of it, but the verl outputs show "
                "ChatML tool turns; give the run's tokenizer, or --no-tool-mask to count tool responses as loss tokens"
            )


def tool_masked(outputs: pa.Array, lengths: TextLengths) -> ToolMasked:
    """Count ``[n]`` output texts with their ChatML tool spans as not-trained tokens (module docstring)."""
    outputs = outputs.cast(pa.string())
    has_marker = marker_rows(outputs)
    split: dict[int, list[Span]] = {}
    pieces: list[str] = []
    for row in np.flatnonzero(has_marker).tolist():  # a loop over the rows holding tool responses
        text = outputs[row].as_py()
        spans = chatml_spans(text)
        if spans:
            split[row] = spans
            pieces.extend(_pieces(text, spans))
    if split:
        check_chatml_tokenizer(lengths)
    # One count of every text: the rows without tool spans whole, then the pieces of those with them
    # (each text is counted on its own, so a row is never counted both whole and in pieces).
    whole = np.ones(len(outputs), dtype=bool)
    whole[list(split)] = False
    texts = outputs.filter(pa.array(whole)) if split else outputs
    counts = lengths.count(pa.concat_arrays([texts, pa.array(pieces, type=pa.string())]) if pieces else texts).astype(np.int64)
    row_lengths = np.zeros(len(outputs), dtype=np.int64)
    row_lengths[whole] = counts[: len(texts)]
    segments = _segments(counts[len(texts) :].tolist(), split)
    for row, row_segments in segments.items():
        row_lengths[row] = sum(n for n, _ in row_segments)
    offsets = offsets_of(row_lengths)
    loss_mask = np.ones(int(offsets[-1]), dtype=bool)
    masked_tokens = 0
    for row, row_segments in segments.items():
        position = int(offsets[row])
        for n, trained in row_segments:
            if not trained:
                loss_mask[position : position + n] = False
                masked_tokens += n
            position += n
    return ToolMasked(
        lengths=row_lengths,
        loss_mask=loss_mask,
        rows_with_tools=int(has_marker.sum()),
        unrecognised=int(has_marker.sum()) - len(split),
        spans=sum(len(spans) for spans in split.values()),
        cut_spans=sum(spans[-1][2] for spans in split.values()),
        masked_tokens=masked_tokens,
    )


PIECES_PER_SPAN = 5  # the trained text before it, then "\n", user...</tool_response>, "\n", assistant\n


def _pieces(text: str, spans: list[Span]) -> list[str]:
    """The texts counted for a row: per span, the trained text before it and its four visible pieces
    (an open span: the rest of the text, then two empty pieces); then the trained text after the last span."""
    pieces, previous = [], 0
    for start, end, cut in spans:
        if cut:
            pieces.extend([text[previous:start], "\n", text[start + 1 : end], "", ""])
        else:
            inner = text[start + 1 : end - len(ASSISTANT)]  # user\n<tool_response>...</tool_response>
            pieces.extend([text[previous:start], "\n", inner, "\n", ASSISTANT[1:]])
        previous = end
    pieces.append(text[previous:])
    return pieces


def _segments(counts: list[int], split: dict[int, list[Span]]) -> dict[int, list[tuple[int, bool]]]:
    """``{row: [(tokens, trained)]}`` from the pieces' counts, in ``_pieces``' order."""
    segments: dict[int, list[tuple[int, bool]]] = {}
    used = 0
    for row, spans in split.items():
        row_segments = []
        for *_, cut in spans:
            trained, *visible = counts[used : used + PIECES_PER_SPAN]
            row_segments.append((trained + 1, True))  # the turn's <|im_end|>, generated and trained
            row_segments.append((sum(visible) + (1 if cut else SPAN_SPECIALS), False))  # cut: only its <|im_start|>
            used += PIECES_PER_SPAN
        row_segments.append((counts[used], True))
        used += 1
        segments[row] = row_segments
    return segments
