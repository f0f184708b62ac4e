"""Where a run's files live. segtune's own files (spec, run.json, summary, soups, eval) are
always in a local run folder; Ray's experiment (trial checkpoints, experiment state) is in
that folder too, or, with an object-store `--storage` such as `s3://bucket/prefix`, at
`<storage>/<name>` in the store, read and written through `pyarrow.fs`.

Credentials and endpoints come from the environment as for any pyarrow user
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for MinIO or Ceph, ...).
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from pyarrow import fs

from search.errors import DiskFullError, StorageError
from search.lazy import LazyModule
from search.runfolder import RunFolder

# Import torch (see search.lazy): only to read checkpoints.
checkpoint_io = LazyModule("train_fn.checkpoint")
torch = LazyModule("torch")

BUCKET_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")




def is_uri(storage: str | Path | None) -> bool:
    """True for `s3://...`, `gs://...` and any other `scheme://` location."""
    return storage is not None and bool(_URI.match(str(storage)))


def _filesystem(location: str | Path) -> tuple[fs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a URI or a local path."""
    if is_uri(location):
        return fs.FileSystem.from_uri(str(location))
    return fs.LocalFileSystem(), str(Path(location).resolve())


def check_storage(uri: str) -> None:
    """Fail early, in one line, when the bucket of `uri` is missing or unreachable."""
    try:
        filesystem, path = _filesystem(uri)
        bucket = path.split("/", 1)[0]
        info = filesystem.get_file_info(bucket)
    except Exception as err:  # noqa: BLE001 - pyarrow raises OSError or ArrowInvalid
        message = " ".join(str(err).split())
        raise StorageError(f"--storage {uri}: cannot reach the object store ({message}); "
                           "check the credentials and endpoint in the environment "
                           "(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...)") from None
    if info.type == fs.FileType.NotFound:
        raise StorageError(f"--storage {uri}: bucket {bucket!r} does not exist (create it "
                           "first; segtune does not create buckets)")


def check_local_folder(folder: str | Path, flag: str) -> None:
    """Fail early, in one line, when a local folder for runs cannot be made or written in: a
    file on its path, or a read-only place. Leaves nothing behind (the probe file has no name
    and is gone when closed)."""
    folder = Path(folder)
    existing = folder.absolute()
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as err:
        raise StorageError(f"{flag} {folder}: cannot look at {existing} ({err.strerror})") \
            from None
    if not existing.is_dir():
        raise StorageError(f"{flag} {folder}: {existing} is a file, not a folder; give a "
                           "folder (it is created when missing)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise StorageError(f"{flag} {folder}: cannot write in {existing} ({err.strerror}); "
                           "give a writable folder") from None


def experiment_location(run_dir: str | Path) -> str:
    """Ray's experiment of a run: `<storage URI>/<name>` when run.json records an
    object-store storage, else the run folder itself."""
    return RunFolder(run_dir).experiment_location


def join(location: str, *parts: str) -> str:
    """`location/part/...` for a URI or a local path."""
    if is_uri(location):
        return "/".join([location.rstrip("/"), *parts])
    return str(Path(location, *parts))


def relative(path: str, location: str) -> str:
    """`path` (as Ray reports a checkpoint: local, or inside the store without the scheme)
    relative to the experiment `location`."""
    if is_uri(location):
        return str(PurePosixPath(path).relative_to(_path_in_store(location)))
    return str(Path(path).resolve().relative_to(Path(location).resolve()))


def _path_in_store(uri: str) -> str:
    """The path pyarrow gives to `uri` inside its filesystem, without asking the store (for
    buckets, `bucket/prefix`; for others, the path after the host)."""
    parts = urlsplit(uri)
    path = parts.netloc + parts.path if parts.scheme in BUCKET_SCHEMES else parts.path
    return path.strip("/")


def newest_experiment_state(location: str) -> dict[str, Any] | None:
    """The newest `experiment_state-*.json` of a Ray experiment (newest by the timestamp in
    the name: after a restore Ray writes a new file and still touches the old one), or None
    when no trial was saved yet; a state cut short raises ValueError.

    `Tuner.can_restore` cannot answer this: it only looks for `tuner.pkl`, which Ray writes
    when the Tuner is built, before any trial runs or any state is saved, and never reads it."""
    filesystem, root = _filesystem(location)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    states = sorted((i.path for i in infos if i.type == fs.FileType.File
                     and PurePosixPath(i.path).name.startswith("experiment_state-")
                     and i.path.endswith(".json")), key=lambda p: PurePosixPath(p).name)
    if not states:
        return None
    with filesystem.open_input_stream(states[-1]) as stream:
        return json.loads(stream.read().decode())


@contextmanager
def _checkpoint_folder(location: str, checkpoint: str) -> Iterator[Path]:
    """A local folder holding the checkpoint `checkpoint` of the experiment at `location`:
    the folder itself on local storage; a temporary download from an object store (deleted
    on exit, so a soup holds one ingredient on disk and in memory at a time)."""
    if not is_uri(location):
        yield Path(location) / checkpoint
        return
    source = join(location, checkpoint)
    with tempfile.TemporaryDirectory(prefix="segtune-ckpt-") as folder:
        try:
            fs.copy_files(source, folder)
        except Exception as err:  # noqa: BLE001 - pyarrow's kinds, as one missing file
            raise FileNotFoundError(f"{source}: no checkpoint "
                                    f"({' '.join(str(err).split())})") from None
        yield Path(folder)


def load_run_checkpoint(run_dir: str | Path, checkpoint: str, mmap: bool = False
                        ) -> dict[str, Any]:
    """Load a run's checkpoint (relative to its experiment) wherever it is stored. `mmap`
    maps a local file (only the tensors touched are read); a download is read whole."""
    location = experiment_location(run_dir)
    with _checkpoint_folder(location, checkpoint) as folder:
        return checkpoint_io.load_checkpoint(folder, mmap=mmap and not is_uri(location))


def saved_trial_ids(location: str | Path) -> set[str]:
    """The ids of the trials in Ray Tune's last saved experiment state."""
    state = newest_experiment_state(str(location)) or {}
    return {json.loads(t[0]).get("trial_id") for t in state.get("trial_data", [])}


# Ray Tune's experiment-level files: the trials' states, the searcher's and the Tuner's.
_RAY_STATE = ("experiment_state-", "searcher-state-", "search_gen_state-",
              "basic-variant-state-", "tuner.pkl", "trainable.pkl")
STATE_BACKUP = ".ray-state-before-resume"


def _ray_state_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(_RAY_STATE) and p.is_file()
            and not p.is_symlink()]


def keep_experiment_state(location: str | Path) -> Path | None:
    """Copy Ray's experiment-level state files of a local experiment into a hidden folder in
    it before `Tuner.restore`, which may write a new, empty state over them (see
    `put_back_experiment_state`). None for an object store (nothing is kept there)."""
    if is_uri(location):
        return None
    folder = Path(location)
    backup = folder / STATE_BACKUP
    repair_experiment_state(folder)
    shutil.rmtree(backup, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STATE_BACKUP}.tmp-", dir=folder))
    for path in _ray_state_files(folder):
        shutil.copy2(path, tmp / path.name)
    tmp.rename(backup)  # whole or absent
    return backup


def repair_experiment_state(location: str | Path) -> bool:
    """After a resume killed (kill -9, a lost machine) between a failed restore and
    `put_back_experiment_state`: the kept copy is put back when Ray's newest state lost every
    trial it holds (True); a copy left by a resume that restored its trials is dropped."""
    backup = Path(location) / STATE_BACKUP
    if is_uri(location) or not backup.is_dir():
        return False
    kept = saved_trial_ids(backup)
    try:
        lost = bool(kept) and not kept & saved_trial_ids(location)
    except ValueError:  # cut short
        lost = bool(kept)
    if not lost:
        shutil.rmtree(backup, ignore_errors=True)
        return False
    put_back_experiment_state(location, backup)
    return True


def put_back_experiment_state(location: str | Path, backup: Path) -> None:
    """Ray's state files as `keep_experiment_state` found them: those written since are
    removed, the kept ones copied back (each replaced in one rename)."""
    folder = Path(location)
    kept = {p.name for p in backup.iterdir()}
    for path in _ray_state_files(folder):
        if path.name not in kept:
            path.unlink()
    for name in kept:
        tmp = folder / f".{name}.tmp"
        shutil.copy2(backup / name, tmp)
        tmp.replace(folder / name)
    shutil.rmtree(backup, ignore_errors=True)


def unfinished_trials(location: str | Path) -> int:
    """Trials neither terminated nor errored in Ray Tune's last saved experiment state (in
    the run folder or the object store): those `Tuner.restore(resume_unfinished=True)` runs
    again. After a Ctrl-C or SIGTERM, `Tuner.fit()` returns normally (having saved that
    state): this tells the two apart."""
    # Not `ResultGrid.num_terminated`/`num_errors` of what `fit()` returned: after saving the
    # state, `tune.run` stops the running trials with `runner.cleanup()`, which sets them
    # TERMINATED, and only then builds the grid. Seen (Ray 2.60, Ctrl-C and SIGTERM, 2 of 3
    # trials running): the grid said 3 terminated, 0 errors; this state says 2 unfinished.
    # `ExperimentAnalysis(location)` gives 2 as well, from this same file, but it unpickles
    # the state and reads every trial's results, warning again about each trial not yet
    # reported, to count statuses.
    state = newest_experiment_state(str(location))
    if state is None:
        return 0
    trials = state.get("trial_data", [])
    statuses = [json.loads(t[0]).get("status") for t in trials]
    return sum(1 for status in statuses if status not in ("TERMINATED", "ERROR"))


_FULL = re.compile(r"No space left on device|\[Errno 28\]|database or disk is full")


def disk_full(error: BaseException | str | None) -> bool:
    """Whether an error, one of its causes, or an error text says a disk is full (an OSError
    ENOSPC, sqlite's "database or disk is full", or Ray's wrapper around either)."""
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if _FULL.search(str(error)):
            return True
        error = error.__cause__ or error.__context__ or getattr(error, "cause", None)
    return isinstance(error, str) and bool(_FULL.search(error))


def disk_full_error(path: str | Path, again: str | None) -> DiskFullError:
    """The one line for a full disk: where, how much is free, and how to continue."""
    try:
        free = f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    if again is None:  # nothing was kept to continue from
        return DiskFullError(f"{path}: not enough space left on the device ({free}); free space "
                             "and run the search again")
    return DiskFullError(f"{path}: not enough space left on the device ({free}); the finished "
                         f"trials and their last whole checkpoints are kept: free some space "
                         f"and continue with: {again}")


def remove_cut_checkpoints(run_dir: str | Path) -> list[Path]:
    """Delete the checkpoint copies a full disk cut short in a local run folder (Ray copies a
    trial's checkpoint into storage and registers it only once the copy is whole, so a cut
    one is never the one a trial resumes from). Frees their space; returns what went."""
    removed = []
    for path in sorted(Path(run_dir).glob("*/checkpoint_*/checkpoint.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - unreadable in any way: cut short
            shutil.rmtree(path.parent, ignore_errors=True)
            removed.append(path.parent)
    return removed
