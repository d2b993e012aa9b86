"""``aggscope sample``: generate realistic GRPO rollout steps (``--faults``: with injected faults)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from aggscope.cli.app import app


@app.command(
    epilog="Example: aggscope sample my_sample --steps 8 --prompts 64 --group-size 16 --seed 1; "
    "aggscope sample my_sample --faults (then run the aggscope check command it prints)"
)
def sample(
    out_dir: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Directory to write rollouts.parquet (or faulty.parquet) into (created if missing)."),
    ],
    steps: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="N", help="Training steps [default: 4; 3 with --faults].", show_default=False),
    ] = None,
    prompts: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="N", help="Prompts per step [default: 32; 8 with --faults].", show_default=False),
    ] = None,
    group_size: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="N", help="Responses per prompt [default: 8; 4 with --faults].", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, metavar="N", help="Random seed; the same seed gives the same file.")] = 0,
    max_len: Annotated[
        Optional[int],
        typer.Option(
            min=8,
            metavar="N",
            help="Maximum response length (longer responses are truncated) [default: 1024; 256 with --faults].",
            show_default=False,
        ),
    ] = None,
    faults: Annotated[
        bool,
        typer.Option(
            "--faults",
            help="Write faulty.parquet instead: a small batch with injected faults for `aggscope check` "
            "(NaN advantage, zeroed sequence, masked tokens with advantages, singleton and incomplete groups, a "
            "non-contiguous uid), and print the layout that cuts prompts.",
        ),
    ] = False,
) -> None:
    """Write a deterministic sample of GRPO steps (binary rewards, long-tailed lengths, GRPO advantages)."""
    from dataclasses import replace

    from aggscope.samples.generate import SampleConfig, write_sample

    chosen = {"steps": steps, "prompts": prompts, "group_size": group_size, "max_len": max_len}
    changes = {name: value for name, value in chosen.items() if value is not None}
    if not faults:
        typer.echo(f"wrote {write_sample(out_dir, SampleConfig(seed=seed, **changes))}")
        return
    from aggscope.analysis.checks import layout_flags
    from aggscope.samples.faulty import FAULTY_CONFIG, faulty_layout, write_faulty_sample

    config = replace(FAULTY_CONFIG, seed=seed, **changes)
    path = write_faulty_sample(out_dir, config)
    typer.echo(f"wrote {path}")
    typer.echo(f"check it with: aggscope check {path} {layout_flags(faulty_layout(config))}")
