"""The one exception type aggscope raises for bad input or bad usage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class AggscopeError(Exception):
    """Bad input or an impossible request, with a message that says what to do.

    The message is a single line that names the file, column or row at fault. The command line
    prints it on stderr and exits with code 2; library callers catch it like any exception.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty), to
    quote a library's error inside one of aggscope's one-line messages."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def choose(option: str, name: str, choices: Sequence[str], aliases: Mapping[str, str], what: str) -> str:
    """The canonical name among ``choices`` (case and spaces ignored, ``aliases`` followed), or a
    one-line error naming ``option`` and listing the valid names."""
    key = name.strip().lower()
    key = aliases.get(key, key)
    if key not in choices:
        raise AggscopeError(f"{option} {name!r}: unknown {what}; choose one of {', '.join(choices)}")
    return key
