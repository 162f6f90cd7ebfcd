"""File helpers every layer shares: atomic writes, sha256 of a file, the cache root.

A write goes to a temp file ``.<name>.<random>.tmp`` in the target's directory, is flushed and fsynced, then
renamed over the target: a crash or a full disk never leaves half a file, and an existing file stays intact.
Leftover temp files of a killed write match ``.*.tmp`` (the training run removes them on start).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

ENV_CACHE = "STYLENAT_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The stylenat cache root: the argument, else ``$STYLENAT_CACHE``, else ``~/.cache/stylenat``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stylenat"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class _WriteTracker:
    """A writable file that remembers the OSError of a failed write: torch.save turns it into an
    opaque RuntimeError ("unexpected pos ..."), and the caller should learn "No space left on device"."""

    def __init__(self, f: BinaryIO):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, rename it to ``path``; returns ``path``.

    A failed write (disk full, I/O error, an exception in ``write``) removes the temp file, leaves any
    existing ``path`` untouched and re-raises; an OSError is re-raised as one line naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tracker = None
    try:
        with os.fdopen(fd, "wb") as f:
            tracker = _WriteTracker(f)
            write(tracker)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = tracker.error if tracker is not None and tracker.error is not None else err
        if isinstance(cause, OSError):
            raise OSError(cause.errno, f"cannot write {path}: {cause.strerror or cause}") from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; some file systems (and Windows) cannot open a directory."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
