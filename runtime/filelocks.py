"""Output and state files that one run owns: opened without truncating, then locked.

Two runs writing one file interleave their lines; two runs on one state file resume
each other's stream. Each file a run writes is therefore held under an exclusive
`flock` for the whole run, and a second run on it is refused with one line. The lock
is taken *before* anything is truncated, so a refused run destroys nothing.

Locks are advisory (flock): they keep edgernn runs apart, not other programs. Where
flock does not exist (Windows) files are not locked.
"""

from __future__ import annotations

import os
import stat
from typing import IO, Optional

from edgernn.errors import InputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class FileInUse(InputError):
    """Another run holds the file's lock."""


def lock_fd(fd: int, path: str, what: str) -> None:
    """flock(LOCK_EX | LOCK_NB) on `fd`; FileInUse if another process holds it."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FileInUse(
            f"{what} {path} is in use by another edgernn run (locked); stop that run or "
            "choose another file"
        ) from None
    except OSError:
        pass  # a file system without flock (some network mounts): run unlocked


class SidecarLock:
    """`PATH.lock`, held for a run: for files replaced by rename (a lock on the file
    itself would stay on the old inode)."""

    def __init__(self, path: str, what: str):
        self.path = f"{path}.lock"
        self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            lock_fd(self._fd, path, what)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the empty .lock file stays (harmless)
            self._fd = None

    def __del__(self) -> None:
        self.release()


class Opened:
    """An output file opened for a run: the handle and what was there before."""

    def __init__(self, fh: IO[str], existing: int, ends_with_newline: bool):
        self.fh = fh
        self.existing = existing  # bytes already in the file (appended after)
        self.ends_with_newline = ends_with_newline


def open_output(path: str, append: bool, what: str = "output") -> Opened:
    """Open `path` for writing, locked. append: keep what is there and write after it;
    else truncate it (only once the lock is held). Regular files only are locked and
    truncated (a FIFO or /dev/null is just opened)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0), 0o666)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    try:
        st = os.fstat(fd)
        existing, ends_with_newline = 0, True
        if stat.S_ISREG(st.st_mode):
            lock_fd(fd, path, what)
            if append:
                existing = st.st_size
                ends_with_newline = existing == 0 or _last_byte(path) == b"\n"
            else:
                os.ftruncate(fd, 0)
        fh = os.fdopen(fd, "a" if append else "w", newline="")
    except BaseException:
        os.close(fd)
        raise
    return Opened(fh, existing, ends_with_newline)


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def first_line(path: str, limit: int = 1 << 16) -> str:
    """The file's first line (without the newline), for checking an appended CSV's header."""
    with open(path, "rb") as f:
        return f.readline(limit).decode("utf-8", "replace").rstrip("\r\n")


def check_csv_header(opened: Opened, path: str, columns: list[str]) -> None:
    """Appending CSV rows under another header would mix two layouts in one file."""
    import csv
    import io

    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(columns)
    found = first_line(path)
    if found != line.getvalue():
        opened.fh.close()
        raise InputError(
            f"{path} already holds CSV with other columns ({found[:60]!r}...); appending "
            "would mix two layouts: choose another file"
        )
