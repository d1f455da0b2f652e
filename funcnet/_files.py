"""Files written whole or not at all: `atomic_write` (checkpoints, IDX data files).

A save must never leave a half-written file where a good one stood (DESIGN.md, "Bad
input"): the bytes go to a temporary file beside the target, are flushed and fsync'ed, and
the temporary file is renamed over the target, then the directory is fsync'ed.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

__all__ = ["atomic_write", "fsync_dir"]


def atomic_write(path, write: Callable[[Any], None]) -> str:
    """Write a file atomically: `write(fileobj)` into a temp file beside `path`, then rename.

    The temp file lives in the target's directory (so `os.replace` is a same-filesystem
    rename), is flushed and fsync'ed before the rename, and the directory is fsync'ed after
    it, so after a crash `path` holds either the old or the new content, never a mix. On
    any error the temp file is removed and the error re-raised; `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        # mkstemp makes the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
    return path


def fsync_dir(directory: str):
    """Persist a rename: fsync the directory entry (not possible on Windows; skipped there)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
