"""One writer per run folder: an advisory lock held while a command writes it.

``locked(folder)`` takes ``<folder>/.advnlp.lock`` with ``flock``; a second advnlp process
that wants to write the folder, or a folder inside it (a compare's run folders), gets an
:class:`InputError` naming the holder's pid. The kernel releases an ``flock`` when its
process dies, however it dies, so the lock file a killed run leaves behind is stale by
construction: the next writer takes it over without a race (no pid guessing). The locks a
process holds are re-entrant within it (compare locks its folder, then each run inside).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Dict, Iterator

from .errors import InputError

LOCK = ".advnlp.lock"
_held: Dict[str, int] = {}  # folder (real path) -> the descriptor holding its lock


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            pid = f.read().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def _busy(folder: str) -> str:
    """Who holds ``folder``'s lock, if another process does ('' if none)."""
    path = os.path.join(folder, LOCK)
    if folder in _held or not os.path.isfile(path) or os.path.islink(path):
        return ""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return ""


def check_unlocked(folder: str) -> None:
    """Refuse when another process writes ``folder`` or a folder that holds it."""
    real = os.path.realpath(folder)
    while True:
        who = _busy(real)
        if who:
            raise InputError(f"{folder} is being written by another advnlp process ({who}, "
                             f"lock {os.path.join(real, LOCK)}); wait for it to end, or stop it")
        parent = os.path.dirname(real)
        if parent == real:
            return
        real = parent


@contextlib.contextmanager
def locked(folder: str) -> Iterator[None]:
    """Hold ``folder``'s write lock while inside (creating the folder if needed)."""
    real = os.path.realpath(folder)
    if real in _held:  # this process holds it already: re-entrant
        yield
        return
    check_unlocked(folder)
    created = not os.path.exists(real)
    try:
        os.makedirs(real, exist_ok=True)
    except OSError as e:
        raise InputError(f"{folder}: cannot create it ({e.strerror}); choose another folder") from None
    path = os.path.join(real, LOCK)
    fd = _acquire(folder, path)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[real] = fd
    try:
        yield
    finally:
        del _held[real]
        with contextlib.suppress(OSError):
            os.remove(path)  # under the lock: the next writer creates a fresh one
        os.close(fd)
        if created:  # made only to hold the lock, and nothing was written: leave no trace
            with contextlib.suppress(OSError):
                os.rmdir(real)


def _acquire(folder: str, path: str) -> int:
    """The descriptor of ``path``, exclusively locked. A holder removes the file before it
    lets go, so a lock won on a file no longer at ``path`` is worthless: try again."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise InputError(f"{folder}: cannot create its lock file {LOCK} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"{folder} is being written by another advnlp process "
                             f"({_holder(path)}, lock {path}); wait for it to end, or stop it") from None
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
