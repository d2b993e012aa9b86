"""The one exception type aggscope raises for bad input or bad usage."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence


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


def did_you_mean(name: str, known: Iterable[str] | Mapping[str, str]) -> str:
    """`` (did you mean 'token_mean'?)`` naming the known name closest to a mistyped one, or ``""``
    when none is close (then the caller's list of valid names is the help).

    Case, surrounding spaces and ``-`` versus ``_`` are ignored when comparing. ``known`` maps each
    spelling to the name to suggest for it (an alias to its canonical name), or lists names that
    are suggested as spelled.
    """
    pairs = known.items() if isinstance(known, Mapping) else ((candidate, candidate) for candidate in known)
    spelled = {_comparable(spelling): shown for spelling, shown in pairs}
    close = difflib.get_close_matches(_comparable(name), list(spelled), n=1, cutoff=0.6)
    return f" (did you mean {spelled[close[0]]!r}?)" if close else ""


def _comparable(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def choose(option: str, name: str, choices: Sequence[str], aliases: Mapping[str, str], what: str) -> str:
    """The canonical name among ``choices`` (case and spaces ignored, ``aliases`` followed), or a
    one-line error naming ``option``, suggesting the closest valid name and listing them all."""
    key = name.strip().lower()
    key = aliases.get(key, key)
    if key not in choices:
        hint = did_you_mean(name, {**{choice: choice for choice in choices}, **aliases})
        raise AggscopeError(f"{option} {name!r}: unknown {what}{hint}; choose one of {', '.join(choices)}")
    return key
