"""The typer application, its one place for error handling, and ``--version``."""

import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from aggscope import __version__
from aggscope.cli.signals import Terminated, received, stop_cleanly_on_signals
from aggscope.cli.text import terminal_safe
from aggscope.errors import AggscopeError

# typer >= 0.26 vendors click; reach its exception base through a public subclass either way.
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_PREFIX = "aggscope: error: "


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Group(TyperGroup):
    """Prints every usage or input error as one line on stderr, with exit code 2, no traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            _plain_argument_types(command)

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None, **extra: Any) -> Any:  # type: ignore[override]
        extra["standalone_mode"] = False
        try:
            with stop_cleanly_on_signals():
                code = super().main(args, prog_name or "aggscope", **extra)
            if received:  # typer returns a KeyboardInterrupt (so Terminated) as exit code 130
                raise Terminated(received.pop())
            # Without standalone mode, typer.Exit(n) comes back as the return value n.
            sys.exit(code if isinstance(code, int) else 0)
        except Terminated as exc:
            typer.echo(f"aggscope: stopped by {exc.name}; no partial output was left", err=True)
            sys.exit(128 + exc.signum)
        except AggscopeError as exc:
            typer.echo(_PREFIX + terminal_safe(exc.message), err=True)
            _exit_now_if_stuck(2)
            sys.exit(2)
        except _ClickException as exc:
            message = exc.format_message()  # type: ignore[attr-defined]
            if type(exc).__name__ == "NoArgsIsHelpError":
                # Bare ``aggscope``: typer's rich help is already on stdout (click's plain one is
                # the message); asking for help is not an error.
                if message.strip():
                    typer.echo(message)
                sys.exit(0)
            hint = ""
            ctx = getattr(exc, "ctx", None)
            if "unexpected extra argument" in message:
                hint = " (one PATH per command: quote a glob, 'runs/*.parquet', or give the directory)"
            elif ctx is not None and ctx.command_path:
                hint = f" (see '{ctx.command_path} --help')"
            typer.echo(_PREFIX + terminal_safe(_one_line(message)) + hint, err=True)
            sys.exit(int(getattr(exc, "exit_code", 2)))
        except typer.Abort:
            typer.echo("aggscope: aborted", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            typer.echo("aggscope: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(1)
        except OSError as exc:
            # The file system said no (permissions, a full disk, a file where a folder should be):
            # a problem with the paths given, reported like any other bad input.
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(_PREFIX + terminal_safe(_one_line(where + (exc.strerror or str(exc)))), err=True)
            sys.exit(2)


class _Command(TyperCommand):
    """Plain help (click's formatter, no rich panels): one section per panel a flag names
    (``Input``, ``Layout ...``), in the order the flags come. Drawing typer's rich help imports
    rich's markdown parser and boxes, about half the cost of ``--help``; plain sections keep the
    grouping, wrap to the terminal and never cut an option's name."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            name = "Arguments" if param.param_type_name == "argument" else getattr(param, "rich_help_panel", None) or "Options"
            sections.setdefault(name, []).append(record)
        for name, records in sections.items():
            with formatter.section(name):
                _write_definitions(formatter, records)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        if self.epilog:
            formatter.write_paragraph()
            with formatter.indentation():
                indent = " " * formatter.current_indent
                formatter.write(_wrap(" ".join(self.epilog.split()), formatter.width, indent, indent) + "\n")


_TERM_WIDTH = 30  # the widest option column; a longer term gets its text on the next line


def _write_definitions(formatter: Any, records: list[tuple[str, str]]) -> None:
    """The options and their help as two columns, wrapped at spaces only: an option named in the
    text (``--mini-batch-size``) is never cut at its hyphens, as click's own wrapping cuts it."""
    term_width = min(max(len(term) for term, _ in records), _TERM_WIDTH)
    margin = " " * formatter.current_indent
    hanging = " " * (formatter.current_indent + term_width + 2)
    text_width = max(formatter.width - len(hanging), 10)
    for term, text in records:
        if len(term) <= term_width:
            lines = _wrap(text, text_width + len(hanging), f"{margin}{term:<{term_width}}  ", hanging)
        else:
            lines = f"{margin}{term}\n" + _wrap(text, text_width + len(hanging), hanging, hanging)
        formatter.write(lines.rstrip() + "\n")


def _wrap(text: str, width: int, first: str, rest: str) -> str:
    return textwrap.fill(
        text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False, break_long_words=False
    )


class _App(typer.Typer):
    """Every command gets the plain, sectioned help of ``_Command``."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


def _plain_argument_types(command: Any) -> None:
    """Let help show an argument by its metavar alone (``PATH``), without typer's ``<str>`` type
    column beside it: each argument gets a copy of its type that names no metavar of its own."""
    import copy

    for param in command.params:
        if param.param_type_name == "argument" and param.metavar is not None:
            param.type = copy.copy(param.type)
            param.type.get_metavar = lambda *args, **kwargs: ""


def _exit_now_if_stuck(code: int) -> None:
    """End the process at once when a storage that never answered still holds a thread: pyarrow's
    exit handlers would wait minutes for it (the error is already printed)."""
    import threading

    if any(t.name == "aggscope-connect" and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


app = _App(
    cls=_Group,
    rich_markup_mode=None,
    name="aggscope",
    help="See how much gradient each token, response and prompt of your RL batches gets, under every loss "
    "aggregation mode and trainer layout.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"aggscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """See how much gradient each token, response and prompt of your RL batches gets, under every loss
    aggregation mode and trainer layout."""
    # The work runs in numpy; torch is only imported to unpickle tensors (SkyRL, slime dumps), and
    # its intra-op threads would only add waits there (on a busy machine, one running a trainer,
    # say, they made the work 10-40x slower when the core ran on torch). Set before torch is
    # imported; an explicit OMP_NUM_THREADS wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
