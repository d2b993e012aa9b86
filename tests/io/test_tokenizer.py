"""``--tokenizer``: real token counts for text-only dumps when transformers is there, one line when not."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from dumps import cli_error, per_row, read_all, write_jsonl

import aggscope.io.readers.text as text_module
from aggscope.io.open import open_rollouts

ROWS = [
    {"input": "Q1", "output": "hello world hello", "score": 1.0, "step": 1},
    {"input": "Q1", "output": "world", "score": 0.0, "step": 1},
]


@pytest.fixture(autouse=True)
def fresh_tokenizers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "_TOKENIZERS", {})


class WhitespaceTokenizer:
    """Stands in for a transformers tokenizer: one id per whitespace-separated word."""

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        assert add_special_tokens is False
        return {"input_ids": [[len(word) for word in text.split()] for text in texts]}


@pytest.fixture
def stand_in_transformers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []

    class AutoTokenizer:
        @staticmethod
        def from_pretrained(path: str, local_files_only: bool = False) -> WhitespaceTokenizer:
            assert local_files_only  # never reaches for a hub
            if not Path(path, "tokenizer.json").exists():
                raise OSError(f"Can't load tokenizer for '{path}'.")
            loaded.append(path)
            return WhitespaceTokenizer()

    module = types.ModuleType("transformers")
    module.AutoTokenizer = AutoTokenizer  # type: ignore[attr-defined]
    module.__spec__ = importlib.machinery.ModuleSpec("transformers", None)
    monkeypatch.setitem(sys.modules, "transformers", module)
    return loaded


def test_tokenizer_counts_real_tokens(tmp_path: Path, stand_in_transformers: list[str]) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    path = write_jsonl(tmp_path / "1.jsonl", ROWS)
    (batch,) = read_all(path, tokenizer=str(folder))
    assert [len(m) for _, m, _ in per_row(batch)] == [3, 1]  # words, not ceil(bytes / 4) = 5 and 2
    assert batch.lengths_estimated is False and stand_in_transformers == [str(folder)]


def test_tokenizer_folder_errors(tmp_path: Path, stand_in_transformers: list[str]) -> None:
    path = write_jsonl(tmp_path / "1.jsonl", ROWS)
    assert "--tokenizer nowhere: no such file or directory" in cli_error("inspect", str(path), "--tokenizer", "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"--tokenizer {empty}: cannot load a tokenizer from it (Can't load tokenizer" in cli_error(
        "inspect", str(path), "--tokenizer", str(empty)
    )


def test_without_transformers_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real_find_spec(name, *a)
    )
    path = write_jsonl(tmp_path / "1.jsonl", ROWS)
    message = cli_error("weights", str(path), "--tokenizer", str(tmp_path))
    assert "--tokenizer needs the transformers package, which is not installed: pip install 'aggscope[tokenizer]'" in message


def test_with_real_transformers(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    model = tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"})
    )
    (batch,) = read_all(write_jsonl(tmp_path / "1.jsonl", ROWS), tokenizer=str(folder))
    assert [len(m) for _, m, _ in per_row(batch)] == [3, 1] and batch.lengths_estimated is False


def test_trl_eos_follows_the_tokenizer(tmp_path: Path, stand_in_transformers: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    dump = tmp_path / "completions"
    dump.mkdir()
    table = pa.table({"step": [1, 1], "prompt": ["P", "P"], "completion": ["a b", ""], "advantage": [0.5, -0.5]})
    pq.write_table(table, dump / "completions_00001.parquet")
    # the stand-in has no eos_token: no EOS counted unless --eos-trained says so
    rollouts = open_rollouts(str(dump), tokenizer=str(folder))
    assert [len(m) for _, m, _ in per_row(next(rollouts.iter_steps()))] == [2, 0]
    assert any("has no EOS token: none counted" in note for note in rollouts.notes)
    (forced,) = read_all(dump, tokenizer=str(folder), eos_trained=True)
    assert [len(m) for _, m, _ in per_row(forced)] == [3, 1]
    monkeypatch.setattr(text_module, "_TOKENIZERS", {})
    monkeypatch.setattr(WhitespaceTokenizer, "eos_token", "</s>", raising=False)
    rollouts = open_rollouts(str(dump), tokenizer=str(folder))
    assert [len(m) for _, m, _ in per_row(next(rollouts.iter_steps()))] == [3, 1]  # 2 words + EOS; EOS only
    assert any("'</s>': TRL trains the first EOS" in note for note in rollouts.notes)
