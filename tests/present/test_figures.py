"""Figures: real image files of sensible size, one per figure name, drawn headless; one colour per mode."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import TICKDOWN
from matplotlib.text import Text
from PIL import Image
from typer.testing import CliRunner

from aggscope.analysis.breakdown import run_breakdown
from aggscope.analysis.specs import parse_spec
from aggscope.cli import app
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import MODES
from aggscope.io.open import load_steps
from aggscope.present import figures as figures_module
from aggscope.present.figure_set import make_figures, save_figures
from aggscope.present.figures import (
    _STYLE,
    FIGURES,
    MODE_COLOURS,
    figure_bytes,
    mode_colour,
    spec_styles,
)

runner = CliRunner()
FIGURE_NAMES = ["weight_distribution", "mass_vs_length", "prompt_concentration", "split_map", "zero_grad_causes", "steps"]


def test_the_figure_list_is_the_issues() -> None:
    assert list(FIGURES) == FIGURE_NAMES


def test_every_mode_has_its_own_colour() -> None:
    assert set(MODE_COLOURS) == set(MODES)
    assert len(set(MODE_COLOURS.values())) == len(MODE_COLOURS)
    assert all(mode_colour(name) == MODE_COLOURS[name] for name in MODES)
    # SPECs sharing a mode: the first has its colour, the next ones shades of it, and other line styles.
    layout = Layout()
    names = ("prompt_mean", "prompt_mean,dp-size=2", "prompt_mean,dp-size=4", "token_mean")
    first, second, third, other = spec_styles([parse_spec(name, layout) for name in names]).values()
    assert first.colour == MODE_COLOURS["prompt_mean"] and other.colour == MODE_COLOURS["token_mean"]
    assert len({first.colour, second.colour, third.colour, other.colour}) == 4
    assert len({first.line, second.line, third.line}) == 3


def test_plot_writes_one_png_per_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures"
    result = runner.invoke(
        app,
        [
            "plot",
            "--mini-batch-size",
            "100",
            "--micro-batch-size",
            "8",
            "--dp-size",
            "2",
            "--max-seq-len",
            "1024",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in FIGURE_NAMES)
    for name in FIGURE_NAMES:
        path = out / f"{name}.png"
        assert f"{name}" in result.stdout and str(path) in result.stdout
        assert 20_000 < path.stat().st_size < 2_000_000, name
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG"
            width, height = image.size
            assert width >= 1000 and 300 <= height <= 2000, (name, image.size)
            # Not a blank canvas: a drawn figure has many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, name


@pytest.mark.parametrize(("image_format", "magic"), [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_svg_and_pdf(tmp_path: Path, image_format: str, magic: bytes) -> None:
    steps = load_steps()[:2]
    breakdown = run_breakdown(steps, [parse_spec(name, Layout()) for name in ("token_mean", "sequence_mean")])
    paths = save_figures(make_figures(breakdown), tmp_path, image_format)
    assert list(paths) == FIGURE_NAMES
    for path in paths.values():
        data = path.read_bytes()
        assert path.suffix == f".{image_format}" and data.startswith(magic)
        assert 5_000 < len(data) < 3_000_000


def test_plotting_is_headless(tmp_path: Path) -> None:
    """No display and no pyplot: the figures are drawn by the Agg canvas alone."""
    env = {key: value for key, value in os.environ.items() if key not in {"DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND"}}
    script = (
        "import sys; from aggscope.cli import main; sys.argv = ['aggscope', 'plot', '-o', sys.argv[1], '--figure', "
        "'split_map']\ntry:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "split_map.png").stat().st_size > 10_000


def test_figures_without_uids(tmp_path: Path) -> None:
    """No uid column: concentration is over responses, the split map has no prompt lane; all figures draw."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=24)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    per_row = rng.choice([-1.0, 0.0, 1.0], size=24)
    batches = [
        StepBatch.from_flat(np.repeat(per_row, lengths), np.ones(int(offsets[-1]), dtype=bool), offsets, step=step)
        for step in range(2)
    ]
    breakdown = run_breakdown(
        batches, [parse_spec("token_mean", Layout(mini_batch_size=10)), parse_spec("sequence_mean", Layout())]
    )
    paths = save_figures(make_figures(breakdown), tmp_path)
    assert list(paths) == FIGURE_NAMES


def test_plot_on_a_file_without_uids_by_the_cli(tmp_path: Path) -> None:
    table = pa.table({"advantages": [[1.0, 1.0], [-1.0, -1.0, -1.0], [0.5]], "loss_mask": [[1, 1], [1, 1, 0], [1]]})
    pq.write_table(table, tmp_path / "plain.parquet")
    result = runner.invoke(
        app, ["plot", str(tmp_path / "plain.parquet"), "-o", str(tmp_path / "out"), "--figure", "prompt_concentration"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "prompt_concentration.png").is_file()


def test_one_step_has_no_steps_figure(tmp_path: Path) -> None:
    table = pa.table(
        {"uid": ["a", "a", "b"], "advantages": [[1.0, 1.0], [-1.0, -1.0, -1.0], [0.5]], "loss_mask": [[1, 1], [1, 1, 0], [1]]}
    )
    pq.write_table(table, tmp_path / "one.parquet")
    result = runner.invoke(app, ["plot", str(tmp_path / "one.parquet"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == sorted(n for n in FIGURE_NAMES if n != "steps")
    asked = runner.invoke(app, ["plot", str(tmp_path / "one.parquet"), "-o", str(tmp_path / "out2"), "--figure", "steps"])
    assert asked.exit_code == 2
    assert "figure 'steps' shows per-step trends; this input has a single step" in asked.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-format", "jpg"], "unknown image format 'jpg' (did you mean 'png'?); formats: png, svg, pdf"),
        (["--figure", "heatmap"], "unknown figure 'heatmap'; figures: weight_distribution, mass_vs_length"),
        (["-m", "token_mena"], "unknown mode 'token_mena'"),
        (["-m", "dr_grpo"], "needs the horizon: give --max-seq-len H"),
        (["--dp-size", "0"], "--dp-size must be a whole number of at least 1"),
    ],
)
def test_plot_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["plot", "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aggscope: error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_plot_needs_an_output_directory_that_is_not_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    result = runner.invoke(app, ["plot", "-o", str(blocker), "--figure", "steps"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"aggscope: error: {blocker}: exists and is not a directory; give a directory for the output"


def test_figures_when_every_token_gets_a_gradient(tmp_path: Path) -> None:
    """No zero-gradient cause at all: the causes figure still labels every mode and says so."""
    lengths = np.array([3, 5, 2, 4])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    advantages = np.repeat(np.array([1.0, -1.0, 0.5, -0.5]), lengths)
    batch = StepBatch.from_flat(
        advantages, np.ones(int(offsets[-1]), dtype=bool), offsets, uids=["a", "a", "b", "b"], rewards=[1.0, 0.0, 1.0, 0.0]
    )
    breakdown = run_breakdown([batch], [parse_spec("token_mean", Layout()), parse_spec("prompt_mean", Layout())])
    assert all(sum(causes.values()) == 0 for causes in breakdown.zero_grad_causes().values())
    figure = make_figures(breakdown, ["zero_grad_causes"])["zero_grad_causes"]
    axis = figure.axes[0]
    assert [tick.get_text() for tick in axis.get_yticklabels()] == ["prompt_mean", "token_mean"]
    assert "every loss token gets a gradient" in axis.get_title()
    assert save_figures({"zero_grad_causes": figure}, tmp_path)["zero_grad_causes"].stat().st_size > 5_000


def test_figure_names_known_before_matplotlib_match_the_builders() -> None:
    from aggscope.present.outputs import FIGURE_NAMES

    assert tuple(FIGURES) == FIGURE_NAMES


LONG_LAYOUT = ",mini-batch-size=64,micro-batch-size=4,dp-size=2,order=shuffle,seed=3"


def _drawn_texts(figure: Figure) -> list[Text]:
    """The figure's visible texts, less the tick labels matplotlib keeps outside the axes' view (not drawn)."""
    texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()]
    hidden = set()
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - 1e-9 * abs(low) <= tick.get_loc() <= high + 1e-9 * abs(high):
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [t for t in texts if id(t) not in hidden]


@pytest.mark.parametrize("long_labels", [False, True])
def test_no_text_runs_off_a_figure(long_labels: bool) -> None:
    """Every title, label, tick label and legend entry lies inside its figure, at any SPEC label length."""
    layout = LONG_LAYOUT if long_labels else ""
    names = (
        "token_mean",
        f"prompt_mean{layout}",
        f"seq_mean_token_sum_norm,max-seq-len=1024{layout}",
        "prompt_mean,dp-size=2",
        f"sequence_mean{layout}",
    )
    breakdown = run_breakdown(load_steps()[:3], [parse_spec(name, Layout()) for name in names])
    for name, figure in make_figures(breakdown).items():
        canvas = FigureCanvasAgg(figure)
        with matplotlib.rc_context(_STYLE), warnings.catch_warnings():
            warnings.simplefilter("error")  # "constrained_layout not applied": labels too large for the figure
            canvas.draw()
        renderer = canvas.get_renderer()
        box = figure.bbox
        for text in _drawn_texts(figure):
            extent = text.get_window_extent(renderer)
            inside = extent.x0 >= box.x0 - 1 and extent.y0 >= box.y0 - 1 and extent.x1 <= box.x1 + 1 and extent.y1 <= box.y1 + 1
            assert inside, f"{name}: {text.get_text()!r} at {extent.bounds} runs off the figure {box.bounds}"


def _texts(figure: Figure) -> str:
    return " ".join(t.get_text() for t in figure.findobj(Text))


def test_a_figure_with_nothing_to_draw_says_so() -> None:
    """All advantages 0: no gradient anywhere; no loss tokens at all: nothing by length either."""
    offsets = np.array([0, 4, 10, 12])
    uids = ["g0", "g0", "g1"]
    no_gradient = StepBatch.from_flat(np.zeros(12, dtype=np.float32), np.ones(12, dtype=bool), offsets, uids=uids)
    figures = make_figures(run_breakdown([no_gradient], [parse_spec("token_mean", Layout())]))
    for name in ("weight_distribution", "prompt_concentration"):
        assert "Nothing to draw: no" in _texts(figures[name]), name
        assert not figures[name].axes[0].lines, name
    assert "Nothing to draw" not in _texts(figures["mass_vs_length"])
    no_loss = StepBatch.from_flat(np.ones(12, dtype=np.float32), np.zeros(12, dtype=bool), offsets, uids=uids)
    figures = make_figures(run_breakdown([no_loss], [parse_spec("token_mean", Layout())]))
    assert "Nothing to draw: the input has no loss tokens" in _texts(figures["mass_vs_length"])
    assert "Nothing to draw" in _texts(figures["weight_distribution"])


def _pixels(figure: Figure) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(figure_bytes(figure))).convert("RGBA"))


@pytest.mark.parametrize("narrow", [False, True])
def test_minor_ticks_drawn_as_one_line_look_as_matplotlibs(monkeypatch: pytest.MonkeyPatch, narrow: bool) -> None:
    """The log axis's minor ticks drawn as one line of marks: the same pixels as matplotlib's ticks.

    ``narrow``: every token has the same weight, so the axis spans under a decade and its minor ticks
    carry labels; those stay matplotlib's.
    """
    if narrow:
        offsets = np.array([0, 4, 8])
        batch = StepBatch.from_flat(np.ones(8, dtype=np.float32), np.ones(8, dtype=bool), offsets, uids=["a", "b"])
        breakdown = run_breakdown([batch], [parse_spec("token_mean", Layout())])
    else:
        specs = [parse_spec(name, Layout()) for name in ("token_mean", "sequence_mean", "prompt_mean")]
        breakdown = run_breakdown(load_steps()[:2], specs)
    fast = make_figures(breakdown, ["weight_distribution"])["weight_distribution"]
    one_line = [
        line for ax in fast.axes for line in ax.get_children() if isinstance(line, Line2D) and line.get_marker() == TICKDOWN
    ]
    assert len(one_line) == (0 if narrow else 2)  # one line of marks on each panel
    monkeypatch.setattr(figures_module, "_minor_ticks_as_one_line", lambda axes: None)
    plain = make_figures(breakdown, ["weight_distribution"])["weight_distribution"]
    assert np.array_equal(_pixels(fast), _pixels(plain))
