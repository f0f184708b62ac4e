"""One process at a time per run folder: an exclusive `flock` on `<storage>/.<name>.lock`, next
to the folder (so it can be taken before the folder exists, and survives the folder being
removed). The kernel drops the lock when its process ends, however it ends: a lock left by a
killed process is free again, and the file's stale pid is only shown, never trusted. A process
that ends normally removes the file."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search.errors import CannotLock, RunInUse, StorageError

logger = logging.getLogger(__name__)


def lock_path(run_dir: str | Path) -> Path:
    """`<parent>/.<name>.lock` of the resolved folder: `runs/a`, `runs/a/` and `./a` from
    inside `runs` (or a link to it) share one lock."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent / f".{run_dir.name}.lock"


def _open_lock(path: Path) -> int:
    """Open (or create) the lock file without following a link, truncating, or blocking, and
    only if it is a regular file: anyone who can write to a shared storage folder could
    otherwise point the lock at a file of ours and have its content replaced by a pid."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    rule = "the lock must be a regular file; remove it (or pick another --name or --storage)"
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not path.is_symlink():
            raise CannotLock(f"{path.parent}: cannot write in it ({exc.strerror.lower()}), "
                             f"so {path.name} cannot be made; a command that writes into "
                             "the run needs a folder it may write (copy the run folder "
                             "elsewhere; evaluate can write to --out instead)") from None
        kind = "a symbolic link" if path.is_symlink() else exc.strerror.lower()
        raise StorageError(f"{path}: {kind}, not a lock file; {rule}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a hard link is a link too
        os.close(fd)
        kind = "a hard link" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise StorageError(f"{path}: {kind}, not a lock file; {rule}")
    return fd


@contextmanager
def run_lock(run_dir: str | Path, read_only: bool = False) -> Iterator[Path | None]:
    """Hold `run_dir` for this process until the block ends; raise `RunInUse` at once, naming
    the holder's pid, when another process holds it. Creates the storage folder if needed
    (and removes it again when it is left empty). With `read_only` (a command that only reads
    the run), a storage folder this process may not write is used without a lock (None): a
    published, read-only run can still predict."""
    path = lock_path(run_dir)
    made = not path.parent.exists()  # a run that fails before writing leaves no folder
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = _open_lock(path)
        except CannotLock:
            if not read_only or os.access(Path(run_dir).resolve(), os.W_OK):
                raise
            logger.debug("%s: read-only, used without a lock", run_dir)
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUse(f"{run_dir}: in use by another segtune process (pid {holder}, "
                           f"holding {path}); wait for it to end, or pick another --name "
                           "or --storage") from None
        # The holder before us removes the file as it ends: a lock on a removed file holds
        # nothing, so take the one at the path now.
        try:
            held, there = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        # Removed while still held (no one can take it in between), then released.
        path.unlink(missing_ok=True)
        os.close(fd)
        if made:
            try:
                path.parent.rmdir()  # only if still empty
            except OSError:
                pass


__all__ = ["CannotLock", "RunInUse", "lock_path", "run_lock"]
