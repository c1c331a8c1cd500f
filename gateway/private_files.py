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
    """Replace `path` with `text` atomically (a 0600 temporary file renamed over it), so a
    reader never sees half a file and the content is never readable by others."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_FILE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), OWNER_FILE)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tighten(paths: Iterable[Path], log: logging.Logger) -> None:
    """Drop the group and other bits of each existing path, one log line per change (the
    path and both modes: never a content). A path it may not change is logged, not fatal."""
    for path in paths:
        try:
            old = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        new = old & ~0o077
        if new == old:
            continue
        try:
            os.chmod(path, new)
        except OSError as exc:
            log.warning("cannot make %s owner-only (mode %04o): %s", path, old, exc.strerror)
            continue
        log.warning("made %s owner-only: mode %04o -> %04o", path, old, new)
