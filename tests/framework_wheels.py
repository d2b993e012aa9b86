"""The trainers' own loss code, loaded from their published wheels at test time (nothing vendored).

A wheel is looked up in ``$AGGSCOPE_WHEEL_CACHE`` (default ``~/.cache/aggscope-test-wheels``),
fetched there with ``pip download --no-deps`` when missing (``.ci/run`` fetches them up front),
and unpacked beside it. The few real files a test needs are executed with importlib under their
real module names; the packages around them are empty module objects whose ``__path__`` points
into the wheel, so the frameworks' heavy ``__init__`` files (ray, vLLM, CUDA probing) never run,
and the third-party imports those files make at the top are stand-ins. Everything put into
``sys.modules`` while loading is taken out again afterwards, so no other test sees a stand-in.
A test that cannot get a wheel is skipped, naming the wheel and why (in CI it fails instead:
``.ci/run`` downloads them).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import torch

CACHE = Path(os.environ.get("AGGSCOPE_WHEEL_CACHE", Path.home() / ".cache" / "aggscope-test-wheels"))
# name, version, the Python the wheel is for (SkyRL 0.4.0 declares >= 3.12, but its files import on 3.11)
WHEELS = {"verl": ("verl", "0.9.1", None), "skyrl": ("skyrl", "0.4.0", "3.12"), "openrlhf": ("openrlhf", "0.11.2", None)}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the trainer-code tests, but {reason} (.ci/run downloads the wheels)")
    pytest.skip(reason)


def unpacked_wheel(key: str) -> Path:
    """The unpacked wheel's root folder (downloaded first if needed), or a skip naming why not."""
    name, version, python = WHEELS[key]
    stem = f"{name.replace('-', '_')}-{version}"
    target = CACHE / "unpacked" / stem
    if target.is_dir():
        return target
    wheels = sorted(CACHE.glob(f"{stem}-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(CACHE)]
        if python:
            command += ["--python-version", python]
        try:
            CACHE.mkdir(parents=True, exist_ok=True)
            done = subprocess.run([*command, f"{name}=={version}"], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"{name}=={version} wheel not available: {exc}")
        wheels = sorted(CACHE.glob(f"{stem}-*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel found"])[-1]
            _unavailable(f"{name}=={version} wheel not available (pip download --no-deps failed: {last})")
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extractall(partial)
    partial.rename(target)
    return target


class _Placeholder:
    """Stands in for a third-party class that a loaded file names but the tested functions never use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _module(name: str, path: Path | None = None, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]  # a package whose submodules are found in the wheel
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _run_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Real installed packages (and what they imported) brought in by ``_third_party``: kept on the way out of
# ``_isolated_modules``, since a package dropped and imported again is two copies that disagree (omegaconf
# imports yaml: a second yaml then fails every safe_load with "could not determine a constructor").
_REAL: set[str] = set()


@contextmanager
def _isolated_modules() -> Iterator[None]:
    """``sys.modules`` as it was on the way out: what was added inside is removed (but real installed
    packages), what was replaced (a stand-in over a real package imported by an earlier test) is put back."""
    before = dict(sys.modules)
    try:
        yield
    finally:
        for name in set(sys.modules) - set(before) - _REAL:
            del sys.modules[name]
        sys.modules.update(before)


def _import_real(name: str) -> None:
    """Import a real package before ``_isolated_modules``: imported inside, it would be taken out
    again afterwards while the modules it loaded (yaml's constructors) stay, and the next import of
    it would be a second copy that no longer matches them."""
    with suppress(ImportError):
        importlib.import_module(name)


def _third_party(name: str, **attributes: Any) -> None:
    """The real package when it is installed, else a stand-in with these attributes."""
    loaded = set(sys.modules)
    try:
        importlib.import_module(name)
    except ImportError:
        _module(name, **attributes)
    else:
        _REAL.update(set(sys.modules) - loaded)


def load_verl() -> types.SimpleNamespace:
    """verl 0.9.1's ``core_algos`` (``agg_loss``, GRPO), ``tensordict_utils`` (``make_iterator``,
    the per-rank mini-batch iterator of ``TrainingWorker.train_mini_batch``) and ``seqlen_balancing``
    (``balance_batch``'s partitions and the ``use_dynamic_bsz`` micro-batches)."""
    root = unpacked_wheel("verl")
    verl = root / "verl"
    _import_real("omegaconf")
    with _isolated_modules():
        _third_party("omegaconf", DictConfig=_Placeholder, OmegaConf=_Placeholder, ListConfig=_Placeholder)
        tensordict = types.ModuleType("tensordict")
        tensordict.TensorDict = _Placeholder  # type: ignore[attr-defined]
        tensordict.__version__ = "0.10.0"  # type: ignore[attr-defined]
        sys.modules["tensordict"] = tensordict
        _module("tensordict.tensorclass", NonTensorData=_Placeholder, NonTensorStack=_Placeholder)
        _third_party("transformers", PreTrainedTokenizer=_Placeholder)
        _module("verl", verl)
        utils = _module("verl.utils", verl / "utils")
        _module("verl.trainer", verl / "trainer")
        _module("verl.trainer.ppo", verl / "trainer" / "ppo")
        _module("verl.workers", verl / "workers")
        _module(
            "verl.utils.device",
            get_device_name=lambda: "cpu",
            get_torch_device=lambda: torch.cpu,
            is_npu_available=False,
            get_device_id=lambda: "cpu",
        )
        _module("verl.trainer.config", AlgoConfig=_Placeholder)
        _module("verl.workers.config", ActorConfig=_Placeholder)
        _module("verl.protocol", DataProto=_Placeholder)
        tensordict_utils = _run_file("verl.utils.tensordict_utils", verl / "utils" / "tensordict_utils.py")
        seqlen_balancing = _run_file("verl.utils.seqlen_balancing", verl / "utils" / "seqlen_balancing.py")
        _run_file("verl.utils.import_utils", verl / "utils" / "import_utils.py")
        groupwise = _run_file("verl.utils.groupwise", verl / "utils" / "groupwise.py")
        utils.as_torch_index, utils.group_mean_std = groupwise.as_torch_index, groupwise.group_mean_std  # type: ignore[attr-defined]
        utils.torch_functional = _run_file("verl.utils.torch_functional", verl / "utils" / "torch_functional.py")  # type: ignore[attr-defined]
        core_algos = _run_file("verl.trainer.ppo.core_algos", verl / "trainer" / "ppo" / "core_algos.py")
    # The tests iterate row indices, not TensorDicts: select indices from an index "batch".
    tensordict_utils.index_select_tensor_dict = lambda batch, indices: torch.as_tensor(indices)
    return types.SimpleNamespace(
        core_algos=core_algos, tensordict_utils=tensordict_utils, seqlen_balancing=seqlen_balancing, root=root
    )


class ThreadGroup:
    """``torch.distributed`` for ranks that are threads: ``all_reduce`` reduces over all of them."""

    ReduceOp = types.SimpleNamespace(MAX="max", MIN="min", SUM="sum")

    def __init__(self, n_ranks: int) -> None:
        self.barrier = threading.Barrier(n_ranks)
        self.slots: list[torch.Tensor | None] = [None] * n_ranks
        self.local = threading.local()

    def is_initialized(self) -> bool:
        return True

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", group: object = None) -> None:
        self.slots[self.local.rank] = tensor.clone()
        self.barrier.wait()
        stacked = torch.stack([slot for slot in self.slots if slot is not None])
        reduced = {"max": stacked.max(0).values, "min": stacked.min(0).values, "sum": stacked.sum(0)}[op]
        self.barrier.wait()  # everyone has read the slots before anyone writes the next call's
        tensor.copy_(reduced)


def verl_micro_batches(module: types.ModuleType, rank_lengths: list[list[int]], budget: int) -> list[list[list[int]]] | str:
    """verl's ``rearrange_micro_batches`` (of ``module``, its ``seqlen_balancing``) on every rank at once,
    as threads; a refusal (ValueError, AssertionError) comes back as text."""
    group = ThreadGroup(len(rank_lengths))
    results: list[object] = [None] * len(rank_lengths)

    def run(rank: int) -> None:
        group.local.rank = rank
        lengths = rank_lengths[rank]
        width = max(lengths)
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        batch = {"input_ids": torch.zeros_like(mask), "attention_mask": mask}
        try:
            _, indices = module.rearrange_micro_batches(batch, max_token_len=budget, dp_group="dp")
            results[rank] = [list(map(int, rows)) for rows in indices]
        except (ValueError, AssertionError) as exc:
            results[rank] = f"refused: {exc}"
            group.barrier.abort()  # the other ranks would hang in their next all-reduce
        except threading.BrokenBarrierError:
            results[rank] = None

    saved = module.dist
    module.dist = group
    try:
        threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(rank_lengths))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        module.dist = saved
    refused = [result for result in results if isinstance(result, str)]
    return refused[0] if refused else results  # type: ignore[return-value]


class IndexBatch:
    """What ``make_iterator`` needs of a TensorDict: its batch size (the rows are indices)."""

    def __init__(self, n_rows: int) -> None:
        self.batch_size = [n_rows]
        self.shape = [n_rows]


def load_skyrl() -> types.SimpleNamespace:
    """SkyRL 0.4.0's ``ppo_utils`` (``apply_loss_reduction_to_advantages_minibatch``) and
    ``preprocess`` (the mini-batch and prompt boundaries)."""
    import logging

    root = unpacked_wheel("skyrl") / "skyrl"
    subscript = type("Subscript", (), {"__getitem__": lambda self, item: Any})()
    with _isolated_modules():
        _third_party("jaxtyping", Float=subscript, Bool=subscript, Integer=subscript, Int=subscript)
        _third_party("loguru", logger=logging.getLogger("skyrl"))
        _module(
            "ray",
            remote=lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f),
            is_initialized=lambda: False,
            get=lambda x: x,
            put=lambda x: x,
            ObjectRef=_Placeholder,
        )
        _third_party("omegaconf", DictConfig=_Placeholder, OmegaConf=_Placeholder)
        for name, folder in [
            ("skyrl", ""),
            ("skyrl.backends", "backends"),
            ("skyrl.backends.skyrl_train", "backends/skyrl_train"),
            ("skyrl.backends.skyrl_train.utils", "backends/skyrl_train/utils"),
            ("skyrl.backends.skyrl_train.distributed", "backends/skyrl_train/distributed"),
            ("skyrl.train", "train"),
            ("skyrl.train.dataset", "train/dataset"),
        ]:
            _module(name, root / folder)
        _module("skyrl.train.config", AlgorithmConfig=_Placeholder)
        ppo_utils = _run_file("skyrl.backends.skyrl_train.utils.ppo_utils", root / "backends/skyrl_train/utils/ppo_utils.py")
        preprocess = _run_file("skyrl.train.dataset.preprocess", root / "train/dataset/preprocess.py")
    return types.SimpleNamespace(ppo_utils=ppo_utils, preprocess=preprocess)


@contextmanager
def skyrl_training_batch() -> Iterator[types.ModuleType]:
    """SkyRL 0.4.0's own ``training_batch`` (``TrainingInputBatch``, what ``trainer.dump_data_batch``
    pickles), importable under its real name within the block: dumps made in it are SkyRL's own."""
    root = unpacked_wheel("skyrl") / "skyrl"
    subscript = type("Subscript", (), {"__getitem__": lambda self, item: Any})()
    with _isolated_modules():
        _third_party("jaxtyping", Float=subscript, Bool=subscript, Integer=subscript, Int=subscript)
        for name, folder in [
            ("skyrl", ""),
            ("skyrl.backends", "backends"),
            ("skyrl.backends.skyrl_train", "backends/skyrl_train"),
            ("skyrl.backends.skyrl_train.utils", "backends/skyrl_train/utils"),
        ]:
            _module(name, root / folder)
        # the two helpers training_batch imports for MoE replay and sampler support (not pickled)
        _module("skyrl.backends.skyrl_train.utils.replay_utils", replay_padding_row=lambda *a, **k: None)
        _module(
            "skyrl.backends.skyrl_train.utils.sample_support",
            SAMPLE_SUPPORT_FIELD="rollout_sample_support",
            SAMPLE_SUPPORT_PADDING=-1,
        )
        _run_file("skyrl.backends.skyrl_train.utils.packed_tensor", root / "backends/skyrl_train/utils/packed_tensor.py")
        yield _run_file("skyrl.backends.skyrl_train.training_batch", root / "backends/skyrl_train/training_batch.py")


def load_openrlhf() -> types.SimpleNamespace:
    """OpenRLHF 0.11.2's ``aggregate_loss`` (``models/loss.py``) and its per-optimizer-step
    normalisers (``utils/loss_utils.py``)."""
    root = unpacked_wheel("openrlhf") / "openrlhf-0.11.2.data" / "purelib" / "openrlhf"
    with _isolated_modules():
        _third_party("deepspeed")
        _module("openrlhf", root)
        _module("openrlhf.models", root / "models")
        _module("openrlhf.utils", root / "utils")
        _run_file("openrlhf.models.utils", root / "models" / "utils.py")
        loss = _run_file("openrlhf.models.loss", root / "models" / "loss.py")
        loss_utils = _run_file("openrlhf.utils.loss_utils", root / "utils" / "loss_utils.py")
    return types.SimpleNamespace(loss=loss, loss_utils=loss_utils)
