"""``aggscope sample``: generate realistic GRPO rollout steps."""

from pathlib import Path
from typing import Annotated

import typer

from aggscope.cli.app import app


@app.command(epilog="Example: aggscope sample my_sample --steps 8 --prompts 64 --group-size 16 --seed 1")
def sample(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write rollouts.parquet into (created if missing).")],
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 4,
    prompts: Annotated[int, typer.Option(min=1, help="Prompts per step.")] = 32,
    group_size: Annotated[int, typer.Option(min=1, help="Responses per prompt.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; the same seed gives the same file.")] = 0,
    max_len: Annotated[int, typer.Option(min=8, help="Maximum response length (longer responses are truncated).")] = 1024,
) -> None:
    """Write a deterministic sample of GRPO steps (binary rewards, long-tailed lengths, GRPO advantages)."""
    from aggscope.sample import SampleConfig, write_sample

    path = write_sample(out_dir, SampleConfig(steps=steps, prompts=prompts, group_size=group_size, seed=seed, max_len=max_len))
    typer.echo(f"wrote {path}")
