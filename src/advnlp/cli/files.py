"""Writing files so that a crash never leaves half of one, and a link is never written through.

Every file advnlp writes into a folder is first written to a new temporary file in that
folder (``mkstemp``: created, never opened through an existing name) and then renamed over
the target. A rename replaces a symbolic link itself, not what it points to, so a link
planted at ``run/plot.png`` cannot make advnlp overwrite a file outside the run. A folder
(``model/``) is built in a new temporary folder and swapped in the same way.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator

# The prefix of every temporary name: what a crash leaves behind is recognisably advnlp's.
TMP_PREFIX = ".advnlp-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_open_makes(path: str, mode: int) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give the file or folder the mode
    ``open``/``mkdir`` would have, so a run folder stays as readable as before."""
    os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A fresh temporary path beside ``path`` (same extension, for writers that go by it);
    renamed over ``path`` when the block succeeds, removed when it fails."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + name, dir=folder)
    os.close(fd)
    try:
        _as_open_makes(tmp, 0o666)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """A fresh empty temporary folder beside ``path``; when the block succeeds it takes
    ``path``'s place (whatever was there, a link included, is removed: only ever a folder
    advnlp itself writes), when it fails it is removed."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix="-" + name, dir=folder)
    try:
        _as_open_makes(tmp, 0o777)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(path):
        old = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix="-old-" + name, dir=folder)
        os.replace(path, os.path.join(old, name))  # a link moves as a link
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)  # rmtree never follows the moved link
    else:
        os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=1))


def write_jsonl(path: str, records) -> None:
    """One JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
