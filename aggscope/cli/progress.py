"""The progress bar over steps, on stderr when it is a terminal (rich is imported only to draw it)."""

import itertools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional, TypeVar

if TYPE_CHECKING:
    from aggscope.io.reader import Rollouts

T = TypeVar("T")
PROGRESS_MIN_TOKENS = 1 << 23  # an input of one step gets a bar from this many tokens on


def with_progress(
    items: Iterable[T],
    total: int,
    description: str,
    tokens: Optional[Callable[[T], int]] = None,
    rollouts: "Optional[Rollouts]" = None,
) -> Iterator[T]:
    """Iterate ``items`` (one per step) with a progress bar on stderr when it is a terminal and there is work to show.

    ``tokens`` gives the token count of an item, to show the tokens done so far beside the steps.
    With ``rollouts`` whose Parquet metadata gives every step's token count, the bar moves with the
    tokens as they are decoded, so one big step shows progress too.
    """
    if not sys.stderr.isatty():
        yield from items
        return
    sizes = _step_sizes(rollouts)
    if sizes is not None and (total > 1 or sum(sizes) >= PROGRESS_MIN_TOKENS):
        yield from _token_progress(items, sizes, description)
        return
    if total <= 1:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from aggscope.cli.render import stderr_console

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if tokens is not None:
        columns.append(TextColumn("{task.fields[tokens]:,} tokens"))
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task(description, total=total, tokens=0)
        done = 0
        for item in items:
            yield item
            done += tokens(item) if tokens is not None else 0
            progress.update(task, advance=1, tokens=done)


def _step_sizes(rollouts: "Optional[Rollouts]") -> Optional[list[int]]:
    """Every step's token count from the metadata, or None where some step's is not known."""
    if rollouts is None:
        return None
    sizes = [rollouts.step_tokens(step) for step in rollouts.steps]
    return None if any(size is None for size in sizes) else [size for size in sizes if size is not None]


def _token_progress(items: Iterable[T], sizes: list[int], description: str) -> Iterator[T]:
    """A bar over tokens: it moves as this process decodes them, and jumps to each step's end when
    the step's result arrives (also when another process, a Ray worker, read it)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from aggscope.cli.render import stderr_console
    from aggscope.io.fastread import reading_progress

    ends = list(itertools.accumulate(sizes))
    columns: list[Any] = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[steps]}"),
        TextColumn("{task.fields[tokens]:,} tokens"),
        TimeElapsedColumn(),
    ]
    state = {"done": 0, "step": 0}
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task(description, total=max(ends[-1], 1), steps=f"0/{len(sizes)} steps", tokens=0)

        def read(tokens: int) -> None:
            state["done"] = min(state["done"] + tokens, ends[min(state["step"], len(ends) - 1)])
            progress.update(task, completed=state["done"], tokens=state["done"])

        iterator = iter(items)
        while True:
            # Listen only while the next step is produced, never across a yield: a consumer that
            # stops early leaves no listener behind.
            with reading_progress(read):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            state["done"] = ends[min(state["step"], len(ends) - 1)]
            state["step"] += 1
            progress.update(task, completed=state["done"], tokens=state["done"], steps=f"{state['step']}/{len(sizes)} steps")
            yield item
