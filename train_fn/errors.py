"""The base of user errors, where the trial's code (train_fn) and the driver's (search) both
reach it: a trial raises DataError, and train_fn imports nothing of the driver."""

from __future__ import annotations


class SegtuneError(Exception):
    """Bad user input that the user can fix (a spec, an argument, a file, a run folder); the
    message is one line (a data check may list files below it), ready to print, naming the
    file, key or argument, the value received and what is valid. The CLI prints it and exits
    with code 2; any other exception is a bug and keeps its traceback."""


class DataError(SegtuneError, ValueError):
    """Bad data: the message names the file and the problem."""
