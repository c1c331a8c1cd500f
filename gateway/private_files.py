"""Owner-only files and directories (issue 14, item 7).

The data directory holds password hashes, webhook secrets, message bodies, phone numbers,
tokens and the JWT secret. Whatever creates it or a file in it goes through here, so they
are 0700/0600 from the first moment whatever the caller's umask is (an umask only narrows a
mode, so the mode given to mkdir/open is never widened before the chmod that follows).
`smsgw serve` also tightens an existing directory and database an older version or an
operator left open (`tighten`).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OWNER_DIR", "OWNER_FILE", "ensure_private_dir", "create_private_file", "write_private_file", "tighten"]

OWNER_DIR = 0o700
OWNER_FILE = 0o600


def ensure_private_dir(path: Path) -> None:
    """Create `path` as 0700 when it is missing (its missing parents get the usual mode).

    An existing directory is left alone: it may be the user's home or the working directory
    holding a credentials file; only `smsgw serve` changes modes, of its own data directory.
    """
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=OWNER_DIR)
    except FileExistsError:
        return  # made meanwhile by another process (or a file: the caller's open will say so)
    os.chmod(path, OWNER_DIR)  # mkdir's mode went through the umask


def create_private_file(path: Path) -> bool:
    """Create `path` empty and 0600 unless it exists; True when it was created.

    For files another component fills (SQLite's database, whose -wal and -shm files SQLite
    then gives the same mode; the lock file), so they never start with the umask's mode.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_FILE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, OWNER_FILE)
    finally:
        os.close(fd)
    return True


def write_private_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically and durably: a 0600 temporary file of its own
    (so concurrent writers never share one), flushed to disk before it is renamed over `path`,
    so a reader or a crash never leaves half a file and the content is never readable by others."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), OWNER_FILE)  # mkstemp's 0600 already; say so where it matters
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable; best effort (not every platform or filesystem can)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tighten(paths: Iterable[Path], log: logging.Logger) -> None:
    """Drop the group and other bits of each existing path, one log line per change (the
    path and both modes: never a content). A path it may not change is logged, not fatal.

    A symbolic link is left alone, as is its target: in a data directory others could write
    to, a link would make `smsgw serve` change the mode of any file its user owns. The
    mode is changed through a descriptor opened without following links, so a path swapped
    for a link after the check is not followed either.
    """
    for path in paths:
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot make %s owner-only: %s", path, exc.strerror)
            continue
        try:
            old = stat.S_IMODE(os.fstat(fd).st_mode)
            new = old & ~0o077
            if new == old:
                continue
            try:
                os.fchmod(fd, new)
            except OSError as exc:
                log.warning("cannot make %s owner-only (mode %04o): %s", path, old, exc.strerror)
                continue
            log.warning("made %s owner-only: mode %04o -> %04o", path, old, new)
        finally:
            os.close(fd)
