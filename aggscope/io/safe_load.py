"""Loading pickled dumps (SkyRL ``.pkl``, slime ``.pt``) without running code from them.

A pickle names the Python callables that unpickling calls; a crafted file names ``os.system``.
So every global a file names is looked up in an allow-list first, and a file naming anything
else is refused, before anything of it runs, with one line naming the file and the global:

- SkyRL (``load_skyrl_pickle``): exactly the globals a real SkyRL 0.4.0 dump holds (its
  ``TrainingInputBatch``, ``_rebuild_tensor_batch`` and ``TensorFormat`` by name, ``torch.device``,
  numpy's array and scalar rebuilders) and those of a skyrl-train 0.3 dump (its
  ``TrainingInputBatch``, torch's tensor rebuild, ``collections.OrderedDict``). SkyRL's names map
  to the stand-ins below, which decode the batch as data: SkyRL need not be installed, and when
  it is, none of its code runs. Tensors that SkyRL stored with ``torch.save`` are loaded with
  ``torch.load(weights_only=True)``.
- slime (``load_torch_file``): ``torch.load(weights_only=True)``, torch's own restricted
  unpickler, with numpy's array and scalar types added (reward functions return numpy floats).
  A refusal is never retried with full unpickling.
- ``trust=True`` (``--trust-pickle``) unpickles fully, running whatever the file names: for a
  file you trust, named explicitly (``aggscope.io.open`` refuses it for folders and globs).
"""

from __future__ import annotations

import builtins
import collections
import enum
import functools
import io
import pickle
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from aggscope.errors import AggscopeError

TRUST_HINT = "aggscope runs no code from its inputs; if you trust this file, --trust-pickle loads it fully"


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# ---- SkyRL ------------------------------------------------------------------------------------------
class TensorFormat(str, enum.Enum):
    """SkyRL 0.4.0's ``TensorFormat``: how one batch field is encoded in the pickle."""

    NUMPY = "numpy"
    NUMPY_VIEW = "numpy_view"
    TORCH = "torch"
    TENSOR_LIST = "tensor_list"
    PACKED_TENSOR = "packed_tensor"


class SkyrlBatch(dict[str, Any]):
    """A SkyRL ``TrainingInputBatch`` as data: its fields by key and its ``metadata`` dict.

    Fields are decoded when read (``get``), so fields that aggscope does not use are never
    materialised.
    """

    metadata: dict[str, Any] | None = None
    source: str = "a SkyRL pickle"

    def __setstate__(self, state: Any) -> None:
        # skyrl-train 0.3: a dict subclass with ``__getstate__``; its fields are ``torch.save`` bytes.
        # SkyRL 0.4.0 reaches here through ``_rebuild_tensor_batch``; its fields are dicts.
        if not isinstance(state, dict) or not isinstance(state.get("batch_dict"), dict):
            raise pickle.UnpicklingError("the batch's state has no batch_dict")
        for key, value in state["batch_dict"].items():
            dict.__setitem__(self, key, value)
        metadata = state.get("metadata")
        self.metadata = metadata if isinstance(metadata, dict) else None

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        try:
            return _decode_field(dict.__getitem__(self, key))
        except AggscopeError as exc:
            raise AggscopeError(f"{self.source}: field {key!r}: {exc.message}") from None


def _rebuild_tensor_batch(cls: Any, state: Any) -> SkyrlBatch:
    """SkyRL 0.4.0's ``_rebuild_tensor_batch``, for the stand-in class only."""
    if cls is not SkyrlBatch:
        raise pickle.UnpicklingError("_rebuild_tensor_batch of a class other than TrainingInputBatch")
    batch = SkyrlBatch()
    batch.__setstate__(state)
    return batch


def _decode_field(value: Any) -> Any:
    """A SkyRL field as a tensor (``TENSOR_LIST``: a list of tensors; ``PACKED_TENSOR``: its values)."""
    import torch  # only a SkyRL dump needs it: the summary path must not pay its import

    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bytes, bytearray)):  # skyrl-train 0.3: torch.save bytes
        return _torch_bytes(bytes(value))
    if not isinstance(value, dict):
        raise AggscopeError(f"a batch field holds a {type(value).__name__}, not an encoded tensor")
    kind = value.get("format")
    if kind == TensorFormat.TENSOR_LIST:
        return [_decode_field(item) for item in value.get("items") or []]
    if kind == TensorFormat.PACKED_TENSOR:
        return _decode_field(value.get("values"))
    data = value.get("data")
    if kind == TensorFormat.TORCH:
        return _torch_bytes(data)
    if kind == TensorFormat.NUMPY_VIEW:
        if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
            raise AggscopeError("a numpy_view field does not hold a numeric array")
        return torch.from_numpy(np.array(data))
    # NUMPY, and the legacy encoding without a "format" key
    dtype, shape = value.get("dtype"), value.get("shape")
    if not isinstance(data, (bytes, bytearray)) or not isinstance(dtype, str) or not isinstance(shape, (tuple, list)):
        raise AggscopeError("a numpy field lacks its bytes, dtype or shape")
    try:
        numpy_dtype = np.dtype(dtype)
        if numpy_dtype.kind not in "biuf":
            raise TypeError(f"dtype {dtype}")
        array = np.frombuffer(data, dtype=numpy_dtype).reshape(tuple(int(n) for n in shape))
    except (TypeError, ValueError) as exc:
        raise AggscopeError(f"a numpy field does not decode ({_first_line(exc)})") from None
    return torch.from_numpy(array.copy())


def _torch_bytes(data: Any) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise AggscopeError("a torch field does not hold torch.save bytes")
    import torch

    try:
        with warnings.catch_warnings():  # as in ``_torch_load``
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = _refused_name(exc)
        if name is None:
            raise AggscopeError(f"a field's torch.save bytes do not load ({_first_line(exc)})") from None
        raise AggscopeError(f"a field's torch.save bytes name a global that is not allowed ({name})") from None


def _storage_from_bytes(data: Any) -> Any:
    """``torch.storage._load_from_bytes`` (which unpickles fully), with ``weights_only=True``."""
    return _torch_bytes(data)


def _numpy_globals() -> dict[str, Any]:
    """numpy's array and scalar rebuilders under the names numpy 1 and numpy 2 pickle them by."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    found: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for package in ("numpy.core", "numpy._core"):
        found[f"{package}.multiarray._reconstruct"] = core.multiarray._reconstruct
        found[f"{package}.multiarray.scalar"] = core.multiarray.scalar
        found[f"{package}.numeric._frombuffer"] = core.numeric._frombuffer
    return found


_SKYRL_MODULES = ("skyrl.backends.skyrl_train.training_batch", "skyrl_train.training_batch")


@functools.cache
def skyrl_globals() -> dict[str, Any]:
    """The globals a SkyRL training batch pickle may name (pickled name -> object to use).

    Built on first use, because naming torch's objects imports torch (seconds), which only a
    SkyRL or slime dump needs.
    """
    import torch

    return {
        **{f"{module}.TrainingInputBatch": SkyrlBatch for module in _SKYRL_MODULES},
        "skyrl.backends.skyrl_train.training_batch._rebuild_tensor_batch": _rebuild_tensor_batch,
        "skyrl.backends.skyrl_train.training_batch.TensorFormat": TensorFormat,
        "torch.device": torch.device,
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch.storage._load_from_bytes": _storage_from_bytes,
        "collections.OrderedDict": collections.OrderedDict,
        **_numpy_globals(),
        # containers and numbers that pickle by name in protocols below 5 (never getattr, eval, exec, ...)
        **{
            f"builtins.{name}": getattr(builtins, name) for name in ("bytearray", "set", "frozenset", "complex", "slice", "range")
        },
    }


def __getattr__(name: str) -> Any:
    """``SKYRL_GLOBALS``, the allow-list of ``skyrl_globals()``, built when first asked for."""
    if name == "SKYRL_GLOBALS":
        return skyrl_globals()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle: Any, allowed: dict[str, Any]) -> None:
        super().__init__(handle)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get(f"{module}.{name}")
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("a persistent id")


def restricted_load(handle: Any, allowed: dict[str, Any]) -> Any:
    """``pickle.load`` that resolves only the globals of ``allowed`` (name -> object to use)."""
    return _RestrictedUnpickler(handle, allowed).load()


def load_skyrl_pickle(file: str, *, trust: bool = False) -> SkyrlBatch | Any:
    """A SkyRL training batch pickle, unpickled with only SkyRL's own globals, or one line why not."""
    try:
        with open(file, "rb") as handle:
            batch = pickle.load(handle) if trust else restricted_load(handle, skyrl_globals())
    except RefusedGlobal as exc:
        raise AggscopeError(
            f"{file}: refused to unpickle: it names the global {exc.name}, which a SkyRL training batch does not hold "
            f"({TRUST_HINT})"
        ) from None
    except RecursionError:
        raise AggscopeError(f"{file}: not a readable SkyRL training batch pickle (nested too deeply)") from None
    except ModuleNotFoundError as exc:  # only with trust: the safe loader needs no module
        raise AggscopeError(
            f"{file}: --trust-pickle unpickles with the classes the file names, and module {exc.name!r} is not installed; "
            "without --trust-pickle aggscope reads SkyRL batches without SkyRL"
        ) from None
    except OSError:
        raise
    except Exception as exc:
        raise AggscopeError(f"{file}: not a readable SkyRL training batch pickle ({_first_line(exc)})") from None
    if not trust and not isinstance(batch, SkyrlBatch):
        raise AggscopeError(f"{file}: holds a {type(batch).__name__}, not a SkyRL TrainingInputBatch")
    if isinstance(batch, SkyrlBatch):
        batch.source = file
    return batch


# ---- torch.load -------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list[Any]:
    """numpy's types for torch's allow-list, as ``(object, pickled name)`` pairs where they differ."""
    pairs: list[Any] = []
    for name, value in _numpy_globals().items():
        qualified = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
        pairs.append(value if qualified == name else (value, name))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles a dtype by its class, e.g. numpy.dtypes.Float64DType
        pairs += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n[0] != "_" and "Object" not in n]
    return pairs


def load_torch_file(file: str, *, trust: bool = False, what: str = "a slime .pt dump") -> Any:
    """``torch.load`` with ``weights_only=True`` (and numpy's types), or one line naming the refused global."""
    import torch

    if trust:
        return _torch_load(file, what, lambda: torch.load(file, map_location="cpu", weights_only=False))
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return _torch_load(file, what, lambda: torch.load(file, map_location="cpu", weights_only=True))


def _torch_load(file: str, what: str, load: Callable[[], Any]) -> Any:
    try:
        with warnings.catch_warnings():  # torch's remarks on a file (its pickle protocol) are not the user's to read
            warnings.simplefilter("ignore")
            return load()
    except pickle.UnpicklingError as exc:
        name = _refused_name(exc, file)
        if name is None:  # not a refusal: bytes that are no pickle torch can read
            reason = _WEIGHTS_ONLY_DETAIL.search(str(exc))
            detail = reason.group(1).strip() if reason else _first_line(exc)
            raise AggscopeError(f"{file}: cannot load with torch.load ({detail}); not {what}?") from None
        raise AggscopeError(
            f"{file}: refused to load: it names the global {name}, which {what} does not hold ({TRUST_HINT})"
        ) from None
    except RecursionError:
        raise AggscopeError(f"{file}: cannot load with torch.load (nested too deeply); not {what}?") from None
    except MemoryError:
        raise AggscopeError(f"{file}: too large to load into this machine's memory") from None
    except Exception as exc:  # damaged bytes make torch's loaders fail in any way (an IndexError on a flipped bit)
        if isinstance(exc, OSError) and exc.filename:
            raise
        raise AggscopeError(f"{file}: cannot load with torch.load ({_first_line(exc)}); not {what}?") from None


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_ONLY_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", re.S)


def _refused_name(exc: BaseException, file: str | None = None) -> str | None:
    """The global torch's weights-only unpickler refused (from the file where it can tell, else its
    message), or None when it refused no global (the bytes are not a pickle it can read)."""
    if file is not None:
        import torch

        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(file)
            if unsafe:
                return ", ".join(unsafe[:3]) + (f" (and {len(unsafe) - 3} more)" if len(unsafe) > 3 else "")
        except Exception:  # a legacy (non-zip) file: the message names it
            pass
    match = _GLOBAL_IN_MESSAGE.search(str(exc))
    return match.group(1) if match else None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
