"""The set of figures of a breakdown, each built when first asked for, and their encoding (no matplotlib
until a figure is built: ``aggscope.present.figures`` builds and draws them).

``make_figures`` gives the figures named in ``outputs.FIGURE_NAMES`` that apply to a breakdown;
``encode_figures`` encodes them on all cores (``forked_map``), or in a standby process that imported
matplotlib while the steps were read (``drawing_standby``); ``save_figures`` writes them whole or
not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aggscope.analysis.breakdown import Breakdown
from aggscope.errors import AggscopeError
from aggscope.io.writing import atomic_directory
from aggscope.present.forked import Standby, forked_map
from aggscope.present.outputs import FIGURE_NAMES, check_figure_names, check_image_format, earlier_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# About how long each figure takes to build and encode, relative to the others (measured at 1e7 tokens
# and at 200 steps; ``steps`` has three panels of a point per step): the order ``encode_figures`` takes them in.
DRAWING_COST = {
    "steps": 3.0,
    "weight_distribution": 1.4,
    "mass_vs_length": 1.0,
    "prompt_concentration": 1.0,
    "split_map": 0.8,
    "zero_grad_causes": 0.8,
}


def make_figures(breakdown: Breakdown, names: Sequence[str] | None = None) -> Figures:
    """The named figures (default: all of ``FIGURE_NAMES``), in that order, each built on first use.

    ``steps`` shows trends over steps, so it is left out of the default for a one-step input
    (and asking for it by name there is an error, raised here).
    """
    check_figure_names(names)
    several_steps = len(breakdown.steps) > 1
    if names and "steps" in names and not several_steps:
        raise AggscopeError("figure 'steps' shows per-step trends; this input has a single step")
    wanted = list(names) if names else [name for name in FIGURE_NAMES if several_steps or name != "steps"]
    return Figures(breakdown, [name for name in FIGURE_NAMES if name in wanted])


class Figures(Mapping[str, "Figure"]):
    """Figure name -> matplotlib figure, each built the first time it is asked for (then kept).

    Building a figure costs about as much as drawing it, so a figure is built where it is encoded:
    ``encode_figures`` asks for each in the forked process that encodes it, and the figures this
    process never asks for are never built here (nor is matplotlib imported before the first).
    """

    def __init__(self, breakdown: Breakdown, names: Sequence[str]) -> None:
        self._breakdown = breakdown
        self._names = list(names)
        self._built: dict[str, Figure] = {}

    @property
    def breakdown(self) -> Breakdown:
        return self._breakdown

    def __getitem__(self, name: str) -> Figure:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._built:
            from aggscope.present.figures import build_figure

            self._built[name] = build_figure(name, self._breakdown)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def encode_figures(
    figures: Mapping[str, Figure],
    image_format: str = "png",
    meanwhile: Callable[[], object] | None = None,
    standby: Standby | None = None,
) -> dict[str, bytes]:
    """Every figure's ``figure_bytes``, encoded on all cores at once (``forked_map``; the same bytes).

    ``meanwhile``: other work for this process, done while the forked ones take the first figures;
    ``standby``: a process forked earlier that has imported matplotlib meanwhile (``drawing_standby``),
    which then draws them all (on all cores) while this one does ``meanwhile``. Where it cannot, they
    are drawn here, the same bytes.
    """
    if standby is not None and isinstance(figures, Figures):
        images = standby.call(_encode_in_standby, (figures.breakdown, list(figures), image_format), meanwhile)
        if images is not None:
            return images
        meanwhile = None  # done already
    from aggscope.present.figures import figure_bytes

    check_image_format(image_format)
    # The costliest figures are taken first, so that none is left to start last on its own.
    names = sorted(figures, key=lambda name: -DRAWING_COST.get(name, 1.0))
    encoded = forked_map(lambda name: figure_bytes(figures[name], image_format), names, meanwhile=meanwhile)
    done = dict(zip(names, encoded, strict=True))
    return {name: done[name] for name in figures}


def save_figures(figures: Mapping[str, Figure], out_dir: str | os.PathLike[str], image_format: str = "png") -> dict[str, Path]:
    """Write each figure to ``out_dir/<name>.<format>``; name -> path. The folder is replaced whole
    by the new set (``atomic_directory``): a kill never leaves figures of two runs in it."""
    images = encode_figures(figures, image_format)
    with atomic_directory(out_dir, earlier_output) as directory:
        for name, data in images.items():
            (directory / f"{name}.{image_format}").write_bytes(data)
    return {name: Path(out_dir) / f"{name}.{image_format}" for name in images}


def drawing_standby() -> Standby:
    """A process forked now that imports the figures' modules (matplotlib: most of a second) while
    this one reads the input, and then draws them (``encode_figures(..., standby=)``); close it when done."""
    return Standby(_import_figures)


def _import_figures() -> None:
    import aggscope.present.figures  # noqa: F401


def _encode_in_standby(job: tuple[Breakdown, list[str], str]) -> dict[str, bytes]:
    """In the standby: the figures of a breakdown sent to it, encoded as ``encode_figures`` does here."""
    breakdown, names, image_format = job
    return encode_figures(Figures(breakdown, names), image_format)
