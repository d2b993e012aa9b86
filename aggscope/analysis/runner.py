"""The one runner of every analysis, and where its per-step work runs: here, or as Ray tasks.

Every analysis does its heavy work step by step (``step -> small result``) and merges the small
results in step order: ``run(engine, rollouts, step_fn, merger, progress)`` is that loop, for
weights, checks and the breakdown alike. An engine maps the per-step function over the steps:

- ``local``: reads and processes the steps one after another in this process, holding one step.
- ``ray``: one Ray task per step. A task reads its step's Parquet row groups itself (the
  workers open the same paths or object-storage URIs), runs the function and sends back only its
  small result; the driver merges the results in step order, so every count and every float sum
  is the same as with the local engine.

Ray is an optional extra (``pip install 'aggscope[ray]'``), imported only when asked for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from aggscope.errors import AggscopeError, did_you_mean
from aggscope.io.reader import Rollouts

if TYPE_CHECKING:  # this module is imported before torch is needed
    from aggscope.core.batch import StepBatch

ENGINES = ("local", "ray")
RAY_MISSING = "--engine ray needs Ray, which is not installed: pip install 'aggscope[ray]'"

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


@runtime_checkable
class SteppedRollouts(Protocol):
    """What an engine needs from its input: the steps and a way to read them, whether token counts
    are estimates; every reader (``aggscope.io.reader.Rollouts``) and ``Batches`` have them."""

    @property
    def steps(self) -> list[int]: ...

    @property
    def lengths_estimated(self) -> bool: ...

    def iter_steps(self) -> Iterator[StepBatch]: ...


class Merger(Protocol[T_contra, R_co]):
    """Takes the steps' small results in step order and makes the analysis's result of them."""

    def add(self, part: T_contra) -> None: ...

    def result(self) -> R_co: ...


Progress = Callable[[Iterator[Any]], Iterable[Any]]
"""Wraps the steps' results as they come (a progress bar): yields every item it is given, in order."""


@dataclass(frozen=True)
class Batches(Generic[T]):
    """Steps already in memory (a list or any iterable of ``StepBatch``) as something an engine runs on."""

    batches: Iterable[StepBatch]
    lengths_estimated = False  # each batch says so itself

    @property
    def steps(self) -> list[int]:
        return [batch.step for batch in self.batches] if isinstance(self.batches, (list, tuple)) else []

    def iter_steps(self) -> Iterator[StepBatch]:
        return iter(self.batches)


def as_rollouts(source: SteppedRollouts | Iterable[StepBatch]) -> SteppedRollouts:
    """An opened input as it is; steps in memory (any iterable of ``StepBatch``) wrapped as one."""
    if isinstance(source, SteppedRollouts):
        return source
    return Batches(source)


def run(
    engine: Engine | None,
    rollouts: SteppedRollouts | Iterable[StepBatch],
    step_fn: Callable[[StepBatch], T],
    merger: Merger[T, R_co],
    progress: Progress | None = None,
    steps_fn: Callable[[list[StepBatch]], list[T]] | None = None,
) -> R_co:
    """Run ``step_fn`` on every step on ``engine`` (None: this process) and merge the results in step order.

    Args:
        engine: where the steps run (``open_engine``); None is the local engine.
        rollouts: the opened input (``aggscope.open_rollouts``), or steps in memory.
        step_fn: the per-step work; for Ray picklable and returning a small result, never the batch.
        merger: takes every step's result in step order (``add``) and gives the analysis's result.
        progress: optional wrapper of the results as they come (a progress bar).
        steps_fn: optionally, the same work on several consecutive steps at once (``[step_fn(b) for b
            in batches]``, the same results), which the local engine runs on runs of small steps.
    """
    results = (engine or Engine()).map_steps(as_rollouts(rollouts), step_fn, steps_fn)
    for part in progress(results) if progress is not None else results:
        merger.add(part)
    return merger.result()


@dataclass(frozen=True)
class Engine:
    """An engine: ``local``, or ``ray`` at ``address`` (None: a Ray already running or a new local one).

    Attributes:
        name: ``local`` or ``ray``.
        address: the Ray cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``), or None.
        max_in_flight: Ray tasks submitted ahead of the one being merged (None: twice the
            cluster's CPUs), which bounds the results waiting on the driver.
    """

    name: str = "local"
    address: str | None = None
    max_in_flight: int | None = None

    def map_steps(
        self,
        rollouts: SteppedRollouts,
        work: Callable[[StepBatch], T],
        work_on_steps: Callable[[list[StepBatch]], list[T]] | None = None,
    ) -> Iterator[T]:
        """``work(batch)`` for every step of ``rollouts``, yielded in step order.

        ``work`` must be picklable for Ray (a module-level function, or a ``functools.partial``
        of one) and should return a small result: never the batch itself. ``work_on_steps``: the
        same work on several steps at once, which the local engine runs on runs of consecutive
        small steps (``in_runs``).
        """
        if self.name == "local":
            if work_on_steps is not None:
                yield from in_runs(rollouts.iter_steps(), work, work_on_steps)
                return
            for batch in rollouts.iter_steps():
                result = work(batch)
                del batch  # let the step go before the next one is read
                yield result
            return
        yield from _ray_map(rollouts, work, self.address, self.max_in_flight)


# A run of steps worked on at once (``in_runs``) ends at this many steps or tokens: many small steps
# share the per-call costs of their work, and the steps held at once stay few and small.
RUN_STEPS = 64
RUN_TOKENS = 1 << 21


def in_runs(
    batches: Iterator[StepBatch], work: Callable[[StepBatch], T], work_on_steps: Callable[[list[StepBatch]], list[T]]
) -> Iterator[T]:
    """``work(batch)`` of every batch in order, computed by ``work_on_steps`` on runs of consecutive
    batches (at most ``RUN_STEPS`` steps, and ``RUN_TOKENS`` tokens unless one step holds more).

    Errors come as step by step: a run whose work fails is done again one step at a time, so its
    earlier steps' results come first and the error raised is the first failing step's; a step that
    cannot be read ends the run before it, whose results come first.
    """
    run: list[StepBatch] = []
    tokens = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception:
            yield from _work_on_run(run, work, work_on_steps)
            raise
        done = batch is None
        if batch is not None:
            run.append(batch)
            tokens += batch.n_tokens
        batch = None
        if run and (done or len(run) >= RUN_STEPS or tokens >= RUN_TOKENS):
            yield from _work_on_run(run, work, work_on_steps)
            run, tokens = [], 0  # let the steps go before the next ones are read
        if done:
            return


def _work_on_run(
    run: list[StepBatch], work: Callable[[StepBatch], T], work_on_steps: Callable[[list[StepBatch]], list[T]]
) -> Iterator[T]:
    if not run:
        return
    try:
        results = work_on_steps(run) if len(run) > 1 else [work(run[0])]
    except Exception:
        if len(run) == 1:
            raise
        results = None
    if results is None:  # again step by step: the first failing step's error, after the steps before it
        for batch in run:
            yield work(batch)
        return
    yield from results


def open_engine(name: str = "local", address: str | None = None) -> Engine:
    """Check an engine's name (and that Ray is installed for ``ray``) and return it."""
    if name not in ENGINES:
        raise AggscopeError(f"unknown engine {name!r}{did_you_mean(name, ENGINES)}; engines: {', '.join(ENGINES)} (--engine)")
    if name == "local":
        if address is not None:
            raise AggscopeError("--address is the Ray cluster's address: give it with --engine ray")
        return Engine()
    _import_ray()
    return Engine("ray", address)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise AggscopeError(RAY_MISSING) from None
    return ray


def _read_and_work(rollouts: Any, step: int, work: Callable[[StepBatch], T]) -> T:
    """The body of one Ray task: read the step where the task runs, process it."""
    return work(rollouts.read_step(step))


def _work_on(batch: StepBatch, work: Callable[[StepBatch], T]) -> T:
    """The body of one Ray task for a reader that cannot read one step by itself: the batch is sent."""
    return work(batch)


def _ray_map(
    rollouts: SteppedRollouts, work: Callable[[StepBatch], T], address: str | None, max_in_flight: int | None
) -> Iterator[T]:
    ray = _import_ray()
    if not ray.is_initialized():
        try:
            # Workers inherit this process's environment on a local Ray, so they import the same
            # aggscope (and see the same object-storage credentials).
            ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AggscopeError(f"cannot start or reach Ray at {address or 'a local Ray'}: {exc}") from None
    reads_itself = isinstance(rollouts, Rollouts)
    task = ray.remote(_read_and_work if reads_itself else _work_on)
    window = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque[Any] = deque()
    # A reader that cannot read one step by itself sends each batch to its task instead.
    sources = iter(rollouts.steps) if reads_itself else rollouts.iter_steps()
    shared = ray.put(rollouts) if reads_itself else None
    work_ref = ray.put(work)
    for source in sources:
        pending.append(task.remote(shared, source, work_ref) if reads_itself else task.remote(source, work_ref))
        if len(pending) >= window:
            yield _get(ray, pending.popleft())
    while pending:
        yield _get(ray, pending.popleft())


def _get(ray: Any, ref: Any) -> Any:
    """A task's result; an ``AggscopeError`` raised in the task is raised here as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, AggscopeError):
            raise AggscopeError(cause.message) from None
        raise
