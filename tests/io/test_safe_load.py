"""Pickled dumps run no code: real SkyRL dumps load, hostile .pkl and .pt files are refused in one line.

The real dumps in ``tests/io/skyrl_dumps`` were written by SkyRL's own ``training_batch.py`` (0.4.0,
and skyrl-train 0.3.1); ``PROVENANCE.md`` there says how; and SkyRL 0.4.0's file from its wheel
(``framework_wheels.skyrl_training_batch``) writes fresh ones here. Every hostile payload would
create a marker file if any of it ran: the tests check that none appears, with and without a SkyRL
module importable (a stand-in whose own code would also leave a marker, or SkyRL's own).
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts
from aggscope.io.safe_load import SKYRL_GLOBALS, load_skyrl_pickle

runner = CliRunner()
SKYRL_DATA = Path(__file__).parent / "skyrl_dumps"
COMMANDS = ("inspect", "weights", "check", "report")


def one_error_line(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aggscope: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(params=["without SkyRL", "with SkyRL importable"])
def skyrl_importable(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A marker path that SkyRL's (stand-in) code would create if the loader ever called it."""
    marker = tmp_path / "skyrl-code-ran"
    for name in [m for m in sys.modules if m == "skyrl" or m.startswith(("skyrl.", "skyrl_train"))]:
        monkeypatch.delitem(sys.modules, name)
    if request.param == "with SkyRL importable":

        def ran(*args: Any, **kwargs: Any) -> None:
            marker.write_text("ran")
            raise RuntimeError("SkyRL's code ran")

        names = ["skyrl", "skyrl.backends", "skyrl.backends.skyrl_train", "skyrl.backends.skyrl_train.training_batch"]
        for name in [*names, "skyrl_train", "skyrl_train.training_batch"]:
            module = types.ModuleType(name)
            module.TrainingInputBatch = ran  # type: ignore[attr-defined]
            module._rebuild_tensor_batch = ran  # type: ignore[attr-defined]
            module.TensorFormat = ran  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, name, module)
    return marker


# ---- real SkyRL dumps ---------------------------------------------------------------------------------
# Each dump: rows [[0,0,1,1], [0,1,1,1], [0,0,0,1], [1,1,1,1]] of loss_mask (left-padded) and
# advantages [[0,0,1.5,1.5], [0,-1,-1,-1], [9,0,0,2], [0.5]*4]; prompt boundaries (0,2), (2,3), mini-batch
# boundaries (0,4): row 3 is trained in no prompt's range.
@pytest.mark.parametrize(
    "name", ["skyrl-0.4.0-protocol4.pkl", "skyrl-0.4.0-packed-protocol5.pkl", "skyrl_train-0.3.1-protocol4.pkl"]
)
def test_real_skyrl_dumps_load_without_running_skyrl(name: str, skyrl_importable: Path, tmp_path: Path) -> None:
    path = tmp_path / "dumped_data" / "global_step_7_training_input.pkl"
    path.parent.mkdir()
    path.write_bytes((SKYRL_DATA / name).read_bytes())
    (batch,) = list(open_rollouts(str(path.parent)).iter_steps())
    assert batch.step == 7 and batch.row_uids() == ["p0", "p0", "p1", "row:3"]
    assert batch.loss_mask.tolist() == [
        False,
        False,
        True,
        True,
        False,
        True,
        True,
        True,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        True,
    ]
    assert batch.advantages.tolist()[8:12] == [0.0, 0.0, 0.0, 2.0]  # the masked 9.0 is not trained: read as 0
    assert not skyrl_importable.exists()


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_dump_by_skyrls_own_code_loads_with_and_without_skyrl_importable(protocol: int, tmp_path: Path) -> None:
    from framework_wheels import skyrl_training_batch

    path = tmp_path / "dumped_data" / "global_step_9_training_input.pkl"
    path.parent.mkdir()
    loss_mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    advantages = torch.tensor([[0.0, 0.0, 1.5, 1.5], [0.0, -1.0, -1.0, -1.0], [9.0, 0.0, 0.0, 2.0], [0.5] * 4])
    with skyrl_training_batch() as skyrl:
        batch = skyrl.TrainingInputBatch(
            {"loss_mask": loss_mask, "advantages": advantages, "log_probs": advantages.to(torch.bfloat16), "values": None}
        )
        batch.metadata = {"policy_prompt_boundaries": [(0, 2), (2, 3)], "response_length": 4, "metrics": {"avg": 0.5}}
        with path.open("wb") as handle:  # what SkyRL's TensorBatch.save does, at either protocol
            pickle.dump(batch, handle, protocol=protocol)
        with_skyrl = list(open_rollouts(str(path)).iter_steps())
    without_skyrl = list(open_rollouts(str(path)).iter_steps())
    for (step,) in (with_skyrl, without_skyrl):
        assert step.step == 9 and step.row_uids() == ["p0", "p0", "p1", "row:3"]
        assert np.array_equal(step.loss_mask, loss_mask.reshape(-1).bool().numpy())
        assert np.array_equal(step.advantages, (advantages * loss_mask).reshape(-1).numpy())  # masked ones read as 0


def test_the_allow_list_is_exactly_what_real_dumps_hold() -> None:
    """Record every global the real dumps name: each is allowed, and nothing else of SkyRL's is."""
    seen: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            seen.add(f"{module}.{name}")
            return SKYRL_GLOBALS[f"{module}.{name}"]

    for path in SKYRL_DATA.glob("*.pkl"):
        with path.open("rb") as handle:
            Recording(handle).load()
    assert seen <= set(SKYRL_GLOBALS)
    skyrl_names = {name for name in SKYRL_GLOBALS if "skyrl" in name}
    assert skyrl_names == {n for n in seen if "skyrl" in n}  # no SkyRL name allowed that a dump does not use


# ---- hostile pickles ----------------------------------------------------------------------------------
class Payload:
    """Unpickling this opens (creates) ``marker`` through ``callable``."""

    def __init__(self, how: Any, *args: Any) -> None:
        self.how, self.args = how, args

    def __reduce__(self) -> Any:
        return (self.how, self.args)


def hostile_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes, the global the refusal must name)."""
    touch = f"touch {marker}"
    opened = Payload(builtins.open, str(marker), "w")
    torch_bytes = io.BytesIO()
    torch.save({"x": opened}, torch_bytes)
    batch_state = {
        "batch_dict": {"loss_mask": {"format": "torch", "data": torch_bytes.getvalue()}},
        "batch_size": 1,
        "device": None,
        "metadata": {},
    }

    skyrl = "skyrl.backends.skyrl_train.training_batch"
    rebuild = (  # SkyRL 0.4.0's own shape, _rebuild_tensor_batch(TrainingInputBatch, state), with a hostile field inside
        f"c{skyrl}\n_rebuild_tensor_batch\nc{skyrl}\nTrainingInputBatch\n".encode() + _body(batch_state) + b"\x86R."
    )
    return {
        "os.system": (pickle.dumps(Payload(os.system, touch)), f"{os.system.__module__}.system"),
        "io.open": (pickle.dumps(opened), "io.open"),
        "builtins.eval": (pickle.dumps(Payload(eval, f"open({str(marker)!r}, 'w')")), "builtins.eval"),
        "builtins.getattr": (pickle.dumps(Payload(getattr, Payload(__import__, "os"), "system")), "builtins.getattr"),
        "a SkyRL module's other name": (f"c{skyrl}\ndump_data\n)R.".encode(), f"{skyrl}.dump_data"),
        "inside a field's torch bytes": (rebuild, "io.open"),
        "in protocol 0": (pickle.dumps(Payload(os.system, touch), protocol=0), f"{os.system.__module__}.system"),
    }


def _body(value: Any) -> bytes:
    """The opcodes that push ``value`` (protocol 3: no frames), to splice into a hand-written pickle."""
    return pickle.dumps(value, protocol=3)[2:-1]


HOSTILE_CASES = (
    "os.system",
    "io.open",
    "builtins.eval",
    "builtins.getattr",
    "a SkyRL module's other name",
    "inside a field's torch bytes",
    "in protocol 0",
)


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_pickle_is_refused_and_runs_nothing(case: str, skyrl_importable: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    data, refused = hostile_pickles(marker)[case]
    path = tmp_path / "dumped_data" / "global_step_1_training_input.pkl"
    path.parent.mkdir()
    path.write_bytes(data)
    for command in COMMANDS:
        args = [command, str(path), *(["-o", str(tmp_path / "out")] if command == "report" else [])]
        message = one_error_line(*args)
        assert str(path) in message and refused in message, message
        assert not marker.exists() and not skyrl_importable.exists()
    assert not (tmp_path / "out").exists()


def test_a_pickle_of_plain_strings_is_not_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "global_step_2_training_input.pkl"
    path.write_bytes(pickle.dumps(["a", "b"]))
    assert one_error_line("weights", str(path)).endswith(f"{path}: holds a list, not a SkyRL TrainingInputBatch")
    path.write_bytes(pickle.dumps("x")[:-3])
    assert f"{path}: not a readable SkyRL training batch pickle" in one_error_line("weights", str(path))


def test_library_refusal_is_an_aggscope_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(Payload(os.system, "true")))
    with pytest.raises(AggscopeError, match="names the global"):
        load_skyrl_pickle(str(path))


# ---- slime .pt ------------------------------------------------------------------------------------------
def slime_dump(path: Path, **extra: Any) -> Path:
    samples = [
        {"group_index": 0, "response_length": 2, "loss_mask": [1, 1], "reward": np.float64(1.0), **extra},
        {"group_index": 0, "response_length": 1, "loss_mask": None, "reward": 0.0},
    ]
    torch.save({"rollout_id": 4, "samples": samples}, path)
    return path


def test_slime_numpy_rewards_load_with_weights_only(tmp_path: Path) -> None:
    (batch,) = list(open_rollouts(str(slime_dump(tmp_path / "4.pt"))).iter_steps())
    assert batch.rewards is not None and batch.rewards.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("what", "refused"),
    [
        ("a payload in the samples", "io.open"),
        ("a whole model", "torch.nn.modules.linear.Linear"),
    ],
)
def test_hostile_pt_is_refused_never_retried(what: str, refused: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "run" / "3.pt"
    path.parent.mkdir()
    if what == "a whole model":
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        slime_dump(path, metadata={"x": Payload(builtins.open, str(marker), "w")})
    for command in COMMANDS:
        args = [command, str(path.parent), *(["-o", str(tmp_path / "out")] if command == "report" else [])]
        message = one_error_line(*args)
        assert f"{path}: refused to load: it names the global {refused}" in message, message
        assert "--trust-pickle" in message and not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_folder_given_by_mistake(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "model.pt")
    message = one_error_line("weights", str(tmp_path))
    assert message.endswith(f"{tmp_path / 'model.pt'}: not a slime rollout dump (expected a dict with a 'samples' list of dicts)")


# ---- --trust-pickle --------------------------------------------------------------------------------------
class Opaque:
    """A class of the trainer's that the safe loaders do not know."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque)

    __hash__ = object.__hash__


def test_trust_pickle_loads_a_named_file_with_a_warning(tmp_path: Path) -> None:
    path = slime_dump(tmp_path / "4.pt", metadata={"custom": Opaque()})
    assert "refused to load: it names the global test_safe_load.Opaque" in one_error_line("weights", str(path))
    result = runner.invoke(app, ["weights", str(path), "--trust-pickle", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"aggscope: warning: --trust-pickle: unpickling {path} fully, which runs any code it names"


@pytest.mark.parametrize("given", ["folder", "glob", "parquet"])
def test_trust_pickle_is_never_for_files_found_by_a_scan(given: str, tmp_path: Path) -> None:
    slime_dump(tmp_path / "4.pt")
    target = {"folder": str(tmp_path), "glob": str(tmp_path / "*.pt"), "parquet": None}[given]
    message = one_error_line("weights", *([target] if target else []), "--trust-pickle")
    assert "trust is given to one .pkl or .pt file named as PATH, never to files found in a folder or by a glob" in message
