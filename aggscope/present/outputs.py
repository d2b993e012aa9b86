"""What ``report``, ``compare`` and ``plot`` write, checked before any work (no matplotlib here).

The command-line checks its output folder, image format and figure names before it opens the
input; importing matplotlib for that would cost a usage error a second, so these checks live
apart from the figures (``aggscope.present.figures`` builds the figures named here).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from aggscope.errors import AggscopeError, did_you_mean
from aggscope.io.writing import check_replaceable_directory

IMAGE_FORMATS = ("png", "svg", "pdf")
# The figures by file name, in the order they are drawn (``figures.FIGURES`` has one builder each).
FIGURE_NAMES = ("weight_distribution", "mass_vs_length", "prompt_concentration", "split_map", "zero_grad_causes", "steps")


def check_image_format(image_format: str) -> None:
    if image_format not in IMAGE_FORMATS:
        raise AggscopeError(
            f"unknown image format {image_format!r}{did_you_mean(image_format, IMAGE_FORMATS)}; "
            f"formats: {', '.join(IMAGE_FORMATS)} (--image-format)"
        )


def check_figure_names(names: Sequence[str] | None) -> None:
    unknown = [name for name in names or () if name not in FIGURE_NAMES]
    if unknown:
        raise AggscopeError(
            f"unknown figure {unknown[0]!r}{did_you_mean(unknown[0], FIGURE_NAMES)}; figures: {', '.join(FIGURE_NAMES)} (--figure)"
        )


def earlier_output(name: str) -> bool:
    """True for a file name that ``report``, ``compare`` or ``plot`` writes (what ``-o`` may hold already)."""
    stem, _, suffix = name.rpartition(".")
    return name in ("report.html", "report.md", "report.json") or (stem in FIGURE_NAMES and suffix in IMAGE_FORMATS)


def check_output_directory(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, when the output directory cannot take a whole set of outputs."""
    directory = Path(path)
    check_replaceable_directory(directory.resolve() if directory.is_symlink() else directory, earlier_output)
    return directory


def ensure_directory(path: str | os.PathLike[str]) -> Path:
    """The output directory, created with its parents if missing; a one-line error if it cannot be."""
    directory = check_output_directory(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AggscopeError(f"{directory}: cannot create the output directory ({exc.strerror or exc})") from None
    return directory
