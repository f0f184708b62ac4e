"""The one base class of user errors: bad input that the user can fix (a spec, an argument,
a file). The CLI prints such an error as one line and exits with code 2."""

from __future__ import annotations


class SegtuneError(Exception):
    """Bad user input; the message is one line (a data check may list files below it), ready
    to print, naming the file, key or argument, the value received and what is valid."""


class SpecError(SegtuneError, ValueError):
    """Bad user input in a spec or an override; the message is one line, ready to print."""


__all__ = ["SegtuneError", "SpecError"]
