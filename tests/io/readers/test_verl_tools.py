"""verl multi-turn outputs: ChatML tool turns counted as not trained, by hand-worked text cases.

The fixture row has two tool turns; expected masks are worked out in the comments from the
decoded text verl 0.9.1 writes (``aggscope.io.readers.verl_tools``' docstring gives the facts).
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from dumps import cli_error, per_row, read_all, runner, write_jsonl

import aggscope.io.readers.text as text_module
from aggscope.cli import app
from aggscope.io.open import open_rollouts

TWO_TURNS = (
    "a b</tool_call>\nuser\n<tool_response>\nr1\n</tool_response>\nassistant\n"
    "c\nuser\n<tool_response>\nr2 r3\n</tool_response>\nassistant\nd e"
)
ROWS = [
    {"input": "Q", "output": TWO_TURNS, "score": 1.0, "step": 3},
    {"input": "Q", "output": "no tools", "score": 0.0, "step": 3},
]


@pytest.fixture(autouse=True)
def fresh_tokenizers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "_TOKENIZERS", {})


class ChatMLWords:
    """Stands in for a ChatML tokenizer: one id per whitespace-separated word; its special tokens."""

    all_special_tokens: ClassVar[list[str]] = ["<|im_start|>", "<|im_end|>"]

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        return {"input_ids": [[1] * len(text.split()) for text in texts]}


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    class AutoTokenizer:
        @staticmethod
        def from_pretrained(path: str, local_files_only: bool = False) -> ChatMLWords:
            return ChatMLWords()

    module = types.ModuleType("transformers")
    module.AutoTokenizer = AutoTokenizer  # type: ignore[attr-defined]
    module.__spec__ = importlib.machinery.ModuleSpec("transformers", None)
    monkeypatch.setitem(sys.modules, "transformers", module)
    folder = tmp_path / "tok"
    folder.mkdir()
    return str(folder)


# Words per piece (the pieces are counted apart: the special tokens split the real stream there):
#   "a b</tool_call>" 2, + the turn's <|im_end|> (trained) = 3 trained
#   span 1: "\n" 0 + "user\n<tool_response>\nr1\n</tool_response>" 4 + "\n" 0 + "assistant\n" 1
#           + 3 special tokens (<|im_start|>, <|im_end|>, <|im_start|>) = 8 not trained
#   "c" 1 + <|im_end|> = 2 trained
#   span 2: 0 + "user ... r2 r3 ..." 5 + 0 + 1 + 3 = 9 not trained
#   "d e" 2 trained: 24 tokens, 7 trained
TOKENIZED = [True] * 3 + [False] * 8 + [True] * 2 + [False] * 9 + [True] * 2
# Estimated, ceil(UTF-8 bytes / 4) per piece:
#   "a b</tool_call>" 15 bytes -> 4, + 1 = 5 trained
#   span 1: "\n" 1 -> 1, "user\n" 5 + "<tool_response>\n" 16 + "r1\n" 3 + "</tool_response>" 16 = 40 -> 10,
#           "\n" -> 1, "assistant\n" 10 -> 3, + 3 = 18 not trained
#   "c" -> 1, + 1 = 2 trained
#   span 2: 1 + (5 + 16 + 6 + 16 = 43 -> 11) + 1 + 3 + 3 = 19 not trained
#   "d e" 3 -> 1 trained: 45 tokens, 8 trained
ESTIMATED = [True] * 5 + [False] * 18 + [True] * 2 + [False] * 19 + [True] * 1


def test_two_tool_turns_with_a_tokenizer(tmp_path: Path, stand_in: str) -> None:
    path = write_jsonl(tmp_path / "3.jsonl", ROWS)
    rollouts = open_rollouts(str(path), tokenizer=stand_in)
    (_, first, _), (_, second, _) = per_row(next(rollouts.iter_steps()))
    assert first == TOKENIZED and second == [True, True]
    assert any("step 3: 2 tool spans (17 tokens) in 1 of 2 outputs counted as not trained" in n for n in rollouts.notes)


def test_each_text_is_tokenized_once(tmp_path: Path, stand_in: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row with tool turns is counted in pieces only (not also whole), a row without them whole."""
    seen: list[str] = []
    count = ChatMLWords.__call__

    def recording(self: ChatMLWords, texts: list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        seen.extend(texts)
        return count(self, texts, add_special_tokens)

    monkeypatch.setattr(ChatMLWords, "__call__", recording)
    path = write_jsonl(tmp_path / "3.jsonl", ROWS)
    (_, first, _), (_, second, _) = per_row(next(open_rollouts(str(path), tokenizer=stand_in).iter_steps()))
    assert first == TOKENIZED and second == [True, True]
    pieces = [text for text in seen if text not in ("<|im_start|>", "<|im_end|>")]  # the specials, checked once
    assert TWO_TURNS not in pieces and pieces.count("no tools") == 1
    assert len(pieces) == 1 + 2 * 5 + 1  # the plain row; five pieces per tool turn; the text after the last


def test_two_tool_turns_estimated(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "3.jsonl", ROWS)
    rollouts = open_rollouts(str(path))
    (batch,) = list(rollouts.iter_steps())
    (_, first, advantages), (_, second, _) = per_row(batch)
    assert first == ESTIMATED and second == [True, True]  # "no tools" 8 bytes -> 2
    assert all(a == 0.0 for a, m in zip(advantages, first, strict=True) if not m)  # not trained: no advantage
    assert batch.lengths_estimated
    assert any("2 tool spans (37 tokens, estimated) in 1 of 2 outputs" in n for n in rollouts.notes)
    assert rollouts.used_fields and "counted at their positions as not trained" in rollouts.used_fields[0][1]


def test_turn_cut_at_the_end_is_masked_to_the_end(tmp_path: Path) -> None:
    # "x" 1 -> 1, + <|im_end|> = 2 trained; "\n" -> 1, "user\n<tool_response>\nlong" 25 bytes -> 7, + its
    # <|im_start|> = 9 not trained; then "" -> 0 trained
    rows = [{"input": "Q", "output": "x\nuser\n<tool_response>\nlong", "score": 1.0, "step": 1}]
    rollouts = open_rollouts(str(write_jsonl(tmp_path / "1.jsonl", rows)))
    ((_, mask, _),) = per_row(next(rollouts.iter_steps()))
    assert mask == [True] * 2 + [False] * 9
    assert any("1 of them cut at the output's end" in n for n in rollouts.notes)


def test_unknown_template_keeps_the_warning(tmp_path: Path) -> None:
    # Llama 3 style: no "user"/"assistant" ChatML headers around the block; no guess is made
    text = "call\nipython\n\n<tool_response>\nr\n</tool_response>\nmore"
    rows = [{"input": "Q", "output": text, "score": 1.0, "step": 1}]
    rollouts = open_rollouts(str(write_jsonl(tmp_path / "1.jsonl", rows)))
    ((_, mask, _),) = per_row(next(rollouts.iter_steps()))
    assert mask == [True] * -(-len(text.encode()) // 4)  # the whole text, as loss tokens
    assert any("1 of 1 outputs hold tool responses (<tool_response>) but no ChatML tool turn" in n for n in rollouts.notes)
    assert not rollouts.used_fields and "template not recognised" in rollouts.unused_fields[0][1]


def test_tokenizer_without_chatml_specials_refused(tmp_path: Path, stand_in: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ChatMLWords, "all_special_tokens", ["</s>"])
    path = write_jsonl(tmp_path / "3.jsonl", ROWS)
    message = cli_error("inspect", str(path), "--tokenizer", stand_in)
    assert "<|im_start|> is not one special token of it, but the verl outputs show ChatML tool turns" in message
    assert "--no-tool-mask" in message


def test_cli_on_off_and_refusal(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "3.jsonl", ROWS)
    on = runner.invoke(app, ["inspect", str(path), "--json"])
    off = runner.invoke(app, ["inspect", str(path), "--json", "--no-tool-mask"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    (step_on,), (step_off,) = json.loads(on.stdout)["steps"], json.loads(off.stdout)["steps"]
    assert (step_on["tokens"], step_on["loss_tokens"]) == (45 + 2, 8 + 2)
    # off: ceil(len(TWO_TURNS) bytes / 4) + 2, every token trained
    off_tokens = -(-len(TWO_TURNS.encode()) // 4) + 2
    assert (step_off["tokens"], step_off["loss_tokens"]) == (off_tokens, off_tokens)
    checked = runner.invoke(app, ["check", str(path), "--json"])
    checked_off = runner.invoke(app, ["check", str(path), "--json", "--no-tool-mask"])
    used = [f for f in json.loads(checked.stdout)["findings"] if f["code"] == "unused_dump_field"]
    unused = [f for f in json.loads(checked_off.stdout)["findings"] if f["code"] == "unused_dump_field"]
    assert [f["severity"] for f in used] == ["info"] and "counted at their positions as not trained" in used[0]["message"]
    assert [f["severity"] for f in unused] == ["warning"] and "(--no-tool-mask)" in unused[0]["message"]
    trl = tmp_path / "completions"
    trl.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"step": [1], "prompt": ["P"], "completion": ["a"], "advantage": [0.5]}), trl / "completions_00001.parquet"
    )
    message = cli_error("inspect", str(trl), "--no-tool-mask")
    assert "--no-tool-mask applies to verl dumps (tool turns in the decoded output)" in message and "read as trl" in message


def test_with_a_real_wordlevel_tokenizer(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    words = ["[UNK]", "a", "b</tool_call>", "user", "<tool_response>", "</tool_response>", "r1", "r2", "r3", "c", "d", "e"]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
        "eos_token": "<|im_end|>",
        "additional_special_tokens": ["<|im_start|>"],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (batch,) = read_all(write_jsonl(tmp_path / "3.jsonl", ROWS), tokenizer=str(folder))
    (_, first, _), (_, second, _) = per_row(batch)
    assert first == TOKENIZED and second == [True, True]  # the same words as the stand-in counts
