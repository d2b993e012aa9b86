"""The hostile and malformed inputs and option values that aggscope must survive: a generator.

Every ``Case`` writes its inputs into a fresh folder and says which command lines to run on them
(by default ``weights``, ``check``, ``report`` and ``inspect``) and what each must give:

- ``error``: exit 2 with exactly one line on stderr, ``aggscope: error: ...``, holding every
  ``needle`` (the file, and the column, row, line, key or option at fault); no traceback.
- ``ok``: a valid-but-unusual input, read (``check`` may exit 1 on its findings); ``note``, when
  given, must appear in ``inspect``'s output: the documented remark that goes with it.
- ``either``: fuzzed bytes (a bit flip may land in a value): ``ok`` or ``error``, never anything else.

``tests/test_corpus.py`` runs them (``pytest -m corpus``), each run bounded in time, and checks that
the inputs are byte-identical afterwards. Needles may hold ``{dir}``, the case's folder.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

COMMANDS = ("weights", "check", "report", "inspect")
WRITERS = ("weights-out", "convert")  # also run where what is written matters (steps, output paths)
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "rollouts.parquet"
SKYRL_DATA = Path(__file__).parent / "io" / "skyrl_dumps"


@dataclass(frozen=True)
class Case:
    """One input (or option value) and what every command must do with it."""

    name: str
    build: Callable[[Path], list[str]]  # writes the inputs into the folder; the arguments after the command
    expect: str = "error"  # "error", "ok" or "either"
    needles: tuple[str, ...] = ()
    note: str | None = None
    commands: tuple[str, ...] = COMMANDS
    subprocess: bool = False  # run as a real process (signals, devices, the network)
    unreadable: str | None = None  # a subfolder made unreadable (chmod 000; as root, listing it is refused as for a user)

    def runs(self, folder: Path) -> list[list[str]]:
        """The command lines of this case (its inputs written into ``folder``); outputs go to ``folder/_out*``."""
        args = self.build(folder)
        lines = []
        for command in self.commands:
            if command == "weights-out":
                lines.append(["weights", *args, "--out", str(folder / "_out.parquet")])
            elif command == "convert" and "-o" not in args:
                lines.append(["convert", *args, "-o", str(folder / "_out_convert.parquet")])
            elif command == "report" and "-o" not in args:
                lines.append(["report", *args, "-o", str(folder / "_out")])
            else:
                lines.append([command, *args])
        return lines


CASES: list[Case] = []


def case(name: str, expect: str = "error", *needles: str, **options: Any) -> Callable[[Callable[[Path], list[str]]], None]:
    def register(build: Callable[[Path], list[str]]) -> None:
        CASES.append(Case(name, build, expect, tuple(needles), **options))

    return register


# ---- writing inputs -----------------------------------------------------------------------------------
def rows(n: int = 8, group: int = 4, length: int = 3, step: int | None = 0) -> dict[str, list[Any]]:
    """A small valid wide table: ``n`` rows in groups of ``group``, ``length`` tokens each."""
    table: dict[str, list[Any]] = {
        "uid": [f"p{i // group}" for i in range(n)],
        "advantages": [[float((i % 2) * 2 - 1)] * length for i in range(n)],
        "loss_mask": [[1] * length for _ in range(n)],
        "reward": [float(i % 2) for i in range(n)],
    }
    if step is not None:
        table["step"] = [step] * n
    return table


def parquet(path: Path, columns: dict[str, Any] | pa.Table, **kwargs: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    pq.write_table(table, path, **kwargs)
    return str(path)


def with_column(name: str, values: Any, **base: Any) -> dict[str, Any]:
    table: dict[str, Any] = rows(**base)
    table[name] = values
    return table


def jsonl(path: Path, records: Sequence[Any], *, raw: bytes | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return str(path)


VERL = [
    {"input": f"Q{i // 2}", "output": "x" * (4 + i), "score": float(i % 2), "step": 3} for i in range(6)
]  # a verl rollout_data_dir line: decoded text and a score


def slime(path: Path, samples: Any, rollout_id: int = 1) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"rollout_id": rollout_id, "samples": samples}, path)
    return str(path)


def slime_sample(group: int, length: int = 2, reward: Any = 1.0, **extra: Any) -> dict[str, Any]:
    return {"group_index": group, "response_length": length, "loss_mask": [1] * length, "reward": reward, **extra}


def pickled(path: Path, value: Any = None, *, raw: bytes | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else pickle.dumps(value))
    return str(path)


def skyrl_state(**fields: Any) -> bytes:
    """A SkyRL 0.4.0 pickle (``_rebuild_tensor_batch(TrainingInputBatch, state)``) of the given tensors."""
    module = "skyrl.backends.skyrl_train.training_batch"
    metadata = fields.pop("metadata", {"policy_prompt_boundaries": [(0, 2), (2, 4)]})
    batch = {}
    for key, value in fields.items():
        array = np.asarray(value)
        batch[key] = {"format": "numpy", "data": array.tobytes(), "shape": array.shape, "dtype": str(array.dtype)}
    state = {"batch_dict": batch, "batch_size": 4, "device": None, "metadata": metadata}
    body = pickle.dumps(state, protocol=3)[2:-1]
    return f"c{module}\n_rebuild_tensor_batch\nc{module}\nTrainingInputBatch\n".encode() + body + b"\x86R."


MASK = [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
ADV = [[0.0, 0.0, 1.5, 1.5], [0.0, -1.0, -1.0, -1.0], [9.0, 0.0, 0.0, 2.0], [0.5] * 4]


class Payload:
    """Unpickling this would create ``marker`` (a hostile file's stand-in payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


def fifo(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return str(path)


# ---- Parquet: columns of the wrong kind (the validation that was already thorough: kept) ---------------
def _bad_column(name: str, column: str, values: Any, *needles: str, expect: str = "error", note: str | None = None) -> None:
    @case(f"parquet: {name}", expect, "{dir}/a.parquet", *needles, note=note)
    def build(d: Path) -> list[str]:
        return [parquet(d / "a.parquet", with_column(column, values))]


N = 8
_bad_column("advantages as text", "advantages", ["1.0"] * N, "'advantages'")
_bad_column("advantages as lists of text", "advantages", [["1"] * 3] * N, "'advantages'")
_bad_column("loss mask as lists of text", "loss_mask", [["1"] * 3] * N, "'loss_mask'")
_bad_column("uid as lists", "uid", [[1, 2]] * N, "'uid'")
_bad_column("uid as structs", "uid", [{"a": 1}] * N, "'uid'")
_bad_column("reward as text", "reward", ["good"] * N, "'reward'")
_bad_column("step as text", "step", ["3"] * N, "'step'")
_bad_column("a row's lists of different lengths", "loss_mask", [[1] * 3] * 5 + [[1] * 2] + [[1] * 3] * 2, "row 5", "'loss_mask'")
_bad_column("a null advantages list", "advantages", [[1.0] * 3] * 2 + [None] + [[1.0] * 3] * 5, "row 2", "'advantages'")
_bad_column("a null in the mask", "loss_mask", [[1] * 3] * 3 + [[1, None, 1]] + [[1] * 3] * 4, "row 3", "'loss_mask'")
_bad_column("a null uid", "uid", ["a"] * 4 + [None] + ["b"] * 3, "row 4", "'uid'")
_bad_column("a null step", "step", pa.array([0] * 6 + [None, 0], pa.int64()), "row 6", "'step'")
for _value in (2, -1):
    _bad_column(f"mask value {_value}", "loss_mask", [[1] * 3] * 6 + [[1, _value, 1]] + [[1] * 3], "row 6", "'loss_mask'")
for _value in (0.5, float("nan")):
    _bad_column(f"mask value {_value}", "loss_mask", [[1.0] * 3] * 6 + [[1.0, _value, 1.0]] + [[1.0] * 3], "row 6", "'loss_mask'")
_bad_column("mask of bools", "loss_mask", [[True, False, True]] * N, expect="ok")
_bad_column("float16 advantages", "advantages", pa.array([[0.5] * 3] * N, pa.list_(pa.float16())), expect="ok")
_bad_column(
    "decimal advantages", "advantages", pa.array([[1, 2, 3]] * N, pa.list_(pa.decimal128(5, 2))), "'advantages'", "decimal"
)
_bad_column("dictionary-encoded uid", "uid", pa.array([f"p{i // 4}" for i in range(N)]).dictionary_encode(), expect="ok")
_bad_column("large_list advantages", "advantages", pa.array([[1.0] * 3] * N, pa.large_list(pa.float32())), expect="ok")
_bad_column("fixed-size-list advantages", "advantages", pa.array([[1.0] * 3] * N, pa.list_(pa.float32(), 3)), expect="ok")
_bad_column("NaN and inf advantages", "advantages", [[float("nan"), float("inf"), 1.0]] * N, expect="ok")
_bad_column("inf and NaN rewards", "reward", [float("inf"), float("nan")] * 4, expect="ok")
_bad_column("integer uids", "uid", [i // 4 for i in range(N)], expect="ok")
_bad_column(
    "empty advantage lists beside full masks", "advantages", pa.array([[]] * N, pa.list_(pa.float32())), "row 0", "'loss_mask'"
)


@case("parquet: empty token lists throughout", "ok")
def _empty_lists(d: Path) -> list[str]:
    table = with_column("loss_mask", pa.array([[]] * N, pa.list_(pa.int8())))
    table["advantages"] = pa.array([[]] * N, pa.list_(pa.float32()))
    return [parquet(d / "a.parquet", table)]


@case("parquet: 0 rows", "error", "{dir}/a.parquet")
def _zero_rows(d: Path) -> list[str]:
    return [parquet(d / "a.parquet", pa.table(rows()).slice(0, 0))]


@case("parquet: one advantage per row with response_length", "ok", note="gives each row's loss-token count")
def _scalar_advantage(d: Path) -> list[str]:
    table = rows()
    del table["loss_mask"]
    table["advantages"] = [float(i % 2) for i in range(N)]
    table["response_length"] = [3] * N
    return [parquet(d / "a.parquet", table)]


def _lengths(values: list[int], *needles: str) -> None:
    @case(f"parquet: response_length {values[0]}", "error", "{dir}/a.parquet", "'response_length'", *needles)
    def build(d: Path) -> list[str]:
        table = rows()
        del table["loss_mask"]
        table["advantages"] = [1.0] * N
        table["response_length"] = pa.array(values + [3] * (N - len(values)), pa.int64())
        return [parquet(d / "a.parquet", table)]


_lengths([2**40], "in memory")  # a memory bomb: 2^40 tokens, refused before allocating
_lengths([2**62, 2**62], "in memory")  # the sum wraps around int64
_lengths([-3], "negative")


@case("parquet: response_length beyond the listed advantages", "error", "{dir}/a.parquet", "row 1", "'response_length'")
def _length_beyond(d: Path) -> list[str]:
    table = rows()
    del table["loss_mask"]
    table["response_length"] = [3, 9] + [3] * (N - 2)
    return [parquet(d / "a.parquet", table)]


@case("parquet: duplicate column names", "error", "{dir}/a.parquet", "'advantages'")
def _duplicate_columns(d: Path) -> list[str]:
    base = pa.table(rows())
    table = pa.Table.from_arrays([*base.columns, base.column("advantages")], names=[*base.column_names, "advantages"])
    return [parquet(d / "a.parquet", table)]


@case("parquet: --col gives a column that another role was found in", "ok")  # --col wins; reward is then not read
def _col_clash(d: Path) -> list[str]:
    return [parquet(d / "a.parquet", rows()), "--col", "uid=reward"]


@case("parquet: --col two roles to one column", "error", "--col", "'advantages'")
def _col_twice(d: Path) -> list[str]:
    return [parquet(d / "a.parquet", rows()), "--col", "advantages=advantages", "--col", "reward=advantages"]


@case("parquet: --col names a missing column", "error", "{dir}/a.parquet", "'nothere'")
def _col_missing(d: Path) -> list[str]:
    return [parquet(d / "a.parquet", rows()), "--col", "uid=nothere"]


for _step, _type, _needle in (
    (float("inf"), pa.float64(), "'step'"),
    (float("nan"), pa.float64(), "'step'"),
    (1e300, pa.float64(), "'step'"),
    (1.5, pa.float64(), "'step'"),
    (2**64 - 1, pa.uint64(), "'step'"),
    (2**63, pa.uint64(), "'step'"),
):

    def _absurd(d: Path, step: Any = _step, dtype: Any = _type) -> list[str]:
        return [parquet(d / "a.parquet", with_column("step", pa.array([step] * N, dtype)))]

    CASES.append(
        Case(f"parquet: step {_step!r} ({_type})", _absurd, "error", ("{dir}/a.parquet", _needle), commands=COMMANDS + WRITERS)
    )

for _step in (-5, 2**62, 2**63 - 1):

    def _big_step(d: Path, step: int = _step) -> list[str]:
        return [parquet(d / "a.parquet", with_column("step", pa.array([step] * N, pa.int64())))]

    CASES.append(Case(f"parquet: step {_step}", _big_step, "ok", commands=COMMANDS + WRITERS))

for _name in ("step_1234567890123456789012345678901234567890", "99999999999999999999", "global_step_9223372036854775808"):

    def _name_step(d: Path, name: str = _name) -> list[str]:
        return [parquet(d / f"{name}.parquet", rows(step=None))]

    CASES.append(
        Case(
            f"parquet: step in the file name {_name}",
            _name_step,
            "error",
            (f"{_name}.parquet", "step"),
            commands=COMMANDS + WRITERS,
        )
    )


# ---- Parquet: several files -------------------------------------------------------------------------
@case("parquet: uids as integers in one file and text in another", "ok")
def _mixed_uids(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", with_column("uid", [i // 4 for i in range(N)]))
    parquet(d / "run" / "b.parquet", with_column("step", [1] * N))
    return [str(d / "run")]


@case("parquet: a second file stores advantages as one value per row", "error", "{dir}/run/b.parquet", "'advantages'")
def _second_file_type(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    table = rows(step=1)
    table["advantages"] = [1.0] * N
    return [parquet(d / "run" / "b.parquet", table).rsplit("/", 1)[0]]


@case("parquet: a second file stores advantages as text", "error", "{dir}/run/b.parquet", "'advantages'")
def _second_file_text(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    parquet(d / "run" / "b.parquet", with_column("advantages", [["1"] * 3] * N, step=1))
    return [str(d / "run")]


@case("parquet: float32 and float64 advantages in two files", "ok")
def _second_file_float64(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", with_column("advantages", pa.array([[1.0] * 3] * N, pa.list_(pa.float32()))))
    parquet(d / "run" / "b.parquet", with_column("advantages", pa.array([[1.0] * 3] * N, pa.list_(pa.float64())), step=1))
    return [str(d / "run")]


@case("parquet: a second file lacks the step column", "error", "'step'")
def _second_file_no_step(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    parquet(d / "run" / "b.parquet", rows(step=None))
    return [str(d / "run")]


@case("parquet: two copies of the bundled sample in one folder", "ok")
def _two_samples(d: Path) -> list[str]:
    for name in ("a", "b"):
        (d / "run" / name).mkdir(parents=True)
        (d / "run" / name / "rollouts.parquet").write_bytes(SAMPLE.read_bytes())
    return [str(d / "run")]


@case("parquet: file names with numbers in another pattern (batch_1, batch_2)", "ok")  # steps 1 and 2
def _batch_names(d: Path) -> list[str]:
    parquet(d / "run" / "batch_1.parquet", rows(step=None))
    parquet(d / "run" / "batch_2.parquet", rows(step=None))
    return [str(d / "run")]


@case("parquet: file names with no step (a, b) and no step column", "ok", note="numbered by file order")
def _unnumbered(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows(step=None))
    parquet(d / "run" / "b.parquet", rows(step=None))
    return [str(d / "run")]


@case("parquet: one file of a folder names its step, one does not", "ok", note="numbered by file order")
def _half_names(d: Path) -> list[str]:
    parquet(d / "run" / "step_3.parquet", rows(step=None))
    parquet(d / "run" / "extra.parquet", rows(step=None))
    return [str(d / "run")]


@case("parquet: steps in the file names", "ok")
def _named_steps(d: Path) -> list[str]:
    parquet(d / "run" / "step_3.parquet", rows(step=None))
    parquet(d / "run" / "global_step_4.parquet", rows(step=None))
    return [str(d / "run")]


@case("parquet: a glob of two files", "ok")
def _glob(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    parquet(d / "run" / "b.parquet", rows(step=1))
    return [str(d / "run" / "*.parquet")]


@case("parquet: a glob matching nothing", "error", "{dir}/run/*.parquet", "no file matches")
def _glob_nothing(d: Path) -> list[str]:
    (d / "run").mkdir()
    return [str(d / "run" / "*.parquet")]


# ---- Parquet: damaged files --------------------------------------------------------------------------
def _damaged(name: str, damage: Callable[[bytes], bytes], *needles: str) -> None:
    @case(f"parquet file: {name}", "error", "{dir}/a.parquet", *needles)
    def build(d: Path) -> list[str]:
        path = Path(parquet(d / "a.parquet", rows()))
        path.write_bytes(damage(path.read_bytes()))
        return [str(path)]


_damaged("0 bytes", lambda data: b"")
_damaged("cut in half", lambda data: data[: len(data) // 2])
_damaged("cut before the footer", lambda data: data[:-9])
_damaged("text named .parquet", lambda data: b"uid,advantages\na,1\n")
_damaged("footer length beyond the file", lambda data: data[:-8] + struct.pack("<i", 10**9) + b"PAR1")
_damaged("magic bytes only", lambda data: b"PAR1PAR1")


@case("parquet file: a corrupt page header", "error", "{dir}/a.parquet")
def _page_header(d: Path) -> list[str]:
    path = Path(parquet(d / "a.parquet", rows(), compression="none"))
    data = bytearray(path.read_bytes())
    data[4:40] = b"\xff" * 36  # the first data page's thrift header
    path.write_bytes(bytes(data))
    return [str(path)]


# ---- folders and files that are not files ------------------------------------------------------------
@case("folder: empty", "error", "{dir}/run", "no .parquet files")
def _empty_folder(d: Path) -> list[str]:
    (d / "run").mkdir()
    return [str(d / "run")]


@case("folder: only dot files", "error", "{dir}/run")
def _dot_folder(d: Path) -> list[str]:
    parquet(d / "run" / ".hidden.parquet", rows())
    return [str(d / "run")]


@case("folder: nested 60 levels deep", "ok")
def _deep_folder(d: Path) -> list[str]:
    deep = d / "run" / Path(*["n"] * 60)
    parquet(deep / "a.parquet", rows())
    return [str(d / "run")]


@case("folder: a symlink loop", "ok")
def _loop_folder(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    (d / "run" / "loop").symlink_to(d / "run")
    return [str(d / "run")]


@case("folder: a broken symlink named .parquet", "error", "{dir}/run/b.parquet")
def _broken_link(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    (d / "run" / "b.parquet").symlink_to(d / "run" / "gone.parquet")
    return [str(d / "run")]


@case("folder: a FIFO named .parquet inside", "error", "{dir}/run/b.parquet", "not a regular file", subprocess=True)
def _fifo_in_folder(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    fifo(d / "run" / "b.parquet")
    return [str(d / "run")]


@case("folder: a socket named .parquet inside", "error", "{dir}/run/b.parquet", "not a regular file")
def _socket_in_folder(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(d / "run" / "b.parquet"))
    server.close()
    return [str(d / "run")]


@case("folder: a folder named .parquet inside", "ok")
def _folder_named_parquet(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    parquet(d / "run" / "b.parquet" / "c.parquet", rows(step=1))
    return [str(d / "run")]


@case("input: a FIFO", "error", "{dir}/in.parquet", "not a regular file", subprocess=True)
def _fifo_input(d: Path) -> list[str]:
    return [fifo(d / "in.parquet")]


@case("input: a FIFO named .jsonl", "error", "{dir}/in.jsonl", "not a regular file", subprocess=True)
def _fifo_jsonl(d: Path) -> list[str]:
    return [fifo(d / "in.jsonl")]


@case("input: /dev/null", "error", "/dev/null", "not a regular file")
def _dev_null(d: Path) -> list[str]:
    return ["/dev/null"]


@case("input: a missing path", "error", "{dir}/missing.parquet", "no such file")
def _missing(d: Path) -> list[str]:
    return [str(d / "missing.parquet")]


@case("input: an empty path", "error", "PATH")
def _empty_path(d: Path) -> list[str]:
    return [""]


@case("folder: an unreadable subfolder", "error", "{dir}/run/locked", "cannot be read", unreadable="run/locked")
def _unreadable(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    parquet(d / "run" / "locked" / "b.parquet", rows(step=1))
    return [str(d / "run")]


# ---- JSON lines -----------------------------------------------------------------------------------------
def _verl(name: str, raw: Callable[[bytes], bytes], expect: str = "error", *needles: str, note: str | None = None) -> None:
    @case(f"jsonl: {name}", expect, *(("{dir}/3.jsonl", *needles) if expect == "error" else ()), note=note)
    def build(d: Path) -> list[str]:
        good = b"".join(json.dumps(r).encode() + b"\n" for r in VERL)
        return [jsonl(d / "3.jsonl", [], raw=raw(good))]


_verl("a valid verl step", lambda data: data, "ok", note="lengths estimated from text")
_verl("the last line cut short", lambda data: data[:-9], "error", "line 6")
_verl("a byte-order mark", lambda data: b"\xef\xbb\xbf" + data, "ok")
_verl("CRLF line ends", lambda data: data.replace(b"\n", b"\r\n"), "ok")
_verl("blank lines between records", lambda data: data.replace(b"\n", b"\n\n"), "ok")
_verl("a JSON array instead of lines", lambda data: json.dumps(VERL).encode(), "error", "line 1")
_verl("one line of nesting 200,000 deep", lambda data: b"[" * 200_000 + b"]" * 200_000 + b"\n", "error", "line 1")
_verl(
    "a record nested 200,000 deep",
    lambda data: data + b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n",
    "error",
    "line 7",
)
_verl("0 bytes", lambda data: b"", "error")
_verl("only blank lines", lambda data: b"\n\n\n", "error")
_verl("bytes that are not UTF-8", lambda data: data + b'{"input": "\xff\xfe", "output": "x", "score": 1}\n', "error", "line 7")
_verl("a line that is a number", lambda data: data + b"42\n", "error", "line 7")
_verl(
    "a score as text",
    lambda data: data + b'{"input": "Q", "output": "x", "score": "high", "step": 3}\n',
    "error",
    "line 7",
    "score",
)
_verl(
    "a score of 1e400",
    lambda data: data + b'{"input": "Q", "output": "x", "score": 1e400, "step": 3}\n',
    "error",
    "line 7",
    "score",
)
_verl(
    "an output that is not text",
    lambda data: data + b'{"input": "Q", "output": [1, 2], "score": 1, "step": 3}\n',
    "error",
    "line 7",
    "output",
)
_verl("a step as text", lambda data: data.replace(b'"step": 3', b'"step": "three"'), "error", "step")
_verl(
    "a 40-digit step",
    lambda data: data.replace(b'"step": 3', b'"step": 1234567890123456789012345678901234567890'),
    "error",
    "step",
)
_verl("NUL bytes", lambda data: data + b"\x00\x00\x00\n", "error", "line 7")


def _jsonl_case(
    name: str, records: list[Any], expect: str, *needles: str, filename: str = "g.jsonl", note: str | None = None
) -> None:
    @case(f"jsonl: {name}", expect, *((f"{{dir}}/{filename}", *needles) if expect == "error" else ()), note=note)
    def build(d: Path) -> list[str]:
        return [jsonl(d / filename, records)]


ATROPOS = {"tokens": [[1, 2, 3], [4, 5]], "masks": [[-100, 2, 3], [4, 5]], "scores": [1.0, 0.0]}
_jsonl_case("atropos groups", [ATROPOS, ATROPOS], "ok")
_jsonl_case(
    "atropos tokens and masks of different lengths", [ATROPOS, {**ATROPOS, "masks": [[-100, 2], [4, 5]]}], "error", "line 2"
)
_jsonl_case("atropos scores missing a sample", [ATROPOS, {**ATROPOS, "scores": [1.0]}], "error", "line 2")
_jsonl_case("atropos scores as text", [ATROPOS, {**ATROPOS, "scores": ["a", "b"]}], "error", "line 2")
NEMO = {
    "token_ids": [1, 2, 3, 0],
    "token_loss_mask": [0, 1, 1, 0],
    "advantages": [0.0, 1.0, 1.0, 0.0],
    "input_lengths": 3,
    "rewards": 1.0,
}
_jsonl_case("nemo-rl rows", [NEMO, NEMO], "ok", filename="train_data_step2.jsonl")
_jsonl_case(
    "nemo-rl mask shorter than the tokens",
    [NEMO, {**NEMO, "token_loss_mask": [0, 1]}],
    "error",
    "line 2",
    filename="train_data_step2.jsonl",
)
_jsonl_case(
    "nemo-rl input_lengths beyond the row",
    [NEMO, {**NEMO, "input_lengths": 99}],
    "error",
    "line 2",
    filename="train_data_step2.jsonl",
)
PRIME = {"token_ids": [1, 2, 3], "position_ids": [0, 1, 0], "loss_mask": [1, 1, 1], "advantages": [1.0, 1.0, -1.0]}
_jsonl_case("prime-rl packed rows", [PRIME, PRIME], "ok", filename="rank_0.jsonl")
_jsonl_case(
    "prime-rl lists of different lengths", [PRIME, {**PRIME, "loss_mask": [1]}], "error", "line 2", filename="rank_0.jsonl"
)
_jsonl_case("keys of no known trainer", [{"a": 1}], "error", "--format")


@case("trl: conversational prompts", "ok")
def _trl_chat(d: Path) -> list[str]:
    prompt = [[{"role": "user", "content": f"q{i // 2}"}] for i in range(4)]
    completion = [[{"role": "assistant", "content": "a" * (i + 1)}] for i in range(4)]
    table = pa.table(
        {
            "prompt": prompt,
            "completion": completion,
            "reward": [1.0, 0.0, 1.0, 0.0],
            "advantage": [1.0, -1.0, 1.0, -1.0],
            "step": [5] * 4,
        }
    )
    return [parquet(d / "completions" / "completions_00005.parquet", table)]


@case("trl: a completion that is a number", "error", "completions_00005.parquet", "'completion'")
def _trl_bad(d: Path) -> list[str]:
    table = pa.table(
        {"prompt": ["q"] * 4, "completion": [1, 2, 3, 4], "reward": [1.0] * 4, "advantage": [0.0] * 4, "step": [5] * 4}
    )
    return [parquet(d / "completions" / "completions_00005.parquet", table), "--format", "trl"]


# ---- slime .pt ------------------------------------------------------------------------------------------
def _slime(name: str, samples: Any, expect: str, *needles: str, raw: Callable[[bytes], bytes] | None = None) -> None:
    @case(f"slime .pt: {name}", expect, *(("{dir}/1.pt", *needles) if expect == "error" else ()))
    def build(d: Path) -> list[str]:
        path = Path(slime(d / "1.pt", samples(d) if callable(samples) else samples))
        if raw is not None:
            path.write_bytes(raw(path.read_bytes()))
        return [str(path)]


GOOD = [slime_sample(0), slime_sample(0, reward=0.0), slime_sample(1, 3), slime_sample(1, 1, reward=0.5)]
_slime("a valid dump", GOOD, "ok")
_slime("numpy rewards", [slime_sample(0, reward=np.float64(1.0)), slime_sample(0, reward=np.float32(0.0))], "ok")
_slime(
    "a hostile payload in a sample's metadata",
    lambda d: [slime_sample(0, metadata={"x": Payload(d / "ran")})],
    "error",
    "refused",
    "io.open",
)
_slime(
    "response_length 10^12",
    [slime_sample(0), {**slime_sample(0), "response_length": 10**12, "loss_mask": None}],
    "error",
    "sample 1",
    "response_length",
)
_slime("response_length -1", [{**slime_sample(0), "response_length": -1}], "error", "sample 0", "response_length")
_slime("a loss mask of the wrong length", [{**slime_sample(0), "loss_mask": [1]}], "error", "sample 0", "loss_mask")
_slime("a loss mask holding 2", [{**slime_sample(0), "loss_mask": [1, 2]}], "error", "sample 0", "loss_mask")
_slime("no group_index", [{"response_length": 2, "loss_mask": [1, 1], "reward": 1.0}], "error", "sample 0", "group_index")
_slime("a reward as text", [slime_sample(0, reward="good")], "error", "sample 0", "reward")
_slime("no samples", [], "error", "no samples")
_slime("samples that are not dicts", ["a", "b"], "error", "'samples'")
_slime("cut in half", GOOD, "error", "torch.load", raw=lambda data: data[: len(data) // 2])
_slime("random bytes", GOOD, "error", raw=lambda data: os.urandom(256))


@case("slime .pt: a whole model", "error", "{dir}/model.pt", "torch.nn.modules.linear.Linear")
def _model(d: Path) -> list[str]:
    torch.save(torch.nn.Linear(2, 2), d / "model.pt")
    return [str(d / "model.pt")]


@case("slime .pt: a checkpoint folder given by mistake", "error", "{dir}/ckpt/model.pt", "not a slime rollout dump")
def _checkpoint(d: Path) -> list[str]:
    (d / "ckpt").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), d / "ckpt" / "model.pt")
    torch.save({"step": 3, "optimizer": {}}, d / "ckpt" / "optim.pt")
    return [str(d / "ckpt")]


@case("slime .pt: a bare list", "error", "{dir}/2.pt", "not a slime rollout dump")
def _bare_list(d: Path) -> list[str]:
    torch.save([1, 2, 3], d / "2.pt")
    return [str(d / "2.pt")]


# ---- SkyRL .pkl ---------------------------------------------------------------------------------------------
def _skyrl(name: str, data: Callable[[Path], bytes], expect: str, *needles: str) -> None:
    @case(f"skyrl .pkl: {name}", expect, *(("{dir}/global_step_2_training_input.pkl", *needles) if expect == "error" else ()))
    def build(d: Path) -> list[str]:
        return [pickled(d / "global_step_2_training_input.pkl", raw=data(d))]


for _real in sorted(p.name for p in SKYRL_DATA.glob("*.pkl")):
    _skyrl(f"a real dump ({_real})", lambda d, name=_real: (SKYRL_DATA / name).read_bytes(), "ok")
_skyrl("our own 0.4.0-shaped batch", lambda d: skyrl_state(loss_mask=MASK, advantages=ADV), "ok")
_skyrl("os.system", lambda d: f"cos\nsystem\n(Vtouch {d / 'ran'}\ntR.".encode(), "error", "refused", "os.system")
_skyrl("builtins.open", lambda d: pickle.dumps(Payload(d / "ran")), "error", "refused", "io.open")
_skyrl("eval in protocol 0", lambda d: b"cbuiltins\neval\n(Vopen('x', 'w')\ntR.", "error", "refused", "builtins.eval")
_skyrl("strings", lambda d: pickle.dumps(["a", "b"]), "error", "not a SkyRL TrainingInputBatch")
_skyrl("a dict", lambda d: pickle.dumps({"loss_mask": [1]}), "error", "not a SkyRL TrainingInputBatch")
_skyrl("cut short", lambda d: skyrl_state(loss_mask=MASK, advantages=ADV)[:-40], "error", "not a readable SkyRL")
_skyrl("0 bytes", lambda d: b"", "error")
_skyrl("a 1-D loss mask", lambda d: skyrl_state(loss_mask=[1, 1, 1, 1], advantages=[1.0] * 4), "error", "loss_mask")
_skyrl("a mask holding 2", lambda d: skyrl_state(loss_mask=[[2] * 4] * 4, advantages=ADV), "error", "loss_mask")
_skyrl("shapes that differ", lambda d: skyrl_state(loss_mask=MASK, advantages=[[1.0] * 3] * 4), "error", "advantages")
_skyrl("no advantages", lambda d: skyrl_state(loss_mask=MASK), "error", "'advantages'")
_skyrl(
    "advantages as text bytes",
    lambda d: skyrl_state(loss_mask=MASK, advantages=np.array([["a"] * 4] * 4)),
    "error",
    "'advantages'",
)
_skyrl(
    "prompt boundaries that are not contiguous",
    lambda d: skyrl_state(loss_mask=MASK, advantages=ADV, metadata={"policy_prompt_boundaries": [(0, 2), (3, 4)]}),
    "error",
    "policy_prompt_boundaries",
)
_skyrl(
    "prompt boundaries that are text",
    lambda d: skyrl_state(loss_mask=MASK, advantages=ADV, metadata={"policy_prompt_boundaries": "all"}),
    "error",
    "policy_prompt_boundaries",
)
_skyrl(
    "more uids than rows",
    lambda d: skyrl_state(loss_mask=MASK, advantages=ADV, metadata={"uids": list("abcdef")}),
    "error",
    "uids",
)


# ---- option values --------------------------------------------------------------------------------------
def _sample_path(d: Path) -> list[str]:
    return [parquet(d / "a.parquet", rows(n=16))]


LAYOUT_OPTIONS = ("--mini-batch-size", "--mini-batch-prompts", "--micro-batch-size", "--dp-size", "--max-seq-len")
BAD_INTS = ("0", "-1", str(2**31), str(2**63), str(2**64), "1e20", "abc", "", "9" * 5000)
for _option in (*LAYOUT_OPTIONS, "--seed"):
    for _value in BAD_INTS:
        if _option == "--seed" and _value in ("0", str(2**31)):  # seeds are whole numbers from 0 to 2^63 - 1
            continue
        extra = ["--order", "shuffle"] if _option == "--seed" else []
        CASES.append(
            Case(
                f"option: {_option} {_value[:12]}",
                lambda d, o=_option, v=_value, e=tuple(extra): [*_sample_path(d), o, v, *e],
                "error",
                (_option,),
                commands=COMMANDS,
            )
        )
for _args, _needle in (
    (["--order", "bogus"], "--order"),
    (["--seed", "3"], "--seed"),
    (["--mini-batch-size", "4", "--mini-batch-prompts", "2"], "--mini-batch-size"),
    (["--mode", "mean_of_means"], "--mode"),
    (["--mode", "seq_mean_token_sum_norm"], "--max-seq-len"),
    (["--engine", "warp"], "--engine"),
    (["--address", "auto"], "--address"),
):
    CASES.append(
        Case(
            f"option: {' '.join(_args)}",
            lambda d, a=tuple(_args): [*_sample_path(d), *a],
            "error",
            (_needle,),
            # inspect has none of these options: its one line names the first one it does not know
            commands=COMMANDS if _needle == _args[0] else ("weights", "check", "report"),
        )
    )
for _args, _needle in (
    (["--col", "uid"], "--col"),
    (["--col", "colour=uid"], "--col"),
    (["--col", "=uid"], "--col"),
    (["--format", "bogus"], "--format"),
    (["--format", "verl"], "{dir}/a.parquet"),
    (["--format", "skyrl"], "{dir}/a.parquet"),
    (["--advantage", "ppo"], "--advantage"),
    (["--advantage", "grpo"], "--advantage"),
    (["--reward-col", "nothere"], "'nothere'"),
    (["--tokenizer", "/nonexistent/tok"], "--tokenizer"),
    (["--trust-pickle"], "--trust-pickle"),
):
    CASES.append(Case(f"option: {' '.join(_args)}", lambda d, a=tuple(_args): [*_sample_path(d), *a], "error", (_needle,)))
CASES.append(
    Case(
        "option: check --fail-on bogus",
        lambda d: [*_sample_path(d), "--fail-on", "bogus"],
        "error",
        ("--fail-on",),
        commands=("check",),
    )
)
CASES.append(
    Case(
        "option: inspect --uid of no row", lambda d: [*_sample_path(d), "--uid", "zzz"], "error", ("zzz",), commands=("inspect",)
    )
)
for _spec, _needle in (
    ("prompt_mean,mini-batch-size=9223372036854775808", "mini-batch-size"),
    ("prompt_mean,dp-size=1e20", "dp-size"),
    ("prompt_mean,micro-batch-size=" + "9" * 5000, "micro-batch-size"),
    ("prompt_mean,seed=99999999999999999999999", "seed"),
    ("prompt_mean,mini_batch=4", "mini-batch"),
    ("prompt_mean,order=random", "order"),
    (",dp-size=2", "SPEC"),
    ("token_mean", "the same mode and layout"),
):

    def _compare(d: Path, spec: str = _spec) -> list[str]:
        return [*_sample_path(d), "--from", "token_mean", "--to", spec, "-o", str(d / "_out")]

    CASES.append(Case(f"compare SPEC {_spec[:40]}", _compare, "error", ("SPEC", _needle), commands=("compare",)))
for _args, _needle in (
    (["--prompts", "1000000000"], "--prompts"),
    (["--prompts", "0"], "--prompts"),
    (["--steps", str(2**64)], "--steps"),
    (["--group-size", "1e9"], "--group-size"),
    (["--max-len", "4"], "--max-len"),
):
    CASES.append(
        Case(
            f"sample {' '.join(_args)}",
            lambda d, a=tuple(_args): [str(d / "_out"), *a],
            "error",
            (_needle,),
            commands=("sample",),
        )
    )


# ---- output paths -----------------------------------------------------------------------------------------
def _made(path: Path, folder: bool = False) -> str:
    """A path that exists already: a folder, or a regular file."""
    path.mkdir() if folder else path.write_text("notes\n")
    return str(path)


def _output(name: str, command: str, target: Callable[[Path], str], *needles: str, expect: str = "error") -> None:
    @case(f"output: {command} {name}", expect, *needles, commands=(command,))
    def build(d: Path) -> list[str]:
        parquet(d / "run" / "a.parquet", rows())
        flag = "--out" if command == "weights" else "-o"
        specs = ["--from", "token_mean", "--to", "sequence_mean"] if command == "compare" else []
        return [str(d / "run"), flag, target(d), *specs]


for _command in ("weights", "convert"):
    _output(
        "into the input folder",
        _command,
        lambda d: str(d / "run" / "w.parquet"),
        "{dir}/run/w.parquet",
        "inside the input folder",
    )
    _output(
        "into a subfolder of the input folder",
        _command,
        lambda d: str(d / "run" / "sub" / "w.parquet"),
        "inside the input folder",
    )
    _output("onto a folder", _command, lambda d: _made(d / "w.parquet", folder=True), "{dir}/w.parquet", "is a directory")
    _output("below a regular file", _command, lambda d: _made(d / "notes.txt") + "/w.parquet", "{dir}/notes.txt")
    _output("into a missing folder", _command, lambda d: str(d / "missing" / "w.parquet"), "{dir}/missing")
    _output("without .parquet", _command, lambda d: str(d / "w.txt"), "{dir}/w.txt", ".parquet")
    _output("onto the input file", _command, lambda d: str(d / "run" / "a.parquet"), "{dir}/run/a.parquet", "input")
for _command in ("report", "plot", "compare"):
    _output("-o ''", _command, lambda d: "", "-o", "name the folder")
    _output("-o .", _command, lambda d: ".", "-o", "name the folder")
    _output("onto a regular file", _command, lambda d: str(d / "run" / "a.parquet"), "{dir}/run/a.parquet", "not a directory")
    _output("below a regular file", _command, lambda d: _made(d / "notes.txt") + "/rep", "{dir}/notes.txt")
    _output("into a folder holding other files", _command, lambda d: str(d / "run"), "{dir}/run", "a.parquet")


# ---- more shapes: the long layout, folders of dumps, options of plot and check ------------------------------
def _long(name: str, table: dict[str, list[Any]], expect: str, *needles: str) -> None:
    @case(f"long layout: {name}", expect, *(("{dir}/long.parquet", *needles) if expect == "error" else ()))
    def build(d: Path) -> list[str]:
        return [parquet(d / "long.parquet", table)]


LONG = {
    "seq_id": [0, 0, 1, 1, 2],
    "uid": ["a", "a", "a", "a", "b"],
    "advantages": [1.0, 1.0, -1.0, -1.0, 0.5],
    "loss_mask": [1, 0, 1, 1, 1],
}
_long("a valid table", LONG, "ok")
_long("a null sequence id", {**LONG, "seq_id": [0, None, 1, 1, 2]}, "error", "row 1", "'seq_id'")
_long("a uid that changes within a sequence", {**LONG, "uid": ["a", "b", "a", "a", "b"]}, "error", "uid")
_long("a mask value of 2", {**LONG, "loss_mask": [1, 2, 1, 1, 1]}, "error", "'loss_mask'")
_long("no sequence id column", {k: v for k, v in LONG.items() if k != "seq_id"}, "error", "sequence")


@case("parquet: forty row groups of one row", "ok")
def _many_groups(d: Path) -> list[str]:
    return [parquet(d / "a.parquet", rows(n=40), row_group_size=1)]


@case("parquet: a reward column of nulls only", "ok")
def _null_rewards(d: Path) -> list[str]:
    return [parquet(d / "a.parquet", with_column("reward", pa.array([None] * N, pa.float64())))]


@case("input: a symlink to a file", "ok")
def _link(d: Path) -> list[str]:
    target = Path(parquet(d / "real" / "a.parquet", rows()))
    (d / "link.parquet").symlink_to(target)
    return [str(d / "link.parquet")]


@case("input: a glob matching a FIFO", "error", "{dir}/run/b.parquet", "not a regular file", subprocess=True)
def _glob_fifo(d: Path) -> list[str]:
    parquet(d / "run" / "a.parquet", rows())
    fifo(d / "run" / "b.parquet")
    return [str(d / "run" / "*.parquet")]


@case("verl: a folder of two steps", "ok")
def _verl_folder(d: Path) -> list[str]:
    jsonl(d / "rollouts" / "1.jsonl", [{**r, "step": 1} for r in VERL])
    jsonl(d / "rollouts" / "2.jsonl", [{**r, "step": 2} for r in VERL])
    return [str(d / "rollouts")]


@case("verl: a line without 'output'", "error", "{dir}/3.jsonl", "output")
def _verl_no_output(d: Path) -> list[str]:
    return [jsonl(d / "3.jsonl", [*VERL, {"input": "Q", "score": 1.0, "step": 3}])]


@case("jsonl: a folder mixing verl and Atropos dumps", "error", "{dir}/mixed", "mixes dumps")
def _mixed_folder(d: Path) -> list[str]:
    jsonl(d / "mixed" / "3.jsonl", VERL)
    jsonl(d / "mixed" / "groups.jsonl", [ATROPOS])
    return [str(d / "mixed")]


@case("prime-rl: token_exports/step_N/rank_R.jsonl", "ok")
def _prime_folder(d: Path) -> list[str]:
    for step in (1, 2):
        for rank in (0, 1):
            jsonl(d / "token_exports" / f"step_{step}" / f"rank_{rank}.jsonl", [PRIME])
    return [str(d / "token_exports")]


@case("skyrl .pkl: two dumps of one step", "error", "2 SkyRL dumps for step 2")
def _skyrl_twice(d: Path) -> list[str]:
    for folder in ("a", "b"):
        pickled(d / "run" / folder / "global_step_2_training_input.pkl", raw=skyrl_state(loss_mask=MASK, advantages=ADV))
    return [str(d / "run")]


@case("slime .pt: 0 bytes", "error", "{dir}/1.pt")
def _slime_empty(d: Path) -> list[str]:
    (d / "1.pt").write_bytes(b"")
    return [str(d / "1.pt")]


for _args, _needle in (
    (["--figure", "bogus"], "--figure"),
    (["--image-format", "gif"], "--image-format"),
):
    CASES.append(
        Case(
            f"option: plot {' '.join(_args)}",
            lambda d, a=tuple(_args): [*_sample_path(d), "-o", str(d / "_out"), *a],
            "error",
            (_needle,),
            commands=("plot",),
        )
    )
for _level in ("fatal", "", "WARN"):
    CASES.append(
        Case(
            f"option: check --fail-on {_level!r}",
            lambda d, v=_level: [*_sample_path(d), "--fail-on", v],
            "error",
            ("--fail-on",),
            commands=("check",),
        )
    )
