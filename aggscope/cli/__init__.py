"""The command line: thin commands that parse, call one library function and render.

Each command lives in its own module and registers itself on ``app``; importing this package
imports none of torch, pandas, matplotlib or pyarrow (commands import the library when they run).
"""

from aggscope.cli import check_cmd, inspect_cmd, sample_cmd, weights_cmd  # noqa: F401  (registers the commands)
from aggscope.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
