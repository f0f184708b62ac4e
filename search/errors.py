"""User errors by meaning, all under one base (`SegtuneError`): the CLI catches the base once
and prints one line with exit code 2; anything else is a bug and shows its traceback. Each is
also a ValueError, so Python callers can catch them as bad values."""

from __future__ import annotations

from train_fn.errors import DataError, SegtuneError


class SpecError(SegtuneError, ValueError):
    """A spec file or a `--set` override: names the file and line or the dotted key."""


class ArgumentError(SegtuneError, ValueError):
    """A command-line argument (`--seeds`, `--split`, `--model`, `--trial`) with no meaning
    for this run: names the argument, the value and what is valid."""


class RunFolderError(SegtuneError, ValueError):
    """A run folder that lacks what the command needs (not a run, no result yet, jobs that
    ran already): names the folder and what to run first."""


class ResourceError(SegtuneError, ValueError):
    """Trials that the Ray cluster cannot host (CPUs, GPUs per trial)."""


class StorageError(SegtuneError, ValueError):
    """A storage folder or object-store URI that cannot hold runs."""


class DiskFullError(StorageError):
    """The file system of the run (checkpoints, MLflow's sqlite store) has no space left."""


class TrackingError(SegtuneError, ValueError):
    """The MLflow tracking store cannot be reached or may not be written."""


class CompareError(SegtuneError, ValueError):
    """A baseline that cannot be read or compared."""


class TrialError(SegtuneError, ValueError):
    """A trial failed for a reason the user must fix (its data, raised as a `SegtuneError`
    inside the trial): names the trial and the cause; the search stops, resumable."""


class SoupError(SegtuneError, ValueError):
    """Checkpoints that cannot be averaged, or nothing to soup."""


class RunInUse(SegtuneError):
    """Another live process holds the run folder."""

class CannotLock(StorageError):
    """The storage folder may not be written (read-only, another user's): no lock can be
    made there, and no command may write there either."""

class InputError(SegtuneError, ValueError):
    """An input image or a model file that cannot be used as it is."""

class PredictError(SegtuneError, ValueError):
    """An input that cannot be segmented, or a run folder that cannot predict."""

class WarmStartError(RunFolderError):
    """An earlier run that cannot seed this search: not a run, or another task."""


__all__ = ["ArgumentError", "CannotLock", "CompareError", "DataError", "DiskFullError",
           "InputError", "PredictError", "ResourceError", "RunFolderError", "RunInUse",
           "SegtuneError", "SoupError", "SpecError", "StorageError", "TrackingError",
           "TrialError", "WarmStartError"]
